//! The load tools: wrk (HTTP, with `bench/lua/requests.lua`) and redis-benchmark.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::procs::cpu_time;

/// What one wrk run measured.
#[derive(Debug, Clone, Default)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Non-2xx/3xx answers, plus connect/read/write errors and timeouts.
    pub errors: u64,
    /// wrk's own CPU use over the run, in % of one core (100 = the load tool was saturated).
    pub tool_cpu_pct: f64,
}

impl WrkResult {
    pub fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }
}

pub struct Wrk<'a> {
    pub script: &'a Path,
    pub cpu: u32,
}

impl Wrk<'_> {
    /// `wrk -t1 -c<connections> -d<duration>` against `http://127.0.0.1:<port><path>`,
    /// pinned to the load core, with the script's `args`.
    pub fn run(&self, port: u16, path: &str, connections: u32, duration: Duration, args: &[String]) -> WrkResult {
        let secs = duration.as_secs().max(1);
        let child = Command::new("taskset")
            .args(["-c", &self.cpu.to_string(), "wrk", "-t1"])
            .arg(format!("-c{connections}"))
            .arg(format!("-d{secs}s"))
            .args(["--timeout", "5s", "-s"])
            .arg(self.script)
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .arg("--")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wrk (apt-get install wrk)");
        let pid = child.id();
        let started = Instant::now();
        let cpu_us = Arc::new(AtomicU64::new(0));
        let finished = Arc::new(AtomicBool::new(false));
        // Samples wrk's CPU time until it exits (the last sample is at most 100 ms old),
        // and kills it by its pid if it overruns its duration by far.
        let sampler = {
            let (cpu_us, finished) = (Arc::clone(&cpu_us), Arc::clone(&finished));
            let limit = Duration::from_secs(secs + 30);
            thread::spawn(move || {
                while !finished.load(Ordering::SeqCst) {
                    let now = u64::try_from(cpu_time(pid).as_micros()).unwrap_or(u64::MAX);
                    cpu_us.fetch_max(now, Ordering::SeqCst);
                    if started.elapsed() > limit {
                        let _ = Command::new("kill").arg(pid.to_string()).status();
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let output = child.wait_with_output().expect("wait for wrk");
        let wall = started.elapsed();
        finished.store(true, Ordering::SeqCst);
        let _ = sampler.join();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .find(|l| l.starts_with("BENCH_RESULT"))
            .unwrap_or_else(|| panic!("wrk printed no result:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr)));
        let field = |name: &str| -> u64 {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
                .unwrap_or_else(|| panic!("wrk result without {name}: {line}"))
        };
        let errors = ["connect", "read", "write", "status", "timeout"].iter().map(|n| field(n)).sum();
        WrkResult {
            requests: field("requests"),
            seconds: field("duration_us") as f64 / 1e6,
            p50_us: field("p50_us") as f64,
            p99_us: field("p99_us") as f64,
            errors,
            tool_cpu_pct: cpu_us.load(Ordering::SeqCst) as f64 / wall.as_micros().max(1) as f64 * 100.0,
        }
    }
}

/// What one redis-benchmark run measured.
#[derive(Debug, Clone, Default)]
pub struct RedisBenchResult {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
}

/// `redis-benchmark --csv -c <clients> -P <pipeline> -n <requests> -r <keyspace> <command...>`
/// pinned to `cpu`. `__rand_int__` in the command becomes a random number below `keyspace`.
pub fn redis_benchmark(
    cpu: u32,
    port: u16,
    clients: u32,
    pipeline: u32,
    requests: u64,
    keyspace: usize,
    command: &[String],
) -> RedisBenchResult {
    let output = Command::new("taskset")
        .args(["-c", &cpu.to_string(), "redis-benchmark", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &clients.to_string(), "-P", &pipeline.to_string(), "-n", &requests.to_string()])
        .args(["-r", &keyspace.to_string(), "--csv"])
        .args(command)
        .output()
        .expect("start redis-benchmark (apt-get install redis-tools)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    // --csv: a header line, then "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",
    // "p95_latency_ms","p99_latency_ms","max_latency_ms".
    let row = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    let fields: Vec<f64> = row.split(',').skip(1).filter_map(|f| f.trim_matches('"').parse().ok()).collect();
    if fields.len() < 6 {
        panic!("redis-benchmark printed no result:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    }
    RedisBenchResult { rps: fields[0], p50_us: fields[3] * 1000.0, p99_us: fields[5] * 1000.0, requests }
}
