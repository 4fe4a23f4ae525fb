//! A per-worker cache of keys verified by the quota service, positive and negative, with
//! a time to live so that a revocation takes effect within it. Bounded in size.

use hashbrown::HashMap;

use crate::time::Nanos;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedKey {
    Known { id: String, tier: usize },
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Within its time to live.
    Fresh(CachedKey),
    /// Expired: verify again, but usable if the quota service cannot answer.
    Stale(CachedKey),
    Missing,
}

#[derive(Debug, Default)]
pub struct KeyCache {
    entries: HashMap<[u8; 32], (CachedKey, Nanos)>,
    capacity: usize,
}

impl KeyCache {
    pub fn new(capacity: usize) -> KeyCache {
        KeyCache { entries: HashMap::new(), capacity: capacity.max(1) }
    }

    pub fn get(&self, hash: &[u8; 32], now: Nanos) -> Lookup {
        match self.entries.get(hash) {
            Some((key, expires)) if *expires > now => Lookup::Fresh(key.clone()),
            Some((key, _)) => Lookup::Stale(key.clone()),
            None => Lookup::Missing,
        }
    }

    pub fn put(&mut self, hash: [u8; 32], key: CachedKey, now: Nanos, ttl_ms: u64) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&hash) {
            self.entries.retain(|_, (_, expires)| *expires > now);
            if self.entries.len() >= self.capacity {
                // Everything is fresh: drop the entry closest to expiry.
                if let Some(victim) = self.entries.iter().min_by_key(|(_, (_, e))| *e).map(|(h, _)| *h) {
                    self.entries.remove(&victim);
                }
            }
        }
        self.entries.insert(hash, (key, now.saturating_add(ttl_ms.saturating_mul(1_000_000))));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const T0: Nanos = Nanos(1_000_000_000_000);

    #[test]
    fn entries_expire_into_stale() {
        let mut c = KeyCache::new(10);
        let known = CachedKey::Known { id: "k".into(), tier: 1 };
        c.put([1; 32], known.clone(), T0, 1000);
        assert_eq!(c.get(&[1; 32], T0.saturating_add(999_999_999)), Lookup::Fresh(known.clone()));
        assert_eq!(c.get(&[1; 32], T0.saturating_add(1_000_000_000)), Lookup::Stale(known));
        assert_eq!(c.get(&[2; 32], T0), Lookup::Missing);
    }

    #[test]
    fn size_stays_bounded_dropping_expired_first() {
        let mut c = KeyCache::new(3);
        c.put([1; 32], CachedKey::Unknown, T0, 1);
        c.put([2; 32], CachedKey::Unknown, T0, 60_000);
        c.put([3; 32], CachedKey::Unknown, T0, 60_000);
        let later = T0.saturating_add(10_000_000);
        c.put([4; 32], CachedKey::Unknown, later, 60_000);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&[1; 32], later), Lookup::Missing, "the expired entry went first");
        for i in 5..100u8 {
            c.put([i; 32], CachedKey::Unknown, later, 60_000);
        }
        assert_eq!(c.len(), 3);
    }
}
