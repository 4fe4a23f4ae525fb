//! The hashes tollgate names things with: FNV-1a for fingerprints (cheap, and stable
//! across builds and architectures, so every worker and Envoy computes the same), SHA-256
//! for credentials (only their digests are compared or sent), and hex for digests.

use sha2::{Digest, Sha256};

/// FNV-1a, 32 bits.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// FNV-1a, 64 bits.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_more(FNV_OFFSET, bytes)
}

/// FNV-1a's starting state.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Continues an FNV-1a hash over more bytes: `fnv1a64_more(fnv1a64(a), b) == fnv1a64(a ++ b)`.
pub fn fnv1a64_more(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The fingerprint of a caller in a tier: FNV-1a of `tier NUL caller`, without building it.
/// It picks the caller's slot and tells the caller's entry apart inside it.
pub fn identity_fingerprint(tier: &str, caller: &str) -> u64 {
    fnv1a64_more(fnv1a64_more(fnv1a64(tier.as_bytes()), &[0]), caller.as_bytes())
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let hashed;
    let key = if key.len() > BLOCK {
        hashed = sha256(key);
        &hashed[..]
    } else {
        key
    };
    let mut block = [0u8; BLOCK];
    for (b, k) in block.iter_mut().zip(key) {
        *b = *k;
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn fnv_continues_over_more_bytes() {
        assert_eq!(fnv1a64_more(fnv1a64(b"free"), b"\0ip:1"), fnv1a64(b"free\0ip:1"));
        assert_eq!(identity_fingerprint("free", "ip:1"), fnv1a64(b"free\0ip:1"));
        // Published FNV-1a test vectors.
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // Test cases 1 and 2, and 6 (a key longer than the block).
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn sha256_in_hex() {
        assert_eq!(hex(&sha256(b"abc"))[..16], *"ba7816bf8f01cfea");
    }
}
