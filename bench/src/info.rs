//! The machine, the versions of everything measured, and how busy the machine was.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
    /// `/proc/loadavg` (1, 5, 15 min) before and after the run.
    pub load_before: String,
    pub load_after: String,
    /// How busy all CPUs were during one second just before the run, in %.
    pub busy_before_pct: f64,
    /// CPU time stolen by the hypervisor during the whole run, in % of all CPU time.
    pub steal_pct: f64,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_owned()))
            .unwrap_or_default();
        let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:")?.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let os = fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned()))
            .unwrap_or_default();
        let (a, b) = (cpu_counters(), {
            sleep(Duration::from_secs(1));
            cpu_counters()
        });
        Machine {
            cpus,
            model,
            memory_gib: mem_kib / 1024.0 / 1024.0,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
            os,
            load_before: loadavg(),
            load_after: String::new(),
            busy_before_pct: busy_pct(&a, &b),
            steal_pct: 0.0,
        }
    }
}

/// The first three fields of `/proc/loadavg`.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').take(3).collect::<Vec<_>>().join(" ")
}

/// The aggregate `cpu` line of `/proc/stat`: user nice system idle iowait irq softirq steal.
pub fn cpu_counters() -> Vec<u64> {
    fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .next()
        .map(|l| l.split_whitespace().skip(1).take(8).filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_default()
}

fn delta(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| y.saturating_sub(*x)).collect()
}

pub fn busy_pct(a: &[u64], b: &[u64]) -> f64 {
    let d = delta(a, b);
    let total: u64 = d.iter().sum();
    let idle = d.get(3).copied().unwrap_or(0) + d.get(4).copied().unwrap_or(0);
    100.0 * total.saturating_sub(idle) as f64 / total.max(1) as f64
}

pub fn steal_pct(a: &[u64], b: &[u64]) -> f64 {
    let d = delta(a, b);
    100.0 * d.get(7).copied().unwrap_or(0) as f64 / d.iter().sum::<u64>().max(1) as f64
}

/// The first line of `program args` (stdout, else stderr) matching `keep`.
fn version_of(program: &Path, args: &[&str], keep: impl Fn(&str) -> Option<String>) -> String {
    let Ok(out) = Command::new(program).args(args).output() else {
        return "not found".to_owned();
    };
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    text.lines().find_map(keep).unwrap_or_else(|| "unknown".to_owned())
}

/// Name and version of everything that shapes the numbers.
pub fn versions(envoy: &Path) -> Vec<(String, String)> {
    let first = |l: &str| (!l.trim().is_empty()).then(|| l.trim().to_owned());
    vec![
        (
            "Envoy".into(),
            version_of(envoy, &["--version"], |l| {
                let v = l.split("version: ").nth(1)?;
                Some(v.trim().to_owned())
            }),
        ),
        ("rustc".into(), version_of(Path::new("rustc"), &["--version"], first)),
        (
            "Redis".into(),
            version_of(Path::new("redis-server"), &["--version"], |l| {
                l.split_whitespace().find_map(|w| w.strip_prefix("v=")).map(str::to_owned)
            }),
        ),
        (
            "wrk".into(),
            version_of(Path::new("wrk"), &["-v"], |l| {
                l.strip_prefix("wrk ").map(|v| v.split(" Copyright").next().unwrap_or(v).to_owned())
            }),
        ),
        ("redis-benchmark".into(), version_of(Path::new("redis-benchmark"), &["--version"], first)),
    ]
}

/// `git describe`-like: the commit measured, and whether the tree had local changes.
pub fn commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"]);
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no", "--", "src", "crates", "Cargo.toml", "Cargo.lock"]);
    if dirty.is_empty() {
        head
    } else {
        format!("{head} (with uncommitted changes to the measured code)")
    }
}

/// `date -u` in ISO form.
pub fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
