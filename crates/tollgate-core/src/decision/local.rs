//! Local limits: charged on the caller's slot with compare-and-swap, or spent from the
//! worker's block for the caller (see [`crate::worker_block`]); and giving a block's
//! unspent units back.

use super::conclude::{conclude, Reports};
use super::metering::{Metered, Metering, Standings};
use super::outcome::{Caller, Decision, Outcome};
use super::settle::reservation;
use super::states::{evaluate_all, next_states, refund_states};
use super::Ctx;
use crate::config::{Config, ContentionPolicy, LimitKind, Tier};
use crate::lease::{self, LeaseRef, Records};
use crate::limit::Standing;
use crate::quota::ReturnRequest;
use crate::reply;
use crate::store::{self, Change, SharedStore, SlotRef, StoreError};
use crate::time::Nanos;
use crate::worker_block::{BlockKey, ChargedLimit, WorkerBlock, WorkerBlocks};

/// Charges the local limits (and `fallback` buckets of global limits) with
/// compare-and-swap, then concludes with the `global` standings from the quota service
/// added.
pub(super) fn charge<S: SharedStore + ?Sized>(
    cx: Ctx<'_, S>,
    metering: Metering,
    fallback: &[Metered],
    global: Standings,
    mut reports: Reports,
) -> Decision {
    let config = cx.config;
    let Some(tier) = config.tiers.get(metering.tier) else {
        return Decision::new(Outcome::Unlimited);
    };
    let metered: SmallMetereds = metering.local.iter().chain(fallback).copied().collect();
    let mut standings = Standings::new();
    if !metered.is_empty() {
        let slot = SlotRef::from_fingerprint(metering.fingerprint, config.store.slots);
        let (now, costs) = (cx.now, metering.costs());
        let (result, store_report) = store::update(cx.store, &slot, now, config.store.cas_retries, |stored| {
            standings = evaluate_all(tier, &metered, stored, now, costs);
            if standings.iter().all(|s| s.admitted) {
                next_states(tier, &metered, stored, now, costs)
            } else {
                Change::Keep
            }
        });
        reports.store = store_report;
        if result.is_err() {
            return store_failure(config, metering.tier, metering.caller, reports);
        }
    }
    standings.extend(global);
    let admitted = standings.iter().all(|s| s.admitted);
    let reservation = if admitted { reservation(config, &metering, fallback) } else { None };
    let mut d = conclude(config, metering, standings, reports, cx.now);
    d.reservation = reservation;
    d
}

type SmallMetereds = super::metering::Metereds;

/// [`charge`] of a request metered by local limits only, on a worker that keeps blocks:
/// admitted from the caller's block when it covers the cost, else decided on shared data,
/// charging a block more when every limit has room for it.
pub(super) fn charge_with_block<S: SharedStore + ?Sized>(
    cx: Ctx<'_, S>,
    blocks: &mut WorkerBlocks,
    metering: Metering,
    quota: super::QuotaReport,
) -> Decision {
    let config = cx.config;
    let now = cx.now;
    let mut reports = Reports::quota(quota);
    let Some(tier) = config.tiers.get(metering.tier) else {
        return charge(cx, metering, &[], Standings::new(), reports);
    };
    let cost = metering.cost;
    let block = tier_block(tier, &metering);
    if block == 0 {
        return charge(cx, metering, &[], Standings::new(), reports);
    }
    let fingerprint = metering.fingerprint;
    let key = BlockKey { fingerprint, mask: metering.mask };
    if let Some(held) = blocks.spend(key, cost, now) {
        let standings = block_standings(held, now);
        return conclude(config, metering, standings, reports, now);
    }
    let slot = SlotRef::from_fingerprint(fingerprint, config.store.slots);
    let metered = &metering.local;
    let costs = metering.costs();
    let with_block = costs.with_block(block);
    let mut standings = Standings::new();
    let mut took = 0;
    let (result, store_report) = store::update(cx.store, &slot, now, config.store.cas_retries, |stored| {
        standings = evaluate_all(tier, metered, stored, now, with_block);
        if standings.iter().all(|s| s.admitted) {
            took = block;
            return next_states(tier, metered, stored, now, with_block);
        }
        took = 0;
        standings = evaluate_all(tier, metered, stored, now, costs);
        if standings.iter().all(|s| s.admitted) {
            next_states(tier, metered, stored, now, costs)
        } else {
            Change::Keep
        }
    });
    reports.store = store_report;
    if result.is_err() {
        return store_failure(config, metering.tier, metering.caller, reports);
    }
    if took > 0 {
        let limits = standings
            .iter()
            .filter_map(|s| {
                let m = metered.iter().find(|m| m.index == s.index)?;
                Some(ChargedLimit {
                    index: s.index,
                    fingerprint: m.fingerprint,
                    remaining: s.remaining,
                    reset_after_ns: s.reset_after_ns,
                })
            })
            .collect();
        let taken = WorkerBlock {
            units: took,
            tier: metering.tier,
            fingerprint,
            limits,
            taken_at: now,
            expires_at: block_expiry(tier, metered, now),
            last_used: now,
            lease: None,
        };
        // This request's headers count the units of the block (and what was left of the
        // last one) as remaining, as the next requests' will.
        add_remaining(&mut standings, took.saturating_add(blocks.units(key, now)));
        reports.blocks.taken = true;
        if let Some(pushed_out) = blocks.put(key, taken, now) {
            if give_back_now(cx, blocks, pushed_out) {
                reports.blocks.given_back += 1;
            }
        }
    }
    conclude(config, metering, standings, reports, now)
}

/// The worker block of the request's local limits: the same rule as a lease's block, the
/// smallest of the limits' `worker_block`, 0 if it is below the cost.
fn tier_block(tier: &Tier, metering: &Metering) -> u64 {
    let blocks = metering.local.iter().filter_map(|m| tier.limits.get(m.index)).map(|l| l.worker_block);
    lease::request_block(blocks, metering.cost)
}

/// When units charged now stop counting: the end of the earliest fixed window among the
/// limits (never, for token buckets).
fn block_expiry(tier: &Tier, metered: &[Metered], now: Nanos) -> Nanos {
    let end = metered
        .iter()
        .filter_map(|m| match tier.limits.get(m.index)?.kind {
            LimitKind::FixedWindow { window_ns } if window_ns > 0 => {
                Some((now.0 / window_ns).saturating_add(1).saturating_mul(window_ns))
            }
            _ => None,
        })
        .min();
    Nanos(end.unwrap_or(u64::MAX))
}

/// Where the limits of a request admitted from a block stand.
pub(super) fn block_standings(block: &WorkerBlock, now: Nanos) -> Standings {
    block
        .view(now)
        .map(|(index, remaining, reset_after_ns)| Standing {
            index,
            admitted: true,
            remaining,
            reset_after_ns,
            retry_after_ns: 0,
        })
        .collect()
}

/// Units a worker holds in a block count as remaining: the next requests may spend them.
pub(super) fn add_remaining(standings: &mut Standings, units: u64) {
    for s in standings {
        s.remaining = s.remaining.saturating_add(units);
    }
}

/// Where a block's unspent units went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GivenBack {
    /// Into shared data: the caller's slot, or the lease record they came from.
    Shared,
    /// The lease record has moved on: send this `POST /v1/return` to the service.
    ToService(ReturnRequest),
    /// Nothing to give back (expired, spent, or its tier is gone).
    Void,
}

/// Gives a block's unspent units back: a local limit's to its caller's slot; a lease's to
/// its record, or when the record has moved on, to the service.
pub fn give_back<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    block: &WorkerBlock,
    now: Nanos,
) -> Result<GivenBack, StoreError> {
    if now >= block.expires_at || block.units == 0 {
        return Ok(GivenBack::Void);
    }
    if let Some(back) = &block.lease {
        let lease = LeaseRef::from_fingerprint(block.fingerprint, config.store.slots);
        let marker_ttl_ns = config.quota.as_ref().map_or(0, lease::marker_ttl_ns);
        let records = Records { store, retries: config.store.cas_retries, marker_ttl_ns, now };
        let credited = records.give_back(&lease, block.units, block.expires_at.0, block.last_used)?;
        return Ok(if credited {
            GivenBack::Shared
        } else {
            GivenBack::ToService(ReturnRequest { units: block.units, ..(**back).clone() })
        });
    }
    let Some(tier) = config.tiers.get(block.tier) else {
        return Ok(GivenBack::Void);
    };
    let slot = SlotRef::from_fingerprint(block.fingerprint, config.store.slots);
    let (result, _) = store::update(store, &slot, now, config.store.cas_retries, |stored| {
        refund_states(tier, &block.limits, stored, now, block.units)
    });
    result.map(|()| GivenBack::Shared)
}

/// Gives back a block pushed out of a full table, from a request: what must go to the
/// service waits for the next tick. Whether its units went back into shared data.
pub(super) fn give_back_now<S: SharedStore + ?Sized>(
    cx: Ctx<'_, S>,
    blocks: &mut WorkerBlocks,
    block: WorkerBlock,
) -> bool {
    match give_back(cx.config, cx.store, &block, cx.now) {
        Ok(GivenBack::Shared) => true,
        Ok(GivenBack::ToService(_)) => {
            blocks.orphan(block);
            false
        }
        // Failing to give it back loses its units: under-admission, never over.
        Ok(GivenBack::Void) | Err(_) => false,
    }
}

/// Shared data could not be updated: admitted unmetered, or refused with 503
/// (`store.on_contention`).
pub(super) fn store_failure(config: &Config, tier: usize, caller: Caller, reports: Reports) -> Decision {
    let mut d = Decision {
        tier: Some(tier),
        caller: Some(caller),
        store: reports.store,
        blocks: reports.blocks,
        quota: reports.quota,
        ..Decision::new(Outcome::StoreBypassed)
    };
    if config.store.on_contention == ContentionPolicy::Deny {
        d.outcome = Outcome::StoreRefused;
        d.reply = Some(reply::unavailable());
    }
    d
}
