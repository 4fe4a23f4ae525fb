//! The runs of one configuration, and the ratios and differences the report shows: each
//! per round, against the no-filter Envoy that took turns with it.

use super::BASELINE;
use crate::run::Run;
use crate::stats::Spread;
use crate::Results;

/// The results of a run, as the report's sections read them.
pub(super) struct View<'a> {
    pub(super) results: &'a Results,
}

impl<'a> View<'a> {
    pub(super) fn runs(&self, id: &str) -> Vec<&'a Run> {
        self.results.runs.iter().chain(&self.results.quota_runs).filter(|r| r.id == id).collect()
    }

    pub(super) fn spread(&self, id: &str, value: impl Fn(&Run) -> Option<f64>) -> Option<Spread> {
        Spread::of(self.runs(id).into_iter().filter_map(value))
    }

    /// Per run: its req/s over that of the no-filter Envoy of its round.
    pub(super) fn ratio(&self, id: &str) -> Option<Spread> {
        if id == BASELINE {
            return Some(Spread { median: 1.0, min: 1.0, max: 1.0, count: 1 });
        }
        self.spread(id, |r| r.baseline.as_ref().map(|b| r.rps / b.rps))
    }

    /// Per round: `id`'s ratio to the baseline over `peer`'s (drift cancels in both).
    pub(super) fn relative(&self, id: &str, peer: &str) -> Option<Spread> {
        let per_round = |id: &str| -> Vec<(usize, f64)> {
            if id == BASELINE {
                return (0..self.results.settings.rounds).map(|r| (r, 1.0)).collect();
            }
            self.runs(id).iter().filter_map(|r| Some((r.round, r.rps / r.baseline.as_ref()?.rps))).collect()
        };
        let peers = per_round(peer);
        Spread::of(per_round(id).into_iter().filter_map(|(round, a)| {
            let b = peers.iter().find(|(r, _)| *r == round)?.1;
            Some(a / b)
        }))
    }

    /// Per round: `value` of `id` over that of `peer` in the same round.
    pub(super) fn per_round(&self, id: &str, peer: &str, value: impl Fn(&Run) -> Option<f64>) -> Option<Spread> {
        let peers = self.runs(peer);
        Spread::of(self.runs(id).into_iter().filter_map(|r| {
            let p = peers.iter().find(|p| p.round == r.round)?;
            Some(value(r)? / value(p)?)
        }))
    }

    /// Per round: `id`'s req/s over `reference`'s, the two taking turns under load
    /// ([`crate::SIDE_BY_SIDE`]).
    pub(super) fn side_by_side(&self, id: &str, reference: &str) -> Option<Spread> {
        let name = format!("{id}/{reference}");
        Spread::of(
            self.results
                .side_by_side
                .iter()
                .filter(|r| r.id == name)
                .filter_map(|r| Some(r.rps / r.baseline.as_ref()?.rps)),
        )
    }

    /// Per round: Envoy's CPU time per request of `id` minus `reference`'s, the two taking
    /// turns under load ([`crate::SIDE_BY_SIDE`]).
    pub(super) fn side_by_side_cpu(&self, id: &str, reference: &str) -> Option<Spread> {
        let name = format!("{id}/{reference}");
        Spread::of(
            self.results
                .side_by_side
                .iter()
                .filter(|r| r.id == name)
                .filter_map(|r| Some(r.envoy_cpu_us? - r.baseline.as_ref()?.envoy_cpu_us?)),
        )
    }

    /// Per round: the added CPU of `id` minus that of `peer` (each over the no-filter Envoy
    /// it took turns with in that round).
    pub(super) fn cpu_over_per_round(&self, id: &str, peer: &str) -> Option<Spread> {
        let added = |r: &Run| Some(r.envoy_cpu_us? - r.baseline.as_ref()?.envoy_cpu_us?);
        let peers = self.runs(peer);
        Spread::of(self.runs(id).into_iter().filter_map(|r| {
            let p = peers.iter().find(|p| p.round == r.round)?;
            Some(added(r)? - added(p)?)
        }))
    }

    /// Per run: latency at one connection minus that of the no-filter Envoy of its round.
    pub(super) fn added(&self, id: &str, p99: bool) -> Option<Spread> {
        self.spread(id, |r| {
            let b = r.baseline.as_ref()?;
            Some(if p99 { r.idle_p99_us? - b.idle_p99_us } else { r.idle_p50_us? - b.idle_p50_us })
        })
    }

    /// Per run: Envoy's CPU time per request minus that of the no-filter Envoy of its round.
    pub(super) fn added_cpu(&self, id: &str) -> Option<Spread> {
        if id == BASELINE {
            return Some(Spread { median: 0.0, min: 0.0, max: 0.0, count: 1 });
        }
        self.spread(id, |r| Some(r.envoy_cpu_us? - r.baseline.as_ref()?.envoy_cpu_us?))
    }

    /// Median added CPU of `id` minus that of `over` (µs per request).
    pub(super) fn cpu_over(&self, id: &str, over: &str) -> Option<f64> {
        Some(self.added_cpu(id)?.median - self.added_cpu(over)?.median)
    }

    pub(super) fn median(&self, id: &str, value: impl Fn(&Run) -> Option<f64>) -> Option<f64> {
        self.spread(id, value).map(|s| s.median)
    }
}
