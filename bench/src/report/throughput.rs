//! Throughput at full load: every configuration's req/s, its ratios to the no-filter and
//! native Envoys, latencies and the CPU time Envoy spent per request.

use std::fmt::Write;

use super::format::{opt, ratio_text, signed_us, thousands, us, with_range};
use super::view::View;
use super::{table_scenarios, BASELINE};

pub(super) fn write(md: &mut String, view: &View<'_>) {
    let _ = writeln!(md, "## Throughput at {} connections\n", view.results.settings.connections);
    let _ = writeln!(
        md,
        "| # | configuration | req/s | × no filter | × native | p50 µs | p99 µs | Envoy CPU µs/req | added CPU µs/req | Envoy core busy | wrk CPU |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for s in table_scenarios() {
        if view.runs(s.id).is_empty() {
            continue;
        }
        let native = s.native_peer.map_or_else(|| "–".to_owned(), |p| ratio_text(view.relative(s.id, p)));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.group,
            s.title,
            with_range(view.spread(s.id, |r| Some(r.rps)), thousands),
            ratio_text(view.ratio(s.id)),
            native,
            opt(view.median(s.id, |r| Some(r.p50_us)), us),
            opt(view.median(s.id, |r| Some(r.p99_us)), us),
            opt(view.median(s.id, |r| r.envoy_cpu_us), us),
            if s.id == BASELINE { "–".to_owned() } else { opt(view.added_cpu(s.id).map(|a| a.median), signed_us) },
            opt(view.median(s.id, |r| Some(r.rps * r.envoy_cpu_us? / 1e4)), |v| format!("{v:.0}%")),
            opt(view.median(s.id, |r| r.tool_cpu_pct), |v| format!("{v:.0}%")),
        );
    }
    let _ = writeln!(
        md,
        "\n\"× native\" compares with Envoy's native per-key `local_ratelimit` at the same number of keys \
         (1 key for the global path and tollgate's host calls alone, 10k for the anonymous path; the one-bucket \
         form for the wasm no-op), each \
         taken against the no-filter Envoy of its own round. Native per key: a `rate_limits` action on `x-api-key` \
         and a wildcard descriptor (`value: \"\"`), one token bucket per value (`max_dynamic_descriptors` 40,000). \
         Both native forms add `x-ratelimit-*` headers, as tollgate does. \"added CPU\" is Envoy's CPU time per \
         request minus that of the no-filter Envoy of the same round (median over rounds). \"Envoy core busy\" is req/s × CPU \
         time per request: near 100% Envoy's core was the limit; below, Envoy waited (or other work took its \
         core). \"wrk CPU\" near 100% would mean the load tool, not Envoy, was the limit.\n"
    );
}
