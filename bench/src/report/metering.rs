//! Metered routes: what reading a request's JSON body, and a streamed answer for its usage,
//! costs Envoy next to the same route unmetered; and whether routes that only count
//! requests kept their speed from before metering.

use std::fmt::Write;

use super::format::{opt, ratio_text, signed_us, thousands, trim, us, with_range};
use super::view::View;
use super::LOCAL;
use crate::scenario::{baselines, metering_scenarios, IMAGE_BODY_BYTES, STREAM_CHUNKS};
use crate::stats::Spread;

pub(super) const IMAGE: (&str, &str) = ("image-1k-metered", "image-1k-local");
pub(super) const STREAM: (&str, &str) = ("chat-stream-metered", "chat-stream-unmetered");
pub(super) const PREMETER: &str = "tollgate-local-1-premeter";

pub(super) fn write(md: &mut String, view: &View<'_>) {
    let rows: Vec<_> =
        baselines().into_iter().skip(1).chain(metering_scenarios()).filter(|s| !view.runs(s.id).is_empty()).collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Metered routes: bodies and streams\n");
    let _ = writeln!(
        md,
        "| configuration | req/s | × its no filter | p50 µs | Envoy CPU µs/req | added CPU µs/req | Envoy core busy | wrk CPU |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for s in rows {
        let base = s.base == s.id;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            s.title,
            with_range(view.spread(s.id, |r| Some(r.rps)), thousands),
            if base { "1.00×".to_owned() } else { ratio_text(view.ratio(s.id)) },
            opt(view.median(s.id, |r| Some(r.p50_us)), us),
            opt(view.median(s.id, |r| r.envoy_cpu_us), us),
            if base { "–".to_owned() } else { with_range(view.added_cpu(s.id), signed_us) },
            opt(view.median(s.id, |r| Some(r.rps * r.envoy_cpu_us? / 1e4)), |v| format!("{v:.0}%")),
            opt(view.median(s.id, |r| r.tool_cpu_pct), |v| format!("{v:.0}%")),
        );
    }
    let _ = writeln!(md, "\n| metered over unmetered | side by side | from the tables |\n|---|---|---|");
    for ((id, peer), per) in [(IMAGE, 1.0), (STREAM, STREAM_CHUNKS as f64)] {
        let show = |s: Option<Spread>| {
            with_range(s.map(|s| Spread { median: s.median / per, min: s.min / per, max: s.max / per, ..s }), |v| {
                format!("{} µs", signed_trim(v))
            })
        };
        let what = if per > 1.0 { "Envoy CPU per SSE event" } else { "Envoy CPU per request" };
        let _ = writeln!(
            md,
            "| `{id}` over `{peer}`: {what} | {} | {} |",
            show(view.side_by_side_cpu(id, peer)),
            show(view.cpu_over_per_round(id, peer))
        );
    }
    let _ = writeln!(
        md,
        "\nThe route goes to the stand-in AI upstream (`tollgate-standin`, a thread per connection, on whichever core \
         the scheduler picks: see `bench/src/services.rs`) instead of a `direct_response`, so every configuration here is measured against a no-filter Envoy sending the same \
         requests to a stand-in of its own (\"× its no filter\", \"added CPU\"). Image requests: `POST \
         /v1/images/generations` with a JSON body of {IMAGE_BODY_BYTES} bytes (`n: 1`); the metered route has \
         `\"meter\": \"openai_images\"` and the tier's two limits count images (exact: a shared-data read and \
         write per request, no worker block), the unmetered one the same two limits of requests (its body is never \
         read). Streams: `POST /v1/chat/completions` with `stream: true` and `stream_options.include_usage`, \
         answered in {STREAM_CHUNKS} delta events of about 130 bytes, each written in its own HTTP chunk \
         (`x-standin-chunks`), then the usage event and `[DONE]`; the metered route (`openai_chat`, limits of \
         tokens) reserves the body's tokens, reads the stream for its usage and settles at the end. Envoy may read \
         several events in one go, so the filter's body callbacks can be fewer than the events; the cost per event \
         is the difference per request divided by {STREAM_CHUNKS}. \"Side by side\": the metered and the unmetered \
         configuration taking turns under load, once per round; \"from the tables\": the difference of their added \
         CPU, per round. Envoy's core is not the limit here (\"Envoy core busy\" well below 100%: the stand-in \
         is), so Envoy handles fewer requests per wake-up than in the tables above and its CPU time per request is \
         higher, for the metered and the unmetered route alike; the differences between them are the measure.\n"
    );
}

fn signed_trim(v: f64) -> String {
    if v >= 0.0 {
        format!("+{}", trim(v))
    } else {
        format!("−{}", trim(-v))
    }
}

/// The goals of metering, as rows of the goals table: goal, measured, verdict, cost.
pub(super) fn goal_rows(view: &View<'_>, verdict: impl Fn(f64, f64) -> String) -> Vec<[String; 4]> {
    let mut rows = Vec::new();
    for ((id, peer), per, goal, text) in [
        (IMAGE, 1.0, 5.0, "metered image route (1 KB body) adds ≤ 5 µs Envoy CPU per request over the local path"),
        (
            STREAM,
            STREAM_CHUNKS as f64,
            0.5,
            "metering a streamed chat (200 SSE events) adds ≤ 0.5 µs Envoy CPU per event",
        ),
    ] {
        let side = view.side_by_side_cpu(id, peer);
        let tables = view.cpu_over_per_round(id, peer);
        let Some(judged) = side.or(tables) else { continue };
        let scaled = |s: Spread| {
            format!("{} µs ({}–{})", signed_trim(s.median / per), signed_trim(s.min / per), signed_trim(s.max / per))
        };
        let measured = format!(
            "{} {}; {} from the tables",
            scaled(judged),
            if side.is_some() { "side by side" } else { "from the tables" },
            opt(tables.map(|t| t.median / per), |v| format!("{} µs", signed_trim(v)))
        );
        let cost = if per > 1.0 {
            format!(
                "{} µs per request in all, not split by measurement: the body read and its reservation, each response body callback scanned for \
                 the usage event, the settle at the end",
                signed_trim(judged.median)
            )
        } else {
            "what the metered path does in addition (not split by measurement): the body buffered and copied into the module, its JSON read, and the images limits' exact shared-data \
             read and write (the unmetered route admits from the worker's block)"
                .to_owned()
        };
        rows.push([text.to_owned(), measured, verdict(judged.median / per, goal), cost]);
    }
    if let Some(side) = view.side_by_side_cpu(LOCAL, PREMETER) {
        let file = view.results.premeter.clone().unwrap_or_default();
        let ratio = view.side_by_side(LOCAL, PREMETER);
        let measured = format!(
            "{} µs CPU per request ({}–{} over {} rounds), {} req/s, side by side with `{file}`",
            signed_trim(side.median),
            signed_trim(side.min),
            signed_trim(side.max),
            side.count,
            opt(ratio.map(|r| r.median), |v| format!("{v:.3}×"))
                + &ratio.map_or_else(String::new, |r| format!(" ({:.3}×–{:.3}×)", r.min, r.max)),
        );
        // "No slower" within the noise: some round must show the current filter no dearer.
        let verdict = if side.min <= 0.0 {
            format!(
                "**met**: within the noise (the rounds range from {} to {} µs)",
                signed_trim(side.min),
                signed_trim(side.max)
            )
        } else {
            format!("**not met**: every round costs more, by {} µs at least", trim(side.min))
        };
        rows.push([
            "request-only routes no slower than before metering (`tollgate-local-1`)".to_owned(),
            measured,
            verdict,
            format!(
                "the filter of now against the one built before metering, on the same route and config (the \
                 routes' `meter` fields left out for the old one); their tables' added CPU: {} now, {} before",
                opt(view.added_cpu(LOCAL).map(|a| a.median), signed_us),
                opt(view.added_cpu(PREMETER).map(|a| a.median), signed_us)
            ),
        ]);
    }
    rows
}
