//! What is metered for a request: the caller and their tier, the route's cost, and which
//! limits of the tier apply, split into local ones (on the caller's slot) and global ones
//! (at the quota service). These facts travel through the rest of the decision as one
//! [`Metering`].

use smallvec::SmallVec;

use super::conclude::Reports;
use super::outcome::{Caller, Decision, Outcome, QuotaReport};
use super::{global, local, Ctx, Step};
use crate::hash::identity_fingerprint;
use crate::limit::Standing;
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
}

/// Meters a caller on a route: local limits only, or global ones too. `blocks`: the
/// worker's blocks, when the caller may be decided from them.
pub(super) fn meter<S: SharedStore + ?Sized>(
    cx: Ctx<'_, S>,
    blocks: Option<&mut WorkerBlocks>,
    route: usize,
    who: Identified,
    report: QuotaReport,
) -> Step {
    let config = cx.config;
    let Some(r) = config.routes.get(route) else {
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
        tier: who.tier,
        mask,
        caller: who.caller,
        fingerprint,
        anonymous: who.anonymous,
        local,
        global,
        local_standings: Standings::new(),
    };
    match config.quota.as_ref().filter(|_| !metering.global.is_empty()) {
        Some(quota) => global::decide(cx, blocks, quota, metering, report),
        None => Step::Done(match blocks {
            Some(blocks) if blocks.enabled() => local::charge_with_block(cx, blocks, metering, report),
            _ => local::charge(cx, metering, &[], Standings::new(), Reports::quota(report)),
        }),
    }
}
