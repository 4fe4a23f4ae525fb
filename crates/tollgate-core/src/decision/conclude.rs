//! The conclusion of a metered request: rate-limit headers from where each limit stands,
//! and the 429 (or, in shadow mode, a header) when any limit refused.

use super::metering::{Metering, Standings};
use super::outcome::{Decision, Outcome, QuotaReport};
use crate::config::{Config, Mode};
use crate::headers::{openai_headers, rate_limit_headers, tightest};
use crate::reply::{self, Refusal};
use crate::store::UpdateReport;
use crate::time::Nanos;

use super::outcome::BlockReport;

/// What a decision did besides deciding, for stats.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Reports {
    pub store: UpdateReport,
    pub blocks: BlockReport,
    pub quota: QuotaReport,
}

impl Reports {
    pub fn quota(quota: QuotaReport) -> Reports {
        Reports { quota, ..Reports::default() }
    }
}

/// Headers, and the 429 if any limit refused.
pub(super) fn conclude(
    config: &Config,
    metering: Metering,
    mut standings: Standings,
    reports: Reports,
    now: Nanos,
) -> Decision {
    let costs = metering.costs();
    let mut decision = Decision {
        tier: Some(metering.tier),
        caller: Some(metering.caller),
        store: reports.store,
        blocks: reports.blocks,
        quota: reports.quota,
        ..Decision::new(Outcome::Allowed)
    };
    let Some(tier) = config.tiers.get(metering.tier) else {
        return decision;
    };
    standings.sort_by_key(|s| s.index);
    // A limit counted twice (its fallback bucket beside the service's answer) shows once.
    standings.dedup_by_key(|s| s.index);
    standings.retain(|s| tier.limits.get(s.index).is_some());
    // The refusing limit is the one that makes the caller wait longest.
    let refusal = standings
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.admitted)
        .max_by_key(|(_, s)| s.retry_after_ns)
        .map(|(p, s)| (p, *s));
    let focus = refusal.map_or_else(|| tightest(&standings), |(pos, _)| pos);
    rate_limit_headers(&config.headers, &tier.limits, &standings, focus, now, &mut decision.response_headers);
    if config.headers.openai && costs.charges.is_some() {
        openai_headers(&tier.limits, &standings, &mut decision.response_headers);
    }

    let Some((_, standing)) = refusal else {
        return decision;
    };
    let Some(limit) = tier.limits.get(standing.index) else {
        return decision;
    };
    decision.limited_by = Some(limit.name.clone());
    match config.mode {
        Mode::Enforce => {
            decision.outcome = Outcome::Limited;
            let refusal = Refusal {
                tier,
                limit,
                anonymous: metering.anonymous,
                retry_after_ns: standing.retry_after_ns,
                now,
                cost: costs.of(limit),
                remaining: standing.remaining,
            };
            let headers = std::mem::take(&mut decision.response_headers);
            decision.reply = Some(reply::too_many_requests(config, &refusal, headers));
        }
        Mode::Shadow => {
            decision.outcome = Outcome::ShadowLimited;
            decision.response_headers.push("x-tollgate-shadow", &format!("would-limit; limit=\"{}\"", limit.name));
        }
    }
    decision
}
