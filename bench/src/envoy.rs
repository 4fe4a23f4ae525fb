//! Envoy configurations derived from the repository's `envoy.yaml` (same listener, routes
//! and `direct_response` stand-ins, so every configuration has the same ceiling), and one
//! Envoy process per run.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value as Json;
use serde_yaml::{Mapping, Value};
use tollgate_testkit::envoy::{
    at, http_filters, is_ready, is_wasm, plugin_config_of, set_ports, spawn, Launch, HCM, UPSTREAM_PORT,
};
use tollgate_testkit::stats;

use crate::procs::{free_port, Proc};
use crate::scenario::{plugin_config, Filter, Scenario, HUGE, PATH};

/// `envoy.yaml`, parsed once.
pub struct Template {
    config: Value,
    plugin: Json,
}

impl Template {
    pub fn load(root: &Path) -> Template {
        let text = fs::read_to_string(root.join("envoy.yaml")).expect("read envoy.yaml");
        let mut config: Value = serde_yaml::from_str(&text).expect("parse envoy.yaml");
        let plugin = plugin_config_of(&mut config);
        Template { config, plugin }
    }

    /// The Envoy configuration of `scenario`, listening on `ports`.
    pub fn render(&self, scenario: &Scenario, ports: &Ports, wasm: &Wasm) -> String {
        let mut cfg = self.config.clone();
        set_ports(&mut cfg, ports.listener, ports.admin, ports.quota);
        *at(&mut cfg, UPSTREAM_PORT) = Value::from(ports.upstream);
        *at(&mut cfg, &format!("{HCM}.xff_num_trusted_hops")) = Value::from(scenario.xff_hops);
        if scenario.upstream {
            // A metered route must reach an upstream: a direct_response answers before the
            // body is read. The chat route already goes to the stand-in.
            let images = at(&mut cfg, &format!("{HCM}.route_config.virtual_hosts.0.routes.0"));
            assert_eq!(images["match"]["prefix"], PATH, "envoy.yaml: the first route is images");
            *images = yaml(&format!("{{ match: {{ prefix: {PATH} }}, route: {{ cluster: ai_upstream }} }}"));
        }

        let filters = http_filters(&mut cfg);
        let position = filters.iter().position(is_wasm).expect("envoy.yaml has a wasm filter");
        match scenario.filter {
            Filter::None => {
                filters.remove(position);
            }
            Filter::NativeOneBucket => filters[position] = native_filter(false),
            Filter::NativePerKey => filters[position] = native_filter(true),
            Filter::WasmNoop | Filter::WasmHostCalls => {
                let (name, file) = match scenario.filter {
                    Filter::WasmNoop => ("noop", &wasm.noop),
                    _ => ("hostcalls", &wasm.hostcalls),
                };
                let config = at(&mut filters[position], "typed_config.config");
                *at(config, "name") = Value::from(name);
                *at(config, "root_id") = Value::from(name);
                *at(config, "vm_config.vm_id") = Value::from(name);
                *at(config, "vm_config.code.local.filename") = Value::from(path_str(file));
                *at(config, "configuration.value") = Value::from("");
            }
            Filter::TollgateLocal { .. }
            | Filter::TollgateAnonymous
            | Filter::TollgateGlobal { .. }
            | Filter::TollgateMetering { .. }
            | Filter::TollgatePremeter => {
                let plugin = plugin_config(&self.plugin, scenario.filter).expect("a tollgate configuration");
                let file = match scenario.filter {
                    Filter::TollgatePremeter => wasm.premeter.as_ref().expect("BENCH_PREMETER_WASM is set"),
                    _ => &wasm.tollgate,
                };
                let config = at(&mut filters[position], "typed_config.config");
                *at(config, "vm_config.code.local.filename") = Value::from(path_str(file));
                *at(config, "configuration.value") = Value::from(plugin.to_string());
            }
        }
        serde_yaml::to_string(&cfg).expect("serialize the Envoy configuration")
    }
}

/// The `.wasm` files the configurations load.
pub struct Wasm {
    pub tollgate: PathBuf,
    pub noop: PathBuf,
    pub hostcalls: PathBuf,
    /// tollgate built before metering, to compare with (`BENCH_PREMETER_WASM`).
    pub premeter: Option<PathBuf>,
}

pub struct Ports {
    pub listener: u16,
    pub admin: u16,
    /// Where the `tollgate_quota` cluster points (nobody listens unless the run needs it).
    pub quota: u16,
    /// Where the `ai_upstream` cluster points (the stand-in, when the run has one).
    pub upstream: u16,
}

impl Ports {
    pub fn fresh(quota: Option<u16>, upstream: Option<u16>) -> Ports {
        Ports {
            listener: free_port(),
            admin: free_port(),
            quota: quota.unwrap_or_else(free_port),
            upstream: upstream.unwrap_or_else(free_port),
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Envoy's native local rate limit: one bucket, or one bucket per `x-api-key` value
/// (a descriptor entry with an empty value is a wildcard: each value gets its own bucket,
/// up to `max_dynamic_descriptors`, kept in an LRU). Both add `x-ratelimit-*` headers,
/// as tollgate does. The buckets never run dry during a run.
fn native_filter(per_key: bool) -> Value {
    let bucket = || yaml(&format!("{{ max_tokens: {HUGE}, tokens_per_fill: {HUGE}, fill_interval: 1s }}"));
    let percent = |key: &str| {
        yaml(&format!("{{ runtime_key: {key}, default_value: {{ numerator: 100, denominator: HUNDRED }} }}"))
    };
    let mut config = Mapping::new();
    config.insert(
        "@type".into(),
        "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit".into(),
    );
    config.insert("stat_prefix".into(), "bench_local_ratelimit".into());
    config.insert("token_bucket".into(), bucket());
    config.insert("filter_enabled".into(), percent("bench_local_ratelimit_enabled"));
    config.insert("filter_enforced".into(), percent("bench_local_ratelimit_enforced"));
    config.insert("enable_x_ratelimit_headers".into(), "DRAFT_VERSION_03".into());
    if per_key {
        config.insert(
            "rate_limits".into(),
            yaml("[ { actions: [ { request_headers: { header_name: x-api-key, descriptor_key: api_key } } ] } ]"),
        );
        let mut descriptor = Mapping::new();
        descriptor.insert("entries".into(), yaml("[ { key: api_key, value: '' } ]"));
        descriptor.insert("token_bucket".into(), bucket());
        config.insert("descriptors".into(), Value::Sequence(vec![Value::Mapping(descriptor)]));
        config.insert("max_dynamic_descriptors".into(), Value::from(4 * crate::scenario::MANY as u64));
        config.insert("always_consume_default_token_bucket".into(), Value::from(false));
    }
    let mut filter = Mapping::new();
    filter.insert("name".into(), "envoy.filters.http.local_ratelimit".into());
    filter.insert("typed_config".into(), Value::Mapping(config));
    Value::Mapping(filter)
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).expect("valid YAML literal")
}

/// A running Envoy: one worker, pinned to `cpu`.
pub struct Envoy {
    pub proc: Proc,
    pub ports: Ports,
}

impl Envoy {
    pub fn start(bin: &Path, config: &Path, log: &Path, ports: Ports, cpu: u32, root: &Path) -> Envoy {
        let launch = Launch { bin, config, log, dir: root, concurrency: 1, cpu: Some(cpu) };
        let proc = Proc::from(spawn(&launch));
        proc.expect_ready(Duration::from_secs(60), || is_ready(ports.admin, ports.listener, "/healthz"));
        Envoy { proc, ports }
    }

    /// Every counter and gauge of the admin interface's `/stats`, as name and value.
    pub fn counters(&self) -> Vec<(String, u64)> {
        stats::try_counters(self.ports.admin).unwrap_or_default()
    }
}
