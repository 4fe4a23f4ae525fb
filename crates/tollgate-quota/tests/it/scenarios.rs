//! The scenario suite, written once: every backend must pass all of it.
//!
//! Time: the memory store runs on a manual clock, so its numbers are exact; Redis takes
//! time from its own `TIME`, so there the suite sleeps (at most a few hundred ms) and
//! checks bounds computed from the elapsed time it measured around each request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tollgate_core::quota::{CheckRequest, CheckResponse, LimitResult, ReturnRequest, SettleRequest, UsageLimit};
use tollgate_quota::keys;
use tollgate_quota::store::{Check, ManualClock, Return, Settle, Store};
use tollgate_quota::validate;
use tollgate_testkit::wait::Wait;

/// A store under test and the clock it runs on.
pub struct Fixture<S> {
    pub store: Arc<S>,
    pub time: TestTime,
}

pub enum TestTime {
    Manual { clock: ManualClock, start: tollgate_core::Nanos },
    Real { start: Instant },
}

impl TestTime {
    pub fn real() -> TestTime {
        TestTime::Real { start: Instant::now() }
    }

    /// Time since the fixture began.
    pub fn now(&self) -> Duration {
        match self {
            TestTime::Manual { clock, start } => Duration::from_nanos(clock.now().0 - start.0),
            TestTime::Real { start } => start.elapsed(),
        }
    }

    /// Lets `duration` pass: the manual clock moves by it; a real one is slept on. For a
    /// scenario whose numbers are the time that passed (it measures around it).
    pub async fn sleep(&self, duration: Duration) {
        match self {
            TestTime::Manual { clock, .. } => clock.advance(duration),
            TestTime::Real { .. } => tokio::time::sleep(duration).await,
        }
    }

    /// Lets time pass until `effect` holds, which it must once `within` has passed: the
    /// manual clock moves by exactly `within` and `effect` must hold then; on a real clock
    /// `effect` is polled, and the first poll begun once `within` has passed must find it.
    pub async fn until<T>(
        &self,
        what: &str,
        within: Duration,
        mut effect: impl AsyncFnMut() -> Result<T, String>,
    ) -> T {
        match self {
            TestTime::Manual { clock, .. } => {
                clock.advance(within);
                effect().await.unwrap_or_else(|e| panic!("{what}: not so {within:?} later on the manual clock: {e}"))
            }
            TestTime::Real { .. } => {
                let due = Instant::now() + within;
                let mut polling = Wait::new(what).due(due).every(Duration::from_millis(20)).polling();
                loop {
                    let began = Instant::now();
                    match polling.next(began, effect().await) {
                        Ok(value) => return value,
                        Err(pause) => tokio::time::sleep(pause).await,
                    }
                }
            }
        }
    }
}

/// A metered key no other scenario (or earlier run on a shared store) uses.
pub fn unique_key(tier: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{tier}/key:t{nanos}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// A validated check from JSON limits, as `/v1/check` would pass it on.
pub fn check(key: &str, cost: u64, limits: &str) -> Check {
    let request: CheckRequest =
        serde_json::from_str(&format!(r#"{{"key":{key:?},"cost":{cost},"limits":{limits}}}"#)).unwrap();
    validate::check(request).unwrap()
}

/// A validated check with one cost per limit.
pub fn check_costs(key: &str, costs: &[u64], limits: &str) -> Check {
    let request: CheckRequest =
        serde_json::from_str(&format!(r#"{{"key":{key:?},"cost":0,"limits":{limits},"costs":{costs:?}}}"#)).unwrap();
    validate::check(request).unwrap()
}

/// A settlement id no other settlement uses.
pub fn unique_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("s{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst) + 1_000_000_000_000)
}

/// A validated settlement, as `/v1/settle` would pass it on.
pub fn settle(key: &str, id: &str, limits: &str, windows: &str, reserved: &[u64], used: &[u64]) -> Settle {
    let request: SettleRequest = serde_json::from_str(&format!(
        r#"{{"key":{key:?},"id":{id:?},"limits":{limits},"windows":{windows},"reserved":{reserved:?},"used":{used:?}}}"#
    ))
    .unwrap();
    validate::settle(request).unwrap()
}

/// A validated return from JSON limits and windows, as `/v1/return` would pass it on.
pub fn give_back(key: &str, units: u64, limits: &str, windows: &str) -> Return {
    validate::give_back(return_request(key, units, limits, windows)).unwrap()
}

fn return_request(key: &str, units: u64, limits: &str, windows: &str) -> ReturnRequest {
    serde_json::from_str(&format!(r#"{{"key":{key:?},"units":{units},"limits":{limits},"windows":{windows}}}"#))
        .unwrap()
}

async fn decide<S: Store>(f: &Fixture<S>, check: &Check) -> CheckResponse {
    let response = f.store.check(check).await.unwrap();
    assert_eq!(response.limits.len(), check.limits.len());
    for (result, limit) in response.limits.iter().zip(&check.limits) {
        assert_eq!(result.name, limit.name, "results come in request order");
    }
    response
}

fn named<'a>(response: &'a CheckResponse, name: &str) -> &'a LimitResult {
    response.limits.iter().find(|l| l.name == name).unwrap()
}

fn usage_named<'a>(usage: &'a [UsageLimit], name: &str) -> &'a UsageLimit {
    usage.iter().find(|l| l.name == name).unwrap_or_else(|| panic!("no usage for {name}: {usage:?}"))
}

/// 366 days: epoch-aligned windows this long do not roll over during a test.
const LONG: u64 = 366 * 86_400;

pub async fn fixed_window_admits_exactly_the_limit_then_refuses<S: Store>(f: &Fixture<S>) {
    let key = unique_key("free");
    let c = check(&key, 1, &format!(r#"[{{"name":"day","algorithm":"fixed_window","limit":5,"window_secs":{LONG}}}]"#));
    for expected_remaining in (0..5).rev() {
        let r = decide(f, &c).await;
        assert!(r.admitted);
        let day = &r.limits[0];
        assert_eq!((day.admitted, day.remaining, day.retry_after_ms), (true, expected_remaining, 0));
        assert!(day.reset_after_ms > 0 && day.reset_after_ms <= LONG * 1000);
    }
    let refused = decide(f, &c).await;
    assert!(!refused.admitted);
    let day = &refused.limits[0];
    assert_eq!((day.admitted, day.remaining), (false, 0));
    assert!(day.retry_after_ms > 0, "a refusal says when to retry");
    assert_eq!(day.retry_after_ms, day.reset_after_ms, "a fixed window can be retried when it resets");
    assert!(!decide(f, &c).await.admitted, "and it stays refused");

    let other = check(
        &unique_key("free"),
        1,
        &format!(r#"[{{"name":"day","algorithm":"fixed_window","limit":5,"window_secs":{LONG}}}]"#),
    );
    assert_eq!(decide(f, &other).await.limits[0].remaining, 4, "another key has its own count");
}

pub async fn a_refused_request_consumes_nothing_from_any_limit<S: Store>(f: &Fixture<S>) {
    let key = unique_key("basic");
    let wide = format!(r#"{{"name":"wide","algorithm":"fixed_window","limit":10,"window_secs":{LONG}}}"#);
    // 1000 per 366 days: one token every 8.8 hours, so no refill during the test.
    let bucket = format!(r#"{{"name":"bucket","limit":1000,"window_secs":{LONG},"burst":4}}"#);
    let narrow = format!(r#"{{"name":"narrow","algorithm":"fixed_window","limit":2,"window_secs":{LONG}}}"#);
    let all = check(&key, 1, &format!("[{wide},{bucket},{narrow}]"));
    assert!(decide(f, &all).await.admitted);
    assert!(decide(f, &all).await.admitted);

    let refused = decide(f, &all).await;
    assert!(!refused.admitted, "narrow is spent");
    assert!(!named(&refused, "narrow").admitted);
    assert!(named(&refused, "wide").admitted && named(&refused, "bucket").admitted, "the others alone would admit");
    let usage = f.store.usage(&key).await.unwrap();
    assert_eq!(usage_named(&usage, "wide").used, 2, "the refusal took nothing from wide");
    assert_eq!(usage_named(&usage, "bucket").used, 2, "nor from the bucket");
    assert_eq!(usage_named(&usage, "narrow").used, 2);

    // Without narrow, the same request passes and finds both other limits as two requests left them.
    let without_narrow = check(&key, 1, &format!("[{wide},{bucket}]"));
    let r = decide(f, &without_narrow).await;
    assert!(r.admitted);
    assert_eq!((named(&r, "wide").remaining, named(&r, "bucket").remaining), (7, 1));

    // A cost the bucket cannot pay is refused and takes nothing from wide either.
    let expensive = check(&key, 3, &format!("[{wide},{bucket}]"));
    let r = decide(f, &expensive).await;
    assert!(!r.admitted && !named(&r, "bucket").admitted && named(&r, "wide").admitted);
    let wide_only = check(&key, 1, &format!("[{wide}]"));
    assert_eq!(decide(f, &wide_only).await.limits[0].remaining, 6);
}

pub async fn token_bucket_allows_a_burst_then_refills<S: Store>(f: &Fixture<S>) {
    const INTERVAL: Duration = Duration::from_millis(100);
    const BURST: u128 = 5;
    let key = unique_key("pro");
    // 10 per second, bursts of 5: one token every 100 ms, at most 5 stored.
    let c = check(&key, 1, r#"[{"name":"rps","limit":10,"window_secs":1,"burst":5}]"#);
    let sent_first = f.time.now();
    let first = decide(f, &c).await;
    let mut answered_last_admitted = f.time.now();
    assert!(first.admitted);
    assert_eq!(first.limits[0].remaining, 4);
    assert!(first.limits[0].reset_after_ms <= 100);
    let mut admitted_before = 1u128;
    loop {
        let r = decide(f, &c).await;
        if !r.admitted {
            let rps = &r.limits[0];
            assert_eq!(rps.remaining, 0);
            assert!((1..=100).contains(&rps.retry_after_ms), "{rps:?}");
            assert!(rps.reset_after_ms <= 500, "{rps:?}");
            break;
        }
        answered_last_admitted = f.time.now();
        admitted_before += 1;
        // More than the burst only if the requests took longer than an interval.
        assert!(admitted_before <= BURST + (f.time.now() - sent_first).as_millis() / INTERVAL.as_millis());
    }

    f.time.sleep(Duration::from_millis(250)).await;
    let sent_next = f.time.now();
    let mut admitted = 0u128;
    while admitted < 10 && decide(f, &c).await.admitted {
        admitted += 1;
    }
    let answered_last = f.time.now();
    // Each token comes back one interval after the last admitted request at the latest,
    // and no more than burst + elapsed / interval requests can ever pass in all.
    let surely = ((sent_next - answered_last_admitted).as_millis() / INTERVAL.as_millis()).min(BURST);
    let at_most =
        (BURST + (answered_last - sent_first).as_millis() / INTERVAL.as_millis() - admitted_before).min(BURST);
    assert!(
        (surely..=at_most).contains(&admitted),
        "{admitted} admitted after the sleep; expected {surely}..={at_most}"
    );
}

pub async fn concurrent_checks_admit_exactly_the_limit<S: Store>(f: &Fixture<S>) {
    for limits in [
        format!(r#"[{{"name":"day","algorithm":"fixed_window","limit":50,"window_secs":{LONG}}}]"#),
        format!(r#"[{{"name":"bucket","limit":1000,"window_secs":{LONG},"burst":30}}]"#),
    ] {
        let c = Arc::new(check(&unique_key("free"), 1, &limits));
        let capacity = c.limits[0].capacity();
        let mut tasks = JoinSet::new();
        for _ in 0..200 {
            let (store, c) = (Arc::clone(&f.store), Arc::clone(&c));
            tasks.spawn(async move { store.check(&c).await.unwrap().admitted });
        }
        let mut admitted = 0;
        while let Some(result) = tasks.join_next().await {
            admitted += u64::from(result.unwrap());
        }
        assert_eq!(admitted, capacity, "200 concurrent checks of {limits}");
    }
}

pub async fn concurrent_checks_over_many_keys_stay_exact<S: Store>(f: &Fixture<S>) {
    // Checks of several keys, some refused, arrive together (and may be decided together).
    let limits = format!(
        r#"[{{"name":"day","algorithm":"fixed_window","limit":7,"window_secs":{LONG}}},
            {{"name":"bucket","limit":1000,"window_secs":{LONG},"burst":9}}]"#
    );
    let keys: Vec<String> = (0..5).map(|_| unique_key("free")).collect();
    let mut tasks = JoinSet::new();
    for round in 0..12 {
        for (i, key) in keys.iter().enumerate() {
            // Every third check of key 0 costs 3: it may be refused while cost-1 checks pass.
            let cost = if i == 0 && round % 3 == 0 { 3 } else { 1 };
            let (store, c) = (Arc::clone(&f.store), check(key, cost, &limits));
            tasks.spawn(async move { (i, cost, store.check(&c).await.unwrap().admitted) });
        }
    }
    let mut taken = [0u64; 5];
    while let Some(result) = tasks.join_next().await {
        let (i, cost, admitted) = result.unwrap();
        if admitted {
            taken[i] += cost;
        }
    }
    for (i, key) in keys.iter().enumerate() {
        let usage = f.store.usage(key).await.unwrap();
        assert_eq!(usage_named(&usage, "day").used, taken[i], "key {i}: the window counts what was admitted");
        assert_eq!(usage_named(&usage, "bucket").used, taken[i], "key {i}: so does the bucket");
        if i > 0 {
            assert_eq!(taken[i], 7, "key {i}: twelve checks of 1 admit exactly the window's 7");
        } else {
            assert!((5..=7).contains(&taken[0]), "key 0 took {}", taken[0]);
        }
    }
}

pub async fn api_keys_are_created_verified_listed_and_revoked<S: Store>(f: &Fixture<S>) {
    let store = f.store.as_ref();
    let created =
        keys::store_key(store, keys::new_key("premium", "Acme Corp", &keys::KnownTiers::Any).unwrap()).await.unwrap();
    let sha256 = keys::sha256_hex(created.token.as_bytes());
    let found = store.find_key(&sha256).await.unwrap().expect("the new key verifies");
    assert_eq!(
        (found.id.as_str(), found.tier.as_str(), found.name.as_str()),
        (created.id.as_str(), "premium", "Acme Corp")
    );
    assert_eq!(found.sha256, sha256);
    assert!(store.find_key(&keys::sha256_hex(b"tg_unknown")).await.unwrap().is_none());

    let listed = keys::list(store).await.unwrap();
    let entry = listed.iter().find(|k| k.id == created.id).expect("the new key is listed");
    assert_eq!(
        (entry.tier.as_str(), entry.name.as_str(), entry.created_at),
        ("premium", "Acme Corp", created.created_at)
    );

    assert!(store.revoke_key(&created.id).await.unwrap());
    assert!(store.find_key(&sha256).await.unwrap().is_none(), "a revoked key no longer verifies");
    assert!(!keys::list(store).await.unwrap().iter().any(|k| k.id == created.id));
    assert!(!store.revoke_key(&created.id).await.unwrap(), "revoking twice finds nothing");
}

pub async fn usage_reports_what_was_counted<S: Store>(f: &Fixture<S>) {
    let key = unique_key("premium");
    assert!(f.store.usage(&key).await.unwrap().is_empty(), "nothing is held for a new key");
    let c = check(
        &key,
        2,
        &format!(
            r#"[{{"name":"day","algorithm":"fixed_window","limit":5,"window_secs":{LONG}}},
                {{"name":"bucket","limit":100,"window_secs":{LONG},"burst":10}}]"#
        ),
    );
    assert!(decide(f, &c).await.admitted);
    assert!(decide(f, &c).await.admitted);
    let usage = f.store.usage(&key).await.unwrap();
    let names: Vec<&str> = usage.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["bucket", "day"], "limits come by name");
    let day = usage_named(&usage, "day");
    assert_eq!((day.used, day.remaining, day.limit, day.window_secs, day.burst), (4, 1, 5, LONG, None));
    assert_eq!(day.algorithm, tollgate_core::config::Algorithm::FixedWindow);
    assert!(day.reset_after_ms > 0);
    let bucket = usage_named(&usage, "bucket");
    assert_eq!((bucket.used, bucket.remaining, bucket.limit, bucket.burst), (4, 6, 100, Some(10)));
    assert_eq!(bucket.algorithm, tollgate_core::config::Algorithm::TokenBucket);
}

pub async fn a_zero_cost_check_only_reads<S: Store>(f: &Fixture<S>) {
    let key = unique_key("free");
    let limits = format!(r#"[{{"name":"day","algorithm":"fixed_window","limit":3,"window_secs":{LONG}}}]"#);
    let read = decide(f, &check(&key, 0, &limits)).await;
    assert!(read.admitted);
    assert_eq!(read.limits[0].remaining, 3);
    assert!(f.store.usage(&key).await.unwrap().is_empty(), "a read stores nothing");
    assert!(decide(f, &check(&key, 1, &limits)).await.admitted);
    assert_eq!(decide(f, &check(&key, 0, &limits)).await.limits[0].remaining, 2);
    assert_eq!(usage_named(&f.store.usage(&key).await.unwrap(), "day").used, 1);
}

pub async fn a_changed_limit_starts_afresh<S: Store>(f: &Fixture<S>) {
    let key = unique_key("free");
    let old =
        check(&key, 1, &format!(r#"[{{"name":"day","algorithm":"fixed_window","limit":1,"window_secs":{LONG}}}]"#));
    assert!(decide(f, &old).await.admitted);
    assert!(!decide(f, &old).await.admitted);
    let new =
        check(&key, 1, &format!(r#"[{{"name":"day","algorithm":"fixed_window","limit":3,"window_secs":{LONG}}}]"#));
    let r = decide(f, &new).await;
    assert!(r.admitted);
    assert_eq!(r.limits[0].remaining, 2, "the new definition does not inherit the old count");
    let usage = f.store.usage(&key).await.unwrap();
    assert_eq!((usage.len(), usage[0].limit, usage[0].used), (1, 3, 1));
}

pub async fn a_return_after_a_check_restores_what_it_took<S: Store>(f: &Fixture<S>) {
    let key = unique_key("pro");
    // One token every 24.4 hours: no refill during the test.
    let limits = format!(
        r#"[{{"name":"day","algorithm":"fixed_window","limit":10,"window_secs":{LONG}}},
            {{"name":"bucket","limit":1500,"window_secs":{LONG},"burst":10}}]"#
    );
    let taken = decide(f, &check(&key, 4, &limits)).await;
    assert!(taken.admitted);
    assert_eq!((named(&taken, "day").remaining, named(&taken, "bucket").remaining), (6, 6));
    let window = named(&taken, "day").window.expect("a fixed window names its window");
    assert_eq!(named(&taken, "bucket").window, None, "a token bucket has no window");
    let windows = format!("[{window},null]");

    let returned = f.store.give_back(&give_back(&key, 3, &limits, &windows)).await.unwrap();
    assert_eq!(returned, [3, 3]);
    let read = decide(f, &check(&key, 0, &limits)).await;
    assert_eq!((named(&read, "day").remaining, named(&read, "bucket").remaining), (9, 9));
    assert_eq!(named(&read, "day").window, Some(window), "a read names the same window");
    let usage = f.store.usage(&key).await.unwrap();
    assert_eq!((usage_named(&usage, "day").used, usage_named(&usage, "bucket").used), (1, 1));

    // Returning more than was taken gives back only what is missing.
    let returned = f.store.give_back(&give_back(&key, 5, &limits, &windows)).await.unwrap();
    assert_eq!(returned, [1, 1]);
    let read = decide(f, &check(&key, 0, &limits)).await;
    assert_eq!((named(&read, "day").remaining, named(&read, "bucket").remaining), (10, 10));

    // A key that holds nothing gets nothing back, and stays empty.
    let empty = unique_key("pro");
    assert_eq!(f.store.give_back(&give_back(&empty, 2, &limits, &windows)).await.unwrap(), [0, 0]);
    assert!(f.store.usage(&empty).await.unwrap().is_empty());
}

pub async fn a_token_bucket_is_never_fuller_than_full<S: Store>(f: &Fixture<S>) {
    let key = unique_key("pro");
    let bucket = format!(r#"[{{"name":"bucket","limit":1500,"window_secs":{LONG},"burst":5}}]"#);
    assert!(decide(f, &check(&key, 2, &bucket)).await.admitted);
    let returned = f.store.give_back(&give_back(&key, 1000, &bucket, "[null]")).await.unwrap();
    assert_eq!(returned, [2], "only the two missing tokens come back");
    assert_eq!(
        f.store.give_back(&give_back(&key, 1, &bucket, "[null]")).await.unwrap(),
        [0],
        "a full bucket takes none"
    );
    // Full means exactly the burst, no more: five pass, the sixth is refused.
    for expected_remaining in (0..5).rev() {
        let r = decide(f, &check(&key, 1, &bucket)).await;
        assert!(r.admitted);
        assert_eq!(r.limits[0].remaining, expected_remaining);
    }
    assert!(!decide(f, &check(&key, 1, &bucket)).await.admitted);

    // Another definition under the same name holds nothing to give back to.
    let other = format!(r#"[{{"name":"bucket","limit":1500,"window_secs":{LONG},"burst":6}}]"#);
    assert_eq!(f.store.give_back(&give_back(&key, 1, &other, "[null]")).await.unwrap(), [0]);
    assert!(!decide(f, &check(&key, 1, &bucket)).await.admitted, "the old definition stays spent");
}

pub async fn a_return_to_a_past_window_gives_nothing<S: Store>(f: &Fixture<S>) {
    let key = unique_key("free");
    let limits = format!(
        r#"[{{"name":"day","algorithm":"fixed_window","limit":5,"window_secs":{LONG}}},
            {{"name":"bucket","limit":1500,"window_secs":{LONG},"burst":10}}]"#
    );
    let taken = decide(f, &check(&key, 2, &limits)).await;
    let window = named(&taken, "day").window.unwrap();
    for stale in [window - 1, window + 1] {
        let returned = f.store.give_back(&give_back(&key, 2, &limits, &format!("[{stale},null]"))).await.unwrap();
        assert_eq!(returned[0], 0, "window {stale} is not the one charged ({window})");
    }
    let usage = f.store.usage(&key).await.unwrap();
    assert_eq!(usage_named(&usage, "day").used, 2, "the stale returns changed nothing in the window");
    assert_eq!(usage_named(&usage, "bucket").used, 0, "the bucket took its returns each time");

    // A window that really rolled over: one second long, charged, then past.
    let second = r#"[{"name":"second","algorithm":"fixed_window","limit":3,"window_secs":1}]"#;
    let key = unique_key("free");
    let taken = decide(f, &check(&key, 2, second)).await;
    let window = taken.limits[0].window.unwrap();
    // Past the reset on any clock: the store's reset_after_ms is rounded up already. A
    // check of cost 0 sees the window without charging it.
    let reset = Duration::from_millis(taken.limits[0].reset_after_ms + 5);
    f.time
        .until("the one-second window to roll over", reset, async || {
            let seen = decide(f, &check(&key, 0, second)).await;
            if seen.limits[0].window > Some(window) {
                Ok(())
            } else {
                Err(format!("still window {window}: {seen:?}"))
            }
        })
        .await;
    let now = decide(f, &check(&key, 1, second)).await;
    assert!(now.admitted && now.limits[0].window > Some(window), "{now:?}");
    assert_eq!(now.limits[0].remaining, 2);
    let returned = f.store.give_back(&give_back(&key, 2, second, &format!("[{window}]"))).await.unwrap();
    assert_eq!(returned, [0], "units of a past window are not given to the new one");
    assert_eq!(decide(f, &check(&key, 0, second)).await.limits[0].remaining, 2, "the new window is as it was");
}

pub async fn invalid_returns_are_refused_and_change_nothing<S: Store>(f: &Fixture<S>) {
    let key = unique_key("free");
    let day = format!(r#"{{"name":"day","algorithm":"fixed_window","limit":5,"window_secs":{LONG}}}"#);
    let bucket = format!(r#"{{"name":"bucket","limit":1500,"window_secs":{LONG},"burst":10}}"#);
    let limits = format!("[{day},{bucket}]");
    let taken = decide(f, &check(&key, 3, &limits)).await;
    let window = named(&taken, "day").window.unwrap();
    for (units, limits, windows, expected) in [
        (1, limits.clone(), format!("[{window}]"), "windows: expected one entry per limit (2), got 1"),
        (1, limits.clone(), format!("[{window},null,null]"), "windows: "),
        (1, limits.clone(), "[null,null]".to_owned(), "windows[0]: "),
        (1, limits.clone(), format!("[{window},{window}]"), "windows[1]: expected null"),
        (1, format!("[{day},{day}]"), format!("[{window},{window}]"), "limits[1].name: duplicate"),
        (1, "[]".to_owned(), "[]".to_owned(), "limits: expected 1 to 16"),
        (1_000_000_001, limits.clone(), format!("[{window},null]"), "units: "),
        (
            1,
            format!(r#"[{day},{{"name":"bucket","limit":0,"window_secs":60}}]"#),
            format!("[{window},null]"),
            "limits[1].limit: ",
        ),
    ] {
        let e = validate::give_back(return_request(&key, units, &limits, &windows)).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code.as_str()), (400, "invalid_request"), "{}", e.message);
        assert!(e.message.starts_with(expected), "{:?} should start with {expected:?}", e.message);
    }
    let e = validate::give_back(return_request("nokey", 1, &limits, &format!("[{window},null]"))).unwrap_err();
    assert!(e.message.starts_with("key: "), "{}", e.message);
    let usage = f.store.usage(&key).await.unwrap();
    assert_eq!((usage_named(&usage, "day").used, usage_named(&usage, "bucket").used), (3, 3), "nothing came back");
}

pub async fn per_limit_costs_are_charged_all_or_nothing<S: Store>(f: &Fixture<S>) {
    let key = unique_key("pro");
    // A request costs 1 to the requests a day and its tokens to the tokens a day.
    let limits = format!(
        r#"[{{"name":"requests","algorithm":"fixed_window","limit":10,"window_secs":{LONG}}},
            {{"name":"tokens","algorithm":"fixed_window","limit":1000,"window_secs":{LONG}}},
            {{"name":"token-bucket","limit":1500,"window_secs":{LONG},"burst":1000}}]"#
    );
    let r = decide(f, &check_costs(&key, &[1, 600, 600], &limits)).await;
    assert!(r.admitted);
    let remaining: Vec<u64> = r.limits.iter().map(|l| l.remaining).collect();
    assert_eq!(remaining, [9, 400, 400], "each limit is charged its own cost");

    // 500 tokens more do not fit: refused, and neither limit is charged anything.
    let refused = decide(f, &check_costs(&key, &[1, 500, 300], &limits)).await;
    assert!(!refused.admitted);
    assert!(named(&refused, "requests").admitted && !named(&refused, "tokens").admitted);
    assert!(named(&refused, "token-bucket").admitted);
    let usage = f.store.usage(&key).await.unwrap();
    let used: Vec<u64> = ["requests", "tokens", "token-bucket"].iter().map(|n| usage_named(&usage, n).used).collect();
    assert_eq!(used, [1, 600, 600], "a refused check charges no limit");

    // A cost of 0 only reads its limit, while the others are charged.
    let r = decide(f, &check_costs(&key, &[1, 0, 400], &limits)).await;
    assert!(r.admitted);
    let remaining: Vec<u64> = r.limits.iter().map(|l| l.remaining).collect();
    assert_eq!(remaining, [8, 400, 0]);
    let usage = f.store.usage(&key).await.unwrap();
    assert_eq!((usage_named(&usage, "tokens").used, usage_named(&usage, "token-bucket").used), (600, 1000));
}

/// Requests a day and tokens a day, fixed windows and a token bucket, none refilling
/// during a test.
fn metered_limits() -> String {
    format!(
        r#"[{{"name":"requests","algorithm":"fixed_window","limit":10,"window_secs":{LONG}}},
            {{"name":"tokens","algorithm":"fixed_window","limit":1000,"window_secs":{LONG}}},
            {{"name":"token-bucket","limit":1500,"window_secs":{LONG},"burst":1000}}]"#
    )
}

/// What the store holds for the three limits of [`metered_limits`]: used units (0 for a
/// limit it does not hold).
async fn used_of<S: Store>(f: &Fixture<S>, key: &str) -> [u64; 3] {
    let usage = f.store.usage(key).await.unwrap();
    ["requests", "tokens", "token-bucket"].map(|n| usage.iter().find(|l| l.name == n).map_or(0, |l| l.used))
}

/// Reserves `costs` of [`metered_limits`]: the windows the check answered, as JSON.
async fn reserve<S: Store>(f: &Fixture<S>, key: &str, costs: &[u64]) -> String {
    let r = decide(f, &check_costs(key, costs, &metered_limits())).await;
    assert!(r.admitted, "{r:?}");
    let (requests, tokens) = (named(&r, "requests").window.unwrap(), named(&r, "tokens").window.unwrap());
    format!("[{requests},{tokens},null]")
}

pub async fn a_settlement_gives_back_what_was_not_used<S: Store>(f: &Fixture<S>) {
    let key = unique_key("pro");
    let limits = metered_limits();
    let windows = reserve(f, &key, &[1, 800, 800]).await;
    assert_eq!(used_of(f, &key).await, [1, 800, 800]);
    let applied = f.store.settle(&settle(&key, &unique_id(), &limits, &windows, &[1, 800, 800], &[1, 300, 250])).await;
    assert!(applied.unwrap());
    assert_eq!(used_of(f, &key).await, [1, 300, 250], "each limit keeps only what was used");
    let r = decide(f, &check_costs(&key, &[1, 700, 750], &limits)).await;
    assert!(r.admitted, "the refund can be spent again: {r:?}");

    // More given back than the limit holds: a bucket is never fuller than full, a window
    // never below zero.
    let key = unique_key("pro");
    let windows = reserve(f, &key, &[1, 100, 100]).await;
    let s = settle(&key, &unique_id(), &limits, &windows, &[5, 900, 900], &[0, 0, 0]);
    assert!(f.store.settle(&s).await.unwrap());
    assert_eq!(used_of(f, &key).await, [0, 0, 0]);
    let full = decide(f, &check_costs(&key, &[0, 0, 0], &limits)).await;
    let remaining: Vec<u64> = full.limits.iter().map(|l| l.remaining).collect();
    assert_eq!(remaining, [10, 1000, 1000], "exactly full, no more");
}

pub async fn a_settlement_charges_an_overrun_past_the_limit<S: Store>(f: &Fixture<S>) {
    let key = unique_key("pro");
    let limits = metered_limits();
    let windows = reserve(f, &key, &[1, 500, 500]).await;
    let s = settle(&key, &unique_id(), &limits, &windows, &[1, 500, 500], &[1, 1700, 1300]);
    assert!(f.store.settle(&s).await.unwrap());
    let usage = f.store.usage(&key).await.unwrap();
    assert_eq!(usage_named(&usage, "tokens").used, 1700, "the window counts past its limit of 1000");
    assert_eq!(usage_named(&usage, "tokens").remaining, 0);
    assert_eq!(usage_named(&usage, "requests").used, 1, "a limit used as reserved is unchanged");
    // The bucket is 300 tokens below empty: the refusal says how long it owes.
    let r = decide(f, &check_costs(&key, &[1, 0, 1], &limits)).await;
    assert!(!r.admitted && !named(&r, "token-bucket").admitted);
    let bucket = named(&r, "token-bucket");
    let interval_ms = LONG * 1000 / 1500;
    assert_eq!(bucket.remaining, 0);
    assert!(
        bucket.retry_after_ms >= 300 * interval_ms && bucket.retry_after_ms <= 301 * interval_ms,
        "{} ms to wait: 301 tokens of {interval_ms} ms",
        bucket.retry_after_ms
    );
    assert!(!decide(f, &check_costs(&key, &[1, 1, 0], &limits)).await.admitted, "the window is spent");
    assert_eq!(used_of(f, &key).await[0], 1, "and the refused checks took nothing");

    // No bucket goes more than one full bucket below empty, however large the overrun.
    let key = unique_key("pro");
    let windows = reserve(f, &key, &[1, 1, 1]).await;
    let huge = settle(&key, &unique_id(), &limits, &windows, &[1, 1, 1], &[1, 1, 1_000_000_000]);
    assert!(f.store.settle(&huge).await.unwrap());
    let r = decide(f, &check_costs(&key, &[0, 0, 0], &limits)).await;
    let reset = named(&r, "token-bucket").reset_after_ms;
    assert!(reset <= 2000 * interval_ms && reset > 1999 * interval_ms, "{reset} ms to full again");

    // An overrun on a limit the store does not hold (its key expired) is charged afresh.
    let key = unique_key("pro");
    let windows = f.store.check(&check_costs(&key, &[0, 0, 0], &limits)).await.unwrap();
    let windows =
        format!("[{},{},null]", named(&windows, "requests").window.unwrap(), named(&windows, "tokens").window.unwrap());
    let s = settle(&key, &unique_id(), &limits, &windows, &[1, 10, 10], &[1, 30, 40]);
    assert!(f.store.settle(&s).await.unwrap());
    assert_eq!(used_of(f, &key).await, [0, 20, 30]);
}

pub async fn a_replayed_settlement_changes_nothing<S: Store>(f: &Fixture<S>) {
    let key = unique_key("pro");
    let limits = metered_limits();
    let windows = reserve(f, &key, &[1, 500, 500]).await;
    let id = unique_id();
    let refund = settle(&key, &id, &limits, &windows, &[1, 500, 500], &[1, 200, 200]);
    assert!(f.store.settle(&refund).await.unwrap(), "applied the first time");
    assert_eq!(used_of(f, &key).await, [1, 200, 200]);
    for _ in 0..3 {
        assert!(!f.store.settle(&refund).await.unwrap(), "a retry answers not applied");
    }
    assert_eq!(used_of(f, &key).await, [1, 200, 200], "and gives nothing back again");

    // Replays of an overrun do not charge twice; the same id under another key is another
    // settlement.
    let id = unique_id();
    let overrun = settle(&key, &id, &limits, &windows, &[0, 0, 0], &[0, 300, 300]);
    assert!(f.store.settle(&overrun).await.unwrap());
    assert!(!f.store.settle(&overrun).await.unwrap());
    assert_eq!(used_of(f, &key).await, [1, 500, 500]);
    let other = unique_key("pro");
    let other_windows = reserve(f, &other, &[1, 1, 1]).await;
    let same_id = settle(&other, &id, &limits, &other_windows, &[1, 1, 1], &[1, 2, 2]);
    assert!(f.store.settle(&same_id).await.unwrap(), "ids are per metered key");
    assert_eq!(used_of(f, &other).await, [1, 2, 2]);
}

pub async fn a_settlement_into_a_passed_window_changes_nothing<S: Store>(f: &Fixture<S>) {
    let limits = metered_limits();
    let key = unique_key("pro");
    let windows = reserve(f, &key, &[1, 300, 300]).await;
    let [requests, tokens] = {
        let w: Vec<u64> = serde_json::from_str::<Vec<Option<u64>>>(&windows).unwrap().into_iter().flatten().collect();
        [w[0], w[1]]
    };
    for stale in [format!("[{},{},null]", requests - 1, tokens - 1), format!("[{},{},null]", requests + 1, tokens + 1)]
    {
        let s = settle(&key, &unique_id(), &limits, &stale, &[1, 300, 300], &[0, 900, 300]);
        assert!(f.store.settle(&s).await.unwrap());
        assert_eq!(used_of(f, &key).await, [1, 300, 300], "windows {stale} are not the current ones");
    }

    // A window that really rolled over: one second long, reserved, then past.
    let second = r#"[{"name":"second","algorithm":"fixed_window","limit":100,"window_secs":1}]"#;
    let key = unique_key("pro");
    let taken = decide(f, &check_costs(&key, &[50], second)).await;
    let window = taken.limits[0].window.unwrap();
    let reset = Duration::from_millis(taken.limits[0].reset_after_ms + 5);
    f.time
        .until("the one-second window to roll over", reset, async || {
            let seen = decide(f, &check_costs(&key, &[0], second)).await;
            if seen.limits[0].window > Some(window) {
                Ok(())
            } else {
                Err(format!("still window {window}: {seen:?}"))
            }
        })
        .await;
    let now = decide(f, &check_costs(&key, &[10], second)).await;
    assert!(now.admitted && now.limits[0].window > Some(window), "{now:?}");
    for used in [0, 90] {
        let s = settle(&key, &unique_id(), second, &format!("[{window}]"), &[50], &[used]);
        assert!(f.store.settle(&s).await.unwrap());
    }
    assert_eq!(
        decide(f, &check_costs(&key, &[0], second)).await.limits[0].remaining,
        90,
        "neither the refund nor the overrun of a past window reaches the new one"
    );
}

/// Calls `$callback!($args; <every scenario name>)`: the one list of the suite.
#[macro_export]
macro_rules! with_every_scenario {
    ($callback:ident!($($args:tt)*)) => {
        $crate::$callback! {$($args)*;
            fixed_window_admits_exactly_the_limit_then_refuses,
            a_refused_request_consumes_nothing_from_any_limit,
            token_bucket_allows_a_burst_then_refills,
            concurrent_checks_admit_exactly_the_limit,
            concurrent_checks_over_many_keys_stay_exact,
            api_keys_are_created_verified_listed_and_revoked,
            usage_reports_what_was_counted,
            a_zero_cost_check_only_reads,
            a_changed_limit_starts_afresh,
            a_return_after_a_check_restores_what_it_took,
            a_token_bucket_is_never_fuller_than_full,
            a_return_to_a_past_window_gives_nothing,
            invalid_returns_are_refused_and_change_nothing,
            per_limit_costs_are_charged_all_or_nothing,
            a_settlement_gives_back_what_was_not_used,
            a_settlement_charges_an_overrun_past_the_limit,
            a_replayed_settlement_changes_nothing,
            a_settlement_into_a_passed_window_changes_nothing}
    };
}

/// Stamps out one `#[tokio::test]` per scenario for a backend: `$fixture` is an async
/// expression giving `(Fixture, guard)`; the guard (a Redis server, say) lives as long as the test.
#[macro_export]
macro_rules! scenario_tests {
    ($fixture:expr) => {
        $crate::with_every_scenario!(scenario_tests!(@each $fixture));
    };
    (@each $fixture:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (fixture, _guard) = $fixture;
                $crate::scenarios::$name(&fixture).await;
            }
        )*
    };
}

#[macro_export]
macro_rules! run_each_scenario {
    ($fixture:expr; $($name:ident),*) => {$(
        eprintln!("scenario: {}", stringify!($name));
        $crate::scenarios::$name($fixture).await;
    )*};
}

/// Every scenario in turn on one fixture (for a backend too costly to start per test).
pub async fn run_all<S: Store>(f: &Fixture<S>) {
    crate::with_every_scenario!(run_each_scenario!(f));
}
