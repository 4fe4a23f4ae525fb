//! Child processes pinned to a core and their CPU time. Ports, waiting, scratch
//! directories and HTTP over plain TCP are tollgate-testkit's; the names here keep the
//! harness's own.

use std::fs;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use tollgate_testkit::http::Reply;
pub use tollgate_testkit::ports::free_port;
use tollgate_testkit::process::{self, Process};
use tollgate_testkit::{http, scratch as dirs, wait};

/// A child process, killed (by its own pid) when dropped.
pub struct Proc(Process);

impl Proc {
    /// Runs `bin args` under `taskset -c <cpu>`; taskset execs the program, so the pid is
    /// the program's own. Output goes to `log`.
    pub fn spawn_pinned(cpu: u32, bin: &Path, args: &[String], log: &Path, dir: &Path) -> Proc {
        Proc::spawn_on(Some(cpu), bin, args, log, dir)
    }

    /// As [`Proc::spawn_pinned`], or on any core the scheduler picks (`cpu` `None`).
    pub fn spawn_on(cpu: Option<u32>, bin: &Path, args: &[String], log: &Path, dir: &Path) -> Proc {
        let mut command = process::command(bin, cpu);
        command.args(args).current_dir(dir);
        let name = bin.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        Proc(Process::start(&name, command, log, ""))
    }

    /// Panics with the end of `log` (where it writes) if the process has exited.
    pub fn assert_running(&self, log: &Path) {
        if let Some(status) = self.0.exit_status() {
            panic!("{} exited ({status}); end of {}:\n{}", self.0.name(), log.display(), process::tail(log, 40));
        }
    }

    /// User + system CPU time of the whole process (all threads) so far.
    pub fn cpu(&self) -> Duration {
        cpu_time(self.pid())
    }
}

impl From<Process> for Proc {
    fn from(process: Process) -> Proc {
        Proc(process)
    }
}

impl Deref for Proc {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.0
    }
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

/// Polls `ready` until it holds; panics after `deadline`, naming `what`.
pub fn wait_until(deadline: Duration, what: &str, ready: impl FnMut() -> bool) {
    wait::until(what, deadline, ready);
}

/// Sends one raw HTTP/1.1 request (`Connection: close` is added) and reads the reply.
pub fn http_raw(port: u16, head: &str, body: &str) -> Option<Reply> {
    let request =
        format!("{head}\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    http::try_exchange(port, request.as_bytes(), Duration::from_secs(10))
}

/// `GET path`: status and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http::get(port, path).map(|r| (r.status, r.body))
}

/// A scratch directory under `target/bench`.
pub fn scratch(root: &Path, name: &str) -> PathBuf {
    dirs::at(&root.join("target/bench").join(name))
}
