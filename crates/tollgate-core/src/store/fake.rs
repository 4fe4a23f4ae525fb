//! An in-memory shared data that follows Envoy's rules (proxy-wasm-cpp-host
//! `SharedData`): one cas counter for all keys, starting at 1, skipping 0 when it wraps;
//! a write with a non-zero cas to an existing key fails on mismatch; a write to a key
//! that does not exist ignores cas; nothing is ever deleted.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{SharedStore, StoreError};

#[derive(Debug)]
pub struct FakeSharedData {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    map: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    writes: u64,
}

impl Default for FakeSharedData {
    fn default() -> Self {
        FakeSharedData::starting_at_cas(1)
    }
}

impl FakeSharedData {
    /// A store whose next cas is `next_cas` (tests use values near `u32::MAX` to see the wrap).
    pub fn starting_at_cas(next_cas: u32) -> Self {
        FakeSharedData { inner: Mutex::new(Inner { map: HashMap::new(), next_cas: next_cas.max(1), writes: 0 }) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many keys exist (the host never frees one).
    pub fn key_count(&self) -> usize {
        self.lock().map.len()
    }

    /// Total bytes of keys and values held.
    pub fn bytes_held(&self) -> usize {
        self.lock().map.iter().map(|(k, (v, _))| k.len() + v.len()).sum()
    }

    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    pub fn keys(&self) -> Vec<String> {
        self.lock().map.keys().cloned().collect()
    }
}

impl SharedStore for FakeSharedData {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.lock().map.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let cas = cas.unwrap_or(0);
        if let Some((_, current)) = inner.map.get(key) {
            if cas != 0 && cas != *current {
                return Err(StoreError::CasMismatch);
            }
        }
        let assigned = inner.next_cas;
        inner.next_cas = inner.next_cas.wrapping_add(1);
        if inner.next_cas == 0 {
            inner.next_cas = 1;
        }
        inner.writes += 1;
        inner.map.insert(key.to_owned(), (value.to_vec(), assigned));
        Ok(())
    }
}
