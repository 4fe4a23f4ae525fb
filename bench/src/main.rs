//! `tollgate-bench`: the harness behind `make bench`.
//!
//! Starts every configuration in turn (Envoy without a filter, Envoy's native local rate
//! limit, a no-op wasm filter, tollgate's local, anonymous and global paths, metered routes
//! before the stand-in AI upstream, the quota service alone and Redis alone), drives the
//! same load against each with wrk, and writes
//! `BENCHMARKS.md`. `tollgate-bench report [<results.json> [<report.md>]]` rewrites a
//! report from saved results (by default `target/bench/results.json` → `BENCHMARKS.md`)
//! without measuring again.
//!
//! Settings come from the environment: `BENCH_QUICK=1` (a short smoke run, reported to
//! `target/bench/BENCHMARKS.quick.md`), `BENCH_ROUNDS`, `BENCH_SECS`, `BENCH_WARMUP_SECS`,
//! `BENCH_IDLE_SECS`, `BENCH_ONLY=<id>,<id>` (those configurations only, plus the
//! baseline; `quota` for the quota-service section, `micro` for criterion, `profile` for
//! the perf profiles, `hostcalls` for the host-call probe; reported to `target/bench`).
//! `BENCH_PREMETER_WASM=<file>`: tollgate built before metering (`tollgate-local-1-premeter`,
//! side by side with `tollgate-local-1`); without it that configuration is left out.

#![forbid(unsafe_code)]

mod envoy;
mod hostcalls;
mod info;
mod load;
mod micro;
mod procs;
mod report;
mod run;
mod scenario;
mod services;
mod stats;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::envoy::{Template, Wasm};
use crate::info::Machine;
use crate::micro::Micro;
use crate::run::{Bench, Profile, Run, Settings, ENVOY_CPU, LOAD_CPU};
use crate::scenario::{baselines, metering_scenarios, scenarios, Filter, QuotaStore};

/// Everything a report is written from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub date: String,
    pub command: String,
    pub minutes: f64,
    pub commit: String,
    pub settings: Settings,
    pub machine: Machine,
    pub versions: Vec<(String, String)>,
    /// Envoy runs, baselines included, in the order they ran.
    pub runs: Vec<Run>,
    /// The quota service and redis-benchmark runs.
    pub quota_runs: Vec<Run>,
    /// Two tollgate configurations side by side ([`SIDE_BY_SIDE`]): `id` is
    /// `<configuration>/<reference>`, and the baseline is the reference.
    #[serde(default)]
    pub side_by_side: Vec<Run>,
    pub micro: Vec<Micro>,
    /// perf profiles of a few configurations (extra runs).
    #[serde(default)]
    pub profiles: Vec<Profile>,
    /// `.wasm` file name and size in bytes.
    pub sizes: Vec<(String, u64)>,
    /// The file name of the filter built before metering (`BENCH_PREMETER_WASM`), if run.
    #[serde(default)]
    pub premeter: Option<String>,
    /// What single host calls cost inside Envoy (`bench/probe`).
    #[serde(default)]
    pub hostcalls: Vec<hostcalls::HostCall>,
}

/// Goals that compare two tollgate configurations are also measured with the two taking
/// turns directly (configuration, reference), as each does with the no-filter Envoy: the
/// ratio of two ratios taken at different moments carries the drift of both.
pub const SIDE_BY_SIDE: [(&str, &str); 5] = [
    ("tollgate-local-10k", "tollgate-local-1"),
    ("global-default-redis", "tollgate-local-1"),
    ("tollgate-local-1", "tollgate-local-1-premeter"),
    ("image-1k-metered", "image-1k-local"),
    ("chat-stream-metered", "chat-stream-unmetered"),
];

fn env_u64(name: &str, default: u64) -> u64 {
    env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn settings() -> Settings {
    let quick = env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let (rounds, warmup, secs, idle) = if quick { (1, 1, 2, 1) } else { (3, 2, 8, 4) };
    Settings {
        quick,
        rounds: env_u64("BENCH_ROUNDS", rounds).max(1) as usize,
        warmup_secs: env_u64("BENCH_WARMUP_SECS", warmup),
        secs: env_u64("BENCH_SECS", secs).max(1),
        idle_secs: env_u64("BENCH_IDLE_SECS", idle).max(1),
        connections: 64,
        quota_clients: 50,
    }
}

/// The command line that reproduces this run, as the report prints it.
fn command(settings: &Settings, only: &Option<Vec<String>>) -> String {
    let mut vars = Vec::new();
    if settings.quick {
        vars.push("BENCH_QUICK=1".to_owned());
    }
    for name in ["BENCH_ROUNDS", "BENCH_SECS", "BENCH_WARMUP_SECS", "BENCH_IDLE_SECS", "BENCH_PREMETER_WASM"] {
        if let Ok(v) = env::var(name) {
            vars.push(format!("{name}={v}"));
        }
    }
    if let Some(only) = only {
        vars.push(format!("BENCH_ONLY={}", only.join(",")));
    }
    vars.push("make bench".to_owned());
    vars.join(" ")
}

fn root() -> PathBuf {
    let here = env::current_dir().expect("current directory");
    if here.join("envoy.yaml").exists() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench/ has a parent").to_path_buf()
}

fn required(path: PathBuf, hint: &str) -> PathBuf {
    assert!(path.exists(), "{} is missing: {hint}", path.display());
    path
}

fn main() {
    let root = root();
    let results_path = root.join("target/bench/results.json");
    let args: Vec<String> = env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("report") {
        let input = args.get(1).map_or_else(|| results_path.clone(), PathBuf::from);
        let output = args.get(2).map_or_else(|| root.join("BENCHMARKS.md"), PathBuf::from);
        let text = fs::read_to_string(&input)
            .unwrap_or_else(|e| panic!("read {} ({e}): run make bench first", input.display()));
        let results: Results = serde_json::from_str(&text).expect("parse the results");
        fs::write(&output, report::render(&results)).expect("write the report");
        eprintln!("bench: wrote {}", output.display());
        return;
    }

    let started = Instant::now();
    // The tree as built: `make bench` builds everything just before this starts.
    let commit = info::commit(&root);
    let settings = settings();
    let only: Option<Vec<String>> = env::var("BENCH_ONLY")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    let wanted = |id: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == id));
    let envoy_bin = PathBuf::from(env::var("ENVOY_BIN").expect("set ENVOY_BIN (make bench does)"));
    let premeter = env::var("BENCH_PREMETER_WASM")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| required(PathBuf::from(v), "BENCH_PREMETER_WASM names a .wasm built before metering"));
    let configs: Vec<_> = scenarios()
        .into_iter()
        .chain(metering_scenarios())
        .filter(|s| wanted(s.id) && (s.filter != Filter::TollgatePremeter || premeter.is_some()))
        .collect();
    let quota_bin = root.join("target/release/tollgate-quota");
    if wanted("quota") || configs.iter().any(|s| matches!(s.filter, Filter::TollgateGlobal { .. })) {
        required(quota_bin.clone(), "cargo build --release -p tollgate-quota");
    }
    let standin_bin = root.join("target/release/tollgate-standin");
    if configs.iter().any(|s| s.upstream) {
        required(standin_bin.clone(), "cargo build --release -p tollgate-testkit --bin tollgate-standin");
    }
    let bench = Bench {
        quota_bin,
        standin_bin,
        template: Template::load(&root),
        wasm: Wasm {
            tollgate: required(root.join("target/wasm32-wasip1/release/tollgate.wasm"), "make wasm"),
            noop: required(
                root.join("target/wasm32-wasip1/release/noop_filter.wasm"),
                "cargo build --release --target wasm32-wasip1 -p tollgate-bench --lib",
            ),
            hostcalls: required(
                root.join("target/wasm32-wasip1/release/hostcall_floor.wasm"),
                "cargo build --release --target wasm32-wasip1 -p tollgate-hostcall-floor",
            ),
            premeter: premeter.clone(),
        },
        script: required(root.join("bench/lua/requests.lua"), "part of the repository"),
        envoy_bin,
        root: root.clone(),
        settings: settings.clone(),
    };

    let mut machine = Machine::read();
    eprintln!(
        "bench: load average {}, CPUs {:.0}% busy just before the start{}",
        machine.load_before,
        machine.busy_before_pct,
        if machine.busy_before_pct > 15.0 { " (other work is running: numbers will be lower and noisier)" } else { "" }
    );
    let counters_before = info::cpu_counters();

    let bases = baselines();
    let mut runs = Vec::new();
    let mut quota_runs = Vec::new();
    let mut side_by_side = Vec::new();
    for round in 0..settings.rounds {
        // Odd rounds go backwards, so no configuration always runs at the same point of a round.
        let order: Vec<_> =
            if round.is_multiple_of(2) { configs.iter().collect() } else { configs.iter().rev().collect() };
        for (i, scenario) in order.into_iter().enumerate() {
            let progress = format!("round {}/{} {:>2}/{}", round + 1, settings.rounds, i + 1, configs.len());
            let base = bases.iter().find(|b| b.id == scenario.base).expect("every configuration has its baseline");
            let (reference, run) = bench.pair(base, scenario, round);
            eprintln!(
                "bench: {progress} {:<22} {:>8.0} req/s  {:.2}× no filter ({:.0} req/s)  {}",
                scenario.id,
                run.rps,
                run.rps / reference.rps.max(1.0),
                reference.rps,
                run.notes.join("; ")
            );
            runs.push(reference);
            runs.push(run);
        }
        for (id, reference) in SIDE_BY_SIDE {
            let find = |id: &str| configs.iter().find(|s| s.id == id);
            let (Some(scenario), Some(peer)) = (find(id), find(reference)) else { continue };
            let (peer_run, mut run) = bench.pair(peer, scenario, round);
            eprintln!(
                "bench: round {} {:<22} {:>8.0} req/s  {:.3}× {reference} side by side ({:.0} req/s)",
                round + 1,
                id,
                run.rps,
                run.rps / peer_run.rps.max(1.0),
                peer_run.rps
            );
            run.id = format!("{id}/{reference}");
            side_by_side.push(run);
        }
        if wanted("quota") {
            for store in [QuotaStore::Memory, QuotaStore::Redis] {
                let run = bench.quota_run(store, round);
                eprintln!(
                    "bench: round {} {:<22} {:>8.0} decisions/s  p99 {:.0} µs",
                    round + 1,
                    run.id,
                    run.rps,
                    run.p99_us
                );
                quota_runs.push(run);
            }
            for pipeline in [1, 16] {
                let run = bench.redis_run(pipeline, round);
                eprintln!(
                    "bench: round {} {:<22} {:>8.0} calls/s  p99 {:.0} µs",
                    round + 1,
                    run.id,
                    run.rps,
                    run.p99_us
                );
                quota_runs.push(run);
            }
        }
    }
    let mut profiles = Vec::new();
    if wanted("profile") {
        let profiled =
            ["wasm-noop", "tollgate-local-1", "tollgate-local-10k", "global-default-redis", "global-strict-redis"];
        for scenario in bases.iter().take(1).chain(configs.iter().filter(|s| profiled.contains(&s.id))) {
            match bench.profile(scenario) {
                Some(profile) => {
                    eprintln!("bench: profiled {:<22} {:.1} µs CPU/request", profile.id, profile.envoy_cpu_us);
                    profiles.push(profile);
                }
                None => {
                    eprintln!("bench: perf is missing or not allowed: no profile (apt-get install linux-perf)");
                    break;
                }
            }
        }
    }
    machine.steal_pct = info::steal_pct(&counters_before, &info::cpu_counters());
    machine.load_after = info::loadavg();

    let micro = if wanted("micro") {
        eprintln!("bench: criterion micro-benchmarks of tollgate-core (log: target/bench/criterion.log)");
        let micro = micro::run(&root, LOAD_CPU, settings.quick);
        for m in &micro {
            eprintln!("bench: {:<40} {:>10.1} ns", m.name, m.median_ns);
        }
        micro
    } else {
        Vec::new()
    };
    let hostcalls = if wanted("hostcalls") {
        let probe = required(
            root.join("target/wasm32-wasip1/release/hostcall_probe.wasm"),
            "cargo build --release --target wasm32-wasip1 -p tollgate-hostcall-probe",
        );
        let calls = hostcalls::measure(&bench.envoy_bin, &probe, &root, ENVOY_CPU, settings.quick);
        for call in &calls {
            eprintln!("bench: host call {:<22} {:>8.1} ns", call.name, call.ns);
        }
        calls
    } else {
        Vec::new()
    };
    let sizes = [Some(&bench.wasm.tollgate), Some(&bench.wasm.noop), bench.wasm.premeter.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| {
            let name = p.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            (name, fs::metadata(p).map_or(0, |m| m.len()))
        })
        .collect();

    let results = Results {
        date: info::now_utc(),
        command: command(&settings, &only),
        minutes: started.elapsed().as_secs_f64() / 60.0,
        commit,
        versions: info::versions(&bench.envoy_bin),
        settings,
        machine,
        runs,
        quota_runs,
        side_by_side,
        micro,
        profiles,
        sizes,
        hostcalls,
        premeter: premeter.as_deref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()),
    };
    let partial = only.is_some();
    let results_path =
        if partial || results.settings.quick { root.join("target/bench/results.partial.json") } else { results_path };
    fs::write(&results_path, serde_json::to_string_pretty(&results).expect("serialize results"))
        .expect("write results");
    let target = if partial || results.settings.quick {
        root.join("target/bench/BENCHMARKS.quick.md")
    } else {
        root.join("BENCHMARKS.md")
    };
    fs::write(&target, report::render(&results)).expect("write the report");
    eprintln!("bench: wrote {} in {:.1} minutes", target.display(), results.minutes);
}
