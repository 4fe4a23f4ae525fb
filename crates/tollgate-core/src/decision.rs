//! The decision: a function of (config, request, stored state, callout answers, now). It
//! returns what the host must do: reply, continue with headers, or call the quota service
//! and come back with its answer ([`Step::Call`] → [`resume`]). The host performs it.
//!
//! Global limits that lease ([`crate::lease`]) are decided from the Envoy's balance without
//! a callout. A request that leaves the balance low is admitted at once and hands the host
//! a refill to send on its own ([`Decision::refill`], answered with [`refilled_ahead`]);
//! only a request that finds the balance empty waits for a callout.

use serde::Serialize;
use smallvec::SmallVec;

use crate::breaker::{self, Admission, BreakerConfig, Transition};
use crate::config::{Config, ContentionPolicy, FailureMode, Limit, LimitKind, Mode, QuotaService, Tier};
use crate::headers::{rate_limit_headers, tightest, Headers, LimitStatus};
use crate::hold::{self, HeldLimit, Hold, HoldKey, Holds};
use crate::identity::{client_network, hex, sha256, token};
use crate::keycache::{CachedKey, KeyCache, Lookup, StaticKey};
use crate::lease::{self, Grant, Held, Lease, LeaseRef, Take};
use crate::limit::{self, evaluate, Evaluation, LimitState};
use crate::quota::{CheckRequest, CheckResponse, LimitSpec, ReturnRequest, VerifyRequest, VerifyResponse};
use crate::reply::{self, LocalReply, Refusal};
use crate::store::{
    self, identity_fingerprint, state_of, Change, Limits, SharedStore, SlotRef, StoreError, StoredLimit, UpdateReport,
};
use crate::time::Nanos;

/// What happened to a request, for stats and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No route or a cost-0 route, or no limit of the caller's tier applies: untouched.
    Unlimited,
    Allowed,
    Limited,
    /// Would have been limited; shadow mode let it through.
    ShadowLimited,
    /// Unknown token, or no token where anonymous access is off.
    Unauthenticated,
    /// Malformed or duplicated credentials.
    Malformed,
    /// Refused before a tier was known, let through by shadow mode.
    ShadowRejected,
    /// Shared data could not be updated; admitted unmetered (`on_contention: allow`).
    StoreBypassed,
    /// Shared data could not be updated; refused with 503 (`on_contention: deny`).
    StoreRefused,
    /// The quota service could not answer and the policy is to refuse (503).
    QuotaUnavailable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Unlimited => "unlimited",
            Outcome::Allowed => "allowed",
            Outcome::Limited => "limited",
            Outcome::ShadowLimited => "shadow_limited",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Malformed => "malformed",
            Outcome::ShadowRejected => "shadow_rejected",
            Outcome::StoreBypassed => "store_bypassed",
            Outcome::StoreRefused => "store_refused",
            Outcome::QuotaUnavailable => "quota_unavailable",
        }
    }
}

/// How the quota service figured in a decision, for stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaReport {
    /// The breaker was open: no callout was made.
    pub short_circuited: bool,
    pub breaker_opened: bool,
    pub breaker_closed: bool,
    /// The service could not answer and a global limit fell back to this mode.
    pub degraded: Option<FailureMode>,
    /// Admitted from a lease's balance (no callout of its own, or a refill ahead of need).
    pub from_lease: bool,
    /// Units a refill of this request leased (0: no refill granted).
    pub leased_units: u64,
    /// This request took a worker block out of a lease's balance (see [`crate::hold`]).
    pub block_taken: bool,
}

/// Everything the host needs to act on a request.
#[derive(Debug)]
pub struct Decision {
    pub outcome: Outcome,
    /// Index of the caller's tier in `config.tiers`, once known.
    pub tier: Option<usize>,
    /// `Some`: send this reply and stop the request. `None`: let it continue.
    pub reply: Option<LocalReply>,
    /// Headers to add to the upstream response when the request continues.
    pub response_headers: Headers,
    /// The limit that refused (or would have refused) the request.
    pub limited_by: Option<String>,
    /// Who was metered, safe to log ([`Decision::caller_name`]); never a token.
    pub caller: Option<Caller>,
    pub store: UpdateReport,
    pub quota: QuotaReport,
    /// A lease this request refilled: the worker remembers it to give it back when idle.
    pub lease: Option<Held>,
    /// A refill of a lease to send ahead of need: the request is decided already and does
    /// not wait for it. The host sends it where its answer outlives the request (the root
    /// context) and gives the answer to [`refilled_ahead`].
    pub refill: Option<Box<Callout>>,
}

/// Who is metered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A configured key, by its index in `config.keys`: its name and fingerprint were made
    /// with the configuration, so a request of a key allocates neither.
    Key(usize),
    /// A key verified by the quota service (`key:<id>`) or an anonymous network
    /// (`ip:<network>`).
    Named(String),
}

impl Caller {
    /// `key:<id>` or `ip:<network>`.
    pub fn name<'a>(&'a self, config: &'a Config) -> &'a str {
        match self {
            Caller::Key(index) => config.keys.get(*index).map_or("key:?", |k| k.caller.as_str()),
            Caller::Named(name) => name,
        }
    }
}

/// Either the decision, or a call to the quota service to make first.
// `Done` is the common case, left unboxed: boxing it would allocate for every request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Step {
    Done(Decision),
    /// Boxed: rarer than `Done`, and larger.
    Call(Box<Callout>),
}

/// A `POST` to the quota service; give its answer to [`resume`] with `pending`.
#[derive(Debug)]
pub struct Callout {
    pub path: &'static str,
    pub body: String,
    pub pending: Pending,
}

/// Where a decision waits for the quota service.
#[derive(Debug)]
pub struct Pending {
    route: usize,
    stage: Stage,
    quota: QuotaReport,
}

#[derive(Debug)]
enum Stage {
    Verify { hash: [u8; 32], stale: Option<(String, usize)> },
    Check(Metering),
    Refill(Refill),
}

/// A refill of a lease in flight.
#[derive(Debug)]
struct Refill {
    metering: Metering,
    lease: LeaseRef,
    marker: u64,
    block: u64,
    /// Units of the block its request takes: its cost when it waits for the answer, 0 for
    /// a refill ahead of need (the request was admitted from the balance).
    own: u64,
}

/// A caller with a tier on a route: what to meter and how it stood before the callout.
#[derive(Debug)]
struct Metering {
    tier: usize,
    caller: Caller,
    /// The identity fingerprint of (tier, caller): where its states live.
    fingerprint: u64,
    anonymous: bool,
    local: Metereds,
    global: SmallVec<[usize; 4]>,
    /// Local limits as they stood (not yet charged) when the callout left.
    local_status: Statuses,
}

/// Limits metered and their statuses: a handful per request, kept inline (no allocation).
type Metereds = SmallVec<[Metered; 4]>;
type Statuses = SmallVec<[Status; 4]>;

/// One stored state: limit `index` of the tier, under `fingerprint`.
#[derive(Debug, Clone, Copy)]
struct Metered {
    index: usize,
    fingerprint: u32,
}

/// Where one limit stands: for headers, and for the 429 if it refused.
#[derive(Debug, Clone, Copy)]
struct Status {
    index: usize,
    admitted: bool,
    remaining: u64,
    reset_after_ns: u64,
    retry_after_ns: u64,
}

/// The answer of a callout: the HTTP status and body, or nothing (failure or timeout).
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    Response { status: u16, body: &'a [u8] },
    Failed,
}

/// The fallback buckets of global limits with `failure_mode: local` live beside the
/// local limits, under the limit's fingerprint with this mask.
const FALLBACK_SALT: u32 = 0x5f5f_0001;

pub const BREAKER_KEY_PREFIX: &str = "tollgate/breaker/";

impl Decision {
    fn new(outcome: Outcome) -> Decision {
        Decision {
            outcome,
            tier: None,
            reply: None,
            response_headers: Headers::new(),
            limited_by: None,
            caller: None,
            store: UpdateReport::default(),
            quota: QuotaReport::default(),
            lease: None,
            refill: None,
        }
    }

    /// Who was metered: `key:<id>` or `ip:<network>`.
    pub fn caller_name<'a>(&'a self, config: &'a Config) -> Option<&'a str> {
        self.caller.as_ref().map(|c| c.name(config))
    }

    fn refuse(outcome: Outcome, reply: LocalReply, mode: Mode) -> Decision {
        match mode {
            Mode::Enforce => Decision { reply: Some(reply), ..Decision::new(outcome) },
            Mode::Shadow => {
                let mut d = Decision::new(Outcome::ShadowRejected);
                d.response_headers.push("x-tollgate-shadow", &format!("would-reject; status={}", reply.status));
                d
            }
        }
    }
}

/// Decides a request of a configuration without a quota service (or with one that cannot
/// be reached: every callout counts as failed).
pub fn decide<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    request: &crate::RequestInfo<'_>,
    now: Nanos,
) -> Decision {
    decide_with(config, store, &mut KeyCache::new(1), request, now)
}

/// [`decide`] with a key cache that outlives the request, as a worker keeps one.
pub fn decide_with<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    cache: &mut KeyCache,
    request: &crate::RequestInfo<'_>,
    now: Nanos,
) -> Decision {
    let mut step = begin(config, store, cache, request, now);
    loop {
        match step {
            Step::Done(decision) => return decision,
            Step::Call(call) => step = resume(config, store, cache, call.pending, Answer::Failed, now),
        }
    }
}

/// Starts deciding a request.
pub fn begin<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    cache: &mut KeyCache,
    request: &crate::RequestInfo<'_>,
    now: Nanos,
) -> Step {
    let Some(route) =
        config.route_index(request.method, request.path).filter(|&i| config.routes.get(i).is_some_and(|r| r.cost > 0))
    else {
        return Step::Done(Decision::new(Outcome::Unlimited));
    };
    let report = QuotaReport::default();
    match token(&config.identity, request) {
        Err(e) => Step::Done(Decision::refuse(Outcome::Malformed, reply::malformed_credential(e), config.mode)),
        Ok(Some(token)) => {
            // A configured key this worker has seen is found without a SHA-256 (see
            // `KeyCache::tag`); other tokens are hashed once, here.
            let tag = cache.tag(token);
            let mut hash = None;
            let known = cache.static_key(tag).or_else(|| {
                let index = config.key_index_by_hash(hash.insert(sha256(token.as_bytes())))?;
                let key = config.keys.get(index)?;
                let known = StaticKey { index, tier: key.tier, fingerprint: key.fingerprint };
                cache.remember_static_key(tag, known, config.keys.len());
                Some(known)
            });
            if let Some(key) = known {
                let (caller, fingerprint) = (Caller::Key(key.index), Some(key.fingerprint));
                let holds = Some(&mut cache.holds);
                return with_tier(config, store, holds, route, key.tier, caller, fingerprint, false, report, now);
            }
            let hash = hash.unwrap_or_else(|| sha256(token.as_bytes()));
            let Some(quota) = config.quota.as_ref().filter(|q| q.verify_keys) else {
                return Step::Done(Decision::refuse(Outcome::Unauthenticated, reply::invalid_token(), config.mode));
            };
            let stale = match cache.get(&hash, now) {
                Lookup::Fresh(CachedKey::Known { id, tier }) => {
                    let caller = Caller::Named(["key:", id.as_str()].concat());
                    let holds = Some(&mut cache.holds);
                    return with_tier(config, store, holds, route, tier, caller, None, false, report, now);
                }
                Lookup::Fresh(CachedKey::Unknown) => {
                    return Step::Done(Decision::refuse(Outcome::Unauthenticated, reply::invalid_token(), config.mode));
                }
                Lookup::Stale(CachedKey::Known { id, tier }) => Some((id, tier)),
                Lookup::Stale(CachedKey::Unknown) | Lookup::Missing => None,
            };
            if breaker::admit(store, &breaker_key(quota), &breaker_config(quota), now) == Admission::Open {
                let report = QuotaReport { short_circuited: true, ..report };
                return verify_unavailable(config, store, route, stale, report, now);
            }
            let pending = Pending { route, stage: Stage::Verify { hash, stale }, quota: report };
            Step::Call(Box::new(Callout {
                path: "/v1/keys/verify",
                body: to_json(&VerifyRequest { sha256: hex(&hash) }),
                pending,
            }))
        }
        Ok(None) => match config.identity.anonymous_tier {
            Some(tier) => {
                let identity = &config.identity;
                let network = client_network(request.client_address, identity.ipv4_prefix, identity.ipv6_prefix);
                let caller = Caller::Named(["ip:", network.as_str()].concat());
                with_tier(config, store, Some(&mut cache.holds), route, tier, caller, None, true, report, now)
            }
            None => Step::Done(Decision::refuse(Outcome::Unauthenticated, reply::missing_token(), config.mode)),
        },
    }
}

/// Continues a decision with the quota service's answer to its callout.
pub fn resume<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    cache: &mut KeyCache,
    pending: Pending,
    answer: Answer<'_>,
    now: Nanos,
) -> Step {
    let Pending { route, stage, quota: mut report } = pending;
    let Some(quota) = config.quota.as_ref() else {
        return Step::Done(Decision::new(Outcome::Unlimited));
    };
    match stage {
        Stage::Verify { hash, stale } => {
            let verified = match answer {
                Answer::Response { status: 200, body } => serde_json::from_slice::<VerifyResponse>(body).ok(),
                _ => None,
            };
            record_breaker(store, quota, verified.is_some(), now, &mut report);
            let Some(verified) = verified else {
                return verify_unavailable(config, store, route, stale, report, now);
            };
            let tier = verified.tier.as_deref().and_then(|name| config.tiers.iter().position(|t| t.name == name));
            match (verified.known, verified.id, tier) {
                (true, Some(id), Some(tier)) => {
                    let key = CachedKey::Known { id: id.clone(), tier };
                    cache.put(hash, key, now, quota.key_cache_ttl_ms);
                    let caller = Caller::Named(["key:", id.as_str()].concat());
                    with_tier(config, store, Some(&mut cache.holds), route, tier, caller, None, false, report, now)
                }
                _ => {
                    cache.put(hash, CachedKey::Unknown, now, quota.negative_cache_ttl_ms);
                    Step::Done(Decision::refuse(Outcome::Unauthenticated, reply::invalid_token(), config.mode))
                }
            }
        }
        Stage::Check(metering) => {
            let checked = check_answer(answer, metering.global.len());
            record_breaker(store, quota, checked.is_some(), now, &mut report);
            let Some(checked) = checked else {
                return Step::Done(fallback(config, store, route, metering, report, now));
            };
            let tier = config.tiers.get(metering.tier);
            let global: Statuses = metering
                .global
                .iter()
                .zip(&checked.limits)
                .map(|(&index, r)| {
                    let kind = tier.and_then(|t| t.limits.get(index)).map(|l| l.kind);
                    Status {
                        index,
                        admitted: r.admitted,
                        remaining: r.remaining,
                        reset_after_ns: align(kind, r.reset_after_ms, now),
                        retry_after_ns: if r.admitted { 0 } else { align(kind, r.retry_after_ms, now) },
                    }
                })
                .collect();
            if !checked.admitted {
                let mut statuses = metering.local_status.clone();
                statuses.extend(global);
                // A refusal without any refused limit would be a broken answer: name the first.
                if statuses.iter().all(|s| s.admitted) {
                    if let Some(first) = statuses.iter_mut().find(|s| metering.global.contains(&s.index)) {
                        first.admitted = false;
                    }
                }
                return Step::Done(conclude(config, metering, statuses, UpdateReport::default(), report, now));
            }
            Step::Done(commit(config, store, route, metering, &[], global, report, now))
        }
        Stage::Refill(refill) => {
            let checked = check_answer(answer, refill.metering.global.len());
            record_breaker(store, quota, checked.is_some(), now, &mut report);
            refilled(config, store, quota, route, refill, checked, report, now)
        }
    }
}

/// A decision waiting for a callout was dropped (its stream ended first, so the answer has
/// no request to go to), or a refill ahead of need could not be sent. A refill gives up its
/// marker at once, so that the next request may refill instead of finding a refill "in
/// flight" until the marker's time to live and deciding every request exactly meanwhile.
/// The units of the lost answer are lost (under-admission).
pub fn abandon<S: SharedStore + ?Sized>(config: &Config, store: &S, pending: Pending, now: Nanos) {
    let (Some(quota), Stage::Refill(refill)) = (config.quota.as_ref(), pending.stage) else {
        return;
    };
    let _ = lease::settle(store, &refill.lease, refill.marker, now, stale_ns(quota), config.store.cas_retries, now);
}

/// The caller is known: meter them.
#[allow(clippy::too_many_arguments)]
fn with_tier<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    holds: Option<&mut Holds>,
    route: usize,
    tier_index: usize,
    caller: Caller,
    fingerprint: Option<u64>,
    anonymous: bool,
    mut report: QuotaReport,
    now: Nanos,
) -> Step {
    let (Some(tier), Some(&mask)) =
        (config.tiers.get(tier_index), config.routes.get(route).and_then(|r| r.applies.get(tier_index)))
    else {
        return Step::Done(Decision::new(Outcome::Unlimited));
    };
    if mask == 0 {
        return Step::Done(Decision { tier: Some(tier_index), ..Decision::new(Outcome::Unlimited) });
    }
    let applied = tier.limits.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0);
    let local: Metereds = applied
        .clone()
        .filter(|(_, l)| l.global.is_none())
        .map(|(index, l)| Metered { index, fingerprint: l.fingerprint })
        .collect();
    let global = applied.filter(|(_, l)| l.global.is_some()).map(|(i, _)| i).collect();
    let fingerprint = fingerprint.unwrap_or_else(|| identity_fingerprint(&tier.name, caller.name(config)));
    let mut metering =
        Metering { tier: tier_index, caller, fingerprint, anonymous, local, global, local_status: Statuses::new() };
    let Some(quota) = config.quota.as_ref().filter(|_| !metering.global.is_empty()) else {
        return Step::Done(match holds {
            Some(holds) if holds.enabled() => commit_holding(config, store, holds, route, metering, report, now),
            _ => commit(config, store, route, metering, &[], Statuses::new(), report, now),
        });
    };

    // Local limits first, without charging them: a request they refuse costs no callout.
    let cost = config.routes.get(route).map_or(1, |r| r.cost);
    let mut looked = Statuses::new();
    // Without local limits there is nothing to look at (a global-only tier reads no slot).
    let (result, store_report) = if metering.local.is_empty() {
        (Ok(()), UpdateReport::default())
    } else {
        let slot = SlotRef::from_fingerprint(metering.fingerprint, config.store.slots);
        store::update(store, &slot, now, config.store.cas_retries, |stored| {
            looked = evaluate_all(tier, &metering.local, stored, now, cost);
            Change::Keep
        })
    };
    if result.is_err() {
        return Step::Done(store_failure(config, tier_index, metering.caller, store_report));
    }
    metering.local_status = looked;
    if metering.local_status.iter().any(|s| !s.admitted) {
        let statuses = metering.local_status.clone();
        return Step::Done(conclude(config, metering, statuses, store_report, report, now));
    }
    let block = lease::request_block(metering.global.iter().filter_map(|&i| tier.limits.get(i)), cost);
    if block > 0 {
        match leased(config, store, holds, quota, route, metering, block, report, now) {
            Ok(step) => return step,
            Err(exact) => metering = *exact,
        }
    }
    if breaker::admit(store, &breaker_key(quota), &breaker_config(quota), now) == Admission::Open {
        report.short_circuited = true;
        return Step::Done(fallback(config, store, route, metering, report, now));
    }
    exact_check(config, tier, route, cost, metering, report)
}

/// A `/v1/check` of the request's own cost: the exact path.
fn exact_check(config: &Config, tier: &Tier, route: usize, cost: u64, metering: Metering, report: QuotaReport) -> Step {
    let body = check_body(config, tier, &metering, cost);
    let pending = Pending { route, stage: Stage::Check(metering), quota: report };
    Step::Call(Box::new(Callout { path: "/v1/check", body, pending }))
}

/// The caller's key at the quota service: `<tier>/<caller>`.
fn service_key(config: &Config, tier: &Tier, metering: &Metering) -> String {
    [tier.name.as_str(), "/", metering.caller.name(config)].concat()
}

fn check_body(config: &Config, tier: &Tier, metering: &Metering, cost: u64) -> String {
    let request = CheckRequest {
        key: service_key(config, tier, metering),
        cost,
        limits: metering.global.iter().filter_map(|&i| tier.limits.get(i)).map(LimitSpec::of).collect(),
    };
    to_json(&request)
}

fn stale_ns(quota: &QuotaService) -> u64 {
    lease::marker_ttl_ns(quota)
}

/// The global limits of a request decided from a lease (see [`crate::lease`]). `Err`: the
/// lease cannot decide it; go exact.
#[allow(clippy::too_many_arguments)]
fn leased<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    holds: Option<&mut Holds>,
    quota: &QuotaService,
    route: usize,
    metering: Metering,
    block: u64,
    mut report: QuotaReport,
    now: Nanos,
) -> Result<Step, Box<Metering>> {
    let Some(tier) = config.tiers.get(metering.tier) else {
        return Err(Box::new(metering));
    };
    let cost = config.routes.get(route).map_or(1, |r| r.cost);
    let fingerprint =
        lease::fingerprint(metering.fingerprint, metering.global.iter().filter_map(|&i| tier.limits.get(i)));
    // A worker that keeps holds spends its block of the lease first (see `crate::hold`).
    let mut holds = holds.filter(|h| h.enabled());
    let worker_block = if holds.is_some() { lease::worker_block(block, cost) } else { 0 };
    let key = HoldKey { fingerprint, mask: 0 };
    if let Some(hold) = holds.as_deref_mut().filter(|_| worker_block > 0).and_then(|h| h.spend(key, cost, now)) {
        let statuses = hold_statuses(hold, now);
        report.from_lease = true;
        return Ok(Step::Done(commit(config, store, route, metering, &[], statuses, report, now)));
    }
    let lease_ref = LeaseRef::from_fingerprint(fingerprint, config.store.slots);
    let (stale, retries) = (stale_ns(quota), config.store.cas_retries);
    let Ok(taken) = lease::take(store, &lease_ref, cost, worker_block, block, true, stale, retries, now) else {
        return Err(Box::new(metering));
    };
    let breaker_open =
        |store: &S| breaker::admit(store, &breaker_key(quota), &breaker_config(quota), now) == Admission::Open;
    match taken {
        Take::Empty { refill: None } => Err(Box::new(metering)),
        Take::Admitted { lease, refill, extra } => {
            report.from_lease = true;
            let mut held = 0;
            if let Some(holds) = holds.filter(|_| extra > 0) {
                held = keep_lease_hold(config, store, holds, tier, &metering, key, extra, &lease, now);
                report.block_taken = true;
            }
            // With the breaker open there is no refill: its marker goes at once.
            let marker = match refill {
                Some(marker) if breaker_open(store) => {
                    let _ = lease::settle(store, &lease_ref, marker, now, stale, retries, now);
                    None
                }
                other => other,
            };
            let mut statuses = lease_statuses(tier, &metering.global, &lease, now);
            add_remaining(&mut statuses, held);
            // The refill ahead of need leaves with its own report: the request's counts once.
            let ahead = marker.map(|marker| {
                let metering = Metering {
                    caller: metering.caller.clone(),
                    local: Metereds::new(),
                    global: metering.global.clone(),
                    local_status: Statuses::new(),
                    ..metering
                };
                let refill = Refill { metering, lease: lease_ref, marker, block, own: 0 };
                refill_call(config, tier, route, refill, QuotaReport::default())
            });
            let mut d = commit(config, store, route, metering, &[], statuses, report, now);
            d.refill = ahead;
            Ok(Step::Done(d))
        }
        Take::Empty { refill: Some(marker) } => {
            if breaker_open(store) {
                let _ = lease::settle(store, &lease_ref, marker, now, stale, retries, now);
                report.short_circuited = true;
                return Ok(Step::Done(fallback(config, store, route, metering, report, now)));
            }
            let refill = Refill { metering, lease: lease_ref, marker, block, own: cost };
            Ok(Step::Call(refill_call(config, tier, route, refill, report)))
        }
    }
}

/// Keeps `units` just taken out of a lease (the record after it: `lease`) as this worker's
/// hold; returns the units the worker now holds for it.
#[allow(clippy::too_many_arguments)]
fn keep_lease_hold<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    holds: &mut Holds,
    tier: &Tier,
    metering: &Metering,
    key: HoldKey,
    units: u64,
    lease: &Lease,
    now: Nanos,
) -> u64 {
    let limits = lease_statuses(tier, &metering.global, lease, now)
        .iter()
        .map(|s| HeldLimit { index: s.index, fingerprint: 0, remaining: s.remaining, reset_after_ns: s.reset_after_ns })
        .collect();
    let back = ReturnRequest {
        key: service_key(config, tier, metering),
        units: 0,
        limits: metering.global.iter().filter_map(|&i| tier.limits.get(i)).map(LimitSpec::of).collect(),
        windows: (0..metering.global.len()).map(|i| lease.grants.get(i).and_then(|g| g.window)).collect(),
    };
    let held = units.saturating_add(holds.units(key, now));
    let hold = Hold {
        units,
        tier: metering.tier,
        fingerprint: key.fingerprint,
        limits,
        taken_at: now,
        expires_at: Nanos(lease.expires_at),
        last_used: now,
        lease: Some(Box::new(back)),
    };
    if let Some(pushed_out) = holds.put(key, hold, now) {
        give_back_now(config, store, holds, pushed_out, now);
    }
    held
}

/// Where the limits of a request admitted from a hold stand.
fn hold_statuses(hold: &Hold, now: Nanos) -> Statuses {
    hold.view(now)
        .map(|(index, remaining, reset_after_ns)| Status {
            index,
            admitted: true,
            remaining,
            reset_after_ns,
            retry_after_ns: 0,
        })
        .collect()
}

/// Units a worker holds count as remaining: the next requests may spend them.
fn add_remaining(statuses: &mut Statuses, units: u64) {
    for s in statuses {
        s.remaining = s.remaining.saturating_add(units);
    }
}

/// The callout that asks the service for the next block of a lease.
fn refill_call(config: &Config, tier: &Tier, route: usize, refill: Refill, report: QuotaReport) -> Box<Callout> {
    let body = check_body(config, tier, &refill.metering, refill.block);
    Box::new(Callout {
        path: "/v1/check",
        body,
        pending: Pending { route, stage: Stage::Refill(refill), quota: report },
    })
}

/// What the answer to a refill did to its lease.
enum Refilled {
    /// Granted and credited; `credited` is the record after it (`None`: it had moved on
    /// and the block is lost: under-admission).
    Granted { grants: Vec<Grant>, credited: Option<Lease>, held: Held },
    /// Not a whole block left: the lease decides exactly until one could pass.
    Short,
    /// No answer: the lease is settled.
    Failed,
}

/// Credits the block of a granted refill to its lease, or settles the lease.
#[allow(clippy::too_many_arguments)]
fn apply_refill<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    quota: &QuotaService,
    tier: &Tier,
    refill: &Refill,
    checked: Option<CheckResponse>,
    report: &mut QuotaReport,
    now: Nanos,
) -> Refilled {
    let Refill { metering, lease: lease_ref, marker, block, own } = refill;
    let (stale, retries) = (stale_ns(quota), config.store.cas_retries);
    let Some(answer) = checked else {
        let _ = lease::settle(store, lease_ref, *marker, now, stale, retries, now);
        return Refilled::Failed;
    };
    if !answer.admitted {
        // Not a whole block left: spend what the lease holds, then decide exactly until
        // a block could be granted again.
        let wait_ms = answer.limits.iter().filter(|r| !r.admitted).map(|r| r.retry_after_ms).max().unwrap_or(0);
        let until = now.saturating_add(wait_ms.saturating_mul(1_000_000));
        let _ = lease::settle(store, lease_ref, *marker, until, stale, retries, now);
        return Refilled::Short;
    }
    let limits: Vec<&Limit> = metering.global.iter().filter_map(|&i| tier.limits.get(i)).collect();
    let grants: Vec<Grant> = limits
        .iter()
        .zip(&answer.limits)
        .map(|(limit, r)| {
            let reset_at = now.0.saturating_add(align(Some(limit.kind), r.reset_after_ms, now));
            let window = r.window.or(match limit.kind {
                LimitKind::FixedWindow { window_ns } if window_ns > 0 => Some((reset_at / window_ns).saturating_sub(1)),
                _ => None,
            });
            Grant { remaining: r.remaining, reset_at, window }
        })
        .collect();
    let expires_at = lease::expiry(&limits, &grants);
    report.leased_units = *block;
    let credit = block.saturating_sub(*own);
    let credited =
        lease::credit(store, lease_ref, *marker, credit, &grants, expires_at, stale, retries, now).ok().flatten();
    let held = Held {
        lease: lease_ref.clone(),
        key: service_key(config, tier, metering),
        limits: limits.iter().map(|l| LimitSpec::of(l)).collect(),
    };
    Refilled::Granted { grants, credited, held }
}

/// The answer to a refill its request waited for: credit the lease and admit the request
/// from the block, or decide it otherwise.
#[allow(clippy::too_many_arguments)]
fn refilled<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    quota: &QuotaService,
    route: usize,
    refill: Refill,
    checked: Option<CheckResponse>,
    mut report: QuotaReport,
    now: Nanos,
) -> Step {
    let Some(tier) = config.tiers.get(refill.metering.tier) else {
        return Step::Done(Decision::new(Outcome::Unlimited));
    };
    let cost = config.routes.get(route).map_or(1, |r| r.cost);
    let applied = apply_refill(config, store, quota, tier, &refill, checked, &mut report, now);
    let metering = refill.metering;
    match applied {
        Refilled::Granted { grants, credited, held } => {
            report.from_lease = true;
            let statuses = match &credited {
                Some(l) => lease_statuses(tier, &metering.global, l, now),
                None => metering
                    .global
                    .iter()
                    .zip(&grants)
                    .map(|(&index, g)| Status {
                        index,
                        admitted: true,
                        remaining: g.remaining,
                        reset_after_ns: g.reset_at.saturating_sub(now.0),
                        retry_after_ns: 0,
                    })
                    .collect(),
            };
            let mut d = commit(config, store, route, metering, &[], statuses, report, now);
            d.lease = Some(held);
            Step::Done(d)
        }
        Refilled::Short => exact_check(config, tier, route, cost, metering, report),
        Refilled::Failed => Step::Done(fallback(config, store, route, metering, report, now)),
    }
}

/// The answer to a refill sent ahead of need ([`Decision::refill`]), its request decided
/// long since: credits the block to the lease, or settles the lease. Returns the lease for
/// the worker to remember (see [`Decision::lease`]) when a block was granted, and how the
/// service figured, for stats.
pub fn refilled_ahead<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    pending: Pending,
    answer: Answer<'_>,
    now: Nanos,
) -> (Option<Held>, QuotaReport) {
    let Pending { stage, quota: mut report, .. } = pending;
    let (Some(quota), Stage::Refill(refill)) = (config.quota.as_ref(), stage) else {
        return (None, report);
    };
    let Some(tier) = config.tiers.get(refill.metering.tier) else {
        return (None, report);
    };
    let checked = check_answer(answer, refill.metering.global.len());
    record_breaker(store, quota, checked.is_some(), now, &mut report);
    match apply_refill(config, store, quota, tier, &refill, checked, &mut report, now) {
        Refilled::Granted { held, .. } => (Some(held), report),
        Refilled::Short | Refilled::Failed => (None, report),
    }
}

/// A `/v1/check` answer for `limits` global limits, if it is one.
fn check_answer(answer: Answer<'_>, limits: usize) -> Option<CheckResponse> {
    match answer {
        Answer::Response { status: 200, body } => {
            serde_json::from_slice::<CheckResponse>(body).ok().filter(|r| r.limits.len() == limits)
        }
        _ => None,
    }
}

/// Global limits as a lease shows them: the service's remaining at the grant plus the
/// balance not yet spent here, and the reset of the grant (an approximation: other
/// Envoys' spending since the grant is not seen).
fn lease_statuses(tier: &Tier, global: &[usize], lease: &Lease, now: Nanos) -> Statuses {
    let balance = lease.live_balance(now);
    global
        .iter()
        .enumerate()
        .filter(|(_, &index)| tier.limits.get(index).is_some())
        .map(|(p, &index)| {
            let grant = lease.grants.get(p).copied().unwrap_or_default();
            Status {
                index,
                admitted: true,
                remaining: grant.remaining.saturating_add(balance),
                reset_after_ns: grant.reset_at.saturating_sub(now.0),
                retry_after_ns: 0,
            }
        })
        .collect()
}

/// The quota service could not answer for global limits: each falls back to its
/// `failure_mode`.
fn fallback<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    route: usize,
    metering: Metering,
    mut report: QuotaReport,
    now: Nanos,
) -> Decision {
    let Some(tier) = config.tiers.get(metering.tier) else {
        return Decision::new(Outcome::Unlimited);
    };
    let modes: Vec<(usize, FailureMode)> =
        metering.global.iter().filter_map(|&i| tier.limits.get(i).and_then(|l| l.global).map(|m| (i, m))).collect();
    if modes.iter().any(|(_, m)| *m == FailureMode::Closed) {
        report.degraded = Some(FailureMode::Closed);
        let mut d = Decision::refuse(Outcome::QuotaUnavailable, reply::quota_unavailable(), config.mode);
        d.tier = Some(metering.tier);
        d.caller = Some(metering.caller);
        d.quota = report;
        return d;
    }
    let fallback: Metereds = modes
        .iter()
        .filter(|(_, m)| *m == FailureMode::Local)
        .filter_map(|&(index, _)| {
            tier.limits.get(index).map(|l| Metered { index, fingerprint: l.fingerprint ^ FALLBACK_SALT })
        })
        .collect();
    let any_local = !fallback.is_empty();
    report.degraded = Some(if any_local { FailureMode::Local } else { FailureMode::Open });
    let mut d = commit(config, store, route, metering, &fallback, Statuses::new(), report, now);
    if d.reply.is_none() {
        let mode = if any_local { "local" } else { "open" };
        d.response_headers.push("x-tollgate-degraded", &format!("quota-service-unavailable; failure-mode={mode}"));
    }
    d
}

/// Key verification could not be done: a stale positive entry still identifies the caller.
fn verify_unavailable<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    route: usize,
    stale: Option<(String, usize)>,
    report: QuotaReport,
    now: Nanos,
) -> Step {
    match stale {
        Some((id, tier)) => {
            let caller = Caller::Named(["key:", id.as_str()].concat());
            with_tier(config, store, None, route, tier, caller, None, false, report, now)
        }
        None => {
            let mut d = Decision::refuse(Outcome::QuotaUnavailable, reply::quota_unavailable(), config.mode);
            d.quota = report;
            Step::Done(d)
        }
    }
}

/// Charges the local limits (and `extra` fallback buckets) with compare-and-swap, then
/// concludes with `global` statuses from the quota service added.
#[allow(clippy::too_many_arguments)]
fn commit<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    route: usize,
    metering: Metering,
    extra: &[Metered],
    global: Statuses,
    report: QuotaReport,
    now: Nanos,
) -> Decision {
    let Some(tier) = config.tiers.get(metering.tier) else {
        return Decision::new(Outcome::Unlimited);
    };
    let metered: Metereds = metering.local.iter().chain(extra).copied().collect();
    let mut statuses = Statuses::new();
    let mut store_report = UpdateReport::default();
    if !metered.is_empty() {
        let slot = SlotRef::from_fingerprint(metering.fingerprint, config.store.slots);
        let cost = config.routes.get(route).map_or(1, |r| r.cost);
        let (result, r) = store::update(store, &slot, now, config.store.cas_retries, |stored| {
            statuses = evaluate_all(tier, &metered, stored, now, cost);
            if statuses.iter().all(|s| s.admitted) {
                next_states(tier, &metered, stored, now, cost)
            } else {
                Change::Keep
            }
        });
        store_report = r;
        if result.is_err() {
            let mut d = store_failure(config, metering.tier, metering.caller, store_report);
            d.quota = report;
            return d;
        }
    }
    statuses.extend(global);
    conclude(config, metering, statuses, store_report, report, now)
}

/// [`commit`] of a request metered by local limits only, on a worker that keeps holds:
/// admitted from the caller's hold when it covers the cost, else decided on shared data,
/// charging a block more when every limit has room for it (see [`crate::hold`]).
fn commit_holding<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    holds: &mut Holds,
    route: usize,
    metering: Metering,
    report: QuotaReport,
    now: Nanos,
) -> Decision {
    let (Some(tier), Some(r)) = (config.tiers.get(metering.tier), config.routes.get(route)) else {
        return commit(config, store, route, metering, &[], Statuses::new(), report, now);
    };
    let cost = r.cost;
    // The same rule as a lease's block: the smallest of the limits', 0 if it is below the cost.
    let block = lease::request_block(metering.local.iter().filter_map(|m| tier.limits.get(m.index)), cost);
    if block == 0 {
        return commit(config, store, route, metering, &[], Statuses::new(), report, now);
    }
    let fingerprint = metering.fingerprint;
    let key = HoldKey { fingerprint, mask: r.applies.get(metering.tier).copied().unwrap_or(0) };
    if let Some(hold) = holds.spend(key, cost, now) {
        let statuses = hold_statuses(hold, now);
        return conclude(config, metering, statuses, UpdateReport::default(), report, now);
    }
    let slot = SlotRef::from_fingerprint(fingerprint, config.store.slots);
    let metered = &metering.local;
    let with_block = cost.saturating_add(block);
    let mut statuses = Statuses::new();
    let mut took = 0;
    let (result, mut store_report) = store::update(store, &slot, now, config.store.cas_retries, |stored| {
        statuses = evaluate_all(tier, metered, stored, now, with_block);
        if statuses.iter().all(|s| s.admitted) {
            took = block;
            return next_states(tier, metered, stored, now, with_block);
        }
        took = 0;
        statuses = evaluate_all(tier, metered, stored, now, cost);
        if statuses.iter().all(|s| s.admitted) {
            next_states(tier, metered, stored, now, cost)
        } else {
            Change::Keep
        }
    });
    if result.is_err() {
        let mut d = store_failure(config, metering.tier, metering.caller, store_report);
        d.quota = report;
        return d;
    }
    if took > 0 {
        let limits = statuses
            .iter()
            .filter_map(|s| {
                let m = metered.iter().find(|m| m.index == s.index)?;
                Some(HeldLimit {
                    index: s.index,
                    fingerprint: m.fingerprint,
                    remaining: s.remaining,
                    reset_after_ns: s.reset_after_ns,
                })
            })
            .collect();
        let expires_at = hold_expiry(tier, metered, now);
        let hold = Hold {
            units: took,
            tier: metering.tier,
            fingerprint,
            limits,
            taken_at: now,
            expires_at,
            last_used: now,
            lease: None,
        };
        // This request's headers count the units held (the block and what was left of
        // the last one) as remaining, as the next requests' will.
        add_remaining(&mut statuses, took.saturating_add(holds.units(key, now)));
        store_report.block_taken = true;
        if let Some(pushed_out) = holds.put(key, hold, now) {
            if give_back_now(config, store, holds, pushed_out, now) {
                store_report.blocks_given_back += 1;
            }
        }
    }
    conclude(config, metering, statuses, store_report, report, now)
}

/// When units charged now stop counting: the end of the earliest fixed window among the
/// limits (never, for token buckets).
fn hold_expiry(tier: &Tier, metered: &[Metered], now: Nanos) -> Nanos {
    let end = metered
        .iter()
        .filter_map(|m| match tier.limits.get(m.index)?.kind {
            LimitKind::FixedWindow { window_ns } if window_ns > 0 => {
                Some((now.0 / window_ns).saturating_add(1).saturating_mul(window_ns))
            }
            _ => None,
        })
        .min();
    Nanos(end.unwrap_or(u64::MAX))
}

/// Where a hold's unspent units went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GivenBack {
    /// Into shared data: the caller's slot, or the lease record they came from.
    Shared,
    /// The lease record has moved on: send this `POST /v1/return` to the service.
    ToService(ReturnRequest),
    /// Nothing to give back (expired, spent, or its tier is gone).
    Void,
}

/// Gives a hold's unspent units back: a local hold to its caller's slot; a lease's to its
/// record, or when the record has moved on, to the service.
pub fn give_back<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    hold: &Hold,
    now: Nanos,
) -> Result<GivenBack, StoreError> {
    if now >= hold.expires_at || hold.units == 0 {
        return Ok(GivenBack::Void);
    }
    if let Some(back) = &hold.lease {
        let lease = LeaseRef::from_fingerprint(hold.fingerprint, config.store.slots);
        let (stale, retries) = (config.quota.as_ref().map_or(0, stale_ns), config.store.cas_retries);
        let credited =
            lease::give_back(store, &lease, hold.units, hold.expires_at.0, hold.last_used, stale, retries, now)?;
        return Ok(if credited {
            GivenBack::Shared
        } else {
            GivenBack::ToService(ReturnRequest { units: hold.units, ..(**back).clone() })
        });
    }
    let Some(tier) = config.tiers.get(hold.tier) else {
        return Ok(GivenBack::Void);
    };
    let slot = SlotRef::from_fingerprint(hold.fingerprint, config.store.slots);
    let (result, _) = store::update(store, &slot, now, config.store.cas_retries, |stored| {
        refund_states(tier, &hold.limits, stored, now, hold.units)
    });
    result.map(|()| GivenBack::Shared)
}

/// Gives back a hold pushed out of a full table, from a request: what must go to the
/// service waits for the next tick. Whether its units went back into shared data.
fn give_back_now<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    holds: &mut Holds,
    hold: Hold,
    now: Nanos,
) -> bool {
    match give_back(config, store, &hold, now) {
        Ok(GivenBack::Shared) => true,
        Ok(GivenBack::ToService(_)) => {
            holds.orphan(hold);
            false
        }
        // Failing to give it back loses its units: under-admission, never over.
        Ok(GivenBack::Void) | Err(_) => false,
    }
}

/// What a tick gave back.
#[derive(Debug, Default)]
pub struct IdleReturns {
    /// Holds whose units went back into shared data.
    pub shared: usize,
    /// Lease units to send back to the service (`POST /v1/return`).
    pub to_service: Vec<ReturnRequest>,
}

/// How long a hold may stay unused before a tick gives it back: [`hold::IDLE_RETURN_NS`],
/// or less with a shorter `lease_idle_return_ms`, so that a worker's block of a lease is
/// back in the record before the lease is due to go back to the service.
pub fn hold_idle_ns(config: &Config) -> u64 {
    let lease_idle = config.quota.as_ref().map_or(u64::MAX, |q| q.lease_idle_return_ms.saturating_mul(1_000_000) / 2);
    hold::IDLE_RETURN_NS.min(lease_idle)
}

/// Gives back the holds of this worker unused for [`hold_idle_ns`], at most
/// [`hold::MAX_RETURNS_PER_TICK`] (from the worker's tick).
pub fn return_idle_holds<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    cache: &mut KeyCache,
    now: Nanos,
) -> IdleReturns {
    let idle = cache.holds.take_idle(now, hold_idle_ns(config), hold::MAX_RETURNS_PER_TICK);
    let mut out = IdleReturns::default();
    for hold in &idle {
        match give_back(config, store, hold, now) {
            Ok(GivenBack::Shared) => out.shared += 1,
            Ok(GivenBack::ToService(request)) => out.to_service.push(request),
            Ok(GivenBack::Void) | Err(_) => {}
        }
    }
    out
}

/// The states of the tier in a slot with `units` given back to the held limits. Nothing
/// is written when the slot no longer has their states (the units then came back anyway:
/// a state only goes when it is idle).
fn refund_states(tier: &Tier, held: &[HeldLimit], stored: &[StoredLimit], now: Nanos, units: u64) -> Change {
    if !held.iter().any(|h| state_of(stored, h.fingerprint).is_some()) {
        return Change::Keep;
    }
    rewrite_states(tier, stored, now, |index, limit, fingerprint, previous| {
        let refunded = held.iter().any(|h| h.index == index && h.fingerprint == fingerprint);
        previous.map(|s| {
            let s = if refunded { limit::refund(limit, s, now, units) } else { s };
            evaluate(limit, Some(s), now, 0)
        })
    })
}

fn store_failure(config: &Config, tier: usize, caller: Caller, store_report: UpdateReport) -> Decision {
    let mut d = Decision {
        tier: Some(tier),
        caller: Some(caller),
        store: store_report,
        ..Decision::new(Outcome::StoreBypassed)
    };
    if config.store.on_contention == ContentionPolicy::Deny {
        d.outcome = Outcome::StoreRefused;
        d.reply = Some(reply::unavailable());
    }
    d
}

/// Headers, and the 429 if any limit refused.
fn conclude(
    config: &Config,
    metering: Metering,
    mut statuses: Statuses,
    store_report: UpdateReport,
    quota: QuotaReport,
    now: Nanos,
) -> Decision {
    let mut decision = Decision {
        tier: Some(metering.tier),
        caller: Some(metering.caller),
        store: store_report,
        quota,
        ..Decision::new(Outcome::Allowed)
    };
    let Some(tier) = config.tiers.get(metering.tier) else {
        return decision;
    };
    statuses.sort_by_key(|s| s.index);
    // A limit counted twice (its fallback bucket beside the service's answer) shows once.
    statuses.dedup_by_key(|s| s.index);
    let views: SmallVec<[LimitStatus<'_>; 4]> = statuses
        .iter()
        .filter_map(|s| {
            tier.limits.get(s.index).map(|limit| LimitStatus {
                limit,
                remaining: s.remaining,
                reset_after_ns: s.reset_after_ns,
            })
        })
        .collect();
    // The refusing limit is the one that makes the caller wait longest.
    let refusal = statuses
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.admitted)
        .max_by_key(|(_, s)| s.retry_after_ns)
        .map(|(p, s)| (p, *s));
    let focus = refusal.map_or_else(|| tightest(&views), |(pos, _)| pos);
    rate_limit_headers(&config.headers, &views, focus, now, &mut decision.response_headers);

    let Some((_, status)) = refusal else {
        return decision;
    };
    let Some(limit) = tier.limits.get(status.index) else {
        return decision;
    };
    decision.limited_by = Some(limit.name.clone());
    match config.mode {
        Mode::Enforce => {
            decision.outcome = Outcome::Limited;
            let refusal =
                Refusal { tier, limit, anonymous: metering.anonymous, retry_after_ns: status.retry_after_ns, now };
            let headers = std::mem::take(&mut decision.response_headers);
            decision.reply = Some(reply::too_many_requests(config, &refusal, headers));
        }
        Mode::Shadow => {
            decision.outcome = Outcome::ShadowLimited;
            decision.response_headers.push("x-tollgate-shadow", &format!("would-limit; limit=\"{}\"", limit.name));
        }
    }
    decision
}

/// Evaluates the metered states of `tier` against what is stored.
fn evaluate_all(tier: &Tier, metered: &[Metered], stored: &[StoredLimit], now: Nanos, cost: u64) -> Statuses {
    metered
        .iter()
        .filter_map(|m| {
            let limit = tier.limits.get(m.index)?;
            let e = evaluate(limit, state_of(stored, m.fingerprint), now, cost);
            Some(Status {
                index: m.index,
                admitted: e.admitted,
                remaining: e.remaining,
                reset_after_ns: e.reset_after_ns,
                retry_after_ns: e.retry_after_ns,
            })
        })
        .collect()
}

/// New states for every state the tier keeps in shared data: the metered ones charged,
/// the others carried over. States of limits no longer configured are dropped.
fn next_states(tier: &Tier, metered: &[Metered], stored: &[StoredLimit], now: Nanos, cost: u64) -> Change {
    rewrite_states(tier, stored, now, |index, limit, fingerprint, previous| {
        if metered.iter().any(|m| m.index == index && m.fingerprint == fingerprint) {
            Some(evaluate(limit, previous, now, cost))
        } else {
            previous.map(|s| evaluate(limit, Some(s), now, 0))
        }
    })
}

/// Every state the tier keeps in shared data, as `next` evaluates it from what is stored
/// (limit index, limit, state fingerprint, stored state); the idle ones are dropped.
fn rewrite_states(
    tier: &Tier,
    stored: &[StoredLimit],
    now: Nanos,
    mut next: impl FnMut(usize, &Limit, u32, Option<LimitState>) -> Option<Evaluation>,
) -> Change {
    let mut states = Limits::new();
    let mut idle_at = now;
    for (index, limit) in tier.limits.iter().enumerate() {
        // A local limit keeps its own state; a global one only its fallback bucket, if any.
        let own = limit.global.is_none().then_some(limit.fingerprint);
        let fallback = (limit.global == Some(FailureMode::Local)).then_some(limit.fingerprint ^ FALLBACK_SALT);
        for fingerprint in own.into_iter().chain(fallback) {
            if let Some(e) = next(index, limit, fingerprint, state_of(stored, fingerprint)).filter(|e| e.idle_at > now)
            {
                idle_at = idle_at.max(e.idle_at);
                states.push(StoredLimit { fingerprint, state: e.state });
            }
        }
    }
    Change::Write { states, idle_at }
}

/// A duration from the quota service, in ns from `now`. Fixed windows end on a multiple
/// of the window since the epoch: the service's clock and ours differ a little, so snap
/// to the nearest boundary (a daily window resets at exactly 00:00:00 UTC).
fn align(kind: Option<LimitKind>, after_ms: u64, now: Nanos) -> u64 {
    let after_ns = after_ms.saturating_mul(1_000_000);
    match kind {
        Some(LimitKind::FixedWindow { window_ns }) if window_ns > 0 => {
            let at = now.0.saturating_add(after_ns);
            let boundary = at.saturating_add(window_ns / 2) / window_ns * window_ns;
            boundary.saturating_sub(now.0)
        }
        _ => after_ns,
    }
}

fn record_breaker<S: SharedStore + ?Sized>(
    store: &S,
    quota: &QuotaService,
    success: bool,
    now: Nanos,
    report: &mut QuotaReport,
) {
    match breaker::record(store, &breaker_key(quota), &breaker_config(quota), success, now) {
        Ok(Transition::Opened) => report.breaker_opened = true,
        Ok(Transition::Closed) => report.breaker_closed = true,
        _ => {}
    }
}

pub fn breaker_key(quota: &QuotaService) -> String {
    format!("{BREAKER_KEY_PREFIX}{}", quota.cluster)
}

fn breaker_config(quota: &QuotaService) -> BreakerConfig {
    BreakerConfig {
        failures: quota.breaker_failures,
        cooldown_ns: quota.breaker_cooldown_ms.saturating_mul(1_000_000),
        probe_ns: quota.timeout_ms.saturating_add(1_000).saturating_mul(1_000_000),
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod global_tests;
#[cfg(test)]
mod hold_tests;
