//! Worker blocks: units one worker takes ahead, from a local limit's slot (charged with a
//! request, on top of its cost) or from a lease's balance, and spends for the caller's
//! next requests without reading or writing shared data. Inside Envoy that saves, per
//! request, the two shared-data host calls, the largest part of what the local path
//! costs. Their bounds (over- and under-admission, headers) are stated once in
//! docs/ARCHITECTURE.md, "Worker blocks".
//!
//! Blocks of leases are keyed by the lease record's fingerprint with a route mask of 0 (a
//! route that meters nothing never reaches a block).

use hashbrown::HashMap;
use smallvec::SmallVec;

use crate::quota::ReturnRequest;
use crate::time::Nanos;

/// A block unused for this long is given back at the next tick (or sooner with a
/// `lease_idle_return_ms` under twice as long: [`crate::worker::idle_block_ns`]).
pub const IDLE_GIVE_BACK_NS: u64 = 1_000_000_000;
/// Blocks given back at most per tick.
pub const MAX_GIVE_BACKS_PER_TICK: usize = 1024;
/// Blocks one worker keeps at most; one more pushes another out (and gives it back).
pub const MAX_BLOCKS: usize = 16_384;

/// A caller on a route: the slot fingerprint of (tier, caller) and the route's mask of
/// the tier's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub fingerprint: u64,
    pub mask: u16,
}

/// One limit a block was charged to, as it stood after the charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargedLimit {
    /// The limit's index in its tier, and its stored state's fingerprint.
    pub index: usize,
    pub fingerprint: u32,
    /// Units left in shared data after the charge (the block's units not counted).
    pub remaining: u64,
    /// Time to full after the charge.
    pub reset_after_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerBlock {
    /// Units charged and not yet spent.
    pub units: u64,
    pub tier: usize,
    /// The caller's entry fingerprint (its slot follows from it).
    pub fingerprint: u64,
    /// Inline for up to two limits: a worker may keep thousands of blocks, and the smaller
    /// each is, the more of them stay in cache.
    pub limits: SmallVec<[ChargedLimit; 2]>,
    pub taken_at: Nanos,
    /// The end of the earliest fixed window charged (never, for token buckets only).
    pub expires_at: Nanos,
    pub last_used: Nanos,
    /// A block of a lease's units: how to return them to the service when the lease
    /// record has moved on (`units` unset). `None`: a block of a local limit.
    pub lease: Option<Box<ReturnRequest>>,
}

impl WorkerBlock {
    /// Where the limits stand for a request admitted from this block: (index, remaining,
    /// reset after).
    pub fn view(&self, now: Nanos) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        let elapsed = now.0.saturating_sub(self.taken_at.0);
        self.limits
            .iter()
            .map(move |l| (l.index, l.remaining.saturating_add(self.units), l.reset_after_ns.saturating_sub(elapsed)))
    }
}

/// The blocks of one worker. A capacity of 0 keeps none (every request is exact).
#[derive(Debug, Default)]
pub struct WorkerBlocks {
    map: HashMap<BlockKey, WorkerBlock>,
    capacity: usize,
    /// WorkerBlocks out of the table whose units could not be given back at once: the next tick
    /// takes them first.
    orphans: Vec<WorkerBlock>,
}

impl WorkerBlocks {
    pub fn new(capacity: usize) -> WorkerBlocks {
        WorkerBlocks { map: HashMap::new(), capacity, orphans: Vec::new() }
    }

    /// Keeps a block for the next tick to give back (at most [`MAX_GIVE_BACKS_PER_TICK`] wait;
    /// past that its units are lost: under-admission, never over).
    pub fn orphan(&mut self, block: WorkerBlock) {
        if self.orphans.len() < MAX_GIVE_BACKS_PER_TICK {
            self.orphans.push(block);
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Spends `cost` units of the block of `key`, if it has them and has not expired.
    pub fn spend(&mut self, key: BlockKey, cost: u64, now: Nanos) -> Option<&WorkerBlock> {
        let block = self.map.get_mut(&key)?;
        if now >= block.expires_at || block.units < cost {
            return None;
        }
        block.units -= cost;
        block.last_used = now;
        Some(block)
    }

    /// Units the live block of `key` still has (0 without one).
    pub fn units(&self, key: BlockKey, now: Nanos) -> u64 {
        self.map.get(&key).filter(|h| now < h.expires_at).map_or(0, |h| h.units)
    }

    /// Keeps a block just charged. Units left in a live block of the same key (fewer than a
    /// request needed) are added to it; an expired block's are void. Returns a block pushed
    /// out to make room: its units must be given back.
    pub fn put(&mut self, key: BlockKey, mut block: WorkerBlock, now: Nanos) -> Option<WorkerBlock> {
        let mut pushed_out = None;
        match self.map.get(&key) {
            Some(old) if now < old.expires_at => block.units = block.units.saturating_add(old.units),
            Some(_) => {}
            None if self.map.len() >= self.capacity => {
                self.map.retain(|_, h| now < h.expires_at && h.units > 0);
                if self.map.len() >= self.capacity {
                    let victim = self.map.keys().next().copied();
                    pushed_out = victim.and_then(|k| self.map.remove(&k));
                }
            }
            None => {}
        }
        if self.capacity > 0 {
            self.map.insert(key, block);
        }
        pushed_out
    }

    /// Takes out up to `max` blocks unused for `idle_ns` that still have units to give
    /// back (the others wait for the next tick, so that a worker never stalls on a mass of
    /// returns); expired and spent ones are dropped.
    pub fn take_idle(&mut self, now: Nanos, idle_ns: u64, max: usize) -> Vec<WorkerBlock> {
        let mut idle = std::mem::take(&mut self.orphans);
        idle.retain(|h| now < h.expires_at && h.units > 0);
        self.map.retain(|_, h| {
            if now >= h.expires_at || h.units == 0 {
                return false;
            }
            if idle.len() < max && now.0.saturating_sub(h.last_used.0) >= idle_ns {
                idle.push(h.clone());
                return false;
            }
            true
        });
        idle
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
