//! The core's criterion micro-benchmarks (`crates/tollgate-core/benches/hot_path.rs`), run
//! on the load core, and the results criterion leaves in `target/criterion`.

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Micro {
    pub name: String,
    pub median_ns: f64,
    pub low_ns: f64,
    pub high_ns: f64,
}

/// Runs `cargo bench -p tollgate-core --bench hot_path` pinned to `cpu` and returns each
/// benchmark's median with its 95% confidence interval.
pub fn run(root: &Path, cpu: u32, quick: bool) -> Vec<Micro> {
    let started = SystemTime::now();
    let (warm_up, measure) = if quick { ("0.5", "1") } else { ("1", "3") };
    let log_path = root.join("target/bench/criterion.log");
    let log = File::create(&log_path).expect("create target/bench/criterion.log");
    let status = Command::new("taskset")
        .args(["-c", &cpu.to_string(), "cargo", "bench", "-q", "-p", "tollgate-core", "--bench", "hot_path", "--"])
        .args(["--warm-up-time", warm_up, "--measurement-time", measure, "--noplot"])
        .current_dir(root)
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        .status()
        .expect("run cargo bench");
    assert!(status.success(), "cargo bench -p tollgate-core failed: see {}", log_path.display());
    let mut found = Vec::new();
    collect(&root.join("target/criterion"), started, &mut found);
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

fn collect(dir: &Path, since: SystemTime, found: &mut Vec<Micro>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let estimates = path.join("new/estimates.json");
        let fresh = fs::metadata(&estimates).and_then(|m| m.modified()).is_ok_and(|m| m >= since);
        if fresh {
            if let Some(micro) = read(&path) {
                found.push(micro);
            }
        } else {
            collect(&path, since, found);
        }
    }
}

fn read(dir: &Path) -> Option<Micro> {
    let json = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&fs::read_to_string(dir.join("new").join(name)).ok()?).ok()
    };
    let benchmark = json("benchmark.json")?;
    let median = json("estimates.json")?.get("median")?.clone();
    let interval = median.get("confidence_interval")?;
    Some(Micro {
        name: benchmark.get("full_id")?.as_str()?.to_owned(),
        median_ns: median.get("point_estimate")?.as_f64()?,
        low_ns: interval.get("lower_bound")?.as_f64()?,
        high_ns: interval.get("upper_bound")?.as_f64()?,
    })
}
