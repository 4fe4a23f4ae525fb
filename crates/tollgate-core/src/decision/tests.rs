use serde_json::Value;

use super::*;
use crate::store::{FakeSharedData, StoreError};
use crate::worker::Worker;
use crate::RequestInfo;
use crate::{Config, Nanos};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const TIERS: &str = include_str!("../../fixtures/good/tiers.json");
const SEC: u64 = 1_000_000_000;
/// 2026-11-23T18:00:00Z.
const EVENING: Nanos = Nanos(1_795_456_800 * SEC);

fn config(json: &str) -> Config {
    Config::from_json(json.as_bytes()).unwrap()
}

fn post<'a>(path: &'a str, auth: Option<&'a str>, address: &'a str) -> RequestInfo<'a> {
    RequestInfo {
        method: "POST",
        path,
        authorization: auth.into_iter().collect(),
        api_key: vec![],
        client_address: Some(address),
        client_address_of: None,
        unreadable_credential: false,
        body: None,
    }
}

fn header<'a>(d: &'a Decision, name: &str) -> Option<&'a str> {
    let headers = d.reply.as_ref().map_or(&d.response_headers, |r| &r.headers);
    headers.get(name)
}

fn body(d: &Decision) -> Value {
    serde_json::from_str(&d.reply.as_ref().unwrap().body).unwrap()
}

const IMAGES: &str = "/v1/images/generations";
const CHAT: &str = "/v1/chat/completions";
const CLIENT: &str = "203.0.113.7:0";

#[test]
fn free_tier_admits_five_images_a_day_then_429_with_advice() {
    // The free tier also has a burst limit of 2 per 10 s; space requests 10 s apart.
    let c = config(TIERS);
    let s = FakeSharedData::default();
    for i in 0..5 {
        let d = decide(&c, &s, &post(IMAGES, None, CLIENT), Nanos(EVENING.0 + i * 10 * SEC));
        assert_eq!(d.outcome, Outcome::Allowed, "request {i}");
        let left = 4 - i;
        assert!(header(&d, "ratelimit").unwrap().starts_with(&format!("\"images-per-day\";r={left};")));
    }
    let now = Nanos(EVENING.0 + 50 * SEC);
    let d = decide(&c, &s, &post(IMAGES, None, CLIENT), now);
    assert_eq!(d.outcome, Outcome::Limited);
    assert_eq!(d.limited_by.as_deref(), Some("images-per-day"));
    assert_eq!(d.caller_name(&c), Some("ip:203.0.113.7/32"));
    let reply = d.reply.as_ref().unwrap();
    assert_eq!(reply.status, 429);
    let until_midnight = 6 * 3600 - 50;
    assert_eq!(header(&d, "retry-after"), Some(until_midnight.to_string().as_str()));
    assert_eq!(header(&d, "content-type"), Some("application/json"));
    assert_eq!(header(&d, "ratelimit-policy"), Some("\"images-per-day\";q=5;w=86400, \"burst\";q=2;w=10"));
    assert_eq!(
        header(&d, "ratelimit"),
        Some(format!("\"images-per-day\";r=0;t={until_midnight}, \"burst\";r=1;t=5").as_str())
    );
    assert_eq!(header(&d, "x-ratelimit-limit"), Some("5"));
    assert_eq!(header(&d, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(header(&d, "x-ratelimit-used"), Some("5"));
    assert_eq!(header(&d, "x-ratelimit-reset"), Some("1795478400"));
    assert_eq!(header(&d, "x-ratelimit-resource"), Some("images-per-day"));
    // Hours away: a retry cannot help, and SDKs are told so (OpenAI's used-up quota).
    assert_eq!(header(&d, "x-should-retry"), Some("false"));
    assert_eq!(header(&d, "retry-after-ms"), None);
    let error = &body(&d)["error"];
    assert_eq!(error["type"], "insufficient_quota");
    assert_eq!(error["code"], "insufficient_quota");
    assert_eq!(error["param"], Value::Null);
    assert_eq!(error["tier"], "free");
    assert_eq!(error["limit"], "images-per-day");
    assert_eq!(error["quota"], 5);
    assert_eq!(error["window"], "1d");
    assert_eq!(error["resets_at"], "2026-11-24T00:00:00Z");
    assert_eq!(error["retry_after_seconds"], until_midnight);
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("free tier") && message.contains("5 requests per 1d"), "{message}");
    assert!(message.contains("Authorization: Bearer <token>") && message.contains("higher limit"), "{message}");
}

#[test]
fn a_refused_request_consumes_nothing_from_any_limit() {
    // Burst (2 per 10 s) refuses the third request at once; the daily count must not move.
    let c = config(TIERS);
    let s = FakeSharedData::default();
    let req = post(IMAGES, None, CLIENT);
    assert_eq!(decide(&c, &s, &req, EVENING).outcome, Outcome::Allowed);
    assert_eq!(decide(&c, &s, &req, EVENING).outcome, Outcome::Allowed);
    for _ in 0..10 {
        let d = decide(&c, &s, &req, EVENING);
        assert_eq!(d.limited_by.as_deref(), Some("burst"));
        assert_eq!(header(&d, "retry-after"), Some("5"));
    }
    // Three more fit in the day once the burst refills: 2 + 3 = 5.
    let mut admitted = 0;
    for i in 1..=10 {
        admitted += u32::from(decide(&c, &s, &req, Nanos(EVENING.0 + i * 10 * SEC)).outcome == Outcome::Allowed);
    }
    assert_eq!(admitted, 3);
}

#[test]
fn a_wait_longer_than_max_retry_wait_ms_tells_clients_not_to_retry() {
    // The free tier's burst (2 per 10 s) refuses a third request for exactly 5 s.
    for (max_retry_wait_ms, retryable) in [(None, true), (Some(5000), true), (Some(4999), false), (Some(0), false)] {
        let json = match max_retry_wait_ms {
            Some(ms) => TIERS.replace(r#""headers": {"#, &format!(r#""headers": {{ "max_retry_wait_ms": {ms},"#)),
            None => TIERS.to_owned(),
        };
        let c = config(&json);
        assert_eq!(c.headers.max_retry_wait_ms, max_retry_wait_ms.unwrap_or(60_000));
        let s = FakeSharedData::default();
        let req = post(IMAGES, None, CLIENT);
        let d = (0..3).map(|_| decide(&c, &s, &req, EVENING)).last().unwrap();
        assert_eq!((d.limited_by.as_deref(), header(&d, "retry-after")), (Some("burst"), Some("5")));
        let error = &body(&d)["error"];
        let seen = (header(&d, "retry-after-ms"), header(&d, "x-should-retry"), error["code"].as_str());
        if retryable {
            assert_eq!(seen, (Some("5000"), None, Some("rate_limit_exceeded")), "{max_retry_wait_ms:?}");
        } else {
            assert_eq!(seen, (None, Some("false"), Some("insufficient_quota")), "{max_retry_wait_ms:?}");
        }
    }
}

#[test]
fn premium_token_admits_one_hundred() {
    let c = config(TIERS);
    let s = FakeSharedData::default();
    let req = post(IMAGES, Some("Bearer tok-premium"), CLIENT);
    let outcomes: Vec<Outcome> = (0..101).map(|_| decide(&c, &s, &req, EVENING).outcome).collect();
    assert!(outcomes[..100].iter().all(|o| *o == Outcome::Allowed));
    assert_eq!(outcomes[100], Outcome::Limited);
    let d = decide(&c, &s, &req, EVENING);
    assert_eq!(d.caller_name(&c), Some("key:acme-prod"));
    assert!(!body(&d)["error"]["message"].as_str().unwrap().contains("Bearer"), "keyed callers get other advice");
}

#[test]
fn a_worker_that_has_seen_a_key_finds_it_again_and_nothing_else_with_it() {
    let c = config(TIERS);
    let s = FakeSharedData::default();
    let mut cache = Worker::new(1);
    let mut run = |auth: &str| {
        let d = decide_with(&c, &s, &mut cache, &post(IMAGES, Some(auth), CLIENT), EVENING);
        (d.outcome, d.caller_name(&c).map(str::to_owned))
    };
    let premium = (Outcome::Allowed, Some("key:acme-prod".to_owned()));
    let basic = (Outcome::Allowed, Some("key:basic-1".to_owned()));
    let unknown = (Outcome::Unauthenticated, None);
    // Seen once (hashed), then found by tag; the two keys never mix, and near misses of a
    // remembered token are hashed and refused like any unknown token.
    for _ in 0..3 {
        assert_eq!(run("Bearer tok-premium"), premium);
        assert_eq!(run("Bearer tok-basic"), basic);
        assert_eq!(run("Bearer tok-premiun"), unknown);
        assert_eq!(run("Bearer tok-premium0"), unknown);
        assert_eq!(run("Bearer tok-premiu"), unknown);
    }
    assert_eq!(cache.keys.static_key(cache.keys.tag("tok-premium")).map(|k| k.index), Some(0));
    assert_eq!(cache.keys.static_key(cache.keys.tag("tok-premiun")), None, "refused tokens are not remembered");
    // A key removed from the configuration is gone with the worker's cache: a new
    // configuration starts a new cache, and without the key the token is refused.
    let without = config(&TIERS.replace(r#"{ "id": "acme-prod", "sha256": "21fa0cffc3d620c9036897c666dadd7a730340a9f5bea36e3f798779acb74dcd", "tier": "premium" },"#, ""));
    let d = decide_with(&without, &s, &mut Worker::new(1), &post(IMAGES, Some("Bearer tok-premium"), CLIENT), EVENING);
    assert_eq!(d.outcome, Outcome::Unauthenticated);
}

#[test]
fn api_key_header_works_like_a_bearer_token() {
    let c = config(TIERS);
    let s = FakeSharedData::default();
    let req = RequestInfo { method: "POST", path: IMAGES, api_key: vec!["tok-premium"], ..Default::default() };
    let d = decide(&c, &s, &req, EVENING);
    assert_eq!((d.outcome, d.caller_name(&c)), (Outcome::Allowed, Some("key:acme-prod")));
}

#[test]
fn basic_tier_bursts_twenty_then_refills() {
    let c = config(TIERS);
    let s = FakeSharedData::default();
    let req = post(CHAT, Some("Bearer tok-basic"), CLIENT);
    let allowed = (0..30).filter(|_| decide(&c, &s, &req, EVENING).outcome == Outcome::Allowed).count();
    assert_eq!(allowed, 20);
    let d = decide(&c, &s, &req, EVENING);
    assert_eq!(header(&d, "retry-after"), Some("1"), "600 ms rounds up to 1 s");
    assert_eq!(header(&d, "retry-after-ms"), Some("600"));
    assert_eq!((header(&d, "x-should-retry"), &body(&d)["error"]["code"]), (None, &Value::from("rate_limit_exceeded")));
    assert_eq!(body(&d)["error"]["type"], "rate_limit_error");
    assert!(body(&d)["error"]["message"].as_str().unwrap().contains("100 requests per 1m with bursts of 20"));
    assert_eq!(body(&d)["error"]["burst"], 20);
    let later = Nanos(EVENING.0 + 1_200_000_000);
    let allowed = (0..5).filter(|_| decide(&c, &s, &req, later).outcome == Outcome::Allowed).count();
    assert_eq!(allowed, 2, "two tokens in 1.2 s");
}

#[test]
fn unknown_token_is_401_and_malformed_is_400() {
    let c = config(TIERS);
    let s = FakeSharedData::default();
    let d = decide(&c, &s, &post(IMAGES, Some("Bearer not-a-key"), CLIENT), EVENING);
    assert_eq!((d.outcome, d.reply.as_ref().unwrap().status), (Outcome::Unauthenticated, 401));
    assert!(header(&d, "www-authenticate").unwrap().contains("error=\"invalid_token\""));
    assert_eq!(body(&d)["error"]["code"], "invalid_api_key");
    for bad in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "Bearer ∂"] {
        let d = decide(&c, &s, &post(IMAGES, Some(bad), CLIENT), EVENING);
        assert_eq!((d.outcome, d.reply.as_ref().unwrap().status), (Outcome::Malformed, 400), "{bad}");
        assert_eq!(body(&d)["error"]["code"], "malformed_credentials");
    }
    let both = RequestInfo {
        authorization: vec!["Bearer tok-premium"],
        api_key: vec!["tok-premium"],
        ..post(IMAGES, None, CLIENT)
    };
    assert_eq!(decide(&c, &s, &both, EVENING).reply.unwrap().status, 400);
    // No caller was metered: only the network's failed credentials were counted (one
    // slot, and the scratch key of creating it).
    assert_eq!(s.key_count(), 2);
}

#[test]
fn without_an_anonymous_tier_a_missing_token_is_401() {
    let c = config(&TIERS.replace(r#""anonymous": { "tier": "free" }, "#, ""));
    let d = decide(&c, &FakeSharedData::default(), &post(IMAGES, None, CLIENT), EVENING);
    assert_eq!(d.reply.as_ref().unwrap().status, 401);
    assert_eq!(header(&d, "www-authenticate"), Some("Bearer realm=\"tollgate\""));
    assert_eq!(body(&d)["error"]["code"], "missing_api_key");
}

#[test]
fn cost_zero_and_unmatched_routes_are_untouched() {
    let c = config(TIERS);
    let s = FakeSharedData::default();
    for (method, path) in [("GET", "/healthz"), ("GET", IMAGES), ("POST", "/v1/other")] {
        for auth in [None, Some("Bearer not-a-key"), Some("Basic x")] {
            let req = RequestInfo { method, ..post(path, auth, CLIENT) };
            let d = decide(&c, &s, &req, EVENING);
            assert_eq!(d.outcome, Outcome::Unlimited);
            assert!(d.reply.is_none() && d.response_headers.is_empty());
        }
    }
    assert_eq!(s.key_count(), 0);
}

#[test]
fn route_limits_apply_only_the_named_limits() {
    // Chat applies "rpm" and "burst": the free tier's burst only, premium nothing.
    let c = config(TIERS);
    let s = FakeSharedData::default();
    let chat = post(CHAT, None, CLIENT);
    let allowed = (0..5).filter(|_| decide(&c, &s, &chat, EVENING).outcome == Outcome::Allowed).count();
    assert_eq!(allowed, 2);
    let d = decide(&c, &s, &post(CHAT, Some("Bearer tok-premium"), CLIENT), EVENING);
    assert_eq!(d.outcome, Outcome::Unlimited);
    // The daily image count was untouched by chat: still 5 images later on.
    let images = (1..=10)
        .filter(|i| {
            decide(&c, &s, &post(IMAGES, None, CLIENT), Nanos(EVENING.0 + i * 10 * SEC)).outcome == Outcome::Allowed
        })
        .count();
    assert_eq!(images, 5);
}

#[test]
fn shadow_mode_never_blocks_but_reports() {
    let c = config(&TIERS.replace(r#""mode": "enforce""#, r#""mode": "shadow""#));
    let s = FakeSharedData::default();
    let req = post(IMAGES, None, CLIENT);
    let outcomes: Vec<Decision> = (0..4).map(|_| decide(&c, &s, &req, EVENING)).collect();
    assert!(outcomes.iter().all(|d| d.reply.is_none()));
    assert_eq!(outcomes[1].outcome, Outcome::Allowed);
    let d = &outcomes[2];
    assert_eq!(d.outcome, Outcome::ShadowLimited);
    assert_eq!(header(d, "x-tollgate-shadow"), Some("would-limit; limit=\"burst\""));
    assert_eq!(header(d, "x-ratelimit-remaining"), Some("0"));
    let d = decide(&c, &s, &post(IMAGES, Some("Bearer nope"), CLIENT), EVENING);
    assert_eq!((d.outcome, d.reply.is_none()), (Outcome::ShadowRejected, true));
    assert_eq!(header(&d, "x-tollgate-shadow"), Some("would-reject; status=401"));
}

#[test]
fn shadow_mode_meters_like_enforce() {
    // A request shadow mode lets through over the limit is not counted, as enforce would not count it.
    let enforce = config(TIERS);
    let shadow = config(&TIERS.replace(r#""mode": "enforce""#, r#""mode": "shadow""#));
    let (a, b) = (FakeSharedData::default(), FakeSharedData::default());
    for i in 0..40 {
        let now = Nanos(EVENING.0 + i * 3 * SEC);
        let e = decide(&enforce, &a, &post(IMAGES, None, CLIENT), now);
        let s = decide(&shadow, &b, &post(IMAGES, None, CLIENT), now);
        assert_eq!(e.outcome == Outcome::Limited, s.outcome == Outcome::ShadowLimited, "request {i}");
    }
}

#[test]
fn header_families_can_be_switched_off() {
    let c = config(&TIERS.replace(r#""ietf": true"#, r#""ietf": false"#));
    let d = decide(&c, &FakeSharedData::default(), &post(IMAGES, None, CLIENT), EVENING);
    assert!(header(&d, "ratelimit").is_none() && header(&d, "ratelimit-policy").is_none());
    assert!(header(&d, "x-ratelimit-limit").is_some());
    let c = config(&TIERS.replace(r#""x_ratelimit": true"#, r#""x_ratelimit": false"#));
    let d = decide(&c, &FakeSharedData::default(), &post(IMAGES, None, CLIENT), EVENING);
    assert!(header(&d, "ratelimit").is_some());
    assert!(d.response_headers.iter().all(|(k, _)| !k.starts_with("x-ratelimit")));
}

#[test]
fn problem_json_bodies_follow_the_draft() {
    let c = config(&TIERS.replace(r#""x_ratelimit": true"#, r#""x_ratelimit": true, "problem_json": true"#));
    let s = FakeSharedData::default();
    let req = post(IMAGES, None, CLIENT);
    let d = (0..3).map(|_| decide(&c, &s, &req, EVENING)).last().unwrap();
    assert_eq!(header(&d, "content-type"), Some("application/problem+json"));
    let b = body(&d);
    assert_eq!(b["type"], "https://iana.org/assignments/http-problem-types#quota-exceeded");
    assert_eq!(b["status"], 429);
    assert_eq!(b["violated-policies"], serde_json::json!(["burst"]));
}

#[test]
fn x_ratelimit_describes_the_tightest_limit() {
    let c = config(TIERS);
    let s = FakeSharedData::default();
    // After one request: day 4 of 5 left, burst 1 of 2 left → burst is tighter.
    let d = decide(&c, &s, &post(IMAGES, None, CLIENT), EVENING);
    assert_eq!(header(&d, "x-ratelimit-resource"), Some("burst"));
    assert_eq!(header(&d, "x-ratelimit-remaining"), Some("1"));
    assert_eq!(header(&d, "x-ratelimit-reset"), Some((EVENING.0 / SEC + 5).to_string().as_str()));
}

#[test]
fn anonymous_callers_are_keyed_by_network() {
    let c = config(TIERS);
    let s = FakeSharedData::default();
    let a = |addr: &'static str| decide(&c, &s, &post(CHAT, None, addr), EVENING).outcome;
    assert_eq!(a("[2001:db8:1:2::1]:0"), Outcome::Allowed);
    assert_eq!(a("[2001:db8:1:2::ffff]:0"), Outcome::Allowed);
    assert_eq!(a("[2001:db8:1:2::abcd]:0"), Outcome::Limited, "same /64, burst of 2 used");
    assert_eq!(a("[2001:db8:1:3::1]:0"), Outcome::Allowed, "another /64");
    assert_eq!(a("198.51.100.1:5"), Outcome::Allowed);
}

#[test]
fn a_changed_limit_starts_afresh_while_others_keep_their_count() {
    let c = config(TIERS);
    let s = FakeSharedData::default();
    let req = post(IMAGES, None, CLIENT);
    for i in 0..5 {
        decide(&c, &s, &req, Nanos(EVENING.0 + i * 10 * SEC));
    }
    let later = Nanos(EVENING.0 + 100 * SEC);
    assert_eq!(decide(&c, &s, &req, later).outcome, Outcome::Limited);
    // Raising the burst changes only the burst limit; the day is still spent.
    let c2 = config(&TIERS.replace(r#""limit": 2, "window": "10s""#, r#""limit": 3, "window": "10s""#));
    assert_eq!(decide(&c2, &s, &req, later).limited_by.as_deref(), Some("images-per-day"));
    // Raising the daily limit starts that count afresh.
    let c3 = config(&TIERS.replace(r#""limit": 5, "window": "1d""#, r#""limit": 6, "window": "1d""#));
    assert_eq!(decide(&c3, &s, &req, later).outcome, Outcome::Allowed);
}

struct Broken;

impl SharedStore for Broken {
    fn get(&self, _: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Err(StoreError::Host)
    }
    fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> Result<(), StoreError> {
        Err(StoreError::Host)
    }
}

#[test]
fn shared_data_failure_follows_on_contention() {
    let allow = config(TIERS);
    let d = decide(&allow, &Broken, &post(IMAGES, None, CLIENT), EVENING);
    assert_eq!((d.outcome, d.reply.is_none()), (Outcome::StoreBypassed, true));
    let deny = config(&TIERS.replace(r#""headers""#, r#""store": { "on_contention": "deny" }, "headers""#));
    let d = decide(&deny, &Broken, &post(IMAGES, None, CLIENT), EVENING);
    assert_eq!(d.outcome, Outcome::StoreRefused);
    assert_eq!(d.reply.as_ref().unwrap().status, 503);
    assert_eq!(header(&d, "retry-after"), Some("1"));
}

#[test]
fn route_cost_is_charged() {
    let c = config(&TIERS.replace(r#""methods": ["POST"], "cost": 1"#, r#""methods": ["POST"], "cost": 2"#));
    let s = FakeSharedData::default();
    let req = post(IMAGES, Some("Bearer tok-premium"), CLIENT);
    let allowed = (0..60).filter(|_| decide(&c, &s, &req, EVENING).outcome == Outcome::Allowed).count();
    assert_eq!(allowed, 50);
}

#[cfg(not(target_arch = "wasm32"))]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives in the headers, the decision is a value, never a panic.
        #[test]
        fn any_request_gets_a_decision(
            method in "[A-Z]{0,8}",
            path in "\\PC{0,40}",
            auth in prop::collection::vec("\\PC{0,80}", 0..3),
            key in prop::collection::vec("\\PC{0,80}", 0..2),
            address in prop::option::of("\\PC{0,50}"),
        ) {
            let c = config(TIERS);
            let s = FakeSharedData::default();
            let req = RequestInfo {
                method: &method,
                path: &path,
                authorization: auth.iter().map(String::as_str).collect(),
                api_key: key.iter().map(String::as_str).collect(),
                client_address: address.as_deref(),
                client_address_of: None,
                unreadable_credential: false,
                body: None,
            };
            let d = decide(&c, &s, &req, EVENING);
            if let Some(reply) = d.reply {
                prop_assert!([400, 401, 429].contains(&reply.status));
                prop_assert!(serde_json::from_str::<Value>(&reply.body).is_ok());
            }
        }

        #[test]
        fn config_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = Config::from_json(&bytes);
        }

        #[test]
        fn config_parser_never_panics_on_mutated_configs(cut in 0usize..1700, insert in "\\PC{0,6}") {
            let mut text = TIERS.to_owned();
            let at = text.char_indices().map(|(i, _)| i).nth(cut % TIERS.chars().count()).unwrap_or(0);
            text.insert_str(at, &insert);
            let _ = Config::from_json(text.as_bytes());
        }
    }
}
