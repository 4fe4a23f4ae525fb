//! Shared data: the host port ([`SharedStore`]), the one compare-and-swap loop over a key
//! ([`cas`]), and the slot table that keeps callers' limit states ([`slot`]).

mod cas;
mod codec;
mod fake;
mod slot;

pub use cas::{compare_and_swap, create_if_absent, CasReport, SCRATCH_KEY};
pub use codec::{decode, encode, Entries, Entry, Limits, StoredLimit, MAX_SLOT_BYTES};
pub use fake::FakeSharedData;
pub use slot::{create_slot, table_key, update, words_of, Change, SlotRef, UpdateReport};

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

#[cfg(test)]
mod displacement_tests;
#[cfg(test)]
mod tests;
