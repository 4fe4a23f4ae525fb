//! What is metered for a request: the caller and their tier, the route's cost, and which
//! limits of the tier apply, split into local ones (on the caller's slot) and global ones
//! (at the quota service). These facts travel through the rest of the decision as one
//! [`Metering`].

use smallvec::SmallVec;

use super::conclude::Reports;
use super::outcome::{Caller, Decision, Outcome, QuotaReport};
use super::settle::Held;
use super::{global, local, Asked, Ctx, Step};
use crate::config::{Limit, Meter, Mode, Prices};
use crate::cost::{Charges, Demand, Unit};
use crate::hash::identity_fingerprint;
use crate::limit::Standing;
use crate::reply;
use crate::store::SharedStore;
use crate::worker_block::WorkerBlocks;

/// Limits metered on a slot, and standings: a handful per request, kept inline (no
/// allocation).
pub(super) type Metereds = SmallVec<[Metered; 4]>;
pub(super) type Standings = SmallVec<[Standing; 4]>;

/// One stored state: limit `index` of the tier, under `fingerprint` (the limit's own, or
/// its fallback bucket's).
#[derive(Debug, Clone, Copy)]
pub(super) struct Metered {
    pub index: usize,
    pub fingerprint: u32,
}

/// A caller with their tier, as [`super::caller`] found them.
pub(super) struct Identified {
    pub tier: usize,
    pub caller: Caller,
    /// The identity fingerprint when known already (a configured key's).
    pub fingerprint: Option<u64>,
    pub anonymous: bool,
}

impl Identified {
    pub fn key(caller: Caller, tier: usize, fingerprint: Option<u64>) -> Identified {
        Identified { tier, caller, fingerprint, anonymous: false }
    }
}

/// A caller with a tier on a route: what to meter, and how the local limits stood when a
/// callout left.
#[derive(Debug)]
pub(super) struct Metering {
    /// The route's cost: units charged to each limit that applies.
    pub cost: u64,
    /// What the request's body reserves, on a metered route.
    pub charges: Option<Charges>,
    pub tier: usize,
    /// The route's mask of the tier's limits.
    pub mask: u16,
    pub caller: Caller,
    /// The identity fingerprint of (tier, caller): where their states live.
    pub fingerprint: u64,
    pub anonymous: bool,
    pub local: Metereds,
    pub global: SmallVec<[usize; 4]>,
    /// Local limits as they stood (not yet charged) when the callout left.
    pub local_standings: Standings,
    /// Where the global limits were charged, once they were.
    pub held: Held,
}

impl Metering {
    /// The units this request charges each limit.
    pub fn costs(&self) -> Costs {
        Costs { requests: self.cost, charges: self.charges }
    }

    /// The units this request charges `limit`.
    pub fn cost_of(&self, limit: &Limit) -> u64 {
        self.costs().of(limit)
    }
}

/// The units a request charges each limit: the route's cost to limits of requests, what
/// its body reserves to limits of images or tokens.
#[derive(Debug, Clone, Copy)]
pub(super) struct Costs {
    pub requests: u64,
    pub charges: Option<Charges>,
}

impl Costs {
    pub fn of(&self, limit: &Limit) -> u64 {
        self.of_unit(limit.unit)
    }

    /// The units this request charges a limit counting `unit`.
    pub fn of_unit(&self, unit: Unit) -> u64 {
        match (unit, self.charges) {
            (Unit::Requests, _) | (_, None) => self.requests,
            (unit, Some(charges)) => charges.of(unit, self.requests),
        }
    }

    /// A worker block more for limits of requests (the only ones that take blocks).
    pub fn with_block(self, block: u64) -> Costs {
        Costs { requests: self.requests.saturating_add(block), ..self }
    }
}

/// What a request body reserves on a metered route: its images (each weighted by its
/// size and quality), its prompt's tokens, and the most tokens it may generate (the
/// route's default when the body sets no maximum).
pub(crate) fn reserve(demand: &Demand, meter: &Meter, prices: &Prices) -> Charges {
    let weight = |property: &Option<String>| {
        property.as_deref().and_then(|p| meter.image_weights.iter().find(|(k, _)| k == p)).map_or(1, |(_, w)| *w)
    };
    Charges {
        images: demand.images.saturating_mul(weight(&demand.size)).saturating_mul(weight(&demand.quality)),
        input_tokens: demand.input_tokens,
        output_tokens: demand.max_output_tokens.unwrap_or(meter.default_max_output_tokens),
        price: prices.of(demand.model.as_deref()),
    }
}

/// Meters a caller on a route: local limits only, or global ones too. `blocks`: the
/// worker's blocks, when the caller may be decided from them.
pub(super) fn meter<S: SharedStore + ?Sized>(
    cx: Ctx<'_, S>,
    blocks: Option<&mut WorkerBlocks>,
    asked: Asked,
    who: Identified,
    report: QuotaReport,
) -> Step {
    let config = cx.config;
    let Some(r) = config.routes.get(asked.route) else {
        return Step::Done(Decision::new(Outcome::Unlimited));
    };
    let (Some(tier), Some(&mask)) = (config.tiers.get(who.tier), r.applies.get(who.tier)) else {
        return Step::Done(Decision::new(Outcome::Unlimited));
    };
    if mask == 0 {
        return Step::Done(Decision { tier: Some(who.tier), ..Decision::new(Outcome::Unlimited) });
    }
    let applied = tier.limits.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0);
    let local = applied
        .clone()
        .filter(|(_, l)| l.global.is_none())
        .map(|(index, l)| Metered { index, fingerprint: l.fingerprint })
        .collect();
    let global = applied.filter(|(_, l)| l.global.is_some()).map(|(i, _)| i).collect();
    let fingerprint = who.fingerprint.unwrap_or_else(|| identity_fingerprint(&tier.name, who.caller.name(config)));
    let metering = Metering {
        cost: r.cost,
        charges: asked.charges,
        tier: who.tier,
        mask,
        caller: who.caller,
        fingerprint,
        anonymous: who.anonymous,
        local,
        global,
        local_standings: Standings::new(),
        held: Held::Nowhere,
    };
    if let Some(d) = never_fits(config.mode, tier, &metering) {
        return Step::Done(d);
    }
    match config.quota.as_ref().filter(|_| !metering.global.is_empty()) {
        Some(quota) => global::decide(cx, blocks, quota, metering, report),
        None => Step::Done(match blocks {
            Some(blocks) if blocks.enabled() => local::charge_with_block(cx, blocks, metering, report),
            _ => local::charge(cx, metering, &[], Standings::new(), Reports::quota(report)),
        }),
    }
}

/// A request that reserves more images or tokens than a limit ever holds could never be
/// admitted, however long it waits: it is refused with a 400 that says so (no
/// `Retry-After`), counted as limited.
fn never_fits(mode: Mode, tier: &crate::config::Tier, metering: &Metering) -> Option<Decision> {
    let applied = || metering.local.iter().map(|m| m.index).chain(metering.global.iter().copied());
    let unpriced = metering.charges.is_some_and(|c| c.price.is_none());
    if unpriced && applied().any(|i| tier.limits.get(i).is_some_and(|l| l.unit == Unit::Cost)) {
        return Some(Decision::refuse(Outcome::BadRequest, reply::unpriced_model(), mode));
    }
    let (limit, cost) = applied()
        .filter_map(|i| tier.limits.get(i))
        .filter(|l| l.unit != Unit::Requests)
        .map(|l| (l, metering.cost_of(l)))
        .find(|(l, cost)| *cost > l.capacity())?;
    let mut d = Decision::refuse(Outcome::Limited, reply::never_fits(tier, limit, cost), mode);
    if d.outcome == Outcome::Limited {
        d.tier = Some(metering.tier);
        d.caller = Some(metering.caller.clone());
        d.limited_by = Some(limit.name.clone());
    }
    Some(d)
}
