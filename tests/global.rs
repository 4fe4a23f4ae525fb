#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Global quotas end to end: real Envoys with the built filter, the real `tollgate-quota`
//! service, and a real `redis-server`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_testkit::envoy::{default_plugin_config, sha256_hex, Envoy, EnvoyOptions};
use tollgate_testkit::http::Reply;
use tollgate_testkit::quota_service::{BrokenQuota, Misbehaviour, QuotaOptions, QuotaService, DEV_SERVICE_TOKEN};
use tollgate_testkit::redis::Redis;
use tollgate_testkit::wait::Wait;

const IMAGES: &str = "/v1/images/generations";
const PREMIUM: &str = "Bearer tg_demo_premium_0123456789";
const PRO_TOKEN: &str = "tg_test_pro_0123456789";
const CACHE_TTL_MS: u64 = 1000;
const COOLDOWN_MS: u64 = 1000;

/// envoy.yaml's plugin config (free and premium daily quotas global), with short cache
/// and breaker times, and a pro key whose global limit fails closed.
fn plugin_config() -> Value {
    let mut config = default_plugin_config();
    config["quota_service"] = json!({
        "cluster": "tollgate_quota", "timeout_ms": 250,
        "key_cache_ttl_ms": CACHE_TTL_MS, "negative_cache_ttl_ms": 5000,
        "breaker": { "failures": 3, "cooldown_ms": COOLDOWN_MS }
    });
    config["tiers"]["pro"] = json!({ "limits": [
        { "name": "rpm", "limit": 500, "window": "1m", "burst": 100, "scope": "global", "failure_mode": "closed" } ] });
    config["keys"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "id": "test-pro", "sha256": sha256_hex(PRO_TOKEN), "tier": "pro" }));
    config
}

fn envoy_for(quota_port: u16) -> Envoy {
    Envoy::start(EnvoyOptions {
        plugin_config: Some(plugin_config().to_string()),
        quota_port: Some(quota_port),
        ..EnvoyOptions::default()
    })
}

fn post(envoy: &Envoy, auth: Option<&str>) -> Reply {
    match auth {
        Some(a) => envoy.request("POST", IMAGES, &[("authorization", a)]),
        None => envoy.request("POST", IMAGES, &[]),
    }
}

#[test]
fn the_free_tier_holds_five_a_day_across_two_envoys_concurrently() {
    let redis = Redis::start();
    let service = QuotaService::start(&redis.url());
    let envoys = [envoy_for(service.port), envoy_for(service.port)];
    let admitted = AtomicU32::new(0);
    let limited = AtomicU32::new(0);
    let start = std::sync::Barrier::new(20);
    std::thread::scope(|s| {
        for i in 0..20 {
            let (envoys, admitted, limited, start) = (&envoys, &admitted, &limited, &start);
            s.spawn(move || {
                start.wait();
                let r = envoys[i % 2].raw(&format!("POST {IMAGES} HTTP/1.1\nHost: x\n"));
                match r.status {
                    200 => admitted.fetch_add(1, Ordering::SeqCst),
                    429 => {
                        assert_eq!(r.json()["error"]["limit"], "images-per-day");
                        limited.fetch_add(1, Ordering::SeqCst)
                    }
                    other => panic!("unexpected {other}: {}", r.body),
                };
            });
        }
    });
    assert_eq!(admitted.load(Ordering::SeqCst), 5, "exactly five across both Envoys");
    assert_eq!(limited.load(Ordering::SeqCst), 15);
    for envoy in &envoys {
        let r = post(envoy, None);
        assert_eq!(r.status, 429);
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
        assert!(r.header("x-tollgate-degraded").is_none());
        assert_eq!(envoy.counter("tollgate.quota.failures"), Some(0));
    }
    let metrics = service.metrics();
    assert!(metrics.contains("tollgate_quota_decisions_total"), "{metrics}");
}

#[test]
fn a_key_created_through_the_admin_api_works_at_once_and_revocation_takes_effect_within_the_cache_ttl() {
    let service = QuotaService::start("memory");
    let envoy = envoy_for(service.port);
    let (id, token) = service.create_key("premium", "acme");
    let bearer = format!("Bearer {token}");
    let first = post(&envoy, Some(&bearer));
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-ratelimit-limit"), Some("100"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("99"));
    assert!(
        envoy.log().contains(&format!("caller=key:{id}"))
            || envoy.counter("tollgate.requests.premium.allowed") == Some(1)
    );
    assert!(!envoy.log().contains(&token), "the token is never logged");
    assert!(!service.log().contains(&token), "the token is never logged");

    service.revoke(&id);
    // The key stays cached as valid for at most the cache TTL: the request is repeated
    // until the TTL (and 200 ms) has passed, and from then on it must be refused on every
    // worker (before, a worker that never cached the key may refuse it already). A stale
    // entry is still used, by design, while the quota service cannot answer (a callout
    // that times out on a loaded machine, or the breaker it opens): each such failure
    // seen moves the deadline on by one cache TTL.
    let revoked = Instant::now();
    let service_failures = || {
        envoy.counter("tollgate.quota.failures").unwrap_or(0)
            + envoy.counter("tollgate.quota.short_circuited").unwrap_or(0)
    };
    let mut failures = service_failures();
    let mut due = revoked + Duration::from_millis(CACHE_TTL_MS + 200);
    let after = loop {
        let began = Instant::now();
        let r = post(&envoy, Some(&bearer));
        if r.status != 200 && began >= due {
            break r;
        }
        if r.status != 200 {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let now_failures = service_failures();
        if now_failures > failures {
            failures = now_failures;
            due = began + Duration::from_millis(CACHE_TTL_MS + 200);
        }
        assert!(began < due, "the revoked key was still admitted {:?} after its cache TTL", began - revoked);
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(after.status, 401, "{}", after.body);
    assert_eq!(after.json()["error"]["code"], "invalid_api_key");
    // A flood of the same bad token is answered from the negative cache, 401, until the
    // network's failed credentials (20 a minute) are used up, then 429.
    let callouts = envoy.counter("tollgate.quota.callouts").unwrap();
    let statuses: Vec<u16> = (0..25).map(|_| post(&envoy, Some(&bearer)).status).collect();
    assert!(statuses.iter().all(|s| [401, 429].contains(s)), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let more = envoy.counter("tollgate.quota.callouts").unwrap() - callouts;
    assert!(more <= 2, "{more} callouts for 25 requests with one revoked token (2 workers, 5 s negative TTL)");
}

#[test]
fn a_killed_service_gives_each_failure_mode_and_the_breaker_opens_then_closes() {
    let mut service = QuotaService::start("memory");
    let envoy = envoy_for(service.port);
    let pro = format!("Bearer {PRO_TOKEN}");
    assert_eq!(post(&envoy, Some(PREMIUM)).status, 200);
    service.kill();

    // premium: failure_mode open → admitted, and said so.
    let open = post(&envoy, Some(PREMIUM));
    assert_eq!(open.status, 200);
    assert_eq!(open.header("x-tollgate-degraded"), Some("quota-service-unavailable; failure-mode=open"));
    // pro: failure_mode closed → 503 with Retry-After.
    let closed = post(&envoy, Some(&pro));
    assert_eq!(closed.status, 503);
    assert_eq!(closed.header("retry-after"), Some("1"));
    assert_eq!(closed.json()["error"]["code"], "quota_service_unavailable");
    // free: failure_mode local → a local bucket of the same size (5 a day).
    let free: Vec<Reply> = (0..7).map(|_| post(&envoy, None)).collect();
    let statuses: Vec<u16> = free.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    assert_eq!(free[0].header("x-tollgate-degraded"), Some("quota-service-unavailable; failure-mode=local"));

    assert!(envoy.counter("tollgate.quota.breaker_opened").unwrap() >= 1);
    assert!(envoy.counter("tollgate.quota.short_circuited").unwrap() >= 1, "the open breaker stopped callouts");
    assert!(envoy.counter("tollgate.quota.failure_mode.open").unwrap() >= 1);
    assert!(envoy.counter("tollgate.quota.failure_mode.closed").unwrap() >= 1);
    assert!(envoy.counter("tollgate.quota.failure_mode.local").unwrap() >= 5);
    assert!(envoy.log().contains("quota service breaker opened"));

    // Back: after the cooldown a probe goes through and closes the breaker. Until then
    // the requests are short-circuited (premium fails open, degraded).
    service.restart();
    Wait::new(format!("the breaker to close ({COOLDOWN_MS} ms cooldown)"))
        .at_most(Duration::from_secs(15))
        .every(Duration::from_millis(200))
        .until_ok(|| {
            let r = post(&envoy, Some(PREMIUM));
            if r.status == 200 && r.header("x-tollgate-degraded").is_none() {
                Ok(())
            } else {
                Err(format!("{} {:?}", r.status, r.headers))
            }
        });
    assert!(envoy.counter("tollgate.quota.breaker_closed").unwrap() >= 1);
    assert_eq!(post(&envoy, Some(&pro)).status, 200);
}

#[test]
fn a_hanging_service_times_out_and_the_failure_mode_applies() {
    let broken = BrokenQuota::start(Misbehaviour::Hang);
    let envoy = envoy_for(broken.port);
    let started = Instant::now();
    let r = post(&envoy, Some(PREMIUM));
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-tollgate-degraded"), Some("quota-service-unavailable; failure-mode=open"));
    eprintln!("answered after {took:?} with timeout_ms 250");
    if envoy.counter("tollgate.quota.timeouts") != Some(1) {
        let stats = envoy.stats_prometheus();
        let interesting: Vec<&str> = stats
            .lines()
            .filter(|l| {
                (l.contains("tollgate_quota") || l.contains("internal_upstream_rq"))
                    && !l.starts_with('#')
                    && !l.ends_with(" 0")
            })
            .collect();
        eprintln!("{}", interesting.join("\n"));
    }
    assert_eq!(envoy.counter("tollgate.quota.timeouts"), Some(1));
    assert!(broken.requests.load(Ordering::SeqCst) >= 1, "the callout reached the service");
}

#[test]
fn a_service_answering_500_is_a_failure_with_its_failure_mode() {
    let broken = BrokenQuota::start(Misbehaviour::Error500);
    let envoy = envoy_for(broken.port);
    let closed = post(&envoy, Some(&format!("Bearer {PRO_TOKEN}")));
    assert_eq!(closed.status, 503);
    let open = post(&envoy, Some(PREMIUM));
    assert_eq!((open.status, open.header("x-tollgate-degraded").is_some()), (200, true));
    assert_eq!(envoy.counter("tollgate.quota.failures"), Some(2));
    assert_eq!(envoy.counter("tollgate.quota.timeouts"), Some(0));
}

/// The filter sends `quota_service.token` (the testkit puts the service's in the config):
/// with it the pro key's closed global limit admits; a service started with another token
/// answers 401, which the filter takes as a failure of the service.
#[test]
fn callouts_carry_the_service_token_and_a_refused_one_is_a_failure() {
    let right = QuotaService::start("memory");
    let envoy = envoy_for(right.port);
    assert_eq!(post(&envoy, Some(&format!("Bearer {PRO_TOKEN}"))).status, 200);
    assert_eq!(envoy.counter("tollgate.quota.failures"), Some(0));

    let wrong = QuotaService::start_with(QuotaOptions {
        service_token: Some("another-service-token-0123456789".to_owned()),
        ..QuotaOptions::new("memory")
    });
    let envoy = envoy_for(wrong.port);
    let refused = post(&envoy, Some(&format!("Bearer {PRO_TOKEN}")));
    assert_eq!(refused.status, 503, "failure_mode closed: {}", refused.body);
    assert_eq!(envoy.counter("tollgate.quota.failures"), Some(1));
    assert!(wrong.metrics().contains(r#"tollgate_quota_requests_total{endpoint="/v1/check",status="401"} 1"#));
    assert_eq!(envoy.log().matches("the quota service answered 401").count(), 1, "{}", envoy.log());
    assert!(!envoy.log().contains("another-service-token") && !envoy.log().contains(DEV_SERVICE_TOKEN));
}

#[test]
fn a_service_answering_200_with_a_garbled_body_is_a_counted_failure() {
    let broken = BrokenQuota::start(Misbehaviour::Garbled200);
    let envoy = envoy_for(broken.port);
    let open = post(&envoy, Some(PREMIUM));
    assert_eq!((open.status, open.header("x-tollgate-degraded").is_some()), (200, true));
    let closed = post(&envoy, Some(&format!("Bearer {PRO_TOKEN}")));
    assert_eq!(closed.status, 503);
    assert_eq!(envoy.counter("tollgate.quota.callouts"), Some(2));
    assert_eq!(envoy.counter("tollgate.quota.failures"), Some(2), "a 200 that cannot be read is a failure");
    // The third failure opens the breaker (failures: 3).
    post(&envoy, Some(PREMIUM));
    assert_eq!(envoy.counter("tollgate.quota.breaker_opened"), Some(1));
    assert_eq!(envoy.counter("tollgate.quota.failures"), Some(3));
}

#[test]
fn a_redis_restart_and_a_script_flush_are_survived() {
    let mut redis = Redis::start();
    let service = QuotaService::start(&redis.url());
    let envoy = envoy_for(service.port);
    for _ in 0..3 {
        assert_eq!(post(&envoy, Some(PREMIUM)).header("x-tollgate-degraded"), None);
    }
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
    let r = post(&envoy, Some(PREMIUM));
    assert_eq!((r.status, r.header("x-tollgate-degraded")), (200, None), "NOSCRIPT is handled by reloading");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("96"));

    redis.restart();
    let r = Wait::new("the service to come back after the Redis restart")
        .at_most(Duration::from_secs(15))
        .every(Duration::from_millis(200))
        .until_ok(|| {
            let r = post(&envoy, Some(PREMIUM));
            assert!(r.status == 200, "premium fails open, never an error: {} {}", r.status, r.body);
            match r.header("x-tollgate-degraded") {
                None => Ok(r),
                Some(degraded) => Err(format!("still degraded: {degraded}")),
            }
        });
    // Redis came back empty (no persistence here): counting starts again.
    assert_eq!(r.header("x-ratelimit-remaining"), Some("99"));
    assert!(!service.log().contains("NOSCRIPT"), "{}", service.log());
}

/// A request with a body (an image prompt) waits for the callout like one without: the
/// body must not carry the request past a filter that is still waiting for the service.
#[test]
fn a_request_with_a_body_waits_for_the_callout() {
    let broken = BrokenQuota::start(Misbehaviour::Hang);
    let envoy = envoy_for(broken.port);
    let prompt = r#"{"model":"img-1","prompt":"a lighthouse at dusk","n":1}"#;
    let r = envoy.request_with_body(
        "POST",
        IMAGES,
        &[("authorization", &format!("Bearer {PRO_TOKEN}")), ("content-type", "application/json")],
        prompt,
    );
    assert_eq!(r.status, 503, "failure_mode closed: {} {}", r.status, r.body);
    assert_eq!(envoy.counter("tollgate.quota.timeouts"), Some(1));
}
