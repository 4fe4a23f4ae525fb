//! Envoy: the binary (`$ENVOY_BIN`), the repository's `envoy.yaml` and changes to it,
//! Envoy processes started with `--disable-hot-restart` on free ports, and [`Envoy`], the
//! integration tests' Envoy with the built filter and HTTP helpers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_yaml::Value;
use sha2::{Digest, Sha256};

use crate::http::{self, Reply};
use crate::ports::free_ports;
use crate::process::{self, Process};
use crate::quota_service::DEV_SERVICE_TOKEN;
use crate::standin::Standin;
use crate::{scratch, stats, workspace_root};

/// How long Envoy may take to become ready (or to fail) before a test gives up.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// The HTTP connection manager of the first listener, in `envoy.yaml`.
pub const HCM: &str = "static_resources.listeners.0.filter_chains.0.filters.0.typed_config";
/// The port of the quota service cluster's one endpoint, in `envoy.yaml`.
pub const QUOTA_PORT: &str =
    "static_resources.clusters.0.load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.socket_address.port_value";
/// The port of the stand-in AI upstream cluster's one endpoint, in `envoy.yaml`.
pub const UPSTREAM_PORT: &str =
    "static_resources.clusters.1.load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.socket_address.port_value";
const LISTENER_PORT: &str = "static_resources.listeners.0.address.socket_address.port_value";
const ADMIN_PORT: &str = "admin.address.socket_address.port_value";

/// The Envoy binary: `$ENVOY_BIN` (`make test` and `make bench` set it).
pub fn bin() -> PathBuf {
    std::env::var("ENVOY_BIN")
        .ok()
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .expect("set ENVOY_BIN or run via `make test` (scripts/envoy-bin.sh prints a path)")
}

/// The filter as `make wasm` builds it.
pub fn tollgate_wasm() -> PathBuf {
    workspace_root().join("target/wasm32-wasip1/release/tollgate.wasm")
}

/// The repository's `envoy.yaml`, parsed.
pub fn repository_config() -> Value {
    let path = workspace_root().join("envoy.yaml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// The node at a dotted path such as `static_resources.listeners.0.address`.
pub fn at<'a>(mut node: &'a mut Value, path: &str) -> &'a mut Value {
    for key in path.split('.') {
        let next = match key.parse::<usize>() {
            Ok(i) => node.get_mut(i),
            Err(_) => node.get_mut(key),
        };
        node = next.unwrap_or_else(|| panic!("envoy.yaml: no {path} ({key})"));
    }
    node
}

/// The HTTP filters of the first listener.
pub fn http_filters(config: &mut Value) -> &mut Vec<Value> {
    match at(config, &format!("{HCM}.http_filters")) {
        Value::Sequence(filters) => filters,
        _ => panic!("envoy.yaml: http_filters is not a list"),
    }
}

pub fn is_wasm(filter: &Value) -> bool {
    filter.get("name").and_then(Value::as_str) == Some("envoy.filters.http.wasm")
}

/// The wasm filter among the HTTP filters.
pub fn wasm_filter(config: &mut Value) -> &mut Value {
    http_filters(config).iter_mut().find(|f| is_wasm(f)).expect("envoy.yaml has an envoy.filters.http.wasm filter")
}

/// The plugin JSON embedded in the wasm filter of `config`, parsed.
pub fn plugin_config_of(config: &mut Value) -> serde_json::Value {
    let value = at(wasm_filter(config), "typed_config.config.configuration.value")
        .as_str()
        .expect("envoy.yaml: the plugin configuration is a string")
        .to_owned();
    serde_json::from_str(&value).expect("envoy.yaml: the plugin configuration is JSON")
}

/// Points the listener, the admin interface and the quota service cluster at these ports.
pub fn set_ports(config: &mut Value, listener: u16, admin: u16, quota: u16) {
    *at(config, ADMIN_PORT) = Value::from(admin);
    *at(config, LISTENER_PORT) = Value::from(listener);
    *at(config, QUOTA_PORT) = Value::from(quota);
}

/// The plugin JSON of `envoy.yaml`, parsed (to derive variants from it).
pub fn default_plugin_config() -> serde_json::Value {
    plugin_config_of(&mut repository_config())
}

/// The plugin JSON of `envoy.yaml` made local-only: no global limits, no quota service.
pub fn local_plugin_config() -> serde_json::Value {
    let mut config = default_plugin_config();
    if let Some(object) = config.as_object_mut() {
        object.remove("quota_service");
    }
    let tiers = config.get_mut("tiers").and_then(serde_json::Value::as_object_mut);
    for tier in tiers.into_iter().flat_map(|t| t.values_mut()) {
        let limits = tier.get_mut("limits").and_then(serde_json::Value::as_array_mut);
        for limit in limits.into_iter().flatten().filter_map(serde_json::Value::as_object_mut) {
            limit.remove("scope");
            limit.remove("failure_mode");
        }
    }
    config
}

/// `json` with `quota_service.token` set to [`DEV_SERVICE_TOKEN`] (the token
/// [`crate::quota_service::QuotaService`] starts the service with) when it has a
/// `quota_service` without a `token` field. `"token": null` stays: no token is sent.
/// Anything that is not such a JSON object is returned unchanged.
pub fn with_service_token(json: &str) -> String {
    let Ok(mut config) = serde_json::from_str::<serde_json::Value>(json) else { return json.to_owned() };
    match config.get_mut("quota_service").and_then(serde_json::Value::as_object_mut) {
        Some(quota) if !quota.contains_key("token") => {
            quota.insert("token".to_owned(), serde_json::Value::from(DEV_SERVICE_TOKEN));
            config.to_string()
        }
        _ => json.to_owned(),
    }
}

/// Lowercase hex SHA-256 of `s`, as API keys appear in the plugin configuration.
pub fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// How to start one Envoy process.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    pub bin: &'a Path,
    pub config: &'a Path,
    pub log: &'a Path,
    /// Its working directory.
    pub dir: &'a Path,
    /// Worker threads (`--concurrency`).
    pub concurrency: u32,
    /// The core to pin it to (`taskset -c`), if any.
    pub cpu: Option<u32>,
}

/// Envoy's arguments: the configuration, the workers, no hot restart (several Envoys run
/// at once), info logs.
pub fn args(config: &Path, concurrency: u32) -> Vec<String> {
    let config = config.to_str().expect("UTF-8 path").to_owned();
    let concurrency = concurrency.to_string();
    ["-c", &config, "--concurrency", &concurrency, "--disable-hot-restart", "--log-level", "info"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// Starts Envoy as `launch` says; does not wait for it (see [`is_ready`]).
pub fn spawn(launch: &Launch<'_>) -> Process {
    let mut command: Command = process::command(launch.bin, launch.cpu);
    command.args(args(launch.config, launch.concurrency)).current_dir(launch.dir);
    Process::start("Envoy", command, launch.log, "Set ENVOY_BIN to an Envoy binary (scripts/envoy-bin.sh installs one)")
}

/// The admin interface on `admin_port` says LIVE (`/ready` answers 200).
pub fn admin_ready(admin_port: u16) -> bool {
    http::get(admin_port, "/ready").is_some_and(|r| r.status == 200)
}

/// Envoy is ready: its admin interface says LIVE and the listener on `port` answers a
/// `GET path` (with any status).
pub fn is_ready(admin_port: u16, port: u16, path: &str) -> bool {
    admin_ready(admin_port) && http::get(port, path).is_some()
}

/// How the integration tests start Envoy.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// Worker threads (`--concurrency`), each with its own wasm VM.
    pub concurrency: u32,
    /// `xff_num_trusted_hops` of the HTTP connection manager.
    pub xff_trusted_hops: u32,
    /// Plugin JSON; `None` keeps the one in `envoy.yaml`. A `quota_service` without a
    /// `token` gets the test token (see [`with_service_token`]).
    pub plugin_config: Option<String>,
    /// `false` removes the wasm filter (plain Envoy with the same routes).
    pub with_filter: bool,
    /// Port of the quota service cluster; `None` points it at a port nobody listens on.
    pub quota_port: Option<u16>,
    /// Route image generation to the stand-in AI upstream too (`envoy.yaml` answers it
    /// with a direct response, which leaves before a request body is read).
    pub images_upstream: bool,
    /// Let HTTP/1.1 clients send trailers (`http_protocol_options.enable_trailers`).
    pub http1_trailers: bool,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        Self {
            concurrency: 2,
            xff_trusted_hops: 0,
            plugin_config: None,
            with_filter: true,
            quota_port: None,
            images_upstream: false,
            http1_trailers: false,
        }
    }
}

/// The integration tests' Envoy: the repository's `envoy.yaml` with the built filter
/// (`make wasm`), adjusted by [`EnvoyOptions`], on free ports; killed on drop.
pub struct Envoy {
    pub port: u16,
    pub admin_port: u16,
    process: Process,
    agent: ureq::Agent,
    /// The AI upstream behind the chat route, as long as Envoy runs.
    _upstream: Standin,
}

impl Envoy {
    /// Starts Envoy and waits until it serves; panics with its log if it does not.
    pub fn start(options: EnvoyOptions) -> Envoy {
        let envoy = Self::spawn(&options);
        envoy.process.expect_ready(START_DEADLINE, || envoy.is_ready());
        envoy
    }

    /// Starts an Envoy that must refuse its configuration: returns its log once it has
    /// exited non-zero; panics if it becomes ready or exits 0.
    pub fn start_expect_failure(options: EnvoyOptions) -> String {
        let envoy = Self::spawn(&options);
        match envoy.process.wait_ready(START_DEADLINE, || envoy.is_ready()) {
            Ok(()) => panic!("Envoy became ready, expected a failure; log:\n{}", envoy.log()),
            Err(status) => {
                let log = envoy.log();
                assert!(!status.success(), "Envoy exited 0, expected a failure; log:\n{log}");
                log
            }
        }
    }

    fn spawn(options: &EnvoyOptions) -> Envoy {
        let bin = bin();
        let [port, admin_port] = free_ports::<2>();

        let mut config = repository_config();
        let quota_port = options.quota_port.unwrap_or_else(crate::ports::free_port);
        set_ports(&mut config, port, admin_port, quota_port);
        let upstream = Standin::start(0);
        *at(&mut config, UPSTREAM_PORT) = Value::from(upstream.port);
        if options.images_upstream {
            let images = at(&mut config, &format!("{HCM}.route_config.virtual_hosts.0.routes.0"));
            assert_eq!(images["match"]["prefix"], "/v1/images/generations", "envoy.yaml: the first route is images");
            *images =
                serde_yaml::from_str("{ match: { prefix: /v1/images/generations }, route: { cluster: ai_upstream } }")
                    .expect("a route");
        }
        *at(&mut config, &format!("{HCM}.xff_num_trusted_hops")) = Value::from(options.xff_trusted_hops);
        if options.http1_trailers {
            let options = serde_yaml::from_str("{ enable_trailers: true }").expect("protocol options");
            if let Some(hcm) = at(&mut config, HCM).as_mapping_mut() {
                hcm.insert("http_protocol_options".into(), options);
            }
        }
        if options.with_filter {
            let wasm = tollgate_wasm();
            assert!(wasm.exists(), "{} is missing: run `make wasm` first", wasm.display());
            let filter = at(wasm_filter(&mut config), "typed_config.config");
            *at(filter, "vm_config.code.local.filename") = Value::from(wasm.to_str().expect("UTF-8 path"));
            if let Some(json) = &options.plugin_config {
                *at(filter, "configuration.value") = Value::from(with_service_token(json).as_str());
            }
        } else {
            http_filters(&mut config).retain(|f| !is_wasm(f));
        }

        let root = workspace_root();
        let dir = scratch::fresh(&root.join("target/it"), "envoy");
        let config_path = dir.join("envoy.yaml");
        fs::write(&config_path, serde_yaml::to_string(&config).expect("serialize the Envoy configuration"))
            .unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
        let launch = Launch {
            bin: &bin,
            config: &config_path,
            log: &dir.join("envoy.log"),
            dir: root,
            concurrency: options.concurrency,
            cpu: None,
        };
        let process = spawn(&launch);
        Envoy { port, admin_port, process, agent: http::client(http::IO_TIMEOUT), _upstream: upstream }
    }

    /// Admin `/ready` says LIVE and the listener answers HTTP. The probe is a `GET /`
    /// through the filter, on the connection later requests reuse: stats may count it,
    /// so take baselines after start.
    fn is_ready(&self) -> bool {
        self.admin_get("/ready").is_some_and(|r| r.status == 200)
            && http::try_get(&self.agent, &format!("http://127.0.0.1:{}/", self.port)).is_some()
    }

    /// GET on the admin interface (on a kept-alive connection); `None` if it is not reachable.
    fn admin_get(&self, path: &str) -> Option<Reply> {
        http::try_get(&self.agent, &format!("http://127.0.0.1:{}{path}", self.admin_port))
    }

    /// Everything Envoy has logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Sends a request without body to the listener. Non-2xx statuses are replies, not errors.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request_with_body(method, path, headers, "")
    }

    /// Sends a request with `body` (none if empty) to the listener.
    pub fn request_with_body(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        http::send(&self.agent, method, &format!("http://127.0.0.1:{}{path}", self.port), headers, body)
    }

    /// Sends a raw HTTP/1.1 request (see [`http::raw_request`]) on a new connection. For
    /// malformed or duplicate headers.
    pub fn raw(&self, request: &str) -> Reply {
        self.raw_exact(&http::raw_request(request))
    }

    /// Sends `bytes` verbatim to the listener on a new connection and parses the reply
    /// (read until close).
    pub fn raw_exact(&self, bytes: &[u8]) -> Reply {
        http::exchange(self.port, bytes)
    }

    /// `/stats/prometheus` of the admin interface.
    pub fn stats_prometheus(&self) -> String {
        self.admin_get("/stats/prometheus").expect("admin interface").body
    }

    /// Value of the stat `name` in admin `/stats` (also found as `wasmcustom.<name>`).
    pub fn counter(&self, name: &str) -> Option<u64> {
        let text = self.admin_get("/stats").expect("admin interface").body;
        stats::find(&stats::parse(&text), name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_service_without_a_token_field_gets_the_test_token() {
        let with = |json: &str| serde_json::from_str::<serde_json::Value>(&with_service_token(json)).ok();
        let added = with(r#"{"quota_service":{"cluster":"q"}}"#)
            .and_then(|v| v["quota_service"]["token"].as_str().map(str::to_owned));
        assert_eq!(added.as_deref(), Some(DEV_SERVICE_TOKEN));
        for kept in [
            r#"{"quota_service":{"cluster":"q","token":null}}"#,
            r#"{"quota_service":{"cluster":"q","token":"other-token-0123456789"}}"#,
            r#"{"tiers":{}}"#,
            "not json",
        ] {
            assert_eq!(with_service_token(kept), kept);
        }
    }
}
