//! The quota service: the real `tollgate-quota` binary on a free port, and [`BrokenQuota`],
//! a stand-in that misbehaves (hangs, or answers 500 or an unreadable 200).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};

use crate::http;
use crate::ports::free_port;
use crate::process::{self, Process};
use crate::{scratch, workspace_root};

/// How long the service may take to answer `/healthz`.
pub const START_DEADLINE: Duration = Duration::from_secs(30);
/// The environment variables the service reads its flags from; cleared for every start,
/// so that only what a test gives counts.
pub const ENV_VARS: [&str; 8] = [
    "TOLLGATE_QUOTA_STORE",
    "TOLLGATE_QUOTA_LISTEN",
    "TOLLGATE_QUOTA_ADMIN_TOKEN",
    "TOLLGATE_QUOTA_SERVICE_TOKEN",
    "TOLLGATE_QUOTA_SERVICE_TOKEN_FILE",
    "TOLLGATE_QUOTA_INSECURE_NO_AUTH",
    "TOLLGATE_QUOTA_TIERS",
    "TOLLGATE_QUOTA_PLUGIN_CONFIG",
];

/// The service token of development and tests: `envoy.yaml`'s `quota_service.token`, which
/// `make run` and [`QuotaService`] start the service with.
pub const DEV_SERVICE_TOKEN: &str = "tollgate-dev-service-token";

/// The debug build of the service: `$TOLLGATE_QUOTA_BIN`, else `target/debug/tollgate-quota`
/// (`cargo build -p tollgate-quota`, which `make test` runs).
pub fn debug_bin() -> PathBuf {
    let bin = std::env::var("TOLLGATE_QUOTA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target/debug/tollgate-quota"));
    assert!(bin.exists(), "{} is missing: run `cargo build -p tollgate-quota` (make test does)", bin.display());
    bin
}

/// The service's arguments: listen on 127.0.0.1:`port`, keep counts in `store` (`memory`
/// or a Redis URL), the admin API's token and the service token, if any (without a
/// service token it must come from the environment, or `--insecure-no-auth`).
pub fn args(port: u16, store: &str, admin_token: Option<&str>, service_token: Option<&str>) -> Vec<String> {
    let mut args = vec!["--listen".to_owned(), format!("127.0.0.1:{port}"), "--store".to_owned(), store.to_owned()];
    if let Some(token) = admin_token {
        args.extend(["--admin-token".to_owned(), token.to_owned()]);
    }
    if let Some(token) = service_token {
        args.extend(["--service-token".to_owned(), token.to_owned()]);
    }
    args
}

/// The service on `port` answers `GET /healthz` with 200.
pub fn healthy(port: u16) -> bool {
    http::get(port, "/healthz").is_some_and(|r| r.status == 200)
}

/// How to start a [`QuotaService`].
#[derive(Debug, Clone)]
pub struct QuotaOptions {
    pub bin: PathBuf,
    /// `--store`: `memory` or a Redis URL.
    pub store: String,
    /// `--admin-token`, if any.
    pub admin_token: Option<String>,
    /// `--service-token`, if any.
    pub service_token: Option<String>,
    /// More arguments (`--tiers free,pro`, ...).
    pub extra_args: Vec<String>,
    /// Environment variables to set (after [`ENV_VARS`] are cleared).
    pub env: Vec<(String, String)>,
    /// Its directory (for its log); `None`: a fresh one under `target/it`.
    pub dir: Option<PathBuf>,
    /// The core to pin it to, if any.
    pub cpu: Option<u32>,
}

impl QuotaOptions {
    /// The debug build with `store`, the admin token `test-admin-token` and the service
    /// token [`DEV_SERVICE_TOKEN`].
    pub fn new(store: &str) -> QuotaOptions {
        QuotaOptions {
            bin: debug_bin(),
            store: store.to_owned(),
            admin_token: Some("test-admin-token".to_owned()),
            service_token: Some(DEV_SERVICE_TOKEN.to_owned()),
            extra_args: Vec::new(),
            env: Vec::new(),
            dir: None,
            cpu: None,
        }
    }
}

/// A running `tollgate-quota`; killed on drop.
pub struct QuotaService {
    pub port: u16,
    pub admin_token: String,
    options: QuotaOptions,
    log: PathBuf,
    process: Option<Process>,
    agent: ureq::Agent,
}

impl QuotaService {
    /// Starts the debug build with `--store <store>` (`memory` or a Redis URL) and an
    /// admin token.
    pub fn start(store: &str) -> QuotaService {
        Self::start_with(QuotaOptions::new(store))
    }

    pub fn start_with(options: QuotaOptions) -> QuotaService {
        let dir = match &options.dir {
            Some(dir) => scratch::at(dir),
            None => scratch::fresh(&workspace_root().join("target/it"), "quota"),
        };
        let mut service = QuotaService {
            port: free_port(),
            admin_token: options.admin_token.clone().unwrap_or_default(),
            log: dir.join("quota.log"),
            options,
            process: None,
            agent: http::client(Duration::from_secs(10)),
        };
        service.spawn();
        service
    }

    fn spawn(&mut self) {
        let mut command = process::command(&self.options.bin, self.options.cpu);
        let options = &self.options;
        command.args(args(self.port, &options.store, options.admin_token.as_deref(), options.service_token.as_deref()));
        command.args(&options.extra_args);
        for var in ENV_VARS {
            command.env_remove(var);
        }
        command.envs(self.options.env.iter().map(|(k, v)| (k, v)));
        let process = Process::start("tollgate-quota", command, &self.log, "Build it: cargo build -p tollgate-quota");
        let port = self.port;
        process.expect_ready(START_DEADLINE, || healthy(port));
        self.process = Some(process);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Everything the service has logged since it last started.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The service's process (`None` while killed).
    pub fn process(&self) -> Option<&Process> {
        self.process.as_ref()
    }

    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Kills the service and starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.admin_token)
    }

    /// Creates a key through the admin API: (id, token).
    pub fn create_key(&self, tier: &str, name: &str) -> (String, String) {
        let mut r = self
            .agent
            .post(&self.url("/v1/keys"))
            .header("authorization", &self.bearer())
            .send_json(json!({ "tier": tier, "name": name }))
            .expect("POST /v1/keys");
        assert_eq!(r.status(), 201, "create key: {}", r.body_mut().read_to_string().unwrap_or_default());
        let created: Value = r.body_mut().read_json().expect("created key JSON");
        let field = |name: &str| {
            created.get(name).and_then(Value::as_str).unwrap_or_else(|| panic!("no {name} in {created}")).to_owned()
        };
        (field("id"), field("token"))
    }

    pub fn revoke(&self, id: &str) {
        let r = self
            .agent
            .delete(&self.url(&format!("/v1/keys/{id}")))
            .header("authorization", &self.bearer())
            .call()
            .expect("DELETE /v1/keys/{id}");
        assert_eq!(r.status(), 204);
    }

    /// `GET /v1/usage/{key}`: `used` of each limit of a metered key, by limit name (empty
    /// if the service holds nothing for it).
    pub fn usage(&self, key: &str) -> Vec<(String, u64)> {
        let encoded = key.replace('%', "%25").replace('/', "%2F").replace(':', "%3A");
        let mut r = self
            .agent
            .get(&self.url(&format!("/v1/usage/{encoded}")))
            .header("authorization", &self.bearer())
            .call()
            .expect("GET /v1/usage");
        if r.status() == 404 {
            return Vec::new();
        }
        assert_eq!(r.status(), 200, "usage: {}", r.body_mut().read_to_string().unwrap_or_default());
        let usage: Value = r.body_mut().read_json().expect("usage JSON");
        let limits = usage.get("limits").and_then(Value::as_array);
        let field = |limit: &Value, name: &str| limit.get(name).cloned().unwrap_or_default();
        limits
            .into_iter()
            .flatten()
            .map(|l| (field(l, "name").as_str().unwrap_or_default().to_owned(), field(l, "used").as_u64().unwrap_or(0)))
            .collect()
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> String {
        let mut r = self.agent.get(&self.url("/metrics")).call().expect("GET /metrics");
        r.body_mut().read_to_string().unwrap_or_default()
    }
}

/// How the stand-in quota service misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Accepts, reads the request, never answers.
    Hang,
    /// Answers every request with 500.
    Error500,
    /// Answers every request with 200 and a body that is not JSON.
    Garbled200,
}

/// A TCP server that misbehaves like a broken quota service; stops on drop.
pub struct BrokenQuota {
    pub port: u16,
    stop: Arc<AtomicBool>,
    /// Reads that brought bytes, over all connections.
    pub requests: Arc<AtomicU32>,
    /// Every byte read, over all connections (callout bodies are plain JSON in them).
    pub received: Arc<Mutex<Vec<u8>>>,
}

impl BrokenQuota {
    pub fn start(how: Misbehaviour) -> BrokenQuota {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("a bound address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU32::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (stop2, requests2, received2) = (Arc::clone(&stop), Arc::clone(&requests), Arc::clone(&received));
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (requests, received, stop) = (Arc::clone(&requests2), Arc::clone(&received2), Arc::clone(&stop2));
                held.push(std::thread::spawn(move || serve(stream, how, &requests, &received, &stop)));
            }
        });
        BrokenQuota { port, stop, requests, received }
    }

    /// Everything read so far, as text.
    pub fn received_text(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

fn serve(mut stream: TcpStream, how: Misbehaviour, requests: &AtomicU32, received: &Mutex<Vec<u8>>, stop: &AtomicBool) {
    let mut buf = [0u8; 8192];
    let mut pending = Vec::new();
    let mut greeted = false;
    stream.set_read_timeout(Some(Duration::from_millis(200))).ok();
    while !stop.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let read = buf.get(..n).unwrap_or(&[]);
                requests.fetch_add(1, Ordering::SeqCst);
                received.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(read);
                let answer = match how {
                    Misbehaviour::Hang => continue,
                    Misbehaviour::Error500 => (0x8e, r#"{"error":{"code":"boom","message":"internal error"}}"#),
                    Misbehaviour::Garbled200 => (0x88, "<html>a proxy's error page</html>"),
                };
                pending.extend_from_slice(read);
                if answer_h2(&mut stream, &mut pending, &mut greeted, answer).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
}

/// Answers each HTTP/2 request in `pending` whose end has arrived (Envoy's callouts come
/// as cleartext HTTP/2 with prior knowledge) with `answer`: the status as one HPACK byte
/// (`0x88` is 200, `0x8e` is 500) and the body. An incomplete frame waits for more bytes.
fn answer_h2(stream: &mut TcpStream, pending: &mut Vec<u8>, greeted: &mut bool, answer: (u8, &str)) -> io::Result<()> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const END_STREAM: u8 = 0x1;
    const ACK: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    if !*greeted {
        if pending.len() < PREFACE.len() {
            return Ok(());
        }
        pending.drain(..PREFACE.len());
        stream.write_all(&h2_frame(SETTINGS, 0, 0, &[]))?;
        *greeted = true;
    }
    while let Some(&[l0, l1, l2, kind, flags, i0, i1, i2, i3]) = pending.get(..9) {
        let end = 9 + usize::from(l0) * 65_536 + usize::from(l1) * 256 + usize::from(l2);
        if pending.len() < end {
            break;
        }
        pending.drain(..end);
        let stream_id = u32::from_be_bytes([i0 & 0x7f, i1, i2, i3]);
        match kind {
            SETTINGS if flags & ACK == 0 => stream.write_all(&h2_frame(SETTINGS, ACK, 0, &[]))?,
            HEADERS | DATA if flags & END_STREAM != 0 => {
                let (status, body) = answer;
                stream.write_all(&h2_frame(HEADERS, END_HEADERS, stream_id, &[status]))?;
                stream.write_all(&h2_frame(DATA, END_STREAM, stream_id, body.as_bytes()))?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn h2_frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags];
    frame.extend_from_slice(&stream_id.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

impl Drop for BrokenQuota {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
