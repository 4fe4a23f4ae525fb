//! Latency at one connection: what each configuration adds to an unloaded request.

use std::fmt::Write;

use super::format::{opt, signed_us, us, with_range};
use super::view::View;
use super::{table_scenarios, BASELINE};

pub(super) fn write(md: &mut String, view: &View<'_>) {
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
