#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! The built tollgate.wasm inside a real Envoy (2 worker threads), driven over HTTP, with
//! every limit local (the plugin config of envoy.yaml without its global limits).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_testkit::envoy::{local_plugin_config as default_plugin_config, sha256_hex, Envoy, EnvoyOptions};
use tollgate_testkit::http::Reply;
use tollgate_testkit::wait::Wait;

const IMAGES: &str = "/v1/images/generations";
const CHAT: &str = "/v1/chat/completions";
const PREMIUM: &str = "Bearer tg_demo_premium_0123456789";
const BASIC: &str = "Bearer tg_demo_basic_0123456789";

fn envoy_with(config: &Value, xff_trusted_hops: u32) -> Envoy {
    Envoy::start(EnvoyOptions { plugin_config: Some(config.to_string()), xff_trusted_hops, ..EnvoyOptions::default() })
}

/// A POST; chat is a metered route, whose body is read (an empty one is a 400).
fn post(envoy: &Envoy, path: &str, headers: &[(&str, &str)]) -> Reply {
    let body = if path == CHAT { r#"{"model":"m","messages":[],"max_tokens":10}"# } else { "" };
    envoy.request_with_body("POST", path, headers, body)
}

fn statuses(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.status).collect()
}

#[test]
fn free_tier_admits_exactly_five_images_then_429_with_headers_and_advice() {
    let envoy = envoy_with(&default_plugin_config(), 0);
    let replies: Vec<Reply> = (0..7).map(|_| post(&envoy, IMAGES, &[])).collect();
    assert_eq!(statuses(&replies), [200, 200, 200, 200, 200, 429, 429]);

    let first = &replies[0];
    assert_eq!(first.header("ratelimit-policy"), Some("\"images-per-day\";q=5;w=86400"));
    assert!(first.header("ratelimit").unwrap().starts_with("\"images-per-day\";r=4;t="));
    assert_eq!(first.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("4"));
    assert_eq!(first.header("x-ratelimit-used"), Some("1"));
    assert_eq!(first.header("x-ratelimit-resource"), Some("images-per-day"));
    assert!(first.json()["data"].is_array(), "the upstream's body passes through");

    let limited = &replies[5];
    let reset: u64 = limited.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert_eq!(reset % 86_400, 0, "the day resets at 00:00 UTC");
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry_after));
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(limited.header("content-type"), Some("application/json"));
    let error = &limited.json()["error"];
    // Hours to wait (unless the test runs in the last minute of the day): SDKs are told
    // not to retry.
    if retry_after > 60 {
        assert_eq!((limited.header("x-should-retry"), limited.header("retry-after-ms")), (Some("false"), None));
        assert_eq!(
            (error["code"].as_str(), error["type"].as_str()),
            (Some("insufficient_quota"), Some("insufficient_quota"))
        );
    } else {
        assert_eq!((limited.header("x-should-retry"), error["code"].as_str()), (None, Some("rate_limit_exceeded")));
    }
    assert_eq!(error["tier"], "free");
    assert_eq!(error["limit"], "images-per-day");
    assert_eq!(error["quota"], 5);
    assert_eq!(error["retry_after_seconds"], retry_after);
    assert!(error["resets_at"].as_str().unwrap().ends_with("T00:00:00Z"));
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("Authorization: Bearer <token>"), "{message}");

    assert_eq!(envoy.counter("tollgate.requests.free.allowed"), Some(5));
    assert_eq!(envoy.counter("tollgate.requests.free.limited"), Some(2));
    let prometheus = envoy.stats_prometheus();
    assert!(prometheus.contains(r#"tollgate_requests{tier="free",outcome="allowed"} 5"#), "{prometheus}");
    assert!(envoy.log().contains("decision=limited tier=free limit=images-per-day"));
}

#[test]
fn a_premium_token_admits_one_hundred_and_the_api_key_header_is_the_same_key() {
    let envoy = envoy_with(&default_plugin_config(), 0);
    let by_bearer: Vec<u16> = (0..60).map(|_| post(&envoy, IMAGES, &[("authorization", PREMIUM)]).status).collect();
    let by_key: Vec<u16> =
        (0..41).map(|_| post(&envoy, IMAGES, &[("x-api-key", "tg_demo_premium_0123456789")]).status).collect();
    assert!(by_bearer.iter().all(|s| *s == 200));
    assert_eq!(by_key.iter().filter(|s| **s == 200).count(), 40);
    assert_eq!(by_key.last(), Some(&429));
    let limited = post(&envoy, IMAGES, &[("authorization", PREMIUM)]);
    assert_eq!(limited.header("x-ratelimit-limit"), Some("100"));
    assert_eq!(limited.json()["error"]["tier"], "premium");
    // The free tier (by IP) is a separate bucket.
    assert_eq!(post(&envoy, IMAGES, &[]).status, 200);
}

#[test]
fn basic_tier_allows_a_burst_of_twenty_then_refills_at_100_per_minute() {
    let envoy = envoy_with(&default_plugin_config(), 0);
    let burst: Vec<u16> = (0..25).map(|_| post(&envoy, CHAT, &[("authorization", BASIC)]).status).collect();
    assert_eq!(burst.iter().filter(|s| **s == 200).count(), 20);
    assert!(burst[20..].iter().all(|s| *s == 429));
    let emptied = Instant::now();
    let short = post(&envoy, CHAT, &[("authorization", BASIC)]);
    assert_eq!(short.header("retry-after"), Some("1"));
    // Under a second to wait: SDKs retry, after the exact wait in milliseconds.
    let retry_after_ms: u64 = short.header("retry-after-ms").unwrap().parse().unwrap();
    assert!((1..=600).contains(&retry_after_ms), "one token every 600 ms: {retry_after_ms}");
    assert_eq!(
        (short.header("x-should-retry"), short.json()["error"]["code"].as_str()),
        (None, Some("rate_limit_exceeded"))
    );

    // One token every 600 ms: at least 2 after 1.3 s, and no more than time allows. The
    // request is repeated as tokens come back (each admitted one spends its token).
    let mut refilled = 0u128;
    Wait::new("two tokens of the basic tier to come back").due(emptied + Duration::from_millis(1300)).until_ok(|| {
        let status = post(&envoy, CHAT, &[("authorization", BASIC)]).status;
        if status == 200 {
            refilled += 1;
            assert!(refilled <= 20, "never more than the burst");
            let ceiling = emptied.elapsed().as_millis() / 600 + 1;
            assert!(refilled <= ceiling, "{refilled} refilled, at most {ceiling} possible");
        }
        if refilled >= 2 {
            Ok(())
        } else {
            Err(format!("{refilled} refilled, the last request answered {status}"))
        }
    });
}

#[test]
fn an_unknown_token_is_401_and_malformed_credentials_are_400() {
    let envoy = envoy_with(&default_plugin_config(), 0);
    let unknown = post(&envoy, IMAGES, &[("authorization", "Bearer tg_not_a_key")]);
    assert_eq!(unknown.status, 401);
    assert!(unknown.header("www-authenticate").unwrap().contains("error=\"invalid_token\""));
    assert_eq!(unknown.json()["error"]["code"], "invalid_api_key");

    for value in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer two words", "Bearer a\"b"] {
        let r = post(&envoy, IMAGES, &[("authorization", value)]);
        assert_eq!(r.status, 400, "{value}");
        assert_eq!(r.json()["error"]["code"], "malformed_credentials");
    }
    let both = post(&envoy, IMAGES, &[("authorization", PREMIUM), ("x-api-key", "tg_demo_premium_0123456789")]);
    assert_eq!(both.status, 400);
    let duplicated = envoy.raw(&format!(
        "POST {IMAGES} HTTP/1.1\nHost: x\nAuthorization: {PREMIUM}\nAuthorization: {PREMIUM}\nContent-Length: 0\n"
    ));
    // Envoy hands the filter one Authorization header, the two values joined with ",".
    assert_eq!(duplicated.status, 400);
    let message = duplicated.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("more than one credential was sent"), "{message}");
    let binary = envoy.raw_exact(
        format!("POST {IMAGES} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \x7f\x01\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert!([400, 401].contains(&binary.status), "got {}", binary.status);
    let huge = format!("Bearer {}", "a".repeat(5000));
    assert_eq!(post(&envoy, IMAGES, &[("authorization", &huge)]).status, 400);

    // Nothing above hurt the VM: a good request still works, on every worker.
    for _ in 0..4 {
        assert_eq!(post(&envoy, IMAGES, &[("authorization", PREMIUM)]).status, 200);
    }
    assert_eq!(envoy.counter("tollgate.requests.none.malformed"), Some(7));
    assert!(!envoy.log().contains("panicked"));
}

#[test]
fn header_bytes_that_are_not_utf8_neither_panic_the_vm_nor_pass_as_a_credential() {
    let envoy = envoy_with(&default_plugin_config(), 0);
    let request = |extra: &[u8]| {
        let mut bytes =
            format!("POST {IMAGES} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n").into_bytes();
        bytes.extend_from_slice(extra);
        bytes.extend_from_slice(b"\r\n");
        envoy.raw_exact(&bytes)
    };
    // Latin-1 in a header tollgate does not read (obs-text, which HTTP/1.1 allows in values).
    let mut latin1 = b"User-Agent: caf\xe9\r\n".to_vec();
    latin1.extend_from_slice(format!("Authorization: {PREMIUM}\r\n").as_bytes());
    let r = request(&latin1);
    assert_eq!(r.status, 200, "an unrelated Latin-1 header value is no reason to refuse");
    assert_eq!(r.header("x-ratelimit-limit"), Some("100"), "and the request is metered");
    // The same bytes in the credential: refused as malformed, not read as some other token.
    let r = request(b"Authorization: Bearer tg_demo_premium_0123456789\xe9\r\n");
    assert_eq!(r.status, 400, "a credential that is not UTF-8 is malformed");
    assert_eq!(r.json()["error"]["code"], "malformed_credentials");
    let r = request(b"X-Api-Key: tg_demo_premium_\xff\xfe\r\n");
    assert_eq!(r.status, 400);

    // The VM is alive on every worker.
    for _ in 0..4 {
        assert_eq!(post(&envoy, IMAGES, &[("authorization", PREMIUM)]).status, 200);
    }
    assert!(!envoy.log().contains("panicked"), "{}", envoy.log());
}

#[test]
fn no_anonymous_tier_means_a_missing_token_is_401() {
    let mut config = default_plugin_config();
    config["identity"].as_object_mut().unwrap().remove("anonymous");
    let envoy = envoy_with(&config, 0);
    let r = post(&envoy, IMAGES, &[]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"tollgate\""));
    assert_eq!(r.json()["error"]["code"], "missing_api_key");
}

#[test]
fn cost_zero_and_unlisted_routes_are_untouched() {
    let envoy = envoy_with(&default_plugin_config(), 0);
    for _ in 0..10 {
        let health = envoy.request("GET", "/healthz", &[("authorization", "Bearer tg_not_a_key")]);
        assert_eq!(health.status, 200);
        assert!(health.headers.iter().all(|(k, _)| !k.contains("ratelimit")));
        // GET is not a listed method of the image route.
        let get = envoy.request("GET", IMAGES, &[]);
        assert_eq!(get.status, 200);
        assert!(get.header("x-ratelimit-limit").is_none());
    }
    assert_eq!(envoy.request("GET", "/unknown", &[("authorization", "garbage")]).status, 404);
    assert_eq!(statuses(&(0..5).map(|_| post(&envoy, IMAGES, &[])).collect::<Vec<_>>()), [200; 5]);
}

#[test]
fn shadow_mode_never_blocks_but_reports() {
    let mut config = default_plugin_config();
    config["mode"] = json!("shadow");
    let envoy = envoy_with(&config, 0);
    let replies: Vec<Reply> = (0..8).map(|_| post(&envoy, IMAGES, &[])).collect();
    assert_eq!(statuses(&replies), [200; 8]);
    assert!(replies[4].header("x-tollgate-shadow").is_none());
    assert_eq!(replies[5].header("x-tollgate-shadow"), Some("would-limit; limit=\"images-per-day\""));
    assert_eq!(replies[7].header("x-ratelimit-remaining"), Some("0"));
    let bad = post(&envoy, IMAGES, &[("authorization", "Bearer tg_not_a_key")]);
    assert_eq!((bad.status, bad.header("x-tollgate-shadow")), (200, Some("would-reject; status=401")));
    assert_eq!(envoy.counter("tollgate.requests.free.shadow_limited"), Some(3));
    assert_eq!(envoy.counter("tollgate.requests.free.limited"), Some(0));
    assert_eq!(envoy.counter("tollgate.requests.none.shadow_rejected"), Some(1));
    assert!(envoy.log().contains("decision=shadow_limited"));
}

#[test]
fn an_invalid_config_is_refused_and_the_log_names_the_field() {
    let mut config = default_plugin_config();
    let limits = config["tiers"]["free"]["limits"].as_array_mut().unwrap();
    let index = limits.len();
    limits.push(json!({ "name": "burst", "limit": 2, "window": "10x" }));
    let log =
        Envoy::start_expect_failure(EnvoyOptions { plugin_config: Some(config.to_string()), ..Default::default() });
    let expected =
        format!("invalid configuration: tiers.free.limits[{index}].window: expected a duration like 10s, 1m, 1h, 1d");
    assert!(log.contains(&expected), "{log}");

    let log = Envoy::start_expect_failure(EnvoyOptions {
        plugin_config: Some(r#"{"tiers": {}, "routes": [{"path_prefix": "/"}], "colour": 1}"#.to_owned()),
        ..Default::default()
    });
    assert!(log.contains("invalid configuration: colour: unknown field `colour`"), "{log}");
}

#[test]
fn two_hundred_concurrent_requests_from_one_key_across_both_workers_admit_exactly_the_limit() {
    let envoy = envoy_with(&default_plugin_config(), 0);
    let admitted = AtomicU32::new(0);
    let limited = AtomicU32::new(0);
    let start = std::sync::Barrier::new(50);
    std::thread::scope(|s| {
        for _ in 0..50 {
            s.spawn(|| {
                start.wait();
                for _ in 0..4 {
                    // A fresh connection per request spreads them over both workers.
                    let r = envoy.raw(&format!("POST {IMAGES} HTTP/1.1\nHost: x\nAuthorization: {PREMIUM}\n"));
                    match r.status {
                        200 => admitted.fetch_add(1, Ordering::Relaxed),
                        429 => limited.fetch_add(1, Ordering::Relaxed),
                        other => panic!("unexpected status {other}"),
                    };
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), 100);
    assert_eq!(limited.load(Ordering::Relaxed), 100);
    assert_eq!(envoy.counter("tollgate.requests.premium.allowed"), Some(100));
    for worker in 0..2 {
        let connections = envoy
            .counter(&format!("listener.127.0.0.1_{}.worker_{worker}.downstream_cx_total", envoy.port))
            .unwrap_or(0);
        assert!(connections > 10, "worker {worker} served only {connections} connections");
    }
}

/// The key anonymous callers' names in log lines are hashed with.
const NAME_KEY: &str = "a-test-key-of-caller-names";

fn with_name_key(mut config: Value) -> Value {
    config["logs"] = json!({ "caller_name_key": NAME_KEY });
    config
}

/// `caller=ip#<12 hex digits of HMAC-SHA256(NAME_KEY, network)>`.
fn logged_name(network: &str) -> String {
    let digest = tollgate_core::hash::hex(&tollgate_core::hash::hmac_sha256(NAME_KEY.as_bytes(), network.as_bytes()));
    format!("caller=ip#{}", &digest[..12])
}

#[test]
fn the_anonymous_key_follows_source_address_and_ignores_spoofed_forwarded_for() {
    // One trusted hop: the address the trusted proxy appended (rightmost) is the client.
    let envoy = envoy_with(&with_name_key(default_plugin_config()), 1);
    let from = |xff: &str| post(&envoy, IMAGES, &[("x-forwarded-for", xff)]).status;
    for i in 0..5 {
        assert_eq!(from(&format!("6.6.6.{i}, 203.0.113.7")), 200);
    }
    assert_eq!(from("1.2.3.4, 203.0.113.7"), 429, "a new leftmost entry moves no bucket");
    assert_eq!(from("203.0.113.7"), 429);
    assert_eq!(from("203.0.113.8"), 200, "another client");
    assert!(
        envoy.log().contains(&logged_name("203.0.113.7/32")),
        "refusals are logged with a keyed hash of the client"
    );
    assert!(!envoy.log().contains(&sha256_hex("203.0.113.7/32")[..12]), "never an unkeyed hash");
    assert!(!envoy.log().contains("203.0.113.7"), "never the address itself");

    // With no trusted hop, X-Forwarded-For is ignored altogether: the peer is 127.0.0.1.
    let envoy = envoy_with(&default_plugin_config(), 0);
    let spoofed: Vec<u16> =
        (0..6).map(|i| post(&envoy, IMAGES, &[("x-forwarded-for", &format!("198.51.100.{i}"))]).status).collect();
    assert_eq!(spoofed, [200, 200, 200, 200, 200, 429]);
}

#[test]
fn ipv6_clients_share_one_bucket_per_64() {
    let envoy = envoy_with(&with_name_key(default_plugin_config()), 1);
    let from = |xff: &str| post(&envoy, IMAGES, &[("x-forwarded-for", xff)]).status;
    for i in 1..=5 {
        assert_eq!(from(&format!("2001:db8:1:2::{i:x}")), 200);
    }
    assert_eq!(from("2001:db8:1:2:ffff:ffff:ffff:ffff"), 429, "same /64");
    assert_eq!(from("2001:db8:1:3::1"), 200, "next /64");
    assert!(envoy.log().contains(&logged_name("2001:db8:1:2::/64")));
}

#[test]
fn shared_data_stays_bounded_under_a_flood_of_identities() {
    let mut config = default_plugin_config();
    config["store"] = json!({ "max_tracked_keys": 8 });
    let envoy = envoy_with(&config, 1);
    for i in 0..300u32 {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        assert_eq!(post(&envoy, IMAGES, &[("x-forwarded-for", &ip.to_string())]).status, 200);
    }
    // 8 tracked keys = 8 slots of 4: at most 8 shared-data keys were ever created.
    let created = envoy.counter("tollgate.store.slots_created").unwrap();
    assert!((1..=8).contains(&created), "{created} slots created");
    assert!(envoy.counter("tollgate.store.evictions_live").unwrap() >= 300 - 32);
}

#[test]
fn heavy_contention_on_one_key_neither_over_nor_under_admits() {
    // Keep-alive connections and many requests make both workers race on one bucket often.
    let mut config = default_plugin_config();
    config["tiers"]["premium"]["limits"][0]["limit"] = json!(1000);
    let envoy = envoy_with(&config, 0);
    let admitted = AtomicU32::new(0);
    let start = std::sync::Barrier::new(32);
    std::thread::scope(|s| {
        for _ in 0..32 {
            s.spawn(|| {
                let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
                let url = format!("http://127.0.0.1:{}{IMAGES}", envoy.port);
                start.wait();
                for _ in 0..64 {
                    let r = agent.post(&url).header("authorization", PREMIUM).send_empty().unwrap();
                    match r.status().as_u16() {
                        200 => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        429 => {}
                        other => panic!("unexpected status {other}"),
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), 1000);
    let conflicts = envoy.counter("tollgate.store.cas_conflicts").unwrap();
    eprintln!("compare-and-swap conflicts: {conflicts}");
}
