//! Doubtful runs: errors, refusals and failed callouts, what the filter's stats showed,
//! and how far the no-filter Envoys drifted.

use std::fmt::Write;

use super::format::thousands;
use super::view::View;
use super::BASELINE;
use crate::run::Run;

pub(super) fn write(md: &mut String, view: &View<'_>) {
    let _ = writeln!(md, "## Doubtful runs\n");
    let mut any = false;
    for run in view.results.runs.iter().chain(&view.results.quota_runs) {
        if !run.notes.is_empty() {
            any = true;
            let _ = writeln!(md, "- round {}, `{}`: {}", run.round + 1, run.id, run.notes.join("; "));
        }
    }
    if !any {
        let _ = writeln!(md, "None: no errors, refusals or failed callouts in any run.");
    }
    let observed: Vec<&Run> =
        view.results.runs.iter().chain(&view.results.quota_runs).filter(|r| !r.observations.is_empty()).collect();
    if !observed.is_empty() {
        let _ = writeln!(md, "\nObserved in the filter's stats (not errors):\n");
        for run in observed {
            let _ = writeln!(md, "- round {}, `{}`: {}", run.round + 1, run.id, run.observations.join("; "));
        }
    }
    if let Some(base) = view.spread(BASELINE, |r| Some(r.rps)) {
        let _ = writeln!(
            md,
            "\nNoise: the {} no-filter Envoys ranged from {} to {} req/s (±{:.0}% around their median) over the whole \
             benchmark; taking turns in short slices cancels most of that drift in the ratios.",
            base.count,
            thousands(base.min),
            thousands(base.max),
            base.spread_pct()
        );
    }
}
