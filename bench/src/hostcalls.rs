//! What single proxy-wasm host calls cost inside Envoy, timed by the probe module
//! (`bench/probe`) on the host's clock: each call repeated in a loop while Envoy handles
//! one request, the minimum over several requests (every cache warm: the least a call
//! adds to a request).

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::procs::{free_port, http_get, http_raw, scratch, wait_until, Proc};

/// Calls in the order the report lists them, with what tollgate uses them for.
pub const CALLS: [(&str, &str); 10] = [
    ("request_headers", "`get_header_map_pairs` (request): every request header at once"),
    ("request_header", "`get_header_map_value` (request), a header that is there"),
    ("absent_header", "`get_header_map_value` (request), a header that is not"),
    ("source_address", "`get_property(source.address)`"),
    ("shared_get", "`get_shared_data`, a 96-byte value"),
    ("shared_set", "`set_shared_data`, a 96-byte value"),
    ("increment_metric", "`increment_metric`"),
    ("time", "`get_current_time_nanoseconds`"),
    ("add_response_header", "`add_header_map_value` (response)"),
    ("nothing", "the empty loop (the probe's own cost per iteration)"),
];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostCall {
    pub name: String,
    /// Nanoseconds per call: the minimum over the requests.
    pub ns: f64,
}

/// Times every call of [`CALLS`] in an Envoy pinned to `cpu`.
pub fn measure(envoy_bin: &Path, probe_wasm: &Path, root: &Path, cpu: u32, quick: bool) -> Vec<HostCall> {
    let dir = scratch(root, "hostcalls");
    let (listener, admin) = (free_port(), free_port());
    let config = dir.join("envoy.yaml");
    fs::write(&config, envoy_config(listener, admin, probe_wasm)).expect("write the probe's envoy.yaml");
    let log = dir.join("envoy.log");
    let args: Vec<String> = ["-c", config.to_str().expect("UTF-8 path"), "--concurrency", "1", "--disable-hot-restart"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let envoy = Proc::spawn_pinned(cpu, envoy_bin, &args, &log, root);
    wait_until(Duration::from_secs(60), "the host-call probe's Envoy", || {
        envoy.assert_running(&log);
        http_get(admin, "/ready").is_some_and(|(status, _)| status == 200)
    });
    let (requests, per_request) = if quick { (5, 500) } else { (25, 2000) };
    CALLS
        .iter()
        .filter_map(|(name, _)| {
            let head = format!(
                "POST /v1/images/generations HTTP/1.1\r\nx-probe: {name}\r\nx-n: {per_request}\r\n\
                 authorization: Bearer tg_bench_00000\r\ncontent-type: application/json"
            );
            let best = (0..requests)
                .filter_map(|_| http_raw(listener, &head, r#"{"prompt":"a cat"}"#))
                .filter_map(|r| r.header("x-per-call-ns")?.parse::<f64>().ok())
                .fold(f64::INFINITY, f64::min);
            best.is_finite().then(|| HostCall { name: (*name).to_owned(), ns: best })
        })
        .collect()
}

fn envoy_config(listener: u16, admin: u16, wasm: &Path) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listener} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: probe
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "ok" }} }}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: hostcall_probe
                root_id: hostcall_probe
                vm_config:
                  vm_id: hostcall_probe
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {} }} }}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        wasm.display()
    )
}
