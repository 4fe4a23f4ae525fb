use super::*;
use crate::config::Config;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const SEC: u64 = 1_000_000_000;
/// 2026-11-23T18:00:00Z: six hours before a UTC midnight.
const EVENING: Nanos = Nanos(1_795_456_800 * SEC);
const MIDNIGHT: Nanos = Nanos(1_795_478_400 * SEC);

fn limit(json: &str) -> Limit {
    let config =
        format!(r#"{{ "tiers": {{ "t": {{ "limits": [ {json} ] }} }}, "routes": [ {{ "path_prefix": "/" }} ] }}"#);
    Config::from_json(config.as_bytes()).unwrap().tiers[0].limits[0].clone()
}

/// Sends `count` requests of `cost` at `now`, threading state; returns how many were admitted.
fn send(l: &Limit, state: &mut Option<LimitState>, now: Nanos, count: u64, cost: u64) -> u64 {
    let mut admitted = 0;
    for _ in 0..count {
        let e = evaluate(l, *state, now, cost);
        if e.admitted {
            admitted += 1;
            *state = Some(e.state);
        }
    }
    admitted
}

#[test]
fn fixed_window_admits_exactly_the_limit_then_resets_at_utc_midnight() {
    let day = limit(r#"{ "name": "images-per-day", "limit": 5, "window": "1d", "algorithm": "fixed_window" }"#);
    let mut state = None;
    assert_eq!(send(&day, &mut state, EVENING, 8, 1), 5);
    let refused = evaluate(&day, state, EVENING, 1);
    assert!(!refused.admitted);
    assert_eq!(refused.remaining, 0);
    assert_eq!(refused.retry_after_ns, 6 * 3600 * SEC);
    assert_eq!(refused.reset_after_ns, 6 * 3600 * SEC);
    assert_eq!(refused.state, state.unwrap(), "a refusal changes nothing");
    // One nanosecond before midnight: still refused; at midnight exactly: a fresh day.
    assert!(!evaluate(&day, state, Nanos(MIDNIGHT.0 - 1), 1).admitted);
    assert_eq!(evaluate(&day, state, Nanos(MIDNIGHT.0 - 1), 1).retry_after_ns, 1);
    let fresh = evaluate(&day, state, MIDNIGHT, 1);
    assert!(fresh.admitted);
    assert_eq!(fresh.remaining, 4);
    assert_eq!(fresh.reset_after_ns, 86_400 * SEC);
}

#[test]
fn fixed_window_counts_cost() {
    let day = limit(r#"{ "name": "d", "limit": 5, "window": "1d", "algorithm": "fixed_window" }"#);
    let mut state = None;
    assert_eq!(send(&day, &mut state, EVENING, 3, 2), 2);
    assert_eq!(evaluate(&day, state, EVENING, 1).remaining, 0);
    assert!(evaluate(&day, state, EVENING, 1).admitted, "one unit is still left");
}

#[test]
fn token_bucket_allows_the_burst_then_one_token_per_interval() {
    // basic tier: 100 per minute, bursts of 20 → a token every 600 ms.
    let rpm = limit(r#"{ "name": "rpm", "limit": 100, "window": "1m", "burst": 20 }"#);
    let mut state = None;
    assert_eq!(send(&rpm, &mut state, EVENING, 30, 1), 20);
    let refused = evaluate(&rpm, state, EVENING, 1);
    assert_eq!(refused.retry_after_ns, 600_000_000);
    assert_eq!(refused.reset_after_ns, 12 * SEC, "full again after 20 × 600 ms");
    assert_eq!(send(&rpm, &mut state, Nanos(EVENING.0 + 599_999_999), 1, 1), 0);
    assert_eq!(send(&rpm, &mut state, Nanos(EVENING.0 + 600_000_000), 5, 1), 1);
    assert_eq!(send(&rpm, &mut state, Nanos(EVENING.0 + 3 * SEC), 10, 1), 4);
}

#[test]
fn token_bucket_reports_remaining_and_refills_to_capacity_only() {
    let rpm = limit(r#"{ "name": "rpm", "limit": 60, "window": "1m", "burst": 10 }"#);
    let first = evaluate(&rpm, None, EVENING, 1);
    assert_eq!((first.remaining, first.reset_after_ns), (9, SEC));
    // After an idle hour the bucket holds 10, not 3600.
    let mut state = Some(first.state);
    assert_eq!(send(&rpm, &mut state, Nanos(EVENING.0 + 3600 * SEC), 100, 1), 10);
}

#[test]
fn token_bucket_without_burst_holds_one_window() {
    let rpm = limit(r#"{ "name": "rpm", "limit": 5, "window": "10s" }"#);
    let mut state = None;
    assert_eq!(send(&rpm, &mut state, EVENING, 9, 1), 5);
}

#[test]
fn idle_at_is_when_state_no_longer_matters() {
    let rpm = limit(r#"{ "name": "rpm", "limit": 60, "window": "1m" }"#);
    let e = evaluate(&rpm, None, EVENING, 3);
    assert_eq!(e.idle_at, Nanos(EVENING.0 + 3 * SEC));
    let day = limit(r#"{ "name": "d", "limit": 5, "window": "1d", "algorithm": "fixed_window" }"#);
    assert_eq!(evaluate(&day, None, EVENING, 1).idle_at, MIDNIGHT);
}

#[cfg(not(target_arch = "wasm32"))]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn any_limit() -> impl Strategy<Value = Limit> {
        (
            1u64..200,
            prop::sample::select(vec!["1s", "10s", "1m", "1h", "1d"]),
            prop::option::of(1u64..300),
            any::<bool>(),
        )
            .prop_map(|(quota, window, burst, fixed)| {
                if fixed {
                    limit(&format!(
                        r#"{{ "name": "l", "limit": {quota}, "window": "{window}", "algorithm": "fixed_window" }}"#
                    ))
                } else {
                    let burst = burst.map_or(String::new(), |b| format!(r#", "burst": {b}"#));
                    limit(&format!(r#"{{ "name": "l", "limit": {quota}, "window": "{window}"{burst} }}"#))
                }
            })
    }

    proptest! {
        #[test]
        fn remaining_never_exceeds_capacity(l in any_limit(), gaps in prop::collection::vec(0u64..5 * SEC, 1..200), cost in 1u64..4) {
            let mut state = None;
            let mut now = EVENING.0;
            for gap in gaps {
                now += gap;
                let e = evaluate(&l, state, Nanos(now), cost);
                prop_assert!(e.remaining <= l.capacity());
                prop_assert!(e.admitted == (e.retry_after_ns == 0));
                if e.admitted { state = Some(e.state); }
            }
        }

        /// Over any span of one window, admitted cost never exceeds limit + burst
        /// (token bucket) or 2 × limit straddling a boundary (fixed window).
        #[test]
        fn admitted_over_any_window_is_bounded(l in any_limit(), gaps in prop::collection::vec(0u64..2 * SEC, 1..400)) {
            let window = l.window.secs * SEC;
            let bound = match l.kind {
                crate::config::LimitKind::TokenBucket { capacity, .. } => l.quota + capacity,
                crate::config::LimitKind::FixedWindow { .. } => 2 * l.quota,
            };
            let mut state = None;
            let mut now = EVENING.0;
            let mut admitted_at = Vec::new();
            for gap in gaps {
                now += gap;
                let e = evaluate(&l, state, Nanos(now), 1);
                if e.admitted {
                    state = Some(e.state);
                    admitted_at.push(now);
                }
            }
            for (i, start) in admitted_at.iter().enumerate() {
                let within = admitted_at[i..].iter().take_while(|t| **t < start + window).count() as u64;
                prop_assert!(within <= bound, "{within} admitted within one window, bound {bound}");
            }
        }

        /// In one calendar window a fixed window admits at most its limit.
        #[test]
        fn fixed_window_never_over_admits_within_a_window(quota in 1u64..50, gaps in prop::collection::vec(0u64..600 * SEC, 1..300)) {
            let l = limit(&format!(r#"{{ "name": "l", "limit": {quota}, "window": "1h", "algorithm": "fixed_window" }}"#));
            let mut state = None;
            let mut now = EVENING.0;
            let mut per_window = std::collections::HashMap::<u64, u64>::new();
            for gap in gaps {
                now += gap;
                let e = evaluate(&l, state, Nanos(now), 1);
                if e.admitted {
                    state = Some(e.state);
                    *per_window.entry(now / (3600 * SEC)).or_default() += 1;
                }
            }
            prop_assert!(per_window.values().all(|&n| n <= quota));
        }
    }
}
