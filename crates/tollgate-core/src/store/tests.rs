use std::cell::Cell;

use super::*;
use crate::time::Nanos;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const NOW: Nanos = Nanos(1_795_456_800_000_000_000);
const LATER: u64 = 60_000_000_000;

/// A decision that counts one unit under limit fingerprint 7, up to `cap`.
fn count_to(cap: u64) -> impl FnMut(&[StoredLimit]) -> Change {
    move |stored| {
        let used = words_of(stored, 7).map_or(0, |[_, used]| used);
        if used >= cap {
            return Change::Keep;
        }
        Change::Write {
            states: smallvec::smallvec![StoredLimit { fingerprint: 7, words: [0, used + 1] }],
            idle_at: Nanos(NOW.0 + LATER),
        }
    }
}

fn count_of(store: &FakeSharedData, slot: &SlotRef) -> u64 {
    let (bytes, _) = store.get(&slot.key).unwrap().unwrap();
    let entries = decode(&bytes).unwrap();
    let entry = entries.iter().find(|e| e.fingerprint == slot.fingerprint).unwrap();
    words_of(&entry.limits, 7).unwrap()[1]
}

#[test]
fn fake_follows_envoy_cas_rules() {
    let s = FakeSharedData::default();
    assert_eq!(s.get("k"), Ok(None));
    // A write to a key that does not exist ignores cas.
    s.set("k", b"a", Some(12345)).unwrap();
    let (_, cas) = s.get("k").unwrap().unwrap();
    s.set("k", b"b", Some(cas)).unwrap();
    assert_eq!(s.set("k", b"c", Some(cas)), Err(StoreError::CasMismatch), "stale cas");
    s.set("k", b"d", None).unwrap();
    assert_eq!(s.get("k").unwrap().unwrap().0, b"d");
}

#[test]
fn fake_cas_counter_wraps_and_skips_zero() {
    let s = FakeSharedData::starting_at_cas(u32::MAX);
    s.set("a", b"", None).unwrap();
    s.set("b", b"", None).unwrap();
    assert_eq!(s.get("a").unwrap().unwrap().1, u32::MAX);
    assert_eq!(s.get("b").unwrap().unwrap().1, 1);
}

#[test]
fn slot_keys_are_stable_and_spread() {
    let a = SlotRef::new("free", "ip:203.0.113.7/32", 1000);
    assert_eq!(a, SlotRef::new("free", "ip:203.0.113.7/32", 1000));
    assert_ne!(a.fingerprint, SlotRef::new("premium", "ip:203.0.113.7/32", 1000).fingerprint);
    let used: std::collections::HashSet<String> =
        (0..1000).map(|i| SlotRef::new("free", &format!("ip:10.0.{}.{}/32", i / 256, i % 256), 64).key).collect();
    assert_eq!(used.len(), 64, "1000 identities reach every one of 64 slots");
}

#[test]
fn update_counts_and_stops_at_the_cap() {
    let s = FakeSharedData::default();
    let slot = SlotRef::new("t", "k", 16);
    for _ in 0..5 {
        let (r, _) = update(&s, &slot, NOW, 4, count_to(3));
        r.unwrap();
    }
    assert_eq!(count_of(&s, &slot), 3);
}

/// A store that, right before the `n`-th call to `set` on a slot key, lets another
/// worker run a whole update first: the interleaving that loses updates if creation
/// or compare-and-swap is wrong.
struct Interleaved<'a> {
    inner: &'a FakeSharedData,
    slot: &'a SlotRef,
    before_set: Cell<u32>,
    fire_at: u32,
}

impl SharedStore for Interleaved<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        if key == self.slot.key {
            let n = self.before_set.get() + 1;
            self.before_set.set(n);
            if n == self.fire_at {
                let (r, _) = update(self.inner, self.slot, NOW, 4, count_to(100));
                r.unwrap();
            }
        }
        self.inner.set(key, value, cas)
    }
}

#[test]
fn a_slot_created_concurrently_is_not_overwritten() {
    // The other worker creates the slot and counts 1 between our "not found" and our create.
    let s = FakeSharedData::default();
    let slot = SlotRef::new("t", "k", 16);
    let racing = Interleaved { inner: &s, slot: &slot, before_set: Cell::new(0), fire_at: 1 };
    let (r, report) = update(&racing, &slot, NOW, 4, count_to(100));
    r.unwrap();
    assert!(report.created_slot);
    assert_eq!(count_of(&s, &slot), 2, "both increments survive");
}

#[test]
fn a_lost_compare_and_swap_is_retried_on_fresh_state() {
    let s = FakeSharedData::default();
    let slot = SlotRef::new("t", "k", 16);
    update(&s, &slot, NOW, 4, count_to(100)).0.unwrap();
    let racing = Interleaved { inner: &s, slot: &slot, before_set: Cell::new(0), fire_at: 1 };
    let (r, report) = update(&racing, &slot, NOW, 4, count_to(100));
    r.unwrap();
    assert_eq!(report.conflicts, 1);
    assert_eq!(count_of(&s, &slot), 3);
}

#[test]
fn creating_without_the_fresh_cas_would_lose_an_update() {
    // What create_slot guards against: the naive "set if get said absent" with cas 0.
    let s = FakeSharedData::default();
    let slot = SlotRef::new("t", "k", 16);
    assert_eq!(s.get(&slot.key), Ok(None));
    update(&s, &slot, NOW, 4, count_to(100)).0.unwrap(); // another worker, meanwhile
    s.set(&slot.key, &encode(&[]), None).unwrap(); // the naive create
    assert!(decode(&s.get(&slot.key).unwrap().unwrap().0).unwrap().is_empty(), "the count was erased");
    // create_slot in the same position leaves it alone.
    update(&s, &slot, NOW, 4, count_to(100)).0.unwrap();
    create_slot(&s, &slot.key).unwrap();
    assert_eq!(count_of(&s, &slot), 1);
}

#[test]
fn create_slot_is_safe_even_across_a_cas_wrap() {
    let s = FakeSharedData::starting_at_cas(u32::MAX - 1);
    let slot = SlotRef::new("t", "k", 16);
    update(&s, &slot, NOW, 4, count_to(100)).0.unwrap();
    update(&s, &slot, NOW, 4, count_to(100)).0.unwrap();
    create_slot(&s, &slot.key).unwrap();
    assert_eq!(count_of(&s, &slot), 2);
}

/// A store whose every compare-and-swap loses.
struct AlwaysContended(FakeSharedData);

impl SharedStore for AlwaysContended {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.0.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match cas {
            Some(_) if key != SCRATCH_KEY && self.0.get(key)?.is_some() => Err(StoreError::CasMismatch),
            _ => self.0.set(key, value, cas),
        }
    }
}

#[test]
fn retries_are_bounded() {
    let s = AlwaysContended(FakeSharedData::default());
    let slot = SlotRef::new("t", "k", 16);
    let (r, report) = update(&s, &slot, NOW, 5, count_to(100));
    assert_eq!(r, Err(StoreError::CasMismatch));
    assert_eq!(report.conflicts, 5);
}

#[test]
fn a_corrupt_value_is_replaced_and_reported() {
    let s = FakeSharedData::default();
    let slot = SlotRef::new("t", "k", 16);
    s.set(&slot.key, b"\x07garbage", None).unwrap();
    let (r, report) = update(&s, &slot, NOW, 4, count_to(100));
    r.unwrap();
    assert!(report.corrupt_value);
    assert_eq!(count_of(&s, &slot), 1);
}

#[test]
fn memory_stays_bounded_under_a_flood_of_identities() {
    let s = FakeSharedData::default();
    let slots = 250;
    let mut live_evictions = 0;
    for i in 0..20_000u32 {
        let slot = SlotRef::new("free", &format!("ip:{}/32", std::net::Ipv4Addr::from(i)), slots);
        let (r, report) = update(&s, &slot, NOW, 4, count_to(5));
        r.unwrap();
        live_evictions += u32::from(report.evicted_live);
    }
    assert_eq!(s.key_count(), slots as usize + 1, "the slots and the scratch key, nothing more");
    assert!(s.bytes_held() <= slots as usize * (MAX_SLOT_BYTES + 32) + 64);
    assert!(live_evictions >= 20_000 - 4 * slots, "every identity past capacity displaced a live one");
}

#[test]
fn idle_entries_make_room_before_live_ones_are_evicted() {
    let s = FakeSharedData::default();
    // One slot: every identity shares it.
    let ids: Vec<SlotRef> = (0..5).map(|i| SlotRef::new("t", &format!("id{i}"), 1)).collect();
    for id in &ids[..4] {
        update(&s, id, NOW, 4, count_to(5)).0.unwrap();
    }
    // Later, when those four are idle, a fifth identity evicts nobody live.
    let later = Nanos(NOW.0 + LATER);
    let (_, report) = update(&s, &ids[4], later, 4, |_| Change::Write {
        states: smallvec::smallvec![StoredLimit { fingerprint: 7, words: [0, 1] }],
        idle_at: Nanos(later.0 + LATER),
    });
    assert!(!report.evicted_live);
    assert_eq!(decode(&s.get(&ids[4].key).unwrap().unwrap().0).unwrap().len(), 1, "idle entries dropped");
}

#[test]
fn a_full_slot_evicts_the_entry_closest_to_idle() {
    let s = FakeSharedData::default();
    let ids: Vec<SlotRef> = (0..5).map(|i| SlotRef::new("t", &format!("id{i}"), 1)).collect();
    for (i, id) in ids.iter().enumerate() {
        let idle_at = Nanos(NOW.0 + LATER * (10 - i as u64));
        let (_, report) = update(&s, id, NOW, 4, |_| Change::Write {
            states: smallvec::smallvec![StoredLimit { fingerprint: 7, words: [0, 1] }],
            idle_at,
        });
        assert_eq!(report.evicted_live, i == 4);
    }
    let left: Vec<u64> =
        decode(&s.get(&ids[0].key).unwrap().unwrap().0).unwrap().iter().map(|e| e.fingerprint).collect();
    assert!(!left.contains(&ids[3].fingerprint), "id3 had the earliest idle time");
    assert!(left.contains(&ids[4].fingerprint) && left.contains(&ids[0].fingerprint));
}

#[test]
fn codec_round_trips() {
    let entries = vec![
        Entry { fingerprint: 1, idle_at: Nanos(2), limits: smallvec::smallvec![] },
        Entry {
            fingerprint: u64::MAX,
            idle_at: Nanos(u64::MAX),
            limits: smallvec::smallvec![StoredLimit { fingerprint: 9, words: [3, 4] }; 16],
        },
    ];
    assert_eq!(decode(&encode(&entries)).map(|e| e.to_vec()), Ok(entries));
    assert_eq!(decode(&encode(&[])).map(|e| e.to_vec()), Ok(vec![]));
    assert!(decode(b"").is_err());
    assert!(decode(&[1, 5]).is_err(), "more entries than ways");
    let mut trailing = encode(&[]);
    trailing.push(0);
    assert!(decode(&trailing).is_err());
}

#[cfg(not(target_arch = "wasm32"))]
mod concurrency {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn racing_threads_admit_exactly_the_cap() {
        for _ in 0..20 {
            let s = FakeSharedData::default();
            let slot = SlotRef::new("t", "hot", 16);
            let admitted = AtomicU64::new(0);
            std::thread::scope(|scope| {
                for _ in 0..4 {
                    scope.spawn(|| {
                        for _ in 0..60 {
                            let mut took = false;
                            let (r, _) = update(&s, &slot, NOW, 1000, |stored| {
                                let change = count_to(100)(stored);
                                took = matches!(change, Change::Write { .. });
                                change
                            });
                            r.unwrap();
                            if took {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            assert_eq!(admitted.load(Ordering::Relaxed), 100);
            assert_eq!(count_of(&s, &slot), 100);
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decode_inverts_encode(raw in prop::collection::vec((any::<u64>(), any::<u64>(), prop::collection::vec((any::<u32>(), any::<u64>(), any::<u64>()), 0..16)), 0..4)) {
            let entries: Vec<Entry> = raw.into_iter().map(|(f, i, ls)| Entry {
                fingerprint: f,
                idle_at: Nanos(i),
                limits: ls.into_iter().map(|(lf, a, b)| StoredLimit { fingerprint: lf, words: [a, b] }).collect(),
            }).collect();
            let bytes = encode(&entries);
            prop_assert!(bytes.len() <= MAX_SLOT_BYTES);
            prop_assert_eq!(decode(&bytes).map(|e| e.to_vec()), Ok(entries));
        }
    }
}
