//! What single proxy-wasm host calls cost, and how many tollgate's local path makes.

use std::fmt::Write;

use crate::Results;

/// Host calls tollgate makes on an admitted request of the local path (a key, two limits,
/// both header families) admitted from the worker's block, by reading `src/http.rs`;
/// the anonymous path adds one `source_address`, and the request that takes a block (one
/// in `worker_block`) a `shared_get` and a `shared_set`.
const LOCAL_PATH_CALLS: [(&str, u32); 6] = [
    ("request_headers", 1),
    ("time", 1),
    ("shared_get", 0),
    ("shared_set", 0),
    ("increment_metric", 1),
    ("add_response_header", 7),
];

pub(super) fn write(md: &mut String, results: &Results) {
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
        "\nOn a request admitted from the worker's block (see docs/ARCHITECTURE.md, Worker blocks), tollgate \
         makes {} host calls (counted in `src/http.rs`); exact limits add the slot's get and set. Warm, they \
         take {:.1} µs together, a small part of the CPU the local path adds per request under load (see above): the \
         rest is entering the module for each stream event, the module's own code, and cache misses that a loop of \
         warm calls does not see.\n",
        LOCAL_PATH_CALLS.iter().map(|(_, c)| c).sum::<u32>(),
        total / 1000.0
    );
}
