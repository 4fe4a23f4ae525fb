//! The decision: a function of (config, request, stored state, callout answers, now). It
//! returns what the host must do: reply, continue with headers, or call the quota service
//! and come back with its answer ([`Step::Call`] → [`resume`]). The host performs it.
//!
//! A request goes through these modules in order (docs/ARCHITECTURE.md draws the path):
//! - [`caller`]: from the credential to the caller and their tier (a configured key, a key
//!   verified by the quota service, or an anonymous client network);
//! - [`metering`]: which limits of the tier apply on the route, and which way they go;
//! - [`local`]: local limits charged on the caller's slot, or spent from a worker block;
//! - [`global`]: global limits, with the local ones looked at first: from a lease
//!   ([`leased`]) or with an exact `/v1/check`, or by their failure mode when the quota
//!   service cannot answer ([`fallback`]);
//! - [`conclude`]: the response headers, or the 429.
//!
//! [`states`] rewrites stored states for the others; [`outcome`] holds what the host reads.

mod caller;
mod conclude;
mod failed;
mod fallback;
mod global;
mod leased;
mod local;
mod metering;
mod outcome;
mod settle;
mod states;
mod tick;

pub use fallback::{breaker_key, BREAKER_KEY_PREFIX};
pub use leased::{abandon, refilled_ahead};
pub use local::{give_back, GivenBack};
pub use outcome::{BlockReport, Caller, Decision, Outcome, QuotaReport};
pub use settle::{settle, Ending, Reservation, Settled, Settlement, SETTLE_PATH};
pub use tick::{give_back_idle_blocks, tick};

use serde::Serialize;

use crate::config::{Config, Meter};
use crate::cost::{body, Charges};
use crate::identity::RequestInfo;
use crate::reply;
use crate::store::SharedStore;
use crate::time::Nanos;
use crate::worker::Worker;
use leased::Refill;
use metering::Metering;

/// What every step of a decision reads: the configuration, shared data and the time.
pub(crate) struct Ctx<'a, S: ?Sized> {
    pub config: &'a Config,
    pub store: &'a S,
    pub now: Nanos,
}

// Derived by hand: `S` (the store) need not be `Clone` for a context of references.
impl<S: ?Sized> Clone for Ctx<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S: ?Sized> Copy for Ctx<'_, S> {}

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
    stage: Stage,
    quota: QuotaReport,
}

#[derive(Debug)]
enum Stage {
    Verify(Verify),
    Check(Metering),
    Refill(Refill),
}

/// A key verification in flight: the request, the token's SHA-256, a stale positive
/// entry to fall back on, and the failure counted for the network before it left.
#[derive(Debug)]
struct Verify {
    asked: Asked,
    hash: [u8; 32],
    stale: Option<(String, usize)>,
    counted: Option<failed::Counted>,
}

impl Pending {
    /// A stream gone before its callout was answered: what the worker counted for it.
    pub fn release(&self, worker: &mut Worker) {
        if let Stage::Verify(_) = self.stage {
            worker.end_verification();
        }
    }
}

/// The answer of a callout: the HTTP status and body, or nothing (failure or timeout).
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    Response { status: u16, body: &'a [u8] },
    Failed,
}

/// Decides a request of a configuration without a quota service (or with one that cannot
/// be reached: every callout counts as failed).
pub fn decide<S: SharedStore + ?Sized>(config: &Config, store: &S, request: &RequestInfo<'_>, now: Nanos) -> Decision {
    decide_with(config, store, &mut Worker::new(1), request, now)
}

/// [`decide`] on a worker's state that outlives the request, as a worker keeps it.
pub fn decide_with<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    worker: &mut Worker,
    request: &RequestInfo<'_>,
    now: Nanos,
) -> Decision {
    let mut step = begin(config, store, worker, request, now);
    loop {
        match step {
            Step::Done(decision) => return decision,
            Step::Call(call) => step = resume(config, store, worker, call.pending, Answer::Failed, now),
        }
    }
}

/// What a request asks for: its route, and on a metered route what its body reserves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asked {
    pub route: usize,
    pub charges: Option<Charges>,
}

/// The meter of the request's route: `Some` on a metered route, whose body sets the cost
/// (the host buffers up to `max_body_bytes` and passes it in [`RequestInfo::body`]);
/// `None` elsewhere, where the body is never read.
pub fn meter_of<'c>(config: &'c Config, request: &RequestInfo<'_>) -> Option<&'c Meter> {
    let route = config.routes.get(config.route_index(request.method, request.path)?)?;
    route.meter.as_ref()
}

/// The decision for a metered route's body larger than `max_body_bytes`: 413, unread.
pub fn body_too_large(config: &Config, max_body_bytes: usize) -> Decision {
    Decision::refuse(Outcome::BadRequest, reply::body_too_large(max_body_bytes), config.mode)
}

/// Starts deciding a request.
pub fn begin<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    worker: &mut Worker,
    request: &RequestInfo<'_>,
    now: Nanos,
) -> Step {
    let cx = Ctx { config, store, now };
    let Some((route, r)) =
        config.route_index(request.method, request.path).and_then(|i| Some((i, config.routes.get(i)?)))
    else {
        return Step::Done(Decision::new(Outcome::Unlimited));
    };
    let charges = match &r.meter {
        Some(meter) => match body::read(meter.api, request.body.unwrap_or_default()) {
            Ok(demand) => Some(metering::reserve(&demand, meter, &config.prices)),
            Err(e) => return Step::Done(Decision::refuse(Outcome::BadRequest, reply::bad_body(&e), config.mode)),
        },
        None if r.cost == 0 => return Step::Done(Decision::new(Outcome::Unlimited)),
        None => None,
    };
    caller::identify(cx, worker, Asked { route, charges }, request)
}

/// Continues a decision with the quota service's answer to its callout.
pub fn resume<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    worker: &mut Worker,
    pending: Pending,
    answer: Answer<'_>,
    now: Nanos,
) -> Step {
    let cx = Ctx { config, store, now };
    let Pending { stage, quota: report } = pending;
    match stage {
        Stage::Verify(verify) => caller::verified(cx, worker, verify, answer, report),
        Stage::Check(metering) => global::checked(cx, metering, answer, report),
        Stage::Refill(refill) => leased::refilled(cx, refill, answer, report),
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod block_tests;
#[cfg(test)]
mod failed_tests;
#[cfg(test)]
mod global_metered_tests;
#[cfg(test)]
mod global_tests;
#[cfg(test)]
mod metered_tests;
