//! Leases: global quota taken from the quota service in blocks, so that a hot caller is
//! decided locally instead of with a callout per request.
//!
//! # How
//! A lease is a balance of units that the service has already counted as used: the filter
//! takes them with an ordinary `/v1/check` whose cost is the block, over every global limit
//! of the request at once (all or nothing). The balance lives in Envoy's shared data, one
//! record per metered key and set of global limits, so every worker of an Envoy spends the
//! same balance; requests are admitted by decrementing it with compare-and-swap, without a
//! callout. When a decrement leaves less than half a block ([`low_water`]) and no refill is
//! in flight, that request starts a refill, ahead of need: it is admitted at once, and the
//! worker's root context sends the callout and credits its answer (a callout from a request
//! would be answered to the request's context, gone by then), while every request keeps
//! spending what is left. Only a request that finds the balance empty with no refill in
//! flight waits for one (and gives up its marker if its stream ends first). A refill
//! marker older than the callout timeout (plus a margin) is ignored, so a lost callout
//! cannot wedge a lease; the late answer of such a callout is not credited.
//!
//! # Worst-case overshoot
//! A refill is only started below the low-water mark and only one is in flight per record,
//! so the balance one Envoy holds for one record never exceeds
//! `block + ceil(block / 2) - 1` units (< 1.5 blocks): [`max_balance`].
//! - Fixed windows: a lease expires at the reset of the window it was charged in (the
//!   earliest reset of its fixed-window limits), so units charged in window W are never
//!   spent after W: no overshoot at all.
//! - Token buckets: units are charged when leased and spent later. Over any interval the
//!   admitted requests are at most what the service admits over it plus what the Envoys
//!   held at its start: overshoot ≤ `envoys × max_balance(block)` per caller and set of
//!   limits.
//!
//! A worker that keeps holds ([`crate::hold`]) takes a tenth of the block out of the
//! balance with a request ([`worker_block`]) and spends it without shared data; what the
//! workers hold counts on top of the record: `max_balance(block) + workers ×
//! (block / 10 + cost − 1)` per Envoy.
//!
//! Units are never spent twice: the balance only goes down by compare-and-swap. Lost
//! units (a refill answer that arrives after its marker was taken over, an evicted record,
//! a failed return) are under-admission, never over-admission.
//!
//! # Return when idle
//! A record unused for `lease_idle_return_ms` is zeroed by compare-and-swap and its
//! balance given back with `POST /v1/return` ([`reclaim`]), from the root context. A
//! worker's idle block goes back into the record first ([`give_back`]), or to the service
//! when the record has moved on. A refill whose request's stream ends first gives up its
//! marker (`decision::abandon`).
//!
//! # Memory
//! Records live in `slots` shared-data keys (`tollgate/lease/v1/<slots>/<i>`), up to
//! [`SLOT_WAYS`] per key, like the local buckets: a record with nothing left is dropped at
//! the next write to its key; when a key is full the least recently used record goes.

use crate::config::{fnv1a64_more, Limit, LimitKind, QuotaService, MAX_LIMITS_PER_TIER, SLOT_WAYS};
use crate::quota::{LimitSpec, ReturnRequest, ReturnResponse};
use crate::store::{cas_update, identity_fingerprint, table_key, SharedStore, StoreError};
use crate::time::Nanos;

const VERSION: u8 = 1;
/// Lease record keys are `tollgate/lease/v1/<slots>/<index>`.
const LEASE_KEY_PREFIX: &str = "tollgate/lease/v1/";
/// "Does not expire" and "no window".
const NONE: u64 = u64::MAX;

/// The block of a request over `limits` (its global limits) at `cost`: the smallest block
/// of them; 0 (exact) if any limit is exact or the block is below the cost.
pub fn request_block<'a>(limits: impl IntoIterator<Item = &'a Limit>, cost: u64) -> u64 {
    let block = limits.into_iter().map(|l| l.lease_block).min().unwrap_or(0);
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

    fn refilling(&self, now: Nanos, stale_ns: u64) -> bool {
        self.refill_at != 0 && now.0 < self.refill_at.saturating_add(stale_ns)
    }

    /// Nothing in it worth keeping.
    fn idle(&self, now: Nanos, stale_ns: u64) -> bool {
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

/// The worker block of a lease of `block` (see [`crate::hold`]): a tenth of it, taken out
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

/// A lease a worker refilled, remembered so that it can be given back when idle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub lease: LeaseRef,
    /// The metered key at the service (`<tier>/<caller>`).
    pub key: String,
    pub limits: Vec<LimitSpec>,
}

/// What [`take`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// Admitted from the balance (`lease` is the record after it). `refill`: this request
    /// holds the refill marker and should refill now. `extra`: units taken beyond the cost
    /// for the worker to keep (0 or all that was asked for).
    Admitted { lease: Lease, refill: Option<u64>, extra: u64 },
    /// Not enough balance. `refill`: this request holds the marker and should take a block
    /// (and its own units from it); `None`: decide exactly (a refill is in flight, or
    /// refills are paused after a refusal).
    Empty { refill: Option<u64> },
}

/// Takes `cost` units from the lease (and `extra` more when the balance has them all), or
/// says how to get them.
#[allow(clippy::too_many_arguments)]
pub fn take<S: SharedStore + ?Sized>(
    store: &S,
    lease: &LeaseRef,
    cost: u64,
    extra: u64,
    block: u64,
    may_refill: bool,
    stale_ns: u64,
    retries: u32,
    now: Nanos,
) -> Result<Take, StoreError> {
    let marker = now.0.max(1);
    edit(store, lease, retries, now, stale_ns, |current| {
        let mut l =
            current.cloned().unwrap_or(Lease { fingerprint: lease.fingerprint, expires_at: NONE, ..Lease::default() });
        l.balance = l.live_balance(now);
        let can_refill = may_refill && !l.refilling(now, stale_ns) && l.no_refill_until <= now.0;
        if l.balance >= cost {
            let extra = if l.balance - cost >= extra { extra } else { 0 };
            l.balance -= cost + extra;
            l.used_at = now.0;
            let refill = (can_refill && l.balance < low_water(block)).then_some(marker);
            if refill.is_some() {
                l.refill_at = marker;
            }
            (Some(l.clone()), Take::Admitted { lease: l, refill, extra })
        } else if can_refill {
            l.refill_at = marker;
            l.used_at = now.0;
            (Some(l), Take::Empty { refill: Some(marker) })
        } else {
            (None, Take::Empty { refill: None })
        }
    })
}

/// A refill was granted: adds `units` to the balance if the record still carries this
/// request's `marker`, and returns the record. `None`: the marker was taken over (the
/// callout outlived its timeout), nothing credited.
#[allow(clippy::too_many_arguments)]
pub fn credit<S: SharedStore + ?Sized>(
    store: &S,
    lease: &LeaseRef,
    marker: u64,
    units: u64,
    grants: &[Grant],
    expires_at: u64,
    stale_ns: u64,
    retries: u32,
    now: Nanos,
) -> Result<Option<Lease>, StoreError> {
    edit(store, lease, retries, now, stale_ns, |current| {
        let Some(mut l) = current.filter(|l| l.refill_at == marker).cloned() else {
            return (None, None);
        };
        l.refill_at = 0;
        // Units of an earlier window never mix with those of a later one.
        if l.expires_at != expires_at || now.0 >= l.expires_at {
            l.balance = 0;
        }
        l.balance = l.balance.saturating_add(units);
        l.expires_at = expires_at;
        l.grants = grants.iter().copied().take(MAX_LIMITS_PER_TIER).collect();
        l.no_refill_until = 0;
        (Some(l.clone()), Some(l))
    })
}

/// A refill was refused or failed: clears this request's marker; no refill before `until`.
pub fn settle<S: SharedStore + ?Sized>(
    store: &S,
    lease: &LeaseRef,
    marker: u64,
    until: Nanos,
    stale_ns: u64,
    retries: u32,
    now: Nanos,
) -> Result<(), StoreError> {
    edit(store, lease, retries, now, stale_ns, |current| match current.filter(|l| l.refill_at == marker) {
        Some(l) => (Some(Lease { refill_at: 0, no_refill_until: until.0, ..l.clone() }), ()),
        None => (None, ()),
    })
}

/// Gives a worker's unspent units back to the record they were taken from: added to its
/// balance if it still holds units of the same window (`expires_at`), and marked used at
/// `last_used` (the units were in use until then, so the record is not idle before).
/// `false`: the record is gone or has moved on; the units must go back to the service.
#[allow(clippy::too_many_arguments)]
pub fn give_back<S: SharedStore + ?Sized>(
    store: &S,
    lease: &LeaseRef,
    units: u64,
    expires_at: u64,
    last_used: Nanos,
    stale_ns: u64,
    retries: u32,
    now: Nanos,
) -> Result<bool, StoreError> {
    edit(store, lease, retries, now, stale_ns, |current| match current {
        Some(l) if l.expires_at == expires_at && now.0 < expires_at => {
            let mut l = l.clone();
            l.balance = l.balance.saturating_add(units);
            l.used_at = l.used_at.max(last_used.0);
            (Some(l), true)
        }
        _ => (None, false),
    })
}

/// What [`reclaim`] did with a remembered lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reclaim {
    /// In use (or refilling): keep remembering it.
    Busy,
    /// Nothing to give back: forget it.
    Gone,
    /// Zeroed: send this `POST /v1/return`.
    Return(ReturnRequest),
}

/// Gives back the balance of a lease unused for `idle_ns`: zeroes it by compare-and-swap
/// (so that no worker spends it any more) and returns the request to send.
pub fn reclaim<S: SharedStore + ?Sized>(
    store: &S,
    held: &Held,
    idle_ns: u64,
    stale_ns: u64,
    retries: u32,
    now: Nanos,
) -> Result<Reclaim, StoreError> {
    edit(store, &held.lease, retries, now, stale_ns, |current| {
        let Some(l) = current else {
            return (None, Reclaim::Gone);
        };
        if l.refilling(now, stale_ns) || now.0 < l.used_at.saturating_add(idle_ns) {
            return (None, Reclaim::Busy);
        }
        let units = l.live_balance(now);
        let zeroed = Lease { balance: 0, ..l.clone() };
        if units == 0 {
            return (Some(zeroed), Reclaim::Gone);
        }
        let windows = (0..held.limits.len()).map(|i| l.grants.get(i).and_then(|g| g.window)).collect();
        let request = ReturnRequest { key: held.key.clone(), units, limits: held.limits.clone(), windows };
        (Some(zeroed), Reclaim::Return(request))
    })
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

/// How often the root context looks for idle leases.
pub fn tick_ms(quota: &QuotaService) -> u64 {
    (quota.lease_idle_return_ms / 4).clamp(50, 1_000)
}

/// Whether any limit of the configuration leases (the root context then ticks).
pub fn any(config: &crate::Config) -> bool {
    config.quota.is_some()
        && config.tiers.iter().any(|t| t.limits.iter().any(|l| l.global.is_some() && l.lease_block > 0))
}

/// The record as it stands (tests, diagnostics).
pub fn read<S: SharedStore + ?Sized>(store: &S, lease: &LeaseRef) -> Result<Option<Lease>, StoreError> {
    let bytes = store.get(&lease.key)?.map(|(b, _)| b).unwrap_or_default();
    Ok(decode(&bytes).into_iter().find(|l| l.fingerprint == lease.fingerprint))
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

/// A compare-and-swap over the record's key: `change` sees the record (if any) and returns
/// its new value (`None`: write nothing) and a result.
fn edit<S, T, F>(
    store: &S,
    lease: &LeaseRef,
    retries: u32,
    now: Nanos,
    stale_ns: u64,
    mut change: F,
) -> Result<T, StoreError>
where
    S: SharedStore + ?Sized,
    F: FnMut(Option<&Lease>) -> (Option<Lease>, T),
{
    let mut out = None;
    let mut change = |current: Option<&Lease>| {
        let (next, result) = change(current);
        out = Some(result);
        next
    };
    rewrite(store, lease, retries, now, stale_ns, &mut change)?;
    out.ok_or(StoreError::Host)
}

/// The compare-and-swap of [`edit`], not generic over the change: lease operations run once
/// per block, so one copy of the codec in the module is enough.
fn rewrite<S: SharedStore + ?Sized>(
    store: &S,
    lease: &LeaseRef,
    retries: u32,
    now: Nanos,
    stale_ns: u64,
    change: &mut dyn FnMut(Option<&Lease>) -> Option<Lease>,
) -> Result<(), StoreError> {
    cas_update(store, &lease.key, retries, |bytes| {
        let mut records = decode(bytes);
        let next = change(records.iter().find(|l| l.fingerprint == lease.fingerprint))?;
        records.retain(|l| l.fingerprint != lease.fingerprint && !l.idle(now, stale_ns));
        while records.len() >= SLOT_WAYS {
            let Some((victim, _)) = records.iter().enumerate().min_by_key(|(_, l)| l.used_at) else {
                break;
            };
            records.swap_remove(victim);
        }
        if !next.idle(now, stale_ns) {
            records.push(next);
        }
        Some(encode(&records))
    })
}

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

#[cfg(test)]
mod tests;
