//! Per-identity limit state in the proxy's shared data, updated with compare-and-swap.
//!
//! # Memory stays bounded
//! Shared data is never freed by the host and has no delete, so identities are not keys.
//! Instead a fixed table of `slots` keys is used; an identity hashes to one slot, and a
//! slot holds up to [`SLOT_WAYS`] identities. An entry whose state has gone idle (bucket
//! full again, window over) is dropped on the next write to its slot, since no state
//! and idle state mean the same. Only when a slot is full of live entries is one evicted:
//! the one closest to idle. That caller starts afresh (an over-admission bounded by one
//! quota, counted in `tollgate.store.evictions_live`). Memory is `slots` values of at most
//! [`MAX_SLOT_BYTES`] bytes, whatever the number of distinct callers.
//!
//! # Creating a key safely
//! The host ignores `cas` when a key does not exist yet, so two workers that both find a
//! slot missing could both "create" it and the second would erase the first's update.
//! [`create_slot`] avoids that: it writes a scratch key, reads back that write's cas
//! value, and creates the slot with that cas. The host's cas counter gives each write
//! its own number, so if the slot was created by someone else in between, its cas differs
//! and the host answers `CasMismatch` instead of overwriting.

mod codec;
mod fake;

pub use codec::{decode, encode, Entries, Entry, Limits, StoredLimit, MAX_SLOT_BYTES};
pub use fake::FakeSharedData;

use crate::config::{fnv1a64, fnv1a64_more, SLOT_WAYS};
use crate::limit::LimitState;
use crate::time::Nanos;

/// Errors of the host's shared data other than a lost race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    CasMismatch,
    Host,
}

/// The host operations the limiter needs: Envoy's `get_shared_data` / `set_shared_data`.
pub trait SharedStore {
    /// The value and its cas, or `None` if the key was never written.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Writes `value`. With `Some(cas)` the write happens only if the key's cas is still
    /// `cas` (or the key does not exist); otherwise `Err(StoreError::CasMismatch)`.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

/// The key whose fresh cas numbers make slot creation safe (see the module docs).
pub const SCRATCH_KEY: &str = "tollgate/cas-scratch";

/// Where an identity lives: the shared-data key of its slot and its 64-bit fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRef {
    pub key: String,
    pub fingerprint: u64,
}

impl SlotRef {
    /// `tier` and `identity` together name the entry; `slots` is the table size.
    pub fn new(tier: &str, identity: &str, slots: u32) -> SlotRef {
        SlotRef::from_fingerprint(identity_fingerprint(tier, identity), slots)
    }

    /// The slot of an identity whose [`identity_fingerprint`] is known.
    pub fn from_fingerprint(fingerprint: u64, slots: u32) -> SlotRef {
        SlotRef { key: table_key(SLOT_KEY_PREFIX, slots, fingerprint), fingerprint }
    }
}

/// FNV-1a of `tier NUL identity`, without building it.
pub fn identity_fingerprint(tier: &str, identity: &str) -> u64 {
    fnv1a64_more(fnv1a64_more(fnv1a64(tier.as_bytes()), &[0]), identity.as_bytes())
}

/// `<prefix><slots>/<index>`: the key of the slot of a table of `slots` keys that the low
/// bits of `fingerprint` pick (the whole fingerprint tells entries in a slot apart). Built
/// without `format!`, whose machinery is most of the cost of a key.
pub fn table_key(prefix: &str, slots: u32, fingerprint: u64) -> String {
    let index = fingerprint % u64::from(slots.max(1));
    let mut digits = itoa::Buffer::new();
    let mut key = String::with_capacity(prefix.len() + 22);
    key.push_str(prefix);
    key.push_str(digits.format(slots));
    key.push('/');
    key.push_str(digits.format(index));
    key
}

/// Slot keys are `tollgate/v1/<slots>/<index>`.
const SLOT_KEY_PREFIX: &str = "tollgate/v1/";

/// What a caller of [`update`] decided for a given stored state.
pub enum Change {
    /// Write these states (limit fingerprint → state) for the identity; `idle_at` is when
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
    /// A worker block was charged with the request (see [`crate::hold`]).
    pub block_taken: bool,
    /// Worker blocks given back to make room for this one.
    pub blocks_given_back: u32,
}

/// Reads the identity's states, lets `decide` compute the change, and writes it back with
/// compare-and-swap, retrying on conflicts at most `retries` times. `decide` may run
/// several times and must be pure.
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
    let mut report = UpdateReport::default();
    for _ in 0..=retries {
        let (entries, cas) = match store.get(&slot.key) {
            Ok(Some((bytes, cas))) => match decode(&bytes) {
                Ok(entries) => (entries, cas),
                Err(_) => {
                    report.corrupt_value = true;
                    (Entries::new(), cas)
                }
            },
            Ok(None) => {
                if let Err(e) = create_slot(store, &slot.key) {
                    return (Err(e), report);
                }
                report.created_slot = true;
                continue;
            }
            Err(e) => return (Err(e), report),
        };
        let current = entries.iter().find(|e| e.fingerprint == slot.fingerprint);
        let (states, idle_at) = match decide(current.map_or(&[][..], |e| &e.limits[..])) {
            Change::Keep => return (Ok(()), report),
            Change::Write { states, idle_at } => (states, idle_at),
        };
        let mut entries = entries;
        let evicted_live = place(&mut entries, slot.fingerprint, states, idle_at, now);
        match store.set(&slot.key, &encode(&entries), Some(cas)) {
            Ok(()) => {
                report.evicted_live = evicted_live;
                return (Ok(()), report);
            }
            Err(StoreError::CasMismatch) => report.conflicts += 1,
            Err(e) => return (Err(e), report),
        }
    }
    (Err(StoreError::CasMismatch), report)
}

/// Creates an empty slot unless someone else already has (see the module docs).
pub fn create_slot<S: SharedStore + ?Sized>(store: &S, key: &str) -> Result<(), StoreError> {
    create_if_absent(store, key, &encode(&[]))
}

/// Writes `initial` to `key` only if the key does not exist (see the module docs).
pub fn create_if_absent<S: SharedStore + ?Sized>(store: &S, key: &str, initial: &[u8]) -> Result<(), StoreError> {
    store.set(SCRATCH_KEY, b"1", None)?;
    let Some((_, fresh_cas)) = store.get(SCRATCH_KEY)? else {
        return Err(StoreError::Host);
    };
    match store.set(key, initial, Some(fresh_cas)) {
        Ok(()) | Err(StoreError::CasMismatch) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A compare-and-swap loop over one small value: `change` sees the current bytes (empty
/// if the key does not exist) and returns the new bytes, or `None` to write nothing.
pub fn cas_update<S, F>(store: &S, key: &str, retries: u32, mut change: F) -> Result<(), StoreError>
where
    S: SharedStore + ?Sized,
    F: FnMut(&[u8]) -> Option<Vec<u8>>,
{
    for _ in 0..=retries {
        let Some((bytes, cas)) = store.get(key)? else {
            if change(&[]).is_none() {
                return Ok(());
            }
            create_if_absent(store, key, &[])?;
            continue;
        };
        let Some(next) = change(&bytes) else {
            return Ok(());
        };
        match store.set(key, &next, Some(cas)) {
            Err(StoreError::CasMismatch) => {}
            other => return other,
        }
    }
    Err(StoreError::CasMismatch)
}

/// The slot's next contents: the identity's entry replaced or added, idle entries dropped,
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

/// The stored state of the limit with this fingerprint, if any.
pub fn state_of(stored: &[StoredLimit], fingerprint: u32) -> Option<LimitState> {
    stored.iter().find(|s| s.fingerprint == fingerprint).map(|s| s.state)
}

#[cfg(test)]
mod tests;
