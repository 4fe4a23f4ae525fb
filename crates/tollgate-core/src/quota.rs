//! The quota service's wire format, shared by the filter (client) and the service.
//!
//! The filter is the single source of limit definitions: every check carries the limits
//! it asks about; the service only keeps counts.

use serde::{Deserialize, Serialize};

use crate::config::{limit_from_parts, Algorithm, ConfigError, Limit, LimitKind};

/// `POST /v1/check`: one all-or-nothing decision over every limit of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// Who is metered: `<tier>/key:<id>` or `<tier>/ip:<network>`. Never a token.
    pub key: String,
    /// Units each limit must have; 0 only reads.
    pub cost: u64,
    pub limits: Vec<LimitSpec>,
    /// Per limit, in `limits` order, the units it must have instead of `cost`: a request
    /// metered by tokens costs its tokens to a limit of tokens and 1 to a limit of requests.
    /// Empty (and left out of the JSON): every limit costs `cost`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub costs: Vec<u64>,
}

/// A limit as the filter defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    pub name: String,
    #[serde(default)]
    pub algorithm: Algorithm,
    pub limit: u64,
    pub window_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckResponse {
    /// True only if every limit admitted; then, and only then, every limit was charged.
    pub admitted: bool,
    /// One per requested limit, in request order.
    pub limits: Vec<LimitResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitResult {
    pub name: String,
    pub admitted: bool,
    /// Units left after this request (or now, if it was refused).
    pub remaining: u64,
    /// Milliseconds until the limit is full again.
    pub reset_after_ms: u64,
    /// Milliseconds until the request could pass; 0 when admitted.
    pub retry_after_ms: u64,
    /// Fixed windows: the index of the window that was charged (or read), counted from the
    /// epoch on the service's clock (`floor(now / window)`). A lease names it when it gives
    /// units back, so that a return never lands in a later window. None for token buckets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
}

/// `POST /v1/return`: gives back units that a lease took with `/v1/check` and did not use.
///
/// Every limit gets `units` back: a token bucket as if they had never been taken (never
/// fuller than full); a fixed window only if its current window is still the one named in
/// `windows` (a return after the reset changes nothing, so it can never over-admit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReturnRequest {
    pub key: String,
    pub units: u64,
    pub limits: Vec<LimitSpec>,
    /// One per limit, in `limits` order: the `window` of the `/v1/check` answer that
    /// granted the units (None for token buckets).
    pub windows: Vec<Option<u64>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReturnResponse {
    /// Per limit, in request order: the units actually given back (0 when its window had passed).
    pub returned: Vec<u64>,
}

/// `POST /v1/settle`: a request admitted by `/v1/check` with what it reserved has ended;
/// each limit is charged what was used instead.
///
/// Per limit, `used` below `reserved` gives the difference back (as `/v1/return` does: a
/// token bucket never fuller than full, a fixed window only while it is the one named in
/// `windows`); `used` above `reserved` charges the overrun even past the limit (it was
/// spent already), to a fixed window only while it is the one named. A settlement is
/// applied once: a retry with the same `id` changes nothing and answers `applied: false`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettleRequest {
    pub key: String,
    /// Names this settlement for retries: 16 to 64 characters of `[0-9A-Za-z_-]`, drawn at
    /// random by the filter for each reservation.
    pub id: String,
    pub limits: Vec<LimitSpec>,
    /// One per limit: the `window` of the `/v1/check` answer (None for token buckets).
    pub windows: Vec<Option<u64>>,
    /// One per limit: the units the check charged.
    pub reserved: Vec<u64>,
    /// One per limit: the units the request used.
    pub used: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettleResponse {
    /// False when a settlement with this `id` was applied before (nothing changed now).
    pub applied: bool,
}

/// `POST /v1/keys/verify`: the filter sends the token's hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyResponse {
    pub known: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

/// `POST /v1/keys` (admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub tier: String,
    pub name: String,
}

/// The one response that ever contains a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatedKey {
    pub id: String,
    pub token: String,
    pub tier: String,
    pub name: String,
    pub created_at: u64,
}

/// A key as listed (`GET /v1/keys`): no token, no hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyInfo {
    pub id: String,
    pub tier: String,
    pub name: String,
    pub created_at: u64,
}

/// `GET /v1/usage/{key}`: what the store holds for a metered key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageResponse {
    pub key: String,
    pub limits: Vec<UsageLimit>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageLimit {
    pub name: String,
    pub algorithm: Algorithm,
    pub limit: u64,
    pub window_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Units used in the current window (fixed window) or missing from a full bucket.
    pub used: u64,
    pub remaining: u64,
    pub reset_after_ms: u64,
}

/// Every 4xx/5xx body of the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl LimitSpec {
    /// The spec of a configured limit.
    pub fn of(limit: &Limit) -> LimitSpec {
        let (algorithm, burst) = match limit.kind {
            LimitKind::TokenBucket { capacity, .. } => {
                (Algorithm::TokenBucket, (capacity != limit.quota).then_some(capacity))
            }
            LimitKind::FixedWindow { .. } => (Algorithm::FixedWindow, None),
        };
        LimitSpec { name: limit.name.clone(), algorithm, limit: limit.quota, window_secs: limit.window.secs, burst }
    }

    /// Validates the spec as the filter validates its config; `path` prefixes error paths.
    pub fn to_limit(&self, path: &str) -> Result<Limit, ConfigError> {
        limit_from_parts(path, &self.name, self.limit, self.window_secs, self.algorithm, self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_configured_limit_survives_the_round_trip_through_a_spec() {
        let c = Config::from_json(include_bytes!("../fixtures/good/tiers.json")).unwrap();
        for tier in &c.tiers {
            for limit in &tier.limits {
                let spec = LimitSpec::of(limit);
                let json = serde_json::to_string(&spec).unwrap();
                let back: LimitSpec = serde_json::from_str(&json).unwrap();
                let rebuilt = back.to_limit("limits[0]").unwrap();
                assert_eq!(
                    (rebuilt.kind, rebuilt.quota, rebuilt.fingerprint),
                    (limit.kind, limit.quota, limit.fingerprint)
                );
                assert_eq!(rebuilt.window, limit.window);
            }
        }
    }

    #[test]
    fn check_requests_have_a_stable_wire_form() {
        let request: CheckRequest = serde_json::from_str(
            r#"{"key":"free/ip:203.0.113.7/32","cost":1,"limits":[
                {"name":"images-per-day","algorithm":"fixed_window","limit":5,"window_secs":86400},
                {"name":"burst","limit":2,"window_secs":10}]}"#,
        )
        .unwrap();
        assert_eq!(request.limits[1].algorithm, Algorithm::TokenBucket);
        assert!(serde_json::from_str::<CheckRequest>(r#"{"key":"k","cost":1,"limits":[],"x":1}"#).is_err());
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let spec =
            LimitSpec { name: "d".into(), algorithm: Algorithm::FixedWindow, limit: 5, window_secs: 0, burst: None };
        assert_eq!(spec.to_limit("limits[2]").unwrap_err().path, "limits[2].window");
        let spec = LimitSpec { burst: Some(3), window_secs: 60, ..spec };
        assert_eq!(spec.to_limit("limits[0]").unwrap_err().path, "limits[0].burst");
    }

    #[test]
    fn windows_print_in_their_largest_unit() {
        use crate::config::window_text;
        assert_eq!(window_text(86_400), "1d");
        assert_eq!(window_text(7200), "2h");
        assert_eq!(window_text(60), "1m");
        assert_eq!(window_text(90), "90s");
    }
}
