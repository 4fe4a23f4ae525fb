//! Global limits: the local limits of the request are looked at first (a request they
//! refuse costs no callout), then the global ones are decided from a lease ([`super::leased`])
//! or, exactly, with a `/v1/check` of the request's own cost; when the quota service cannot
//! answer, by their failure modes ([`super::fallback`]).

use super::conclude::{conclude, Reports};
use super::fallback::{breaker_admits, fallback, record_breaker};
use super::leased::{self, Refill};
use super::local::{self, store_failure};
use super::metering::{Metering, Standings};
use super::outcome::QuotaReport;
use super::settle::Held;
use super::states::evaluate_all;
use super::{to_json, Answer, Callout, Ctx, Pending, Stage, Step};
use crate::config::{Config, LimitKind, QuotaService, Tier};
use crate::lease;
use crate::limit::Standing;
use crate::quota::{CheckRequest, CheckResponse, LimitSpec};
use crate::store::{self, Change, SharedStore, SlotRef, UpdateReport};
use crate::time::Nanos;
use crate::worker_block::WorkerBlocks;

/// Decides a request with global limits.
pub(super) fn decide<S: SharedStore + ?Sized>(
    cx: Ctx<'_, S>,
    blocks: Option<&mut WorkerBlocks>,
    quota: &QuotaService,
    mut metering: Metering,
    mut report: QuotaReport,
) -> Step {
    let config = cx.config;
    let Some(tier) = config.tiers.get(metering.tier) else {
        return Step::Done(local::charge(cx, metering, &[], Standings::new(), Reports::quota(report)));
    };
    // Local limits first, without charging them: a request they refuse costs no callout.
    let now = cx.now;
    let mut looked = Standings::new();
    // Without local limits there is nothing to look at (a global-only tier reads no slot).
    let (result, store_report) = if metering.local.is_empty() {
        (Ok(()), UpdateReport::default())
    } else {
        let slot = SlotRef::from_fingerprint(metering.fingerprint, config.store.slots);
        store::update(cx.store, &slot, now, config.store.cas_retries, |stored| {
            looked = evaluate_all(tier, &metering.local, stored, now, metering.costs());
            Change::Keep
        })
    };
    let reports = Reports { store: store_report, ..Reports::quota(report) };
    if result.is_err() {
        return Step::Done(store_failure(config, metering.tier, metering.caller, reports));
    }
    metering.local_standings = looked;
    if metering.local_standings.iter().any(|s| !s.admitted) {
        let standings = metering.local_standings.clone();
        return Step::Done(conclude(config, metering, standings, reports, now));
    }
    let block = match lease_cost(tier, &metering) {
        Some(cost) => lease::request_block(
            metering.global.iter().filter_map(|&i| tier.limits.get(i)).map(|l| l.lease_block),
            cost,
        ),
        None => 0,
    };
    if block > 0 {
        match leased::decide(cx, blocks, quota, metering, block, report) {
            Ok(step) => return step,
            Err(exact) => metering = *exact,
        }
    }
    if !breaker_admits(cx, quota) {
        report.short_circuited = true;
        return Step::Done(fallback(cx, metering, report));
    }
    exact_check(config, tier, metering, report)
}

/// What a lease takes for the request from its balance, which counts one unit for all of
/// the request's global limits: `None` when they count different units (the request is
/// then decided exactly).
pub(super) fn lease_cost(tier: &Tier, metering: &Metering) -> Option<u64> {
    let mut limits = metering.global.iter().filter_map(|&i| tier.limits.get(i));
    let unit = limits.next()?.unit;
    limits.all(|l| l.unit == unit).then(|| metering.costs().of_unit(unit))
}

/// A `/v1/check` of the request's own cost: the exact path.
pub(super) fn exact_check(config: &Config, tier: &Tier, metering: Metering, report: QuotaReport) -> Step {
    let costs: Vec<u64> =
        metering.global.iter().filter_map(|&i| tier.limits.get(i)).map(|l| metering.cost_of(l)).collect();
    let body = if costs.iter().all(|&c| c == metering.cost) {
        check_body(config, tier, &metering, metering.cost)
    } else {
        to_json(&CheckRequest {
            key: service_key(config, tier, &metering),
            cost: metering.cost,
            limits: limit_specs(tier, &metering),
            costs,
        })
    };
    let pending = Pending { stage: Stage::Check(metering), quota: report };
    Step::Call(Box::new(Callout { path: "/v1/check", body, pending }))
}

/// The answer to an exact check: admitted (charge the local limits), refused, or failed
/// (the failure modes).
pub(super) fn checked<S: SharedStore + ?Sized>(
    cx: Ctx<'_, S>,
    metering: Metering,
    answer: Answer<'_>,
    mut report: QuotaReport,
) -> Step {
    let Some(quota) = cx.config.quota.as_ref() else {
        return Step::Done(super::Decision::new(super::Outcome::Unlimited));
    };
    let checked = check_answer(cx, quota, answer, metering.global.len(), &mut report);
    let Some(checked) = checked else {
        return Step::Done(fallback(cx, metering, report));
    };
    let tier = cx.config.tiers.get(metering.tier);
    let global: Standings = metering
        .global
        .iter()
        .zip(&checked.limits)
        .map(|(&index, r)| {
            let kind = tier.and_then(|t| t.limits.get(index)).map(|l| l.kind);
            Standing {
                index,
                admitted: r.admitted,
                remaining: r.remaining,
                reset_after_ns: align(kind, r.reset_after_ms, cx.now),
                retry_after_ns: if r.admitted { 0 } else { align(kind, r.retry_after_ms, cx.now) },
            }
        })
        .collect();
    if !checked.admitted {
        let mut standings = metering.local_standings.clone();
        standings.extend(global);
        // A refusal without any refused limit would be a broken answer: name the first.
        if standings.iter().all(|s| s.admitted) {
            if let Some(first) = standings.iter_mut().find(|s| metering.global.contains(&s.index)) {
                first.admitted = false;
            }
        }
        return Step::Done(conclude(cx.config, metering, standings, Reports::quota(report), cx.now));
    }
    let metering = Metering { held: Held::Checked(checked.limits.iter().map(|r| r.window).collect()), ..metering };
    Step::Done(local::charge(cx, metering, &[], global, Reports::quota(report)))
}

/// The caller's key at the quota service: `<tier>/<caller>`.
pub(super) fn service_key(config: &Config, tier: &Tier, metering: &Metering) -> String {
    [tier.name.as_str(), "/", metering.caller.name(config)].concat()
}

/// The global limits of the request, as the quota service takes them.
pub(super) fn limit_specs(tier: &Tier, metering: &Metering) -> Vec<LimitSpec> {
    limit_specs_of(tier, metering.global.iter().copied())
}

/// The limits of `tier` at these indices, as the quota service takes them.
pub(super) fn limit_specs_of(tier: &Tier, indices: impl Iterator<Item = usize>) -> Vec<LimitSpec> {
    indices.filter_map(|i| tier.limits.get(i)).map(LimitSpec::of).collect()
}

/// A `/v1/check` of `cost` units over the request's global limits.
pub(super) fn check_body(config: &Config, tier: &Tier, metering: &Metering, cost: u64) -> String {
    to_json(&CheckRequest {
        key: service_key(config, tier, metering),
        cost,
        limits: limit_specs(tier, metering),
        costs: Vec::new(),
    })
}

/// A `/v1/check` answer for `limits` global limits, if it is one; either way counted in
/// the breaker.
pub(super) fn check_answer<S: SharedStore + ?Sized>(
    cx: Ctx<'_, S>,
    quota: &QuotaService,
    answer: Answer<'_>,
    limits: usize,
    report: &mut QuotaReport,
) -> Option<CheckResponse> {
    let checked = match answer {
        Answer::Response { status: 200, body } => {
            let checked = serde_json::from_slice::<CheckResponse>(body).ok().filter(|r| r.limits.len() == limits);
            report.unreadable_answers += u32::from(checked.is_none());
            checked
        }
        _ => None,
    };
    record_breaker(cx, quota, checked.is_some(), report);
    checked
}

/// A duration from the quota service, in ns from `now`. Fixed windows end on a multiple
/// of the window since the epoch: the service's clock and ours differ a little, so snap
/// to the nearest boundary (a daily window resets at exactly 00:00:00 UTC).
pub(super) fn align(kind: Option<LimitKind>, after_ms: u64, now: Nanos) -> u64 {
    let after_ns = after_ms.saturating_mul(1_000_000);
    match kind {
        Some(LimitKind::FixedWindow { window_ns }) if window_ns > 0 => {
            let at = now.0.saturating_add(after_ns);
            let boundary = at.saturating_add(window_ns / 2) / window_ns * window_ns;
            boundary.saturating_sub(now.0)
        }
        _ => after_ns,
    }
}

/// A refill's callout: a `/v1/check` of the lease block.
pub(super) fn refill_call(config: &Config, tier: &Tier, refill: Refill, report: QuotaReport) -> Box<Callout> {
    let body = check_body(config, tier, &refill.metering, refill.block);
    Box::new(Callout { path: "/v1/check", body, pending: Pending { stage: Stage::Refill(refill), quota: report } })
}
