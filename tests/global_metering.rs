#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Global limits of tokens end to end: two real Envoys of two workers each, the real quota
//! service over a real `redis-server`, and streamed chats from the stand-in upstream.
//! Reservations are checked at the service before a request goes upstream, and settled
//! there (or against a lease's balance) once its stream has ended.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;

use serde_json::{json, Value};
use tollgate_testkit::envoy::{Envoy, EnvoyOptions};
use tollgate_testkit::quota_service::QuotaService;
use tollgate_testkit::redis::Redis;
use tollgate_testkit::standin::open_gate;
use tollgate_testkit::wait::Wait;

const CHAT: &str = "/v1/chat/completions";
const PROMPT: &str = r#"[{"role":"user","content":"Say hi"}]"#;
/// What each request reserves: its prompt (a token per 4 bytes) and `max_tokens`.
const RESERVED: u64 = 100;
const BUDGET: u64 = 1000;
/// The anonymous caller's key at the quota service (every test client is 127.0.0.1).
const KEY: &str = "free/ip:127.0.0.1/32";
/// The stand-in reports 10 prompt tokens.
const INPUT: u64 = 10;

fn plugin_config(lease_block: u64) -> Value {
    json!({
        "identity": { "anonymous": { "tier": "free" } },
        "quota_service": { "cluster": "tollgate_quota", "timeout_ms": 1000, "lease_idle_return_ms": 200 },
        "tiers": { "free": { "limits": [
            { "name": "tokens-per-day", "limit": BUDGET, "window": "1d", "algorithm": "fixed_window",
              "unit": "tokens", "scope": "global", "lease_block": lease_block }
        ] } },
        "routes": [ { "path": CHAT, "meter": "openai_chat" }, { "path_prefix": "/" } ]
    })
}

fn chat_body() -> String {
    let prompt_tokens = PROMPT.len().div_ceil(4) as u64;
    json!({
        "model": "m", "messages": serde_json::from_str::<Value>(PROMPT).unwrap(),
        "max_tokens": RESERVED - prompt_tokens, "stream": true, "stream_options": { "include_usage": true }
    })
    .to_string()
}

/// The tokens of `key`'s daily limit used at the quota service.
fn used_at_service(service: &QuotaService) -> u64 {
    service.usage(KEY).into_iter().find(|(name, _)| name == "tokens-per-day").map_or(0, |(_, used)| used)
}

fn decided(envoys: &[Envoy]) -> u64 {
    let count = |e: &Envoy, outcome: &str| e.counter(&format!("tollgate.requests.free.{outcome}")).unwrap_or(0);
    envoys.iter().map(|e| count(e, "allowed") + count(e, "limited")).sum()
}

/// 50 streamed chats, each reserving 100 of a 1,000 tokens/day budget and using 40 to
/// 120, all in flight at once over two Envoys; returns the tokens the admitted ones used.
fn fifty_streams_at_once(envoys: &[Envoy; 2], gate: &str) -> (u64, u64) {
    let admitted = AtomicU64::new(0);
    let used = AtomicU64::new(0);
    let refused = Mutex::new(Vec::new());
    thread::scope(|s| {
        for i in 0..50u64 {
            let (envoy, admitted, used, refused) = (&envoys[(i % 2) as usize], &admitted, &used, &refused);
            s.spawn(move || {
                let output = 30 + (i * 37) % 81;
                let headers = [("x-standin-gate", gate), ("x-standin-output-tokens", &output.to_string())];
                let reply = envoy.request_with_body("POST", CHAT, &headers, &chat_body());
                match reply.status {
                    200 => {
                        assert!(reply.body.ends_with("data: [DONE]\n\n"), "{}", reply.body);
                        admitted.fetch_add(1, Ordering::Relaxed);
                        used.fetch_add(INPUT + output, Ordering::Relaxed);
                    }
                    429 => refused.lock().unwrap().push(reply.json()["error"]["message"].as_str().unwrap().to_owned()),
                    status => panic!("unexpected {status}: {}", reply.body),
                }
            });
        }
        // Every request is decided before any is answered (none has settled).
        Wait::new("all 50 requests to be decided").until(|| decided(envoys) >= 50);
        open_gate(gate);
    });
    let refused = refused.into_inner().unwrap();
    assert!(refused.iter().all(|m| m.contains("tokens")), "{refused:?}");
    println!(
        "{gate}: {} admitted of 50, using {} tokens",
        admitted.load(Ordering::Relaxed),
        used.load(Ordering::Relaxed)
    );
    (admitted.into_inner(), used.into_inner())
}

#[test]
fn a_daily_token_budget_holds_across_two_envoys_and_settles_to_the_real_usage() {
    let redis = Redis::start();
    let service = QuotaService::start(&redis.url());
    let envoys = [0, 1].map(|_| {
        Envoy::start(EnvoyOptions {
            plugin_config: Some(plugin_config(0).to_string()),
            quota_port: Some(service.port),
            ..EnvoyOptions::default()
        })
    });
    let (admitted, used) = fifty_streams_at_once(&envoys, "exact");
    assert_eq!(admitted, BUDGET / RESERVED, "no request admitted whose reservation did not fit");
    // Each admitted stream settles at the service to what it used (once, however often
    // a settlement is sent).
    let sent = |name: &str| envoys.iter().map(|e| e.counter(name).unwrap_or(0)).sum::<u64>();
    Wait::new("every admitted request to be settled").until(|| sent("tollgate.settle.settled") >= admitted);
    Wait::new("the service to count exactly what was used").until(|| used_at_service(&service) == used);
    assert_eq!(sent("tollgate.settle.failures"), 0);
    // What the settlements gave back is spent again: a request that fits now is admitted.
    let fits = (BUDGET - used) / RESERVED;
    let next: Vec<u16> = (0..fits + 1)
        .map(|_| envoys[0].request_with_body("POST", CHAT, &[("x-standin-output-tokens", "90")], &chat_body()).status)
        .collect();
    assert_eq!(next.iter().filter(|&&s| s == 200).count() as u64, fits, "{next:?}");
    assert_eq!(next.last(), Some(&429));
}

#[test]
fn a_leased_token_budget_settles_against_the_balance_and_returns_the_rest() {
    let redis = Redis::start();
    let service = QuotaService::start(&redis.url());
    let envoys = [0, 1].map(|_| {
        Envoy::start(EnvoyOptions {
            plugin_config: Some(plugin_config(200).to_string()),
            quota_port: Some(service.port),
            ..EnvoyOptions::default()
        })
    });
    let (admitted, used) = fifty_streams_at_once(&envoys, "leased");
    assert!(admitted <= BUDGET / RESERVED, "no overshoot: {admitted} admitted");
    assert!(admitted >= 1);
    let sent = |name: &str| envoys.iter().map(|e| e.counter(name).unwrap_or(0)).sum::<u64>();
    Wait::new("every admitted request to be settled").until(|| sent("tollgate.settle.settled") >= admitted);
    // Balances left idle go back to the service: in the end it counts what was used.
    let counted = || {
        let n = used_at_service(&service);
        eprintln!(
            "service {n}, used {used}, returns {:?} failures {:?} returned {:?}",
            sent("tollgate.quota.lease.returns"),
            sent("tollgate.quota.lease.return_failures"),
            sent("tollgate.quota.lease.units_returned")
        );
        n == used
    };
    Wait::new("the service to count exactly what was used").until(counted);
    assert_eq!(sent("tollgate.settle.failures"), 0);
}

#[test]
fn a_settlement_the_service_missed_is_sent_again_and_applied_once() {
    let redis = Redis::start();
    let mut service = QuotaService::start(&redis.url());
    let envoy = Envoy::start(EnvoyOptions {
        plugin_config: Some(plugin_config(0).to_string()),
        quota_port: Some(service.port),
        ..EnvoyOptions::default()
    });
    let reply = thread::scope(|s| {
        let request = s.spawn(|| {
            let headers = [("x-standin-gate", "retry"), ("x-standin-output-tokens", "20")];
            envoy.request_with_body("POST", CHAT, &headers, &chat_body())
        });
        Wait::new("the request to be admitted").until(|| decided(std::slice::from_ref(&envoy)) >= 1);
        assert_eq!(used_at_service(&service), RESERVED);
        // The service goes away before the stream ends: the settlement finds no one.
        service.kill();
        open_gate("retry");
        request.join().unwrap()
    });
    assert_eq!(reply.status, 200, "{}", reply.body);
    Wait::new("a callout to fail").until(|| envoy.counter("tollgate.quota.failures").unwrap_or(0) >= 1);
    service.restart();
    Wait::new("the settlement to be applied").until(|| used_at_service(&service) == INPUT + 20);
    assert_eq!(envoy.counter("tollgate.settle.calls"), Some(1));
    assert_eq!(envoy.counter("tollgate.settle.failures").unwrap_or(0), 0);
}
