#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Worker blocks of local quota (`tollgate_core::hold`) in real Envoy with two workers:
//! never more admitted than the limit, at most a block per worker held back, and idle
//! blocks given back to shared data.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::json;
use tollgate_testkit::envoy::{Envoy, EnvoyOptions};
use tollgate_testkit::wait::Wait;

const IMAGES: &str = "/v1/images/generations";
/// A route that costs the whole limit: see `left_in_shared_data`.
const PROBE: &str = "/v1/chat/completions";
const LIMIT: u32 = 300;
const BLOCK: u32 = 50;
const WORKERS: u32 = 2;

#[test]
fn two_workers_holding_blocks_never_admit_more_than_the_limit_and_give_idle_blocks_back() {
    let config = json!({
        "identity": { "anonymous": { "tier": "bulk" } },
        "tiers": { "bulk": { "limits": [
            { "name": "per-day", "limit": LIMIT, "window": "1d", "algorithm": "fixed_window", "lease_block": BLOCK } ] } },
        "routes": [ { "path_prefix": IMAGES, "cost": 1 }, { "path_prefix": PROBE, "cost": LIMIT } ]
    });
    let envoy = Envoy::start(EnvoyOptions {
        concurrency: WORKERS,
        plugin_config: Some(config.to_string()),
        ..EnvoyOptions::default()
    });
    let post = || envoy.raw(&format!("POST {IMAGES} HTTP/1.1\nHost: x\n"));
    // 200 requests on fresh connections (spread over both workers), 10 each from 20 threads.
    let burst = || {
        let admitted = AtomicU32::new(0);
        let start = std::sync::Barrier::new(20);
        std::thread::scope(|s| {
            for _ in 0..20 {
                s.spawn(|| {
                    start.wait();
                    for _ in 0..10 {
                        match post().status {
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
        admitted.load(Ordering::Relaxed)
    };
    // What shared data has left for the caller, read without charging it or touching a
    // block: a request that costs the whole limit is decided on shared data (no block
    // can cover it), refused once anything was spent, and its x-ratelimit-remaining is
    // what is left there.
    let left_in_shared_data = || {
        let r = envoy.raw(&format!("POST {PROBE} HTTP/1.1\nHost: x\n"));
        assert_eq!(r.status, 429, "the probe costs the whole limit: {}", r.body);
        r.header("x-ratelimit-remaining").and_then(|v| v.parse::<u32>().ok())
    };
    // Idle for over a second, each worker gives its block back at its next tick: once
    // shared data has all back but the `admitted` units, one more request sees exactly
    // what is left there.
    let remaining_after_idle = |admitted: u32| {
        Wait::new(format!("the idle blocks to be given back (shared data: {LIMIT} less {admitted} admitted)"))
            .at_most(Duration::from_secs(30))
            .every(Duration::from_millis(100))
            .until_ok(|| match left_in_shared_data() {
                Some(left) if left == LIMIT - admitted => Ok(()),
                left => Err(format!("shared data has {left:?} left")),
            });
        let r = post();
        (r.status, r.header("x-ratelimit-remaining").map(str::to_owned))
    };

    // Two blocks of 50 and 200 requests fit in 300: all admitted, and the units still
    // held when the burst ends come back.
    assert_eq!(burst(), 200);
    let taken = envoy.counter("tollgate.store.blocks_taken").unwrap_or(0);
    // A worker serving n of them takes ceil(n / 51) blocks (each with the request that takes
    // it), and one more after each block it gave back idle in between: a worker can wait a
    // second for its next request on a slow machine (a connect that lost its SYN waits 1 s).
    let given_back_meanwhile = envoy.counter("tollgate.store.blocks_given_back").unwrap_or(0);
    assert!(
        (4..=5 + given_back_meanwhile).contains(&taken),
        "{taken} blocks of 50 taken for 200 requests on 2 workers, {given_back_meanwhile} given back meanwhile"
    );
    assert_eq!(remaining_after_idle(200), (200, Some((LIMIT - 201).to_string())));
    let given_back = envoy.counter("tollgate.store.blocks_given_back").unwrap_or(0);
    assert!(given_back >= 1, "no idle block given back");

    // 200 more than the 99 left: never more than the limit, at most a block per worker
    // held back while the burst lasts.
    let admitted = 201 + burst();
    assert!(admitted <= LIMIT, "{admitted} admitted over a limit of {LIMIT}");
    assert!(admitted >= LIMIT - WORKERS * BLOCK, "{admitted} admitted: more than a block per worker held back");
    let left = LIMIT - admitted;
    let (status, remaining) = remaining_after_idle(admitted);
    assert_eq!(status, if left > 0 { 200 } else { 429 });
    assert_eq!(remaining, Some(left.saturating_sub(1).to_string()), "{admitted} admitted before");
}
