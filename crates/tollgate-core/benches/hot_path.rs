#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Micro-benchmarks of what the filter does on every request, natively (the `.wasm` under
//! V8 is slower; `make bench` measures that inside Envoy). `cargo bench -p tollgate-core`.
//!
//! The configuration is the one `make bench` loads into Envoy: a tier with a token bucket
//! and a daily fixed window, both header families, and 1 or 10,000 static keys.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tollgate_core::cost::reading::Reading;
use tollgate_core::decision::decide_with;
use tollgate_core::hash::sha256;
use tollgate_core::headers::{rate_limit_headers, Headers};
use tollgate_core::limit::Standing;
use tollgate_core::store::FakeSharedData;
use tollgate_core::worker::{keeps_blocks, Worker};
use tollgate_core::worker_block::MAX_BLOCKS;
use tollgate_core::{decide, Config, Nanos, RequestInfo};

const PATH: &str = "/v1/images/generations";

fn token(i: usize) -> String {
    format!("tg_bench_{i:05}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The benchmark tier with `keys` static keys: limits far above what a run sends.
fn config(keys: usize) -> Config {
    let keys: Vec<String> = (0..keys)
        .map(|i| format!(r#"{{"id":"bench-{i:05}","sha256":"{}","tier":"bench"}}"#, hex(&sha256(token(i).as_bytes()))))
        .collect();
    let json = format!(
        r#"{{
          "identity": {{ "anonymous": {{ "tier": "bench" }} }},
          "keys": [{}],
          "tiers": {{ "bench": {{ "limits": [
            {{ "name": "rpm", "limit": 1000000000, "window": "1m", "burst": 1000000000 }},
            {{ "name": "per-day", "limit": 1000000000, "window": "1d", "algorithm": "fixed_window" }} ] }} }},
          "routes": [ {{ "path_prefix": "{PATH}", "methods": ["POST"], "cost": 1 }},
                      {{ "path_prefix": "/v1/chat/completions", "cost": 1 }},
                      {{ "path_prefix": "/healthz", "cost": 0 }} ],
          "headers": {{ "ietf": true, "x_ratelimit": true }}
        }}"#,
        keys.join(",")
    );
    Config::from_json(json.as_bytes()).expect("benchmark config")
}

/// `Authorization` values of `n` callers, cycled through by the benchmark.
fn authorizations(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("Bearer {}", token(i))).collect()
}

fn decide_local(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    // `_exact`: every request decided on shared data, as with `lease_block: 0`.
    for (name, keys, holds) in
        [("local_1_key", 1, true), ("local_10k_keys", 10_000, true), ("local_1_key_exact", 1, false)]
    {
        let config = config(keys);
        let store = FakeSharedData::default();
        // One worker for the run, as the filter keeps one (it remembers the keys it has seen,
        // and takes blocks of the benchmark's large limits as the filter does).
        let mut cache = Worker::new(1).with_blocks(if holds && keeps_blocks(&config) { MAX_BLOCKS } else { 0 });
        let auth = authorizations(keys);
        let mut i = 0usize;
        let mut now = Nanos::from_secs(1_700_000_000);
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % auth.len();
                now = now.saturating_add(1_000);
                let request = RequestInfo {
                    method: "POST",
                    path: PATH,
                    authorization: vec![auth[i].as_str()],
                    ..RequestInfo::default()
                };
                let decision = decide_with(&config, &store, &mut cache, &request, now);
                debug_assert!(decision.reply.is_none());
                black_box(decision)
            });
        });
    }
    let config = config(1);
    let store = FakeSharedData::default();
    let addresses: Vec<String> = (0..10_000).map(|i| format!("10.0.{}.{}:0", i / 256, i % 256)).collect();
    let mut i = 0usize;
    group.bench_function("anonymous_10k_ips", |b| {
        b.iter(|| {
            i = (i + 1) % addresses.len();
            let request = RequestInfo {
                method: "POST",
                path: PATH,
                client_address: Some(addresses[i].as_str()),
                ..RequestInfo::default()
            };
            black_box(decide(&config, &store, &request, Nanos::from_secs(1_700_000_000)))
        });
    });
    group.finish();
}

fn headers(c: &mut Criterion) {
    let config = config(1);
    let limits = &config.tiers[0].limits;
    let standings: Vec<Standing> = (0..limits.len())
        .map(|index| Standing {
            index,
            admitted: true,
            remaining: 999_999_000,
            reset_after_ns: 1_000_000,
            retry_after_ns: 0,
        })
        .collect();
    let now = Nanos::from_secs(1_700_000_000);
    c.benchmark_group("headers").bench_function("rate_limit_headers_2_limits", |b| {
        b.iter_batched_ref(
            Headers::new,
            |out| rate_limit_headers(&config.headers, limits, black_box(&standings), 0, now, out),
            BatchSize::SmallInput,
        );
    });
}

fn hashing(c: &mut Criterion) {
    let token = token(42);
    c.benchmark_group("identity").bench_function("sha256_token", |b| b.iter(|| sha256(black_box(token.as_bytes()))));
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("config");
    let config = config(10_000);
    group.bench_function("route", |b| b.iter(|| config.route(black_box("POST"), black_box(PATH)).is_some()));
    let hashes: Vec<[u8; 32]> = (0..10_000).map(|i| sha256(token(i).as_bytes())).collect();
    let mut i = 0usize;
    group.bench_function("key_by_hash_10k", |b| {
        b.iter(|| {
            i = (i + 1) % hashes.len();
            config.key_by_hash(black_box(&hashes[i])).is_some()
        });
    });
    group.finish();
}

/// A streamed chat read for its usage: an OpenAI delta chunk (`"usage": null`), one event
/// per body callback, as most streams arrive.
fn reading(c: &mut Criterion) {
    let chunk = br#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" word"}}],"usage":null}

"#;
    let mut group = c.benchmark_group("reading");
    group.bench_function("sse_delta_chunk", |b| {
        let mut reading = Reading::for_content_type(Some("text/event-stream"));
        b.iter(|| reading.feed(black_box(chunk)))
    });
    group.finish();
}

criterion_group!(benches, decide_local, headers, hashing, lookup, reading);
criterion_main!(benches);
