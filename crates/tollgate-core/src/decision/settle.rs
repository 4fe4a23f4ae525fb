//! Settling what a request reserved: once its response has ended, each limit of images or
//! tokens is charged what the response says was used instead of what was reserved.
//!
//! The rules (also in the README):
//! - a response that reports its usage is settled to it (tokens; images stay as reserved);
//! - a response that is not a 2xx, or that failed before answering, used nothing: the
//!   whole reservation is refunded;
//! - a 2xx whose usage is missing (a stream without a usage event, a client that left
//!   before the end, a body over the bound read) keeps the reservation.
//!
//! Where the difference goes: local limits (and the local buckets of a quota service that
//! could not answer) on the caller's slot; global limits charged by an exact check with a
//! `POST /v1/settle` (applied once, however often it is sent); global limits charged from
//! a lease against the lease's balance (a refund goes back into it, an overrun comes out
//! of it), calling the service only for what the balance cannot take.

use smallvec::SmallVec;

use super::global::{limit_specs_of, service_key};
use super::metering::{Metered, Metering};
use super::states::rewrite_states;
use super::to_json;
use crate::config::{Config, Tier};
use crate::cost::{Charges, Unit, Usage};
use crate::lease::{self, LeaseRef, Records, RefilledLease};
use crate::limit::{self, evaluate};
use crate::quota::SettleRequest;
use crate::store::{self, SharedStore, SlotRef};
use crate::time::Nanos;
use crate::worker::Worker;

/// The quota service's settle operation.
pub const SETTLE_PATH: &str = "/v1/settle";

/// What an admitted request reserved of limits that settle, and where their states live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    tier: usize,
    /// The caller's identity fingerprint: their slot and entry.
    fingerprint: u64,
    pub reserved: Charges,
    /// Local limits and fallback buckets: (limit index, state fingerprint).
    limits: SmallVec<[(usize, u32); 4]>,
    global: Option<GlobalReservation>,
}

/// Global limits of images or tokens a request was charged at the quota service.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GlobalReservation {
    /// The caller's key at the quota service.
    key: String,
    /// (limit index, the fixed window charged).
    limits: SmallVec<[(usize, Option<u64>); 4]>,
    /// Charged from this lease (whose units expire at `expires_at`), not by a check.
    lease: Option<(LeaseRef, u64)>,
}

/// Where the global limits of an admitted request were charged.
#[derive(Debug, Clone, Default)]
pub(super) enum Held {
    /// Nowhere (no global limits, or their failure modes decided).
    #[default]
    Nowhere,
    /// By an exact `/v1/check`: the window it charged, per global limit.
    Checked(SmallVec<[Option<u64>; 4]>),
    /// From a lease's balance: the record, its expiry, the grant's windows.
    Leased { lease: LeaseRef, expires_at: u64, windows: SmallVec<[Option<u64>; 4]> },
}

impl Reservation {
    /// The index of the caller's tier.
    pub fn tier(&self) -> usize {
        self.tier
    }
}

/// How a response ended, as far as settling goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A 2xx response that reported this usage.
    Used(Usage),
    /// A 2xx response whose usage is missing: the reservation stands.
    Unreported,
    /// Not a 2xx, or no response at all: nothing was used.
    Failed,
}

/// What a settlement charged, per unit, for stats: (unit, reserved, charged).
pub type Settled = SmallVec<[(Unit, u64, u64); 4]>;

/// What settling did, and what the host must send.
#[derive(Debug, Default)]
pub struct Settlement {
    pub settled: Settled,
    /// The caller's slot could not be written: local limits keep the reservation.
    pub store_failed: bool,
    /// A `POST /v1/settle` body to send to the quota service ([`SETTLE_PATH`]). It is
    /// applied once: resend the same body when the service did not answer.
    pub call: Option<String>,
}

/// Whether a limit counts what a request's body reserves (and so is settled).
fn settles(tier: &Tier, index: usize) -> bool {
    tier.limits.get(index).is_some_and(|l| l.unit != Unit::Requests)
}

/// The reservation of a request admitted with `metering` (and `fallback` buckets for its
/// global limits), when any limit it charged counts images or tokens.
pub(super) fn reservation(config: &Config, metering: &Metering, fallback: &[Metered]) -> Option<Box<Reservation>> {
    let reserved = metering.charges?;
    let tier = config.tiers.get(metering.tier)?;
    let limits: SmallVec<[(usize, u32); 4]> = metering
        .local
        .iter()
        .chain(fallback)
        .filter(|m| settles(tier, m.index))
        .map(|&Metered { index, fingerprint }| (index, fingerprint))
        .collect();
    let (windows, lease) = match &metering.held {
        Held::Nowhere => (None, None),
        Held::Checked(windows) => (Some(windows), None),
        Held::Leased { lease, expires_at, windows } => (Some(windows), Some((lease.clone(), *expires_at))),
    };
    let global = windows.and_then(|windows| {
        let limits: SmallVec<[(usize, Option<u64>); 4]> = metering
            .global
            .iter()
            .zip(windows.iter().chain(std::iter::repeat(&None)))
            .filter(|(&index, _)| settles(tier, index))
            .map(|(&index, &window)| (index, window))
            .collect();
        (!limits.is_empty()).then(|| GlobalReservation { key: service_key(config, tier, metering), limits, lease })
    });
    (!limits.is_empty() || global.is_some()).then(|| {
        Box::new(Reservation { tier: metering.tier, fingerprint: metering.fingerprint, reserved, limits, global })
    })
}

/// Settles a reservation once its response has ended; `worker` names the settlement
/// sent to the quota service, if one is.
pub fn settle<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    worker: &mut Worker,
    reservation: &Reservation,
    ending: Ending,
    now: Nanos,
) -> Settlement {
    let Some(tier) = config.tiers.get(reservation.tier) else {
        return Settlement::default();
    };
    let reserved = reservation.reserved;
    let actual = match ending {
        Ending::Used(usage) => Charges {
            images: reserved.images,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            price: reserved.price,
        },
        Ending::Unreported => reserved,
        Ending::Failed => Charges { price: reserved.price, ..Charges::default() },
    };
    let global = reservation.global.as_ref();
    let settled = reservation
        .limits
        .iter()
        .map(|&(index, _)| index)
        .chain(global.into_iter().flat_map(|g| g.limits.iter().map(|&(index, _)| index)))
        .filter_map(|index| tier.limits.get(index))
        .map(|l| (l.unit, reserved.of(l.unit, 0), actual.of(l.unit, 0)))
        .collect();
    let mut settlement = Settlement { settled, ..Settlement::default() };
    if actual == reserved {
        return settlement;
    }
    if !reservation.limits.is_empty() {
        let slot = SlotRef::from_fingerprint(reservation.fingerprint, config.store.slots);
        let (result, _) = store::update(store, &slot, now, config.store.cas_retries, |stored| {
            rewrite_states(tier, stored, now, |index, limit, fingerprint, previous| {
                let settles = reservation.limits.contains(&(index, fingerprint));
                previous.map(|state| {
                    let state = if settles {
                        limit::settle(limit, state, now, reserved.of(limit.unit, 0), actual.of(limit.unit, 0))
                    } else {
                        state
                    };
                    evaluate(limit, Some(state), now, 0)
                })
            })
        });
        settlement.store_failed = result.is_err();
    }
    if let Some(global) = global {
        let owed = |charges: Charges| {
            global.limits.iter().filter_map(|&(i, _)| tier.limits.get(i)).map(move |l| charges.of(l.unit, 0))
        };
        let (reserved, used): (SmallVec<[u64; 4]>, SmallVec<[u64; 4]>) =
            (owed(reserved).collect(), owed(actual).collect());
        let (reserved, used) = match &global.lease {
            Some((lease, expires_at)) => {
                let settled = settle_lease(config, store, lease, *expires_at, &reserved, &used, now);
                // A refund may land on a balance whose worker returned it already: this
                // worker returns it once it is idle again.
                worker.remember(RefilledLease {
                    lease: lease.clone(),
                    key: global.key.clone(),
                    limits: limit_specs_of(tier, global.limits.iter().map(|&(index, _)| index)),
                });
                settled
            }
            None => (reserved, used),
        };
        if reserved != used {
            settlement.call = Some(settle_body(tier, global, worker.settle_id(), &reserved, &used));
        }
    }
    settlement
}

/// Settles global limits charged from a lease (all of one unit, so one difference)
/// against its balance: a refund goes back into it, an overrun comes out of it. Returns
/// what is left for the quota service, as (reserved, used) per limit: nothing when the
/// balance took it all.
fn settle_lease<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    lease: &LeaseRef,
    expires_at: u64,
    reserved: &[u64],
    used: &[u64],
    now: Nanos,
) -> (SmallVec<[u64; 4]>, SmallVec<[u64; 4]>) {
    let (r, u) = (reserved.first().copied().unwrap_or(0), used.first().copied().unwrap_or(0));
    let n = reserved.len();
    let Some(quota) = config.quota.as_ref() else {
        return (reserved.into(), used.into());
    };
    let records = Records { store, retries: config.store.cas_retries, marker_ttl_ns: lease::marker_ttl_ns(quota), now };
    let left = if u < r {
        // Units of a record gone or of a past window go back to the service instead.
        match records.give_back(lease, r - u, expires_at, now) {
            Ok(true) => 0,
            _ => r - u,
        }
    } else {
        let overrun = u - r;
        overrun.saturating_sub(records.spend(lease, overrun, expires_at).unwrap_or(0))
    };
    let nothing = SmallVec::from_elem(0, n);
    match (left, u < r) {
        (0, _) => (nothing.clone(), nothing),
        (left, true) => (SmallVec::from_elem(left, n), nothing),
        (left, false) => (nothing, SmallVec::from_elem(left, n)),
    }
}

/// The `POST /v1/settle` of a request's global limits.
fn settle_body(tier: &Tier, global: &GlobalReservation, id: String, reserved: &[u64], used: &[u64]) -> String {
    to_json(&SettleRequest {
        key: global.key.clone(),
        id,
        limits: limit_specs_of(tier, global.limits.iter().map(|&(index, _)| index)),
        windows: global.limits.iter().map(|&(_, window)| window).collect(),
        reserved: reserved.to_vec(),
        used: used.to_vec(),
    })
}
