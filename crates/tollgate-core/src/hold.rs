//! Worker blocks of local quota ("holds"): for local limits with a `lease_block`, a worker
//! that writes a caller's slot charges the block on top of the request's cost and keeps
//! those units; the caller's next requests on that worker are admitted against them
//! without reading or writing shared data. Inside Envoy that saves, per request, the two
//! shared-data host calls (and the host's call back into the module to copy the slot),
//! the largest part of what the local path costs. A limit without a block, and every
//! limit by default under a capacity of 10,000, stays exact: every request is decided on
//! shared data.
//!
//! # Bounds
//! - **Over-admission.** Units are charged in shared data before they are spent, and only
//!   the worker that charged them spends them, once. A hold over a fixed window expires at
//!   the end of the window it was charged in, so fixed windows are never overshot. For a
//!   token bucket, units charged at one instant are spent later, as with leases: over any
//!   interval the admitted requests exceed what the bucket alone admits by at most what the
//!   workers held at its start, `workers × (block + cost − 1)` per caller and route.
//! - **Under-admission.** Units one worker holds are not available to the others until
//!   it spends them or gives them back: a hold unused for [`IDLE_RETURN_NS`] is given back
//!   (its units refunded to the slot with compare-and-swap) on the worker's next tick, and
//!   a hold pushed out of a full table is given back at once. At most `workers × block` per
//!   caller is held at any time.
//! - **Refusals** are always decided on shared data: a hold that cannot cover a request is
//!   not used for it, so a 429 and its `Retry-After` are exact (but for units held
//!   elsewhere).
//! - **Headers** of a request admitted from a hold are computed from the hold: the
//!   remaining units as of the block's charge plus what is still held, and the reset time
//!   counted down since; they lag the shared state by what other workers did since.
//!
//! # Worker blocks of leases
//! A global limit's lease ([`crate::lease`]) is a balance in shared data that every worker
//! of an Envoy spends with compare-and-swap. A worker that keeps holds takes a tenth of the
//! block ([`crate::lease::worker_block`]) out of the balance with a request's own units and
//! admits the caller's next requests against it, with no shared-data call. The units were
//! charged at the service when leased, so this moves them from the Envoy's balance to one
//! worker's, and the lease's bounds hold for the sum:
//! - fixed windows: the hold expires with the lease's window, so no overshoot;
//! - token buckets: what one Envoy holds, charged and unspent, is at most
//!   `max_balance(block) + workers × (block / 10 + cost − 1)` per caller and set of global
//!   limits, and the overshoot over any interval at most that per Envoy;
//! - an idle hold goes back into the balance (or, when the record has moved on, to the
//!   service with `POST /v1/return`) on the worker's tick, marked used when the worker last
//!   spent from it, so the lease itself is not given back before its units stop being used.
//!
//! Lease holds are keyed by the lease record's fingerprint with a route mask of 0 (a
//! route that meters nothing never reaches a hold).

use hashbrown::HashMap;
use smallvec::SmallVec;

use crate::quota::ReturnRequest;
use crate::time::Nanos;

/// A hold unused for this long is given back at the next tick (or sooner with a
/// `lease_idle_return_ms` under twice as long: `decision::hold_idle_ns`).
pub const IDLE_RETURN_NS: u64 = 1_000_000_000;
/// How often a worker with holds looks for idle ones.
pub const TICK_MS: u64 = 500;
/// Holds given back at most per tick.
pub const MAX_RETURNS_PER_TICK: usize = 1024;
/// Holds one worker keeps at most; one more pushes another out (and gives it back).
pub const MAX_HOLDS: usize = 16_384;

/// Whether any limit of the configuration takes blocks (a local limit, or a global one
/// that leases): then workers keep holds.
pub fn any(config: &crate::Config) -> bool {
    let leases = config.quota.is_some();
    config.tiers.iter().flat_map(|t| &t.limits).any(|l| l.lease_block > 0 && (l.global.is_none() || leases))
}

/// A caller on a route: the slot fingerprint of (tier, caller) and the route's mask of
/// the tier's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HoldKey {
    pub fingerprint: u64,
    pub mask: u16,
}

/// One limit a hold was charged to, as it stood after the charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldLimit {
    /// The limit's index in its tier, and its stored state's fingerprint.
    pub index: usize,
    pub fingerprint: u32,
    /// Units left in shared data after the charge (the held units not counted).
    pub remaining: u64,
    /// Time to full after the charge.
    pub reset_after_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Units charged and not yet spent.
    pub units: u64,
    pub tier: usize,
    /// The caller's entry fingerprint (its slot follows from it).
    pub fingerprint: u64,
    /// Inline for up to two limits: a worker may keep thousands of holds, and the smaller
    /// each is, the more of them stay in cache.
    pub limits: SmallVec<[HeldLimit; 2]>,
    pub taken_at: Nanos,
    /// The end of the earliest fixed window charged (never, for token buckets only).
    pub expires_at: Nanos,
    pub last_used: Nanos,
    /// A hold of a lease's units: how to give them back to the service when the lease
    /// record has moved on (`units` unset). `None`: a hold of local quota.
    pub lease: Option<Box<ReturnRequest>>,
}

impl Hold {
    /// Where the limits stand for a request admitted from this hold: (index, remaining,
    /// reset after).
    pub fn view(&self, now: Nanos) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        let elapsed = now.0.saturating_sub(self.taken_at.0);
        self.limits
            .iter()
            .map(move |l| (l.index, l.remaining.saturating_add(self.units), l.reset_after_ns.saturating_sub(elapsed)))
    }
}

/// The holds of one worker. A capacity of 0 keeps none (every request is exact).
#[derive(Debug, Default)]
pub struct Holds {
    map: HashMap<HoldKey, Hold>,
    capacity: usize,
    /// Holds out of the table whose units could not be given back at once: the next tick
    /// takes them first.
    orphans: Vec<Hold>,
}

impl Holds {
    pub fn new(capacity: usize) -> Holds {
        Holds { map: HashMap::new(), capacity, orphans: Vec::new() }
    }

    /// Keeps a hold for the next tick to give back (at most [`MAX_RETURNS_PER_TICK`] wait;
    /// past that its units are lost: under-admission, never over).
    pub fn orphan(&mut self, hold: Hold) {
        if self.orphans.len() < MAX_RETURNS_PER_TICK {
            self.orphans.push(hold);
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Spends `cost` units of the hold of `key`, if it has them and has not expired.
    pub fn spend(&mut self, key: HoldKey, cost: u64, now: Nanos) -> Option<&Hold> {
        let hold = self.map.get_mut(&key)?;
        if now >= hold.expires_at || hold.units < cost {
            return None;
        }
        hold.units -= cost;
        hold.last_used = now;
        Some(hold)
    }

    /// Units the live hold of `key` still has (0 without one).
    pub fn units(&self, key: HoldKey, now: Nanos) -> u64 {
        self.map.get(&key).filter(|h| now < h.expires_at).map_or(0, |h| h.units)
    }

    /// Keeps a block just charged. Units left in a live hold of the same key (fewer than a
    /// request needed) are added to it; an expired hold's are void. Returns a hold pushed
    /// out to make room: its units must be given back.
    pub fn put(&mut self, key: HoldKey, mut hold: Hold, now: Nanos) -> Option<Hold> {
        let mut pushed_out = None;
        match self.map.get(&key) {
            Some(old) if now < old.expires_at => hold.units = hold.units.saturating_add(old.units),
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
            self.map.insert(key, hold);
        }
        pushed_out
    }

    /// Takes out up to `max` holds unused for `idle_ns` that still have units to give
    /// back (the others wait for the next tick, so that a worker never stalls on a mass of
    /// returns); expired and spent ones are dropped.
    pub fn take_idle(&mut self, now: Nanos, idle_ns: u64, max: usize) -> Vec<Hold> {
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
