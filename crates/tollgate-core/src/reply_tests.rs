//! Every reply's status, headers and body are what they were when the bodies were built
//! with `serde_json::json!`: the functions of that time are kept in `before` and compared.

use super::*;
use crate::config::{limit_from_parts, Algorithm};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// reply.rs as it was, its bodies built as a `serde_json::Value` and printed.
mod before {
    use serde_json::{json, Value};

    use super::super::{thousands, LocalReply, Refusal, JSON, PROBLEM_JSON, QUOTA_EXCEEDED};
    use crate::config::{Config, Limit, Tier};
    use crate::cost::body::BodyError;
    use crate::cost::Unit;
    use crate::headers::Headers;
    use crate::identity::CredentialError;
    use crate::time::{ceil_secs, rfc3339};

    pub(super) fn too_many_requests(config: &Config, refusal: &Refusal<'_>, mut headers: Headers) -> LocalReply {
        let Refusal { tier, limit, anonymous, retry_after_ns, now, cost, remaining } = *refusal;
        let retry_after = ceil_secs(retry_after_ns).max(1);
        let retry_at = rfc3339(now.saturating_add(retry_after_ns));
        let unit = limit.unit;
        let rate = match limit.burst() {
            Some(burst) => format!(
                "{} {} per {} with bursts of {burst}",
                thousands(limit.quota),
                unit.noun(limit.quota),
                limit.window.text
            ),
            None => format!("{} {} per {}", thousands(limit.quota), unit.noun(limit.quota), limit.window.text),
        };
        // Tokens are reserved from an estimate; images are counted exactly.
        let use_ = match unit {
            Unit::Requests => String::new(),
            Unit::Images => format!("; this request would use {} {}", thousands(cost), unit.noun(cost)),
            _ => format!("; this request would use about {} {}", thousands(cost), unit.noun(cost)),
        };
        let left = match unit {
            Unit::Requests => String::new(),
            _ if remaining == 1 => "; 1 is left".to_owned(),
            _ => format!("; {} are left", thousands(remaining)),
        };
        let hint = upgrade_hint(tier, anonymous);
        let message = format!(
            "Rate limit reached for the {} tier: limit \"{}\" allows {rate}{use_}{left}. Try again in {retry_after} s (at {retry_at}). {hint}",
            tier.name, limit.name
        );
        headers.push("retry-after", &retry_after.to_string());
        // SDKs retry a 429 after its `Retry-After` (OpenAI's Node SDK sleeps all of it): a
        // wait longer than a retry can bridge says not to retry, as OpenAI's used-up quota does.
        let retryable = retry_after_ns <= config.headers.max_retry_wait_ms.saturating_mul(1_000_000);
        let (kind, code) = if retryable {
            headers.push("retry-after-ms", &retry_after_ns.div_ceil(1_000_000).max(1).to_string());
            ("rate_limit_error", "rate_limit_exceeded")
        } else {
            headers.push("x-should-retry", "false");
            ("insufficient_quota", "insufficient_quota")
        };
        let body = if config.headers.problem_json {
            headers.push("content-type", PROBLEM_JSON);
            json!({
                "type": QUOTA_EXCEEDED,
                "title": "Request cannot be satisfied as assigned quota has been exceeded",
                "status": 429,
                "detail": message,
                "violated-policies": [limit.name],
                "tier": tier.name,
                "retry_after_seconds": retry_after,
                "resets_at": retry_at,
                "upgrade": hint,
            })
        } else {
            headers.push("content-type", JSON);
            let mut body = json!({ "error": {
                "message": message,
                "type": kind,
                "param": Value::Null,
                "code": code,
                "tier": tier.name,
                "limit": limit.name,
                "quota": limit.quota,
                "window": limit.window.text,
                "retry_after_seconds": retry_after,
                "resets_at": retry_at,
                "upgrade": hint,
            }});
            if let Some(error) = body.get_mut("error").and_then(Value::as_object_mut) {
                if let Some(burst) = limit.burst() {
                    error.insert("burst".to_owned(), json!(burst));
                }
                if unit != Unit::Requests {
                    error.insert("unit".to_owned(), json!(unit.as_str()));
                    error.insert("requested".to_owned(), json!(cost));
                    error.insert("remaining".to_owned(), json!(remaining));
                }
            }
            body
        };
        LocalReply { status: 429, headers, body: body.to_string() }
    }

    fn upgrade_hint(tier: &Tier, anonymous: bool) -> String {
        match (&tier.upgrade_hint, anonymous) {
            (Some(hint), _) => hint.clone(),
            (None, true) => {
                "Requests without an API key share the free allowance of your network; send a key as 'Authorization: Bearer <token>' for a higher limit.".to_owned()
            }
            (None, false) => "Wait for the limit to reset, or ask for a higher tier for your key.".to_owned(),
        }
    }

    /// 401 for a token that is not a known key.
    pub(super) fn invalid_token() -> LocalReply {
        error_reply(
            401,
            Headers::one(
                "www-authenticate",
                "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"unknown API key\"",
            ),
            "The API key is not valid. Check that the whole key is sent as 'Authorization: Bearer <token>'.",
            "authentication_error",
            "invalid_api_key",
        )
    }

    /// 401 for a request without a credential where anonymous access is not configured.
    pub(super) fn missing_token() -> LocalReply {
        error_reply(
            401,
            Headers::one("www-authenticate", "Bearer realm=\"tollgate\""),
            "An API key is required. Send it as 'Authorization: Bearer <token>'.",
            "authentication_error",
            "missing_api_key",
        )
    }

    /// 400 for a malformed or duplicated credential.
    pub(super) fn malformed_credential(error: CredentialError) -> LocalReply {
        error_reply(
            400,
            Headers::one("www-authenticate", "Bearer realm=\"tollgate\", error=\"invalid_request\""),
            &format!("Malformed credentials: {}.", error.describe()),
            "invalid_request_error",
            "malformed_credentials",
        )
    }

    /// 503 when the limiter's shared state could not be updated and policy is to refuse.
    pub(super) fn unavailable() -> LocalReply {
        error_reply(
            503,
            Headers::one("retry-after", "1"),
            "The rate limiter is momentarily overloaded. Retry in 1 s.",
            "server_error",
            "rate_limiter_unavailable",
        )
    }

    fn error_reply(status: u16, mut headers: Headers, message: &str, kind: &str, code: &str) -> LocalReply {
        headers.push("content-type", JSON);
        let body = json!({ "error": { "message": message, "type": kind, "param": Value::Null, "code": code } });
        LocalReply { status, headers, body: body.to_string() }
    }

    /// 503 when the quota service cannot answer and the policy is to refuse.
    pub(super) fn quota_unavailable() -> LocalReply {
        error_reply(
            503,
            Headers::one("retry-after", "1"),
            "The quota service is unavailable, so this request cannot be metered. Retry in 1 s.",
            "server_error",
            "quota_service_unavailable",
        )
    }

    /// 400 for a metered route's body that cannot be read.
    pub(super) fn bad_body(error: &BodyError) -> LocalReply {
        let (message, param) = match error {
            BodyError::Malformed(_) => (format!("{error}. Send the JSON object the API takes."), Value::Null),
            BodyError::Invalid { field, .. } => (format!("{error}."), Value::from(*field)),
        };
        let mut headers = Headers::new();
        headers.push("content-type", JSON);
        let body = json!({ "error": {
            "message": message, "type": "invalid_request_error", "param": param, "code": "invalid_request_body",
        }});
        LocalReply { status: 400, headers, body: body.to_string() }
    }

    /// 413 for a metered route's body larger than the route reads (`max_body_bytes`).
    pub(super) fn body_too_large(max_body_bytes: usize) -> LocalReply {
        error_reply(
            413,
            Headers::new(),
            &format!(
                "The request body is larger than the {max_body_bytes} bytes this route reads. Send a smaller request."
            ),
            "invalid_request_error",
            "request_body_too_large",
        )
    }

    /// 400 for a request that reserves more of a limit's unit than the limit ever holds: no
    /// wait would let it through, so there is no `Retry-After`.
    pub(super) fn never_fits(tier: &Tier, limit: &Limit, cost: u64) -> LocalReply {
        let unit = limit.unit;
        let message = format!(
            "This request would use {} {}, but limit \"{}\" of the {} tier allows at most {} {} per {}: it can never be admitted. {}",
            thousands(cost),
            unit.noun(cost),
            limit.name,
            tier.name,
            thousands(limit.capacity()),
            unit.noun(limit.capacity()),
            limit.window.text,
            match unit {
                Unit::Images => "Ask for fewer images (n).",
                Unit::Cost => "Lower the maximum output, shorten the prompt, or use a cheaper model.",
                _ => "Lower the maximum output (max_tokens, max_completion_tokens or max_output_tokens) or shorten the prompt.",
            }
        );
        let mut headers = Headers::new();
        headers.push("content-type", JSON);
        let body = json!({ "error": {
            "message": message, "type": "invalid_request_error", "param": Value::Null, "code": "exceeds_limit",
            "limit": limit.name, "unit": unit.as_str(), "requested": cost, "allowed": limit.capacity(),
        }});
        LocalReply { status: 400, headers, body: body.to_string() }
    }

    /// 400 for a request to a limit of cost whose model has no price (and no default price).
    pub(super) fn unpriced_model() -> LocalReply {
        error_reply(
            400,
            Headers::new(),
            "This model has no price configured, so what it costs cannot be metered. Use a priced model.",
            "invalid_request_error",
            "unpriced_model",
        )
    }
}

const NOW: Nanos = Nanos(1_795_456_800 * 1_000_000_000);

/// The configuration of the headers, which is all a reply reads of it.
fn config(problem_json: bool, max_retry_wait_ms: u64) -> Config {
    let json = format!(
        r#"{{ "headers": {{ "problem_json": {problem_json}, "max_retry_wait_ms": {max_retry_wait_ms} }},
             "identity": {{ "anonymous": {{ "tier": "free" }} }},
             "tiers": {{ "free": {{ "limits": [ {{ "name": "rpm", "limit": 10, "window": "1m" }} ] }} }},
             "routes": [ {{ "path_prefix": "/" }} ] }}"#
    );
    Config::from_json(json.as_bytes()).unwrap()
}

/// Limits of every unit, with and without a burst, of one and of many.
fn limits() -> Vec<Limit> {
    let mut limits = Vec::new();
    for unit in [Unit::Requests, Unit::Images, Unit::InputTokens, Unit::OutputTokens, Unit::Tokens, Unit::Cost] {
        for (quota, secs, algorithm, burst) in [
            (1, 60, Algorithm::TokenBucket, None),
            (12_000, 86_400, Algorithm::TokenBucket, Some(15_000)),
            (5, 3_600, Algorithm::FixedWindow, None),
        ] {
            let mut limit = limit_from_parts("t", "per-day_2", quota, secs, algorithm, burst).unwrap();
            limit.unit = unit;
            limits.push(limit);
        }
    }
    limits
}

fn tiers() -> Vec<Tier> {
    let hints = [None, Some("Upgrade: \"pro\" at https://example.com/plans\\ \n\t\u{1} é 😀 </x>".to_owned())];
    hints.into_iter().map(|upgrade_hint| Tier { name: "free".to_owned(), limits: Vec::new(), upgrade_hint }).collect()
}

#[test]
fn a_429_is_what_it_was() {
    let mut compared = 0;
    for config in [config(false, 60_000), config(true, 60_000), config(false, 1_000), config(true, 0)] {
        for tier in &tiers() {
            for limit in &limits() {
                for (anonymous, retry_after_ns, cost, remaining) in
                    [(true, 1, 1, 0), (false, 1_500_000_001, 1, 1), (false, 90_000_000_000_000, 123_456, 7_890)]
                {
                    let refusal = Refusal { tier, limit, anonymous, retry_after_ns, now: NOW, cost, remaining };
                    let headers = Headers::one("x-ratelimit-limit", "10");
                    let now = too_many_requests(&config, &refusal, headers.clone());
                    assert_eq!(now, before::too_many_requests(&config, &refusal, headers), "{limit:?}");
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 4 * 2 * 18 * 3);
}

#[test]
fn every_other_reply_is_what_it_was() {
    assert_eq!(invalid_token(), before::invalid_token());
    assert_eq!(missing_token(), before::missing_token());
    for error in [
        CredentialError::Duplicate,
        CredentialError::NotBearer,
        CredentialError::Empty,
        CredentialError::TooLong,
        CredentialError::BadCharacters,
    ] {
        assert_eq!(malformed_credential(error), before::malformed_credential(error));
    }
    assert_eq!(unavailable(), before::unavailable());
    assert_eq!(quota_unavailable(), before::quota_unavailable());
    assert_eq!(unpriced_model(), before::unpriced_model());
    assert_eq!(body_too_large(1_048_576), before::body_too_large(1_048_576));
    for error in [
        BodyError::Malformed("expected `,` or `}` at line 1 column 9 at `n` \"\\\u{0}\"".to_owned()),
        BodyError::Invalid { field: "stream_options.include_usage", expected: "a boolean" },
    ] {
        assert_eq!(bad_body(&error), before::bad_body(&error));
    }
    for tier in &tiers() {
        for limit in &limits() {
            for cost in [1, 2, 1_000_000] {
                assert_eq!(never_fits(tier, limit, cost), before::never_fits(tier, limit, cost));
            }
        }
    }
}
