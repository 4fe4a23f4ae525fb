//! Counters in Envoy's stats (`/stats`, `/stats/prometheus`):
//! `tollgate.requests.<tier>.<outcome>` (tier `none` before a tier is known) and
//! `tollgate.store.<event>`.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use tollgate_core::decision::Outcome;
use tollgate_core::store::UpdateReport;
use tollgate_core::Config;

/// Outcomes a request of a known tier can have.
const TIER_OUTCOMES: [Outcome; 6] = [
    Outcome::Unlimited,
    Outcome::Allowed,
    Outcome::Limited,
    Outcome::ShadowLimited,
    Outcome::StoreBypassed,
    Outcome::StoreRefused,
];

/// Outcomes of requests stopped before a tier was known (or on no limited route).
const UNTIERED_OUTCOMES: [Outcome; 4] =
    [Outcome::Unlimited, Outcome::Unauthenticated, Outcome::Malformed, Outcome::ShadowRejected];

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
        let row = |tier: &str, outcomes: &[Outcome]| -> Vec<(Outcome, u32)> {
            outcomes
                .iter()
                .filter_map(|o| Some((*o, counter(&format!("tollgate.requests.{tier}.{}", o.as_str()))?)))
                .collect()
        };
        let requests = std::iter::once(row(NO_TIER, &UNTIERED_OUTCOMES))
            .chain(config.tiers.iter().map(|t| row(&t.name, &TIER_OUTCOMES)))
            .collect();
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
        let id = self.requests.get(row).and_then(|r| r.iter().find(|(o, _)| *o == outcome)).map(|(_, id)| *id);
        bump(id, 1);
        bump(self.cas_conflicts, store.conflicts);
        bump(self.slots_created, u32::from(store.created_slot));
        bump(self.evictions_live, u32::from(store.evicted_live));
        bump(self.corrupt_values, u32::from(store.corrupt_value));
        bump(self.errors, u32::from(matches!(outcome, Outcome::StoreBypassed | Outcome::StoreRefused)));
    }
}
