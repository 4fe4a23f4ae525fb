//! What one worker keeps between requests, and its tick's policy: the cache of verified
//! keys, its blocks, the leases it refilled (to return them when idle), and its callouts
//! in flight. The adapter holds one per worker thread; [`crate::decision::tick`] decides
//! what its tick gives back and returns.

use std::hash::BuildHasher;

use crate::config::Config;
use crate::cost::Unit;
use crate::keycache::KeyCache;
use crate::lease::RefilledLease;
use crate::quota::ReturnRequest;
use crate::worker_block::{WorkerBlocks, IDLE_GIVE_BACK_NS, MAX_BLOCKS};

/// Leases a worker remembers at most; past it the oldest is forgotten (its balance is then
/// not returned: under-admission, never over).
pub const MAX_REMEMBERED_LEASES: usize = 4096;
/// How often a worker with blocks looks for idle ones.
pub const BLOCK_TICK_MS: u64 = 500;

#[derive(Debug, Default)]
pub struct Worker {
    /// Keys verified by the quota service, and configured keys seen, for this worker.
    pub keys: KeyCache,
    pub blocks: WorkerBlocks,
    /// Leases this worker refilled, looked at on each tick to return idle ones.
    pub(crate) leases: Vec<RefilledLease>,
    callouts_in_flight: u32,
    /// Names this worker's settlements: a random prefix, then a count.
    settle_ids: (u64, u64, u64),
    verifications_in_flight: u32,
}

/// What a tick did, and what the host must send.
#[derive(Debug, Default)]
pub struct Tick {
    /// Blocks whose units went back into shared data.
    pub blocks_given_back: usize,
    /// Units to return to the quota service (`POST /v1/return`).
    pub returns: Vec<ReturnRequest>,
}

impl Worker {
    /// A worker's state for `config`: its key cache's size, and blocks when any limit
    /// takes them.
    pub fn for_config(config: &Config) -> Worker {
        let cache_size = config.quota.as_ref().map_or(1, |q| q.key_cache_size);
        let blocks = if keeps_blocks(config) { MAX_BLOCKS } else { 0 };
        Worker::new(cache_size).with_blocks(blocks)
    }

    /// A worker with a key cache of `key_cache_size` and no blocks.
    pub fn new(key_cache_size: usize) -> Worker {
        // `RandomState` draws its keys from the host's randomness (`random_get` under WASI).
        let random = |n: u8| std::collections::hash_map::RandomState::new().hash_one(n);
        Worker { keys: KeyCache::new(key_cache_size), settle_ids: (random(0), random(1), 0), ..Worker::default() }
    }

    /// A name for a settlement sent to the quota service, unique to it: 128 random bits
    /// drawn for this worker, then how many it named before.
    pub fn settle_id(&mut self) -> String {
        let (a, b, count) = self.settle_ids;
        self.settle_ids.2 = count.wrapping_add(1);
        format!("{a:016x}{b:016x}{count:x}")
    }

    /// Keeps up to `capacity` blocks.
    pub fn with_blocks(mut self, capacity: usize) -> Worker {
        self.blocks = WorkerBlocks::new(capacity);
        self
    }

    /// Counts a callout about to start, unless `max_pending_callouts` are in flight.
    pub fn start_callout(&mut self, config: &Config) -> bool {
        let max = config.quota.as_ref().map_or(0, |q| q.max_pending_callouts);
        if self.callouts_in_flight >= max {
            return false;
        }
        self.callouts_in_flight += 1;
        true
    }

    /// Counts a key verification about to be asked for, unless `max_pending_verifications`
    /// are in flight.
    pub fn start_verification(&mut self, config: &Config) -> bool {
        let max = config.quota.as_ref().map_or(0, |q| q.max_pending_verifications);
        if self.verifications_in_flight >= max {
            return false;
        }
        self.verifications_in_flight += 1;
        true
    }

    /// A key verification was answered, failed or was abandoned.
    pub fn end_verification(&mut self) {
        self.verifications_in_flight = self.verifications_in_flight.saturating_sub(1);
    }

    /// Key verifications in flight.
    pub fn verifications_in_flight(&self) -> u32 {
        self.verifications_in_flight
    }

    /// A callout came back, failed to start, or was abandoned.
    pub fn end_callout(&mut self) {
        self.callouts_in_flight = self.callouts_in_flight.saturating_sub(1);
    }

    /// Remembers a lease this worker refilled, to return it when idle.
    pub fn remember(&mut self, lease: RefilledLease) {
        if !self.leases.iter().any(|l| l.lease == lease.lease) {
            if self.leases.len() >= MAX_REMEMBERED_LEASES {
                self.leases.remove(0);
            }
            self.leases.push(lease);
        }
    }
}

/// Whether any limit of the configuration takes blocks (a local limit with a worker block,
/// or a global one that leases): then workers keep blocks.
pub fn keeps_blocks(config: &Config) -> bool {
    let leases = config.quota.is_some();
    config.tiers.iter().flat_map(|t| &t.limits).any(|l| l.worker_block > 0 || (leases && l.lease_block > 0))
}

/// Whether any limit of the configuration leases (requests then hand refills ahead of
/// need to the root context, and leases are returned on the tick).
pub fn leases(config: &Config) -> bool {
    config.quota.is_some()
        && config.tiers.iter().any(|t| t.limits.iter().any(|l| l.global.is_some() && l.lease_block > 0))
}

/// Whether any global limit counts images or tokens (requests then hand settlements to
/// the root context, which sends them again from the tick when they fail).
pub fn settles(config: &Config) -> bool {
    config.quota.is_some()
        && config.tiers.iter().any(|t| t.limits.iter().any(|l| l.global.is_some() && l.unit != Unit::Requests))
}

/// How often a worker ticks for `config`, if it needs to: for leases, a quarter of
/// `lease_idle_return_ms` (50 ms to 1 s); for blocks, [`BLOCK_TICK_MS`]; for settlements
/// to send again, [`SETTLE_TICK_MS`].
pub fn tick_ms(config: &Config) -> Option<u64> {
    let lease_tick =
        config.quota.as_ref().filter(|_| leases(config)).map(|q| (q.lease_idle_return_ms / 4).clamp(50, 1_000));
    let block_tick = keeps_blocks(config).then_some(BLOCK_TICK_MS);
    let settle_tick = settles(config).then_some(SETTLE_TICK_MS);
    lease_tick.into_iter().chain(block_tick).chain(settle_tick).min()
}

/// How often a worker sends settlements that failed again.
pub const SETTLE_TICK_MS: u64 = 1_000;

/// How long a block may stay unused before a tick gives it back: [`IDLE_GIVE_BACK_NS`],
/// or less with a shorter `lease_idle_return_ms`, so that a worker's block of a lease is
/// back in the record before the lease is due to be returned to the service.
pub fn idle_block_ns(config: &Config) -> u64 {
    let lease_idle = config.quota.as_ref().map_or(u64::MAX, |q| q.lease_idle_return_ms.saturating_mul(1_000_000) / 2);
    IDLE_GIVE_BACK_NS.min(lease_idle)
}
