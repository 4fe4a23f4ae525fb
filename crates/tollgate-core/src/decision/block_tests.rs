//! Worker blocks of local limits (`crate::worker_block`): several workers are several caches over
//! one shared store, as Envoy's worker threads are VMs over one shared-data map.

use super::*;
use crate::hash::{hex, sha256};
use crate::store::FakeSharedData;
use crate::worker::{keeps_blocks, Worker};
use crate::worker_block::{IDLE_GIVE_BACK_NS, MAX_BLOCKS};
use crate::RequestInfo;
use crate::{Config, Nanos};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const SEC: u64 = 1_000_000_000;
/// 2026-11-23T18:00:00Z.
const EVENING: Nanos = Nanos(1_795_456_800 * SEC);
const IMAGES: &str = "/v1/images/generations";

/// One tier, `bulk`, with the given limits, for key `tg_bulk` and anonymous callers.
fn config(limits: &str) -> Config {
    let json = format!(
        r#"{{
          "identity": {{ "anonymous": {{ "tier": "bulk" }} }},
          "keys": [ {{ "id": "bulk", "sha256": "{}", "tier": "bulk" }} ],
          "tiers": {{ "bulk": {{ "limits": [ {limits} ] }} }},
          "routes": [ {{ "path_prefix": "{IMAGES}", "cost": 1 }}, {{ "path_prefix": "/v1/edits", "cost": 3 }} ]
        }}"#,
        hex(&sha256(b"tg_bulk"))
    );
    Config::from_json(json.as_bytes()).unwrap()
}

const DAY_10K: &str = r#"{ "name": "per-day", "limit": 10000, "window": "1d", "algorithm": "fixed_window" }"#;

fn worker() -> Worker {
    Worker::new(1).with_blocks(MAX_BLOCKS)
}

fn request(path: &str) -> RequestInfo<'_> {
    RequestInfo { method: "POST", path, authorization: vec!["Bearer tg_bulk"], ..RequestInfo::default() }
}

fn header<'a>(d: &'a Decision, name: &str) -> Option<&'a str> {
    d.reply.as_ref().map_or(&d.response_headers, |r| &r.headers).get(name)
}

fn remaining(d: &Decision) -> u64 {
    header(d, "x-ratelimit-remaining").unwrap().parse().unwrap()
}

#[test]
fn limits_of_10k_or_more_take_blocks_of_1_percent_and_smaller_ones_stay_exact() {
    let c = config(&format!(
        r#"{DAY_10K}, {{ "name": "rpm", "limit": 9999, "window": "1m" }}, {{ "name": "big", "limit": 10000000, "window": "1h", "worker_block": 0 }}"#
    ));
    let blocks: Vec<u64> = c.tiers[0].limits.iter().map(|l| l.worker_block).collect();
    assert_eq!(blocks, [100, 0, 0]);
    assert_eq!(config(r#"{ "name": "m", "limit": 1000000000, "window": "1m" }"#).tiers[0].limits[0].worker_block, 1000);
    assert!(!keeps_blocks(&config(r#"{ "name": "rpm", "limit": 9999, "window": "1m" }"#)));
    assert!(keeps_blocks(&config(DAY_10K)));
}

#[test]
fn a_worker_admits_from_its_hold_without_touching_shared_data() {
    let c = config(DAY_10K);
    let s = FakeSharedData::default();
    let mut w = worker();
    let first = decide_with(&c, &s, &mut w, &request(IMAGES), EVENING);
    assert_eq!(first.outcome, Outcome::Allowed);
    assert_eq!(remaining(&first), 9999, "the held block still counts as remaining");
    assert!(first.blocks.taken);
    let writes = s.writes();
    for i in 1..=100u64 {
        let d = decide_with(&c, &s, &mut w, &request(IMAGES), Nanos(EVENING.0 + i * SEC));
        assert_eq!(d.outcome, Outcome::Allowed);
        assert!(!d.blocks.taken);
        assert_eq!(remaining(&d), 9999 - i);
        assert_eq!(header(&d, "x-ratelimit-reset"), Some("1795478400"));
        assert_eq!(header(&d, "ratelimit"), Some(format!("\"per-day\";r={};t={}", 9999 - i, 6 * 3600 - i).as_str()));
    }
    assert_eq!(s.writes(), writes, "100 requests, all from the block of 100");
    let d = decide_with(&c, &s, &mut w, &request(IMAGES), Nanos(EVENING.0 + 101 * SEC));
    assert_eq!(remaining(&d), 9898);
    assert_eq!(s.writes(), writes + 1, "the 102nd request takes the next block");
    // Without a cache that outlives the request nothing is held: every request is exact.
    let d = decide(&c, &s, &request(IMAGES), Nanos(EVENING.0 + 102 * SEC));
    assert_eq!(remaining(&d), 9898 - 100 - 1, "what this worker holds is not available to others");
}

#[test]
fn workers_never_admit_more_than_the_limit_and_idle_blocks_come_back() {
    let c = config(DAY_10K);
    let s = FakeSharedData::default();
    let mut workers: Vec<Worker> = (0..3).map(|_| worker()).collect();
    let mut admitted = 0u64;
    let mut now = EVENING;
    // Round robin until every worker is refused: the last blocks cannot be taken whole,
    // and then each request is decided exactly on what is left.
    for i in 0..20_000usize {
        now = Nanos(now.0 + 1_000);
        let w = &mut workers[i % 3];
        if decide_with(&c, &s, w, &request(IMAGES), now).outcome == Outcome::Allowed {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10_000, "every unit is spent once, none twice");

    // Two workers take blocks, then go idle: their units come back at their next tick.
    let c = config(DAY_10K);
    let s = FakeSharedData::default();
    let (mut a, mut b) = (worker(), worker());
    decide_with(&c, &s, &mut a, &request(IMAGES), now);
    decide_with(&c, &s, &mut b, &request(IMAGES), now);
    let exact = |s: &FakeSharedData, at: Nanos| remaining(&decide(&c, s, &request(IMAGES), at)) + 1;
    assert_eq!(exact(&s, now), 10_000 - 2 - 200, "two blocks held");
    let soon = Nanos(now.0 + IDLE_GIVE_BACK_NS - 1);
    assert_eq!(give_back_idle_blocks(&c, &s, &mut a, soon).blocks_given_back, 0, "not idle yet");
    let idle = Nanos(now.0 + IDLE_GIVE_BACK_NS);
    assert_eq!(give_back_idle_blocks(&c, &s, &mut a, idle).blocks_given_back, 1);
    assert_eq!(give_back_idle_blocks(&c, &s, &mut b, idle).blocks_given_back, 1);
    assert_eq!(exact(&s, idle), 10_000 - 3, "both blocks given back; 3 requests counted");
    assert!(a.blocks.is_empty() && b.blocks.is_empty());
}

#[test]
fn a_token_bucket_block_is_given_back_and_never_fills_the_bucket_past_full() {
    // 600,000 per minute with a burst of 20,000: one token every 100 µs; block 200.
    let c = config(r#"{ "name": "rpm", "limit": 600000, "window": "1m", "burst": 20000 }"#);
    assert_eq!(c.tiers[0].limits[0].worker_block, 200);
    let s = FakeSharedData::default();
    let mut w = worker();
    let d = decide_with(&c, &s, &mut w, &request(IMAGES), EVENING);
    assert_eq!(remaining(&d), 19_999);
    let exact = |at: Nanos| remaining(&decide(&c, &s, &request(IMAGES), at)) + 1;
    assert_eq!(exact(EVENING), 20_000 - 201);
    // Given back after 0.1 s idle... the bucket refilled 1,000 tokens meanwhile, so it is full.
    let idle = Nanos(EVENING.0 + IDLE_GIVE_BACK_NS);
    assert_eq!(give_back_idle_blocks(&c, &s, &mut w, idle).blocks_given_back, 1);
    assert_eq!(exact(idle), 20_000, "never above the burst");
}

#[test]
fn a_fixed_window_hold_expires_with_its_window() {
    let c = config(DAY_10K);
    let s = FakeSharedData::default();
    let mut w = worker();
    let before_midnight = Nanos(1_795_478_400 * SEC - SEC);
    decide_with(&c, &s, &mut w, &request(IMAGES), before_midnight);
    let writes = s.writes();
    let after = Nanos(1_795_478_400 * SEC);
    let d = decide_with(&c, &s, &mut w, &request(IMAGES), after);
    assert_eq!(s.writes(), writes + 1, "yesterday's block is void: today's request goes to shared data");
    assert_eq!(remaining(&d), 9999, "a fresh day, with a fresh block held");
    assert_eq!(give_back_idle_blocks(&c, &s, &mut w, Nanos(after.0 + IDLE_GIVE_BACK_NS)).blocks_given_back, 1);
    assert_eq!(remaining(&decide(&c, &s, &request(IMAGES), Nanos(after.0 + 2 * SEC))), 9998);
}

#[test]
fn refusals_are_decided_on_shared_data_and_exact() {
    // Block 100 of 10,000; another worker spends all but 50 of it exactly.
    let c = config(DAY_10K);
    let s = FakeSharedData::default();
    let mut w = worker();
    for i in 0..9_950u64 {
        assert_eq!(decide(&c, &s, &request(IMAGES), Nanos(EVENING.0 + i)).outcome, Outcome::Allowed);
    }
    // 50 left: a block of 100 does not fit, so each request is charged exactly.
    for i in 0..50u64 {
        let d = decide_with(&c, &s, &mut w, &request(IMAGES), Nanos(EVENING.0 + SEC + i));
        assert_eq!((d.outcome, remaining(&d)), (Outcome::Allowed, 49 - i));
    }
    assert!(w.blocks.is_empty());
    let d = decide_with(&c, &s, &mut w, &request(IMAGES), Nanos(EVENING.0 + 2 * SEC));
    assert_eq!(d.outcome, Outcome::Limited);
    assert_eq!(header(&d, "retry-after"), Some((6 * 3600 - 2).to_string().as_str()));
}

#[test]
fn a_hold_covers_a_route_s_cost_or_is_topped_up() {
    let c = config(DAY_10K);
    let s = FakeSharedData::default();
    let mut w = worker();
    // Cost 3: 103 charged, 100 held; 33 requests spend 99, the 34th finds 1 and takes more.
    let d = decide_with(&c, &s, &mut w, &request("/v1/edits"), EVENING);
    assert_eq!(remaining(&d), 9997);
    let writes = s.writes();
    for i in 1..=33u64 {
        assert_eq!(remaining(&decide_with(&c, &s, &mut w, &request("/v1/edits"), Nanos(EVENING.0 + i))), 9997 - 3 * i);
    }
    assert_eq!(s.writes(), writes);
    let d = decide_with(&c, &s, &mut w, &request("/v1/edits"), Nanos(EVENING.0 + 34));
    assert_eq!(s.writes(), writes + 1);
    assert_eq!(remaining(&d), 9997 - 3 * 34, "the unit left over stays held, with the new block");
    assert_eq!(w.blocks.len(), 1);
}

#[test]
fn a_full_table_gives_back_what_it_pushes_out() {
    let c = config(DAY_10K);
    let s = FakeSharedData::default();
    let mut w = Worker::new(1).with_blocks(2);
    let anonymous = |ip: &'static str| RequestInfo {
        method: "POST",
        path: IMAGES,
        client_address: Some(ip),
        ..RequestInfo::default()
    };
    for ip in ["198.51.100.1:0", "198.51.100.2:0", "198.51.100.3:0"] {
        decide_with(&c, &s, &mut w, &anonymous(ip), EVENING);
    }
    assert_eq!(w.blocks.len(), 2);
    // The caller pushed out has its block back: only its one request counts.
    let left: Vec<u64> = ["198.51.100.1:0", "198.51.100.2:0", "198.51.100.3:0"]
        .iter()
        .map(|ip| remaining(&decide(&c, &s, &anonymous(ip), Nanos(EVENING.0 + 1))) + 1)
        .collect();
    assert_eq!(left.iter().filter(|&&l| l == 9_999).count(), 1, "{left:?}");
    assert_eq!(left.iter().filter(|&&l| l == 9_899).count(), 2, "{left:?}");
    // The request that pushed one out says so, for the stats.
    let d = decide_with(&c, &s, &mut w, &anonymous("198.51.100.4:0"), Nanos(EVENING.0 + 2));
    assert_eq!((d.blocks.taken, d.blocks.given_back), (true, 1));
}
