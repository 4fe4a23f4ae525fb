//! A Redis that restarts under the service: the service notices (metric, one warning),
//! and with an append-only file fsynced every second a SIGKILL loses at most about the
//! last second of counts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_testkit::http;
use tollgate_testkit::quota_service::{QuotaService, DEV_SERVICE_TOKEN};
use tollgate_testkit::redis::{Redis, RedisOptions};
use tollgate_testkit::wait::Wait;

const RESTARTS: &str = "tollgate_quota_store_restarts_total";
const IDENTIFIED: &str = "store identified";
const WARNING: &str = "the store restarted or failed over";

fn restarts(service: &QuotaService) -> u64 {
    let metrics = service.metrics();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(RESTARTS).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {RESTARTS} in\n{metrics}"))
}

fn wait_for_restarts(service: &QuotaService, expected: u64) {
    Wait::new(format!("{RESTARTS} to reach {expected}"))
        .at_most(Duration::from_secs(20))
        .until(|| restarts(service) == expected);
}

/// A day-long fixed window too large to run out during a test.
fn check_body(key: &str) -> String {
    json!({ "key": key, "cost": 1,
            "limits": [{ "name": "day", "algorithm": "fixed_window", "limit": 1_000_000_000u64, "window_secs": 86_400 }] })
    .to_string()
}

#[test]
fn a_redis_restart_is_counted_and_logged_once() {
    let mut redis = Redis::start();
    let service = QuotaService::start(&redis.url());
    Wait::new("the service to identify its store")
        .at_most(Duration::from_secs(20))
        .until(|| service.log().contains(IDENTIFIED));
    assert_eq!(restarts(&service), 0);

    redis.restart();
    wait_for_restarts(&service, 1);
    assert_eq!(service.log().matches(WARNING).count(), 1, "{}", service.log());
    let log = service.log();
    let warning = log.lines().find(|l| l.contains(WARNING)).unwrap();
    assert!(!warning.contains(&redis.port.to_string()) && !warning.contains("127.0.0.1"), "{warning}");

    // Checks work again on the new server, and a second restart is a second count.
    let agent = http::client(http::IO_TIMEOUT);
    let auth = format!("Bearer {DEV_SERVICE_TOKEN}");
    Wait::new("a check to pass after the restart").at_most(Duration::from_secs(20)).until(|| {
        http::send(&agent, "POST", &service.url("/v1/check"), &[("authorization", &auth)], &check_body("free/ip:1"))
            .status
            == 200
    });
    redis.restart();
    wait_for_restarts(&service, 2);
    assert_eq!(service.log().matches(WARNING).count(), 2, "{}", service.log());
}

/// Admissions seen by the stream of checks, each with when its answer came.
#[derive(Default)]
struct Admitted(Mutex<Vec<Instant>>);

impl Admitted {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn since(&self, at: Instant) -> usize {
        self.0.lock().unwrap().iter().filter(|t| **t >= at).count()
    }

    fn first(&self) -> Option<Instant> {
        self.0.lock().unwrap().first().copied()
    }
}

#[test]
fn with_aof_a_sigkilled_redis_loses_at_most_about_the_last_second_of_counts() {
    const KEY: &str = "free/ip:198.51.100.7/32";
    let mut redis = Redis::start_with(RedisOptions { aof: true, ..RedisOptions::default() });
    let service = QuotaService::start(&redis.url());
    let admitted = Arc::new(Admitted::default());
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let (admitted, stop, url) = (Arc::clone(&admitted), Arc::clone(&stop), service.url("/v1/check"));
        std::thread::spawn(move || {
            let agent = http::client(Duration::from_secs(5));
            let auth = format!("Bearer {DEV_SERVICE_TOKEN}");
            while !stop.load(Ordering::SeqCst) {
                let r = http::send(&agent, "POST", &url, &[("authorization", &auth)], &check_body(KEY));
                if r.status == 200 && r.body.contains(r#""admitted":true"#) {
                    admitted.0.lock().unwrap().push(Instant::now());
                }
            }
        })
    };
    // Long enough that losing everything would exceed the bound below.
    Wait::new("three seconds of admitted checks")
        .at_most(Duration::from_secs(60))
        .until(|| admitted.first().is_some_and(|first| first.elapsed() > Duration::from_secs(3)));

    redis.kill();
    let killed = Instant::now();
    stop.store(true, Ordering::SeqCst);
    stream.join().unwrap();
    let total = admitted.count();
    let last_two_seconds = admitted.since(killed - Duration::from_secs(2));

    redis.restart();
    Wait::new("the service to be ready again")
        .at_most(Duration::from_secs(20))
        .until(|| http::get(service.port, "/readyz").is_some_and(|r| r.status == 200));
    let usage = service.usage(KEY);
    let stored = usage.iter().find(|(name, _)| name == "day").map_or(0, |(_, used)| *used);
    let lost = total.saturating_sub(usize::try_from(stored).unwrap());
    println!(
        "AOF everysec, SIGKILL under load: admitted {total}, stored after restart {stored}, lost {lost} \
         (admitted in the last 2 s: {last_two_seconds})"
    );
    assert!(usize::try_from(stored).unwrap() <= total, "stored {stored} > admitted {total}");
    assert!(
        lost <= last_two_seconds && last_two_seconds < total,
        "lost {lost} of {total}; the bound is the {last_two_seconds} admitted in the last 2 s"
    );
}
