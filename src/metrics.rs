//! Counters in Envoy's stats (`/stats`, `/stats/prometheus`):
//! `tollgate.requests.<tier>.<outcome>` (tier `none` before a tier is known),
//! `tollgate.store.<event>` and `tollgate.quota.<event>`. Every count is sent only when it
//! is not zero: a request admitted from a worker block adds one call (its outcome).
//! `tollgate.quota.lease.admitted`, which would add a second to every request admitted from
//! a lease, is counted in the module and added on the worker's tick (at most 1 s late).

use std::cell::Cell;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use tollgate_core::config::{FailureMode, Limit};
use tollgate_core::cost::Unit;
use tollgate_core::decision::{Outcome, QuotaReport, Settled};
use tollgate_core::{Config, Decision};

/// Outcomes a request of a known tier can have.
const TIER_OUTCOMES: [Outcome; 7] = [
    Outcome::Unlimited,
    Outcome::Allowed,
    Outcome::Limited,
    Outcome::ShadowLimited,
    Outcome::StoreBypassed,
    Outcome::StoreRefused,
    Outcome::QuotaUnavailable,
];

/// Outcomes of requests stopped before a tier was known (or on no limited route).
const UNTIERED_OUTCOMES: [Outcome; 7] = [
    Outcome::Unlimited,
    Outcome::Unauthenticated,
    Outcome::Malformed,
    Outcome::CredentialsLimited,
    Outcome::BadRequest,
    Outcome::ShadowRejected,
    Outcome::QuotaUnavailable,
];

/// Pseudo-tier of requests refused before a tier was known.
pub const NO_TIER: &str = tollgate_core::config::RESERVED_TIER;

#[derive(Default)]
pub struct Metrics {
    /// Row 0: `none`, by `UNTIERED_OUTCOMES`; row `t + 1`: tier `t`, by `TIER_OUTCOMES`.
    requests: Vec<Vec<(Outcome, u32)>>,
    cas_conflicts: Option<u32>,
    slots_created: Option<u32>,
    evictions_live: Option<u32>,
    corrupt_values: Option<u32>,
    errors: Option<u32>,
    blocks_taken: Option<u32>,
    blocks_given_back: Option<u32>,
    callouts: Option<u32>,
    callout_failures: Option<u32>,
    callout_timeouts: Option<u32>,
    callout_latency: Option<u32>,
    short_circuited: Option<u32>,
    verifications_full: Option<u32>,
    breaker_opened: Option<u32>,
    breaker_closed: Option<u32>,
    breaker_open: Option<u32>,
    degraded_open: Option<u32>,
    degraded_closed: Option<u32>,
    degraded_local: Option<u32>,
    lease_admitted: Option<u32>,
    /// Requests admitted from a lease since the last tick.
    lease_admitted_pending: Cell<u32>,
    lease_refills: Option<u32>,
    lease_units_leased: Option<u32>,
    lease_returns: Option<u32>,
    lease_return_failures: Option<u32>,
    lease_units_returned: Option<u32>,
    /// Per tier, per unit its limits count besides requests: what admitted requests
    /// reserved and what they were charged once settled.
    units: Vec<UnitCounters>,
    settled: Option<u32>,
    settle_failures: Option<u32>,
    settle_calls: Option<u32>,
}

/// A tier's units and their counters: (unit, reserved, charged).
type UnitCounters = Vec<(Unit, Option<u32>, Option<u32>)>;

/// `tollgate.units.<tier>.<unit>.reserved` and `.charged` for each unit the tier's limits
/// count besides requests.
fn tier_units(tier: &str, limits: &[Limit]) -> UnitCounters {
    [Unit::Images, Unit::InputTokens, Unit::OutputTokens, Unit::Tokens, Unit::Cost]
        .into_iter()
        .filter(|u| limits.iter().any(|l| l.unit == *u))
        .map(|u| {
            let name = |what: &str| counter(&format!("tollgate.units.{tier}.{}.{what}", u.as_str()));
            (u, name("reserved"), name("charged"))
        })
        .collect()
}

fn define(kind: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).ok()
}

fn counter(name: &str) -> Option<u32> {
    define(MetricType::Counter, name)
}

fn bump(id: Option<u32>, by: u32) {
    if let Some(id) = id {
        if by > 0 {
            let _ = hostcalls::increment_metric(id, i64::from(by));
        }
    }
}

impl Metrics {
    pub fn define(config: &Config) -> Metrics {
        let row = |tier: &str, outcomes: &[Outcome]| -> Vec<(Outcome, u32)> {
            outcomes
                .iter()
                .filter_map(|o| Some((*o, counter(&format!("tollgate.requests.{tier}.{}", o.as_str()))?)))
                .collect()
        };
        let requests = std::iter::once(row(NO_TIER, &UNTIERED_OUTCOMES))
            .chain(config.tiers.iter().map(|t| row(&t.name, &TIER_OUTCOMES)))
            .collect();
        let quota = config.quota.is_some();
        let q = |name: &str, kind: MetricType| if quota { define(kind, name) } else { None };
        Metrics {
            requests,
            cas_conflicts: counter("tollgate.store.cas_conflicts"),
            slots_created: counter("tollgate.store.slots_created"),
            evictions_live: counter("tollgate.store.evictions_live"),
            corrupt_values: counter("tollgate.store.corrupt_values"),
            errors: counter("tollgate.store.errors"),
            blocks_taken: counter("tollgate.store.blocks_taken"),
            blocks_given_back: counter("tollgate.store.blocks_given_back"),
            callouts: q("tollgate.quota.callouts", MetricType::Counter),
            callout_failures: q("tollgate.quota.failures", MetricType::Counter),
            callout_timeouts: q("tollgate.quota.timeouts", MetricType::Counter),
            callout_latency: q("tollgate.quota.latency_ms", MetricType::Histogram),
            short_circuited: q("tollgate.quota.short_circuited", MetricType::Counter),
            verifications_full: q("tollgate.quota.verifications_full", MetricType::Counter),
            breaker_opened: q("tollgate.quota.breaker_opened", MetricType::Counter),
            breaker_closed: q("tollgate.quota.breaker_closed", MetricType::Counter),
            breaker_open: q("tollgate.quota.breaker_open", MetricType::Gauge),
            degraded_open: q("tollgate.quota.failure_mode.open", MetricType::Counter),
            degraded_closed: q("tollgate.quota.failure_mode.closed", MetricType::Counter),
            degraded_local: q("tollgate.quota.failure_mode.local", MetricType::Counter),
            lease_admitted: q("tollgate.quota.lease.admitted", MetricType::Counter),
            lease_admitted_pending: Cell::new(0),
            lease_refills: q("tollgate.quota.lease.refills", MetricType::Counter),
            lease_units_leased: q("tollgate.quota.lease.units_leased", MetricType::Counter),
            lease_returns: q("tollgate.quota.lease.returns", MetricType::Counter),
            lease_return_failures: q("tollgate.quota.lease.return_failures", MetricType::Counter),
            lease_units_returned: q("tollgate.quota.lease.units_returned", MetricType::Counter),
            units: config.tiers.iter().map(|t| tier_units(&t.name, &t.limits)).collect(),
            settled: counter("tollgate.settle.settled"),
            settle_failures: counter("tollgate.settle.failures"),
            settle_calls: counter("tollgate.settle.calls"),
        }
    }

    /// A reservation was settled (`None`: shared data could not be updated, and the
    /// reservation stands).
    pub fn record_settled(&self, tier: usize, settled: Option<&Settled>) {
        let Some(settled) = settled else {
            bump(self.settle_failures, 1);
            return;
        };
        bump(self.settled, 1);
        let Some(row) = self.units.get(tier) else {
            return;
        };
        for (unit, reserved, charged) in settled {
            if let Some((_, reserved_id, charged_id)) = row.iter().find(|(u, ..)| u == unit) {
                bump(*reserved_id, u32::try_from(*reserved).unwrap_or(u32::MAX));
                bump(*charged_id, u32::try_from(*charged).unwrap_or(u32::MAX));
            }
        }
    }

    /// A settlement the quota service accepted (`true`), or one given up on.
    pub fn record_settle_call(&self, accepted: bool) {
        bump(if accepted { self.settle_calls } else { self.settle_failures }, 1);
    }

    pub fn record(&self, decision: &Decision) {
        let row = decision.tier.map_or(0, |t| t + 1);
        let id = self.requests.get(row).and_then(|r| r.iter().find(|(o, _)| *o == decision.outcome)).map(|(_, id)| *id);
        bump(id, 1);
        let store = &decision.store;
        bump(self.cas_conflicts, store.conflicts);
        bump(self.slots_created, u32::from(store.created_slot));
        bump(self.evictions_live, u32::from(store.evicted_live));
        bump(self.corrupt_values, u32::from(store.corrupt_value));
        bump(self.errors, u32::from(matches!(decision.outcome, Outcome::StoreBypassed | Outcome::StoreRefused)));
        bump(self.blocks_taken, u32::from(decision.blocks.taken));
        bump(self.blocks_given_back, decision.blocks.given_back);
        self.record_quota(&decision.quota);
    }

    /// How the quota service figured in a decision, or in the answer to a refill sent
    /// ahead of need.
    pub fn record_quota(&self, quota: &QuotaReport) {
        bump(self.short_circuited, u32::from(quota.short_circuited));
        bump(self.callout_failures, quota.unreadable_answers);
        bump(self.verifications_full, u32::from(quota.verifications_full));
        bump(self.breaker_opened, u32::from(quota.breaker_opened));
        bump(self.breaker_closed, u32::from(quota.breaker_closed));
        if let Some(gauge) = self.breaker_open {
            if quota.breaker_opened || quota.breaker_closed {
                let _ = hostcalls::record_metric(gauge, u64::from(quota.breaker_opened));
            }
        }
        if quota.from_lease {
            self.lease_admitted_pending.set(self.lease_admitted_pending.get().saturating_add(1));
        }
        bump(self.lease_refills, u32::from(quota.leased_units > 0));
        bump(self.lease_units_leased, u32::try_from(quota.leased_units).unwrap_or(u32::MAX));
        match quota.degraded {
            Some(FailureMode::Open) => bump(self.degraded_open, 1),
            Some(FailureMode::Closed) => bump(self.degraded_closed, 1),
            Some(FailureMode::Local) => bump(self.degraded_local, 1),
            None => {}
        }
    }

    /// Adds what is counted in the module (from the worker's tick).
    pub fn flush(&self) {
        bump(self.lease_admitted, self.lease_admitted_pending.replace(0));
    }

    /// Idle worker blocks given back at a tick.
    pub fn record_blocks_given_back(&self, blocks: usize) {
        bump(self.blocks_given_back, u32::try_from(blocks).unwrap_or(u32::MAX));
    }

    /// A callout left (or could not be started).
    pub fn record_dispatch(&self, started: bool) {
        bump(self.callouts, 1);
        bump(self.callout_failures, u32::from(!started));
    }

    /// A callout came back: `status` is `None` when it failed or timed out.
    pub fn record_callout(&self, status: Option<u16>, elapsed_ms: u64, timeout_ms: u64) {
        if let Some(id) = self.callout_latency {
            let _ = hostcalls::record_metric(id, elapsed_ms);
        }
        if status != Some(200) {
            bump(self.callout_failures, 1);
        }
        // Envoy answers a timed-out callout with a local 504 (the quota service itself never
        // answers 504). No headers at all is a reset or, near the deadline, a timeout: the
        // host's timer may fire a little early by our clock, hence the 90 %.
        let near_deadline = elapsed_ms.saturating_mul(10) >= timeout_ms.saturating_mul(9);
        if status == Some(504) || (status.is_none() && near_deadline) {
            bump(self.callout_timeouts, 1);
        }
    }

    /// A lease's idle balance was given back (`units` confirmed by the service), or the
    /// return failed (`None`).
    pub fn record_return(&self, units: Option<u64>) {
        bump(self.lease_returns, 1);
        match units {
            Some(units) => bump(self.lease_units_returned, u32::try_from(units).unwrap_or(u32::MAX)),
            None => bump(self.lease_return_failures, 1),
        }
    }
}
