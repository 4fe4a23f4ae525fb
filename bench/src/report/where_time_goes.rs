//! Where the time goes: Envoy's CPU time per request, taken apart configuration by
//! configuration (the wasm floor, tollgate's host calls and code, 10k keys, the callout).

use std::fmt::Write;

use super::format::{opt, signed_us, us};
use super::profile::profile_split;
use super::view::View;
use super::{BASELINE, HOST_CALLS, LOCAL, LOCAL_10K};

pub(super) fn write(md: &mut String, view: &View<'_>) {
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
