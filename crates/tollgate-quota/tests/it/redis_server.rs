//! Real `redis-server` processes on free ports, without persistence, each in its own
//! scratch directory; killed (and the directory removed) on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

const STARTUP: Duration = Duration::from_secs(20);
static INSTANCE: AtomicU32 = AtomicU32::new(0);

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    cluster: bool,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_kind(false)
    }

    /// A node for a cluster (`--cluster-enabled yes`); its bus port is `port + 10000`.
    pub fn start_cluster_node() -> RedisServer {
        Self::start_kind(true)
    }

    fn start_kind(cluster: bool) -> RedisServer {
        let n = INSTANCE.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("tollgate-quota-tests/{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for _ in 0..5 {
            let mut server = RedisServer { port: free_port(), dir: dir.clone(), cluster, child: None };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports (see {})", dir.display());
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the process and waits until it answers PING; false if it exited (port taken).
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command.args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        command.args(["--daemonize", "no", "--dir"]).arg(&self.dir);
        command.arg("--logfile").arg(self.dir.join(format!("redis-{port}.log")));
        if self.cluster {
            command.args(["--cluster-enabled", "yes", "--cluster-config-file"]);
            command.arg(self.dir.join(format!("nodes-{port}.conf")));
        }
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run redis-server ({e}). The Redis tests need it: `apt-get install -y redis-server` \
                 (Debian/Ubuntu) puts redis-server and redis-cli on the PATH"
            )
        });
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    return false;
                }
            }
            if ping(self.port) {
                return true;
            }
            sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING within {STARTUP:?}", self.port);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts a new one on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server could not start again on port {}", self.port);
    }

    /// `redis-cli -p <port> args...`, stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let output =
            Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().unwrap_or_else(|e| {
                panic!("cannot run redis-cli ({e}): `apt-get install -y redis-server` installs it")
            });
        assert!(output.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// A free port whose cluster bus port (+10000) is free as well.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if port <= 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Three masters, no replicas, all slots assigned; killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_cluster_node()).collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): `apt-get install -y redis-server` installs it"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let deadline = Instant::now() + STARTUP;
        for node in &nodes {
            while !node.cli(&["cluster", "info"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the cluster never reached cluster_state:ok");
                sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// `--store` for this cluster.
    pub fn location(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}
