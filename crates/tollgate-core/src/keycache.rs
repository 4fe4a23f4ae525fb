//! A per-worker cache of keys verified by the quota service, positive and negative, with
//! a time to live so that a revocation takes effect within it. Bounded in size: a full
//! cache drops its least recently used entry, in constant time (an LRU list beside the
//! map; an expired entry nobody asks for sinks to the end and goes first).
//!
//! Beside it, the configured keys this worker has already seen, by a keyed hash of the
//! token ([`KeyCache::tag`]): a caller seen before is found without computing the token's
//! SHA-256, the largest single cost of deciding a request in wasm. Only tokens whose
//! SHA-256 matched a configured key are remembered, so the map holds at most one entry
//! per configured key; no token and no SHA-256 is kept, only the 128-bit tag.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::num::NonZeroUsize;

use hashbrown::HashMap;
use lru::LruCache;

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

#[derive(Debug)]
pub struct KeyCache {
    /// SHA-256 of a token → what the quota service said of it, and when that expires.
    entries: LruCache<[u8; 32], (CachedKey, Nanos)>,
    /// SipHash keys drawn at random for this cache (the host's `random_get` under WASI).
    tagger: RandomState,
    /// Tag of a token → the configured key it matched.
    static_keys: HashMap<Tag, StaticKey>,
}

/// A configured key as a request needs it, beside its tag: deciding for it reads nothing
/// else (no key table, no id) until a slow path names the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticKey {
    /// Its index in `config.keys`.
    pub index: usize,
    pub tier: usize,
    /// Its identity fingerprint (`config::Key::fingerprint`).
    pub fingerprint: u64,
}

/// A keyed 128-bit hash of a token: two SipHash outputs under a secret random key, over
/// the token with distinct prefixes. Finding another token with a known token's tag takes
/// about 2^128 guesses without the key, which never leaves the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag(u64, u64);

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache::new(1)
    }
}

impl KeyCache {
    pub fn new(capacity: usize) -> KeyCache {
        KeyCache {
            entries: LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
            tagger: RandomState::new(),
            static_keys: HashMap::new(),
        }
    }

    pub fn tag(&self, token: &str) -> Tag {
        let half = |domain: u8| {
            let mut h = self.tagger.build_hasher();
            h.write_u8(domain);
            h.write(token.as_bytes());
            h.finish()
        };
        Tag(half(1), half(2))
    }

    /// The configured key a token with this tag matched before.
    pub fn static_key(&self, tag: Tag) -> Option<StaticKey> {
        self.static_keys.get(&tag).copied()
    }

    /// Remembers that the token with `tag` is configured key `key`; `keys` is the number
    /// of configured keys, which bounds the map (a full map is cleared, never grown).
    pub fn remember_static_key(&mut self, tag: Tag, key: StaticKey, keys: usize) {
        if self.static_keys.len() >= keys.max(1) {
            self.static_keys.clear();
        }
        self.static_keys.insert(tag, key);
    }

    /// The entry of `hash`, which becomes the most recently used.
    pub fn get(&mut self, hash: &[u8; 32], now: Nanos) -> Lookup {
        match self.entries.get(hash) {
            Some((key, expires)) if *expires > now => Lookup::Fresh(key.clone()),
            Some((key, _)) => Lookup::Stale(key.clone()),
            None => Lookup::Missing,
        }
    }

    /// Caches what the service said of `hash` for `ttl_ms`; a full cache drops its least
    /// recently used entry (constant time, no scan).
    pub fn put(&mut self, hash: [u8; 32], key: CachedKey, now: Nanos, ttl_ms: u64) {
        self.entries.put(hash, (key, now.saturating_add(ttl_ms.saturating_mul(1_000_000))));
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
    fn a_tag_names_one_token_under_one_cache() {
        let c = KeyCache::new(1);
        assert_eq!(c.tag("tg_a"), c.tag("tg_a"));
        assert_ne!(c.tag("tg_a"), c.tag("tg_b"));
        assert_ne!(c.tag("tg_a"), c.tag("tg_a "));
    }

    #[test]
    fn static_keys_are_found_by_tag_and_bounded_by_the_number_of_keys() {
        let mut c = KeyCache::new(1);
        let (a, b, other) = (c.tag("tg_a"), c.tag("tg_b"), c.tag("tg_other"));
        let key = |index| StaticKey { index, tier: 0, fingerprint: 7 };
        c.remember_static_key(a, key(0), 2);
        c.remember_static_key(b, key(1), 2);
        assert_eq!((c.static_key(a), c.static_key(b), c.static_key(other)), (Some(key(0)), Some(key(1)), None));
        c.remember_static_key(other, key(1), 2);
        assert_eq!(c.static_key(other), Some(key(1)));
        assert!(c.static_key(a).is_none() && c.static_key(b).is_none(), "a full map starts over");
    }

    #[test]
    fn a_full_cache_drops_the_least_recently_used_entry() {
        let mut c = KeyCache::new(3);
        let known = CachedKey::Known { id: "k".into(), tier: 0 };
        c.put([1; 32], known.clone(), T0, 60_000);
        c.put([2; 32], CachedKey::Unknown, T0, 1);
        c.put([3; 32], CachedKey::Unknown, T0, 60_000);
        let later = T0.saturating_add(10_000_000);
        // Key 1 is in use; key 2 expired and nobody asked for it since.
        assert_eq!(c.get(&[1; 32], later), Lookup::Fresh(known.clone()));
        c.put([4; 32], CachedKey::Unknown, later, 60_000);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&[2; 32], later), Lookup::Missing, "the unused expired entry went first");
        for i in 5..100u8 {
            assert_eq!(c.get(&[1; 32], later), Lookup::Fresh(known.clone()), "a key in use stays");
            c.put([i; 32], CachedKey::Unknown, later, 60_000);
        }
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn a_key_verified_again_gets_its_new_ttl() {
        let mut c = KeyCache::new(2);
        c.put([1; 32], CachedKey::Unknown, T0, 1_000);
        c.put([1; 32], CachedKey::Known { id: "k".into(), tier: 0 }, T0, 60_000);
        assert_eq!(c.len(), 1);
        let later = T0.saturating_add(2_000_000_000);
        assert!(matches!(c.get(&[1; 32], later), Lookup::Fresh(CachedKey::Known { .. })));
    }
}
