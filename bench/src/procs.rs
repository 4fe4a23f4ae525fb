//! Child processes pinned to a core, their CPU time, and a little HTTP over plain TCP.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A child process, killed (by its own pid) when dropped.
pub struct Proc {
    child: Child,
    pub name: String,
}

impl Proc {
    /// Runs `bin args` under `taskset -c <cpu>`; taskset execs the program, so the pid is
    /// the program's own. Output goes to `log`.
    pub fn spawn_pinned(cpu: u32, bin: &Path, args: &[String], log: &Path, dir: &Path) -> Proc {
        let out = File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let child = Command::new("taskset")
            .arg("-c")
            .arg(cpu.to_string())
            .arg(bin)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Proc { child, name: bin.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()) }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with the end of the log if the process has exited.
    pub fn assert_running(&self, log: &Path) {
        let alive = fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .is_ok_and(|stat| !matches!(stat_field(&stat, 3).as_deref(), Some("Z" | "X")));
        if !alive {
            panic!("{} exited; end of {}:\n{}", self.name, log.display(), tail(log, 40));
        }
    }

    /// User + system CPU time of the whole process (all threads) so far.
    pub fn cpu(&self) -> Duration {
        cpu_time(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Field `n` (1-based, as in proc(5)) of a `/proc/<pid>/stat` line. The command name may
/// hold spaces, so fields are counted after its closing parenthesis.
fn stat_field(stat: &str, n: usize) -> Option<String> {
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(n - 3).map(str::to_owned)
}

fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

/// utime + stime of a process (all its threads), from `/proc/<pid>/stat`; zero once gone.
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    let ticks: u64 = [14, 15].iter().filter_map(|&n| stat_field(&stat, n)?.parse::<u64>().ok()).sum();
    Duration::from_micros(ticks * 1_000_000 / clock_ticks_per_second())
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// Polls `ready` every 50 ms until it holds; panics after `deadline`.
pub fn wait_until(deadline: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < deadline, "{what} not ready after {deadline:?}");
        sleep(Duration::from_millis(50));
    }
}

/// A reply read off the wire: status and header lines (names lower-cased).
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Sends one raw HTTP/1.1 request (`Connection: close` is added) and reads the reply.
pub fn http_raw(port: u16, head: &str, body: &str) -> Option<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let request =
        format!("{head}\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(request.as_bytes()).ok()?;
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Reply { status, headers, body: body.to_owned() })
}

/// `GET path`: status and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_raw(port, &format!("GET {path} HTTP/1.1"), "").map(|r| (r.status, r.body))
}

/// A scratch directory under `target/bench`.
pub fn scratch(root: &Path, name: &str) -> PathBuf {
    let dir = root.join("target/bench").join(name);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}
