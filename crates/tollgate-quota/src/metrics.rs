//! Prometheus metrics (`GET /metrics`, OpenMetrics text).

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Distinct tiers labelled by name; decisions of any further tier are counted as `other`,
/// so that a caller inventing tiers cannot grow the metrics without bound.
const MAX_TIER_LABELS: usize = 64;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    Admitted,
    Limited,
}

/// What a settlement did: applied now, or a retry of one applied before.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Settled {
    Applied,
    Replayed,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Op {
    Check,
    Return,
    Settle,
    Usage,
    CreateKey,
    FindKey,
    ListKeys,
    RevokeKey,
    Ping,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Admitted => "admitted",
            Outcome::Limited => "limited",
        }
    }
}

impl Op {
    pub const ALL: [Op; 9] = [
        Op::Check,
        Op::Return,
        Op::Settle,
        Op::Usage,
        Op::CreateKey,
        Op::FindKey,
        Op::ListKeys,
        Op::RevokeKey,
        Op::Ping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Check => "check",
            Op::Return => "return",
            Op::Settle => "settle",
            Op::Usage => "usage",
            Op::CreateKey => "create_key",
            Op::FindKey => "find_key",
            Op::ListKeys => "list_keys",
            Op::RevokeKey => "revoke_key",
            Op::Ping => "ping",
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        self.as_str().encode(encoder)
    }
}

impl Settled {
    fn as_str(self) -> &'static str {
        match self {
            Settled::Applied => "applied",
            Settled::Replayed => "replayed",
        }
    }
}

impl EncodeLabelValue for Settled {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        self.as_str().encode(encoder)
    }
}

impl EncodeLabelValue for Op {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        self.as_str().encode(encoder)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    tier: String,
    outcome: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SettleLabels {
    tier: String,
    outcome: Settled,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    tier: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: Op,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: u16,
}

/// The service's routes, as `MatchedPath` names them: the `endpoint` label. A label is
/// taken from this list, so that counting a request allocates nothing.
const ENDPOINTS: [&str; 10] = [
    "/v1/check",
    "/v1/return",
    "/v1/settle",
    "/v1/keys",
    "/v1/keys/verify",
    "/v1/keys/{id}",
    "/v1/usage/{*key}",
    "/healthz",
    "/readyz",
    "/metrics",
];

/// The `endpoint` label of a route as `MatchedPath` names it.
pub fn endpoint(route: &str) -> &'static str {
    ENDPOINTS.iter().find(|e| **e == route).copied().unwrap_or("other")
}

/// A tier's two decision counters, looked up once per tier (the family's lookup hashes
/// and clones the labels).
struct TierCounters {
    admitted: Counter,
    limited: Counter,
}

pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    returns: Family<TierLabels, Counter>,
    returned_units: Family<TierLabels, Counter>,
    settlements: Family<SettleLabels, Counter>,
    store_errors: Family<OpLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    store_restarts: Counter,
    /// `store_latency` of each `Op`, in `Op::ALL` order.
    latency_of: [Histogram; Op::ALL.len()],
    /// Tiers labelled by name so far (at most `MAX_TIER_LABELS`).
    tiers: RwLock<HashMap<String, TierCounters>>,
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let returns = Family::<TierLabels, Counter>::default();
        let returned_units = Family::<TierLabels, Counter>::default();
        let settlements = Family::<SettleLabels, Counter>::default();
        let store_latency = Family::<OpLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let store_errors = Family::<OpLabels, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "tollgate_quota_decisions",
            "Checks decided, by the metered key's tier and outcome",
            decisions.clone(),
        );
        registry.register("tollgate_quota_returns", "Returns (/v1/return) answered, by tier", returns.clone());
        registry.register(
            "tollgate_quota_returned_units",
            "Units given back by returns, summed over their limits, by tier",
            returned_units.clone(),
        );
        registry.register(
            "tollgate_quota_settlements",
            "Settlements (/v1/settle) answered, by tier and outcome: applied, or replayed (applied before)",
            settlements.clone(),
        );
        registry.register_with_unit(
            "tollgate_quota_store_latency",
            "Time the store took per operation, failures included",
            Unit::Seconds,
            store_latency.clone(),
        );
        registry.register("tollgate_quota_store_errors", "Store operations that failed", store_errors.clone());
        registry.register("tollgate_quota_requests", "HTTP requests answered, by route and status", requests.clone());
        let store_restarts = Counter::default();
        registry.register(
            "tollgate_quota_store_restarts",
            "Restarts or failovers of the store noticed (its Redis run_id changed): counts since its last \
             persistence point were lost",
            store_restarts.clone(),
        );
        // Error counters exist from the start at 0, so that rates and alerts work before the first error.
        for op in Op::ALL {
            let _ = store_errors.get_or_create(&OpLabels { op });
        }
        let latency_of = Op::ALL.map(|op| store_latency.get_or_create(&OpLabels { op }).clone());
        Metrics {
            registry,
            decisions,
            returns,
            returned_units,
            settlements,
            store_errors,
            requests,
            store_restarts,
            latency_of,
            tiers: RwLock::default(),
        }
    }

    /// A return that gave back `units` in all (summed over its limits).
    pub fn give_back(&self, tier: &str, units: u64) {
        let labels = TierLabels { tier: self.tier_label(tier) };
        self.returns.get_or_create(&labels).inc();
        self.returned_units.get_or_create(&labels).inc_by(units);
    }

    /// A settlement answered: `applied` now, or a retry of one applied before.
    pub fn settle(&self, tier: &str, applied: bool) {
        let outcome = if applied { Settled::Applied } else { Settled::Replayed };
        self.settlements.get_or_create(&SettleLabels { tier: self.tier_label(tier), outcome }).inc();
    }

    pub fn decision(&self, tier: &str, admitted: bool) {
        let count = |c: &TierCounters| {
            let _ = if admitted { c.admitted.inc() } else { c.limited.inc() };
        };
        if let Some(counters) = self.tiers.read().unwrap_or_else(PoisonError::into_inner).get(tier) {
            count(counters);
            return;
        }
        // Labels the tier if there is still room; else it is counted as `other`.
        let _ = self.tier_label(tier);
        match self.tiers.read().unwrap_or_else(PoisonError::into_inner).get(tier) {
            Some(counters) => count(counters),
            None => count(&self.tier_counters("other")),
        }
    }

    pub fn store_call(&self, op: Op, took: Duration, failed: bool) {
        if let Some(histogram) = Op::ALL.iter().position(|o| *o == op).and_then(|i| self.latency_of.get(i)) {
            histogram.observe(took.as_secs_f64());
        }
        if failed {
            self.store_errors.get_or_create(&OpLabels { op }).inc();
        }
    }

    /// The store restarted or failed over.
    pub fn store_restart(&self) {
        self.store_restarts.inc();
    }

    /// A request answered on `endpoint` (see [`endpoint`]).
    pub fn request(&self, endpoint: &'static str, status: u16) {
        self.requests.get_or_create(&RequestLabels { endpoint, status }).inc();
    }

    /// The exposition, and its content type.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    fn tier_counters(&self, tier: &str) -> TierCounters {
        let counter =
            |outcome| self.decisions.get_or_create(&DecisionLabels { tier: tier.to_owned(), outcome }).clone();
        TierCounters { admitted: counter(Outcome::Admitted), limited: counter(Outcome::Limited) }
    }

    /// `tier` itself while fewer than `MAX_TIER_LABELS` tiers are labelled (it is then
    /// labelled from now on), else `other`.
    fn tier_label(&self, tier: &str) -> String {
        let known = self.tiers.read().unwrap_or_else(PoisonError::into_inner);
        if known.contains_key(tier) {
            return tier.to_owned();
        }
        let full = known.len() >= MAX_TIER_LABELS;
        drop(known);
        if full {
            return "other".to_owned();
        }
        let mut known = self.tiers.write().unwrap_or_else(PoisonError::into_inner);
        if known.contains_key(tier) {
            return tier.to_owned();
        }
        if known.len() < MAX_TIER_LABELS {
            let counters = self.tier_counters(tier);
            known.insert(tier.to_owned(), counters);
            tier.to_owned()
        } else {
            "other".to_owned()
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_as_documented() {
        let m = Metrics::new();
        m.decision("free", true);
        m.decision("free", false);
        m.store_call(Op::Check, Duration::from_micros(300), true);
        m.request("/v1/check", 200);
        m.give_back("free", 3);
        m.settle("free", true);
        m.settle("free", false);
        m.settle("free", false);
        let text = m.encode().unwrap();
        for expected in [
            r#"tollgate_quota_decisions_total{tier="free",outcome="admitted"} 1"#,
            r#"tollgate_quota_decisions_total{tier="free",outcome="limited"} 1"#,
            r#"tollgate_quota_store_latency_seconds_count{op="check"} 1"#,
            r#"tollgate_quota_store_errors_total{op="check"} 1"#,
            r#"tollgate_quota_requests_total{endpoint="/v1/check",status="200"} 1"#,
            r#"tollgate_quota_returns_total{tier="free"} 1"#,
            r#"tollgate_quota_returned_units_total{tier="free"} 3"#,
            r#"tollgate_quota_store_errors_total{op="return"} 0"#,
            r#"tollgate_quota_settlements_total{tier="free",outcome="applied"} 1"#,
            r#"tollgate_quota_settlements_total{tier="free",outcome="replayed"} 2"#,
            r#"tollgate_quota_store_errors_total{op="settle"} 0"#,
            "tollgate_quota_store_restarts_total 0",
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
    }

    #[test]
    fn endpoints_are_route_templates_or_other() {
        assert_eq!(endpoint("/v1/keys/{id}"), "/v1/keys/{id}");
        assert_eq!(endpoint("/v1/keys/k1"), "other");
        assert_eq!(endpoint(""), "other");
    }

    #[test]
    fn tier_labels_are_bounded() {
        let m = Metrics::new();
        for i in 0..MAX_TIER_LABELS + 5 {
            m.decision(&format!("t{i}"), true);
        }
        m.decision("t0", false);
        m.give_back("t0", 2);
        m.give_back("late", 1);
        let text = m.encode().unwrap();
        for expected in [
            r#"tollgate_quota_decisions_total{tier="other",outcome="admitted"} 5"#,
            r#"tollgate_quota_decisions_total{tier="t0",outcome="admitted"} 1"#,
            r#"tollgate_quota_decisions_total{tier="t0",outcome="limited"} 1"#,
            r#"tollgate_quota_returned_units_total{tier="t0"} 2"#,
            r#"tollgate_quota_returned_units_total{tier="other"} 1"#,
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
    }
}
