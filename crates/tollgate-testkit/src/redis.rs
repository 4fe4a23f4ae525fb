//! Real `redis-server` processes on free ports, without persistence (or with an append-only
//! file), each in its own
//! directory; and a three-master Redis Cluster.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::ports::{free_port, free_port_with_bus};
use crate::process::{self, Process};
use crate::scratch;
use crate::wait::Wait;

/// How long `redis-server` may take to answer PING.
pub const START_DEADLINE: Duration = Duration::from_secs(30);
const INSTALL: &str = "The Redis tests need it: `apt-get install -y redis-server` (Debian/Ubuntu) puts \
                       redis-server and redis-cli on the PATH";

/// `redis-server`'s arguments: `port`, on 127.0.0.1, files in `dir`, no persistence but
/// with `aof` the append-only file fsynced every second; a cluster node also gets
/// `--cluster-enabled` (its bus port is `port + 10000`).
pub fn args(port: u16, dir: &Path, cluster: bool, aof: bool) -> Vec<String> {
    let port = port.to_string();
    let dir = dir.to_str().expect("UTF-8 path");
    let appendonly = if aof { "yes" } else { "no" };
    let mut args: Vec<String> = [
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        appendonly,
        "--appendfsync",
        "everysec",
        "--daemonize",
        "no",
        "--dir",
        dir,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if cluster {
        args.extend(["--cluster-enabled", "yes", "--cluster-config-file"].map(str::to_owned));
        args.push(format!("nodes-{port}.conf"));
    }
    args
}

/// Whether a Redis server answers PING on `port`.
pub fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// `redis-cli -p <port> args...`: its stdout, or why it failed.
pub fn cli(port: u16, args: &[&str]) -> Result<String, String> {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run redis-cli ({e}). {INSTALL}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!("redis-cli {args:?}: {}", String::from_utf8_lossy(&output.stderr)))
    }
}

/// Where and how a [`Redis`] runs.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// Its directory (kept); `None`: a fresh temporary one, removed on drop.
    pub dir: Option<PathBuf>,
    /// A node for a cluster (`--cluster-enabled yes`, on a port whose bus port is free).
    pub cluster: bool,
    /// The core to pin it to, if any.
    pub cpu: Option<u32>,
    /// `--appendonly yes --appendfsync everysec`: a restart replays the append-only file.
    pub aof: bool,
}

/// A running `redis-server`; killed on drop.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    remove_dir: bool,
    options: RedisOptions,
    process: Option<Process>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with(RedisOptions::default())
    }

    /// A node for a cluster; see [`RedisCluster`].
    pub fn start_cluster_node() -> Redis {
        Self::start_with(RedisOptions { cluster: true, ..RedisOptions::default() })
    }

    /// Starts a server on a free port; another one if that port was taken meanwhile (the
    /// server exits), up to five.
    pub fn start_with(options: RedisOptions) -> Redis {
        let (dir, remove_dir) = match &options.dir {
            Some(dir) => (scratch::at(dir), false),
            None => (scratch::fresh_temp("redis"), true),
        };
        let mut redis = Redis { port: 0, dir, remove_dir, options, process: None };
        for _ in 0..5 {
            redis.port = if redis.options.cluster { free_port_with_bus() } else { free_port() };
            if redis.spawn() {
                return redis;
            }
        }
        panic!("redis-server did not start on any of 5 free ports (see {})", redis.dir.display());
    }

    /// Starts the process and waits until it answers PING; false if it exited (port taken).
    fn spawn(&mut self) -> bool {
        let mut command = process::command(Path::new("redis-server"), self.options.cpu);
        command.args(args(self.port, &self.dir, self.options.cluster, self.options.aof));
        let log = self.dir.join(format!("redis-{}.log", self.port));
        let process = Process::start("redis-server", command, &log, INSTALL);
        let port = self.port;
        let started = process.wait_ready(START_DEADLINE, || ping(port)).is_ok();
        self.process = started.then_some(process);
        started
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's process (`None` while stopped).
    pub fn process(&self) -> Option<&Process> {
        self.process.as_ref()
    }

    /// Kills the server (SIGKILL): without `aof` all data is lost.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Kills the server and starts a new one on the same port and directory (empty
    /// without `aof`; with it, what the append-only file kept).
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server could not start again on port {}", self.port);
    }

    /// `redis-cli -p <port> args...`: its stdout; panics if it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until `redis-cli args...` prints `expected` (trimmed), such as `EXISTS key`
    /// printing `0` once the key expired.
    pub fn wait_for_cli(&self, args: &[&str], expected: &str, wait: Wait) {
        wait.until_ok(|| {
            let out = self.cli(args);
            if out.trim() == expected {
                Ok(())
            } else {
                Err(format!("redis-cli {args:?} printed {:?}", out.trim()))
            }
        });
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Three masters, no replicas, all slots assigned; killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<Redis> = (0..3).map(|_| Redis::start_cluster_node()).collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}). {INSTALL}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        for node in &nodes {
            Wait::new(format!("the cluster node on port {} to reach cluster_state:ok", node.port))
                .at_most(START_DEADLINE)
                .until(|| node.cli(&["cluster", "info"]).contains("cluster_state:ok"));
        }
        RedisCluster { nodes }
    }

    /// `--store` for this cluster.
    pub fn location(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}
