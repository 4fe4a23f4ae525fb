//! The measurements: a configuration next to its no-filter baseline (start what both
//! need, check that they work, warm up, let them take turns at full load and at one
//! connection, read CPU time and stats), the quota service, Redis, and perf profiles.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::envoy::{Envoy, Ports, Template, Wasm};
use crate::load::{redis_benchmark, Wrk, WrkResult};
use crate::procs::{http_raw, scratch, Proc};
use crate::scenario::{check_limits, check_script_args, token, Filter, QuotaStore, Scenario, CHECK_PATH, MANY};
use crate::services::{redis_cli, Quota, Redis, Standin};
use crate::stats::Spread;
use tollgate_testkit::quota_service::DEV_SERVICE_TOKEN;

/// Envoy runs on this core with its one worker; the load tool (and, for the global path,
/// the quota service and Redis) on the other.
pub const ENVOY_CPU: u32 = 0;
pub const LOAD_CPU: u32 = 1;

/// How long and how hard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    pub warmup_secs: u64,
    pub secs: u64,
    pub idle_secs: u64,
    pub connections: u32,
    pub quota_clients: u32,
}

/// One measurement of one configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub round: usize,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
    pub errors: u64,
    /// CPU time per request of Envoy, the quota service and Redis, in µs.
    pub envoy_cpu_us: Option<f64>,
    pub quota_cpu_us: Option<f64>,
    pub redis_cpu_us: Option<f64>,
    /// The load tool's CPU use, % of its core.
    pub tool_cpu_pct: Option<f64>,
    /// Latency at one connection.
    pub idle_p50_us: Option<f64>,
    pub idle_p99_us: Option<f64>,
    /// The no-filter Envoy measured in turns with this one.
    pub baseline: Option<Paired>,
    /// Anything that makes the run doubtful (refusals, failed callouts, errors).
    pub notes: Vec<String>,
    /// Things worth knowing that do not make the run doubtful (stats of the filter).
    #[serde(default)]
    pub observations: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Paired {
    pub rps: f64,
    pub idle_p50_us: f64,
    pub idle_p99_us: f64,
    #[serde(default)]
    pub envoy_cpu_us: Option<f64>,
    /// Its p99 under load (absent in results of older runs).
    #[serde(default)]
    pub p99_us: Option<f64>,
}

pub struct Bench {
    pub root: PathBuf,
    pub envoy_bin: PathBuf,
    pub quota_bin: PathBuf,
    /// `tollgate-standin`, the stand-in AI upstream of the metering runs.
    pub standin_bin: PathBuf,
    pub template: Template,
    pub wasm: Wasm,
    pub script: PathBuf,
    pub settings: Settings,
}

/// Stats whose non-zero value means a run did not measure the admit path it claims to.
const BAD_STATS: [&str; 12] = [
    ".limited",
    ".unauthenticated",
    ".malformed",
    ".store_bypassed",
    ".store_refused",
    ".quota_unavailable",
    "tollgate.store.errors",
    "tollgate.quota.failures",
    "tollgate.quota.timeouts",
    "tollgate.quota.short_circuited",
    "http_local_rate_limit.rate_limited",
    "http.ingress.downstream_rq_5xx",
];

impl Bench {
    fn wrk(&self) -> Wrk<'_> {
        Wrk { script: &self.script, cpu: LOAD_CPU }
    }

    /// Starts what `scenario` needs (the quota service and Redis for the global path) and
    /// its Envoy, and checks it with a probe request.
    fn launch(&self, scenario: &Scenario, dir: &str) -> Live {
        let quota = match scenario.filter {
            Filter::TollgateGlobal { store, .. } => {
                Some(Quota::start(&self.root, &self.quota_bin, store, LOAD_CPU, LOAD_CPU))
            }
            _ => None,
        };
        let standin = scenario.upstream.then(|| Standin::start(&self.root, &self.standin_bin));
        let ports = Ports::fresh(quota.as_ref().map(|q| q.port), standin.as_ref().map(|s| s.port));
        let dir = scratch(&self.root, dir);
        let config = dir.join(format!("{}.yaml", scenario.id));
        let log = dir.join(format!("{}.log", scenario.id));
        fs::write(&config, self.template.render(scenario, &ports, &self.wasm)).expect("write the Envoy config");
        let envoy = Envoy::start(&self.envoy_bin, &config, &log, ports, ENVOY_CPU, &self.root);
        probe(scenario, envoy.ports.listener);
        Live { envoy, quota, _standin: standin, path: scenario.load.path, args: scenario.load.args() }
    }

    fn load(&self, live: &Live, connections: u32, secs: u64) -> WrkResult {
        self.wrk().run(live.envoy.ports.listener, live.path, connections, Duration::from_secs(secs), &live.args)
    }

    /// One round of `scenario` against the baseline. Both Envoys run at once on Envoy's
    /// core and take turns under load in short slices (in ABBA order), so that the
    /// machine's drift, which here moves within seconds, hits both alike.
    pub fn pair(&self, base: &Scenario, scenario: &Scenario, round: usize) -> (Run, Run) {
        let live = [self.launch(base, "envoy"), self.launch(scenario, "envoy")];
        let conns = self.settings.connections;
        for l in &live {
            self.load(l, conns, self.settings.warmup_secs);
        }
        let mut tallies = [Tally::default(), Tally::default()];
        let order = |slice: u64| if slice.is_multiple_of(2) { [0, 1] } else { [1, 0] };
        let (slice, slices) = slicing(self.settings.secs);
        for i in 0..slices {
            for who in order(i) {
                let before = live[who].cpu();
                let result = self.load(&live[who], conns, slice);
                tallies[who].loaded(&result, &before, &live[who].cpu());
            }
        }
        let (slice, slices) = slicing(self.settings.idle_secs);
        for i in 0..slices {
            for who in order(i) {
                tallies[who].idle(&self.load(&live[who], 1, slice));
            }
        }
        let [base_tally, tally] = tallies;
        let reference = base_tally.run(base.id, round, &live[0]);
        let mut run = tally.run(scenario.id, round, &live[1]);
        run.baseline = Some(Paired {
            rps: reference.rps,
            idle_p50_us: reference.idle_p50_us.unwrap_or(0.0),
            idle_p99_us: reference.idle_p99_us.unwrap_or(0.0),
            envoy_cpu_us: reference.envoy_cpu_us,
            p99_us: Some(reference.p99_us),
        });
        let stats = live[1].envoy.counters();
        let find = |suffix: &str| stats.iter().find(|(n, _)| n.ends_with(suffix)).map_or(0, |(_, v)| *v);
        for name in ["tollgate.store.evictions_live", "tollgate.store.cas_conflicts"] {
            if find(name) > 0 {
                run.observations.push(format!("{name} = {} (whole run, warm-up included)", find(name)));
            }
        }
        if let Filter::TollgateMetering { meter: Some(_), unit, .. } = scenario.filter {
            // A metered run must have read the bodies: its units charged.
            let charged = find(&format!("tollgate.units.bench.{unit}.charged"));
            if charged == 0 {
                run.notes.push(format!("no {unit} charged: the bodies were not metered"));
            } else if round == 0 {
                run.observations.push(format!("{charged} {unit} charged (whole run, warm-up included)"));
            }
        }
        if matches!(scenario.filter, Filter::TollgateGlobal { .. }) {
            let (callouts, allowed) = (find("tollgate.quota.callouts"), find("tollgate.requests.bench.allowed"));
            if callouts < allowed {
                run.notes.push(format!("{callouts} callouts for {allowed} admitted requests"));
            }
            if round == 0 {
                let connections = find("cluster.tollgate_quota.upstream_cx_total");
                run.observations
                    .push(format!("{callouts} callouts over {connections} connections to the quota service"));
            }
        }
        (reference, run)
    }

    /// A run under `perf record` (not one of the measured runs): which binary Envoy's CPU
    /// time goes to, per request. `None` when perf is missing or not allowed.
    pub fn profile(&self, scenario: &Scenario) -> Option<Profile> {
        let perf_ok = Command::new("perf").arg("--version").output().is_ok_and(|o| o.status.success());
        if !perf_ok {
            return None;
        }
        let live = self.launch(scenario, "perf");
        let conns = self.settings.connections;
        self.load(&live, conns, self.settings.warmup_secs);
        let envoy = &live.envoy;
        let data = scratch(&self.root, "perf").join(format!("{}.data", scenario.id));
        let secs = self.settings.secs.max(2);
        // perf samples Envoy's core for a little less than wrk's run, so it sees load only.
        let perf = Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-F", "999", "-p", &envoy.proc.pid().to_string(), "-o"])
            .arg(&data)
            .args(["--", "sleep", &(secs - 1).to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let before = envoy.proc.cpu();
        let loaded = self.load(&live, conns, secs);
        let after = envoy.proc.cpu();
        let recorded = perf.wait_with_output().ok()?.status.success();
        if !recorded {
            return None;
        }
        let report =
            Command::new("perf").args(["report", "--sort", "dso", "--stdio", "-i"]).arg(&data).output().ok()?;
        let text = String::from_utf8_lossy(&report.stdout);
        let mut shares: Vec<(String, f64)> = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut parts = line.split_whitespace();
            let (Some(pct), Some(dso)) = (parts.next(), parts.next()) else { continue };
            let Ok(pct) = pct.trim_end_matches('%').parse::<f64>() else { continue };
            let part = part_of(dso);
            match shares.iter_mut().find(|(p, _)| p == part) {
                Some((_, total)) => *total += pct,
                None => shares.push((part.to_owned(), pct)),
            }
        }
        Some(Profile {
            id: scenario.id.to_owned(),
            envoy_cpu_us: per_request_us(before, after, loaded.requests),
            shares,
        })
    }

    /// The quota service alone against `store`, at `quota_clients` connections: the
    /// service on Envoy's core, Redis and wrk on the other.
    pub fn quota_run(&self, store: QuotaStore, round: usize) -> Run {
        let quota = Quota::start(&self.root, &self.quota_bin, store, ENVOY_CPU, LOAD_CPU);
        let limits = check_limits().to_string();
        let body = format!(r#"{{"key":"bench/key:probe","cost":1,"limits":{limits}}}"#);
        let reply =
            http_raw(
                quota.port,
                &format!(
                    "POST {CHECK_PATH} HTTP/1.1\r\nContent-Type: application/json\r\nAuthorization: Bearer {DEV_SERVICE_TOKEN}"
                ),
                &body,
            );
        match reply {
            Some(r) if r.status == 200 && r.body.contains(r#""admitted":true"#) => {}
            Some(r) => panic!("quota service probe: {} {}", r.status, r.body),
            None => panic!("quota service probe: no answer"),
        }
        let args =
            vec!["check".to_owned(), MANY.to_string(), CHECK_PATH.to_owned(), limits, DEV_SERVICE_TOKEN.to_owned()];
        let clients = self.settings.quota_clients;
        self.wrk().run(quota.port, CHECK_PATH, clients, Duration::from_secs(self.settings.warmup_secs), &args);
        let procs: Vec<&Proc> = [&quota.proc].into_iter().chain(quota.redis.as_ref().map(|r| &r.proc)).collect();
        let before: Vec<Duration> = procs.iter().map(|p| p.cpu()).collect();
        let loaded = self.wrk().run(quota.port, CHECK_PATH, clients, Duration::from_secs(self.settings.secs), &args);
        let after: Vec<Duration> = procs.iter().map(|p| p.cpu()).collect();
        let idle = self.wrk().run(quota.port, CHECK_PATH, 1, Duration::from_secs(self.settings.idle_secs), &args);
        let mut run = from_wrk(&format!("quota-{}", store.name().to_lowercase()), round, &loaded);
        run.quota_cpu_us = Some(per_request_us(before[0], after[0], loaded.requests));
        run.redis_cpu_us = (procs.len() > 1).then(|| per_request_us(before[1], after[1], loaded.requests));
        run.idle_p50_us = Some(idle.p50_us);
        run.idle_p99_us = Some(idle.p99_us);
        run
    }

    /// `EVALSHA` of the service's own `check.lua` with the same limits, from redis-benchmark
    /// (on Envoy's core) against Redis (on the other): Redis's ceiling for these decisions.
    pub fn redis_run(&self, pipeline: u32, round: usize) -> Run {
        let redis = Redis::start(&self.root, LOAD_CPU);
        let script = fs::read_to_string(self.root.join("crates/tollgate-quota/lua/check.lua")).expect("read check.lua");
        let sha = redis.load_script(&script);
        let mut command = vec!["EVALSHA".to_owned(), sha, "1".to_owned(), "tg:{bench/key:__rand_int__}".to_owned()];
        command.push("1".to_owned());
        command.extend(check_script_args());
        let mut probe: Vec<&str> = command.iter().map(String::as_str).collect();
        probe[3] = "tg:{bench/key:probe}";
        let answer = redis_cli(redis.port, &probe).unwrap_or_default();
        assert!(answer.starts_with('1'), "check.lua did not admit the probe: {answer:?}");

        let clients = self.settings.quota_clients;
        let calibration = redis_benchmark(ENVOY_CPU, redis.port, clients, pipeline, 20_000, MANY, &command);
        let wanted = (calibration.rps * self.settings.secs as f64) as u64;
        let before = redis.proc.cpu();
        let result = redis_benchmark(ENVOY_CPU, redis.port, clients, pipeline, wanted.max(20_000), MANY, &command);
        let after = redis.proc.cpu();
        Run {
            id: format!("redis-evalsha-p{pipeline}"),
            round,
            rps: result.rps,
            p50_us: result.p50_us,
            p99_us: result.p99_us,
            requests: result.requests,
            redis_cpu_us: Some(per_request_us(before, after, result.requests)),
            ..Run::default()
        }
    }
}

/// A configuration's processes while it is measured.
struct Live {
    envoy: Envoy,
    /// The quota service (and Redis) behind a global configuration.
    quota: Option<Quota>,
    /// The stand-in AI upstream, if the route goes to one (stopped with the run).
    _standin: Option<Standin>,
    path: &'static str,
    /// wrk script arguments: which requests to send.
    args: Vec<String>,
}

impl Live {
    /// CPU time so far of Envoy, the quota service and Redis, in that order (as present).
    fn cpu(&self) -> Vec<Duration> {
        let quota = self.quota.iter().flat_map(|q| [Some(&q.proc), q.redis.as_ref().map(|r| &r.proc)]).flatten();
        std::iter::once(&self.envoy.proc).chain(quota).map(Proc::cpu).collect()
    }
}

/// What the slices of one configuration add up to.
#[derive(Default)]
struct Tally {
    requests: u64,
    seconds: f64,
    errors: u64,
    cpu: Vec<Duration>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    tool: Vec<f64>,
    idle_p50: Vec<f64>,
    idle_p99: Vec<f64>,
    idle_errors: u64,
}

impl Tally {
    fn loaded(&mut self, result: &WrkResult, before: &[Duration], after: &[Duration]) {
        self.requests += result.requests;
        self.seconds += result.seconds;
        self.errors += result.errors;
        self.cpu.resize(before.len(), Duration::ZERO);
        for (total, (b, a)) in self.cpu.iter_mut().zip(before.iter().zip(after)) {
            *total += a.saturating_sub(*b);
        }
        self.p50.push(result.p50_us);
        self.p99.push(result.p99_us);
        self.tool.push(result.tool_cpu_pct);
    }

    fn idle(&mut self, result: &WrkResult) {
        self.idle_p50.push(result.p50_us);
        self.idle_p99.push(result.p99_us);
        self.idle_errors += result.errors;
    }

    /// The run's figures: req/s over all slices, CPU time over all requests, latencies as
    /// the median of the slices'.
    fn run(self, id: &str, round: usize, live: &Live) -> Run {
        let median = |v: &[f64]| Spread::of(v.iter().copied()).map_or(0.0, |s| s.median);
        let per_request = |i: usize| self.cpu.get(i).map(|cpu| cpu.as_micros() as f64 / self.requests.max(1) as f64);
        let mut run = Run {
            id: id.to_owned(),
            round,
            rps: self.requests as f64 / self.seconds.max(1e-9),
            p50_us: median(&self.p50),
            p99_us: median(&self.p99),
            requests: self.requests,
            errors: self.errors,
            envoy_cpu_us: per_request(0),
            quota_cpu_us: live.quota.as_ref().and_then(|_| per_request(1)),
            redis_cpu_us: live.quota.as_ref().and_then(|q| q.redis.as_ref()).and_then(|_| per_request(2)),
            tool_cpu_pct: Some(median(&self.tool)),
            idle_p50_us: Some(median(&self.idle_p50)),
            idle_p99_us: Some(median(&self.idle_p99)),
            ..Run::default()
        };
        if self.errors > 0 {
            run.notes.push(format!("{} errors or non-2xx answers under load", self.errors));
        }
        if self.idle_errors > 0 {
            run.notes.push(format!("{} errors at 1 connection", self.idle_errors));
        }
        for (name, value) in live.envoy.counters() {
            if value > 0 && BAD_STATS.iter().any(|bad| name.ends_with(bad) || name.contains(bad)) {
                run.notes.push(format!("{name} = {value}"));
            }
        }
        run
    }
}

/// Slices of at most 2 s that add up to `secs`: (slice length, count).
fn slicing(secs: u64) -> (u64, u64) {
    let slice = secs.clamp(1, 2);
    (slice, (secs / slice).max(1))
}

/// Where Envoy's CPU time went during a profiled run: % of samples per part.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Profile {
    pub id: String,
    pub envoy_cpu_us: f64,
    pub shares: Vec<(String, f64)>,
}

/// The part of Envoy a sampled binary stands for (the Envoy binary holds V8 and the host
/// side of proxy-wasm; code V8 generates from the `.wasm` shows as `[JIT]`).
pub fn part_of(dso: &str) -> &'static str {
    if dso.starts_with("[JIT]") || dso.starts_with("//anon") || dso.starts_with("[anon") {
        "wasm code (V8 JIT)"
    } else if dso == "envoy" {
        "Envoy binary (incl. V8 runtime)"
    } else if dso.starts_with("[kernel") {
        "kernel"
    } else if dso.starts_with("libc") || dso.starts_with("libm") || dso.starts_with("ld-") || dso.starts_with("[vdso") {
        "libc and vdso"
    } else {
        "other"
    }
}

fn from_wrk(id: &str, round: usize, result: &WrkResult) -> Run {
    let mut run = Run {
        id: id.to_owned(),
        round,
        rps: result.rps(),
        p50_us: result.p50_us,
        p99_us: result.p99_us,
        requests: result.requests,
        errors: result.errors,
        tool_cpu_pct: Some(result.tool_cpu_pct),
        ..Run::default()
    };
    if result.errors > 0 {
        run.notes.push(format!("{} errors or non-2xx answers under load", result.errors));
    }
    run
}

fn per_request_us(before: Duration, after: Duration, requests: u64) -> f64 {
    after.saturating_sub(before).as_micros() as f64 / requests.max(1) as f64
}

/// One request like the run's first: it must be answered 200, and the filter must show
/// that it ran (its rate-limit header), or the configuration is not what it claims.
fn probe(scenario: &Scenario, port: u16) {
    let first = token(0);
    let load = scenario.load;
    let mut header = match load.mode {
        "bearer" => format!("Authorization: Bearer {first}"),
        "apikey" => format!("x-api-key: {first}"),
        "xff" => "X-Forwarded-For: 10.0.0.0".to_owned(),
        "body" => format!("Authorization: Bearer {first}\r\nContent-Type: application/json"),
        other => panic!("no probe for mode {other}"),
    };
    if let Some((name, value)) = load.header() {
        header.push_str(&format!("\r\n{name}: {value}"));
    }
    let body = load.body().unwrap_or_default();
    let reply = http_raw(port, &format!("POST {} HTTP/1.1\r\n{header}", load.path), &body)
        .unwrap_or_else(|| panic!("{}: no answer to the probe request", scenario.id));
    assert_eq!(reply.status, 200, "{}: probe answered {}: {}", scenario.id, reply.status, reply.body);
    if let Some(name) = scenario.proof_header {
        assert!(
            reply.header(name).is_some(),
            "{}: the probe's answer has no {name} header: the filter did not run ({:?})",
            scenario.id,
            reply.headers
        );
    }
}
