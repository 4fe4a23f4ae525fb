//! The opening of the report: what is measured, when and with which command, the machine
//! (Setup) and how the runs are taken (How).

use std::fmt::Write;

use crate::Results;

pub(super) fn write(md: &mut String, r: &Results) {
    let s = &r.settings;
    let m = &r.machine;
    let _ = writeln!(md, "# Benchmarks\n");
    let _ =
        writeln!(md, "<!-- Written by `make bench` (bench/src/report/): edits here are lost on the next run. -->\n");
    let _ = writeln!(
        md,
        "What tollgate costs inside Envoy, next to Envoy without a filter, Envoy's native local \
         rate limit, a proxy-wasm filter that does nothing and one that makes tollgate's host calls \
         without deciding anything; and what the quota service decides per second, next to Redis \
         running the same script. Measured on {} at commit {}, with\n",
        r.date, r.commit
    );
    let _ = writeln!(md, "```sh\n{}\n```\n", r.command);
    let _ = writeln!(
        md,
        "which took {:.0} min{}. `BENCH_QUICK=1 make bench` is a smoke run of a few minutes (its report \
         goes to `target/bench/BENCHMARKS.quick.md`); the harness is in [`bench/`](bench/). Numbers are never \
         asserted in tests.\n",
        r.minutes,
        if s.quick {
            " (a quick run: one short round, for checking the harness, not for comparing numbers)"
        } else {
            ""
        }
    );
    let _ = writeln!(md, "## Setup\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ =
        writeln!(md, "| machine | {} × {}, {:.1} GiB, {}, Linux {} |", m.cpus, m.model, m.memory_gib, m.os, m.kernel);
    let _ = writeln!(
        md,
        "| machine load | load average {} before, {} after; CPUs {:.0}% busy in the second before the start; {:.1}% of CPU time stolen by the hypervisor during the run |",
        m.load_before, m.load_after, m.busy_before_pct, m.steal_pct
    );
    for (name, version) in &r.versions {
        let _ = writeln!(md, "| {name} | {version} |");
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "How:\n");
    let _ = writeln!(
        md,
        "- Envoy runs with one worker (`--concurrency 1`) pinned to core 0 (`taskset -c 0`); the load tool, \
         [wrk](https://github.com/wg/wrk) (`-t1 -c{}`), is pinned to core 1. Every configuration is derived from \
         the repository's `envoy.yaml` (same listener, routes and `direct_response` stand-ins) and driven with \
         `POST /v1/images/generations`; the requests come from [`bench/lua/requests.lua`](bench/lua/requests.lua), \
         formatted once so that 10k variants cost wrk what one does.",
        s.connections
    );
    let _ = writeln!(
        md,
        "- Each configuration is measured next to a no-filter Envoy: in every round a fresh Envoy of each runs, \
         both pinned to core 0; each gets a probe request (it must be answered 200 and carry the filter's \
         rate-limit header) and {} s of warm-up; then they take turns under load in slices of {} s in ABBA order, \
         {} s each at {} connections, then {} s each at 1 connection. Only one is loaded at a time (the other \
         sleeps in epoll).",
        s.warmup_secs,
        s.secs.clamp(1, 2),
        s.secs,
        s.connections,
        s.idle_secs
    );
    let _ = writeln!(
        md,
        "- {} round{}. A ratio is taken per round, to the no-filter Envoy that took turns with the configuration: \
         this machine's speed drifts within seconds, and the slices make the drift hit both alike. Tables show \
         the median over rounds and, in brackets, the range. The goals that compare two tollgate configurations \
         (10k keys against 1 key; the default global path against the local path) are also measured with the two \
         taking turns in the same way, once per round: \"side by side\" in [Goals](#goals).",
        s.rounds,
        if s.rounds == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        md,
        "- Envoy CPU µs/request: user + system time of the Envoy process (all threads) over its loaded slices, \
         from `/proc/<pid>/stat`, divided by the requests served; p50 and p99 are the median of the slices'."
    );
    let _ = writeln!(
        md,
        "- Limits are 10⁹ per window: every request is admitted, the runs measure the admit path. A run \
         with an error, a refusal or a failed callout is listed under [Doubtful runs](#doubtful-runs).\n"
    );
}
