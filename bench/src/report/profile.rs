//! The perf profiles: how Envoy's CPU time per request splits between the Envoy binary,
//! wasm code, the kernel and the rest.

use std::fmt::Write;

use super::format::{signed_us, us};
use super::view::View;
use super::{table_scenarios, BASELINE};
use crate::run::Profile;

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

/// "X µs in the Envoy binary (...), Y µs in wasm code and Z µs in the kernel": the profile
/// of `id` minus that of `over`.
pub(super) fn profile_split(view: &View<'_>, id: &str, over: &str) -> Option<String> {
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

pub(super) fn write(md: &mut String, view: &View<'_>) {
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
