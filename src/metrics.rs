//! Counters in Envoy's stats (`/stats`, `/stats/prometheus`):
//! `tollgate.requests.<tier>.<outcome>` (tier `none` before a tier is known) and
//! `tollgate.store.<event>`.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use tollgate_core::decision::Outcome;
use tollgate_core::store::UpdateReport;
use tollgate_core::Config;

const OUTCOMES: [Outcome; 9] = [
    Outcome::Unlimited,
    Outcome::Allowed,
    Outcome::Limited,
    Outcome::ShadowLimited,
    Outcome::Unauthenticated,
    Outcome::Malformed,
    Outcome::ShadowRejected,
    Outcome::StoreBypassed,
    Outcome::StoreRefused,
];

/// Pseudo-tier of requests refused before a tier was known.
pub const NO_TIER: &str = tollgate_core::config::RESERVED_TIER;

#[derive(Default)]
pub struct Metrics {
    /// `[tier + 1][outcome]`; row 0 is `none`.
    requests: Vec<[Option<u32>; OUTCOMES.len()]>,
    cas_conflicts: Option<u32>,
    slots_created: Option<u32>,
    evictions_live: Option<u32>,
    corrupt_values: Option<u32>,
    errors: Option<u32>,
}

fn counter(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Counter, name).ok()
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
        let tiers = std::iter::once(NO_TIER).chain(config.tiers.iter().map(|t| t.name.as_str()));
        let requests =
            tiers.map(|tier| OUTCOMES.map(|o| counter(&format!("tollgate.requests.{tier}.{}", o.as_str())))).collect();
        Metrics {
            requests,
            cas_conflicts: counter("tollgate.store.cas_conflicts"),
            slots_created: counter("tollgate.store.slots_created"),
            evictions_live: counter("tollgate.store.evictions_live"),
            corrupt_values: counter("tollgate.store.corrupt_values"),
            errors: counter("tollgate.store.errors"),
        }
    }

    pub fn record(&self, tier: Option<usize>, outcome: Outcome, store: &UpdateReport) {
        let row = tier.map_or(0, |t| t + 1);
        let column = OUTCOMES.iter().position(|o| *o == outcome);
        let id = self.requests.get(row).zip(column).and_then(|(r, c)| r.get(c).copied().flatten());
        bump(id, 1);
        bump(self.cas_conflicts, store.conflicts);
        bump(self.slots_created, u32::from(store.created_slot));
        bump(self.evictions_live, u32::from(store.evicted_live));
        bump(self.corrupt_values, u32::from(store.corrupt_value));
        bump(self.errors, u32::from(matches!(outcome, Outcome::StoreBypassed | Outcome::StoreRefused)));
    }
}
