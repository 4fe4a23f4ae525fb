//! Real processes beside Envoy: `redis-server` and the `tollgate-quota` service, plus a
//! misbehaving stand-in for the quota service (hangs, or answers 500).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::free_ports;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const DEADLINE: Duration = Duration::from_secs(30);
static INSTANCE: AtomicU32 = AtomicU32::new(0);

fn scratch(name: &str) -> PathBuf {
    let n = INSTANCE.fetch_add(1, Ordering::SeqCst);
    let dir = Path::new(ROOT).join("target/it").join(format!("{name}-{}-{n}", std::process::id()));
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} not ready after {DEADLINE:?}");
        sleep(Duration::from_millis(50));
    }
}

fn port_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A `redis-server` on a free port, without persistence; killed on drop.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut redis = Redis { port: free_ports().0, dir: scratch("redis"), child: None };
        redis.spawn();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn spawn(&mut self) {
        let log = File::create(self.dir.join("redis.log")).expect("redis log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .current_dir(&self.dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (apt-get install redis-server): {e}"));
        self.child = Some(child);
        let port = self.port;
        wait_until("redis-server", || port_open(port));
    }

    /// Stops Redis (all data is lost: no persistence) and starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `tollgate-quota` service (built by `cargo build -p tollgate-quota`); killed on drop.
pub struct QuotaService {
    pub port: u16,
    pub admin_token: String,
    store: String,
    dir: PathBuf,
    child: Option<Child>,
    agent: ureq::Agent,
}

fn quota_bin() -> PathBuf {
    let bin = std::env::var("TOLLGATE_QUOTA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(ROOT).join("target/debug/tollgate-quota"));
    assert!(bin.exists(), "{} is missing: run `cargo build -p tollgate-quota` (make test does)", bin.display());
    bin
}

impl QuotaService {
    /// Starts the service with `--store <store>` (`memory` or a Redis URL).
    pub fn start(store: &str) -> QuotaService {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .new_agent();
        let mut service = QuotaService {
            port: free_ports().0,
            admin_token: "test-admin-token".to_owned(),
            store: store.to_owned(),
            dir: scratch("quota"),
            child: None,
            agent,
        };
        service.spawn();
        service
    }

    fn spawn(&mut self) {
        let log = File::create(self.dir.join("quota.log")).expect("quota log");
        let child = Command::new(quota_bin())
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--store", &self.store])
            .args(["--admin-token", &self.admin_token])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tollgate-quota");
        self.child = Some(child);
        let url = self.url("/healthz");
        let agent = self.agent.clone();
        wait_until("tollgate-quota", || agent.get(&url).call().is_ok_and(|r| r.status() == 200));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("quota.log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Creates a key through the admin API: (id, token).
    pub fn create_key(&self, tier: &str, name: &str) -> (String, String) {
        let mut r = self
            .agent
            .post(&self.url("/v1/keys"))
            .header("authorization", &format!("Bearer {}", self.admin_token))
            .send_json(json!({ "tier": tier, "name": name }))
            .expect("POST /v1/keys");
        assert_eq!(r.status(), 201, "create key: {}", r.body_mut().read_to_string().unwrap_or_default());
        let created: Value = r.body_mut().read_json().expect("created key JSON");
        (created["id"].as_str().unwrap().to_owned(), created["token"].as_str().unwrap().to_owned())
    }

    pub fn revoke(&self, id: &str) {
        let r = self
            .agent
            .delete(&self.url(&format!("/v1/keys/{id}")))
            .header("authorization", &format!("Bearer {}", self.admin_token))
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
            .header("authorization", &format!("Bearer {}", self.admin_token))
            .call()
            .expect("GET /v1/usage");
        if r.status() == 404 {
            return Vec::new();
        }
        assert_eq!(r.status(), 200, "usage: {}", r.body_mut().read_to_string().unwrap_or_default());
        let usage: Value = r.body_mut().read_json().expect("usage JSON");
        usage["limits"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| (l["name"].as_str().unwrap_or_default().to_owned(), l["used"].as_u64().unwrap_or(0)))
            .collect()
    }

    pub fn metrics(&self) -> String {
        let mut r = self.agent.get(&self.url("/metrics")).call().expect("GET /metrics");
        r.body_mut().read_to_string().unwrap_or_default()
    }
}

impl Drop for QuotaService {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How the stand-in quota service misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Accepts, reads the request, never answers.
    Hang,
    /// Answers every request with 500.
    Error500,
}

/// A TCP server that misbehaves like a broken quota service; stops on drop.
pub struct BrokenQuota {
    pub port: u16,
    stop: Arc<AtomicBool>,
    pub requests: Arc<AtomicU32>,
    /// Every byte read, over all connections (callout bodies are plain JSON in them).
    pub received: Arc<Mutex<Vec<u8>>>,
}

impl BrokenQuota {
    pub fn start(how: Misbehaviour) -> BrokenQuota {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
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
                let Ok(mut stream) = stream else { continue };
                let requests = Arc::clone(&requests2);
                let received = Arc::clone(&received2);
                let stop = Arc::clone(&stop2);
                let handle = std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    stream.set_read_timeout(Some(Duration::from_millis(200))).ok();
                    while !stop.load(Ordering::SeqCst) {
                        match stream.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                requests.fetch_add(1, Ordering::SeqCst);
                                received.lock().unwrap().extend_from_slice(&buf[..n]);
                                if how == Misbehaviour::Error500 {
                                    let body = r#"{"error":{"code":"boom","message":"internal error"}}"#;
                                    let reply = format!(
                                        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                                        body.len()
                                    );
                                    if stream.write_all(reply.as_bytes()).is_err() {
                                        break;
                                    }
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                });
                held.push(handle);
            }
        });
        BrokenQuota { port, stop, requests, received }
    }
}

impl Drop for BrokenQuota {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
