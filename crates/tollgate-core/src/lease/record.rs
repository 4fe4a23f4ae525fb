//! The operations on lease records, each one compare-and-swap over the record's key.

use super::codec::{decode, encode};
use super::{low_water, Grant, Lease, LeaseRef, RefilledLease, NONE};
use crate::config::{MAX_LIMITS_PER_TIER, SLOT_WAYS};
use crate::quota::ReturnRequest;
use crate::store::{compare_and_swap, SharedStore, StoreError};
use crate::time::Nanos;

/// The lease records of an Envoy's shared data as one request or tick sees them.
#[derive(Debug, Clone, Copy)]
pub struct Records<'a, S: ?Sized> {
    pub store: &'a S,
    /// Compare-and-swap retries (`store.cas_retries`).
    pub retries: u32,
    /// How long a refill marker holds ([`super::marker_ttl_ns`]).
    pub marker_ttl_ns: u64,
    pub now: Nanos,
}

/// What a request asks of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// The request's own units.
    pub cost: u64,
    /// Units more for the worker to keep, taken only when the balance has them all.
    pub worker_units: u64,
    /// The lease block (the low-water mark follows from it).
    pub block: u64,
}

/// What [`Records::take`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// Admitted from the balance (`lease` is the record after it). `refill`: this request
    /// holds the refill marker and should refill now. `worker_units`: units taken beyond
    /// the cost for the worker to keep (0 or all that was asked for).
    Admitted { lease: Lease, refill: Option<u64>, worker_units: u64 },
    /// Not enough balance. `refill`: this request holds the marker and should take a block
    /// (and its own units from it); `None`: decide exactly (a refill is in flight, or
    /// refills are paused after a refusal).
    Empty { refill: Option<u64> },
}

/// What a granted refill brings to the record.
#[derive(Debug, Clone, Copy)]
pub struct Credit<'g> {
    pub units: u64,
    pub grants: &'g [Grant],
    /// When the units expire ([`super::expiry`]).
    pub expires_at: u64,
}

/// What [`Records::return_idle`] did with a remembered lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdleReturn {
    /// In use (or refilling): keep remembering it.
    Busy,
    /// Nothing to return: forget it.
    Gone,
    /// Zeroed: send this `POST /v1/return`.
    Send(ReturnRequest),
}

impl<S: SharedStore + ?Sized> Records<'_, S> {
    /// Takes the request's units from the lease (and the worker's when the balance has them
    /// all), or says how to get them.
    pub fn take(&self, lease: &LeaseRef, ask: Ask) -> Result<Take, StoreError> {
        let now = self.now;
        let marker = now.0.max(1);
        self.edit(lease, |current| {
            let mut l = current.cloned().unwrap_or(Lease {
                fingerprint: lease.fingerprint,
                expires_at: NONE,
                ..Lease::default()
            });
            l.balance = l.live_balance(now);
            let can_refill = !l.refilling(now, self.marker_ttl_ns) && l.no_refill_until <= now.0;
            if l.balance >= ask.cost {
                let worker_units = if l.balance - ask.cost >= ask.worker_units { ask.worker_units } else { 0 };
                l.balance -= ask.cost + worker_units;
                l.used_at = now.0;
                let refill = (can_refill && l.balance < low_water(ask.block)).then_some(marker);
                if refill.is_some() {
                    l.refill_at = marker;
                }
                (Some(l.clone()), Take::Admitted { lease: l, refill, worker_units })
            } else if can_refill {
                l.refill_at = marker;
                l.used_at = now.0;
                (Some(l), Take::Empty { refill: Some(marker) })
            } else {
                (None, Take::Empty { refill: None })
            }
        })
    }

    /// A refill was granted: adds its units to the balance if the record still carries this
    /// request's `marker`, and returns the record. `None`: the marker was taken over (the
    /// callout outlived its timeout), nothing credited.
    pub fn credit(&self, lease: &LeaseRef, marker: u64, credit: Credit<'_>) -> Result<Option<Lease>, StoreError> {
        let now = self.now;
        self.edit(lease, |current| {
            let Some(mut l) = current.filter(|l| l.refill_at == marker).cloned() else {
                return (None, None);
            };
            l.refill_at = 0;
            // Units of an earlier window never mix with those of a later one.
            if l.expires_at != credit.expires_at || now.0 >= l.expires_at {
                l.balance = 0;
            }
            l.balance = l.balance.saturating_add(credit.units);
            l.expires_at = credit.expires_at;
            l.grants = credit.grants.iter().copied().take(MAX_LIMITS_PER_TIER).collect();
            l.no_refill_until = 0;
            (Some(l.clone()), Some(l))
        })
    }

    /// A refill was refused, failed or abandoned: clears this request's marker; no refill
    /// before `until`.
    pub fn release_marker(&self, lease: &LeaseRef, marker: u64, until: Nanos) -> Result<(), StoreError> {
        self.edit(lease, |current| match current.filter(|l| l.refill_at == marker) {
            Some(l) => (Some(Lease { refill_at: 0, no_refill_until: until.0, ..l.clone() }), ()),
            None => (None, ()),
        })
    }

    /// Gives a worker's unspent units back to the record they were taken from: added to its
    /// balance if it still holds units of the same window (`expires_at`), and marked used at
    /// `last_used` (the units were in use until then, so the record is not idle before).
    /// `false`: the record is gone or has moved on; the units must be returned to the service.
    pub fn give_back(
        &self,
        lease: &LeaseRef,
        units: u64,
        expires_at: u64,
        last_used: Nanos,
    ) -> Result<bool, StoreError> {
        let now = self.now;
        self.edit(lease, |current| match current {
            Some(l) if l.expires_at == expires_at && now.0 < expires_at => {
                let mut l = l.clone();
                l.balance = l.balance.saturating_add(units);
                l.used_at = l.used_at.max(last_used.0);
                (Some(l), true)
            }
            _ => (None, false),
        })
    }

    /// Takes up to `units` from the balance of the record while it holds units that expire
    /// at `expires_at` (a request's overrun being settled, spent already); the units taken.
    pub fn spend(&self, lease: &LeaseRef, units: u64, expires_at: u64) -> Result<u64, StoreError> {
        let now = self.now;
        self.edit(lease, |current| match current {
            Some(l) if l.expires_at == expires_at && now.0 < expires_at && l.balance > 0 => {
                let taken = units.min(l.balance);
                (Some(Lease { balance: l.balance - taken, ..l.clone() }), taken)
            }
            _ => (None, 0),
        })
    }

    /// Returns the balance of a lease unused for `idle_ns`: zeroes it by compare-and-swap (so
    /// that no worker spends it any more) and gives the `POST /v1/return` to send.
    pub fn return_idle(&self, refilled: &RefilledLease, idle_ns: u64) -> Result<IdleReturn, StoreError> {
        let now = self.now;
        self.edit(&refilled.lease, |current| {
            let Some(l) = current else {
                return (None, IdleReturn::Gone);
            };
            if l.refilling(now, self.marker_ttl_ns) || now.0 < l.used_at.saturating_add(idle_ns) {
                return (None, IdleReturn::Busy);
            }
            let units = l.live_balance(now);
            let zeroed = Lease { balance: 0, ..l.clone() };
            if units == 0 {
                return (Some(zeroed), IdleReturn::Gone);
            }
            let windows = (0..refilled.limits.len()).map(|i| l.grants.get(i).and_then(|g| g.window)).collect();
            let request = ReturnRequest { key: refilled.key.clone(), units, limits: refilled.limits.clone(), windows };
            (Some(zeroed), IdleReturn::Send(request))
        })
    }

    /// A compare-and-swap over the record's key: `change` sees the record (if any) and
    /// returns its new value (`None`: write nothing) and a result.
    fn edit<T, F>(&self, lease: &LeaseRef, mut change: F) -> Result<T, StoreError>
    where
        F: FnMut(Option<&Lease>) -> (Option<Lease>, T),
    {
        let mut out = None;
        let mut change = |current: Option<&Lease>| {
            let (next, result) = change(current);
            out = Some(result);
            next
        };
        self.rewrite(lease, &mut change)?;
        out.ok_or(StoreError::Host)
    }

    /// The compare-and-swap of [`Records::edit`], not generic over the change: lease
    /// operations run once per block, so one copy of the codec in the module is enough.
    fn rewrite(
        &self,
        lease: &LeaseRef,
        change: &mut dyn FnMut(Option<&Lease>) -> Option<Lease>,
    ) -> Result<(), StoreError> {
        let (now, ttl) = (self.now, self.marker_ttl_ns);
        compare_and_swap(self.store, &lease.key, self.retries, |bytes| {
            let mut records = decode(bytes);
            let next = change(records.iter().find(|l| l.fingerprint == lease.fingerprint))?;
            records.retain(|l| l.fingerprint != lease.fingerprint && !l.idle(now, ttl));
            while records.len() >= SLOT_WAYS {
                let Some((victim, _)) = records.iter().enumerate().min_by_key(|(_, l)| l.used_at) else {
                    break;
                };
                records.swap_remove(victim);
            }
            if !next.idle(now, ttl) {
                records.push(next);
            }
            Some(encode(&records))
        })
        .0
    }
}

/// The record as it stands (tests, diagnostics).
pub fn read<S: SharedStore + ?Sized>(store: &S, lease: &LeaseRef) -> Result<Option<Lease>, StoreError> {
    let bytes = store.get(&lease.key)?.map(|(b, _)| b).unwrap_or_default();
    Ok(decode(&bytes).into_iter().find(|l| l.fingerprint == lease.fingerprint))
}
