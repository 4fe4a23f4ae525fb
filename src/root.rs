//! The root context of one worker: it reads the configuration, and performs the worker's
//! tick and the callouts that outlive a request (refills ahead of need, settlements,
//! lease returns).

use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;
use std::time::Duration;

use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use tollgate_core::decision::{self, Callout, Pending, SETTLE_PATH};
use tollgate_core::lease;
use tollgate_core::worker::{self, Worker};
use tollgate_core::{Config, Nanos};

use crate::host::{self, HostSharedData};
use crate::http::TollgateHttp;
use crate::metrics::Metrics;
use crate::state::{Handed, State};

#[derive(Default)]
pub struct TollgateRoot {
    state: Option<Rc<State>>,
    /// Refills ahead of need in flight: the callout's token, its decision, when it left.
    refills: Vec<(u32, Pending, Nanos)>,
    /// Settlements in flight: the callout's token, its body, times sent, when it left.
    settles: Vec<(u32, String, u8, Nanos)>,
}

/// Times a settlement is sent before it counts as failed (it is applied once, however
/// often it arrives). A failed one leaves the reservation charged at the service.
const SETTLE_SENDS: u8 = 5;

impl TollgateRoot {
    /// Sends what requests handed over. A refill that cannot leave releases its marker, so
    /// that a later request refills; a settlement that cannot leave waits for the tick.
    fn send_handed(&mut self, state: &State) {
        let calls = std::mem::take(&mut *state.handed.borrow_mut());
        let mut later = Vec::new();
        for call in calls {
            match call {
                Handed::Refill(call) => {
                    let Callout { path, body, pending } = *call;
                    match state.dispatch(path, &body) {
                        Some(token) => self.refills.push((token, pending, host::now())),
                        None => decision::abandon(&state.config, &HostSharedData, pending, host::now()),
                    }
                }
                Handed::Settle(body, sends) => match state.dispatch(SETTLE_PATH, &body) {
                    Some(token) => self.settles.push((token, body, sends.saturating_add(1), host::now())),
                    None => later.extend(retry(state, body, sends.saturating_add(1))),
                },
            }
        }
        state.handed.borrow_mut().extend(later);
    }
}

/// A settlement to send again, unless it was sent [`SETTLE_SENDS`] times (then counted
/// as failed).
fn retry(state: &State, body: String, sends: u8) -> Option<Handed> {
    if sends < SETTLE_SENDS {
        return Some(Handed::Settle(body, sends));
    }
    warn!("a settlement was not accepted after {sends} tries: the reservation stays charged at the quota service");
    state.metrics.record_settle_call(false);
    None
}

/// The root context's callouts are refills ahead of need, settlements and `POST /v1/return`s.
impl Context for TollgateRoot {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _trailers: usize) {
        let Some(state) = self.state.clone() else {
            return;
        };
        if let Some(i) = self.refills.iter().position(|(t, ..)| *t == token) {
            let (_, pending, sent) = self.refills.swap_remove(i);
            let now = host::now();
            let reply = state.answered(num_headers, body_size, sent, now);
            let (lease, report) =
                decision::refilled_ahead(&state.config, &HostSharedData, pending, reply.answer(), now);
            state.metrics.record_quota(&report);
            crate::logs::breaker(&report);
            if let Some(lease) = lease {
                state.worker.borrow_mut().remember(lease);
            }
            return;
        }
        if let Some(i) = self.settles.iter().position(|(t, ..)| *t == token) {
            let (_, body, sends, sent) = self.settles.swap_remove(i);
            let reply = state.answered(num_headers, body_size, sent, host::now());
            match reply.status {
                Some(200) => state.metrics.record_settle_call(true),
                // Refused as invalid: sending it again would not help.
                Some(status) if (400..500).contains(&status) && status != 429 => {
                    warn!("a settlement was refused (status {status}): the reservation stays charged at the quota service");
                    state.metrics.record_settle_call(false);
                }
                _ => state.handed.borrow_mut().extend(retry(&state, body, sends)),
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
        let config = match Config::from_json(&bytes) {
            Ok(config) => config,
            Err(e) => {
                error!("invalid configuration: {e}");
                return false;
            }
        };
        info!(
            "configured: mode={:?} tiers={} keys={} routes={} tracked keys={} quota service={}",
            config.mode,
            config.tiers.len(),
            config.keys.len(),
            config.routes.len(),
            config.store.max_tracked_keys,
            config.quota.as_ref().map_or("none", |q| q.cluster.as_str()),
        );
        if let Some(ms) = worker::tick_ms(&config) {
            let _ = hostcalls::set_tick_period(Duration::from_millis(ms));
        }
        // Queues are named per VM id: each worker needs a name of its own.
        let queue = (worker::leases(&config) || worker::settles(&config)).then(|| {
            let name = format!("tollgate/refill/{:016x}", RandomState::new().hash_one(0u8));
            hostcalls::register_shared_queue(&name).ok()
        });
        crate::logs::configure(&config);
        let worker = RefCell::new(Worker::for_config(&config));
        let metrics = Metrics::define(&config);
        let handed = RefCell::new(Vec::new());
        self.state = Some(Rc::new(State {
            config,
            metrics,
            worker,
            handed,
            queue: queue.flatten(),
            token_refused: Cell::new(false),
        }));
        true
    }

    /// Sends handed-over callouts, flushes stats, and performs the worker's tick: idle
    /// blocks given back, idle leases returned to the quota service, from the root context,
    /// whose callouts are not tied to a request's stream.
    fn on_tick(&mut self) {
        let Some(state) = self.state.clone() else {
            return;
        };
        self.send_handed(&state);
        state.metrics.flush();
        let tick = decision::tick(&state.config, &HostSharedData, &mut state.worker.borrow_mut(), host::now());
        state.metrics.record_blocks_given_back(tick.blocks_given_back);
        let Some(quota) = state.config.quota.as_ref() else {
            return;
        };
        for request in tick.returns {
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
            self.send_handed(&state);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let state = self.state.clone()?;
        Some(Box::new(TollgateHttp::new(state)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
