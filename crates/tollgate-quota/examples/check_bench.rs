//! Decisions per second of a store, without HTTP: `concurrency` tasks call `check` in a
//! loop for `seconds`, each on its own metered keys, with two limits per check.
//!
//! ```sh
//! cargo run --release -p tollgate-quota --example check_bench -- redis://127.0.0.1:6380/0 256 10
//! ```

use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_core::quota::CheckRequest;
use tollgate_quota::store::{MemoryStore, RedisStore, Store, StoreLocation};
use tollgate_quota::validate;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let location: StoreLocation = args.next().unwrap_or_else(|| "memory".into()).parse()?;
    let concurrency: u64 = args.next().map_or(Ok(256), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(10), |a| a.parse())?;
    let duration = Duration::from_secs(seconds);
    let (decisions, took) = match &location {
        StoreLocation::Memory => run(Arc::new(MemoryStore::new()), concurrency, duration).await?,
        other => run(Arc::new(RedisStore::open(other)?), concurrency, duration).await?,
    };
    let rate = decisions as f64 / took.as_secs_f64();
    println!("{location}: {decisions} decisions in {took:.1?} with {concurrency} concurrent callers: {rate:.0}/s");
    Ok(())
}

async fn run<S: Store>(store: Arc<S>, concurrency: u64, duration: Duration) -> Result<(u64, Duration), Box<dyn Error>> {
    let decisions = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..concurrency {
        let (store, decisions) = (Arc::clone(&store), Arc::clone(&decisions));
        tasks.spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < duration {
                let request: CheckRequest = serde_json::from_str(&format!(
                    r#"{{"key":"free/ip:10.{}.{}.0/24","cost":1,"limits":[
                        {{"name":"images-per-day","algorithm":"fixed_window","limit":1000000,"window_secs":86400}},
                        {{"name":"burst","limit":1000000,"window_secs":10,"burst":1000}}]}}"#,
                    task % 256,
                    n % 64
                ))
                .map_err(|e| e.to_string())?;
                let check = validate::check(request).map_err(|e| e.message)?;
                store.check(&check).await.map_err(|e| e.message)?;
                decisions.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok((decisions.load(Ordering::Relaxed), started.elapsed()))
}
