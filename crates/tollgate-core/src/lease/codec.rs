//! The bytes of one lease key: up to `SLOT_WAYS` records.

use super::{Grant, Lease, NONE};
use crate::config::{MAX_LIMITS_PER_TIER, SLOT_WAYS};

const VERSION: u8 = 1;

/// `0x01 count:u8 (fingerprint balance expires_at refill_at used_at no_refill_until:u64
/// n:u8 (remaining reset_at window:u64)*n)*count`, little-endian. Unreadable bytes decode
/// to no records (the balance is lost: under-admission, never over).
pub fn encode(records: &[Lease]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + records.len() * (49 + 24 * 2));
    out.push(VERSION);
    out.push(u8::try_from(records.len()).unwrap_or(u8::MAX));
    for r in records.iter().take(usize::from(u8::MAX)) {
        for v in [r.fingerprint, r.balance, r.expires_at, r.refill_at, r.used_at, r.no_refill_until] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.push(u8::try_from(r.grants.len()).unwrap_or(u8::MAX));
        for g in r.grants.iter().take(usize::from(u8::MAX)) {
            for v in [g.remaining, g.reset_at, g.window.unwrap_or(NONE)] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    out
}

pub fn decode(bytes: &[u8]) -> Vec<Lease> {
    decode_checked(bytes).unwrap_or_default()
}

fn decode_checked(bytes: &[u8]) -> Option<Vec<Lease>> {
    fn u64_(rest: &mut &[u8]) -> Option<u64> {
        let (head, tail) = rest.split_first_chunk::<8>()?;
        *rest = tail;
        Some(u64::from_le_bytes(*head))
    }
    fn u8_(rest: &mut &[u8]) -> Option<u8> {
        let (&b, tail) = rest.split_first()?;
        *rest = tail;
        Some(b)
    }
    let mut rest = bytes;
    if u8_(&mut rest)? != VERSION {
        return None;
    }
    let count = usize::from(u8_(&mut rest)?);
    if count > SLOT_WAYS {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let fingerprint = u64_(&mut rest)?;
        let balance = u64_(&mut rest)?;
        let expires_at = u64_(&mut rest)?;
        let refill_at = u64_(&mut rest)?;
        let used_at = u64_(&mut rest)?;
        let no_refill_until = u64_(&mut rest)?;
        let n = u8_(&mut rest)?;
        if usize::from(n) > MAX_LIMITS_PER_TIER {
            return None;
        }
        let mut grants = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let remaining = u64_(&mut rest)?;
            let reset_at = u64_(&mut rest)?;
            let window = Some(u64_(&mut rest)?).filter(|w| *w != NONE);
            grants.push(Grant { remaining, reset_at, window });
        }
        out.push(Lease { fingerprint, balance, expires_at, refill_at, used_at, no_refill_until, grants });
    }
    rest.is_empty().then_some(out)
}
