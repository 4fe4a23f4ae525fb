//! The root context (configuration, stats, per-worker key cache) and the per-request HTTP
//! context, which only gathers the request's facts, asks `tollgate_core` what to do,
//! and carries it out: reply, continue with headers, or call the quota service first.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;
use std::time::Duration;

use log::{debug, error, info, warn, Level};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType};
use tollgate_core::config::QuotaService;
use tollgate_core::decision::{self, Answer, Callout, Outcome, Pending, QuotaReport, Step};
use tollgate_core::headers::Headers;
use tollgate_core::hold;
use tollgate_core::keycache::KeyCache;
use tollgate_core::lease::{self, Held, Reclaim};
use tollgate_core::{Config, Decision, Nanos, RequestInfo};

use crate::abi;
use crate::host::{self, HostSharedData};
use crate::metrics::Metrics;

#[derive(Default)]
pub struct TollgateRoot {
    state: Option<Rc<State>>,
    /// Refills ahead of need in flight: the callout's token, its decision, when it left.
    refills: Vec<(u32, Pending, Nanos)>,
}

struct State {
    config: Config,
    metrics: Metrics,
    /// Keys verified by the quota service, for this worker.
    keys: RefCell<KeyCache>,
    /// Callouts in flight from this worker.
    in_flight: Cell<u32>,
    /// Leases this worker refilled, looked at on each tick to give back idle ones.
    held: RefCell<Vec<Held>>,
    /// Refills ahead of need that requests handed over, for the root context to send: a
    /// callout a request sends is answered to that request's context, gone by then.
    ahead: RefCell<Vec<Callout>>,
    /// This worker's shared queue: a request rings it to have the root context send
    /// `ahead` at once (else the next tick does).
    queue: Option<u32>,
}

impl State {
    /// Starts a callout unless `max_pending_callouts` are in flight; its token.
    fn dispatch(&self, quota: &QuotaService, path: &str, body: &str) -> Option<u32> {
        let token = if self.in_flight.get() >= quota.max_pending_callouts {
            None
        } else {
            host::post_to_quota(quota, path, body)
                .map_err(|e| warn!("callout to {} failed to start: {e:?}", quota.cluster))
                .ok()
        };
        self.metrics.record_dispatch(token.is_some());
        if token.is_some() {
            self.in_flight.set(self.in_flight.get().saturating_add(1));
        }
        token
    }

    /// A callout sent at `sent` came back: its status (`None`: no answer) and body, counted.
    fn answered(&self, num_headers: usize, body_size: usize, sent: Nanos, now: Nanos) -> (Option<u16>, Vec<u8>) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        let elapsed_ms = now.0.saturating_sub(sent.0) / 1_000_000;
        let status = host::callout_status(num_headers);
        let timeout_ms = self.config.quota.as_ref().map_or(0, |q| q.timeout_ms);
        self.metrics.record_callout(status, elapsed_ms, timeout_ms);
        let body = match status {
            Some(_) => hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten(),
            None => None,
        };
        (status, body.unwrap_or_default())
    }

    /// Remembers a lease this worker refilled, to give it back when idle.
    fn remember(&self, held: Held) {
        let mut list = self.held.borrow_mut();
        if !list.iter().any(|h| h.lease == held.lease) {
            if list.len() >= MAX_HELD {
                list.remove(0);
            }
            list.push(held);
        }
    }
}

impl TollgateRoot {
    /// Sends the refills ahead of need that requests handed over; one that cannot leave
    /// gives up its marker, so that a later request refills.
    fn send_ahead(&mut self, state: &State) {
        let calls = std::mem::take(&mut *state.ahead.borrow_mut());
        let Some(quota) = state.config.quota.as_ref() else {
            return;
        };
        for call in calls {
            let Callout { path, body, pending } = call;
            match state.dispatch(quota, path, &body) {
                Some(token) => self.refills.push((token, pending, host::now())),
                None => decision::abandon(&state.config, &HostSharedData, pending, host::now()),
            }
        }
    }
}

/// Leases a worker remembers at most; past it the oldest is forgotten (its balance is then
/// not given back: under-admission, never over).
const MAX_HELD: usize = 4096;

/// The root context's callouts are refills ahead of need and `POST /v1/return`s.
impl Context for TollgateRoot {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _trailers: usize) {
        let Some(state) = self.state.clone() else {
            return;
        };
        if let Some(i) = self.refills.iter().position(|(t, ..)| *t == token) {
            let (_, pending, sent) = self.refills.swap_remove(i);
            let now = host::now();
            let (status, body) = state.answered(num_headers, body_size, sent, now);
            let answer = match status {
                Some(status) => Answer::Response { status, body: &body },
                None => Answer::Failed,
            };
            let (held, report) = decision::refilled_ahead(&state.config, &HostSharedData, pending, answer, now);
            state.metrics.record_quota(&report);
            log_breaker(&report);
            if let Some(held) = held {
                state.remember(held);
            }
            return;
        }
        let status = host::callout_status(num_headers);
        let units = match status {
            Some(200) => hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .and_then(|body| lease::returned_units(&body)),
            _ => None,
        };
        if units.is_none() {
            warn!("lease return failed (status {status:?}): the units stay counted at the quota service");
        }
        state.metrics.record_return(units);
    }
}

impl RootContext for TollgateRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = host::plugin_configuration() else {
            error!("invalid configuration: the plugin configuration is empty; expected a JSON object");
            return false;
        };
        match Config::from_json(&bytes) {
            Ok(config) => {
                let metrics = Metrics::define(&config);
                let cache_size = config.quota.as_ref().map_or(1, |q| q.key_cache_size);
                info!(
                    "configured: mode={:?} tiers={} keys={} routes={} tracked keys<={} quota service={}",
                    config.mode,
                    config.tiers.len(),
                    config.keys.len(),
                    config.routes.len(),
                    u64::from(config.store.slots) * tollgate_core::config::SLOT_WAYS as u64,
                    config.quota.as_ref().map_or("none", |q| q.cluster.as_str()),
                );
                let holds = hold::any(&config);
                let keys = KeyCache::new(cache_size).with_holds(if holds { hold::MAX_HOLDS } else { 0 });
                let keys = RefCell::new(keys);
                let lease_tick = config.quota.as_ref().filter(|_| lease::any(&config)).map(lease::tick_ms);
                let hold_tick = holds.then_some(hold::TICK_MS);
                if let Some(ms) = lease_tick.into_iter().chain(hold_tick).min() {
                    let _ = hostcalls::set_tick_period(Duration::from_millis(ms));
                }
                // Queues are named per VM id: each worker needs a name of its own.
                let queue = lease_tick.and_then(|_| {
                    let name = format!("tollgate/refill/{:016x}", RandomState::new().hash_one(0u8));
                    hostcalls::register_shared_queue(&name).ok()
                });
                self.state = Some(Rc::new(State {
                    config,
                    metrics,
                    keys,
                    in_flight: Cell::new(0),
                    held: RefCell::new(Vec::new()),
                    ahead: RefCell::new(Vec::new()),
                    queue,
                }));
                true
            }
            Err(e) => {
                error!("invalid configuration: {e}");
                false
            }
        }
    }

    /// Gives back this worker's idle holds of local quota to shared data, and the balance
    /// of leases unused for `lease_idle_return_ms` to the quota service, from the root
    /// context: its callouts are not tied to a request's stream.
    fn on_tick(&mut self) {
        let Some(state) = self.state.clone() else {
            return;
        };
        self.send_ahead(&state);
        state.metrics.flush();
        let now = host::now();
        let idle = decision::return_idle_holds(&state.config, &HostSharedData, &mut state.keys.borrow_mut(), now);
        state.metrics.record_blocks_given_back(idle.shared);
        let Some(quota) = state.config.quota.as_ref() else {
            return;
        };
        // Blocks of leases whose record has moved on go straight back to the service.
        let mut returns = idle.to_service;
        let idle_ns = quota.lease_idle_return_ms.saturating_mul(1_000_000);
        let (stale_ns, retries) = (lease::marker_ttl_ns(quota), state.config.store.cas_retries);
        state.held.borrow_mut().retain(|held| {
            match lease::reclaim(&HostSharedData, held, idle_ns, stale_ns, retries, now) {
                Ok(Reclaim::Busy) | Err(_) => true,
                Ok(Reclaim::Gone) => false,
                Ok(Reclaim::Return(request)) => {
                    returns.push(request);
                    false
                }
            }
        });
        for request in returns {
            if let Err(e) = host::post_to_quota(quota, "/v1/return", &lease::return_body(&request)) {
                warn!("lease return to {} failed to start: {e:?}", quota.cluster);
                state.metrics.record_return(None);
            }
        }
    }

    /// A request handed over a refill ahead of need.
    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue_id) {}
        if let Some(state) = self.state.clone() {
            self.send_ahead(&state);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let state = self.state.clone()?;
        Some(Box::new(TollgateHttp { state, response_headers: Headers::new(), waiting: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct TollgateHttp {
    state: Rc<State>,
    response_headers: Headers,
    /// The decision waiting for a callout's answer, and when the callout left.
    waiting: Option<(Pending, Nanos)>,
}

impl Context for TollgateHttp {
    fn on_http_call_response(&mut self, _token: u32, num_headers: usize, body_size: usize, _trailers: usize) {
        let Some((pending, sent)) = self.waiting.take() else {
            return;
        };
        let state = Rc::clone(&self.state);
        let now = host::now();
        let (status, body) = state.answered(num_headers, body_size, sent, now);
        let answer = match status {
            Some(status) => Answer::Response { status, body: &body },
            None => Answer::Failed,
        };
        let step = {
            let mut keys = state.keys.borrow_mut();
            decision::resume(&state.config, &HostSharedData, &mut keys, pending, answer, now)
        };
        if self.carry_out(step) == Action::Continue {
            let _ = hostcalls::resume_http_request();
        }
    }
}

/// A stream that ends while its decision waits for a callout (the client went away; the
/// answer will find no context): the callout no longer counts as in flight, and a lease
/// refill gives up its marker.
impl Drop for TollgateHttp {
    fn drop(&mut self) {
        if let Some((pending, _)) = self.waiting.take() {
            self.state.in_flight.set(self.state.in_flight.get().saturating_sub(1));
            decision::abandon(&self.state.config, &HostSharedData, pending, host::now());
        }
    }
}

impl HttpContext for TollgateHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let state = Rc::clone(&self.state);
        let config = &state.config;
        let headers = abi::request_header_map().unwrap_or_else(|| {
            warn!("the request headers could not be read: deciding as if there were none");
            Vec::new()
        });
        let mut request = RequestInfo::from_header_map(&headers, config.identity.api_key_header.as_deref());
        // The client address is only needed for callers without a credential.
        let address =
            if request.authorization.is_empty() && request.api_key.is_empty() && !request.unreadable_credential {
                host::source_address()
            } else {
                None
            };
        request.client_address = address.as_deref();
        let step = {
            let mut keys = state.keys.borrow_mut();
            decision::begin(config, &HostSharedData, &mut keys, &request, host::now())
        };
        self.carry_out(step)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in self.response_headers.iter() {
            let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value);
        }
        Action::Continue
    }
}

impl TollgateHttp {
    /// Performs a step: a callout (pause), a local reply (pause), or continue.
    fn carry_out(&mut self, mut step: Step) -> Action {
        let state = Rc::clone(&self.state);
        loop {
            match step {
                Step::Done(decision) => return self.conclude(decision),
                Step::Call(call) => {
                    let Some(quota) = state.config.quota.as_ref() else {
                        return Action::Continue;
                    };
                    if state.dispatch(quota, call.path, &call.body).is_some() {
                        self.waiting = Some((call.pending, host::now()));
                        return Action::Pause;
                    }
                    let now = host::now();
                    let mut keys = state.keys.borrow_mut();
                    step =
                        decision::resume(&state.config, &HostSharedData, &mut keys, call.pending, Answer::Failed, now);
                }
            }
        }
    }

    fn conclude(&mut self, mut decision: Decision) -> Action {
        let state = Rc::clone(&self.state);
        state.metrics.record(&decision);
        if let Some(held) = decision.lease.take() {
            state.remember(held);
        }
        if let Some(call) = decision.refill.take() {
            let mut ahead = state.ahead.borrow_mut();
            ahead.push(*call);
            // One ring per batch; without a queue (or if it fails) the tick sends them.
            if ahead.len() == 1 {
                if let Some(queue) = state.queue {
                    let _ = hostcalls::enqueue_shared_queue(queue, Some(b"r"));
                }
            }
        }
        log_decision(&state.config, &decision);
        match decision.reply {
            Some(reply) => {
                let headers: Vec<(&str, &str)> = reply.headers.iter().collect();
                if hostcalls::send_http_response(u32::from(reply.status), headers, Some(reply.body.as_bytes())).is_err()
                {
                    warn!("could not send the local reply");
                }
                Action::Pause
            }
            None => {
                self.response_headers = decision.response_headers;
                Action::Continue
            }
        }
    }
}

/// One line per refused request, at `info` (`--component-log-level wasm:warn` silences it).
/// Key callers are named by key id; anonymous ones by a hash of their network.
fn log_decision(config: &Config, decision: &Decision) {
    let level = match decision.outcome {
        Outcome::Allowed | Outcome::Unlimited => Level::Debug,
        _ => Level::Info,
    };
    // Admitted requests log at debug, off by default: then nothing below runs (naming an
    // anonymous caller hashes its network).
    if log::log_enabled!(level) {
        let tier = decision.tier.and_then(|t| config.tiers.get(t)).map_or("none", |t| t.name.as_str());
        let caller = decision.caller_name(config).map_or_else(|| "-".to_owned(), loggable_caller);
        let caller = caller.as_str();
        let limit = decision.limited_by.as_deref().unwrap_or("-");
        let outcome = decision.outcome.as_str();
        match decision.outcome {
            Outcome::Limited
            | Outcome::ShadowLimited
            | Outcome::StoreRefused
            | Outcome::StoreBypassed
            | Outcome::QuotaUnavailable => {
                info!("decision={outcome} tier={tier} limit={limit} caller={caller}")
            }
            Outcome::Unauthenticated | Outcome::Malformed | Outcome::ShadowRejected => {
                info!("decision={outcome} tier={tier}")
            }
            Outcome::Allowed | Outcome::Unlimited => debug!("decision={outcome} tier={tier} caller={caller}"),
        }
    }
    log_breaker(&decision.quota);
}

fn log_breaker(quota: &QuotaReport) {
    if quota.breaker_opened {
        warn!("quota service breaker opened: callouts stop for the cooldown");
    }
    if quota.breaker_closed {
        info!("quota service breaker closed: callouts resume");
    }
}

/// `key:<id>` as is; `ip:<network>` as `ip#<12 hex digits of its SHA-256>`.
fn loggable_caller(caller: &str) -> String {
    match caller.strip_prefix("ip:") {
        Some(network) => {
            let digest = tollgate_core::identity::hex(&tollgate_core::identity::sha256(network.as_bytes()));
            format!("ip#{}", digest.get(..12).unwrap_or(&digest))
        }
        None => caller.to_owned(),
    }
}
