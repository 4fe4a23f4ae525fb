//! When the quota service cannot answer: each global limit of the request falls back to
//! its failure mode (`closed` refuses with 503, `open` admits, `local` meters a fallback
//! bucket in shared data), and the shared breaker that stops callouts after repeated
//! failures.

use super::conclude::Reports;
use super::local;
use super::metering::{Metered, Metering, Standings};
use super::outcome::{Decision, Outcome, QuotaReport};
use super::states::FALLBACK_SALT;
use super::Ctx;
use crate::breaker::{self, Admission, BreakerConfig, Transition};
use crate::config::{FailureMode, QuotaService};
use crate::reply;
use crate::store::SharedStore;

pub const BREAKER_KEY_PREFIX: &str = "tollgate/breaker/";

/// The global limits of a request fall back to their failure modes.
pub(super) fn fallback<S: SharedStore + ?Sized>(
    cx: Ctx<'_, S>,
    metering: Metering,
    mut report: QuotaReport,
) -> Decision {
    let Some(tier) = cx.config.tiers.get(metering.tier) else {
        return Decision::new(Outcome::Unlimited);
    };
    let modes: Vec<(usize, FailureMode)> =
        metering.global.iter().filter_map(|&i| tier.limits.get(i).and_then(|l| l.global).map(|m| (i, m))).collect();
    if modes.iter().any(|(_, m)| *m == FailureMode::Closed) {
        report.degraded = Some(FailureMode::Closed);
        let mut d = Decision::refuse(Outcome::QuotaUnavailable, reply::quota_unavailable(), cx.config.mode);
        d.tier = Some(metering.tier);
        d.caller = Some(metering.caller);
        d.quota = report;
        return d;
    }
    let buckets: Vec<Metered> = modes
        .iter()
        .filter(|(_, m)| *m == FailureMode::Local)
        .filter_map(|&(index, _)| {
            tier.limits.get(index).map(|l| Metered { index, fingerprint: l.fingerprint ^ FALLBACK_SALT })
        })
        .collect();
    let any_local = !buckets.is_empty();
    report.degraded = Some(if any_local { FailureMode::Local } else { FailureMode::Open });
    let mut d = local::charge(cx, metering, &buckets, Standings::new(), Reports::quota(report));
    if d.reply.is_none() {
        let mode = if any_local { "local" } else { "open" };
        d.response_headers.push("x-tollgate-degraded", &format!("quota-service-unavailable; failure-mode={mode}"));
    }
    d
}

/// Whether the breaker lets this request call out (closed, or this worker claimed the
/// probe).
pub(super) fn breaker_admits<S: SharedStore + ?Sized>(cx: Ctx<'_, S>, quota: &QuotaService) -> bool {
    breaker::admit(cx.store, &breaker_key(quota), &breaker_config(quota), cx.now) != Admission::Open
}

/// Counts a callout's success or failure in the breaker; notes a transition in `report`.
pub(super) fn record_breaker<S: SharedStore + ?Sized>(
    cx: Ctx<'_, S>,
    quota: &QuotaService,
    success: bool,
    report: &mut QuotaReport,
) {
    match breaker::record(cx.store, &breaker_key(quota), &breaker_config(quota), success, cx.now) {
        Ok(Transition::Opened) => report.breaker_opened = true,
        Ok(Transition::Closed) => report.breaker_closed = true,
        _ => {}
    }
}

pub fn breaker_key(quota: &QuotaService) -> String {
    format!("{BREAKER_KEY_PREFIX}{}", quota.cluster)
}

fn breaker_config(quota: &QuotaService) -> BreakerConfig {
    BreakerConfig {
        failures: quota.breaker_failures,
        cooldown_ns: quota.breaker_cooldown_ms.saturating_mul(1_000_000),
        probe_ns: quota.timeout_ms.saturating_add(1_000).saturating_mul(1_000_000),
    }
}
