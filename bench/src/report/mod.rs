//! `BENCHMARKS.md`, written from the results of a run: one module per section of the
//! report, in the order [`render`] writes them. [`view`] takes the numbers out of the
//! runs, [`format`] shows them.

mod before_after;
mod doubtful_runs;
mod format;
mod global_path;
mod goals;
mod host_calls;
mod latency;
mod metering;
mod micro_benchmarks;
mod opening;
mod profile;
mod quota_service;
mod sizes;
mod throughput;
mod view;
mod where_time_goes;

use crate::scenario::{baseline, scenarios, Scenario};
use crate::Results;
use view::View;

const BASELINE: &str = "no-filter";
const LOCAL: &str = "tollgate-local-1";
const LOCAL_10K: &str = "tollgate-local-10k";
/// The filter of `bench/floor`: tollgate's host calls, no decision.
const HOST_CALLS: &str = "wasm-hostcalls";

pub fn render(results: &Results) -> String {
    let view = View { results };
    let mut md = String::new();
    opening::write(&mut md, results);
    throughput::write(&mut md, &view);
    latency::write(&mut md, &view);
    global_path::write(&mut md, &view);
    metering::write(&mut md, &view);
    quota_service::write(&mut md, &view);
    profile::write(&mut md, &view);
    where_time_goes::write(&mut md, &view);
    micro_benchmarks::write(&mut md, results);
    host_calls::write(&mut md, results);
    sizes::write(&mut md, results);
    goals::write(&mut md, &view);
    before_after::write(&mut md, &view);
    doubtful_runs::write(&mut md, &view);
    md
}

/// The baseline and every configuration, in table order.
fn table_scenarios() -> Vec<Scenario> {
    let mut all = vec![baseline()];
    all.extend(scenarios());
    all
}
