#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The built filter exports exactly the per-request callbacks it implements (`make wasm`
//! trims the rest, see `xtask/`): Envoy enters the VM for every callback a module
//! exports, so each one left over costs every request a call into V8 that does nothing.

use std::collections::BTreeSet;
use std::path::Path;

use wasmparser::{Parser, Payload};

/// Every callback Envoy may make for an HTTP stream.
const STREAM_CALLBACKS: [&str; 11] = [
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
    "proxy_on_http_call_response",
    "proxy_on_log",
    "proxy_on_done",
    "proxy_on_delete",
];

/// The ones tollgate implements (or needs for its contexts' lifetime).
const IMPLEMENTED: [&str; 8] = [
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_http_call_response",
    "proxy_on_delete",
];

fn exports() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/wasm32-wasip1/release/tollgate.wasm");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run `make wasm` first)", path.display()));
    let mut names = BTreeSet::new();
    for payload in Parser::new(0).parse_all(&bytes) {
        if let Payload::ExportSection(reader) = payload.expect("a valid module") {
            for export in reader {
                names.insert(export.expect("a valid export").name.to_owned());
            }
        }
    }
    names
}

#[test]
fn the_filter_exports_only_the_stream_callbacks_it_implements() {
    let exports = exports();
    let stream: BTreeSet<&str> = STREAM_CALLBACKS.iter().copied().filter(|c| exports.contains(*c)).collect();
    assert_eq!(stream, IMPLEMENTED.iter().copied().collect::<BTreeSet<_>>());
}

#[test]
fn the_filter_keeps_what_the_host_needs_to_run_it() {
    let exports = exports();
    for needed in [
        "proxy_abi_version_0_2_1",
        "proxy_on_memory_allocate",
        "proxy_on_vm_start",
        "proxy_on_configure",
        "proxy_on_tick",
        "proxy_on_queue_ready",
        "memory",
        "_initialize",
    ] {
        assert!(exports.contains(needed), "{needed} is not exported: {exports:?}");
    }
}

#[test]
fn the_filter_exports_no_callback_of_what_it_never_uses() {
    let exports = exports();
    // gRPC calls, network (L4) filters and foreign functions: Envoy never calls these for
    // tollgate, and their code is gone with their exports.
    let unused: Vec<&String> = exports
        .iter()
        .filter(|e| {
            e.starts_with("proxy_on_grpc_")
                || e.contains("_connection")
                || e.ends_with("_data")
                || *e == "proxy_on_foreign_function"
        })
        .collect();
    assert!(unused.is_empty(), "{unused:?}");
}
