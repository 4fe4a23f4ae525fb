//! The slot table: per-caller limit states in a fixed set of shared-data keys.
//!
//! Shared data is never freed by the host and has no delete, so callers are not keys.
//! Instead a fixed table of `slots` keys is used; a caller hashes to one slot, and a slot
//! holds up to [`SLOT_WAYS`] entries. An entry whose states have gone idle (bucket full
//! again, window over) is dropped on the next write to its slot, since no state and idle
//! state mean the same. Only when a slot is full of live entries is one evicted: the one
//! closest to idle. That caller starts afresh (an over-admission bounded by one quota,
//! counted in `tollgate.store.evictions_live`). Memory is `slots` values of at most
//! [`MAX_SLOT_BYTES`](super::MAX_SLOT_BYTES) bytes, whatever the number of callers.

use super::cas::compare_and_swap;
use super::codec::{decode, encode, Entries, Entry, Limits, StoredLimit};
use super::{SharedStore, StoreError};
use crate::config::SLOT_WAYS;
use crate::hash::identity_fingerprint;
use crate::time::Nanos;

/// Slot keys are `tollgate/v1/<slots>/<index>`.
const SLOT_KEY_PREFIX: &str = "tollgate/v1/";

/// Where a caller's entry lives: the shared-data key of its slot and its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRef {
    pub key: String,
    pub fingerprint: u64,
}

impl SlotRef {
    /// The slot of `caller` in `tier`; `slots` is the table size.
    pub fn new(tier: &str, caller: &str, slots: u32) -> SlotRef {
        SlotRef::from_fingerprint(identity_fingerprint(tier, caller), slots)
    }

    /// The slot of a caller whose [`identity_fingerprint`] is known.
    pub fn from_fingerprint(fingerprint: u64, slots: u32) -> SlotRef {
        SlotRef { key: table_key(SLOT_KEY_PREFIX, slots, fingerprint), fingerprint }
    }
}

/// `<prefix><slots>/<index>`: the key of the slot of a table of `slots` keys that
/// `fingerprint` picks (the whole fingerprint tells entries in a slot apart). Built
/// without `format!`, whose machinery is most of the cost of a key.
pub fn table_key(prefix: &str, slots: u32, fingerprint: u64) -> String {
    let index = spread(fingerprint) % u64::from(slots.max(1));
    let mut digits = itoa::Buffer::new();
    let mut key = String::with_capacity(prefix.len() + 22);
    key.push_str(prefix);
    key.push_str(digits.format(slots));
    key.push('/');
    key.push_str(digits.format(index));
    key
}

/// MurmurHash3's 64-bit finalizer. FNV-1a's low bits are poorly mixed (the lowest is the
/// parity of the input's low bits), and similar callers (addresses of one network) then
/// crowd into some slots: measured, 26 % of live callers were displaced at capacity where
/// an even spread displaces 20 %, and 3.5 % where it displaces 0.4 %.
fn spread(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// What a caller of [`update`] decided for a given stored state.
pub enum Change {
    /// Write these states (limit fingerprint → state) for the caller; `idle_at` is when
    /// all of them are back to "no state".
    Write { states: Limits, idle_at: Nanos },
    /// Nothing to write (the request was refused).
    Keep,
}

/// How an update went, for stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateReport {
    /// Compare-and-swap attempts that lost a race.
    pub conflicts: u32,
    pub created_slot: bool,
    pub evicted_live: bool,
    pub corrupt_value: bool,
}

/// Reads the caller's states, lets `decide` compute the change, and writes the slot back
/// with compare-and-swap (at most `retries` retries). `decide` may run several times and
/// must be pure.
pub fn update<S, F>(
    store: &S,
    slot: &SlotRef,
    now: Nanos,
    retries: u32,
    mut decide: F,
) -> (Result<(), StoreError>, UpdateReport)
where
    S: SharedStore + ?Sized,
    F: FnMut(&[StoredLimit]) -> Change,
{
    let (mut corrupt_value, mut evicted_live) = (false, false);
    let (result, cas) = compare_and_swap(store, &slot.key, retries, |bytes| {
        // A slot just created is empty; anything unreadable is replaced.
        let mut entries = if bytes.is_empty() { Ok(Entries::new()) } else { decode(bytes) }.unwrap_or_else(|_| {
            corrupt_value = true;
            Entries::new()
        });
        let current = entries.iter().find(|e| e.fingerprint == slot.fingerprint);
        match decide(current.map_or(&[][..], |e| &e.limits[..])) {
            Change::Keep => None,
            Change::Write { states, idle_at } => {
                evicted_live = place(&mut entries, slot.fingerprint, states, idle_at, now);
                Some(encode(&entries))
            }
        }
    });
    let report = UpdateReport {
        conflicts: cas.conflicts,
        created_slot: cas.created,
        evicted_live: evicted_live && result.is_ok(),
        corrupt_value,
    };
    (result, report)
}

/// Creates an empty slot unless someone else already has.
pub fn create_slot<S: SharedStore + ?Sized>(store: &S, key: &str) -> Result<(), StoreError> {
    super::cas::create_if_absent(store, key, &encode(&[]))
}

/// The slot's next contents: the caller's entry replaced or added, idle entries dropped,
/// and, if the slot is still over-full, the live entry closest to idle evicted.
fn place(entries: &mut Entries, fingerprint: u64, limits: Limits, idle_at: Nanos, now: Nanos) -> bool {
    entries.retain(|e| e.fingerprint != fingerprint && e.idle_at > now);
    let mut evicted_live = false;
    while entries.len() >= SLOT_WAYS {
        let Some((victim, _)) = entries.iter().enumerate().min_by_key(|(_, e)| e.idle_at) else {
            break;
        };
        entries.swap_remove(victim);
        evicted_live = true;
    }
    if idle_at > now {
        entries.push(Entry { fingerprint, idle_at, limits });
    }
    evicted_live
}

/// The stored words of the limit with this fingerprint, if any.
pub fn words_of(stored: &[StoredLimit], fingerprint: u32) -> Option<[u64; 2]> {
    stored.iter().find(|s| s.fingerprint == fingerprint).map(|s| s.words)
}
