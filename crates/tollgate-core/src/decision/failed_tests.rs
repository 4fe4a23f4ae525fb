//! Failing credentials counted per network before any verification, and key
//! verifications in flight bounded per worker.

use serde_json::{json, Value};

use super::*;
use crate::store::FakeSharedData;
use crate::worker::Worker;
use crate::RequestInfo;
use crate::{Config, Nanos};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const GLOBAL: &str = include_str!("../../fixtures/good/global.json");
const SEC: u64 = 1_000_000_000;
const T0: Nanos = Nanos(1_795_456_800 * SEC);
const IMAGES: &str = "/v1/images/generations";
const ATTACKER: &str = "198.51.100.9:0";

/// The `global.json` fixture with `identity` and `quota_service` fields set.
fn config(identity: Value, quota: Value) -> Config {
    let mut json: Value = serde_json::from_str(GLOBAL).unwrap();
    for (k, v) in identity.as_object().unwrap() {
        json["identity"][k] = v.clone();
    }
    for (k, v) in quota.as_object().unwrap() {
        json["quota_service"][k] = v.clone();
    }
    Config::from_json(json.to_string().as_bytes()).unwrap()
}

/// A request with `token` from `address`, which the host gives only when asked.
fn from(address: &'static str, token: &'static str) -> RequestInfo<'static> {
    fn attacker() -> Option<String> {
        Some(ATTACKER.to_owned())
    }
    fn other() -> Option<String> {
        Some("203.0.113.50:0".to_owned())
    }
    let lookup: fn() -> Option<String> = if address == ATTACKER { attacker } else { other };
    RequestInfo {
        method: "POST",
        path: IMAGES,
        authorization: vec![token],
        client_address_of: Some(lookup),
        ..Default::default()
    }
}

/// A distinct made-up bearer token per `i`.
fn token(i: u32) -> &'static str {
    Box::leak(format!("Bearer tg_random_{i}").into_boxed_str())
}

fn unknown(c: &Config, s: &FakeSharedData, w: &mut Worker, call: Callout, now: Nanos) -> Decision {
    let body = serde_json::to_vec(&json!({ "known": false })).unwrap();
    match resume(c, s, w, call.pending, Answer::Response { status: 200, body: &body }, now) {
        Step::Done(d) => d,
        Step::Call(c) => panic!("unexpected callout to {}", c.path),
    }
}

fn body(d: &Decision) -> Value {
    serde_json::from_str(&d.reply.as_ref().unwrap().body).unwrap()
}

#[test]
fn a_network_past_its_failed_credentials_makes_no_more_callouts() {
    let c = config(json!({ "failed_credentials": { "limit": 3, "window": "1m" } }), json!({}));
    let (s, mut w) = (FakeSharedData::default(), Worker::new(100));
    let mut callouts = 0;
    let mut limited = Vec::new();
    for i in 0..50 {
        match begin(&c, &s, &mut w, &from(ATTACKER, token(i)), T0) {
            Step::Call(call) => {
                assert_eq!(call.path, "/v1/keys/verify");
                callouts += 1;
                assert_eq!(unknown(&c, &s, &mut w, *call, T0).reply.unwrap().status, 401);
            }
            Step::Done(d) => limited.push(d),
        }
    }
    assert_eq!(callouts, 3, "the limit's worth of callouts, then none");
    assert_eq!(limited.len(), 47);
    let d = &limited[0];
    let reply = d.reply.as_ref().unwrap();
    assert_eq!((d.outcome, reply.status), (Outcome::CredentialsLimited, 429));
    // One failure back every 20 s (3 a minute).
    assert_eq!(reply.headers.get("retry-after"), Some("20"));
    let error = &body(d)["error"];
    assert_eq!(error["code"], "too_many_failed_credentials");
    assert_eq!((error["limit"].as_u64(), error["window"].as_str()), (Some(3), Some("1m")));
    assert!(error["message"].as_str().unwrap().contains("Authorization: Bearer"));
    assert_eq!(d.caller_name(&c), Some("ip:198.51.100.9/32"));

    // Malformed credentials from that network count too; another network is untouched.
    let malformed = RequestInfo { authorization: vec!["Basic abc"], ..from(ATTACKER, "") };
    assert_eq!(done(begin(&c, &s, &mut w, &malformed, T0)).outcome, Outcome::CredentialsLimited);
    assert!(matches!(begin(&c, &s, &mut w, &from("other", token(999)), T0), Step::Call(_)));
    // A configured key from the limited network is not affected.
    let configured = from(ATTACKER, "Bearer tok-premium");
    assert!(matches!(begin(&c, &s, &mut w, &configured, T0), Step::Call(ref check) if check.path == "/v1/check"));
    // 20 s later the network may try once more.
    assert!(matches!(begin(&c, &s, &mut w, &from(ATTACKER, token(1000)), Nanos(T0.0 + 20 * SEC)), Step::Call(_)));
}

fn done(step: Step) -> Decision {
    match step {
        Step::Done(d) => d,
        Step::Call(c) => panic!("expected a decision, got a callout to {}", c.path),
    }
}

#[test]
fn a_good_key_gives_its_count_back_and_negative_cache_hits_count() {
    let c = config(json!({ "failed_credentials": { "limit": 1, "window": "1m" } }), json!({}));
    let (s, mut w) = (FakeSharedData::default(), Worker::new(100));
    for _ in 0..3 {
        let Step::Call(call) = begin(&c, &s, &mut w, &from(ATTACKER, token(1)), T0) else { panic!("no callout") };
        let known = serde_json::to_vec(&json!({ "known": true, "id": "k_1", "tier": "premium" })).unwrap();
        let step = resume(&c, &s, &mut w, call.pending, Answer::Response { status: 200, body: &known }, T0);
        assert!(matches!(step, Step::Call(ref check) if check.path == "/v1/check"), "the good key is metered");
        // Cached for 1 s: the next round verifies again, at a later time.
        w = Worker::new(100);
    }
    // Its counts were given back: one made-up token is still answered with a callout...
    let Step::Call(call) = begin(&c, &s, &mut w, &from(ATTACKER, token(2)), T0) else { panic!("no callout") };
    assert_eq!(unknown(&c, &s, &mut w, *call, T0).reply.unwrap().status, 401);
    // ...and it used the allowance: the same token again (from the negative cache) is 429.
    assert_eq!(done(begin(&c, &s, &mut w, &from(ATTACKER, token(2)), T0)).outcome, Outcome::CredentialsLimited);
}

#[test]
fn the_limit_can_be_turned_off() {
    let c = config(json!({ "failed_credentials": null }), json!({}));
    assert!(c.identity.failed_credentials.is_none());
    let (s, mut w) = (FakeSharedData::default(), Worker::new(100));
    for i in 0..30 {
        let Step::Call(call) = begin(&c, &s, &mut w, &from(ATTACKER, token(i)), T0) else { panic!("no callout") };
        assert_eq!(unknown(&c, &s, &mut w, *call, T0).outcome, Outcome::Unauthenticated);
    }
}

#[test]
fn key_verifications_in_flight_are_bounded_per_worker() {
    let c = config(json!({ "failed_credentials": null }), json!({ "max_pending_verifications": 2 }));
    let (s, mut w) = (FakeSharedData::default(), Worker::new(100));
    let first = begin(&c, &s, &mut w, &from(ATTACKER, token(1)), T0);
    let second = begin(&c, &s, &mut w, &from(ATTACKER, token(2)), T0);
    assert!(matches!((&first, &second), (Step::Call(_), Step::Call(_))));
    assert_eq!(w.verifications_in_flight(), 2);
    let d = done(begin(&c, &s, &mut w, &from(ATTACKER, token(3)), T0));
    assert_eq!((d.outcome, d.reply.as_ref().unwrap().status), (Outcome::QuotaUnavailable, 503));
    assert_eq!(d.reply.as_ref().unwrap().headers.get("retry-after"), Some("1"));
    assert_eq!(body(&d)["error"]["code"], "key_verifications_busy");
    assert!(d.quota.verifications_full && !d.quota.breaker_opened);
    // An answer frees its place; so does a stream gone before its answer.
    let Step::Call(first) = first else { unreachable!() };
    unknown(&c, &s, &mut w, *first, T0);
    let Step::Call(second) = second else { unreachable!() };
    second.pending.release(&mut w);
    assert_eq!(w.verifications_in_flight(), 0);
    assert!(matches!(begin(&c, &s, &mut w, &from(ATTACKER, token(4)), T0), Step::Call(_)));
}

#[test]
fn its_fields_are_checked_by_path() {
    let bad = |identity: Value, quota: Value| {
        let mut json: Value = serde_json::from_str(GLOBAL).unwrap();
        for (k, v) in identity.as_object().unwrap() {
            json["identity"][k] = v.clone();
        }
        for (k, v) in quota.as_object().unwrap() {
            json["quota_service"][k] = v.clone();
        }
        Config::from_json(json.to_string().as_bytes()).unwrap_err().path
    };
    let failed = |f: Value| bad(json!({ "failed_credentials": f }), json!({}));
    assert_eq!(failed(json!({ "limit": 0, "window": "1m" })), "identity.failed_credentials.limit");
    assert_eq!(failed(json!({ "limit": 5, "window": "soon" })), "identity.failed_credentials.window");
    assert_eq!(failed(json!({ "limit": 5 })), "identity.failed_credentials");
    assert_eq!(
        bad(json!({}), json!({ "max_pending_callouts": 10, "max_pending_verifications": 11 })),
        "quota_service.max_pending_verifications"
    );
    let c = config(json!({}), json!({ "max_pending_callouts": 10 }));
    assert_eq!(c.quota.unwrap().max_pending_verifications, 10, "the default, capped by max_pending_callouts");
}

#[test]
fn the_429_body_is_what_serde_json_printed() {
    for (identity, retry_after_ns) in [
        (json!({ "failed_credentials": { "limit": 3, "window": "1m" } }), 1),
        (json!({ "failed_credentials": { "limit": 20, "window": "90s" } }), 61 * SEC + 5),
    ] {
        let c = config(identity, json!({}));
        let limit = c.identity.failed_credentials.as_ref().unwrap();
        let reply = super::failed::too_many_failures(limit, retry_after_ns, T0);
        let retry_after = crate::time::ceil_secs(retry_after_ns).max(1);
        let retry_at = crate::time::rfc3339(T0.saturating_add(retry_after_ns));
        let message = format!(
            "Too many requests with a credential that is not valid came from your network: at most {} per {} are \
             checked. Try again in {retry_after} s (at {retry_at}), and check that the whole key is sent as \
             'Authorization: Bearer <token>'.",
            limit.quota, limit.window.text
        );
        // The body as serde_json::json! printed it before it was written by hand.
        let before = json!({ "error": {
            "message": message,
            "type": "rate_limit_error",
            "param": Value::Null,
            "code": "too_many_failed_credentials",
            "limit": limit.quota,
            "window": limit.window.text,
            "retry_after_seconds": retry_after,
            "resets_at": retry_at,
        }});
        assert_eq!(reply.body, before.to_string());
    }
}

#[test]
fn the_503_body_of_busy_verifications_is_what_serde_json_printed() {
    let reply = super::caller::verifications_full();
    let before = json!({ "error": {
        "message": "Too many API keys are being verified at once, so this one cannot be checked now. Retry in 1 s.",
        "type": "server_error",
        "param": Value::Null,
        "code": "key_verifications_busy",
    }});
    assert_eq!((reply.status, reply.body), (503, before.to_string()));
}
