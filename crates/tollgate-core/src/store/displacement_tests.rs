//! How many of N live callers the slot table keeps when N is `max_tracked_keys`: each
//! caller charges one live state, then each is looked for. A caller not found was
//! displaced by a later one (and would start afresh: one extra quota).

use super::*;
use crate::config::{Config, SLOT_WAYS};
use crate::hash::identity_fingerprint;
use crate::time::Nanos;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const NOW: Nanos = Nanos(1_795_456_800_000_000_000);

/// Callers displaced when `callers` distinct live callers each charge once a table of
/// `slots` slots.
fn displaced(callers: u32, slots: u32) -> u32 {
    let store = FakeSharedData::default();
    let live = Nanos(NOW.0 + 3_600_000_000_000);
    let caller = |i: u32| identity_fingerprint("free", &format!("ip:10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255));
    for i in 0..callers {
        let slot = SlotRef::from_fingerprint(caller(i), slots);
        let (result, _) = update(&store, &slot, NOW, 1, |_| Change::Write {
            states: std::iter::once(StoredLimit { fingerprint: 7, words: [1, 1] }).collect(),
            idle_at: live,
        });
        assert_eq!(result, Ok(()));
    }
    let kept = (0..callers)
        .filter(|&i| {
            let slot = SlotRef::from_fingerprint(caller(i), slots);
            let bytes = store.get(&slot.key).ok().flatten().map(|(b, _)| b).unwrap_or_default();
            decode(&bytes).is_ok_and(|entries| entries.iter().any(|e| e.fingerprint == slot.fingerprint))
        })
        .count();
    callers - u32::try_from(kept).unwrap_or(callers)
}

fn slots_for(max_tracked_keys: u32) -> u32 {
    let json = format!(
        r#"{{"tiers": {{"free": {{"limits": [{{"name": "rpm", "limit": 1, "window": "1m"}}]}}}},
            "routes": [{{"path_prefix": "/"}}], "store": {{"max_tracked_keys": {max_tracked_keys}}}}}"#
    );
    Config::from_json(json.as_bytes()).map(|c| c.store.slots).unwrap_or(0)
}

/// At nominal capacity the table keeps at least 99 % of live callers (docs/ARCHITECTURE.md
/// has the measured curve; `cargo test -p tollgate-core displacement -- --nocapture`
/// prints it).
#[test]
fn at_max_tracked_keys_at_most_one_percent_of_live_callers_are_displaced() {
    for n in [10_000u32, 100_000] {
        let slots = slots_for(n);
        let lost = displaced(n, slots);
        eprintln!(
            "N = {n}, {slots} slots of {SLOT_WAYS}: {lost} displaced ({:.2} %)",
            f64::from(lost) * 100.0 / f64::from(n)
        );
        assert!(lost * 100 <= n, "{lost} of {n} displaced");
    }
}

/// The curve: live callers displaced at N = 10,000 by slots per tracked key.
#[test]
fn displacement_curve_by_slots_per_tracked_key() {
    let n = 10_000u32;
    for (quarters, expect_at_most) in [(1u32, 21u32), (2, 5), (3, 2), (4, 1)] {
        let slots = n * quarters / 4;
        let lost = displaced(n, slots);
        eprintln!(
            "N = {n}, {quarters}/4 slot per key ({slots} slots): {lost} displaced ({:.2} %)",
            f64::from(lost) * 100.0 / f64::from(n)
        );
        assert!(lost * 100 <= n * expect_at_most, "{quarters}/4: {lost} of {n}");
    }
}
