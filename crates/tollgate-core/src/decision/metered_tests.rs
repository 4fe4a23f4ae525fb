//! Limits of images and tokens on metered routes: what a body reserves is charged.

use serde_json::Value;

use super::*;
use crate::store::FakeSharedData;
use crate::RequestInfo;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const SEC: u64 = 1_000_000_000;
/// 2026-11-23T18:00:00Z.
const EVENING: Nanos = Nanos(1_795_456_800 * SEC);
const IMAGES: &str = "/v1/images/generations";
const CHAT: &str = "/v1/chat/completions";

const CONFIG: &str = r#"{
          "identity": { "anonymous": { "tier": "free" } },
          "tiers": { "free": { "limits": [
            { "name": "images-per-day", "limit": 5, "window": "1d", "algorithm": "fixed_window", "unit": "images" },
            { "name": "tokens-per-day", "limit": 1000, "window": "1d", "algorithm": "fixed_window", "unit": "tokens" },
            { "name": "rpm", "limit": 100, "window": "1m" } ] } },
          "routes": [
            { "path": "/v1/images/generations", "meter": "openai_images", "image_weights": { "hd": 2 } },
            { "path": "/v1/chat/completions", "meter": "openai_chat", "default_max_output_tokens": 300 },
            { "path_prefix": "/" } ]
        }"#;

fn config() -> Config {
    Config::from_json(CONFIG.as_bytes()).unwrap()
}

fn post<'a>(path: &'a str, body: &'a str) -> RequestInfo<'a> {
    RequestInfo {
        method: "POST",
        path,
        client_address: Some("203.0.113.7:0"),
        body: Some(body.as_bytes()),
        ..RequestInfo::default()
    }
}

fn header<'a>(d: &'a Decision, name: &str) -> Option<&'a str> {
    d.reply.as_ref().map_or(&d.response_headers, |r| &r.headers).get(name)
}

fn error(d: &Decision) -> Value {
    let body: Value = serde_json::from_str(&d.reply.as_ref().unwrap().body).unwrap();
    body["error"].clone()
}

#[test]
fn five_images_a_day_count_images_not_requests() {
    let (c, s) = (config(), FakeSharedData::default());
    let first = decide(&c, &s, &post(IMAGES, r#"{"prompt":"a cat","n":3}"#), EVENING);
    assert_eq!(first.outcome, Outcome::Allowed);
    let ratelimit = header(&first, "ratelimit").unwrap();
    assert!(ratelimit.contains(r#""images-per-day";r=2;"#), "{ratelimit}");
    assert!(ratelimit.contains(r#""rpm";r=99;"#), "{ratelimit}");

    let second = decide(&c, &s, &post(IMAGES, r#"{"prompt":"a cat","n":3}"#), EVENING);
    assert_eq!((second.outcome, second.limited_by.as_deref()), (Outcome::Limited, Some("images-per-day")));
    let e = error(&second);
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("allows 5 images per 1d; this request would use 3 images; 2 are left"), "{message}");
    assert_eq!(
        (e["unit"].as_str(), e["requested"].as_u64(), e["remaining"].as_u64()),
        (Some("images"), Some(3), Some(2))
    );
    assert!(header(&second, "retry-after").is_some());

    let third = decide(&c, &s, &post(IMAGES, r#"{"prompt":"a cat","n":2}"#), EVENING);
    assert_eq!(third.outcome, Outcome::Allowed);
    assert!(header(&third, "ratelimit").unwrap().contains(r#""images-per-day";r=0;"#));
}

#[test]
fn n_defaults_to_one_and_weights_multiply() {
    let (c, s) = (config(), FakeSharedData::default());
    decide(&c, &s, &post(IMAGES, r#"{"prompt":"a cat"}"#), EVENING);
    let hd = decide(&c, &s, &post(IMAGES, r#"{"prompt":"a cat","n":2,"quality":"hd"}"#), EVENING);
    assert!(header(&hd, "ratelimit").unwrap().contains(r#""images-per-day";r=0;"#), "1 + 2 × 2 = 5");
}

#[test]
fn tokens_reserve_the_prompt_and_the_maximum_output() {
    let (c, s) = (config(), FakeSharedData::default());
    // 20 bytes of messages: 5 tokens; 100 out.
    let body = r#"{"model":"m","messages":["abcdefghijklmnop"],"max_tokens":100}"#;
    let d = decide(&c, &s, &post(CHAT, body), EVENING);
    assert!(header(&d, "ratelimit").unwrap().contains(r#""tokens-per-day";r=895;"#), "{:?}", header(&d, "ratelimit"));
    // Without a maximum, the route's default output is reserved.
    let d = decide(&c, &s, &post(CHAT, r#"{"model":"m","messages":[]}"#), EVENING);
    assert!(header(&d, "ratelimit").unwrap().contains(r#""tokens-per-day";r=594;"#), "895 - 1 - 300");
    // Images are not charged on the chat route, nor tokens on a route without a meter.
    assert!(!header(&d, "ratelimit").unwrap().contains("images-per-day"));
    let plain = decide(&c, &s, &RequestInfo { body: None, ..post("/other", "") }, EVENING);
    assert_eq!(header(&plain, "ratelimit-policy"), Some(r#""rpm";q=100;w=60"#));
}

#[test]
fn a_request_that_can_never_fit_says_so_without_retry_after() {
    let (c, s) = (config(), FakeSharedData::default());
    let d = decide(&c, &s, &post(IMAGES, r#"{"prompt":"a cat","n":10}"#), EVENING);
    let reply = d.reply.as_ref().unwrap();
    assert_eq!((reply.status, d.outcome, header(&d, "retry-after")), (400, Outcome::Limited, None));
    let e = error(&d);
    assert_eq!(e["code"], "exceeds_limit");
    assert!(e["message"].as_str().unwrap().contains("would use 10 images"), "{e}");
    let big = r#"{"model":"m","messages":[],"max_completion_tokens":5000}"#;
    assert_eq!(error(&decide(&c, &s, &post(CHAT, big), EVENING))["code"], "exceeds_limit");
    // Nothing was charged.
    let ok = decide(&c, &s, &post(IMAGES, r#"{"prompt":"a cat","n":5}"#), EVENING);
    assert_eq!(ok.outcome, Outcome::Allowed);
}

#[test]
fn unreadable_bodies_get_a_400_that_says_why() {
    let (c, s) = (config(), FakeSharedData::default());
    for (body, param) in [("{\"n\": 3", Value::Null), (r#"{"n":"3"}"#, Value::Null), (r#"{"n":0}"#, Value::from("n"))] {
        let d = decide(&c, &s, &post(IMAGES, body), EVENING);
        assert_eq!((d.reply.as_ref().unwrap().status, d.outcome), (400, Outcome::BadRequest), "{body}");
        let e = error(&d);
        assert_eq!((e["code"].as_str(), &e["param"]), (Some("invalid_request_body"), &param), "{body}");
    }
    let none = decide(&c, &s, &RequestInfo { body: None, ..post(IMAGES, "") }, EVENING);
    assert_eq!(none.outcome, Outcome::BadRequest, "a metered route needs its body");
}

#[test]
fn only_metered_routes_read_bodies() {
    let c = config();
    let images = meter_of(&c, &post(IMAGES, "")).unwrap();
    assert_eq!(images.max_body_bytes, crate::config::DEFAULT_MAX_BODY_BYTES as usize);
    assert!(meter_of(&c, &post("/other", "")).is_none());
}

#[test]
fn units_are_validated() {
    let with = |limit: &str, route: &str| {
        Config::from_json(
            format!(r#"{{ "tiers": {{ "t": {{ "limits": [ {limit} ] }} }}, "routes": [ {route} ], "quota_service": {{ "cluster": "q" }} }}"#)
                .as_bytes(),
        )
    };
    let images = r#"{ "name": "i", "limit": 5, "window": "1d", "unit": "images" }"#;
    let metered = r#"{ "path": "/i", "meter": "openai_images" }"#;
    assert!(with(images, metered).is_ok());
    let global = r#"{ "name": "i", "limit": 5, "window": "1d", "unit": "images", "scope": "global" }"#;
    assert_eq!(with(global, metered).unwrap().tiers[0].limits[0].lease_block, 0, "exact unless asked");
    let leased =
        r#"{ "name": "i", "limit": 50, "window": "1d", "unit": "images", "scope": "global", "lease_block": 10 }"#;
    assert_eq!(with(leased, metered).unwrap().tiers[0].limits[0].lease_block, 10);
    let local_lease = r#"{ "name": "i", "limit": 50, "window": "1d", "unit": "images", "lease_block": 10 }"#;
    assert_eq!(with(local_lease, metered).unwrap_err().path, "tiers.t.limits[0].lease_block");
    let too_big =
        r#"{ "name": "i", "limit": 50, "window": "1d", "unit": "images", "scope": "global", "lease_block": 26 }"#;
    assert_eq!(with(too_big, metered).unwrap_err().path, "tiers.t.limits[0].lease_block");
    let named = r#"{ "path": "/i", "limits": ["i"] }"#;
    assert_eq!(with(images, named).unwrap_err().path, "routes[0].limits");
    let block = r#"{ "name": "i", "limit": 50000, "window": "1d", "unit": "images", "worker_block": 10 }"#;
    assert_eq!(with(block, metered).unwrap_err().path, "tiers.t.limits[0].worker_block");
    let cap = r#"{ "path": "/i", "meter": "openai_images", "max_body_bytes": 2000000 }"#;
    assert_eq!(with(images, cap).unwrap_err().path, "routes[0].max_body_bytes");
    let stray = r#"{ "path": "/i", "max_body_bytes": 2000 }"#;
    assert_eq!(with(images, stray).unwrap_err().path, "routes[0].max_body_bytes");
    let unknown = r#"{ "name": "i", "limit": 5, "window": "1d", "unit": "dollars" }"#;
    assert!(with(unknown, metered).unwrap_err().path.starts_with("tiers.t.limits[0].unit"));
}

/// Units of `limit` used so far in the slot of the anonymous caller, as a request that
/// asks for nothing sees them (remaining in its `RateLimit` header).
fn remaining_tokens(c: &Config, s: &FakeSharedData, now: Nanos) -> u64 {
    // A 1-token prompt ("[]"), no output: the header shows what is left after 1 more.
    let d = decide(c, s, &post(CHAT, r#"{"messages":[],"max_tokens":0}"#), now);
    let ratelimit = header(&d, "ratelimit").unwrap().to_owned();
    let r = ratelimit.split("\"tokens-per-day\";r=").nth(1).unwrap();
    r.split(';').next().unwrap().parse::<u64>().unwrap() + 1
}

fn reserve(c: &Config, s: &FakeSharedData, max_tokens: u64) -> Decision {
    decide(c, s, &post(CHAT, &format!(r#"{{"messages":[],"max_tokens":{max_tokens}}}"#)), EVENING)
}

#[test]
fn tokens_settle_to_the_usage_the_response_reports() {
    let (c, s) = (config(), FakeSharedData::default());
    let d = reserve(&c, &s, 99);
    let reservation = d.reservation.unwrap();
    assert_eq!(
        reservation.reserved,
        crate::cost::Charges { images: 0, input_tokens: 1, output_tokens: 99, price: None }
    );
    let used = crate::cost::Usage { input_tokens: 12, output_tokens: 40 };
    let settled = settle(&c, &s, &mut Worker::new(1), &reservation, Ending::Used(used), EVENING).settled;
    assert_eq!(settled.as_slice(), [(crate::cost::Unit::Tokens, 100, 52)]);
    // Each probe uses 1 token (its prompt) before it reads.
    assert_eq!(remaining_tokens(&c, &s, EVENING), 1000 - 52);

    // An overrun is charged past the reservation.
    let d = reserve(&c, &s, 9);
    let over = crate::cost::Usage { input_tokens: 1, output_tokens: 300 };
    settle(&c, &s, &mut Worker::new(1), &d.reservation.unwrap(), Ending::Used(over), EVENING);
    assert_eq!(remaining_tokens(&c, &s, EVENING), 1000 - 52 - 1 - 301);
}

#[test]
fn failures_refund_and_missing_usage_keeps_the_reservation() {
    let (c, s) = (config(), FakeSharedData::default());
    let failed = reserve(&c, &s, 199).reservation.unwrap();
    settle(&c, &s, &mut Worker::new(1), &failed, Ending::Failed, EVENING);
    assert_eq!(remaining_tokens(&c, &s, EVENING), 1000);
    let unreported = reserve(&c, &s, 199).reservation.unwrap();
    settle(&c, &s, &mut Worker::new(1), &unreported, Ending::Unreported, EVENING);
    assert_eq!(remaining_tokens(&c, &s, EVENING), 1000 - 1 - 200);

    // Images stay as reserved when the response succeeds, and come back when it fails.
    let images = decide(&c, &s, &post(IMAGES, r#"{"prompt":"","n":4}"#), EVENING).reservation.unwrap();
    let used = crate::cost::Usage { input_tokens: 0, output_tokens: 0 };
    let settled = settle(&c, &s, &mut Worker::new(1), &images, Ending::Used(used), EVENING).settled;
    assert!(settled.contains(&(crate::cost::Unit::Images, 4, 4)), "{settled:?}");
    let failed = decide(&c, &s, &post(IMAGES, r#"{"prompt":"","n":1}"#), EVENING).reservation.unwrap();
    settle(&c, &s, &mut Worker::new(1), &failed, Ending::Failed, EVENING);
    let last = decide(&c, &s, &post(IMAGES, r#"{"prompt":"","n":1}"#), EVENING);
    assert_eq!(last.outcome, Outcome::Allowed, "4 + 1 refunded + 1 fits in 5");
}

#[test]
fn concurrent_reservations_never_overshoot_and_settle_to_what_was_used() {
    let (c, s) = (config(), FakeSharedData::default());
    // 50 requests in flight at once, each reserving 100 (1 of prompt, 99 out) of 1,000.
    let decisions: Vec<Decision> = (0..50).map(|_| reserve(&c, &s, 99)).collect();
    let admitted: Vec<&Decision> = decisions.iter().filter(|d| d.outcome == Outcome::Allowed).collect();
    assert_eq!(admitted.len(), 10, "no request is admitted whose reservation does not fit");
    assert!(decisions.iter().filter(|d| d.outcome != Outcome::Allowed).all(|d| d.reservation.is_none()));
    // Each used 40 to 120.
    let used: Vec<u64> = (0..10u64).map(|i| 40 + (i * 37) % 81).collect();
    for (d, &out) in admitted.iter().zip(&used) {
        let usage = crate::cost::Usage { input_tokens: 1, output_tokens: out - 1 };
        settle(&c, &s, &mut Worker::new(1), d.reservation.as_ref().unwrap(), Ending::Used(usage), EVENING);
    }
    let total: u64 = used.iter().sum();
    assert_eq!(remaining_tokens(&c, &s, EVENING), 1000u64.saturating_sub(total), "charged exactly what was used");
}

#[test]
fn metered_routes_carry_openai_rate_limit_headers() {
    let (c, s) = (config(), FakeSharedData::default());
    let d = decide(&c, &s, &post(CHAT, r#"{"messages":[],"max_tokens":99}"#), EVENING);
    assert_eq!(header(&d, "x-ratelimit-limit-requests"), Some("100"));
    assert_eq!(header(&d, "x-ratelimit-remaining-requests"), Some("99"));
    assert_eq!(header(&d, "x-ratelimit-reset-requests"), Some("1s"), "100 a minute: a token every 0.6 s");
    assert_eq!(header(&d, "x-ratelimit-limit-tokens"), Some("1000"));
    assert_eq!(header(&d, "x-ratelimit-remaining-tokens"), Some("900"));
    assert_eq!(header(&d, "x-ratelimit-reset-tokens"), Some("6h0m0s"), "the day ends at midnight, 6 h after 18:00");
    let plain = decide(&c, &s, &RequestInfo { body: None, ..post("/other", "") }, EVENING);
    assert_eq!(header(&plain, "x-ratelimit-limit-requests"), None, "only on metered routes");
    let off = Config::from_json(
        serde_json::to_string(&{
            let mut v: Value = serde_json::from_str(CONFIG).unwrap();
            v["headers"] = serde_json::json!({ "openai": false });
            v
        })
        .unwrap()
        .as_bytes(),
    )
    .unwrap();
    let d = decide(&off, &s, &post(CHAT, r#"{"messages":[],"max_tokens":99}"#), EVENING);
    assert_eq!(header(&d, "x-ratelimit-limit-tokens"), None);
}

#[test]
fn cost_is_reserved_at_the_model_price_and_settled_to_the_usage() {
    let mut json: Value = serde_json::from_str(CONFIG).unwrap();
    json["tiers"]["free"]["limits"] = serde_json::json!([
        { "name": "tokens-per-day", "limit": 100_000, "window": "1d", "algorithm": "fixed_window", "unit": "tokens" },
        { "name": "budget", "limit": 5_000_000, "window": "1d", "algorithm": "fixed_window", "unit": "cost" }
    ]);
    // Micro-dollars per 1,000 tokens: 2.50 $ in and 10 $ out per million.
    json["prices"] = serde_json::json!({ "models": { "gpt-4o": { "input_per_1k": 2500, "output_per_1k": 10000 } } });
    let c = Config::from_json(json.to_string().as_bytes()).unwrap();
    let s = FakeSharedData::default();
    // 1 token of prompt ("[]"), 1,000 out: 3 + 10,000.
    let body = r#"{"model":"gpt-4o","messages":[],"max_tokens":1000}"#;
    let d = decide(&c, &s, &post(CHAT, body), EVENING);
    assert!(header(&d, "ratelimit").unwrap().contains(r#""budget";r=4989997;"#), "{:?}", header(&d, "ratelimit"));
    let used = crate::cost::Usage { input_tokens: 400, output_tokens: 200 };
    let settled = settle(&c, &s, &mut Worker::new(1), &d.reservation.unwrap(), Ending::Used(used), EVENING).settled;
    assert!(settled.contains(&(crate::cost::Unit::Cost, 10_003, 1_000 + 2_000)), "{settled:?}");
    // A model without a price is refused where a limit of cost applies.
    let unpriced = decide(&c, &s, &post(CHAT, r#"{"model":"other","messages":[]}"#), EVENING);
    assert_eq!((unpriced.reply.as_ref().unwrap().status, unpriced.outcome), (400, Outcome::BadRequest));
    assert_eq!(error(&unpriced)["code"], "unpriced_model");
    // A limit of cost without prices is a config error.
    json.as_object_mut().unwrap().remove("prices");
    assert_eq!(Config::from_json(json.to_string().as_bytes()).unwrap_err().path, "tiers.free.limits[1].unit");
}
