//! The one compare-and-swap loop over a shared-data key, and safe creation of a key.
//!
//! # Creating a key safely
//! The host ignores `cas` when a key does not exist yet, so two workers that both find a
//! key missing could both "create" it and the second would erase the first's update.
//! [`create_if_absent`] avoids that: it writes a scratch key, reads back that write's cas
//! value, and creates the key with that cas. The host's cas counter gives each write its
//! own number, so if the key was created by someone else in between, its cas differs and
//! the host answers `CasMismatch` instead of overwriting.

use super::{SharedStore, StoreError};

/// The key whose fresh cas numbers make creation safe (see the module docs).
pub const SCRATCH_KEY: &str = "tollgate/cas-scratch";

/// How a compare-and-swap went, for stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CasReport {
    /// Attempts that lost a race.
    pub conflicts: u32,
    /// The key did not exist and was created (by this call or by a racing one).
    pub created: bool,
}

/// Reads `key`, lets `change` compute its next value from the current bytes (empty when
/// the key does not exist), and writes it back with compare-and-swap, retrying on a lost
/// race at most `retries` times. `change` returns `None` to write nothing; it may run
/// several times and must be pure.
pub fn compare_and_swap<S, F>(store: &S, key: &str, retries: u32, mut change: F) -> (Result<(), StoreError>, CasReport)
where
    S: SharedStore + ?Sized,
    F: FnMut(&[u8]) -> Option<Vec<u8>>,
{
    let mut report = CasReport::default();
    for _ in 0..=retries {
        let (bytes, cas) = match store.get(key) {
            Ok(Some(found)) => found,
            Ok(None) => {
                if change(&[]).is_none() {
                    return (Ok(()), report);
                }
                // Created empty, then changed like any other value on the next attempt.
                if let Err(e) = create_if_absent(store, key, &[]) {
                    return (Err(e), report);
                }
                report.created = true;
                continue;
            }
            Err(e) => return (Err(e), report),
        };
        let Some(next) = change(&bytes) else {
            return (Ok(()), report);
        };
        match store.set(key, &next, Some(cas)) {
            Ok(()) => return (Ok(()), report),
            Err(StoreError::CasMismatch) => report.conflicts += 1,
            Err(e) => return (Err(e), report),
        }
    }
    (Err(StoreError::CasMismatch), report)
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
