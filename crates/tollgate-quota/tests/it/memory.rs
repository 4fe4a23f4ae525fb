//! The scenario suite on the memory store (manual clock: exact numbers), and what only a
//! manual clock can show.

use std::sync::Arc;
use std::time::Duration;

use tollgate_core::Nanos;
use tollgate_quota::store::{ManualClock, MemoryStore, Store};

use crate::scenarios::{check, unique_key, Fixture, TestTime};

/// 2027-01-15T12:34:56.789Z: not on any window boundary.
const START: Nanos = Nanos(1_800_016_496_789_000_000);

pub fn fixture() -> (Fixture<MemoryStore>, ()) {
    let clock = ManualClock::starting_at(START);
    let store = MemoryStore::with_clock(clock.clone());
    (Fixture { store: Arc::new(store), time: TestTime::Manual { clock, start: START } }, ())
}

crate::scenario_tests!(fixture());

#[tokio::test]
async fn a_day_window_resets_at_midnight_utc() {
    let clock = ManualClock::starting_at(Nanos::from_secs(1_800_057_600 - 2)); // 2 s before 2027-01-16T00:00:00Z
    let store = MemoryStore::with_clock(clock.clone());
    let c =
        check(&unique_key("free"), 1, r#"[{"name":"day","algorithm":"fixed_window","limit":1,"window_secs":86400}]"#);
    let first = store.check(&c).await.unwrap();
    assert_eq!(first.limits[0].reset_after_ms, 2000);
    let refused = store.check(&c).await.unwrap();
    assert_eq!((refused.admitted, refused.limits[0].retry_after_ms), (false, 2000));
    clock.advance(Duration::from_millis(1999));
    assert!(!store.check(&c).await.unwrap().admitted);
    clock.advance(Duration::from_millis(1));
    let next_day = store.check(&c).await.unwrap();
    assert!(next_day.admitted);
    assert_eq!(next_day.limits[0].reset_after_ms, 86_400_000);
}

#[tokio::test]
async fn six_hundred_a_minute_with_bursts_of_twenty_is_one_request_every_hundred_ms() {
    let clock = ManualClock::starting_at(START);
    let store = MemoryStore::with_clock(clock.clone());
    let c = check(&unique_key("pro"), 1, r#"[{"name":"rpm","limit":600,"window_secs":60,"burst":20}]"#);
    for _ in 0..20 {
        assert!(store.check(&c).await.unwrap().admitted);
    }
    let refused = store.check(&c).await.unwrap();
    assert_eq!(
        (refused.admitted, refused.limits[0].retry_after_ms, refused.limits[0].reset_after_ms),
        (false, 100, 2000)
    );
    clock.advance(Duration::from_millis(100));
    assert!(store.check(&c).await.unwrap().admitted);
    assert!(!store.check(&c).await.unwrap().admitted);
}
