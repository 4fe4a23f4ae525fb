//! Decisions that involve the quota service: callouts, answers, failures, the breaker,
//! and keys verified remotely.

use serde_json::{json, Value};

use super::*;
use crate::config::FailureMode;
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

fn config() -> Config {
    Config::from_json(GLOBAL.as_bytes()).unwrap()
}

fn anonymous() -> RequestInfo<'static> {
    RequestInfo { method: "POST", path: IMAGES, client_address: Some("203.0.113.7:0"), ..Default::default() }
}

fn with_token(token: &'static str) -> RequestInfo<'static> {
    RequestInfo { authorization: vec![token], ..anonymous() }
}

fn header<'a>(d: &'a Decision, name: &str) -> Option<&'a str> {
    let headers = d.reply.as_ref().map_or(&d.response_headers, |r| &r.headers);
    headers.get(name)
}

fn call(step: Step) -> Callout {
    match step {
        Step::Call(c) => *c,
        Step::Done(d) => panic!("expected a callout, got {d:?}"),
    }
}

fn done(step: Step) -> Decision {
    match step {
        Step::Done(d) => d,
        Step::Call(c) => panic!("expected a decision, got a callout to {}", c.path),
    }
}

fn answer(status: u16, body: &Value) -> (u16, Vec<u8>) {
    (status, serde_json::to_vec(body).unwrap())
}

fn resume_with(
    c: &Config,
    s: &FakeSharedData,
    cache: &mut Worker,
    call: Callout,
    reply: Option<(u16, Vec<u8>)>,
    now: Nanos,
) -> Step {
    match &reply {
        Some((status, body)) => resume(c, s, cache, call.pending, Answer::Response { status: *status, body }, now),
        None => resume(c, s, cache, call.pending, Answer::Failed, now),
    }
}

fn admitted(remaining: u64) -> Value {
    json!({ "admitted": true, "limits": [ { "name": "images-per-day", "admitted": true, "remaining": remaining, "reset_after_ms": 21_600_000, "retry_after_ms": 0 } ] })
}

#[test]
fn a_global_limit_asks_the_service_and_reports_its_counts() {
    let (c, s, mut cache) = (config(), FakeSharedData::default(), Worker::new(10));
    let callout = call(begin(&c, &s, &mut cache, &anonymous(), T0));
    assert_eq!(callout.path, "/v1/check");
    let sent: Value = serde_json::from_str(&callout.body).unwrap();
    assert_eq!(
        sent,
        json!({ "key": "free/ip:203.0.113.7/32", "cost": 1, "limits": [
            { "name": "images-per-day", "algorithm": "fixed_window", "limit": 5, "window_secs": 86400 } ] })
    );
    let d = done(resume_with(&c, &s, &mut cache, callout, Some(answer(200, &admitted(4))), T0));
    assert_eq!(d.outcome, Outcome::Allowed);
    assert_eq!(header(&d, "ratelimit"), Some("\"images-per-day\";r=4;t=21600, \"burst\";r=2;t=4"));
    assert_eq!(header(&d, "x-tollgate-degraded"), None);
}

#[test]
fn local_limits_refuse_first_without_a_callout() {
    let (c, s, mut cache) = (config(), FakeSharedData::default(), Worker::new(10));
    for _ in 0..3 {
        let callout = call(begin(&c, &s, &mut cache, &anonymous(), T0));
        done(resume_with(&c, &s, &mut cache, callout, Some(answer(200, &admitted(4))), T0));
    }
    let d = done(begin(&c, &s, &mut cache, &anonymous(), T0));
    assert_eq!((d.outcome, d.limited_by.as_deref()), (Outcome::Limited, Some("burst")));
}

#[test]
fn a_global_refusal_is_a_429_and_charges_nothing_locally() {
    let (c, s, mut cache) = (config(), FakeSharedData::default(), Worker::new(10));
    let refused = json!({ "admitted": false, "limits": [ { "name": "images-per-day", "admitted": false, "remaining": 0, "reset_after_ms": 21_600_000, "retry_after_ms": 21_600_000 } ] });
    for _ in 0..5 {
        let callout = call(begin(&c, &s, &mut cache, &anonymous(), T0));
        let d = done(resume_with(&c, &s, &mut cache, callout, Some(answer(200, &refused)), T0));
        assert_eq!(d.reply.as_ref().unwrap().status, 429);
        assert_eq!(d.limited_by.as_deref(), Some("images-per-day"));
        assert_eq!(header(&d, "retry-after"), Some("21600"));
        assert_eq!(header(&d, "x-ratelimit-resource"), Some("images-per-day"));
    }
    // The local burst (3) was never charged by the refusals.
    let callout = call(begin(&c, &s, &mut cache, &anonymous(), T0));
    let d = done(resume_with(&c, &s, &mut cache, callout, Some(answer(200, &admitted(4))), T0));
    assert!(header(&d, "ratelimit").unwrap().ends_with("\"burst\";r=2;t=4"));
}

#[test]
fn failure_mode_local_holds_the_limit_in_a_local_bucket() {
    let (c, s, mut cache) = (config(), FakeSharedData::default(), Worker::new(10));
    let mut allowed = 0;
    for i in 0..10 {
        let now = Nanos(T0.0 + i * 20 * SEC); // past the burst limit's refill
        match begin(&c, &s, &mut cache, &anonymous(), now) {
            Step::Call(callout) => {
                let d = done(resume_with(&c, &s, &mut cache, *callout, None, now));
                if d.outcome == Outcome::Allowed {
                    allowed += 1;
                    assert_eq!(
                        header(&d, "x-tollgate-degraded"),
                        Some("quota-service-unavailable; failure-mode=local")
                    );
                    assert_eq!(d.quota.degraded, Some(FailureMode::Local));
                }
            }
            Step::Done(d) => {
                assert!(d.quota.short_circuited, "the breaker opened after 3 failures");
                if d.outcome == Outcome::Allowed {
                    allowed += 1;
                }
            }
        }
    }
    assert_eq!(allowed, 5, "the fallback bucket has the limit's size");
}

#[test]
fn failure_mode_open_admits_and_says_so() {
    let (c, s, mut cache) = (config(), FakeSharedData::default(), Worker::new(10));
    let callout = call(begin(&c, &s, &mut cache, &with_token("Bearer tok-premium"), T0));
    let d = done(resume_with(&c, &s, &mut cache, callout, Some((500, b"oops".to_vec())), T0));
    assert_eq!(d.outcome, Outcome::Allowed);
    assert_eq!(header(&d, "x-tollgate-degraded"), Some("quota-service-unavailable; failure-mode=open"));
    assert_eq!(d.quota.degraded, Some(FailureMode::Open));
}

#[test]
fn failure_mode_closed_is_a_503() {
    let json = GLOBAL
        .replace(r#""id": "acme-prod""#, r#""id": "pro-1""#)
        .replace(r#""tier": "premium" }"#, r#""tier": "pro" }"#);
    let c = Config::from_json(json.as_bytes()).unwrap();
    let (s, mut cache) = (FakeSharedData::default(), Worker::new(10));
    let callout = call(begin(&c, &s, &mut cache, &with_token("Bearer tok-premium"), T0));
    let d = done(resume_with(&c, &s, &mut cache, callout, None, T0));
    assert_eq!(d.outcome, Outcome::QuotaUnavailable);
    let reply = d.reply.unwrap();
    assert_eq!(reply.status, 503);
    assert!(reply.headers.get("retry-after") == Some("1"));
}

#[test]
fn a_garbled_answer_counts_as_a_failure() {
    let (c, s, mut cache) = (config(), FakeSharedData::default(), Worker::new(10));
    let premium = with_token("Bearer tok-premium");
    let wrong_length = answer(200, &json!({ "admitted": true, "limits": [] }));
    let mut opened = false;
    for reply in [wrong_length, (200, b"not json".to_vec()), (200, Vec::new())] {
        let callout = call(begin(&c, &s, &mut cache, &premium, T0));
        let d = done(resume_with(&c, &s, &mut cache, callout, Some(reply), T0));
        // Status 200: the host's count of failures by status would miss it.
        assert_eq!((d.quota.degraded, d.quota.unreadable_answers), (Some(FailureMode::Open), 1));
        opened |= d.quota.breaker_opened;
    }
    assert!(opened, "three garbled answers open the breaker");
    // A 500 is counted by its status, and a readable answer is no failure.
    for (reply, unreadable) in [((500, b"oops".to_vec()), 0), (answer(200, &admitted(90)), 0)] {
        let (s, mut cache) = (FakeSharedData::default(), Worker::new(10));
        let callout = call(begin(&c, &s, &mut cache, &premium, T0));
        assert_eq!(
            done(resume_with(&c, &s, &mut cache, callout, Some(reply), T0)).quota.unreadable_answers,
            unreadable
        );
    }
}

#[test]
fn a_garbled_verification_and_check_are_two_failures_of_one_request() {
    let (c, s, mut cache) = (config(), FakeSharedData::default(), Worker::new(10));
    let dynamic = with_token("Bearer tg_dynamic");
    let known = answer(200, &json!({ "known": true, "id": "k_1", "tier": "premium" }));
    let verify = call(begin(&c, &s, &mut cache, &dynamic, T0));
    call(resume_with(&c, &s, &mut cache, verify, Some(known), T0));
    // Stale: verified again, and the garbled answer falls back on the stale entry.
    let later = Nanos(T0.0 + 5 * SEC);
    let verify = call(begin(&c, &s, &mut cache, &dynamic, later));
    let check = call(resume_with(&c, &s, &mut cache, verify, Some((200, b"{".to_vec())), later));
    let d = done(resume_with(&c, &s, &mut cache, check, Some((200, b"{".to_vec())), later));
    assert_eq!((d.quota.degraded, d.quota.unreadable_answers), (Some(FailureMode::Open), 2));
}

#[test]
fn the_breaker_opens_stops_callouts_and_closes_after_a_good_probe() {
    let (c, s, mut cache) = (config(), FakeSharedData::default(), Worker::new(10));
    let premium = with_token("Bearer tok-premium");
    let mut opened = false;
    for i in 0..3 {
        let callout = call(begin(&c, &s, &mut cache, &premium, Nanos(T0.0 + i)));
        opened |= done(resume_with(&c, &s, &mut cache, callout, None, Nanos(T0.0 + i))).quota.breaker_opened;
    }
    assert!(opened);
    let d = done(begin(&c, &s, &mut cache, &premium, Nanos(T0.0 + SEC)));
    assert!(d.quota.short_circuited);
    assert_eq!(d.quota.degraded, Some(FailureMode::Open));
    // After the 2 s cooldown one request probes; a good answer closes the breaker.
    let later = Nanos(T0.0 + 3 * SEC);
    let probe = call(begin(&c, &s, &mut cache, &premium, later));
    assert!(done(begin(&c, &s, &mut cache, &premium, later)).quota.short_circuited, "one probe at a time");
    let d = done(resume_with(&c, &s, &mut cache, probe, Some(answer(200, &admitted(90))), later));
    assert!(d.quota.breaker_closed);
    call(begin(&c, &s, &mut cache, &premium, later));
}

#[test]
fn unknown_tokens_are_verified_remotely_and_cached_both_ways() {
    let (c, s, mut cache) = (config(), FakeSharedData::default(), Worker::new(10));
    let dynamic = with_token("Bearer tg_dynamic");
    let callout = call(begin(&c, &s, &mut cache, &dynamic, T0));
    assert_eq!(callout.path, "/v1/keys/verify");
    let sent: Value = serde_json::from_str(&callout.body).unwrap();
    assert_eq!(sent["sha256"], crate::hash::hex(&crate::hash::sha256(b"tg_dynamic")));
    assert!(!callout.body.contains("tg_dynamic"), "the token never leaves");
    let known = json!({ "known": true, "id": "k_1", "tier": "premium" });
    let check = call(resume_with(&c, &s, &mut cache, callout, Some(answer(200, &known)), T0));
    assert_eq!(serde_json::from_str::<Value>(&check.body).unwrap()["key"], "premium/key:k_1");
    // Within the TTL: straight to the check, no second verification.
    assert_eq!(call(begin(&c, &s, &mut cache, &dynamic, Nanos(T0.0 + SEC / 2))).path, "/v1/check");
    // After it (1 s): verified again, and a revoked key is now unknown → 401, cached.
    let again = call(begin(&c, &s, &mut cache, &dynamic, Nanos(T0.0 + SEC)));
    assert_eq!(again.path, "/v1/keys/verify");
    let d =
        done(resume_with(&c, &s, &mut cache, again, Some(answer(200, &json!({ "known": false }))), Nanos(T0.0 + SEC)));
    assert_eq!(d.reply.unwrap().status, 401);
    let d = done(begin(&c, &s, &mut cache, &dynamic, Nanos(T0.0 + SEC + 1)));
    assert_eq!((d.outcome, d.reply.unwrap().status), (Outcome::Unauthenticated, 401), "negative cache: no callout");
}

#[test]
fn a_key_of_an_unconfigured_tier_is_refused() {
    let (c, s, mut cache) = (config(), FakeSharedData::default(), Worker::new(10));
    let callout = call(begin(&c, &s, &mut cache, &with_token("Bearer tg_x"), T0));
    let odd = json!({ "known": true, "id": "k_2", "tier": "platinum" });
    assert_eq!(done(resume_with(&c, &s, &mut cache, callout, Some(answer(200, &odd)), T0)).reply.unwrap().status, 401);
}

#[test]
fn when_verification_fails_a_stale_entry_still_serves_and_otherwise_503() {
    let (c, s, mut cache) = (config(), FakeSharedData::default(), Worker::new(10));
    let dynamic = with_token("Bearer tg_dynamic");
    let callout = call(begin(&c, &s, &mut cache, &dynamic, T0));
    let known = json!({ "known": true, "id": "k_1", "tier": "premium" });
    call(resume_with(&c, &s, &mut cache, callout, Some(answer(200, &known)), T0));
    let later = Nanos(T0.0 + 5 * SEC);
    let stale = call(begin(&c, &s, &mut cache, &dynamic, later));
    let check = call(resume_with(&c, &s, &mut cache, stale, None, later));
    assert_eq!(serde_json::from_str::<Value>(&check.body).unwrap()["key"], "premium/key:k_1");

    let other = with_token("Bearer tg_never_seen");
    let callout = call(begin(&c, &s, &mut cache, &other, later));
    let d = done(resume_with(&c, &s, &mut cache, callout, None, later));
    assert_eq!((d.outcome, d.reply.unwrap().status), (Outcome::QuotaUnavailable, 503));
}

#[test]
fn global_limits_without_a_quota_service_are_a_config_error() {
    let json = GLOBAL.replace(r#""quota_service""#, r#""unused""#);
    let start = json.find(r#""unused""#).unwrap();
    let trimmed = format!("{}}}", json[..start].trim_end().trim_end_matches(','));
    let e = Config::from_json(trimmed.as_bytes()).unwrap_err();
    assert_eq!(e.path, "tiers.free.limits[0].scope");
    let local_with_mode = GLOBAL.replace(r#""window": "10s" }"#, r#""window": "10s", "failure_mode": "open" }"#);
    let e = Config::from_json(local_with_mode.as_bytes()).unwrap_err();
    assert_eq!(e.path, "tiers.free.limits[1].failure_mode");
}

#[test]
fn without_a_transport_decide_treats_callouts_as_failed() {
    let c = config();
    let s = FakeSharedData::default();
    let d = decide(&c, &s, &with_token("Bearer tok-premium"), T0);
    assert_eq!(d.quota.degraded, Some(FailureMode::Open));
}

#[test]
fn a_global_daily_window_resets_at_exactly_midnight_whatever_the_clock_skew() {
    let (c, s, mut cache) = (config(), FakeSharedData::default(), Worker::new(10));
    // T0 is 18:00 UTC: six hours to midnight. The service's clock is 3 ms behind ours and
    // it rounds up to whole ms.
    let now = Nanos(T0.0 + 123_456);
    let callout = call(begin(&c, &s, &mut cache, &anonymous(), now));
    let skewed = json!({ "admitted": false, "limits": [ { "name": "images-per-day", "admitted": false, "remaining": 0,
        "reset_after_ms": 6 * 3_600_000 + 3, "retry_after_ms": 6 * 3_600_000 + 3 } ] });
    let d = done(resume_with(&c, &s, &mut cache, callout, Some(answer(200, &skewed)), now));
    let midnight = (T0.0 / SEC + 6 * 3600).to_string();
    assert_eq!(header(&d, "x-ratelimit-reset"), Some(midnight.as_str()));
    assert_eq!(header(&d, "retry-after"), Some("21600"));
}
