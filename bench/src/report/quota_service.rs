//! The quota service alone, next to Redis running the same script.

use std::fmt::Write;

use super::format::{opt, thousands, us, with_range};
use super::view::View;

pub(super) fn write(md: &mut String, view: &View<'_>) {
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
