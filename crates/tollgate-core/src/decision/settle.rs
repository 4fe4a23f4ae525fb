//! Settling what a request reserved: once its response has ended, each limit of images or
//! tokens is charged what the response says was used instead of what was reserved.
//!
//! The rules (also in the README):
//! - a response that reports its usage is settled to it (tokens; images stay as reserved);
//! - a response that is not a 2xx, or that failed before answering, used nothing: the
//!   whole reservation is refunded;
//! - a 2xx whose usage is missing (a stream without a usage event, a client that left
//!   before the end, a body over the bound read) keeps the reservation.

use smallvec::SmallVec;

use super::metering::{Metered, Metering};
use super::states::rewrite_states;
use crate::config::Config;
use crate::cost::{Charges, Unit, Usage};
use crate::limit::{self, evaluate};
use crate::store::{self, SharedStore, SlotRef, StoreError};
use crate::time::Nanos;

/// What an admitted request reserved of limits that settle, and where their states live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    tier: usize,
    /// The caller's identity fingerprint: their slot and entry.
    fingerprint: u64,
    pub reserved: Charges,
    limits: SmallVec<[(usize, u32); 4]>,
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

/// The reservation of a request admitted with `metering`, when any limit it charged
/// counts images or tokens.
pub(super) fn reservation(config: &Config, metering: &Metering) -> Option<Box<Reservation>> {
    let reserved = metering.charges?;
    let tier = config.tiers.get(metering.tier)?;
    let limits: SmallVec<[(usize, u32); 4]> = metering
        .local
        .iter()
        .filter(|m| tier.limits.get(m.index).is_some_and(|l| l.unit != Unit::Requests))
        .map(|&Metered { index, fingerprint }| (index, fingerprint))
        .collect();
    (!limits.is_empty())
        .then(|| Box::new(Reservation { tier: metering.tier, fingerprint: metering.fingerprint, reserved, limits }))
}

/// Settles a reservation once its response has ended.
pub fn settle<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    reservation: &Reservation,
    ending: Ending,
    now: Nanos,
) -> Result<Settled, StoreError> {
    let Some(tier) = config.tiers.get(reservation.tier) else {
        return Ok(Settled::new());
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
    let settled: Settled = reservation
        .limits
        .iter()
        .filter_map(|&(index, _)| tier.limits.get(index))
        .map(|l| (l.unit, reserved.of(l.unit, 0), actual.of(l.unit, 0)))
        .collect();
    if actual == reserved {
        return Ok(settled);
    }
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
    result.map(|()| settled)
}
