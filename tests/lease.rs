#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Leases end to end: real Envoys with the built filter, the real `tollgate-quota` service
//! (memory or Redis). Bounds come from the lease module's documented worst case.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_testkit::envoy::{default_plugin_config, sha256_hex, Envoy, EnvoyOptions};
use tollgate_testkit::http::Reply;
use tollgate_testkit::quota_service::{BrokenQuota, Misbehaviour, QuotaService};
use tollgate_testkit::redis::Redis;
use tollgate_testkit::wait::Wait;

const IMAGES: &str = "/v1/images/generations";
const BULK_TOKEN: &str = "tg_test_bulk_0123456789";
const STREAM_TOKEN: &str = "tg_test_stream_0123456789";
/// The bulk tier: 1000 a day (fixed window), leased 50 at a time.
const BULK_LIMIT: u64 = 1000;
const BULK_BLOCK: u64 = 50;
/// The stream tier: a token bucket of 600 a minute (10 a second), burst 300, block 20.
const STREAM_RATE_PER_S: u64 = 10;
const STREAM_BURST: u64 = 300;
const STREAM_BLOCK: u64 = 20;

/// Worker threads of the test Envoys (`EnvoyOptions::default()`).
const WORKERS: u64 = 2;

/// The most one Envoy holds of one lease, charged at the service and not yet spent: the
/// record's balance (a block plus just under the low-water mark,
/// `tollgate_core::lease::max_balance`) and each worker's block of a tenth of it (plus
/// what was left of the last one, below a request's cost of 1: nothing).
fn most_held(block: u64) -> u64 {
    block + block.div_ceil(2) - 1 + WORKERS * (block / 10)
}

/// envoy.yaml's plugin config with two leasing tiers, `failure_mode` for bulk, and
/// `idle_ms` before an unused lease is given back.
fn plugin_config(bulk_failure_mode: &str, idle_ms: u64) -> Value {
    let mut config = default_plugin_config();
    config["quota_service"] = json!({ "cluster": "tollgate_quota", "timeout_ms": 2000, "lease_idle_return_ms": idle_ms,
                "breaker": { "failures": 3, "cooldown_ms": 500 } });
    config["tiers"]["bulk"] = json!({ "limits": [
        { "name": "per-day", "limit": BULK_LIMIT, "window": "1d", "algorithm": "fixed_window", "scope": "global",
          "lease_block": BULK_BLOCK, "failure_mode": bulk_failure_mode } ] });
    config["tiers"]["stream"] = json!({ "limits": [
        { "name": "rpm", "limit": STREAM_RATE_PER_S * 60, "window": "1m", "burst": STREAM_BURST, "scope": "global",
          "lease_block": STREAM_BLOCK, "failure_mode": "closed" } ] });
    let keys = config["keys"].as_array_mut().unwrap();
    keys.push(json!({ "id": "test-bulk", "sha256": sha256_hex(BULK_TOKEN), "tier": "bulk" }));
    keys.push(json!({ "id": "test-stream", "sha256": sha256_hex(STREAM_TOKEN), "tier": "stream" }));
    config
}

fn envoy_with(quota_port: u16, config: &Value) -> Envoy {
    Envoy::start(EnvoyOptions {
        plugin_config: Some(config.to_string()),
        quota_port: Some(quota_port),
        ..EnvoyOptions::default()
    })
}

fn post(envoy: &Envoy, token: &str) -> Reply {
    envoy.request("POST", IMAGES, &[("authorization", &format!("Bearer {token}"))])
}

fn used_units(service: &QuotaService, key: &str) -> u64 {
    service.usage(key).iter().map(|(_, used)| *used).max().unwrap_or(0)
}

fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.counter(name).unwrap_or_else(|| panic!("no stat {name}"))
}

/// Sends `total` requests from `threads` threads, spread over `envoys`; counts 200 and 429,
/// and fails on anything else.
fn flood(envoys: &[&Envoy], token: &str, threads: usize, total: usize) -> (u64, u64) {
    let admitted = AtomicU32::new(0);
    let limited = AtomicU32::new(0);
    let next = AtomicU32::new(0);
    let start = std::sync::Barrier::new(threads);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (admitted, limited, next, start) = (&admitted, &limited, &next, &start);
            s.spawn(move || {
                start.wait();
                while (next.fetch_add(1, Ordering::SeqCst) as usize) < total {
                    let r = post(envoys[t % envoys.len()], token);
                    match r.status {
                        200 => admitted.fetch_add(1, Ordering::SeqCst),
                        429 => limited.fetch_add(1, Ordering::SeqCst),
                        other => panic!("unexpected {other}: {:?} {}", r.headers, r.body),
                    };
                }
            });
        }
    });
    (u64::from(admitted.into_inner()), u64::from(limited.into_inner()))
}

#[test]
fn concurrent_requests_never_spend_more_than_was_leased() {
    let service = QuotaService::start("memory");
    let envoy = envoy_with(service.port, &plugin_config("closed", 60_000));
    let (admitted, limited) = flood(&[&envoy], BULK_TOKEN, 400, 400);
    assert_eq!((admitted, limited), (400, 0));
    let leased = stat(&envoy, "tollgate.quota.lease.units_leased");
    let refills = stat(&envoy, "tollgate.quota.lease.refills");
    let callouts = stat(&envoy, "tollgate.quota.callouts");
    let exact = callouts - refills;
    let used = used_units(&service, "bulk/key:test-bulk");
    eprintln!("400 admitted: {refills} refills, {leased} units leased, {exact} exact callouts, service used {used}");
    assert_eq!(used, leased + exact, "the service counted exactly the blocks and the exact checks");
    assert!(used >= admitted, "never more admitted than charged");
    assert!(used - admitted <= most_held(BULK_BLOCK), "unspent {} > the most an Envoy holds", used - admitted);
    assert!(stat(&envoy, "tollgate.store.blocks_taken") > 0, "workers took blocks of the lease");
    // A cold start at 400 at once: while the first refill is in flight the others are
    // decided exactly. Fewer callouts than requests all the same.
    assert!(callouts < 400, "{callouts} callouts for 400 requests");

    // Warm and one request at a time: a refill every half block, nothing else.
    for _ in 0..100 {
        assert_eq!(post(&envoy, BULK_TOKEN).status, 200);
    }
    let sequential = stat(&envoy, "tollgate.quota.callouts") - callouts;
    assert!(sequential <= 100 / (BULK_BLOCK / 2) + 1, "{sequential} callouts for 100 sequential requests");
    let admitted = admitted + 100;

    // Past the limit: never more than 1000 admitted, the tail decided exactly.
    let (more, _) = flood(&[&envoy], BULK_TOKEN, 50, 700);
    assert!(admitted + more <= BULK_LIMIT, "{} admitted of {BULK_LIMIT}", admitted + more);
    assert!(admitted + more >= BULK_LIMIT - most_held(BULK_BLOCK), "{} admitted", admitted + more);
    assert!(used_units(&service, "bulk/key:test-bulk") <= BULK_LIMIT);
    let r = post(&envoy, BULK_TOKEN);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
}

#[test]
fn two_envoys_hold_a_fixed_window_exactly_and_a_token_bucket_within_the_bound() {
    let service = QuotaService::start("memory");
    let config = plugin_config("closed", 60_000);
    let (a, b) = (envoy_with(service.port, &config), envoy_with(service.port, &config));
    let (admitted, limited) = flood(&[&a, &b], BULK_TOKEN, 40, 1500);
    assert_eq!(admitted + limited, 1500);
    assert!(admitted <= BULK_LIMIT, "{admitted} admitted across two Envoys of a fixed window of {BULK_LIMIT}");
    assert!(admitted >= BULK_LIMIT - 2 * most_held(BULK_BLOCK), "{admitted}");
    assert!(used_units(&service, "bulk/key:test-bulk") <= BULK_LIMIT);

    let started = Instant::now();
    let (admitted, _) = flood(&[&a, &b], STREAM_TOKEN, 20, 1500);
    let elapsed = started.elapsed();
    // Over the run the bucket gives at most burst + rate × elapsed; each Envoy may spend
    // what it still held from before (at most most_held) on top.
    let refilled = STREAM_RATE_PER_S * (elapsed.as_millis() as u64).div_ceil(1000);
    let bound = STREAM_BURST + refilled + 2 * most_held(STREAM_BLOCK);
    eprintln!("token bucket: {admitted} admitted in {elapsed:?}, bound {bound}");
    assert!(admitted <= bound, "{admitted} admitted > bound {bound} in {elapsed:?}");
    assert!(admitted >= STREAM_BURST - 2 * most_held(STREAM_BLOCK), "{admitted}: the burst is usable");
}

#[test]
fn a_quota_service_restart_while_leases_are_held_causes_no_errors_and_refills_resume() {
    let redis = Redis::start();
    let mut service = QuotaService::start(&redis.url());
    let envoy = envoy_with(service.port, &plugin_config("local", 60_000));
    for _ in 0..60 {
        assert_eq!(post(&envoy, BULK_TOKEN).status, 200);
    }
    let before = used_units(&service, "bulk/key:test-bulk");
    assert!((60..=60 + most_held(BULK_BLOCK)).contains(&before), "{before}");

    service.kill();
    let mut degraded = 0;
    for i in 0..100 {
        let r = post(&envoy, BULK_TOKEN);
        assert_eq!(r.status, 200, "request {i} while the service is down: {} {}", r.status, r.body);
        degraded += u32::from(r.header("x-tollgate-degraded").is_some());
    }
    assert!(degraded > 0, "the held balance ran out and failure_mode local took over");

    service.restart();
    assert_eq!(used_units(&service, "bulk/key:test-bulk"), before, "Redis kept the count across the restart");
    let refills = stat(&envoy, "tollgate.quota.lease.refills");
    Wait::new("refills to resume").at_most(Duration::from_secs(15)).until_ok(|| {
        let r = post(&envoy, BULK_TOKEN);
        assert_eq!(r.status, 200, "{}", r.body);
        let now = stat(&envoy, "tollgate.quota.lease.refills");
        match r.header("x-tollgate-degraded") {
            None if now > refills => Ok(()),
            degraded => Err(format!("{now} refills (from {refills}), degraded: {degraded:?}")),
        }
    });
    assert!(used_units(&service, "bulk/key:test-bulk") > before, "new blocks are counted on top of the old count");
}

#[test]
fn an_idle_lease_is_given_back() {
    let service = QuotaService::start("memory");
    let envoy = envoy_with(service.port, &plugin_config("closed", 500));
    for _ in 0..10 {
        assert_eq!(post(&envoy, BULK_TOKEN).status, 200);
    }
    assert_eq!(used_units(&service, "bulk/key:test-bulk"), BULK_BLOCK, "one block leased");
    Wait::new("a lease return (500 ms idle time)")
        .at_most(Duration::from_secs(10))
        .every(Duration::from_millis(100))
        .until(|| stat(&envoy, "tollgate.quota.lease.returns") > 0);
    assert_eq!(stat(&envoy, "tollgate.quota.lease.return_failures"), 0);
    assert_eq!(stat(&envoy, "tollgate.quota.lease.units_returned"), BULK_BLOCK - 10);
    assert_eq!(used_units(&service, "bulk/key:test-bulk"), 10, "the service counts only what was admitted");
    // The next request takes a fresh block.
    assert_eq!(post(&envoy, BULK_TOKEN).status, 200);
    assert_eq!(used_units(&service, "bulk/key:test-bulk"), 10 + BULK_BLOCK);
}

#[test]
fn five_a_day_stays_exact() {
    let service = QuotaService::start("memory");
    let envoy = envoy_with(service.port, &plugin_config("closed", 60_000));
    let statuses: Vec<u16> = (0..12).map(|_| envoy.request("POST", IMAGES, &[]).status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 7, "{statuses:?}");
    assert_eq!(stat(&envoy, "tollgate.quota.lease.units_leased"), 0, "no lease for 5 a day");
    assert_eq!(stat(&envoy, "tollgate.quota.callouts"), 12, "a callout per request");
    assert_eq!(used_units(&service, "free/ip:127.0.0.1/32"), 5);
}

/// Envoy's count of downstream connections it destroyed.
const CONNECTIONS_DESTROYED: &str = "http.ingress.downstream_cx_destroy";

/// Sends a request as a client that gives up once `leave` holds (`awaited` says what that
/// is): it closes its connection, and this returns when Envoy has destroyed the connection,
/// which it does after the streams on it and their filters (the request's context is gone
/// then). Both by `deadline`.
fn abandoned_post(
    envoy: &Envoy,
    token: &str,
    deadline: Instant,
    awaited: &str,
    leave: impl FnMut() -> Result<(), String>,
) {
    let until_deadline = |what: &str| Wait::new(what).at_most(deadline.saturating_duration_since(Instant::now()));
    let destroyed = stat(envoy, CONNECTIONS_DESTROYED);
    let mut stream = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    let request = format!(
        "POST {IMAGES} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    until_deadline(awaited).until_ok(leave);
    drop(stream);
    until_deadline("Envoy to destroy the connection its client closed").until_ok(|| {
        match stat(envoy, CONNECTIONS_DESTROYED) {
            now if now > destroyed => Ok(()),
            now => Err(format!("{CONNECTIONS_DESTROYED} is {now}")),
        }
    });
}

/// How many callouts of `cost` the service has read.
fn callouts_of_cost(service: &BrokenQuota, cost: u64) -> usize {
    let received = service.received.lock().unwrap();
    let needle = format!("\"cost\":{cost},");
    received.windows(needle.len()).filter(|w| *w == needle.as_bytes()).count()
}

#[test]
fn a_client_that_leaves_while_its_request_refills_frees_the_refill_and_the_callout_slot() {
    // The service never answers, and a callout would wait 10 s for it; one in flight at most.
    let service = BrokenQuota::start(Misbehaviour::Hang);
    let mut config = plugin_config("closed", 60_000);
    config["quota_service"]["timeout_ms"] = json!(10_000);
    config["quota_service"]["max_pending_callouts"] = json!(1);
    let envoy = envoy_with(service.port, &config);
    // All of it well within the callouts' 10 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    // The first client leaves while its request waits for the block it asked for.
    abandoned_post(&envoy, BULK_TOKEN, deadline, "the first request to ask for a block", || {
        match callouts_of_cost(&service, BULK_BLOCK) {
            0 => Err("no callout for a block yet".to_owned()),
            _ => Ok(()),
        }
    });
    // Its client is gone, and the answer would find no request. The next request finds no refill
    // in flight and a free callout slot: it asks for a block itself, rather than deciding
    // exactly (a check of cost 1) for the marker's 11 s, or being refused a callout.
    abandoned_post(&envoy, BULK_TOKEN, deadline, "a second request for a block", || {
        match callouts_of_cost(&service, BULK_BLOCK) {
            0 | 1 => Err(format!(
                "no second block asked for: {} exact checks, {} callouts refused",
                callouts_of_cost(&service, 1),
                stat(&envoy, "tollgate.quota.failures")
            )),
            _ => Ok(()),
        }
    });
    assert_eq!(callouts_of_cost(&service, 1), 0, "no exact check");
    assert_eq!(stat(&envoy, "tollgate.quota.failures"), 0, "no callout refused or failed");
}

/// A TCP relay in front of the quota service that can freeze: while frozen, bytes wait in
/// it in both directions (callouts in flight get no answer; Envoy's HTTP/2 connection to
/// the service stays up).
struct Gate {
    port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Gate {
    fn start(upstream: u16) -> Gate {
        use std::io::Read;
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let gate = Arc::clone(&frozen);
        std::thread::spawn(move || {
            for downstream in listener.incoming() {
                let Ok(downstream) = downstream else { return };
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
                for (mut from, mut to) in
                    [(downstream.try_clone().unwrap(), upstream.try_clone().unwrap()), (upstream, downstream)]
                {
                    let frozen = Arc::clone(&gate);
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n @ 1..) = from.read(&mut buf) {
                            while frozen.load(Ordering::SeqCst) {
                                sleep(Duration::from_millis(5));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Gate { port, frozen }
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }
}

#[test]
fn the_request_that_refills_ahead_of_need_does_not_wait_for_the_service() {
    let service = QuotaService::start("memory");
    let gate = Gate::start(service.port);
    let mut config = plugin_config("closed", 60_000);
    // A callout waited for would hold its request for a minute: past the client's 30 s.
    config["quota_service"]["timeout_ms"] = json!(60_000);
    let envoy = envoy_with(gate.port, &config);
    assert_eq!(post(&envoy, BULK_TOKEN).status, 200, "the first request takes a block");
    assert_eq!(stat(&envoy, "tollgate.quota.callouts"), 1);
    // The service goes silent. The balance admits requests until one leaves it under half
    // a block; that one starts a refill, which gets no answer, and is answered all the same.
    gate.freeze(true);
    let mut sent = 1;
    // (Each worker takes a tenth of the block out of the balance at a time, so the refill
    // can start well before request 25.)
    while stat(&envoy, "tollgate.quota.callouts") < 2 {
        assert!(sent < BULK_BLOCK, "{sent} requests and no refill: the balance is spent");
        assert_eq!(post(&envoy, BULK_TOKEN).status, 200, "request {sent}");
        sent += 1;
    }
    assert_eq!(stat(&envoy, "tollgate.quota.lease.refills"), 1, "the refill is still in flight");
    // The service answers again: the refill is credited (by the worker's root context: its
    // request is long gone), and the next requests spend the new block without a callout.
    gate.freeze(false);
    Wait::new("the refill's answer to be credited (tollgate.quota.lease.refills = 2)")
        .at_most(Duration::from_secs(10))
        .every(Duration::from_millis(20))
        .until(|| stat(&envoy, "tollgate.quota.lease.refills") >= 2);
    assert_eq!(used_units(&service, "bulk/key:test-bulk"), 2 * BULK_BLOCK);
    for _ in 0..10 {
        assert_eq!(post(&envoy, BULK_TOKEN).status, 200);
    }
    assert_eq!(stat(&envoy, "tollgate.quota.callouts"), 2, "the refilled balance decides them");
}
