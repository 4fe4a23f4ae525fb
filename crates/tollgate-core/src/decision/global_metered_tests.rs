//! Global limits of tokens: reserved with a `/v1/check` of per-limit costs or from a
//! lease, settled with `/v1/settle` or against the lease's balance. A fake quota service
//! follows the wire contract of `crate::quota`.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use super::*;
use crate::cost::Usage;
use crate::limit::{self, evaluate, LimitState};
use crate::quota::{CheckRequest, SettleRequest};
use crate::store::FakeSharedData;
use crate::RequestInfo;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const SEC: u64 = 1_000_000_000;
/// 2026-11-23T18:00:00Z.
const EVENING: Nanos = Nanos(1_795_456_800 * SEC);
const CHAT: &str = "/v1/chat/completions";

/// Free tier: 1,000 tokens a day and 100 requests a minute, both global; `lease_block` of
/// the tokens limit as given (0: exact).
fn config(lease_block: u64) -> Config {
    let json = format!(
        r#"{{
          "identity": {{ "anonymous": {{ "tier": "free" }} }},
          "quota_service": {{ "cluster": "quota" }},
          "tiers": {{ "free": {{ "limits": [
            {{ "name": "tokens-per-day", "limit": 1000, "window": "1d", "algorithm": "fixed_window",
               "unit": "tokens", "scope": "global", "lease_block": {lease_block} }},
            {{ "name": "rpm", "limit": 100, "window": "1m", "scope": "global", "lease_block": 0 }} ] }} }},
          "routes": [ {{ "path": "/v1/chat/completions", "meter": "openai_chat" }} ]
        }}"#
    );
    Config::from_json(json.as_bytes()).unwrap()
}

/// The same tier with the tokens limit alone.
fn tokens_only(lease_block: u64) -> Config {
    let json = format!(
        r#"{{
          "identity": {{ "anonymous": {{ "tier": "free" }} }},
          "quota_service": {{ "cluster": "quota" }},
          "tiers": {{ "free": {{ "limits": [
            {{ "name": "tokens-per-day", "limit": 1000, "window": "1d", "algorithm": "fixed_window",
               "unit": "tokens", "scope": "global", "lease_block": {lease_block} }} ] }} }},
          "routes": [ {{ "path": "/v1/chat/completions", "meter": "openai_chat" }} ]
        }}"#
    );
    Config::from_json(json.as_bytes()).unwrap()
}

/// A chat reserving `max_tokens` plus a 1-token prompt (`[]`).
fn chat(max_tokens: u64) -> String {
    format!(r#"{{"messages":[],"max_tokens":{max_tokens}}}"#)
}

fn post(body: &str) -> RequestInfo<'_> {
    RequestInfo {
        method: "POST",
        path: CHAT,
        client_address: Some("203.0.113.7:0"),
        body: Some(body.as_bytes()),
        ..RequestInfo::default()
    }
}

/// The quota service's arithmetic: all-or-nothing checks of per-limit costs, settlements
/// applied once per id.
#[derive(Default)]
struct Service {
    states: HashMap<String, LimitState>,
    settled: HashSet<String>,
    checks: Vec<CheckRequest>,
    settles: u32,
}

impl Service {
    fn check(&mut self, body: &str, now: Nanos) -> Vec<u8> {
        let req: CheckRequest = serde_json::from_str(body).unwrap();
        assert!(req.costs.is_empty() || req.costs.len() == req.limits.len());
        let evals: Vec<_> = req
            .limits
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let limit = spec.to_limit("l").unwrap();
                let cost = req.costs.get(i).copied().unwrap_or(req.cost);
                let e = evaluate(&limit, self.states.get(&spec.name).copied(), now, cost);
                (spec.name.clone(), limit, e)
            })
            .collect();
        let admitted = evals.iter().all(|(_, _, e)| e.admitted);
        if admitted {
            for (name, _, e) in &evals {
                self.states.insert(name.clone(), e.state);
            }
        }
        let limits: Vec<Value> = evals
            .iter()
            .map(|(name, limit, e)| {
                let window = match limit.kind {
                    crate::config::LimitKind::FixedWindow { window_ns } => Some(now.0 / window_ns),
                    _ => None,
                };
                json!({ "name": name, "admitted": e.admitted, "remaining": e.remaining,
                        "reset_after_ms": e.reset_after_ns / 1_000_000,
                        "retry_after_ms": e.retry_after_ns.div_ceil(1_000_000), "window": window })
            })
            .collect();
        self.checks.push(req);
        serde_json::to_vec(&json!({ "admitted": admitted, "limits": limits })).unwrap()
    }

    /// `POST /v1/settle`: true when applied, false for a replay.
    fn settle(&mut self, body: &str, now: Nanos) -> bool {
        let req: SettleRequest = serde_json::from_str(body).unwrap();
        assert!((16..=64).contains(&req.id.len()), "{}", req.id);
        if !self.settled.insert(req.id.clone()) {
            return false;
        }
        self.settles += 1;
        for (i, spec) in req.limits.iter().enumerate() {
            let limit = spec.to_limit("l").unwrap();
            if let Some(state) = self.states.get(&spec.name).copied() {
                self.states.insert(spec.name.clone(), limit::settle(&limit, state, now, req.reserved[i], req.used[i]));
            }
        }
        true
    }

    /// Units of the day's tokens used at the service.
    fn tokens_used(&self) -> u64 {
        match self.states.get("tokens-per-day") {
            Some(LimitState::Window { used, .. }) => *used,
            _ => 0,
        }
    }
}

/// Decides a request to the end, answering its callouts (and a refill ahead of need)
/// from `service`.
fn run(c: &Config, s: &FakeSharedData, worker: &mut Worker, service: &mut Service, body: &str) -> Decision {
    let mut step = begin(c, s, worker, &post(body), EVENING);
    loop {
        match step {
            Step::Done(mut d) => {
                if let Some(call) = d.refill.take() {
                    let reply = service.check(&call.body, EVENING);
                    let answer = Answer::Response { status: 200, body: &reply };
                    d.lease = refilled_ahead(c, s, call.pending, answer, EVENING).0;
                }
                return d;
            }
            Step::Call(call) => {
                let reply = service.check(&call.body, EVENING);
                let answer = Answer::Response { status: 200, body: &reply };
                step = resume(c, s, worker, call.pending, answer, EVENING);
            }
        }
    }
}

/// Settles `d`'s reservation with `ending`, sending the settlement (twice: a retry) to
/// `service`.
fn settle_with(
    c: &Config,
    s: &FakeSharedData,
    worker: &mut Worker,
    service: &mut Service,
    d: &Decision,
    ending: Ending,
) {
    let settlement = settle(c, s, worker, d.reservation.as_ref().unwrap(), ending, EVENING);
    assert!(!settlement.store_failed);
    if let Some(body) = settlement.call {
        service.settle(&body, EVENING);
        assert!(!service.settle(&body, EVENING), "a retried settlement changes nothing");
    }
}

fn used(output_tokens: u64) -> Ending {
    Ending::Used(Usage { input_tokens: 1, output_tokens })
}

#[test]
fn an_exact_check_charges_each_limit_its_own_units() {
    let (c, s, mut w, mut service) = (config(0), FakeSharedData::default(), Worker::new(10), Service::default());
    let d = run(&c, &s, &mut w, &mut service, &chat(99));
    assert_eq!(d.outcome, Outcome::Allowed);
    let sent = &service.checks[0];
    assert_eq!((sent.cost, sent.costs.as_slice()), (1, &[100, 1][..]), "100 tokens, 1 request");
    assert_eq!(service.tokens_used(), 100);
    let ratelimit = d.response_headers.get("ratelimit").unwrap();
    assert!(ratelimit.contains(r#""tokens-per-day";r=900;"#), "{ratelimit}");
}

#[test]
fn a_request_metered_by_requests_alone_sends_one_cost() {
    let c = Config::from_json(
        br#"{ "identity": { "anonymous": { "tier": "free" } }, "quota_service": { "cluster": "quota" },
              "tiers": { "free": { "limits": [ { "name": "rpm", "limit": 100, "window": "1m", "scope": "global", "lease_block": 0 } ] } },
              "routes": [ { "path": "/v1/chat/completions", "meter": "openai_chat" } ] }"#,
    )
    .unwrap();
    let (s, mut w, mut service) = (FakeSharedData::default(), Worker::new(10), Service::default());
    let d = run(&c, &s, &mut w, &mut service, &chat(99));
    assert_eq!(d.outcome, Outcome::Allowed);
    assert!(service.checks[0].costs.is_empty(), "the wire form stays as it was");
    assert!(d.reservation.is_none(), "nothing to settle");
}

#[test]
fn an_exact_reservation_is_settled_once_at_the_service() {
    let (c, s, mut w, mut service) = (config(0), FakeSharedData::default(), Worker::new(10), Service::default());
    let d = run(&c, &s, &mut w, &mut service, &chat(99));
    let settlement = settle(&c, &s, &mut w, d.reservation.as_ref().unwrap(), used(29), EVENING);
    let body: SettleRequest = serde_json::from_str(settlement.call.as_deref().unwrap()).unwrap();
    assert_eq!(body.limits.len(), 1, "only the limit of tokens settles");
    assert_eq!((body.reserved.as_slice(), body.used.as_slice()), (&[100][..], &[30][..]));
    assert_eq!(body.windows, vec![Some(EVENING.0 / (86_400 * SEC))]);
    assert!(service.settle(settlement.call.as_deref().unwrap(), EVENING));
    assert_eq!(service.tokens_used(), 30);
    // An overrun is charged past the reservation; a failed request refunds everything.
    let d = run(&c, &s, &mut w, &mut service, &chat(99));
    settle_with(&c, &s, &mut w, &mut service, &d, used(149));
    assert_eq!(service.tokens_used(), 30 + 150);
    let d = run(&c, &s, &mut w, &mut service, &chat(99));
    settle_with(&c, &s, &mut w, &mut service, &d, Ending::Failed);
    assert_eq!(service.tokens_used(), 180);
    // Exactly as reserved: nothing to send.
    let d = run(&c, &s, &mut w, &mut service, &chat(99));
    assert!(settle(&c, &s, &mut w, d.reservation.as_ref().unwrap(), used(99), EVENING).call.is_none());
}

#[test]
fn settlement_ids_are_unique() {
    let mut w = Worker::new(1);
    let ids: HashSet<String> = (0..1000).map(|_| w.settle_id()).collect();
    assert_eq!(ids.len(), 1000);
    assert_ne!(Worker::new(1).settle_id(), Worker::new(1).settle_id(), "each worker draws its own prefix");
}

#[test]
fn a_reservation_above_a_global_budget_never_fits() {
    let (c, s, mut w, mut service) = (config(0), FakeSharedData::default(), Worker::new(10), Service::default());
    let d = run(&c, &s, &mut w, &mut service, &chat(5000));
    assert_eq!(d.reply.as_ref().map(|r| r.status), Some(400));
    assert!(service.checks.is_empty(), "no callout for what can never fit");
}

/// The acceptance case, in the core: a 1,000 tokens/day budget, 50 requests each reserving
/// 100 and using 40 to 120, from two Envoys (two shared-data stores) with two workers
/// each, all in flight at once before any settles.
#[test]
fn concurrent_reservations_never_overshoot_and_settle_to_the_real_usage() {
    for lease_block in [0, 200] {
        let c = tokens_only(lease_block);
        let envoys = [FakeSharedData::default(), FakeSharedData::default()];
        let mut workers: Vec<Worker> = (0..4).map(|_| Worker::for_config(&c)).collect();
        let mut service = Service::default();
        let mut admitted = Vec::new();
        for i in 0..50 {
            let (envoy, worker) = (&envoys[i % 2], &mut workers[i % 4]);
            let d = run(&c, envoy, worker, &mut service, &chat(99));
            if d.outcome == Outcome::Allowed {
                admitted.push((i, d));
            } else {
                assert!(d.reservation.is_none());
            }
        }
        // Leases hold units at the service that no request reserved yet.
        let leased: u64 = if lease_block > 0 { 1000 } else { 100 * admitted.len() as u64 };
        assert_eq!(admitted.len(), 10, "lease_block {lease_block}: no reservation admitted that did not fit");
        assert_eq!(service.tokens_used(), leased);
        let mut total = 0;
        for (n, (i, d)) in admitted.iter().enumerate() {
            let output = 39 + (n as u64 * 37) % 81;
            total += output + 1;
            settle_with(&c, &envoys[i % 2], &mut workers[i % 4], &mut service, d, used(output));
        }
        let lease = admitted.iter().find_map(|(_, d)| d.lease.as_ref()).map(|l| l.lease.clone());
        let on_leases: u64 = envoys
            .iter()
            .filter_map(|e| crate::lease::read(e, lease.as_ref()?).unwrap())
            .map(|l| l.live_balance(EVENING))
            .sum();
        assert_eq!(
            service.tokens_used() - on_leases,
            total,
            "lease_block {lease_block}: charged exactly what was used (leases hold {on_leases})"
        );
    }
}

#[test]
fn a_leased_reservation_settles_against_the_balance_without_a_callout() {
    let (c, s, mut w, mut service) = (tokens_only(200), FakeSharedData::default(), Worker::new(10), Service::default());
    let d = run(&c, &s, &mut w, &mut service, &chat(99));
    assert_eq!(d.outcome, Outcome::Allowed);
    assert!(d.quota.from_lease);
    let lease = d.lease.as_ref().unwrap().lease.clone();
    let balance = || crate::lease::read(&s, &lease).unwrap().map_or(0, |l| l.balance);
    let before = balance();
    // Used 40 of 100: 60 back into the balance, no callout.
    let settlement = settle(&c, &s, &mut w, d.reservation.as_ref().unwrap(), used(39), EVENING);
    assert!(settlement.call.is_none());
    assert_eq!(balance(), before + 60);
    // Used 150 of 100: the overrun comes out of the balance.
    let d = run(&c, &s, &mut w, &mut service, &chat(99));
    let before = balance();
    assert!(settle(&c, &s, &mut w, d.reservation.as_ref().unwrap(), used(149), EVENING).call.is_none());
    assert_eq!(balance(), before - 50);
    // An overrun larger than the balance: the rest is charged at the service.
    let d = run(&c, &s, &mut w, &mut service, &chat(99));
    let (before, at_service) = (balance(), service.tokens_used());
    let settlement = settle(&c, &s, &mut w, d.reservation.as_ref().unwrap(), used(before + 199), EVENING);
    assert_eq!(balance(), 0);
    let body: SettleRequest = serde_json::from_str(settlement.call.as_deref().unwrap()).unwrap();
    assert_eq!((body.reserved.as_slice(), body.used.as_slice()), (&[0][..], &[100][..]));
    service.settle(settlement.call.as_deref().unwrap(), EVENING);
    assert_eq!(service.tokens_used(), at_service + 100);
}

#[test]
fn mixed_units_are_decided_exactly_even_with_a_lease() {
    let (c, s, mut w, mut service) = (config(200), FakeSharedData::default(), Worker::new(10), Service::default());
    let d = run(&c, &s, &mut w, &mut service, &chat(99));
    assert_eq!(d.outcome, Outcome::Allowed);
    assert!(!d.quota.from_lease, "one balance cannot count tokens and requests");
    assert_eq!(service.checks[0].costs, vec![100, 1]);
}

#[test]
fn a_local_fallback_bucket_of_tokens_is_settled_too() {
    let c = Config::from_json(
        br#"{ "identity": { "anonymous": { "tier": "free" } }, "quota_service": { "cluster": "quota" },
              "tiers": { "free": { "limits": [ { "name": "tokens-per-day", "limit": 1000, "window": "1d",
                "algorithm": "fixed_window", "unit": "tokens", "scope": "global", "failure_mode": "local" } ] } },
              "routes": [ { "path": "/v1/chat/completions", "meter": "openai_chat" } ] }"#,
    )
    .unwrap();
    let (s, mut w) = (FakeSharedData::default(), Worker::new(10));
    // No answer from the service: the fallback bucket is charged 100.
    let d = decide_with(&c, &s, &mut w, &post(&chat(99)), EVENING);
    assert_eq!(d.outcome, Outcome::Allowed);
    let settlement = settle(&c, &s, &mut w, d.reservation.as_ref().unwrap(), used(9), EVENING);
    assert!(settlement.call.is_none(), "nothing was charged at the service");
    assert_eq!(settlement.settled.as_slice(), &[(crate::cost::Unit::Tokens, 100, 10)]);
    let d = decide_with(&c, &s, &mut w, &post(&chat(0)), EVENING);
    let ratelimit = d.response_headers.get("ratelimit").unwrap();
    assert!(ratelimit.contains(r#""tokens-per-day";r=989;"#), "10 + 1 used: {ratelimit}");
}

#[test]
fn a_refund_after_its_lease_went_back_is_returned_by_the_settling_worker() {
    let (c, s, mut service) = (tokens_only(200), FakeSharedData::default(), Service::default());
    let (mut first, mut second) = (Worker::new(10), Worker::new(10));
    let mut d = run(&c, &s, &mut first, &mut service, &chat(99));
    let refilled = d.lease.take().unwrap();
    // A refill was refused (not a whole block left): the record stays, even when empty.
    let quota = c.quota.as_ref().unwrap();
    let records = crate::lease::Records {
        store: &s,
        retries: 8,
        marker_ttl_ns: crate::lease::marker_ttl_ns(quota),
        now: EVENING,
    };
    records.release_marker(&refilled.lease, 0, Nanos(EVENING.0 + 86_400 * SEC)).unwrap();
    first.remember(refilled);
    // The lease sits idle: the worker that refilled it returns its balance (100).
    let idle = Nanos(EVENING.0 + 11 * SEC);
    let returns = tick(&c, &s, &mut first, idle).returns;
    assert_eq!(returns.iter().map(|r| r.units).collect::<Vec<_>>(), vec![100]);
    // The request ends afterwards, settled on another worker: 60 go back into the record...
    let late = Nanos(idle.0 + SEC);
    assert!(settle(&c, &s, &mut second, d.reservation.as_ref().unwrap(), used(39), late).call.is_none());
    assert!(tick(&c, &s, &mut first, Nanos(late.0 + 11 * SEC)).returns.is_empty(), "the first forgot it");
    // ...and the worker that put them there returns them once idle.
    let returns = tick(&c, &s, &mut second, Nanos(late.0 + 11 * SEC)).returns;
    assert_eq!(returns.iter().map(|r| r.units).collect::<Vec<_>>(), vec![60]);
}

#[test]
fn a_worker_block_given_back_after_its_lease_went_back_is_returned_too() {
    let c = Config::from_json(
        br#"{ "identity": { "anonymous": { "tier": "free" } }, "quota_service": { "cluster": "quota" },
              "tiers": { "free": { "limits": [ { "name": "per-day", "limit": 1000, "window": "1d",
                "algorithm": "fixed_window", "scope": "global", "lease_block": 200 } ] } },
              "routes": [ { "path": "/v1/chat/completions" } ] }"#,
    )
    .unwrap();
    let (s, mut service) = (FakeSharedData::default(), Service::default());
    let (mut refiller, mut other) = (Worker::for_config(&c), Worker::for_config(&c));
    let mut d = run(&c, &s, &mut refiller, &mut service, "{}");
    let refilled = d.lease.take().unwrap();
    let quota = c.quota.as_ref().unwrap();
    let records = crate::lease::Records {
        store: &s,
        retries: 8,
        marker_ttl_ns: crate::lease::marker_ttl_ns(quota),
        now: EVENING,
    };
    records.release_marker(&refilled.lease, 0, Nanos(EVENING.0 + 86_400 * SEC)).unwrap();
    refiller.remember(refilled);
    // The other worker takes its request and a block of 20 out of the lease.
    let d = run(&c, &s, &mut other, &mut service, "{}");
    assert!(d.blocks.taken, "{:?}", d.blocks);
    let idle = Nanos(EVENING.0 + 11 * SEC);
    let back = |t: crate::worker::Tick| t.returns.iter().map(|r| r.units).collect::<Vec<_>>();
    assert_eq!(back(tick(&c, &s, &mut refiller, idle)), vec![200 - 1 - 1 - 20]);
    // The block goes back into the emptied record; its worker returns it.
    assert_eq!(back(tick(&c, &s, &mut other, idle)), vec![20]);
}
