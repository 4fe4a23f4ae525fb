//! The global path: where its CPU goes, in Envoy, the quota service and Redis.

use std::fmt::Write;

use super::format::{opt, ratio_text, us};
use super::view::View;
use super::LOCAL;
use crate::scenario::{scenarios, Scenario};

pub(super) fn write(md: &mut String, view: &View<'_>) {
    let ids: Vec<Scenario> = scenarios().into_iter().filter(|s| s.group == 6 && !view.runs(s.id).is_empty()).collect();
    if ids.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Global path: where the CPU goes\n");
    let _ = writeln!(
        md,
        "| configuration | × no filter | × tollgate local (1 key) | Envoy CPU µs/req | quota service CPU µs/decision | Redis CPU µs/decision |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for s in ids {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            s.title,
            ratio_text(view.ratio(s.id)),
            ratio_text(view.relative(s.id, LOCAL)),
            opt(view.median(s.id, |r| r.envoy_cpu_us), us),
            opt(view.median(s.id, |r| r.quota_cpu_us), us),
            opt(view.median(s.id, |r| r.redis_cpu_us), us),
        );
    }
    let _ = writeln!(
        md,
        "\nThe quota service (`target/release/tollgate-quota`) and Redis run on core 1 next to wrk, so Envoy keeps \
         core 0 to itself. \"Strict\" (lease blocks of 0) calls the service for every request. \"Default\" is the \
         shipped default: the filter leases blocks of units from the service (1% of a limit, at most 1000) and \
         decides most requests against them in shared data, with one callout per block (see docs/ARCHITECTURE.md, \
         Leases); the quota service and Redis columns are per request served, so they show how few decisions the \
         service still makes.\n"
    );
}
