//! Before and after: the previous full run's numbers (`bench/before.json`) next to this
//! run's, and changes measured step by step when they were made.

use std::fmt::Write;

use super::format::{opt, signed_us, thousands, us};
use super::view::View;
use super::BASELINE;

/// The previous full run's numbers (`bench/before.json`, copied from the table it wrote)
/// next to this run's, for each configuration an optimisation was meant to change.
pub(super) fn write(md: &mut String, view: &View<'_>) {
    let before: serde_json::Value = match serde_json::from_str(include_str!("../../before.json")) {
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
