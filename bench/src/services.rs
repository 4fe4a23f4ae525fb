//! The processes behind the global path: `redis-server` and the `tollgate-quota` service.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::procs::{free_port, http_get, scratch, wait_until, Proc};
use crate::scenario::QuotaStore;

/// A `redis-server` without persistence, pinned to `cpu`.
pub struct Redis {
    pub proc: Proc,
    pub port: u16,
}

impl Redis {
    pub fn start(root: &Path, cpu: u32) -> Redis {
        let port = free_port();
        let dir = scratch(root, "redis");
        let args: Vec<String> =
            ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        let proc = Proc::spawn_pinned(cpu, Path::new("redis-server"), &args, &dir.join("redis.log"), &dir);
        wait_until(Duration::from_secs(30), "redis-server", || {
            proc.assert_running(&dir.join("redis.log"));
            redis_cli(port, &["PING"]).is_some_and(|r| r == "PONG")
        });
        Redis { proc, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `SCRIPT LOAD` of a script: its SHA-1 for `EVALSHA`.
    pub fn load_script(&self, script: &str) -> String {
        redis_cli(self.port, &["SCRIPT", "LOAD", script]).expect("SCRIPT LOAD")
    }
}

/// Runs `redis-cli -p <port> <args>` and returns its trimmed output.
pub fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The quota service (`target/release/tollgate-quota`), pinned to `cpu`.
pub struct Quota {
    pub proc: Proc,
    pub port: u16,
    /// Redis behind it, if any (dropped with it).
    pub redis: Option<Redis>,
}

impl Quota {
    pub fn start(root: &Path, bin: &Path, store: QuotaStore, quota_cpu: u32, redis_cpu: u32) -> Quota {
        let redis = (store == QuotaStore::Redis).then(|| Redis::start(root, redis_cpu));
        let port = free_port();
        let dir = scratch(root, "quota");
        let log: PathBuf = dir.join(format!("quota-{}.log", store.name().to_lowercase()));
        let store_arg = redis.as_ref().map_or_else(|| "memory".to_owned(), Redis::url);
        let args = vec!["--listen".to_owned(), format!("127.0.0.1:{port}"), "--store".to_owned(), store_arg];
        let proc = Proc::spawn_pinned(quota_cpu, bin, &args, &log, &dir);
        wait_until(Duration::from_secs(30), "tollgate-quota", || {
            proc.assert_running(&log);
            http_get(port, "/healthz").is_some_and(|(status, _)| status == 200)
        });
        Quota { proc, port, redis }
    }
}
