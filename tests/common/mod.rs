#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Integration-test harness: runs a real Envoy (from `$ENVOY_BIN`) with the
//! repository's `envoy.yaml`, adjusted per test, and talks HTTP to it.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_yaml::Value;
use sha2::{Digest, Sha256};

pub mod services;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// How long Envoy may take to become ready (or to fail) before the test gives up.
const START_DEADLINE: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start Envoy.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// Worker threads (`--concurrency`), each with its own wasm VM.
    pub concurrency: u32,
    /// `xff_num_trusted_hops` of the HTTP connection manager.
    pub xff_trusted_hops: u32,
    /// Plugin JSON; `None` keeps the one in `envoy.yaml`.
    pub plugin_config: Option<String>,
    /// `false` removes the wasm filter (plain Envoy with the same routes).
    pub with_filter: bool,
    /// Port of the quota service cluster; `None` points it at a port nobody listens on.
    pub quota_port: Option<u16>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        Self { concurrency: 2, xff_trusted_hops: 0, plugin_config: None, with_filter: true, quota_port: None }
    }
}

/// A running Envoy; killed on drop.
pub struct Envoy {
    pub port: u16,
    pub admin_port: u16,
    child: Child,
    log_path: PathBuf,
    agent: ureq::Agent,
}

/// An HTTP response.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// Lowercase hex SHA-256 of `s`, as used for API keys in the plugin config.
pub fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The repository's `envoy.yaml`, parsed.
pub fn base_config() -> Value {
    let text = fs::read_to_string(Path::new(ROOT).join("envoy.yaml")).expect("read envoy.yaml");
    serde_yaml::from_str(&text).expect("parse envoy.yaml")
}

/// The plugin JSON embedded in `envoy.yaml`, parsed (to derive variants from it).
pub fn default_plugin_config() -> serde_json::Value {
    let mut cfg = base_config();
    let value = at(wasm_filter(&mut cfg), "typed_config.config.configuration.value")
        .as_str()
        .expect("plugin configuration value in envoy.yaml is a string")
        .to_owned();
    serde_json::from_str(&value).expect("plugin configuration in envoy.yaml is JSON")
}

/// The plugin JSON of `envoy.yaml` made local-only: no global limits, no quota service.
pub fn local_plugin_config() -> serde_json::Value {
    let mut config = default_plugin_config();
    if let Some(object) = config.as_object_mut() {
        object.remove("quota_service");
    }
    if let Some(tiers) = config["tiers"].as_object_mut() {
        for tier in tiers.values_mut() {
            for limit in tier["limits"].as_array_mut().into_iter().flatten() {
                if let Some(limit) = limit.as_object_mut() {
                    limit.remove("scope");
                    limit.remove("failure_mode");
                }
            }
        }
    }
    config
}

/// The node at a dotted path such as `static_resources.listeners.0.address`.
fn at<'a>(mut node: &'a mut Value, path: &str) -> &'a mut Value {
    for key in path.split('.') {
        let next = match key.parse::<usize>() {
            Ok(i) => node.get_mut(i),
            Err(_) => node.get_mut(key),
        };
        node = next.unwrap_or_else(|| panic!("envoy.yaml: no {path} ({key})"));
    }
    node
}

const QUOTA_PORT: &str =
    "static_resources.clusters.0.load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.socket_address.port_value";

const HCM: &str = "static_resources.listeners.0.filter_chains.0.filters.0.typed_config";

fn http_filters(cfg: &mut Value) -> &mut Vec<Value> {
    match at(cfg, &format!("{HCM}.http_filters")) {
        Value::Sequence(filters) => filters,
        _ => panic!("envoy.yaml: http_filters is not a list"),
    }
}

fn is_wasm(filter: &Value) -> bool {
    filter.get("name").and_then(Value::as_str) == Some("envoy.filters.http.wasm")
}

fn wasm_filter(cfg: &mut Value) -> &mut Value {
    http_filters(cfg).iter_mut().find(|f| is_wasm(f)).expect("envoy.yaml has an envoy.filters.http.wasm filter")
}

/// Two distinct free ports on 127.0.0.1.
pub fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind");
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

impl Envoy {
    /// Starts Envoy and waits until it serves; panics with its log if it does not.
    pub fn start(opts: EnvoyOptions) -> Envoy {
        let mut envoy = Self::spawn(&opts);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = envoy.child.try_wait().unwrap() {
                panic!("Envoy exited at start ({status}); log:\n{}", envoy.log());
            }
            if envoy.is_ready() {
                return envoy;
            }
            if Instant::now() > deadline {
                panic!("Envoy not ready after {START_DEADLINE:?}; log:\n{}", envoy.log());
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Starts an Envoy that must refuse its configuration: returns its log once it
    /// has exited non-zero; panics if it becomes ready or exits 0.
    pub fn start_expect_failure(opts: EnvoyOptions) -> String {
        let mut envoy = Self::spawn(&opts);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = envoy.child.try_wait().unwrap() {
                let log = envoy.log();
                assert!(!status.success(), "Envoy exited 0, expected a failure; log:\n{log}");
                return log;
            }
            if envoy.is_ready() {
                panic!("Envoy became ready, expected a failure; log:\n{}", envoy.log());
            }
            if Instant::now() > deadline {
                panic!("Envoy neither failed nor became ready; log:\n{}", envoy.log());
            }
            sleep(Duration::from_millis(100));
        }
    }

    fn spawn(opts: &EnvoyOptions) -> Envoy {
        let bin =
            std::env::var("ENVOY_BIN").ok().filter(|s| !s.is_empty()).expect("set ENVOY_BIN or run via `make test`");
        let (port, admin_port) = free_ports();

        let mut cfg = base_config();
        *at(&mut cfg, "admin.address.socket_address.port_value") = Value::from(admin_port);
        *at(&mut cfg, "static_resources.listeners.0.address.socket_address.port_value") = Value::from(port);
        *at(&mut cfg, &format!("{HCM}.xff_num_trusted_hops")) = Value::from(opts.xff_trusted_hops);
        let quota_port = opts.quota_port.unwrap_or_else(|| free_ports().0);
        *at(&mut cfg, QUOTA_PORT) = Value::from(quota_port);
        if opts.with_filter {
            let wasm = Path::new(ROOT).join("target/wasm32-wasip1/release/tollgate.wasm");
            assert!(wasm.exists(), "{} is missing: run `make wasm` first", wasm.display());
            let config = at(wasm_filter(&mut cfg), "typed_config.config");
            *at(config, "vm_config.code.local.filename") = Value::from(wasm.to_str().expect("UTF-8 path"));
            if let Some(json) = &opts.plugin_config {
                *at(config, "configuration.value") = Value::from(json.as_str());
            }
        } else {
            http_filters(&mut cfg).retain(|f| !is_wasm(f));
        }

        let dir = Path::new(ROOT).join("target/it");
        fs::create_dir_all(&dir).expect("create target/it");
        let n = INSTANCE.fetch_add(1, Ordering::SeqCst);
        let stem = format!("envoy-{}-{n}", std::process::id());
        let cfg_path = dir.join(format!("{stem}.yaml"));
        let log_path = dir.join(format!("{stem}.log"));
        fs::write(&cfg_path, serde_yaml::to_string(&cfg).unwrap()).expect("write config");
        let log = File::create(&log_path).expect("create log file");

        let child = Command::new(&bin)
            .arg("-c")
            .arg(&cfg_path)
            .args(["--concurrency", &opts.concurrency.to_string()])
            .args(["--disable-hot-restart", "--log-level", "info"])
            .current_dir(ROOT)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ENVOY_BIN={bin}: {e}"));

        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(IO_TIMEOUT))
            .build()
            .new_agent();
        Envoy { port, admin_port, child, log_path, agent }
    }

    /// Admin `/ready` says LIVE and the listener answers HTTP. The probe is a
    /// `GET /` through the filter: stats may count it, so take baselines after start.
    fn is_ready(&self) -> bool {
        let ready = self.admin_get("/ready").is_some_and(|r| r.status == 200);
        let url = format!("http://127.0.0.1:{}/", self.port);
        ready && self.agent.get(&url).call().is_ok()
    }

    /// Everything Envoy has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends a request without body to the listener. Non-2xx statuses are replies, not errors.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request_with_body(method, path, headers, "")
    }

    /// Sends a request with `body` (none if empty) to the listener.
    pub fn request_with_body(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut builder =
            ureq::http::Request::builder().method(method).uri(format!("http://127.0.0.1:{}{path}", self.port));
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let result = if body.is_empty() {
            self.agent.run(builder.body(()).expect("valid request"))
        } else {
            self.agent.run(builder.body(body).expect("valid request"))
        };
        let response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        to_reply(response)
    }

    /// GET on the admin interface; `None` if it is not reachable.
    fn admin_get(&self, path: &str) -> Option<Reply> {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        self.agent.get(&url).call().ok().map(to_reply)
    }

    /// Sends a raw HTTP/1.1 request (request line and header lines, optionally a blank
    /// line and a body). Line ends are normalized to CRLF and `Connection: close` is
    /// added unless a Connection header is present. For malformed or duplicate headers.
    pub fn raw(&self, request: &str) -> Reply {
        let (head, body) = match request.split_once("\r\n\r\n") {
            Some(parts) => parts,
            None => request.split_once("\n\n").unwrap_or((request, "")),
        };
        let mut lines: Vec<&str> = head.lines().filter(|l| !l.is_empty()).collect();
        if !lines.iter().any(|l| l.to_ascii_lowercase().starts_with("connection:")) {
            lines.push("Connection: close");
        }
        let mut bytes = lines.join("\r\n");
        bytes.push_str("\r\n\r\n");
        bytes.push_str(body);
        self.raw_exact(bytes.as_bytes())
    }

    /// Sends `bytes` verbatim to the listener and parses the reply (read until close).
    pub fn raw_exact(&self, bytes: &[u8]) -> Reply {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.write_all(bytes).expect("write request");
        let mut response = Vec::new();
        // A reset after a complete reply is fine; parse whatever arrived.
        let _ = stream.read_to_end(&mut response);
        parse_http1(&response)
    }

    /// `/stats/prometheus` of the admin interface.
    pub fn stats_prometheus(&self) -> String {
        self.admin_get("/stats/prometheus").expect("admin interface").body
    }

    /// Value of the stat `name` in admin `/stats` (also found as `wasmcustom.<name>`).
    pub fn counter(&self, name: &str) -> Option<u64> {
        let stats = self.admin_get("/stats").expect("admin interface").body;
        let custom = format!("wasmcustom.{name}");
        stats.lines().find_map(|line| {
            let (k, v) = line.split_once(": ")?;
            (k == name || k == custom).then(|| v.trim().parse().ok()).flatten()
        })
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn to_reply(mut response: ureq::http::Response<ureq::Body>) -> Reply {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = response.body_mut().read_to_string().expect("read body");
    Reply { status, headers, body }
}

/// Parses an HTTP/1.x response (Content-Length, chunked, or read-until-close body).
fn parse_http1(bytes: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(bytes);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {status_line:?}"));
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    let reply = Reply { status, headers, body: String::new() };
    let body = if reply.header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        dechunk(rest)
    } else if let Some(len) = reply.header("content-length").and_then(|l| l.parse().ok()) {
        rest.get(..len).unwrap_or(rest).to_owned()
    } else {
        rest.to_owned()
    };
    Reply { body, ..reply }
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16);
        let Ok(size) = size else { break };
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(after.get(..size).unwrap_or(""));
        rest = after.get(size..).unwrap_or("").trim_start_matches("\r\n");
    }
    body
}
