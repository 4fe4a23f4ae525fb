//! The bytes of one slot: a version byte, then up to `SLOT_WAYS` entries.
//!
//! ```text
//! slot  := 0x01 count:u8 entry*
//! entry := fingerprint:u64 idle_at:u64 n:u8 (limit_fingerprint:u32 word:u64 word:u64)*n
//! ```
//! All integers little-endian. Anything else decodes to an error, never a panic.

use smallvec::SmallVec;

use crate::config::{MAX_LIMITS_PER_TIER, SLOT_WAYS};
use crate::time::Nanos;

const VERSION: u8 = 1;
const ENTRY_HEADER: usize = 8 + 8 + 1;
const LIMIT_BYTES: usize = 4 + 8 + 8;
/// The largest value a slot can hold.
pub const MAX_SLOT_BYTES: usize = 2 + SLOT_WAYS * (ENTRY_HEADER + MAX_LIMITS_PER_TIER * LIMIT_BYTES);

/// The states of one identity. Inline up to 4 limits, so that reading and rewriting a slot
/// on every request allocates nothing for them.
pub type Limits = SmallVec<[StoredLimit; 4]>;

/// The entries of one slot (at most [`SLOT_WAYS`], inline).
pub type Entries = SmallVec<[Entry; SLOT_WAYS]>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub fingerprint: u64,
    pub idle_at: Nanos,
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredLimit {
    pub fingerprint: u32,
    /// The limit's state as [`crate::limit::LimitState::words`]: the slot does not know
    /// the algorithm; the limit reads them back.
    pub words: [u64; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptSlot;

pub fn encode(entries: &[Entry]) -> Vec<u8> {
    let size = 2 + entries.iter().map(|e| ENTRY_HEADER + e.limits.len() * LIMIT_BYTES).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.push(VERSION);
    out.push(u8::try_from(entries.len()).unwrap_or(u8::MAX));
    for e in entries.iter().take(usize::from(u8::MAX)) {
        out.extend_from_slice(&e.fingerprint.to_le_bytes());
        out.extend_from_slice(&e.idle_at.0.to_le_bytes());
        out.push(u8::try_from(e.limits.len()).unwrap_or(u8::MAX));
        for l in e.limits.iter().take(usize::from(u8::MAX)) {
            out.extend_from_slice(&l.fingerprint.to_le_bytes());
            for word in l.words {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
    }
    out
}

pub fn decode(bytes: &[u8]) -> Result<Entries, CorruptSlot> {
    let mut r = Reader(bytes);
    if r.u8()? != VERSION {
        return Err(CorruptSlot);
    }
    let count = usize::from(r.u8()?);
    if count > SLOT_WAYS {
        return Err(CorruptSlot);
    }
    let mut entries = Entries::new();
    for _ in 0..count {
        let fingerprint = r.u64()?;
        let idle_at = Nanos(r.u64()?);
        let n = usize::from(r.u8()?);
        if n > MAX_LIMITS_PER_TIER {
            return Err(CorruptSlot);
        }
        let mut limits = Limits::with_capacity(n);
        for _ in 0..n {
            let fingerprint = r.u32()?;
            let words = [r.u64()?, r.u64()?];
            limits.push(StoredLimit { fingerprint, words });
        }
        entries.push(Entry { fingerprint, idle_at, limits });
    }
    if !r.0.is_empty() {
        return Err(CorruptSlot);
    }
    Ok(entries)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], CorruptSlot> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(CorruptSlot)?;
        self.0 = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, CorruptSlot> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, CorruptSlot> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, CorruptSlot> {
        Ok(u64::from_le_bytes(self.take()?))
    }
}
