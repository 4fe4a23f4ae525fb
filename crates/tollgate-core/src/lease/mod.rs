//! Leases: global quota taken from the quota service in blocks, so that a hot caller is
//! decided from a balance in the Envoy's shared data instead of with a callout per request.
//! How a lease is refilled, spent, given back and returned, and its overshoot bounds
//! ([`max_balance`]), are stated once in docs/ARCHITECTURE.md, "Leases".
//!
//! Records live in `slots` shared-data keys (`tollgate/lease/v1/<slots>/<i>`), up to
//! `SLOT_WAYS` per key, like the slot table: a record with nothing left is dropped at the
//! next write to its key; when a key is full the least recently used record goes.

mod codec;
mod record;

pub use codec::{decode, encode};
pub use record::{read, Ask, Credit, IdleReturn, Records, Take};

use crate::config::{Limit, LimitKind, QuotaService};
use crate::hash::{fnv1a64_more, identity_fingerprint};
use crate::quota::{LimitSpec, ReturnRequest, ReturnResponse};
use crate::store::table_key;
use crate::time::Nanos;

/// Lease record keys are `tollgate/lease/v1/<slots>/<index>`.
const LEASE_KEY_PREFIX: &str = "tollgate/lease/v1/";
/// "Does not expire" and "no window".
const NONE: u64 = u64::MAX;

/// The block of a request of `cost` over limits with these `blocks` (their `lease_block`
/// or `worker_block`): the smallest; 0 (exact) if any is 0 or the smallest is below the
/// cost.
pub fn request_block(blocks: impl IntoIterator<Item = u64>, cost: u64) -> u64 {
    let block = blocks.into_iter().min().unwrap_or(0);
    if block >= cost.max(1) {
        block
    } else {
        0
    }
}

/// Below this balance a refill starts.
pub fn low_water(block: u64) -> u64 {
    block.div_ceil(2)
}

/// The most one Envoy ever holds in one lease record.
pub fn max_balance(block: u64) -> u64 {
    block.saturating_add(low_water(block)).saturating_sub(1)
}

/// What a granting answer said about one limit, for headers and returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Grant {
    /// The service's `remaining` after the grant.
    pub remaining: u64,
    /// When the limit is full again, as the grant said (ns since the epoch).
    pub reset_at: u64,
    /// Fixed windows: the window index charged.
    pub window: Option<u64>,
}

/// One lease record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lease {
    pub fingerprint: u64,
    /// Units leased and not yet spent.
    pub balance: u64,
    /// The balance is void from this instant (ns; `u64::MAX`: never).
    pub expires_at: u64,
    /// A refill is in flight since this instant (ns; 0: none). Also its marker.
    pub refill_at: u64,
    pub used_at: u64,
    /// A refill was refused: none before this instant (ns).
    pub no_refill_until: u64,
    /// Per global limit, from the last grant.
    pub grants: Vec<Grant>,
}

impl Lease {
    /// The balance still spendable at `now`.
    pub fn live_balance(&self, now: Nanos) -> u64 {
        if now.0 >= self.expires_at {
            0
        } else {
            self.balance
        }
    }

    pub(crate) fn refilling(&self, now: Nanos, stale_ns: u64) -> bool {
        self.refill_at != 0 && now.0 < self.refill_at.saturating_add(stale_ns)
    }

    /// Nothing in it worth keeping.
    pub(crate) fn idle(&self, now: Nanos, stale_ns: u64) -> bool {
        self.live_balance(now) == 0 && !self.refilling(now, stale_ns) && self.no_refill_until <= now.0
    }
}

/// Where a lease record lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRef {
    pub key: String,
    pub fingerprint: u64,
}

impl LeaseRef {
    /// The record of `caller` in `tier` for this set of global `limits` (with their blocks).
    pub fn new<'a>(tier: &str, caller: &str, limits: impl IntoIterator<Item = &'a Limit>, slots: u32) -> LeaseRef {
        LeaseRef::from_fingerprint(fingerprint(identity_fingerprint(tier, caller), limits), slots)
    }

    /// The record whose [`fingerprint`] is known.
    pub fn from_fingerprint(fingerprint: u64, slots: u32) -> LeaseRef {
        LeaseRef { key: table_key(LEASE_KEY_PREFIX, slots, fingerprint), fingerprint }
    }
}

/// What tells a lease record apart: the hash of `tier NUL caller (NUL fingerprint block)*`
/// over its global limits, without building it, from the caller's `identity` fingerprint
/// ([`identity_fingerprint`] of `tier NUL caller`).
pub fn fingerprint<'a>(identity: u64, limits: impl IntoIterator<Item = &'a Limit>) -> u64 {
    let mut fingerprint = identity;
    for l in limits {
        fingerprint = fnv1a64_more(fingerprint, &[0]);
        fingerprint = fnv1a64_more(fingerprint, &l.fingerprint.to_le_bytes());
        fingerprint = fnv1a64_more(fingerprint, &l.lease_block.to_le_bytes());
    }
    fingerprint
}

/// The worker block of a lease of `block` (see [`crate::worker_block`]): a tenth of it, taken out
/// of the record with a request's own units so that the worker's next requests need no
/// compare-and-swap; 0 (none) when it would not cover a request of `cost`.
pub fn worker_block(block: u64, cost: u64) -> u64 {
    let units = block / 10;
    if units >= cost.max(1) {
        units
    } else {
        0
    }
}

/// A lease a worker refilled, remembered so that its balance can be returned when idle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefilledLease {
    pub lease: LeaseRef,
    /// The metered key at the service (`<tier>/<caller>`).
    pub key: String,
    pub limits: Vec<LimitSpec>,
}

/// How long a refill marker holds: past the callout timeout (plus a margin for the host's
/// timer) the callout has been answered or failed.
pub fn marker_ttl_ns(quota: &QuotaService) -> u64 {
    quota.timeout_ms.saturating_add(1_000).saturating_mul(1_000_000)
}

/// The JSON of a `POST /v1/return`.
pub fn return_body(request: &ReturnRequest) -> String {
    serde_json::to_string(request).unwrap_or_default()
}

/// The units a `/v1/return` answer confirms given back (the most over its limits).
pub fn returned_units(body: &[u8]) -> Option<u64> {
    let answer: ReturnResponse = serde_json::from_slice(body).ok()?;
    Some(answer.returned.iter().copied().max().unwrap_or(0))
}

/// When a grant's units expire: the earliest reset of the fixed-window limits.
pub fn expiry(limits: &[&Limit], grants: &[Grant]) -> u64 {
    limits
        .iter()
        .zip(grants)
        .filter(|(l, _)| matches!(l.kind, LimitKind::FixedWindow { .. }))
        .map(|(_, g)| g.reset_at)
        .min()
        .unwrap_or(NONE)
}

#[cfg(test)]
mod tests;
