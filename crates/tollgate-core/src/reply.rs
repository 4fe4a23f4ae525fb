//! Local replies: 429 with a body that says what happened and what to do, 401, 400, 503.
//! Bodies follow the OpenAI error shape `{"error": {"message", "type", "param", "code"}}`
//! that AI clients already parse, or `application/problem+json` when configured.

use crate::config::{Config, Limit, Tier};
use crate::cost::body::BodyError;
use crate::cost::Unit;
use crate::headers::Headers;
use crate::identity::CredentialError;
use crate::json_write::JsonObject;
use crate::time::{ceil_secs, rfc3339, Nanos};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Headers,
    pub body: String,
}

const JSON: &str = "application/json";
const PROBLEM_JSON: &str = "application/problem+json";
const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// Facts about a refused request, for the 429 body.
pub struct Refusal<'a> {
    pub tier: &'a Tier,
    pub limit: &'a Limit,
    pub anonymous: bool,
    pub retry_after_ns: u64,
    pub now: Nanos,
    /// Units the request would have used of the limit, and how many are left.
    pub cost: u64,
    pub remaining: u64,
}

pub fn too_many_requests(config: &Config, refusal: &Refusal<'_>, mut headers: Headers) -> LocalReply {
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
    // Members in the order serde_json's map kept them: sorted by name.
    let body = if config.headers.problem_json {
        headers.push("content-type", PROBLEM_JSON);
        JsonObject::new()
            .str("detail", &message)
            .str("resets_at", &retry_at)
            .num("retry_after_seconds", retry_after)
            .num("status", 429)
            .str("tier", &tier.name)
            .str("title", "Request cannot be satisfied as assigned quota has been exceeded")
            .str("type", QUOTA_EXCEEDED)
            .str("upgrade", &hint)
            .strs("violated-policies", &[&limit.name])
            .finish()
    } else {
        headers.push("content-type", JSON);
        let metered = unit != Unit::Requests;
        let mut error = JsonObject::new();
        if let Some(burst) = limit.burst() {
            error.num("burst", burst);
        }
        error.str("code", code).str("limit", &limit.name).str("message", &message).null("param");
        error.num("quota", limit.quota);
        if metered {
            error.num("remaining", remaining).num("requested", cost);
        }
        error.str("resets_at", &retry_at).num("retry_after_seconds", retry_after).str("tier", &tier.name);
        error.str("type", kind);
        if metered {
            error.str("unit", unit.as_str());
        }
        error.str("upgrade", &hint).str("window", &limit.window.text).finish_as_error()
    };
    LocalReply { status: 429, headers, body }
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
pub fn invalid_token() -> LocalReply {
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
pub fn missing_token() -> LocalReply {
    error_reply(
        401,
        Headers::one("www-authenticate", "Bearer realm=\"tollgate\""),
        "An API key is required. Send it as 'Authorization: Bearer <token>'.",
        "authentication_error",
        "missing_api_key",
    )
}

/// 400 for a malformed or duplicated credential.
pub fn malformed_credential(error: CredentialError) -> LocalReply {
    error_reply(
        400,
        Headers::one("www-authenticate", "Bearer realm=\"tollgate\", error=\"invalid_request\""),
        &format!("Malformed credentials: {}.", error.describe()),
        "invalid_request_error",
        "malformed_credentials",
    )
}

/// 503 when the limiter's shared state could not be updated and policy is to refuse.
pub fn unavailable() -> LocalReply {
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
    let body =
        JsonObject::new().str("code", code).str("message", message).null("param").str("type", kind).finish_as_error();
    LocalReply { status, headers, body }
}

/// 503 when the quota service cannot answer and the policy is to refuse.
pub fn quota_unavailable() -> LocalReply {
    error_reply(
        503,
        Headers::one("retry-after", "1"),
        "The quota service is unavailable, so this request cannot be metered. Retry in 1 s.",
        "server_error",
        "quota_service_unavailable",
    )
}

/// 400 for a metered route's body that cannot be read.
pub fn bad_body(error: &BodyError) -> LocalReply {
    let mut body = JsonObject::new();
    body.str("code", "invalid_request_body");
    match error {
        BodyError::Malformed(_) => {
            body.str("message", &format!("{error}. Send the JSON object the API takes.")).null("param")
        }
        BodyError::Invalid { field, .. } => body.str("message", &format!("{error}.")).str("param", field),
    };
    let mut headers = Headers::new();
    headers.push("content-type", JSON);
    LocalReply { status: 400, headers, body: body.str("type", "invalid_request_error").finish_as_error() }
}

/// 413 for a metered route's body larger than the route reads (`max_body_bytes`).
pub fn body_too_large(max_body_bytes: usize) -> LocalReply {
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
pub fn never_fits(tier: &Tier, limit: &Limit, cost: u64) -> LocalReply {
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
    let body = JsonObject::new()
        .num("allowed", limit.capacity())
        .str("code", "exceeds_limit")
        .str("limit", &limit.name)
        .str("message", &message)
        .null("param")
        .num("requested", cost)
        .str("type", "invalid_request_error")
        .str("unit", unit.as_str())
        .finish_as_error();
    LocalReply { status: 400, headers, body }
}

/// `12000` as `12,000`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 400 for a request to a limit of cost whose model has no price (and no default price).
pub fn unpriced_model() -> LocalReply {
    error_reply(
        400,
        Headers::new(),
        "This model has no price configured, so what it costs cannot be metered. Use a priced model.",
        "invalid_request_error",
        "unpriced_model",
    )
}

#[cfg(test)]
#[path = "reply_tests.rs"]
mod tests;
