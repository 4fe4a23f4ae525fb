//! A header map as the proxy-wasm ABI serializes it (`proxy_get_header_map_pairs`), read
//! in place: no copy of a name or value, and no assumption that they are UTF-8.
//!
//! Layout, integers little-endian: the number of pairs `n` (u32); `n` times the lengths of
//! a name and of its value (u32, u32); then each name and each value in that order, each
//! followed by a NUL byte that the lengths do not count.

/// The `(name, value)` pairs of a serialized map, in order. A map that ends early yields
/// the pairs that fit and then stops; nothing here panics, whatever the bytes.
pub fn pairs(map: &[u8]) -> Pairs<'_> {
    let count = read_u32(map, 0).unwrap_or(0);
    // Each pair needs 8 bytes of lengths and 2 of NULs: a count beyond that is a lie.
    let count = count.min(map.len() / 10);
    Pairs { map, count, next: 0, data: 4 + count * 8 }
}

pub struct Pairs<'a> {
    map: &'a [u8],
    count: usize,
    next: usize,
    /// Where the next pair's name starts.
    data: usize,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.count {
            return None;
        }
        let lengths = 4 + self.next * 8;
        let name_len = read_u32(self.map, lengths)?;
        let value_len = read_u32(self.map, lengths + 4)?;
        let name_end = self.data.checked_add(name_len)?;
        let name = self.map.get(self.data..name_end)?;
        let value_start = name_end.checked_add(1)?;
        let value_end = value_start.checked_add(value_len)?;
        let value = self.map.get(value_start..value_end)?;
        self.data = value_end.checked_add(1)?;
        self.next += 1;
        Some((name, value))
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let word: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(word)).ok()
}

/// Serializes `pairs` the way the host does (tests, and benchmarks that stand in for it).
pub fn serialize<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
    let pairs: Vec<(&[u8], &[u8])> = pairs.into_iter().collect();
    let mut out = Vec::new();
    out.extend_from_slice(&len32(pairs.len()).to_le_bytes());
    for (name, value) in &pairs {
        out.extend_from_slice(&len32(name.len()).to_le_bytes());
        out.extend_from_slice(&len32(value.len()).to_le_bytes());
    }
    for (name, value) in &pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn pairs_come_back_in_order_with_any_bytes() {
        let input: Vec<(&[u8], &[u8])> =
            vec![(b":method", b"POST"), (b"user-agent", b"caf\xe9"), (b"x-empty", b""), (b"", b"\0inner nul")];
        let map = serialize(input.clone());
        assert_eq!(pairs(&map).collect::<Vec<_>>(), input);
    }

    #[test]
    fn an_empty_or_short_map_has_no_pairs() {
        assert_eq!(pairs(&[]).count(), 0);
        assert_eq!(pairs(&[1, 0]).count(), 0);
        assert_eq!(pairs(&serialize(Vec::<(&[u8], &[u8])>::new())).count(), 0);
    }

    #[test]
    fn a_truncated_map_yields_what_fits() {
        let map = serialize(vec![(&b"a"[..], &b"1"[..]), (&b"b"[..], &b"2"[..])]);
        let cut = &map[..map.len() - 2];
        assert_eq!(pairs(cut).collect::<Vec<_>>(), vec![(&b"a"[..], &b"1"[..])]);
    }

    #[test]
    fn lengths_that_point_outside_the_map_stop_the_iteration() {
        let mut map = serialize(vec![(&b"a"[..], &b"1"[..])]);
        map[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pairs(&map).count(), 0);
        let mut huge_count = serialize(vec![(&b"a"[..], &b"1"[..])]);
        huge_count[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(pairs(&huge_count).count() <= 1);
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn serialized_pairs_read_back(input in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..20), proptest::collection::vec(any::<u8>(), 0..40)), 0..12)) {
                let refs: Vec<(&[u8], &[u8])> = input.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
                let map = serialize(refs.clone());
                prop_assert_eq!(pairs(&map).collect::<Vec<_>>(), refs);
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                for (name, value) in pairs(&bytes) {
                    prop_assert!(name.len() + value.len() <= bytes.len());
                }
            }
        }
    }
}
