//! The processes behind the global path, `redis-server` and the `tollgate-quota` service,
//! and the stand-in AI upstream of the metering runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tollgate_testkit::{ports, quota_service, redis};

use crate::procs::{free_port, scratch, Proc};
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
        let args = redis::args(port, &dir, false, false);
        let proc = Proc::spawn_pinned(cpu, Path::new("redis-server"), &args, &dir.join("redis.log"), &dir);
        proc.expect_ready(Duration::from_secs(30), || redis::ping(port));
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
    redis::cli(port, args).ok().map(|out| out.trim().to_owned())
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
        let args = quota_service::args(port, &store_arg, None, Some(quota_service::DEV_SERVICE_TOKEN));
        let proc = Proc::spawn_pinned(quota_cpu, bin, &args, &log, &dir);
        proc.expect_ready(Duration::from_secs(30), || quota_service::healthy(port));
        Quota { proc, port, redis }
    }
}

/// The stand-in AI upstream (`tollgate-standin`), on any core; stopped when dropped.
///
/// Not pinned: next to wrk on the load tool's core, its thread per connection and wrk
/// starved each other on a busy machine (1.1k req/s through a no-filter Envoy, against
/// 6.4k unpinned, measured back to back). Envoy's CPU time per request, the metering
/// runs' measure, is its process's alone either way.
pub struct Standin {
    _proc: Proc,
    pub port: u16,
}

impl Standin {
    pub fn start(root: &Path, bin: &Path) -> Standin {
        let port = free_port();
        let dir = scratch(root, "standin");
        let proc = Proc::spawn_on(None, bin, &[port.to_string()], &dir.join("standin.log"), &dir);
        proc.expect_ready(Duration::from_secs(30), || ports::is_open(port));
        Standin { _proc: proc, port }
    }
}
