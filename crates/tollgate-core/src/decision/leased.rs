//! The leased path: global limits decided from the Envoy's balance of a lease (see
//! [`crate::lease`]). A worker that keeps blocks spends its block of the lease first. A
//! request that leaves the balance under the low-water mark is admitted at once and hands
//! the worker a refill ahead of need ([`super::Decision::refill`], answered with
//! [`refilled_ahead`]); only a request that finds the balance empty waits for a refill.

use super::conclude::Reports;
use super::fallback::{breaker_admits, fallback};
use super::global::{align, check_answer, exact_check, lease_cost, limit_specs, refill_call, service_key};
use super::local::{self, add_remaining, block_standings, give_back_now};
use super::metering::{Metereds, Metering, Standings};
use super::outcome::{Decision, Outcome, QuotaReport};
use super::settle::Held;
use super::{Answer, Ctx, Pending, Stage, Step};
use crate::config::{Config, Limit, LimitKind, QuotaService, Tier};
use crate::cost::Unit;
use crate::lease::{self, Ask, Credit, Grant, Lease, LeaseRef, Records, RefilledLease, Take};
use crate::limit::Standing;
use crate::quota::{CheckResponse, ReturnRequest};
use crate::store::SharedStore;
use crate::worker_block::{BlockKey, ChargedLimit, WorkerBlock, WorkerBlocks};

/// A refill of a lease in flight.
#[derive(Debug)]
pub(crate) struct Refill {
    pub metering: Metering,
    pub lease: LeaseRef,
    pub marker: u64,
    pub block: u64,
    /// Units of the block its request takes: its cost when it waits for the answer, 0 for
    /// a refill ahead of need (the request was admitted from the balance).
    pub own: u64,
}

/// The lease records as this decision sees them.
fn records<'a, S: SharedStore + ?Sized>(cx: Ctx<'a, S>, quota: &QuotaService) -> Records<'a, S> {
    Records {
        store: cx.store,
        retries: cx.config.store.cas_retries,
        marker_ttl_ns: lease::marker_ttl_ns(quota),
        now: cx.now,
    }
}

/// The global limits of a request decided from a lease of `block`. `Err`: the lease
/// cannot decide it; go exact.
pub(super) fn decide<S: SharedStore + ?Sized>(
    cx: Ctx<'_, S>,
    blocks: Option<&mut WorkerBlocks>,
    quota: &QuotaService,
    metering: Metering,
    block: u64,
    mut report: QuotaReport,
) -> Result<Step, Box<Metering>> {
    let (config, now) = (cx.config, cx.now);
    let Some(tier) = config.tiers.get(metering.tier) else {
        return Err(Box::new(metering));
    };
    let Some(cost) = lease_cost(tier, &metering) else {
        return Err(Box::new(metering));
    };
    let fingerprint =
        lease::fingerprint(metering.fingerprint, metering.global.iter().filter_map(|&i| tier.limits.get(i)));
    // Images and tokens are settled per request: a worker holds no block of them.
    let requests_only = metering.global.iter().all(|&i| tier.limits.get(i).is_some_and(|l| l.unit == Unit::Requests));
    let mut blocks = blocks.filter(|b| b.enabled() && requests_only);
    let worker_units = if blocks.is_some() { lease::worker_block(block, cost) } else { 0 };
    let key = BlockKey { fingerprint, mask: 0 };
    if let Some(held) = blocks.as_deref_mut().filter(|_| worker_units > 0).and_then(|b| b.spend(key, cost, now)) {
        let standings = block_standings(held, now);
        report.from_lease = true;
        return Ok(Step::Done(local::charge(cx, metering, &[], standings, Reports::quota(report))));
    }
    let lease_ref = LeaseRef::from_fingerprint(fingerprint, config.store.slots);
    let records = records(cx, quota);
    let Ok(taken) = records.take(&lease_ref, Ask { cost, worker_units, block }) else {
        return Err(Box::new(metering));
    };
    match taken {
        Take::Empty { refill: None } => Err(Box::new(metering)),
        Take::Admitted { lease, refill, worker_units } => {
            report.from_lease = true;
            let mut metering = metering;
            metering.held = held_in(&lease_ref, &lease);
            let mut reports = Reports::quota(report);
            let mut held = 0;
            if let Some(blocks) = blocks.filter(|_| worker_units > 0) {
                held = keep_lease_block(cx, blocks, tier, &metering, key, worker_units, &lease);
                reports.blocks.taken = true;
            }
            // With the breaker open there is no refill: its marker goes at once.
            let marker = match refill {
                Some(marker) if !breaker_admits(cx, quota) => {
                    let _ = records.release_marker(&lease_ref, marker, now);
                    None
                }
                other => other,
            };
            let mut standings = lease_standings(tier, &metering.global, &lease, now);
            add_remaining(&mut standings, held);
            // The refill ahead of need leaves with its own report: the request's counts once.
            let ahead = marker.map(|marker| {
                let metering = Metering {
                    caller: metering.caller.clone(),
                    local: Metereds::new(),
                    global: metering.global.clone(),
                    local_standings: Standings::new(),
                    held: Held::Nowhere,
                    ..metering
                };
                let refill = Refill { metering, lease: lease_ref, marker, block, own: 0 };
                refill_call(config, tier, refill, QuotaReport::default())
            });
            let mut d = local::charge(cx, metering, &[], standings, reports);
            d.refill = ahead;
            Ok(Step::Done(d))
        }
        Take::Empty { refill: Some(marker) } => {
            if !breaker_admits(cx, quota) {
                let _ = records.release_marker(&lease_ref, marker, now);
                report.short_circuited = true;
                return Ok(Step::Done(fallback(cx, metering, report)));
            }
            let refill = Refill { metering, lease: lease_ref, marker, block, own: cost };
            Ok(Step::Call(refill_call(config, tier, refill, report)))
        }
    }
}

/// Where a request's global limits were charged: from `lease`, as its record stands.
fn held_in(lease_ref: &LeaseRef, lease: &Lease) -> Held {
    Held::Leased {
        lease: lease_ref.clone(),
        expires_at: lease.expires_at,
        windows: lease.grants.iter().map(|g| g.window).collect(),
    }
}

/// Keeps `units` just taken out of a lease (the record after it: `lease`) as this worker's
/// block; returns the units the worker now holds for it.
fn keep_lease_block<S: SharedStore + ?Sized>(
    cx: Ctx<'_, S>,
    blocks: &mut WorkerBlocks,
    tier: &Tier,
    metering: &Metering,
    key: BlockKey,
    units: u64,
    lease: &Lease,
) -> u64 {
    let now = cx.now;
    let limits = lease_standings(tier, &metering.global, lease, now)
        .iter()
        .map(|s| ChargedLimit {
            index: s.index,
            fingerprint: 0,
            remaining: s.remaining,
            reset_after_ns: s.reset_after_ns,
        })
        .collect();
    let back = ReturnRequest {
        key: service_key(cx.config, tier, metering),
        units: 0,
        limits: limit_specs(tier, metering),
        windows: (0..metering.global.len()).map(|i| lease.grants.get(i).and_then(|g| g.window)).collect(),
    };
    let held = units.saturating_add(blocks.units(key, now));
    let taken = WorkerBlock {
        units,
        tier: metering.tier,
        fingerprint: key.fingerprint,
        limits,
        taken_at: now,
        expires_at: crate::time::Nanos(lease.expires_at),
        last_used: now,
        lease: Some(Box::new(back)),
    };
    if let Some(pushed_out) = blocks.put(key, taken, now) {
        give_back_now(cx, blocks, pushed_out);
    }
    held
}

/// What the answer to a refill did to its lease.
enum Refilled {
    /// Granted and credited; `credited` is the record after it (`None`: it had moved on
    /// and the block is lost: under-admission).
    Granted { grants: Vec<Grant>, credited: Option<Lease>, refilled: RefilledLease },
    /// Not a whole block left: the lease decides exactly until one could pass.
    Short,
    /// No answer: the marker is released.
    Failed,
}

/// Credits the block of a granted refill to its lease, or releases the marker.
fn apply_refill<S: SharedStore + ?Sized>(
    cx: Ctx<'_, S>,
    quota: &QuotaService,
    tier: &Tier,
    refill: &Refill,
    checked: Option<CheckResponse>,
    report: &mut QuotaReport,
) -> Refilled {
    let Refill { metering, lease: lease_ref, marker, block, own } = refill;
    let (records, now) = (records(cx, quota), cx.now);
    let Some(answer) = checked else {
        let _ = records.release_marker(lease_ref, *marker, now);
        return Refilled::Failed;
    };
    if !answer.admitted {
        // Not a whole block left: spend what the lease holds, then decide exactly until
        // a block could be granted again.
        let wait_ms = answer.limits.iter().filter(|r| !r.admitted).map(|r| r.retry_after_ms).max().unwrap_or(0);
        let _ = records.release_marker(lease_ref, *marker, now.saturating_add(wait_ms.saturating_mul(1_000_000)));
        return Refilled::Short;
    }
    let limits: Vec<&Limit> = metering.global.iter().filter_map(|&i| tier.limits.get(i)).collect();
    let grants: Vec<Grant> = limits
        .iter()
        .zip(&answer.limits)
        .map(|(limit, r)| {
            let reset_at = now.0.saturating_add(align(Some(limit.kind), r.reset_after_ms, now));
            let window = r.window.or(match limit.kind {
                LimitKind::FixedWindow { window_ns } if window_ns > 0 => Some((reset_at / window_ns).saturating_sub(1)),
                _ => None,
            });
            Grant { remaining: r.remaining, reset_at, window }
        })
        .collect();
    let expires_at = lease::expiry(&limits, &grants);
    report.leased_units = *block;
    let credit = Credit { units: block.saturating_sub(*own), grants: &grants, expires_at };
    let credited = records.credit(lease_ref, *marker, credit).ok().flatten();
    let refilled = RefilledLease {
        lease: lease_ref.clone(),
        key: service_key(cx.config, tier, metering),
        limits: limit_specs(tier, metering),
    };
    Refilled::Granted { grants, credited, refilled }
}

/// The answer to a refill its request waited for: credit the lease and admit the request
/// from the block, or decide it otherwise.
pub(super) fn refilled<S: SharedStore + ?Sized>(
    cx: Ctx<'_, S>,
    refill: Refill,
    answer: Answer<'_>,
    mut report: QuotaReport,
) -> Step {
    let (Some(quota), Some(tier)) = (cx.config.quota.as_ref(), cx.config.tiers.get(refill.metering.tier)) else {
        return Step::Done(Decision::new(Outcome::Unlimited));
    };
    let checked = check_answer(cx, quota, answer, refill.metering.global.len(), &mut report);
    let applied = apply_refill(cx, quota, tier, &refill, checked, &mut report);
    let mut metering = refill.metering;
    match applied {
        Refilled::Granted { grants, credited, refilled } => {
            report.from_lease = true;
            metering.held = match &credited {
                Some(l) => held_in(&refill.lease, l),
                // The record moved on: what the request took is settled with the service.
                None => Held::Checked(grants.iter().map(|g| g.window).collect()),
            };
            let standings = match &credited {
                Some(l) => lease_standings(tier, &metering.global, l, cx.now),
                None => metering
                    .global
                    .iter()
                    .zip(&grants)
                    .map(|(&index, g)| Standing {
                        index,
                        admitted: true,
                        remaining: g.remaining,
                        reset_after_ns: g.reset_at.saturating_sub(cx.now.0),
                        retry_after_ns: 0,
                    })
                    .collect(),
            };
            let mut d = local::charge(cx, metering, &[], standings, Reports::quota(report));
            d.lease = Some(refilled);
            Step::Done(d)
        }
        Refilled::Short => exact_check(cx.config, tier, metering, report),
        Refilled::Failed => Step::Done(fallback(cx, metering, report)),
    }
}

/// The answer to a refill sent ahead of need ([`Decision::refill`]), its request decided
/// long since: credits the block to the lease, or releases the marker. Returns the lease
/// for the worker to remember (see [`Decision::lease`]) when a block was granted, and how
/// the service figured, for stats.
pub fn refilled_ahead<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    pending: Pending,
    answer: Answer<'_>,
    now: crate::time::Nanos,
) -> (Option<RefilledLease>, QuotaReport) {
    let cx = Ctx { config, store, now };
    let Pending { stage, quota: mut report } = pending;
    let (Some(quota), Stage::Refill(refill)) = (config.quota.as_ref(), stage) else {
        return (None, report);
    };
    let Some(tier) = config.tiers.get(refill.metering.tier) else {
        return (None, report);
    };
    let checked = check_answer(cx, quota, answer, refill.metering.global.len(), &mut report);
    match apply_refill(cx, quota, tier, &refill, checked, &mut report) {
        Refilled::Granted { refilled, .. } => (Some(refilled), report),
        Refilled::Short | Refilled::Failed => (None, report),
    }
}

/// A decision waiting for a callout was dropped (its stream ended first, so the answer has
/// no request to go to), or a refill ahead of need could not be sent. A refill releases
/// its marker at once, so that the next request may refill instead of finding a refill
/// "in flight" until the marker's time to live and deciding every request exactly
/// meanwhile. The units of the lost answer are lost (under-admission).
pub fn abandon<S: SharedStore + ?Sized>(config: &Config, store: &S, pending: Pending, now: crate::time::Nanos) {
    let (Some(quota), Stage::Refill(refill)) = (config.quota.as_ref(), pending.stage) else {
        return;
    };
    let records = records(Ctx { config, store, now }, quota);
    let _ = records.release_marker(&refill.lease, refill.marker, now);
}

/// Global limits as a lease shows them: the service's remaining at the grant plus the
/// balance not yet spent here, and the reset of the grant (an approximation: other
/// Envoys' spending since the grant is not seen).
fn lease_standings(tier: &Tier, global: &[usize], lease: &Lease, now: crate::time::Nanos) -> Standings {
    let balance = lease.live_balance(now);
    global
        .iter()
        .enumerate()
        .filter(|(_, &index)| tier.limits.get(index).is_some())
        .map(|(p, &index)| {
            let grant = lease.grants.get(p).copied().unwrap_or_default();
            Standing {
                index,
                admitted: true,
                remaining: grant.remaining.saturating_add(balance),
                reset_after_ns: grant.reset_at.saturating_sub(now.0),
                retry_after_ns: 0,
            }
        })
        .collect()
}
