//! What the root context and every HTTP context of one worker share: the configuration,
//! the stats, and the core's [`Worker`] state; plus the host side of callouts.

use std::cell::{Cell, RefCell};

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::BufferType;
use tollgate_core::decision::{Answer, Callout};
use tollgate_core::worker::Worker;
use tollgate_core::{Config, Nanos};

use crate::host;
use crate::metrics::Metrics;

pub struct State {
    pub config: Config,
    pub metrics: Metrics,
    pub worker: RefCell<Worker>,
    /// Callouts that requests handed over for the root context to send: a callout a
    /// request sends is answered to that request's context, gone by then.
    pub handed: RefCell<Vec<Handed>>,
    /// This worker's shared queue: a request rings it to have the root context send what
    /// it handed over at once (else the next tick does).
    pub queue: Option<u32>,
    /// The quota service refused this worker's service token once: logged, not again.
    pub token_refused: Cell<bool>,
}

/// A callout handed over to the root context.
pub enum Handed {
    /// A lease refill ahead of need (boxed: it carries its decision).
    Refill(Box<Callout>),
    /// A `POST /v1/settle` body, and how many times it was sent already.
    Settle(String, u8),
}

/// A callout's answer as the host gave it: the status (`None`: no answer) and the body.
pub struct Reply {
    pub status: Option<u16>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn answer(&self) -> Answer<'_> {
        match self.status {
            Some(status) => Answer::Response { status, body: &self.body },
            None => Answer::Failed,
        }
    }
}

impl State {
    /// Hands a callout over to the root context; the first of a batch rings the queue (if
    /// that fails, the tick sends it).
    pub fn hand_over(&self, call: Handed) {
        let mut handed = self.handed.borrow_mut();
        handed.push(call);
        if handed.len() == 1 {
            if let Some(queue) = self.queue {
                let _ = hostcalls::enqueue_shared_queue(queue, Some(b"r"));
            }
        }
    }

    /// Starts a callout unless the worker has `max_pending_callouts` in flight; its token.
    pub fn dispatch(&self, path: &str, body: &str) -> Option<u32> {
        let quota = self.config.quota.as_ref()?;
        let token = if self.worker.borrow_mut().start_callout(&self.config) {
            let token = host::post_to_quota(quota, path, body)
                .map_err(|e| warn!("callout to {} failed to start: {e:?}", quota.cluster))
                .ok();
            if token.is_none() {
                self.worker.borrow_mut().end_callout();
            }
            token
        } else {
            None
        };
        self.metrics.record_dispatch(token.is_some());
        token
    }

    /// A callout sent at `sent` came back: its status and body, counted.
    pub fn answered(&self, num_headers: usize, body_size: usize, sent: Nanos, now: Nanos) -> Reply {
        self.worker.borrow_mut().end_callout();
        let elapsed_ms = now.0.saturating_sub(sent.0) / 1_000_000;
        let status = host::callout_status(num_headers);
        let timeout_ms = self.config.quota.as_ref().map_or(0, |q| q.timeout_ms);
        self.metrics.record_callout(status, elapsed_ms, timeout_ms);
        if status == Some(401) && !self.token_refused.replace(true) {
            warn!(
                "the quota service answered 401: it wants the token it was started with (--service-token) in \
                 quota_service.token; until then each callout fails and failure_mode applies"
            );
        }
        let body = match status {
            Some(_) => hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten(),
            None => None,
        };
        Reply { status, body: body.unwrap_or_default() }
    }
}
