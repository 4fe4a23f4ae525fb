//! The scenario suite on a real `redis-server`, and what only Redis has: key layout,
//! TTLs, NOSCRIPT after `SCRIPT FLUSH`, restarts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_quota::keys;
use tollgate_quota::store::{RedisStore, Store};
use tollgate_testkit::redis::Redis;
use tollgate_testkit::wait::Wait;

use crate::scenarios::{check, check_costs, settle, unique_id, unique_key, Fixture, TestTime};

pub async fn fixture() -> (Fixture<RedisStore>, Redis) {
    let server = Redis::start();
    let store = RedisStore::open(&server.url().parse().unwrap()).unwrap();
    (Fixture { store: Arc::new(store), time: TestTime::real() }, server)
}

crate::scenario_tests!(fixture().await);

fn meter_key(key: &str) -> String {
    format!("tg:{{{key}}}")
}

fn pttl(server: &Redis, key: &str) -> i64 {
    server.cli(&["PTTL", &meter_key(key)]).trim().parse().unwrap()
}

/// 366 days: an epoch-aligned window this long does not roll over during a test.
const YEAR: &str = r#"{"name":"year","algorithm":"fixed_window","limit":5,"window_secs":31622400}"#;
/// One token every 100 ms.
const RPS: &str = r#"{"name":"rps","limit":10,"window_secs":1}"#;

#[tokio::test]
async fn the_ttl_is_the_time_until_every_limit_is_full_again() {
    let (f, server) = fixture().await;
    let key = unique_key("free");
    let sent = Instant::now();
    let r = f.store.check(&check(&key, 1, &format!("[{YEAR},{RPS}]"))).await.unwrap();
    let ttl = pttl(&server, &key);
    let elapsed = i64::try_from(sent.elapsed().as_millis()).unwrap();
    let year_full_in = i64::try_from(r.limits[0].reset_after_ms).unwrap();
    assert!(
        ttl <= year_full_in && ttl >= year_full_in - elapsed - 1,
        "PTTL {ttl} ms; the year window is full again in {year_full_in} ms"
    );

    // A request that touches only the short limit does not shorten the key's life.
    assert!(f.store.check(&check(&key, 1, &format!("[{RPS}]"))).await.unwrap().admitted);
    assert!(pttl(&server, &key) > 1000);

    // A bucket alone lives as long as its debt: one token of one per second = 1000 ms.
    let bucket_key = unique_key("free");
    let per_second = r#"[{"name":"ps","limit":1,"window_secs":1}]"#;
    let sent = Instant::now();
    assert!(f.store.check(&check(&bucket_key, 1, per_second)).await.unwrap().admitted);
    let ttl = pttl(&server, &bucket_key);
    let elapsed = i64::try_from(sent.elapsed().as_millis()).unwrap();
    if elapsed < 1000 {
        assert!((1000 - elapsed - 1..=1000).contains(&ttl), "PTTL {ttl} ms, {elapsed} ms after the check");
    }
    // Idle keys disappear: gone by 1200 ms after the check at the latest.
    let exists = ["EXISTS", &meter_key(&bucket_key)];
    server.wait_for_cli(&exists, "0", Wait::new("the idle key to expire").due(sent + Duration::from_millis(1200)));
    assert!(f.store.usage(&bucket_key).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_metered_key_is_one_hash_under_its_hash_tag_and_tokens_are_never_stored() {
    let (f, server) = fixture().await;
    let key = "free/ip:203.0.113.7/32";
    f.store.check(&check(key, 1, &format!("[{YEAR},{RPS}]"))).await.unwrap();
    assert_eq!(server.cli(&["KEYS", "*"]).trim(), "tg:{free/ip:203.0.113.7/32}");
    assert_eq!(server.cli(&["TYPE", &meter_key(key)]).trim(), "hash");
    let fields = server.cli(&["HGETALL", &meter_key(key)]);
    let lines: Vec<&str> = fields.lines().collect();
    let value_of = |name: &str| lines[lines.iter().position(|l| *l == name).unwrap() + 1];
    assert!(value_of("year").starts_with("f:5:31622400 "), "{fields}");
    assert!(value_of("rps").starts_with("t:10:1:10 "), "{fields}");

    let created = keys::store_key(f.store.as_ref(), keys::new_key("premium", "acme", &keys::KnownTiers::Any).unwrap())
        .await
        .unwrap();
    let sha256 = keys::sha256_hex(created.token.as_bytes());
    let mut all_keys: Vec<String> = server.cli(&["KEYS", "*"]).lines().map(str::to_owned).collect();
    all_keys.sort();
    assert_eq!(all_keys, ["tg:apikey:".to_owned() + &sha256, "tg:apikeys".to_owned(), meter_key(key)]);
    let stored = server.cli(&["GET", &format!("tg:apikey:{sha256}")]) + &server.cli(&["HGETALL", "tg:apikeys"]);
    assert!(stored.contains(&created.id) && stored.contains(&sha256));
    assert!(!stored.contains(&created.token), "only the token's SHA-256 is stored");
}

#[tokio::test]
async fn noscript_after_a_script_flush_is_survived() {
    let (f, server) = fixture().await;
    let key = unique_key("free");
    let c = check(&key, 1, &format!("[{YEAR}]"));
    assert_eq!(f.store.check(&c).await.unwrap().limits[0].remaining, 4);
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
    assert_eq!(f.store.check(&c).await.unwrap().limits[0].remaining, 3, "reloaded, and the counts are intact");
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
    assert_eq!(f.store.usage(&key).await.unwrap()[0].used, 2);
}

#[tokio::test]
async fn a_redis_restart_is_survived() {
    let (f, mut server) = fixture().await;
    let key = unique_key("free");
    let c = check(&key, 1, &format!("[{YEAR}]"));
    assert_eq!(f.store.check(&c).await.unwrap().limits[0].remaining, 4);

    server.restart();
    // The old connection is dead; the store reconnects and retries by itself.
    let r = f.store.check(&c).await.expect("the first check after the restart succeeds");
    assert_eq!(r.limits[0].remaining, 4, "Redis came back empty (no persistence): counting starts again");
    for expected in (0..4).rev() {
        assert_eq!(f.store.check(&c).await.unwrap().limits[0].remaining, expected);
    }
    f.store.ping().await.unwrap();
}

#[tokio::test]
async fn a_stopped_redis_is_a_transient_error_until_it_is_back() {
    let (f, mut server) = fixture().await;
    f.store.ping().await.unwrap();
    server.kill();
    let started = Instant::now();
    let error = f.store.ping().await.unwrap_err();
    assert!(error.transient, "{error:?}");
    let c = check(&unique_key("free"), 1, &format!("[{YEAR}]"));
    assert!(f.store.check(&c).await.unwrap_err().transient);
    assert!(started.elapsed() < Duration::from_secs(5), "failures are quick: {:?}", started.elapsed());
    server.restart();
    f.store.ping().await.unwrap();
    assert!(f.store.check(&c).await.unwrap().admitted);
}

#[tokio::test]
async fn one_script_call_decides_many_keys_in_order() {
    let (_f, server) = fixture().await;
    let script = concat!(include_str!("../../lua/expiry.lua"), include_str!("../../lua/check.lua"));
    let (a, b) = (meter_key(&unique_key("free")), meter_key(&unique_key("free")));
    let one = ["one", "f:1:31622400", "31622400000000", "1", "1"];
    // Three keys in one call: a, b, then a again. Each decision sees what the ones before
    // it wrote: the second check of `a` finds its one unit spent.
    let mut args = vec!["EVAL", script, "3", &a, &b, &a];
    for _ in 0..3 {
        args.push("1");
        args.extend(one);
    }
    let reply: Vec<i64> = server.cli(&args).lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(reply.len(), 3 * 6, "{reply:?}");
    let admitted: Vec<i64> = reply.chunks(6).map(|c| c[0]).collect();
    assert_eq!(admitted, [1, 1, 0]);
    assert_eq!(reply[6 * 2 + 2], 0, "the refused one sees nothing remaining");
    assert!(reply.chunks(6).all(|c| c[5] == reply[5]), "every answer names the same window: {reply:?}");
    assert_eq!(server.cli(&["HGET", &a, "one"]).trim(), format!("f:1:31622400 {} 1", reply[5]));

    // A refused check between two admitted ones consumes nothing, and the others still pass.
    let two = ["two", "f:2:31622400", "31622400000000", "2"];
    let c = meter_key(&unique_key("free"));
    let mut args = vec!["EVAL", script, "3", &c, &c, &c];
    for cost in ["2", "1", "0"] {
        args.push("1");
        args.extend(two);
        args.push(cost);
    }
    let reply: Vec<i64> = server.cli(&args).lines().map(|l| l.trim().parse().unwrap()).collect();
    let admitted: Vec<i64> = reply.chunks(6).map(|chunk| chunk[0]).collect();
    assert_eq!(admitted, [1, 0, 1], "{reply:?}");
    assert_eq!(server.cli(&["HGET", &c, "two"]).trim(), format!("f:2:31622400 {} 2", reply[5]));

    // A key that is not a hash fails alone (-1, nothing written); its neighbours are decided.
    let (d, broken, e) =
        (meter_key(&unique_key("free")), meter_key(&unique_key("free")), meter_key(&unique_key("free")));
    assert_eq!(server.cli(&["SET", &broken, "not a hash"]).trim(), "OK");
    let mut args = vec!["EVAL", script, "3", &d, &broken, &e];
    for _ in 0..3 {
        args.push("1");
        args.extend(two);
        args.push("1");
    }
    let reply: Vec<i64> = server.cli(&args).lines().map(|l| l.trim().parse().unwrap()).collect();
    let admitted: Vec<i64> = reply.chunks(6).map(|chunk| chunk[0]).collect();
    assert_eq!(admitted, [1, -1, 1], "{reply:?}");
    assert_eq!(server.cli(&["GET", &broken]).trim(), "not a hash");
    assert!(server.cli(&["HGET", &e, "two"]).trim().ends_with(" 1"));

    // Per-limit costs, two limits per key: each limit is charged its own cost; the second
    // check of `g` does not fit its tokens and charges neither limit.
    let (g, h) = (meter_key(&unique_key("free")), meter_key(&unique_key("free")));
    let requests = ["requests", "f:10:31622400", "31622400000000", "10"];
    let tokens = ["tokens", "f:1000:31622400", "31622400000000", "1000"];
    let mut args = vec!["EVAL", script, "3", &g, &h, &g];
    for tokens_cost in ["700", "300", "301"] {
        args.push("2");
        args.extend(requests);
        args.push("1");
        args.extend(tokens);
        args.push(tokens_cost);
    }
    let reply: Vec<i64> = server.cli(&args).lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(reply.len(), 3 * 11, "{reply:?}");
    let admitted: Vec<i64> = reply.chunks(11).map(|c| c[0]).collect();
    assert_eq!(admitted, [1, 1, 0], "{reply:?}");
    // Remaining per limit (the second number of each five): requests, tokens.
    assert_eq!((reply[2], reply[7]), (9, 300));
    assert_eq!((reply[11 + 2], reply[11 + 7]), (9, 700));
    assert!(server.cli(&["HGET", &g, "requests"]).trim().ends_with(" 1"), "the refused check took no request");
    assert!(server.cli(&["HGET", &g, "tokens"]).trim().ends_with(" 700"));
    assert!(server.cli(&["HGET", &h, "tokens"]).trim().ends_with(" 300"));
}

#[tokio::test]
async fn a_metered_key_that_is_not_a_hash_is_a_store_error_for_its_check_only() {
    let (f, server) = fixture().await;
    let (good, broken) = (unique_key("free"), unique_key("free"));
    assert_eq!(server.cli(&["SET", &meter_key(&broken), "x"]).trim(), "OK");
    let error = f.store.check(&check(&broken, 1, &format!("[{YEAR}]"))).await.unwrap_err();
    assert!(!error.transient && error.message.contains("not a hash"), "{error:?}");
    assert!(f.store.check(&check(&good, 1, &format!("[{YEAR}]"))).await.unwrap().admitted);
}

fn settle_marker(key: &str, id: &str) -> String {
    format!("tg:{{{key}}}:settle:{id}")
}

/// `PTTL` of a Redis key, ms.
fn pttl_of(server: &Redis, redis_key: &str) -> i64 {
    server.cli(&["PTTL", redis_key]).trim().parse().unwrap()
}

const DAY_MS: i64 = 86_400_000;

#[tokio::test]
async fn a_day_limit_lives_about_a_day() {
    let (f, server) = fixture().await;
    // A fixed window of a day lives until its window ends (00:00 UTC): at most a day.
    let key = unique_key("free");
    let day = r#"[{"name":"day","algorithm":"fixed_window","limit":5,"window_secs":86400}]"#;
    let sent = Instant::now();
    let r = f.store.check(&check(&key, 1, day)).await.unwrap();
    let ttl = pttl(&server, &key);
    let elapsed = i64::try_from(sent.elapsed().as_millis()).unwrap();
    let ends_in = i64::try_from(r.limits[0].reset_after_ms).unwrap();
    assert!(ttl <= ends_in && ttl >= ends_in - elapsed - 1, "PTTL {ttl} ms; the day window ends in {ends_in} ms");
    assert!(ttl <= DAY_MS);

    // A bucket of a day's tokens, emptied, lives the day it takes to refill.
    let key = unique_key("free");
    let tokens = r#"[{"name":"tokens","limit":1000,"window_secs":86400}]"#;
    let sent = Instant::now();
    assert!(f.store.check(&check(&key, 1000, tokens)).await.unwrap().admitted);
    let ttl = pttl(&server, &key);
    let elapsed = i64::try_from(sent.elapsed().as_millis()).unwrap();
    assert!((DAY_MS - elapsed - 1..=DAY_MS).contains(&ttl), "PTTL {ttl} ms, {elapsed} ms after the check");
    assert!(server.cli(&["TTL", &meter_key(&key)]).trim().parse::<i64>().unwrap() <= 86_400);
}

#[tokio::test]
async fn a_key_never_outlives_the_longest_limit_it_holds() {
    let (f, server) = fixture().await;
    // A key that held a limit of 366 days (its window ends weeks from now, as a year
    // window does), redefined as a day: the key then lives a day at most, not the rest of
    // the year.
    let key = unique_key("free");
    let year = r#"[{"name":"period","algorithm":"fixed_window","limit":5,"window_secs":31622400}]"#;
    let r = f.store.check(&check(&key, 1, year)).await.unwrap();
    let year_ttl = pttl(&server, &key);
    if r.limits[0].reset_after_ms > 86_400_000 + 1000 {
        assert!(year_ttl > DAY_MS, "PTTL {year_ttl} ms: the year's window is what the key lives for first");
    }
    let day = r#"[{"name":"period","algorithm":"fixed_window","limit":5,"window_secs":86400}]"#;
    assert!(f.store.check(&check(&key, 1, day)).await.unwrap().admitted);
    let ttl = pttl(&server, &key);
    assert!((1..=DAY_MS).contains(&ttl), "PTTL {ttl} ms after the limit became a day's");

    // Limits the check does not name, still stored, keep the key alive as long as they count.
    let key = unique_key("free");
    let both = format!("[{YEAR},{RPS}]");
    let r = f.store.check(&check(&key, 1, &both)).await.unwrap();
    let year_ends_in = i64::try_from(r.limits[0].reset_after_ms).unwrap();
    assert!(f.store.check(&check(&key, 1, &format!("[{RPS}]"))).await.unwrap().admitted);
    let ttl = pttl(&server, &key);
    assert!(ttl > year_ends_in - 60_000 && ttl <= year_ends_in, "PTTL {ttl} ms; the year ends in {year_ends_in} ms");

    // A return that leaves every limit full deletes the key; one that leaves some counted
    // shortens it to them.
    let key = unique_key("free");
    let limits = r#"[{"name":"day","algorithm":"fixed_window","limit":5,"window_secs":86400},
                     {"name":"ps","limit":1,"window_secs":1}]"#;
    let r = f.store.check(&check(&key, 1, limits)).await.unwrap();
    let window = r.limits[0].window.unwrap();
    let give_back = crate::scenarios::give_back(
        &key,
        1,
        r#"[{"name":"day","algorithm":"fixed_window","limit":5,"window_secs":86400}]"#,
        &format!("[{window}]"),
    );
    assert_eq!(f.store.give_back(&give_back).await.unwrap(), [1]);
    let ttl = pttl(&server, &key);
    assert!(ttl <= 1000, "PTTL {ttl} ms: only the one-second bucket still counts");
    let all = crate::scenarios::give_back(&key, 1, limits, &format!("[{window},null]"));
    f.store.give_back(&all).await.unwrap();
    assert_eq!(server.cli(&["EXISTS", &meter_key(&key)]).trim(), "0", "every limit is full: no key");
}

#[tokio::test]
async fn a_settlement_leaves_a_marker_in_its_meter_slot_and_sets_the_ttl() {
    let (f, server) = fixture().await;
    let key = unique_key("pro");
    let tokens = r#"[{"name":"tokens","limit":1000,"window_secs":86400}]"#;
    let id = unique_id();
    let sent = Instant::now();
    assert!(f.store.check(&check_costs(&key, &[100], tokens)).await.unwrap().admitted);
    assert!(f.store.settle(&settle(&key, &id, tokens, "[null]", &[100], &[600])).await.unwrap());
    let (marker_ttl, ttl) = (pttl_of(&server, &settle_marker(&key, &id)), pttl(&server, &key));
    let elapsed = i64::try_from(sent.elapsed().as_millis()).unwrap();
    let mut keys: Vec<String> = server.cli(&["KEYS", &format!("tg:{{{key}}}*")]).lines().map(str::to_owned).collect();
    keys.sort();
    assert_eq!(keys, [meter_key(&key), settle_marker(&key, &id)]);
    assert_eq!(server.cli(&["GET", &settle_marker(&key, &id)]).trim(), "1");
    // Remembered for the limit's day, within the bound of an hour.
    assert!((3_600_000 - elapsed - 1..=3_600_000).contains(&marker_ttl), "marker PTTL {marker_ttl} ms");
    // 600 of a day's 1000 tokens: full again in 0.6 days.
    let expected = DAY_MS * 6 / 10;
    assert!((expected - elapsed - 1..=expected).contains(&ttl), "PTTL {ttl} ms, expected about {expected}");

    // A short limit's settlement is remembered at least a second.
    let key = unique_key("pro");
    let second = r#"[{"name":"second","algorithm":"fixed_window","limit":100,"window_secs":1}]"#;
    let r = f.store.check(&check_costs(&key, &[10], second)).await.unwrap();
    let id = unique_id();
    let window = r.limits[0].window.unwrap();
    f.store.settle(&settle(&key, &id, second, &format!("[{window}]"), &[10], &[5])).await.unwrap();
    let marker_ttl = pttl_of(&server, &settle_marker(&key, &id));
    assert!((1..=1000).contains(&marker_ttl), "marker PTTL {marker_ttl} ms");
}
