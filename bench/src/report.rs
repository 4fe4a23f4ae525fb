//! `BENCHMARKS.md`, written from the results of a run.

use std::fmt::Write;

use crate::run::{Profile, Run};
use crate::scenario::{baseline, scenarios, Scenario};
use crate::stats::Spread;
use crate::Results;

const BASELINE: &str = "no-filter";
const LOCAL: &str = "tollgate-local-1";
const LOCAL_10K: &str = "tollgate-local-10k";
/// The filter of `bench/floor`: tollgate's host calls, no decision.
const HOST_CALLS: &str = "wasm-hostcalls";

struct View<'a> {
    results: &'a Results,
}

impl<'a> View<'a> {
    fn runs(&self, id: &str) -> Vec<&'a Run> {
        self.results.runs.iter().chain(&self.results.quota_runs).filter(|r| r.id == id).collect()
    }

    fn spread(&self, id: &str, value: impl Fn(&Run) -> Option<f64>) -> Option<Spread> {
        Spread::of(self.runs(id).into_iter().filter_map(value))
    }

    /// Per run: its req/s over that of the no-filter Envoy of its round.
    fn ratio(&self, id: &str) -> Option<Spread> {
        if id == BASELINE {
            return Some(Spread { median: 1.0, min: 1.0, max: 1.0, count: 1 });
        }
        self.spread(id, |r| r.baseline.as_ref().map(|b| r.rps / b.rps))
    }

    /// Per round: `id`'s ratio to the baseline over `peer`'s (drift cancels in both).
    fn relative(&self, id: &str, peer: &str) -> Option<Spread> {
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
    fn per_round(&self, id: &str, peer: &str, value: impl Fn(&Run) -> Option<f64>) -> Option<Spread> {
        let peers = self.runs(peer);
        Spread::of(self.runs(id).into_iter().filter_map(|r| {
            let p = peers.iter().find(|p| p.round == r.round)?;
            Some(value(r)? / value(p)?)
        }))
    }

    /// Per round: `id`'s req/s over `reference`'s, the two taking turns under load
    /// ([`crate::SIDE_BY_SIDE`]).
    fn side_by_side(&self, id: &str, reference: &str) -> Option<Spread> {
        let name = format!("{id}/{reference}");
        Spread::of(
            self.results
                .side_by_side
                .iter()
                .filter(|r| r.id == name)
                .filter_map(|r| Some(r.rps / r.baseline.as_ref()?.rps)),
        )
    }

    /// Per run: latency at one connection minus that of the no-filter Envoy of its round.
    fn added(&self, id: &str, p99: bool) -> Option<Spread> {
        self.spread(id, |r| {
            let b = r.baseline.as_ref()?;
            Some(if p99 { r.idle_p99_us? - b.idle_p99_us } else { r.idle_p50_us? - b.idle_p50_us })
        })
    }

    /// Per run: Envoy's CPU time per request minus that of the no-filter Envoy of its round.
    fn added_cpu(&self, id: &str) -> Option<Spread> {
        if id == BASELINE {
            return Some(Spread { median: 0.0, min: 0.0, max: 0.0, count: 1 });
        }
        self.spread(id, |r| Some(r.envoy_cpu_us? - r.baseline.as_ref()?.envoy_cpu_us?))
    }

    /// Median added CPU of `id` minus that of `over` (µs per request).
    fn cpu_over(&self, id: &str, over: &str) -> Option<f64> {
        Some(self.added_cpu(id)?.median - self.added_cpu(over)?.median)
    }

    fn median(&self, id: &str, value: impl Fn(&Run) -> Option<f64>) -> Option<f64> {
        self.spread(id, value).map(|s| s.median)
    }
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 {
        format!("−{out}")
    } else {
        out
    }
}

fn with_range(s: Option<Spread>, show: impl Fn(f64) -> String) -> String {
    match s {
        Some(s) if s.count > 1 => format!("{} ({}–{})", show(s.median), show(s.min), show(s.max)),
        Some(s) => show(s.median),
        None => "–".to_owned(),
    }
}

fn ratio_text(s: Option<Spread>) -> String {
    with_range(s, |v| format!("{v:.2}×"))
}

fn opt(v: Option<f64>, show: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "–".to_owned(), show)
}

fn us(v: f64) -> String {
    if v.abs() >= 100.0 {
        thousands(v)
    } else {
        format!("{v:.1}")
    }
}

fn signed_us(v: f64) -> String {
    if v >= 0.0 {
        format!("+{}", us(v))
    } else {
        format!("−{}", us(-v))
    }
}

pub fn render(results: &Results) -> String {
    let view = View { results };
    let mut md = String::new();
    header(&mut md, results);
    throughput(&mut md, &view);
    latency(&mut md, &view);
    global(&mut md, &view);
    quota(&mut md, &view);
    profiles(&mut md, &view);
    costs(&mut md, &view);
    micro(&mut md, results);
    host_calls(&mut md, results);
    sizes(&mut md, results);
    goals(&mut md, &view);
    before_after(&mut md, &view);
    doubts(&mut md, &view);
    md
}

/// The previous full run's numbers (`bench/before.json`, copied from the table it wrote)
/// next to this run's, for each configuration an optimisation was meant to change.
fn before_after(md: &mut String, view: &View<'_>) {
    let before: serde_json::Value = match serde_json::from_str(include_str!("../before.json")) {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(md, "\n_bench/before.json does not parse: {e}_");
            return;
        }
    };
    let text =
        |v: &serde_json::Value, key: &str| v.get(key).and_then(serde_json::Value::as_str).unwrap_or("").to_owned();
    let num = |v: &serde_json::Value, key: &str| v.get(key).and_then(serde_json::Value::as_f64);
    let _ = writeln!(md, "\n## Before and after\n");
    let _ = writeln!(
        md,
        "\"Before\" is the run of {}; \"after\" is this run. Both are medians over rounds, each configuration against the no-filter Envoy of its own round.\n",
        text(&before, "measured")
    );
    if let (Some(then), Some(now)) = (num(&before, "no_filter_cpu_us"), view.median(BASELINE, |r| r.envoy_cpu_us)) {
        if then / now > 1.25 || now / then > 1.25 {
            let _ = writeln!(
                md,
                "The machine was not the same speed in both runs: the no-filter Envoy needed {} µs of CPU per request \
                 then and {} µs now, and the wasm floor moved with it. Compare the ratios, not the microseconds; the \
                 tables after this one compare before and after on the same machine, back to back.\n",
                us(then),
                us(now)
            );
        }
    }
    let _ = writeln!(md, "| change | configuration | before | after |");
    let _ = writeln!(md, "|---|---|---|---|");
    let configs = before.get("configurations");
    for change in before.get("changes").and_then(serde_json::Value::as_array).into_iter().flatten() {
        let what = text(change, "what");
        let mut first = true;
        for id in change.get("configurations").and_then(serde_json::Value::as_array).into_iter().flatten() {
            let Some(id) = id.as_str() else { continue };
            let Some(was) = configs.and_then(|c| c.get(id)) else { continue };
            let (then, now) = if id.starts_with("quota-") {
                let then = format!(
                    "{} decisions/s, p99 {} µs, service {} µs/decision",
                    opt(num(was, "rps"), thousands),
                    opt(num(was, "p99_us"), us),
                    opt(num(was, "service_cpu_us"), us)
                );
                let now = format!(
                    "{} decisions/s, p99 {} µs, service {} µs/decision",
                    opt(view.median(id, |r| Some(r.rps)), thousands),
                    opt(view.median(id, |r| Some(r.p99_us)), us),
                    opt(view.median(id, |r| r.quota_cpu_us), us)
                );
                (then, now)
            } else {
                let then = format!(
                    "{:.2}×, +{} µs CPU/req, +{} µs p50 (1 conn.), p99 {} µs",
                    num(was, "ratio").unwrap_or(f64::NAN),
                    opt(num(was, "added_cpu_us"), us),
                    opt(num(was, "added_p50_us"), us),
                    opt(num(was, "p99_us"), us)
                );
                let now = format!(
                    "{}, {} µs CPU/req, {} µs p50 (1 conn.), p99 {} µs",
                    opt(view.ratio(id).map(|s| s.median), |v| format!("{v:.2}×")),
                    opt(view.added_cpu(id).map(|s| s.median), signed_us),
                    opt(view.added(id, false).map(|s| s.median), signed_us),
                    opt(view.median(id, |r| Some(r.p99_us)), us)
                );
                (then, now)
            };
            let shown = if std::mem::take(&mut first) { what.as_str() } else { "″" };
            let _ = writeln!(md, "| {shown} | `{id}` | {then} | {now} |");
        }
    }
    // Changes measured step by step, back to back, when they were made (not by this run).
    for change in before.get("changes").and_then(serde_json::Value::as_array).into_iter().flatten() {
        let Some(steps) = change.get("steps").and_then(serde_json::Value::as_array) else { continue };
        let _ = writeln!(
            md,
            "\n{}, step by step with `{}` ({}):\n",
            text(change, "what"),
            text(change, "command"),
            text(change, "setup")
        );
        let _ = writeln!(md, "| step | before | after |\n|---|---|---|");
        for step in steps {
            let _ = writeln!(md, "| {} | {} | {} |", text(step, "step"), text(step, "before"), text(step, "after"));
        }
    }
    let _ = writeln!(md);
}

fn header(md: &mut String, r: &Results) {
    let s = &r.settings;
    let m = &r.machine;
    let _ = writeln!(md, "# Benchmarks\n");
    let _ =
        writeln!(md, "<!-- Written by `make bench` (bench/src/report.rs): edits here are lost on the next run. -->\n");
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

fn table_scenarios() -> Vec<Scenario> {
    let mut all = vec![baseline()];
    all.extend(scenarios());
    all
}

fn throughput(md: &mut String, view: &View<'_>) {
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

fn latency(md: &mut String, view: &View<'_>) {
    let _ = writeln!(md, "## Latency at 1 connection (unloaded)\n");
    let _ = writeln!(md, "| configuration | p50 µs | p99 µs | added p50 µs | added p99 µs |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for s in table_scenarios() {
        if view.runs(s.id).is_empty() {
            continue;
        }
        let (added50, added99) = if s.id == BASELINE {
            ("–".to_owned(), "–".to_owned())
        } else {
            (with_range(view.added(s.id, false), signed_us), with_range(view.added(s.id, true), signed_us))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            s.title,
            opt(view.median(s.id, |r| r.idle_p50_us), us),
            opt(view.median(s.id, |r| r.idle_p99_us), us),
            added50,
            added99
        );
    }
    let _ = writeln!(
        md,
        "\nwrk `-t1 -c1`, {} s per configuration and round in slices taken in turns with the no-filter Envoy; \
         \"added\" is the difference to that Envoy's (wrk's latencies have a resolution of 1 µs and include its \
         own time).\n",
        view.results.settings.idle_secs
    );
}

fn global(md: &mut String, view: &View<'_>) {
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
         shipped default: the filter leases blocks of units from the service (1% of a limit, at most 1000) and decides most requests against them \
         in shared data, with one callout per block (see README, Leases); the quota service and Redis columns are \
         per request served, so they show how few decisions the service still makes.\n"
    );
}

fn quota(md: &mut String, view: &View<'_>) {
    let rows = [
        ("quota-memory", "tollgate-quota, memory store, wrk 50 connections"),
        ("quota-redis", "tollgate-quota, Redis, wrk 50 connections"),
        ("redis-evalsha-p1", "redis-benchmark: EVALSHA check.lua, 50 clients"),
        ("redis-evalsha-p16", "redis-benchmark: EVALSHA check.lua, 50 clients, pipeline 16"),
    ];
    if rows.iter().all(|(id, _)| view.runs(id).is_empty()) {
        return;
    }
    let _ = writeln!(md, "## Quota service alone\n");
    let _ = writeln!(
        md,
        "| what | decisions/s | p50 µs | p99 µs | 1 connection p50 / p99 µs | service CPU µs/decision | Redis CPU µs/decision |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for (id, title) in rows {
        if view.runs(id).is_empty() {
            continue;
        }
        let idle = match (view.median(id, |r| r.idle_p50_us), view.median(id, |r| r.idle_p99_us)) {
            (Some(a), Some(b)) => format!("{} / {}", us(a), us(b)),
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {title} | {} | {} | {} | {idle} | {} | {} |",
            with_range(view.spread(id, |r| Some(r.rps)), thousands),
            opt(view.median(id, |r| Some(r.p50_us)), us),
            opt(view.median(id, |r| Some(r.p99_us)), us),
            opt(view.median(id, |r| r.quota_cpu_us), us),
            opt(view.median(id, |r| r.redis_cpu_us), us),
        );
    }
    let _ = writeln!(
        md,
        "\n`POST /v1/check` with the two limits of the Envoy runs (a token bucket and a daily fixed window), over \
         10k metered keys. The service runs on core 0 (one tokio worker, as `taskset` leaves it one CPU); Redis on \
         core 1, shared with wrk. redis-benchmark runs on core 0 in the service's place and calls the service's own \
         `crates/tollgate-quota/lua/check.lua` (loaded with `SCRIPT LOAD`) with the same `KEYS`/`ARGV` the service \
         sends, over 10k keys (`-r 10000`): Redis's own ceiling for these decisions. Its latencies have a resolution \
         of about 8 µs.\n"
    );
}

/// "X µs in the Envoy binary (...), Y µs in wasm code and Z µs in the kernel": the profile
/// of `id` minus that of `over`.
fn profile_split(view: &View<'_>, id: &str, over: &str) -> Option<String> {
    let profile = |id: &str| view.results.profiles.iter().find(|p| p.id == id);
    let (a, b) = (profile(id)?, profile(over)?);
    let delta = |part: &str| signed_us(part_us(view, a, part) - part_us(view, b, part));
    Some(format!(
        "{} µs in the Envoy binary (Envoy, host calls, V8's runtime), {} µs in wasm code and {} µs in the kernel",
        delta(PARTS[0]),
        delta(PARTS[1]),
        delta(PARTS[2])
    ))
}

fn costs(md: &mut String, view: &View<'_>) {
    let micro = |name: &str| view.results.micro.iter().find(|m| m.name == name).map(|m| m.median_ns / 1000.0);
    let split = |md: &mut String, what: &str, id: &str, over: &str| {
        if let Some(text) = profile_split(view, id, over) {
            let _ = writeln!(md, "  By the profile, {what} is {text}.");
        }
    };
    let Some(base) = view.median(BASELINE, |r| r.envoy_cpu_us) else { return };
    let _ = writeln!(md, "## Where the time goes\n");
    let _ = writeln!(
        md,
        "Envoy CPU time per request; differences are taken per round against the no-filter Envoy of that round \
         (\"added CPU\" above), then between configurations:\n"
    );
    let _ = writeln!(md, "- Envoy without a filter: {} µs per request.", us(base));
    if let Some(native) = view.added_cpu("native-per-key-1") {
        let _ =
            writeln!(md, "- Envoy's native per-key local rate limit (1 key): {} µs on top.", signed_us(native.median));
    }
    if let Some(noop) = view.added_cpu("wasm-noop") {
        let _ = writeln!(
            md,
            "- The wasm floor: {} µs on top, for a filter that does nothing but is called into V8 for every \
             stream event (context create, request and response headers, log, done, delete).",
            signed_us(noop.median)
        );
        split(md, "the floor", "wasm-noop", BASELINE);
    }
    if let Some(local) = view.cpu_over(LOCAL, "wasm-noop") {
        let native_decide = micro("decide/local_1_key");
        let _ = writeln!(
            md,
            "- tollgate's local path (1 key): {} µs on top of the floor{}.",
            signed_us(local),
            native_decide.map_or_else(String::new, |d| format!(
                "; the same decision natively (criterion `decide/local_1_key`) takes {d:.2} µs, and formatting \
                 the rate-limit headers alone {}",
                micro("headers/rate_limit_headers_2_limits").map_or_else(|| "–".to_owned(), |h| format!("{h:.2} µs"))
            ))
        );
        split(md, "this", LOCAL, "wasm-noop");
    }
    if let (Some(local), Some(calls)) = (view.added_cpu(LOCAL), view.added_cpu(HOST_CALLS)) {
        let _ = writeln!(
            md,
            "- tollgate's host calls alone: a filter that makes the same calls with fixed values and no decision \
             ([`bench/floor`](bench/floor/src/lib.rs): every request header at once, the clock, a counter, seven \
             response headers; the per-request callbacks tollgate exports) adds {} µs to Envoy without a filter, \
             {:.2}× no-filter req/s. tollgate's own code in the VM (reading the headers, the decision, formatting \
             the values, the SDK's dispatch) is the other {} µs of the local path.",
            signed_us(calls.median),
            view.ratio(HOST_CALLS).map_or(0.0, |r| r.median),
            signed_us(local.median - calls.median)
        );
    }
    if let Some(many) = view.cpu_over(LOCAL_10K, LOCAL) {
        let _ = writeln!(md, "- 10k keys instead of 1: {} µs per request.", signed_us(many));
        split(md, "this", LOCAL_10K, LOCAL);
    }
    if let Some(anon) = view.cpu_over("tollgate-anonymous", "wasm-noop") {
        let _ = writeln!(md, "- The anonymous path (10k client IPs): {} µs on top of the floor.", signed_us(anon));
    }
    for id in ["global-strict-memory", "global-strict-redis"] {
        if let Some(global) = view.cpu_over(id, LOCAL) {
            let _ = writeln!(
                md,
                "- `{id}`: {} µs more in Envoy than the local path (dispatching the callout, an HTTP/2 round trip \
                 to the service, resuming the request), plus {} µs in the quota service{} per decision.",
                signed_us(global),
                opt(view.median(id, |r| r.quota_cpu_us), us),
                view.median(id, |r| r.redis_cpu_us).map_or_else(String::new, |v| format!(" and {} µs in Redis", us(v)))
            );
            split(md, "the callout", id, LOCAL);
        }
    }
    let _ = writeln!(md);
}

/// The parts of a profile, in table order.
const PARTS: [&str; 5] = ["Envoy binary (incl. V8 runtime)", "wasm code (V8 JIT)", "kernel", "libc and vdso", "other"];

/// Envoy's CPU time per request of `id`, drift taken out: the no-filter median plus the
/// configuration's median added CPU (falls back to the profiled run's own).
fn steady_cpu(view: &View<'_>, profile: &Profile) -> f64 {
    match (view.median(BASELINE, |r| r.envoy_cpu_us), view.added_cpu(&profile.id)) {
        (Some(base), Some(added)) => base + added.median,
        _ => profile.envoy_cpu_us,
    }
}

/// µs per request spent in `part`: its share of the profiled run's samples applied to the
/// configuration's steady CPU time per request (shares vary less between runs than times).
fn part_us(view: &View<'_>, profile: &Profile, part: &str) -> f64 {
    let share: f64 = profile.shares.iter().filter(|(p, _)| p == part).map(|(_, pct)| pct).sum();
    let us = share / 100.0 * steady_cpu(view, profile);
    if us.abs() < 0.05 {
        0.0
    } else {
        us
    }
}

fn profiles(md: &mut String, view: &View<'_>) {
    let results = view.results;
    if results.profiles.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Profile of Envoy's CPU time
"
    );
    let _ = writeln!(md, "| configuration | Envoy CPU µs/req | {} | (profiled run: CPU µs/req) |", PARTS.join(" | "));
    let _ = writeln!(md, "|---|---|{}---|", "---|".repeat(PARTS.len()));
    let titles = table_scenarios();
    for p in &results.profiles {
        let title = titles.iter().find(|s| s.id == p.id).map_or(p.id.as_str(), |s| s.title);
        let cpu = steady_cpu(view, p);
        let cells: Vec<String> = PARTS.iter().map(|part| us(part_us(view, p, part))).collect();
        let _ = writeln!(md, "| {title} | {} | {} | {} |", us(cpu), cells.join(" | "), us(p.envoy_cpu_us));
    }
    let _ = writeln!(
        md,
        "\nµs per request in each part of Envoy: the share of `perf record -e cpu-clock` samples of Envoy's process \
         during one extra loaded run per configuration (not one of the measured runs; perf costs a little), \
         applied to the configuration's CPU time per request as measured (the no-filter median plus its median \
         added CPU, so that the differences match the ones above). The Envoy \
         binary is stripped, so perf tells binaries apart, not functions: \"Envoy binary\" holds Envoy, V8's \
         runtime and the host side of every proxy-wasm call; \"wasm code\" is what V8 compiled from the `.wasm`; \
         the kernel part is mostly the loopback TCP of the connections.\n"
    );
}

fn micro(md: &mut String, results: &Results) {
    if results.micro.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Micro-benchmarks of the core\n");
    let _ = writeln!(
        md,
        "`cargo bench -p tollgate-core` ([`crates/tollgate-core/benches/hot_path.rs`](crates/tollgate-core/benches/hot_path.rs)), \
         natively on core 1; the `.wasm` runs the same code under V8, slower. Median and 95% confidence interval.\n"
    );
    let _ = writeln!(md, "| benchmark | median | 95% CI |\n|---|---|---|");
    let show = |ns: f64| if ns >= 1000.0 { format!("{:.2} µs", ns / 1000.0) } else { format!("{ns:.1} ns") };
    for m in &results.micro {
        let _ = writeln!(md, "| `{}` | {} | {} – {} |", m.name, show(m.median_ns), show(m.low_ns), show(m.high_ns));
    }
    let _ = writeln!(md);
}

fn sizes(md: &mut String, results: &Results) {
    let _ = writeln!(md, "## Sizes\n\n| file | bytes |\n|---|---|");
    for (name, bytes) in &results.sizes {
        let _ = writeln!(md, "| `{name}` | {} ({:.1} KiB) |", thousands(*bytes as f64), *bytes as f64 / 1024.0);
    }
    let _ = writeln!(
        md,
        "\n`tollgate.wasm` is built by `make wasm` (release: LTO, one codegen unit, `panic = \"abort\"`, stripped).\n"
    );
}

/// "met, 0.05 to spare" / "not met: 0.15 short (21% below the goal)".
/// A goal that compares two configurations: judged on the side-by-side runs when there are
/// any (the two took turns, so drift cancels), shown with the ratio of the two tables'
/// ratios (each against its own no-filter Envoy).
fn compared(side_by_side: Option<Spread>, from_tables: Spread, goal: f64) -> (String, String) {
    match side_by_side {
        Some(direct) => (
            format!(
                "{:.3}× side by side ({:.3}×–{:.3}×); {:.3}× from the tables",
                direct.median, direct.min, direct.max, from_tables.median
            ),
            verdict(direct.median, goal, true, "×"),
        ),
        None => (format!("{:.3}×", from_tables.median), verdict(from_tables.median, goal, true, "×")),
    }
}

fn verdict(measured: f64, goal: f64, at_least: bool, unit: &str) -> String {
    let gap = if at_least { measured - goal } else { goal - measured };
    let pct = (gap / goal * 100.0).abs();
    if gap >= 0.0 {
        format!("**met**, {}{unit} to spare", trim(gap))
    } else if unit == "%" {
        // The goal is itself a percentage: a percentage of it says nothing more.
        format!("**not met**: {} percentage points over", trim(-gap))
    } else if at_least {
        format!("**not met**: {}{unit} short ({pct:.0}% below the goal)", trim(-gap))
    } else {
        format!("**not met**: {}{unit} over ({pct:.0}% above the goal)", trim(-gap))
    }
}

fn trim(v: f64) -> String {
    if v.abs() >= 100.0 {
        thousands(v)
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn goals(md: &mut String, view: &View<'_>) {
    let _ = writeln!(md, "## Goals\n");
    let _ = writeln!(md, "| goal | measured | verdict | where the cost is |\n|---|---|---|---|");
    let mut row = |goal: &str, measured: String, verdict: String, cost: String| {
        let _ = writeln!(md, "| {goal} | {measured} | {verdict} | {cost} |");
    };
    let added = |id: &str| view.added_cpu(id).map(|a| a.median);
    let profiled = |id: &str, over: &str| profile_split(view, id, over).map_or_else(String::new, |t| format!(": {t}"));
    // Envoy's added CPU for the local path, split into the floor and tollgate's own work.
    let host_calls = match (added(LOCAL), added(HOST_CALLS), view.ratio(HOST_CALLS)) {
        (Some(local), Some(calls), Some(ratio)) => format!(
            ". A filter making tollgate's host calls with no decision adds {} µs by itself ({:.2}× no-filter \
             req/s): tollgate's own code is the other {} µs",
            signed_us(calls),
            ratio.median,
            signed_us(local - calls)
        ),
        _ => String::new(),
    };
    let local_cost = match (added(LOCAL), added("wasm-noop")) {
        (Some(local), Some(noop)) => format!(
            "Envoy spends {} µs CPU per request more than without a filter: {} µs the wasm floor, {} µs tollgate's \
             own work{}{host_calls}",
            signed_us(local),
            signed_us(noop),
            signed_us(local - noop),
            profiled(LOCAL, "wasm-noop")
        ),
        _ => String::new(),
    };
    if let Some(local) = view.ratio(LOCAL) {
        let many = view.ratio(LOCAL_10K).map_or_else(String::new, |m| format!("; 10k keys {:.2}×", m.median));
        row(
            "local path ≥ 0.70× no-filter req/s",
            format!("{:.2}× (1 key){many}", local.median),
            verdict(local.median, 0.70, true, "×"),
            local_cost.clone(),
        );
    }
    if let Some(scale) = view.relative(LOCAL_10K, LOCAL) {
        let cost = view.cpu_over(LOCAL_10K, LOCAL).map_or_else(String::new, |d| {
            format!("{} µs CPU per request at 10k keys{}", signed_us(d), profiled(LOCAL_10K, LOCAL))
        });
        let (measured, verdict) = compared(view.side_by_side(LOCAL_10K, LOCAL), scale, 0.95);
        row("local path at 10k keys ≥ 0.95× of itself at 1 key", measured, verdict, cost);
    }
    if let Some(latency) = view.added(LOCAL, false) {
        let many =
            view.added(LOCAL_10K, false).map_or_else(String::new, |m| format!("; 10k keys {} µs", signed_us(m.median)));
        let cost = added(LOCAL).map_or_else(String::new, |cpu| {
            format!(
                "unloaded, the added latency is the added CPU time of the request ({} µs, see above)",
                signed_us(cpu)
            )
        });
        row(
            "added unloaded p50 ≤ 30 µs (local path)",
            format!("{} µs (1 key){many}", signed_us(latency.median)),
            verdict(latency.median, 30.0, false, " µs"),
            cost,
        );
    }
    for (id, store) in [("global-strict-redis", "Redis"), ("global-strict-memory", "memory store")] {
        if let Some(strict) = view.ratio(id) {
            let busy = view.median(id, |r| Some(r.rps * r.envoy_cpu_us? / 1e4)).unwrap_or(0.0);
            let cost = view.cpu_over(id, LOCAL).map_or_else(String::new, |d| {
                format!(
                    "Envoy's core is the limit ({busy:.0}% busy): the callout adds {} µs of Envoy CPU per request \
                     over the local path{}; the service spends {} µs{} per decision on the other core",
                    signed_us(d),
                    profiled(id, LOCAL),
                    opt(view.median(id, |r| r.quota_cpu_us), us),
                    view.median(id, |r| r.redis_cpu_us)
                        .map_or_else(String::new, |v| format!(" and Redis {} µs", us(v)))
                )
            });
            row(
                &format!("strict global path ≥ 0.30× no-filter ({store})"),
                format!("{:.2}×", strict.median),
                verdict(strict.median, 0.30, true, "×"),
                cost,
            );
        }
    }
    if let Some(default) = view.relative("global-default-redis", LOCAL) {
        let (measured, verdict) = compared(view.side_by_side("global-default-redis", LOCAL), default, 0.90);
        row(
            "default global path ≥ 0.90× the local path (Redis)",
            measured,
            verdict,
            format!(
                "Envoy spends {} µs CPU per request more than on the local path (a worker block taken out of the \
                 lease's shared-data record per 100 requests, a refill callout per block){}",
                opt(view.cpu_over("global-default-redis", LOCAL), signed_us),
                view.median("global-default-redis", |r| r.quota_cpu_us).map_or_else(String::new, |v| format!(
                    "; the quota service spends {} µs per request served",
                    us(v)
                ))
            ),
        );
    }
    if let (Some(default), Some(local)) =
        (view.median("global-default-redis", |r| Some(r.p99_us)), view.median(LOCAL, |r| Some(r.p99_us)))
    {
        // As for throughput: side by side when measured so, else per round (the two ran in
        // the same round), else the medians' ratio.
        let medians = default / local - 1.0;
        let side_by_side = Spread::of(view.results.side_by_side.iter().filter_map(|r| {
            (r.id == format!("global-default-redis/{LOCAL}")).then_some(r.p99_us / r.baseline.as_ref()?.p99_us?)
        }));
        let per_round = view.per_round("global-default-redis", LOCAL, |r| Some(r.p99_us));
        let (over, how) = match (side_by_side, per_round) {
            (Some(s), _) => (s.median - 1.0, "side by side"),
            (None, Some(s)) => (s.median - 1.0, "median of the rounds' ratios"),
            (None, None) => (medians, "medians' ratio"),
        };
        row(
            "default global path p99 within 10% of the local path's (Redis, 64 connections)",
            format!(
                "{:+.0}% ({how}); medians {} µs vs {} µs ({:+.0}%)",
                over * 100.0,
                us(default),
                us(local),
                medians * 100.0
            ),
            verdict(over * 100.0, 10.0, false, "%"),
            "no request waits for a refill: the worker's root context sends it ahead of need (one callout per \
             block of 1000, its answer handled on Envoy's event loop; the quota service and Redis run on the load \
             tool's core). Round to round this gap spreads wider than the goal (see the refill step in Before and \
             after)"
                .to_owned(),
        );
    }
    let quota_cost = || {
        let service = view.median("quota-redis", |r| r.quota_cpu_us);
        let redis = view.median("quota-redis", |r| r.redis_cpu_us);
        let ceiling = view.median("redis-evalsha-p1", |r| Some(r.rps));
        let pipelined = view.median("redis-evalsha-p16", |r| Some(r.rps));
        format!(
            "the service spends {} µs CPU per decision on its one core (at most {} decisions/s), Redis {} µs; \
             Redis alone runs the script {} times/s for 50 clients, {} pipelined",
            opt(service, us),
            opt(service.map(|s| 1e6 / s), thousands),
            opt(redis, us),
            opt(ceiling, thousands),
            opt(pipelined, thousands)
        )
    };
    if let Some(quota) = view.spread("quota-redis", |r| Some(r.rps)) {
        row(
            "quota service ≥ 40,000 decisions/s against Redis",
            format!("{} decisions/s", thousands(quota.median)),
            verdict(quota.median, 40_000.0, true, " decisions/s"),
            quota_cost(),
        );
    }
    if let Some(p99) = view.median("quota-redis", |r| Some(r.p99_us)) {
        row(
            "quota service p99 ≤ 2 ms at 50 clients (Redis)",
            format!("{:.2} ms", p99 / 1000.0),
            verdict(p99 / 1000.0, 2.0, false, " ms"),
            "at 50 clients the service is saturated (as above): the p99 is mostly queueing".to_owned(),
        );
    }
    if let Some((_, bytes)) = view.results.sizes.iter().find(|(n, _)| n == "tollgate.wasm") {
        let kib = *bytes as f64 / 1024.0;
        row("tollgate.wasm ≤ 512 KiB", format!("{kib:.1} KiB"), verdict(kib, 512.0, false, " KiB"), String::new());
    }
    let _ = writeln!(
        md,
        "\nMore in [Where the time goes](#where-the-time-goes) and the [profile](#profile-of-envoys-cpu-time).\n"
    );
}

fn doubts(md: &mut String, view: &View<'_>) {
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

/// Host calls tollgate makes on an admitted request of the local path (a key, two limits,
/// both header families) admitted from the worker's block, by reading `src/filter.rs`;
/// the anonymous path adds one `source_address`, and the request that takes a block (one
/// in `lease_block`) a `shared_get` and a `shared_set`.
const LOCAL_PATH_CALLS: [(&str, u32); 6] = [
    ("request_headers", 1),
    ("time", 1),
    ("shared_get", 0),
    ("shared_set", 0),
    ("increment_metric", 1),
    ("add_response_header", 7),
];

fn host_calls(md: &mut String, results: &Results) {
    if results.hostcalls.is_empty() {
        return;
    }
    let cost = |name: &str| results.hostcalls.iter().find(|c| c.name == name).map(|c| c.ns);
    let _ = writeln!(md, "\n## Host calls\n");
    let _ = writeln!(
        md,
        "What one proxy-wasm host call costs inside this Envoy, timed by [`bench/probe`](bench/probe/src/lib.rs): \
         each call repeated {} times while Envoy handles one request, on the host's clock; the minimum over the \
         requests (everything warm, so the least a call adds). Calls that return data include Envoy's call back into \
         the module to allocate the copy.\n",
        if results.settings.quick { 500 } else { 2000 }
    );
    let _ = writeln!(md, "| call | ns per call | tollgate's local path makes |");
    let _ = writeln!(md, "|---|---|---|");
    let mut total = 0.0;
    for (name, what) in crate::hostcalls::CALLS {
        let Some(ns) = cost(name) else { continue };
        let count = LOCAL_PATH_CALLS.iter().find(|(n, _)| *n == name).map_or(0, |(_, c)| *c);
        total += ns * f64::from(count);
        let made = match (name, count) {
            ("source_address", _) => "1 (anonymous callers only)".to_owned(),
            ("shared_get" | "shared_set", _) => {
                "1 per block (1000 requests here); 1 per request for an exact limit (`lease_block: 0`)".to_owned()
            }
            ("nothing", _) => "–".to_owned(),
            (_, 0) => "0".to_owned(),
            (_, n) => n.to_string(),
        };
        let _ = writeln!(md, "| {what} | {ns:.0} | {made} |");
    }
    let _ = writeln!(
        md,
        "\nOn a request admitted from the worker's block (see README, Worker blocks), tollgate makes {} host calls \
         (counted in `src/filter.rs`); exact limits add the slot's get and set. Warm, they \
         take {:.1} µs together, a small part of the CPU the local path adds per request under load (see above): the \
         rest is entering the module for each stream event, the module's own code, and cache misses that a loop of \
         warm calls does not see.\n",
        LOCAL_PATH_CALLS.iter().map(|(_, c)| c).sum::<u32>(),
        total / 1000.0
    );
}
