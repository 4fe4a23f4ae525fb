//! Leases: the record's operations, and decisions against a fake quota service that does
//! the service's arithmetic (`limit::evaluate`, all or nothing).

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{json, Value};

use super::*;
use crate::config::Config;
use crate::decision::{begin, give_back_idle_blocks, refilled_ahead, resume, Answer, Callout, Decision, Outcome, Step};
use crate::hash::{hex, sha256};
use crate::limit::{evaluate, LimitState};
use crate::quota::CheckRequest;
use crate::store::FakeSharedData;
use crate::worker::{idle_block_ns, Worker};
use crate::worker_block::{BlockKey, IDLE_GIVE_BACK_NS, MAX_BLOCKS};
use crate::RequestInfo;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const SEC: u64 = 1_000_000_000;
/// 2026-11-23T12:00:00Z: mid-day, so a daily window is far from its reset.
const T0: Nanos = Nanos(1_795_435_200 * SEC);

fn config() -> Config {
    let key = |id: &str, tier: &str| json!({ "id": id, "sha256": hex(&sha256(format!("tok-{id}").as_bytes())), "tier": tier });
    let json = json!({
        "identity": { "anonymous": { "tier": "free" } },
        "keys": [ key("bulk", "bulk"), key("rate", "rate"), key("big", "big"), key("mixed", "mixed") ],
        "tiers": {
            "free": { "limits": [ { "name": "images-per-day", "limit": 5, "window": "1d", "algorithm": "fixed_window", "scope": "global" } ] },
            "bulk": { "limits": [ { "name": "per-day", "limit": 1000, "window": "1d", "algorithm": "fixed_window", "scope": "global", "lease_block": 50, "failure_mode": "closed" } ] },
            "rate": { "limits": [ { "name": "rpm", "limit": 600, "window": "1m", "scope": "global", "lease_block": 20 } ] },
            "big": { "limits": [ { "name": "rpm", "limit": 1_000_000_000u64, "window": "1m", "scope": "global" },
                                 { "name": "per-day", "limit": 1_000_000_000u64, "window": "1d", "algorithm": "fixed_window", "scope": "global" } ] },
            "mixed": { "limits": [ { "name": "per-day", "limit": 100_000, "window": "1d", "algorithm": "fixed_window", "scope": "global" },
                                   { "name": "small", "limit": 100, "window": "1d", "algorithm": "fixed_window", "scope": "global" } ] }
        },
        "routes": [ { "path_prefix": "/", "cost": 1 } ],
        "quota_service": { "cluster": "q", "timeout_ms": 100, "breaker": { "failures": 1000 } }
    });
    Config::from_json(json.to_string().as_bytes()).unwrap()
}

fn request(token: &'static str) -> RequestInfo<'static> {
    RequestInfo {
        method: "POST",
        path: "/x",
        authorization: vec![token],
        client_address: Some("203.0.113.7:0"),
        ..Default::default()
    }
}

/// The lease records at `now`, with a refill marker holding for `ttl` ns.
fn records(s: &FakeSharedData, ttl: u64, now: Nanos) -> Records<'_, FakeSharedData> {
    Records { store: s, retries: 8, marker_ttl_ns: ttl, now }
}

/// The quota service's decision arithmetic, all or nothing, with a count of units charged.
#[derive(Default)]
struct Service {
    states: HashMap<(String, String), LimitState>,
    charged: u64,
    checks: u64,
    /// When set, every check fails (the service is down).
    down: bool,
}

impl Service {
    fn check(&mut self, body: &str, now: Nanos) -> Option<Vec<u8>> {
        if self.down {
            return None;
        }
        self.checks += 1;
        let req: CheckRequest = serde_json::from_str(body).unwrap();
        let evals: Vec<_> = req
            .limits
            .iter()
            .map(|spec| {
                let limit = spec.to_limit("l").unwrap();
                let state = self.states.get(&(req.key.clone(), spec.name.clone())).copied();
                (spec, limit.clone(), evaluate(&limit, state, now, req.cost))
            })
            .collect();
        let admitted = evals.iter().all(|(_, _, e)| e.admitted);
        if admitted {
            self.charged += req.cost;
            for (spec, _, e) in &evals {
                self.states.insert((req.key.clone(), spec.name.clone()), e.state);
            }
        }
        let limits: Vec<Value> = evals
            .iter()
            .map(|(spec, limit, e)| {
                let window = match limit.kind {
                    crate::config::LimitKind::FixedWindow { window_ns } => Some(now.0 / window_ns),
                    _ => None,
                };
                json!({ "name": spec.name, "admitted": e.admitted, "remaining": e.remaining,
                        "reset_after_ms": e.reset_after_ns / 1_000_000, "retry_after_ms": e.retry_after_ns.div_ceil(1_000_000),
                        "window": window })
            })
            .collect();
        Some(serde_json::to_vec(&json!({ "admitted": admitted, "limits": limits })).unwrap())
    }
}

/// Decides one request to the end, answering callouts from `service`.
fn run(
    c: &Config,
    store: &FakeSharedData,
    service: &Mutex<Service>,
    req: &RequestInfo<'_>,
    now: Nanos,
) -> (Decision, Vec<u64>) {
    run_on(&mut Worker::new(10), c, store, service, req, now)
}

/// Answers `call` from `service`: the body, or `None` when the service is down.
fn answer(service: &Mutex<Service>, call: &Callout, now: Nanos) -> (u64, Option<Vec<u8>>) {
    let sent: CheckRequest = serde_json::from_str(&call.body).unwrap();
    (sent.cost, service.lock().unwrap().check(&call.body, now))
}

fn answered(reply: &Option<Vec<u8>>) -> Answer<'_> {
    match reply {
        Some(body) => Answer::Response { status: 200, body },
        None => Answer::Failed,
    }
}

/// [`run`] on a worker's cache that outlives the request (with holds: as the filter's). A
/// refill ahead of need is answered once the request is decided, as the root context does.
fn run_on(
    cache: &mut Worker,
    c: &Config,
    store: &FakeSharedData,
    service: &Mutex<Service>,
    req: &RequestInfo<'_>,
    now: Nanos,
) -> (Decision, Vec<u64>) {
    let cache = &mut *cache;
    let mut costs = Vec::new();
    let mut step = begin(c, store, cache, req, now);
    loop {
        match step {
            Step::Done(mut d) => {
                if let Some(call) = d.refill.take() {
                    assert!(
                        d.quota.from_lease && d.outcome == Outcome::Allowed,
                        "a refill ahead of an admitted request"
                    );
                    let (cost, reply) = answer(service, &call, now);
                    costs.push(cost);
                    let (held, report) = refilled_ahead(c, store, call.pending, answered(&reply), now);
                    assert_eq!(held.is_some(), report.leased_units > 0);
                    d.lease = held;
                    d.quota.leased_units = report.leased_units;
                }
                return (d, costs);
            }
            Step::Call(call) => {
                let (cost, reply) = answer(service, &call, now);
                costs.push(cost);
                step = resume(c, store, cache, call.pending, answered(&reply), now);
            }
        }
    }
}

fn bulk_ref(c: &Config) -> LeaseRef {
    let tier = &c.tiers.iter().find(|t| t.name == "bulk").unwrap();
    LeaseRef::new("bulk", "key:bulk", tier.limits.iter(), c.store.slots)
}

fn header<'a>(d: &'a Decision, name: &str) -> Option<&'a str> {
    let headers = d.reply.as_ref().map_or(&d.response_headers, |r| &r.headers);
    headers.get(name)
}

#[test]
fn blocks_default_to_one_percent_of_big_limits_and_small_limits_stay_exact() {
    let c = config();
    let tier = |name: &str| c.tiers.iter().find(|t| t.name == name).unwrap();
    assert_eq!(tier("free").limits[0].lease_block, 0, "5 a day stays exact");
    assert_eq!(tier("big").limits[0].lease_block, 1000);
    assert_eq!(tier("mixed").limits[0].lease_block, 1000);
    assert_eq!(tier("mixed").limits[1].lease_block, 0, "100 a day stays exact");
    assert_eq!(
        request_block(tier("mixed").limits.iter().map(|l| l.lease_block), 1),
        0,
        "any exact limit makes the request exact"
    );
    assert_eq!(request_block(tier("bulk").limits.iter().map(|l| l.lease_block), 1), 50);
    assert_eq!(
        request_block(tier("bulk").limits.iter().map(|l| l.lease_block), 51),
        0,
        "a block below the cost is exact"
    );
    assert_eq!(crate::config::default_lease_block(999), 0);
    assert_eq!(crate::config::default_lease_block(1000), 10);
    assert_eq!((low_water(50), max_balance(50)), (25, 74));
    assert_eq!((low_water(1), max_balance(1)), (1, 1));
}

#[test]
fn lease_blocks_are_validated() {
    let with = |limit: Value| {
        let json = json!({ "tiers": { "t": { "limits": [ limit ] } }, "routes": [ { "path_prefix": "/" } ],
                           "quota_service": { "cluster": "q" } });
        Config::from_json(json.to_string().as_bytes())
    };
    let e =
        with(json!({ "name": "d", "limit": 100, "window": "1d", "scope": "global", "lease_block": 51 })).unwrap_err();
    assert_eq!(e.path, "tiers.t.limits[0].lease_block");
    // A local limit takes worker blocks (crate::worker_block), under the same bound; its
    // older name `lease_block` still works.
    let e = with(json!({ "name": "d", "limit": 100, "window": "1d", "worker_block": 51 })).unwrap_err();
    assert_eq!(e.path, "tiers.t.limits[0].worker_block");
    let e = with(json!({ "name": "d", "limit": 100, "window": "1d", "lease_block": 51 })).unwrap_err();
    assert_eq!(e.path, "tiers.t.limits[0].lease_block");
    for field in ["worker_block", "lease_block"] {
        let local = with(json!({ "name": "d", "limit": 100, "window": "1d", field: 5 })).unwrap();
        assert_eq!((local.tiers[0].limits[0].worker_block, local.tiers[0].limits[0].lease_block), (5, 0));
    }
    let both = json!({ "name": "d", "limit": 100, "window": "1d", "worker_block": 5, "lease_block": 5 });
    assert_eq!(with(both).unwrap_err().path, "tiers.t.limits[0].lease_block");
    let global = json!({ "name": "d", "limit": 100, "window": "1d", "scope": "global", "worker_block": 5 });
    assert_eq!(with(global).unwrap_err().path, "tiers.t.limits[0].worker_block");
    assert!(with(json!({ "name": "d", "limit": 100, "window": "1d", "scope": "global", "lease_block": 50 })).is_ok());
    assert!(with(json!({ "name": "d", "limit": 100, "window": "1d", "scope": "global", "lease_block": 0 })).is_ok());
}

#[test]
fn small_limits_make_a_callout_of_their_own_cost_per_request() {
    let (c, s, service) = (config(), FakeSharedData::default(), Mutex::new(Service::default()));
    let mut admitted = 0;
    for _ in 0..8 {
        let (d, costs) = run(&c, &s, &service, &request("Bearer tok-mixed"), T0);
        assert_eq!(costs, [1], "exact: one check of cost 1");
        admitted += u32::from(d.outcome == Outcome::Allowed);
    }
    assert_eq!(admitted, 8);
    let anonymous = RequestInfo { authorization: vec![], ..request("") };
    let outcomes: Vec<_> = (0..7).map(|_| run(&c, &s, &service, &anonymous, T0).0.outcome).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Allowed).count(), 5, "exactly 5 of 7");
}

#[test]
fn a_hot_key_takes_one_block_then_decides_locally() {
    let (c, s, service) = (config(), FakeSharedData::default(), Mutex::new(Service::default()));
    let (first, costs) = run(&c, &s, &service, &request("Bearer tok-bulk"), T0);
    assert_eq!(costs, [50], "the first request takes a block");
    assert_eq!(first.outcome, Outcome::Allowed);
    assert_eq!(first.quota.leased_units, 50);
    assert!(first.lease.is_some(), "the refilling worker remembers the lease");
    assert_eq!(header(&first, "x-ratelimit-remaining"), Some("999"), "950 at the service + 49 unspent");
    // The next 24 come from the balance without a callout (49 → 25).
    for i in 0..24 {
        let (d, costs) = run(&c, &s, &service, &request("Bearer tok-bulk"), T0);
        assert!(costs.is_empty(), "request {i} made a callout");
        assert!(d.quota.from_lease && d.lease.is_none());
        assert_eq!(header(&d, "x-ratelimit-remaining"), Some(&*format!("{}", 998 - i)));
    }
    // Below half a block: the next request refills ahead of need.
    let (d, costs) = run(&c, &s, &service, &request("Bearer tok-bulk"), T0);
    assert_eq!((costs.as_slice(), d.outcome), (&[50][..], Outcome::Allowed));
    let record = read(&s, &bulk_ref(&c)).unwrap().unwrap();
    assert_eq!(record.balance, 24 + 50);
    assert_eq!(record.balance, max_balance(50), "the most a record ever holds");
    let svc = service.lock().unwrap();
    assert_eq!(svc.charged, 100);
    assert_eq!(svc.charged, 26 + record.balance, "leased = admitted + unspent");
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn concurrent_workers_never_admit_more_than_was_leased() {
    let (c, s, service) = (config(), FakeSharedData::default(), Mutex::new(Service::default()));
    let admitted = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..400 {
                    let (d, _) = run(&c, &s, &service, &request("Bearer tok-bulk"), T0);
                    match d.outcome {
                        Outcome::Allowed => {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Outcome::Limited => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
            });
        }
    });
    let admitted = admitted.into_inner();
    let balance = read(&s, &bulk_ref(&c)).unwrap().map_or(0, |l| l.balance);
    let charged = service.lock().unwrap().charged;
    assert!(charged <= 1000);
    assert_eq!(admitted + balance, charged, "every unit leased is admitted once or still held");
    assert_eq!(admitted, 1000, "a fixed window is spent to the last unit (the tail exactly)");
}

#[test]
fn two_envoys_share_a_fixed_window_without_overshoot() {
    let c = config();
    let (a, b, service) = (FakeSharedData::default(), FakeSharedData::default(), Mutex::new(Service::default()));
    let mut admitted = 0;
    for i in 0..3000u64 {
        let store = if i % 3 == 0 { &a } else { &b };
        let now = Nanos(T0.0 + i * 1_000_000);
        admitted += u64::from(run(&c, store, &service, &request("Bearer tok-bulk"), now).0.outcome == Outcome::Allowed);
    }
    assert!(admitted <= 1000, "{admitted} admitted across two Envoys");
    assert!(admitted >= 1000 - 2 * max_balance(50), "{admitted}: only what an Envoy still holds is missing");
}

#[test]
fn a_lease_over_a_fixed_window_expires_at_its_reset() {
    let (c, s, service) = (config(), FakeSharedData::default(), Mutex::new(Service::default()));
    let day = 86_400 * SEC;
    let before_reset = Nanos((T0.0 / day + 1) * day - SEC);
    run(&c, &s, &service, &request("Bearer tok-bulk"), before_reset);
    let record = read(&s, &bulk_ref(&c)).unwrap().unwrap();
    assert_eq!(record.balance, 49);
    assert_eq!(record.expires_at, before_reset.0 + SEC, "at the window's end");
    assert_eq!(record.grants[0].window, Some(before_reset.0 / day));
    let after = Nanos(before_reset.0 + SEC);
    assert_eq!(record.live_balance(after), 0);
    // The next request cannot spend the old window's units: it takes a new block.
    let (d, costs) = run(&c, &s, &service, &request("Bearer tok-bulk"), after);
    assert_eq!((costs.as_slice(), d.outcome), (&[50][..], Outcome::Allowed));
    assert_eq!(read(&s, &bulk_ref(&c)).unwrap().unwrap().balance, 49, "the old 49 are gone, not added");
}

#[test]
fn token_bucket_overshoot_across_two_envoys_stays_within_the_bound() {
    let c = config();
    let (a, b, service) = (FakeSharedData::default(), FakeSharedData::default(), Mutex::new(Service::default()));
    // rpm: 600 a minute (10 a second), burst 600, block 20; 50 requests a second for 60 s.
    let mut admitted = 0u64;
    let steps = 3000u64;
    for i in 0..steps {
        let store = if i % 2 == 0 { &a } else { &b };
        let now = Nanos(T0.0 + i * 20_000_000);
        admitted += u64::from(run(&c, store, &service, &request("Bearer tok-rate"), now).0.outcome == Outcome::Allowed);
    }
    let elapsed_s = steps * 20 / 1000;
    let bound = 600 + 10 * elapsed_s + 2 * max_balance(20);
    assert!(admitted <= bound, "{admitted} admitted > {bound}");
    assert!(admitted >= 600 + 10 * (elapsed_s - 1) - 2 * max_balance(20), "{admitted}: the limit is reachable");
}

#[test]
fn a_refill_marker_holds_for_the_callout_timeout_and_then_expires() {
    let c = config();
    let s = FakeSharedData::default();
    let r = bulk_ref(&c);
    let stale = 1_100 * 1_000_000;
    let Take::Empty { refill: Some(marker) } =
        records(&s, stale, T0).take(&r, Ask { cost: 1, worker_units: 0, block: 50 }).unwrap()
    else {
        panic!()
    };
    // Another worker meanwhile: no second refill, decide exactly.
    assert_eq!(
        records(&s, stale, Nanos(T0.0 + stale - 1)).take(&r, Ask { cost: 1, worker_units: 0, block: 50 }).unwrap(),
        Take::Empty { refill: None }
    );
    // The first callout was lost: after the timeout another request may refill.
    let later = Nanos(T0.0 + stale);
    let Take::Empty { refill: Some(second) } =
        records(&s, stale, later).take(&r, Ask { cost: 1, worker_units: 0, block: 50 }).unwrap()
    else {
        panic!()
    };
    assert_ne!(marker, second);
    // A late answer to the first refill is not credited.
    let grants = [Grant { remaining: 900, reset_at: T0.0 + 3600 * SEC, window: Some(1) }];
    assert_eq!(
        records(&s, stale, later).credit(&r, marker, Credit { units: 49, grants: &grants, expires_at: NONE }).unwrap(),
        None
    );
    assert_eq!(
        records(&s, stale, later)
            .credit(&r, second, Credit { units: 49, grants: &grants, expires_at: NONE })
            .unwrap()
            .map(|l| l.balance),
        Some(49)
    );
}

#[test]
fn a_refused_refill_goes_exact_until_a_block_could_pass() {
    let c = config();
    let (s, service) = (FakeSharedData::default(), Mutex::new(Service::default()));
    // Another Envoy took 980 of the 1000 directly.
    service.lock().unwrap().check(
        &json!({ "key": "bulk/key:bulk", "cost": 980, "limits": [
        { "name": "per-day", "algorithm": "fixed_window", "limit": 1000, "window_secs": 86400 } ] })
        .to_string(),
        T0,
    );
    let (d, costs) = run(&c, &s, &service, &request("Bearer tok-bulk"), T0);
    assert_eq!((costs.as_slice(), d.outcome), (&[50, 1][..], Outcome::Allowed), "refused block, then exact");
    let mut outcomes = Vec::new();
    for _ in 0..25 {
        let (d, costs) = run(&c, &s, &service, &request("Bearer tok-bulk"), T0);
        assert_eq!(costs, [1], "no block is asked for again before the reset");
        outcomes.push(d.outcome);
    }
    assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Allowed).count(), 19, "exactly the last 20");
}

#[test]
fn a_failed_refill_follows_the_failure_mode_and_a_held_balance_keeps_admitting() {
    let (c, s, service) = (config(), FakeSharedData::default(), Mutex::new(Service::default()));
    run(&c, &s, &service, &request("Bearer tok-bulk"), T0);
    service.lock().unwrap().down = true;
    let mut statuses = Vec::new();
    for _ in 0..60 {
        let (d, _) = run(&c, &s, &service, &request("Bearer tok-bulk"), T0);
        statuses.push(d.reply.as_ref().map_or(200, |r| r.status));
    }
    assert!(statuses[..49].iter().all(|s| *s == 200), "the 49 held units are spent while the service is down");
    assert!(statuses[49..].iter().all(|s| *s == 503), "then failure_mode closed: {statuses:?}");
}

#[test]
fn an_idle_lease_is_zeroed_and_given_back_once() {
    let (c, s, service) = (config(), FakeSharedData::default(), Mutex::new(Service::default()));
    let (d, _) = run(&c, &s, &service, &request("Bearer tok-bulk"), T0);
    let held = d.lease.unwrap();
    assert_eq!(held.key, "bulk/key:bulk");
    let idle = 10 * SEC;
    let stale = SEC;
    assert_eq!(records(&s, stale, Nanos(T0.0 + idle - 1)).return_idle(&held, idle).unwrap(), IdleReturn::Busy);
    let IdleReturn::Send(ret) = records(&s, stale, Nanos(T0.0 + idle)).return_idle(&held, idle).unwrap() else {
        panic!()
    };
    assert_eq!(ret.units, 49);
    assert_eq!(ret.windows, [Some(T0.0 / (86_400 * SEC))]);
    assert_eq!(ret.limits[0].name, "per-day");
    // A second worker that remembers the same lease finds nothing to give back.
    assert_eq!(records(&s, stale, Nanos(T0.0 + idle + 1)).return_idle(&held, idle).unwrap(), IdleReturn::Gone);
    // The next request takes a new block.
    let (_, costs) = run(&c, &s, &service, &request("Bearer tok-bulk"), Nanos(T0.0 + idle + 2));
    assert_eq!(costs, [50]);
}

#[test]
fn a_request_over_several_limits_leases_them_all_at_once() {
    let (c, s, service) = (config(), FakeSharedData::default(), Mutex::new(Service::default()));
    let (d, costs) = run(&c, &s, &service, &request("Bearer tok-big"), T0);
    assert_eq!(costs, [1000]);
    assert_eq!(header(&d, "ratelimit-policy"), Some("\"rpm\";q=1000000000;w=60, \"per-day\";q=1000000000;w=86400"));
    for _ in 0..100 {
        assert!(run(&c, &s, &service, &request("Bearer tok-big"), T0).1.is_empty());
    }
}

#[test]
fn records_survive_the_codec_and_garbage_reads_as_nothing() {
    let l = Lease {
        fingerprint: 7,
        balance: 3,
        expires_at: NONE,
        refill_at: 0,
        used_at: 9,
        no_refill_until: 0,
        grants: vec![
            Grant { remaining: 1, reset_at: 2, window: None },
            Grant { remaining: 4, reset_at: 5, window: Some(6) },
        ],
    };
    assert_eq!(decode(&encode(std::slice::from_ref(&l))), vec![l]);
    assert!(decode(&[1, 1, 0]).is_empty());
    assert!(decode(b"").is_empty());
}

#[test]
fn while_a_refill_is_in_flight_the_others_spend_the_balance_then_go_exact() {
    let (c, s, service) = (config(), FakeSharedData::default(), Mutex::new(Service::default()));
    let mut cache = Worker::new(10);
    let bulk = request("Bearer tok-bulk");
    run(&c, &s, &service, &bulk, T0); // balance 49
    for _ in 0..24 {
        run(&c, &s, &service, &bulk, T0); // balance 25
    }
    // This one leaves 24 (< 25): admitted at once, with a refill to send; its answer has
    // not come back yet.
    let Step::Done(mut d) = begin(&c, &s, &mut cache, &bulk, T0) else { panic!("the refilling request waited") };
    assert_eq!((d.outcome, d.quota.from_lease, d.quota.leased_units), (Outcome::Allowed, true, 0));
    let refill = d.refill.take().expect("a refill ahead of need");
    assert_eq!(serde_json::from_str::<CheckRequest>(&refill.body).unwrap().cost, 50);
    // Meanwhile: 24 more from the balance, without a callout.
    for i in 0..24 {
        match begin(&c, &s, &mut cache, &bulk, T0) {
            Step::Done(d) => assert_eq!(d.outcome, Outcome::Allowed, "request {i}"),
            Step::Call(_) => panic!("request {i} called out while the balance lasted"),
        }
    }
    // Empty, and a refill in flight: an exact check of the request's own cost.
    let Step::Call(exact) = begin(&c, &s, &mut cache, &bulk, T0) else { panic!("expected a callout") };
    assert_eq!(serde_json::from_str::<CheckRequest>(&exact.body).unwrap().cost, 1);
    // The refill's answer comes back: credited in full (its request was admitted before).
    let body = service.lock().unwrap().check(&refill.body, T0).unwrap();
    let (held, report) = refilled_ahead(&c, &s, refill.pending, Answer::Response { status: 200, body: &body }, T0);
    assert_eq!((held.map(|h| h.key), report.leased_units), (Some("bulk/key:bulk".to_owned()), 50));
    assert!(!report.from_lease, "the refill's own report counts no request");
    assert_eq!(read(&s, &bulk_ref(&c)).unwrap().unwrap().balance, 50);
    let body = service.lock().unwrap().check(&exact.body, T0).unwrap();
    let Step::Done(d) = resume(&c, &s, &mut cache, exact.pending, Answer::Response { status: 200, body: &body }, T0)
    else {
        panic!()
    };
    assert_eq!(d.outcome, Outcome::Allowed);
    // 1 + 24 + 1 + 24 from leases, 1 exact: 51 admitted, 101 charged, 50 held.
    assert_eq!(service.lock().unwrap().charged, 51 + 50);
}

/// A worker as the filter keeps one: its blocks outlive the request.
fn worker() -> Worker {
    Worker::new(10).with_blocks(MAX_BLOCKS)
}

/// Units a worker holds of the bulk lease.
fn held(c: &Config, w: &Worker, now: Nanos) -> u64 {
    w.blocks.units(BlockKey { fingerprint: bulk_ref(c).fingerprint, mask: 0 }, now)
}

#[test]
fn a_worker_takes_a_tenth_of_the_block_and_spends_it_without_shared_data() {
    let (c, s, service) = (config(), FakeSharedData::default(), Mutex::new(Service::default()));
    assert_eq!(worker_block(50, 1), 5);
    assert_eq!(worker_block(50, 6), 0, "a worker block below the cost is none");
    let mut w = worker();
    let bulk = request("Bearer tok-bulk");
    let (first, costs) = run_on(&mut w, &c, &s, &service, &bulk, T0);
    assert_eq!((costs.as_slice(), first.outcome), (&[50][..], Outcome::Allowed));
    assert_eq!(read(&s, &bulk_ref(&c)).unwrap().unwrap().balance, 49);
    // The next request takes its unit and a worker block of 5 out of the balance.
    let (d, costs) = run_on(&mut w, &c, &s, &service, &bulk, T0);
    assert!(costs.is_empty() && d.blocks.taken && d.quota.from_lease);
    assert_eq!(read(&s, &bulk_ref(&c)).unwrap().unwrap().balance, 43);
    assert_eq!(held(&c, &w, T0), 5);
    assert_eq!(header(&d, "x-ratelimit-remaining"), Some("998"), "950 at the service + 43 + 5 held");
    let writes = s.writes();
    for i in 0..5u64 {
        let (d, costs) = run_on(&mut w, &c, &s, &service, &bulk, T0);
        assert!(costs.is_empty() && !d.blocks.taken && d.quota.from_lease);
        assert_eq!(d.outcome, Outcome::Allowed);
        assert_eq!(header(&d, "x-ratelimit-remaining"), Some(&*format!("{}", 997 - i)));
    }
    assert_eq!(s.writes(), writes, "5 requests from the worker block: no shared-data write");
    run_on(&mut w, &c, &s, &service, &bulk, T0);
    assert_eq!(s.writes(), writes + 1, "the next one takes another block");
    let svc = service.lock().unwrap();
    assert_eq!(svc.charged, 50, "one block leased for 8 requests");
}

#[test]
fn workers_with_blocks_of_one_lease_spend_a_fixed_window_to_the_last_unit() {
    let (c, s, service) = (config(), FakeSharedData::default(), Mutex::new(Service::default()));
    let mut workers: Vec<Worker> = (0..3).map(|_| worker()).collect();
    let bulk = request("Bearer tok-bulk");
    let mut admitted = 0u64;
    for i in 0..1500usize {
        let now = Nanos(T0.0 + i as u64 * 1_000);
        let (d, _) = run_on(&mut workers[i % 3], &c, &s, &service, &bulk, now);
        match d.outcome {
            Outcome::Allowed => admitted += 1,
            Outcome::Limited => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let now = Nanos(T0.0 + 1500 * 1_000);
    let held: u64 = workers.iter().map(|w| held(&c, w, now)).sum();
    let balance = read(&s, &bulk_ref(&c)).unwrap().map_or(0, |l| l.balance);
    assert_eq!(held, 0, "every worker kept asking: nothing is left in a block");
    assert_eq!(admitted + balance, 1000, "every unit is admitted once or still in the balance");
    assert_eq!(admitted, 1000);
    assert_eq!(service.lock().unwrap().charged, 1000);
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn concurrent_workers_with_blocks_never_admit_more_than_was_leased() {
    let (c, s, service) = (config(), FakeSharedData::default(), Mutex::new(Service::default()));
    let admitted = std::sync::atomic::AtomicU64::new(0);
    let leftovers: Vec<u64> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut w = worker();
                    for _ in 0..400 {
                        let (d, _) = run_on(&mut w, &c, &s, &service, &request("Bearer tok-bulk"), T0);
                        match d.outcome {
                            Outcome::Allowed => {
                                admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            Outcome::Limited => {}
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    held(&c, &w, T0)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let admitted = admitted.into_inner();
    let balance = read(&s, &bulk_ref(&c)).unwrap().map_or(0, |l| l.balance);
    let held: u64 = leftovers.iter().sum();
    let charged = service.lock().unwrap().charged;
    assert!(charged <= 1000);
    assert_eq!(admitted + balance + held, charged, "every unit leased is admitted once or still held");
    assert!(leftovers.iter().all(|&h| h < 5 + 1), "{leftovers:?}: at most a block (+ cost − 1) per worker");
}

#[test]
fn token_bucket_overshoot_with_worker_blocks_stays_within_the_bound() {
    let c = config();
    let (a, b, service) = (FakeSharedData::default(), FakeSharedData::default(), Mutex::new(Service::default()));
    // rpm: 600 a minute (10 a second), burst 600, block 20 (worker block 2); two Envoys of
    // two workers each; 50 requests a second for 60 s.
    let mut workers: Vec<Worker> = (0..4).map(|_| worker()).collect();
    let mut admitted = 0u64;
    let steps = 3000u64;
    for i in 0..steps {
        let store = if i % 2 == 0 { &a } else { &b };
        let now = Nanos(T0.0 + i * 20_000_000);
        let w = &mut workers[(i % 4) as usize];
        admitted +=
            u64::from(run_on(w, &c, store, &service, &request("Bearer tok-rate"), now).0.outcome == Outcome::Allowed);
    }
    let elapsed_s = steps * 20 / 1000;
    let per_envoy = max_balance(20) + 2 * (worker_block(20, 1) + 1 - 1);
    let bound = 600 + 10 * elapsed_s + 2 * per_envoy;
    assert!(admitted <= bound, "{admitted} admitted > {bound}");
    assert!(admitted >= 600 + 10 * (elapsed_s - 1) - 2 * per_envoy, "{admitted}: the limit is reachable");
}

#[test]
fn an_idle_worker_block_goes_back_into_its_lease_or_to_the_service() {
    let (c, s, service) = (config(), FakeSharedData::default(), Mutex::new(Service::default()));
    let mut w = worker();
    let bulk = request("Bearer tok-bulk");
    let (d, _) = run_on(&mut w, &c, &s, &service, &bulk, T0);
    let remembered = d.lease.unwrap();
    run_on(&mut w, &c, &s, &service, &bulk, T0);
    let last_use = Nanos(T0.0 + SEC);
    run_on(&mut w, &c, &s, &service, &bulk, last_use); // from the block: 4 left
    assert_eq!((held(&c, &w, last_use), read(&s, &bulk_ref(&c)).unwrap().unwrap().balance), (4, 43));
    let idle_ns = idle_block_ns(&c);
    assert_eq!(idle_ns, IDLE_GIVE_BACK_NS);
    let soon = Nanos(last_use.0 + idle_ns - 1);
    assert_eq!(give_back_idle_blocks(&c, &s, &mut w, soon).blocks_given_back, 0, "not idle yet");
    let idle = Nanos(last_use.0 + idle_ns);
    let back = give_back_idle_blocks(&c, &s, &mut w, idle);
    assert_eq!((back.blocks_given_back, back.returns.len()), (1, 0));
    let record = read(&s, &bulk_ref(&c)).unwrap().unwrap();
    assert_eq!(record.balance, 47, "back into the balance");
    assert_eq!(record.used_at, last_use.0, "in use until the block was last spent");
    // The lease itself goes back once idle since then, with the block's units in it.
    let lease_idle = 10 * SEC;
    assert_eq!(
        records(&s, SEC, Nanos(last_use.0 + lease_idle - 1)).return_idle(&remembered, lease_idle).unwrap(),
        IdleReturn::Busy
    );
    let IdleReturn::Send(ret) =
        records(&s, SEC, Nanos(last_use.0 + lease_idle)).return_idle(&remembered, lease_idle).unwrap()
    else {
        panic!()
    };
    assert_eq!(ret.units, 47);

    // A block whose lease was given back meanwhile goes to the service itself.
    let later = Nanos(last_use.0 + lease_idle + SEC);
    run_on(&mut w, &c, &s, &service, &bulk, later); // a new block leased: 49
    run_on(&mut w, &c, &s, &service, &bulk, later); // 43 in the balance, 5 held
    let reclaim_at = Nanos(later.0 + lease_idle);
    assert!(
        matches!(records(&s, SEC, reclaim_at).return_idle(&remembered, lease_idle).unwrap(), IdleReturn::Send(r) if r.units == 43)
    );
    let back = give_back_idle_blocks(&c, &s, &mut w, reclaim_at);
    assert_eq!(back.blocks_given_back, 0);
    let [ret] = back.returns.as_slice() else { panic!("{back:?}") };
    assert_eq!((ret.key.as_str(), ret.units), ("bulk/key:bulk", 5));
    assert_eq!(ret.limits[0].name, "per-day");
    assert_eq!(ret.windows, [Some(T0.0 / (86_400 * SEC))]);
    assert!(w.blocks.is_empty());
}

#[test]
fn a_worker_block_of_a_fixed_window_dies_with_the_window() {
    let (c, s, service) = (config(), FakeSharedData::default(), Mutex::new(Service::default()));
    let mut w = worker();
    let bulk = request("Bearer tok-bulk");
    let day = 86_400 * SEC;
    let before_reset = Nanos((T0.0 / day + 1) * day - SEC);
    run_on(&mut w, &c, &s, &service, &bulk, before_reset);
    run_on(&mut w, &c, &s, &service, &bulk, before_reset);
    assert_eq!(held(&c, &w, before_reset), 5);
    let after = Nanos(before_reset.0 + SEC);
    assert_eq!(held(&c, &w, after), 0, "void at the reset");
    let (d, costs) = run_on(&mut w, &c, &s, &service, &bulk, after);
    assert_eq!((costs.as_slice(), d.outcome), (&[50][..], Outcome::Allowed), "a new block for the new window");
    let back = give_back_idle_blocks(&c, &s, &mut w, Nanos(after.0 + 10 * SEC));
    assert_eq!((back.blocks_given_back, back.returns.len()), (0, 0), "yesterday's units are not given back");
}

#[test]
fn a_short_lease_idle_time_gives_worker_blocks_back_first() {
    let c = {
        let mut c = config();
        if let Some(q) = c.quota.as_mut() {
            q.lease_idle_return_ms = 500;
        }
        c
    };
    assert_eq!(idle_block_ns(&c), 250_000_000);
}

#[test]
fn an_abandoned_refill_gives_up_its_marker() {
    let (c, s) = (config(), FakeSharedData::default());
    let mut cache = Worker::new(10);
    let bulk = request("Bearer tok-bulk");
    let Step::Call(refill) = begin(&c, &s, &mut cache, &bulk, T0) else { panic!("expected a refill") };
    assert_eq!(serde_json::from_str::<CheckRequest>(&refill.body).unwrap().cost, 50);
    // While it is in flight, the next request decides exactly.
    let Step::Call(exact) = begin(&c, &s, &mut cache, &bulk, T0) else { panic!("expected a callout") };
    assert_eq!(serde_json::from_str::<CheckRequest>(&exact.body).unwrap().cost, 1);
    // The refilling request's stream ended: its callout is gone, and so is its marker.
    crate::decision::abandon(&c, &s, refill.pending, T0);
    let Step::Call(again) = begin(&c, &s, &mut cache, &bulk, T0) else { panic!("expected a refill") };
    assert_eq!(serde_json::from_str::<CheckRequest>(&again.body).unwrap().cost, 50, "the next request refills");
    // Abandoning an exact check changes nothing.
    crate::decision::abandon(&c, &s, exact.pending, T0);
    assert!(read(&s, &bulk_ref(&c)).unwrap().unwrap().refill_at != 0, "the new refill's marker stands");
}

#[test]
fn a_failed_refill_ahead_of_need_gives_up_its_marker_and_the_next_request_refills() {
    let (c, s, service) = (config(), FakeSharedData::default(), Mutex::new(Service::default()));
    let mut cache = Worker::new(10);
    let bulk = request("Bearer tok-bulk");
    for _ in 0..25 {
        run(&c, &s, &service, &bulk, T0); // balance 49, then 25
    }
    let Step::Done(mut d) = begin(&c, &s, &mut cache, &bulk, T0) else { panic!("the refilling request waited") };
    let refill = d.refill.take().expect("a refill ahead of need");
    assert_ne!(read(&s, &bulk_ref(&c)).unwrap().unwrap().refill_at, 0, "its marker stands while it is in flight");
    let (held, report) = refilled_ahead(&c, &s, refill.pending, Answer::Failed, T0);
    assert_eq!((held, report.leased_units, report.degraded), (None, 0, None), "nothing leased, no request degraded");
    let record = read(&s, &bulk_ref(&c)).unwrap().unwrap();
    assert_eq!((record.balance, record.refill_at), (24, 0), "the balance stays; the marker is gone");
    let Step::Done(d) = begin(&c, &s, &mut cache, &bulk, T0) else { panic!("the next request waited") };
    assert!(d.refill.is_some(), "the next request refills ahead of need again");
    assert_eq!(service.lock().unwrap().charged, 50, "only the first block was charged");
}
