//! Wire requests in, validated values out; every error names the field it is about.

use tollgate_core::config::{Limit, LimitKind, MAX_LIMITS_PER_TIER, MAX_QUANTITY};
use tollgate_core::quota::{CheckRequest, LimitSpec, ReturnRequest, SettleRequest};

use crate::error::ApiError;
use crate::store::{Check, Return, Settle};

pub const MAX_KEY_BYTES: usize = 256;

/// Validates a `/v1/check` request the way the filter validates its config: one cost per
/// limit, `costs[i]` if given, else `cost` for every limit.
pub fn check(request: CheckRequest) -> Result<Check, ApiError> {
    metered_key(&request.key, "key")?;
    if request.cost > MAX_QUANTITY {
        return Err(ApiError::invalid("cost", format!("expected a whole number from 0 to {MAX_QUANTITY}")));
    }
    let limits = limits(&request.limits)?;
    let per_limit = !request.costs.is_empty();
    let costs = if per_limit {
        one_per_limit("costs", &request.costs, limits.len())?;
        request.costs
    } else {
        vec![request.cost; limits.len()]
    };
    let path = |i: usize| if per_limit { format!("costs[{i}]") } else { "cost".to_owned() };
    for (i, (limit, &cost)) in limits.iter().zip(&costs).enumerate() {
        if cost > MAX_QUANTITY {
            return Err(ApiError::invalid(&path(i), format!("expected a whole number from 0 to {MAX_QUANTITY}")));
        }
        if cost > limit.capacity() {
            return Err(ApiError::invalid(
                &path(i),
                format!(
                    "{cost} exceeds the capacity {} of limits[{i}] ({:?}): such a request could never be admitted",
                    limit.capacity(),
                    limit.name
                ),
            ));
        }
    }
    Ok(Check { key: request.key, costs, limits })
}

/// Validates a `/v1/return` request: the limits as for a check, and one window per limit
/// (the `window` of the check answer: a number for a fixed window, null for a token bucket).
pub fn give_back(request: ReturnRequest) -> Result<Return, ApiError> {
    metered_key(&request.key, "key")?;
    if request.units > MAX_QUANTITY {
        return Err(ApiError::invalid("units", format!("expected a whole number from 0 to {MAX_QUANTITY}")));
    }
    let limits = limits(&request.limits)?;
    windows(&limits, &request.windows)?;
    Ok(Return { key: request.key, units: request.units, limits, windows: request.windows })
}

/// Validates a `/v1/settle` request: the limits as for a check, `windows` as for a return,
/// one `reserved` and one `used` per limit, and an `id` fit to name a marker key.
pub fn settle(request: SettleRequest) -> Result<Settle, ApiError> {
    metered_key(&request.key, "key")?;
    settlement_id(&request.id, "id")?;
    let limits = limits(&request.limits)?;
    windows(&limits, &request.windows)?;
    for (field, units) in [("reserved", &request.reserved), ("used", &request.used)] {
        one_per_limit(field, units, limits.len())?;
        if let Some(i) = units.iter().position(|u| *u > MAX_QUANTITY) {
            return Err(ApiError::invalid(
                &format!("{field}[{i}]"),
                format!("expected a whole number from 0 to {MAX_QUANTITY}"),
            ));
        }
    }
    Ok(Settle {
        key: request.key,
        id: request.id,
        limits,
        windows: request.windows,
        reserved: request.reserved,
        used: request.used,
    })
}

/// `field` has one entry per limit.
fn one_per_limit<T>(field: &str, entries: &[T], limits: usize) -> Result<(), ApiError> {
    if entries.len() == limits {
        Ok(())
    } else {
        Err(ApiError::invalid(field, format!("expected one entry per limit ({limits}), got {}", entries.len())))
    }
}

/// One window per limit: the `window` of the check answer, a number for a fixed window and
/// null for a token bucket.
fn windows(limits: &[Limit], windows: &[Option<u64>]) -> Result<(), ApiError> {
    one_per_limit("windows", windows, limits.len())?;
    for (i, (limit, window)) in limits.iter().zip(windows).enumerate() {
        match (limit.kind, window) {
            (LimitKind::FixedWindow { .. }, None) => {
                return Err(ApiError::invalid(
                    &format!("windows[{i}]"),
                    format!("expected the window index of the check answer: limits[{i}] is a fixed window"),
                ));
            }
            (LimitKind::TokenBucket { .. }, Some(_)) => {
                return Err(ApiError::invalid(
                    &format!("windows[{i}]"),
                    format!("expected null: limits[{i}] is a token bucket"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A settlement's id: 16 to 64 characters of `[0-9A-Za-z_-]` (it becomes part of a Redis key).
pub fn settlement_id(id: &str, path: &str) -> Result<(), ApiError> {
    if (16..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        Ok(())
    } else {
        Err(ApiError::invalid(path, "expected 16 to 64 characters of [0-9A-Za-z_-]"))
    }
}

/// `limits[i]`, made once rather than per request.
const LIMIT_PATHS: [&str; MAX_LIMITS_PER_TIER] = [
    "limits[0]",
    "limits[1]",
    "limits[2]",
    "limits[3]",
    "limits[4]",
    "limits[5]",
    "limits[6]",
    "limits[7]",
    "limits[8]",
    "limits[9]",
    "limits[10]",
    "limits[11]",
    "limits[12]",
    "limits[13]",
    "limits[14]",
    "limits[15]",
];

/// 1 to 16 valid limits with distinct names, in request order.
fn limits(specs: &[LimitSpec]) -> Result<Vec<Limit>, ApiError> {
    let count = specs.len();
    if !(1..=MAX_LIMITS_PER_TIER).contains(&count) {
        return Err(ApiError::invalid("limits", format!("expected 1 to {MAX_LIMITS_PER_TIER} limits, got {count}")));
    }
    let mut limits: Vec<Limit> = Vec::with_capacity(count);
    for (i, spec) in specs.iter().enumerate() {
        let path = LIMIT_PATHS.get(i).copied().unwrap_or("limits[..]");
        let limit = spec.to_limit(path).map_err(|e| ApiError::invalid(&e.path, e.message))?;
        if let Some(first) = limits.iter().position(|l| l.name == limit.name) {
            return Err(ApiError::invalid(
                &format!("{path}.name"),
                format!("duplicate limit name {:?} (also limits[{first}])", limit.name),
            ));
        }
        limits.push(limit);
    }
    Ok(limits)
}

/// A metered key: `<tier>/<caller>`, 1 to 256 visible ASCII characters without braces
/// (they would change the key's Redis Cluster hash tag).
pub fn metered_key(key: &str, path: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(ApiError::invalid(path, format!("expected 1 to {MAX_KEY_BYTES} bytes, got {}", key.len())));
    }
    if let Some(bad) = key.chars().find(|c| !c.is_ascii_graphic() || *c == '{' || *c == '}') {
        return Err(ApiError::invalid(
            path,
            format!("expected visible ASCII characters other than braces, got {bad:?}"),
        ));
    }
    let tier = tier_of(key);
    if !is_tier_name(tier) || tier.len() == key.len() {
        return Err(ApiError::invalid(
            path,
            "expected `<tier>/<caller>` (like `free/ip:203.0.113.7/32`), the tier matching [a-z0-9_-]{1,32}",
        ));
    }
    Ok(())
}

/// The tier part of a metered key: everything before the first `/`.
pub fn tier_of(key: &str) -> &str {
    key.split_once('/').map_or(key, |(tier, _)| tier)
}

/// `[a-z0-9_-]{1,32}`, as tier names are in the filter's config.
pub fn is_tier_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A SHA-256 in hex: 64 hex digits, returned lower-case.
pub fn sha256_hex(value: &str, path: &str) -> Result<String, ApiError> {
    if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(ApiError::invalid(path, "expected 64 hex digits (the SHA-256 of the token)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> CheckRequest {
        serde_json::from_str(json).unwrap()
    }

    fn message(json: &str) -> String {
        check(request(json)).unwrap_err().message
    }

    #[test]
    fn every_error_names_its_field() {
        let ok = r#"{"name":"a","limit":5,"window_secs":60}"#;
        assert!(message(&format!(r#"{{"key":"","cost":1,"limits":[{ok}]}}"#)).starts_with("key: "));
        assert!(message(&format!(r#"{{"key":"{}","cost":1,"limits":[{ok}]}}"#, "f/".repeat(200)))
            .starts_with("key: expected 1 to 256 bytes"));
        assert!(message(&format!(r#"{{"key":"free","cost":1,"limits":[{ok}]}}"#)).starts_with("key: expected `<tier>/"));
        assert!(message(&format!(r#"{{"key":"Free/ip:1","cost":1,"limits":[{ok}]}}"#)).starts_with("key: "));
        assert!(message(&format!(r#"{{"key":"f/{{x}}","cost":1,"limits":[{ok}]}}"#)).starts_with("key: "));
        assert!(message(&format!(r#"{{"key":"f/a","cost":1000000001,"limits":[{ok}]}}"#)).starts_with("cost: "));
        assert!(message(r#"{"key":"f/a","cost":1,"limits":[]}"#).starts_with("limits: expected 1 to 16"));
        let many = vec![ok; 17].join(",");
        assert!(message(&format!(r#"{{"key":"f/a","cost":1,"limits":[{many}]}}"#)).starts_with("limits: "));
        assert!(message(&format!(
            r#"{{"key":"f/a","cost":1,"limits":[{ok},{{"name":"b","limit":5,"window_secs":0}}]}}"#
        ))
        .starts_with("limits[1].window: "));
        assert!(message(&format!(r#"{{"key":"f/a","cost":1,"limits":[{ok},{ok}]}}"#))
            .starts_with("limits[1].name: duplicate limit name \"a\" (also limits[0])"));
        assert!(message(&format!(r#"{{"key":"f/a","cost":6,"limits":[{ok}]}}"#)).starts_with("cost: 6 exceeds"));
    }

    #[test]
    fn per_limit_costs_are_one_per_limit_and_name_their_entry() {
        let limits = r#"[{"name":"rpd","limit":5,"window_secs":60},{"name":"tokens","limit":1000,"window_secs":60}]"#;
        let c = check(request(&format!(r#"{{"key":"f/a","cost":1,"limits":{limits},"costs":[1,700]}}"#))).unwrap();
        assert_eq!(c.costs, [1, 700]);
        let c = check(request(&format!(r#"{{"key":"f/a","cost":2,"limits":{limits}}}"#))).unwrap();
        assert_eq!(c.costs, [2, 2], "no costs: every limit costs `cost`");
        // With costs, `cost` is not what the limits are charged: a cost above a capacity is no error.
        assert!(check(request(&format!(r#"{{"key":"f/a","cost":900,"limits":{limits},"costs":[1,900]}}"#))).is_ok());
        for (costs, expected) in [
            ("[1]", "costs: expected one entry per limit (2), got 1"),
            ("[1,2,3]", "costs: expected one entry per limit (2), got 3"),
            ("[1,1001]", "costs[1]: 1001 exceeds the capacity 1000 of limits[1] (\"tokens\")"),
            ("[6,1]", "costs[0]: 6 exceeds the capacity 5"),
            ("[1,1000000001]", "costs[1]: expected a whole number from 0 to 1000000000"),
        ] {
            let m = message(&format!(r#"{{"key":"f/a","cost":1,"limits":{limits},"costs":{costs}}}"#));
            assert!(m.starts_with(expected), "{costs}: {m:?} should start with {expected:?}");
        }
    }

    fn settle_request(fields: &str) -> SettleRequest {
        let base = r#""key":"f/a","limits":[{"name":"day","algorithm":"fixed_window","limit":5,"window_secs":86400},
                      {"name":"tokens","limit":1000,"window_secs":60}]"#;
        serde_json::from_str(&format!("{{{base},{fields}}}")).unwrap()
    }

    #[test]
    fn settlements_are_validated_field_by_field() {
        let ok = r#""id":"0123456789abcdef","windows":[20788,null],"reserved":[1,500],"used":[1,1700]"#;
        let s = settle(settle_request(ok)).unwrap();
        assert_eq!(
            (s.windows.as_slice(), s.reserved.as_slice(), s.used.as_slice()),
            ([Some(20788), None].as_slice(), [1, 500].as_slice(), [1, 1700].as_slice())
        );
        assert!(settle(settle_request(&ok.replace("0123456789abcdef", &"aZ09_-".repeat(10)))).is_ok(), "60 chars");
        for (id, valid) in [("0123456789abcde", false), (&*"a".repeat(64), true), (&*"a".repeat(65), false)] {
            let r = settle(settle_request(&ok.replace("0123456789abcdef", id)));
            assert_eq!(r.is_ok(), valid, "{} characters", id.len());
        }
        for (fields, expected) in [
            (ok.replace("0123456789abcdef", "0123456789abcdef/x"), "id: expected 16 to 64 characters of [0-9A-Za-z_-]"),
            (ok.replace("0123456789abcdef", "0123456789abcdef{x}"), "id: "),
            (ok.replace("0123456789abcdef", "0123456789 abcdef"), "id: "),
            (ok.replace("[20788,null]", "[20788]"), "windows: expected one entry per limit (2), got 1"),
            (ok.replace("[20788,null]", "[null,null]"), "windows[0]: "),
            (ok.replace("[20788,null]", "[20788,1]"), "windows[1]: expected null"),
            (ok.replace("[1,500]", "[1]"), "reserved: expected one entry per limit (2), got 1"),
            (ok.replace("[1,1700]", "[1,1700,3]"), "used: expected one entry per limit (2), got 3"),
            (ok.replace("[1,1700]", "[1,1000000001]"), "used[1]: expected a whole number from 0 to 1000000000"),
            (ok.replace("[1,500]", "[1000000001,500]"), "reserved[0]: "),
        ] {
            let e = settle(settle_request(&fields)).unwrap_err();
            assert_eq!(e.status.as_u16(), 400);
            assert!(e.message.starts_with(expected), "{fields}: {:?} should start with {expected:?}", e.message);
        }
        let mut no_key = settle_request(ok);
        no_key.key = "nokey".into();
        assert!(settle(no_key).unwrap_err().message.starts_with("key: "));
        let mut no_limits = settle_request(ok);
        no_limits.limits.clear();
        assert!(settle(no_limits).unwrap_err().message.starts_with("limits: expected 1 to 16"));
    }

    #[test]
    fn valid_requests_pass() {
        let c = check(request(
            r#"{"key":"free/ip:2001:db8::/64","cost":0,"limits":[{"name":"a","limit":5,"window_secs":60}]}"#,
        ))
        .unwrap();
        assert_eq!(tier_of(&c.key), "free");
        assert_eq!(sha256_hex(&"AB".repeat(32), "sha256").unwrap(), "ab".repeat(32));
        assert!(sha256_hex("abc", "sha256").is_err());
    }
}
