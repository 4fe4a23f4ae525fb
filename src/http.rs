//! The per-request HTTP context: it gathers the request's facts, asks the core what to do,
//! and carries it out: reply, continue with headers, or call the quota service first.

use std::rc::Rc;

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use tollgate_core::cost::reading::Reading;
use tollgate_core::cost::usage_request::{with_usage, Stripper};
use tollgate_core::cost::Api;
use tollgate_core::decision::{self, Answer, Ending, Pending, Reservation, Step};
use tollgate_core::headers::Headers;
use tollgate_core::{Decision, Nanos, RequestInfo};

use crate::abi;
use crate::host::{self, HostSharedData};
use crate::state::{Handed, State};

pub struct TollgateHttp {
    state: Rc<State>,
    response_headers: Headers,
    /// The decision waiting for a callout's answer, and when the callout left.
    waiting: Option<(Pending, Nanos)>,
    /// On a metered route, the request's header map, kept until its body has arrived
    /// (the decision needs both), the most body bytes to buffer, and the route's API.
    awaiting_body: Option<(Vec<u8>, usize, Api)>,
    /// A chat stream tollgate asked upstream for its usage: the usage event is taken back
    /// out before the client gets the stream.
    stripper: Option<Stripper>,
    /// What this request reserved of limits of images or tokens, settled once the
    /// response has ended; with the response's status and reading.
    reserved: Option<Reserved>,
}

struct Reserved {
    reservation: Box<Reservation>,
    /// `Some(true)`: a 2xx answer; `None`: no answer yet.
    succeeded: Option<bool>,
    reading: Option<Reading>,
}

impl TollgateHttp {
    pub fn new(state: Rc<State>) -> TollgateHttp {
        TollgateHttp {
            state,
            response_headers: Headers::new(),
            waiting: None,
            awaiting_body: None,
            stripper: None,
            reserved: None,
        }
    }
}

impl Context for TollgateHttp {
    fn on_http_call_response(&mut self, _token: u32, num_headers: usize, body_size: usize, _trailers: usize) {
        let Some((pending, sent)) = self.waiting.take() else {
            return;
        };
        let state = Rc::clone(&self.state);
        let now = host::now();
        let reply = state.answered(num_headers, body_size, sent, now);
        let step = {
            let mut worker = state.worker.borrow_mut();
            decision::resume(&state.config, &HostSharedData, &mut worker, pending, reply.answer(), now)
        };
        if self.carry_out(step) == Action::Continue {
            let _ = hostcalls::resume_http_request();
        }
    }
}

/// A stream that ends while its decision waits for a callout (the client went away; the
/// answer will find no context): the callout no longer counts as in flight, and a lease
/// refill releases its marker. A reservation not settled yet (the response never ended)
/// is settled with what is known.
impl Drop for TollgateHttp {
    fn drop(&mut self) {
        if let Some((pending, _)) = self.waiting.take() {
            let mut worker = self.state.worker.borrow_mut();
            worker.end_callout();
            pending.release(&mut worker);
            drop(worker);
            decision::abandon(&self.state.config, &HostSharedData, pending, host::now());
        }
        self.settle();
    }
}

impl HttpContext for TollgateHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let headers = abi::request_header_map().unwrap_or_else(|| {
            warn!("the request headers could not be read: deciding as if there were none");
            Vec::new()
        });
        let api_key_header = self.state.config.identity.api_key_header.as_deref();
        let request = RequestInfo::from_header_map(&headers, api_key_header);
        match decision::meter_of(&self.state.config, &request).map(|m| (m.max_body_bytes, m.api)) {
            // A metered route is decided once its body is in. The headers go on (pausing
            // here would stop Envoy from ever handing the filter the body); the body waits.
            Some((limit, api)) if !end_of_stream => {
                if api == Api::OpenaiChat {
                    // The body may be rewritten to ask for a stream's usage: its length
                    // would change, and the headers leave before it is read.
                    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "content-length", None);
                }
                self.awaiting_body = Some((headers, limit, api));
                Action::Continue
            }
            Some(_) => self.decide(&headers, Some(&[])),
            None => self.decide(&headers, None),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some((_, limit, _)) = self.awaiting_body.as_ref() else {
            return Action::Continue;
        };
        if body_size > *limit {
            let limit = *limit;
            self.awaiting_body = None;
            return self.conclude(decision::body_too_large(&self.state.config, limit));
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.body_complete(body_size)
    }

    /// A body followed by trailers never ends its last data frame with `end_of_stream`:
    /// the body is whole when the trailers come.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let Some(&(_, limit, _)) = self.awaiting_body.as_ref() else {
            return Action::Continue;
        };
        let size = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, limit.saturating_add(1))
            .ok()
            .flatten()
            .map_or(0, |b| b.len());
        if size > limit {
            self.awaiting_body = None;
            return self.conclude(decision::body_too_large(&self.state.config, limit));
        }
        self.body_complete(size)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        for (name, value) in self.response_headers.iter() {
            let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value);
        }
        if let Some(reserved) = self.reserved.as_mut() {
            let header = |name: &str| hostcalls::get_map_value(MapType::HttpResponseHeaders, name).ok().flatten();
            let status = header(":status").and_then(|s| s.parse::<u16>().ok());
            reserved.succeeded = Some(status.is_some_and(|s| (200..300).contains(&s)));
            reserved.reading = Some(Reading::for_content_type(header("content-type").as_deref()));
            if end_of_stream {
                self.settle();
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let reading = self.reserved.as_mut().and_then(|r| r.reading.as_mut());
        if reading.is_none() && self.stripper.is_none() {
            return Action::Continue;
        }
        // With the body streaming through, the buffer holds this chunk only.
        let chunk =
            hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
        if let Some(reading) = reading {
            reading.feed(&chunk);
        }
        if let Some(stripper) = self.stripper.as_mut() {
            let passed = stripper.pass(&chunk, end_of_stream);
            if passed != chunk {
                let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &passed);
            }
        }
        if end_of_stream {
            self.settle();
        }
        Action::Continue
    }
}

impl TollgateHttp {
    /// The whole body of a metered request (`body_size` bytes) is in: decide it.
    fn body_complete(&mut self, body_size: usize) -> Action {
        let Some((headers, _, api)) = self.awaiting_body.take() else {
            return Action::Continue;
        };
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size).ok().flatten().unwrap_or_default();
        // A chat that streams without asking for its usage asks for it upstream, so that
        // it can be settled; the client still gets the stream it asked for.
        if let Some(asking) = with_usage(api, &body) {
            if hostcalls::set_buffer(BufferType::HttpRequestBody, 0, body_size, &asking).is_ok() {
                self.stripper = Some(Stripper::default());
            }
        }
        self.decide(&headers, Some(&body))
    }

    /// Decides the request of this header map (and, on a metered route, body).
    fn decide(&mut self, headers: &[u8], body: Option<&[u8]>) -> Action {
        let state = Rc::clone(&self.state);
        let config = &state.config;
        let mut request = RequestInfo::from_header_map(headers, config.identity.api_key_header.as_deref());
        request.body = body;
        // The client address is only needed for callers without a credential.
        let address =
            if request.authorization.is_empty() && request.api_key.is_empty() && !request.unreadable_credential {
                host::source_address()
            } else {
                None
            };
        request.client_address = address.as_deref();
        request.client_address_of = Some(host::source_address);
        let step = {
            let mut worker = state.worker.borrow_mut();
            decision::begin(config, &HostSharedData, &mut worker, &request, host::now())
        };
        self.carry_out(step)
    }

    /// Performs a step: a callout (pause), a local reply (pause), or continue.
    fn carry_out(&mut self, mut step: Step) -> Action {
        let state = Rc::clone(&self.state);
        loop {
            match step {
                Step::Done(decision) => return self.conclude(decision),
                Step::Call(call) => {
                    if state.config.quota.is_none() {
                        return Action::Continue;
                    }
                    if state.dispatch(call.path, &call.body).is_some() {
                        self.waiting = Some((call.pending, host::now()));
                        return Action::Pause;
                    }
                    let now = host::now();
                    let mut worker = state.worker.borrow_mut();
                    step = decision::resume(
                        &state.config,
                        &HostSharedData,
                        &mut worker,
                        call.pending,
                        Answer::Failed,
                        now,
                    );
                }
            }
        }
    }

    /// Settles the request's reservation, if it has one not settled yet: to the usage the
    /// response reported, or by the rules for a failed or unreported one.
    fn settle(&mut self) {
        let Some(Reserved { reservation, succeeded, reading }) = self.reserved.take() else {
            return;
        };
        let ending = match (succeeded, reading.as_ref().and_then(Reading::usage)) {
            (Some(true), Some(usage)) => Ending::Used(usage),
            (Some(true), None) => Ending::Unreported,
            (Some(false) | None, _) => Ending::Failed,
        };
        let state = &self.state;
        let settlement = {
            let mut worker = state.worker.borrow_mut();
            decision::settle(&state.config, &HostSharedData, &mut worker, &reservation, ending, host::now())
        };
        let settled = (!settlement.store_failed).then_some(&settlement.settled);
        state.metrics.record_settled(reservation.tier(), settled);
        if let Some(body) = settlement.call {
            state.hand_over(Handed::Settle(body, 0));
        }
    }

    fn conclude(&mut self, mut decision: Decision) -> Action {
        let state = Rc::clone(&self.state);
        state.metrics.record(&decision);
        if let Some(reservation) = decision.reservation.take() {
            self.reserved = Some(Reserved { reservation, succeeded: None, reading: None });
        }
        if let Some(lease) = decision.lease.take() {
            state.worker.borrow_mut().remember(lease);
        }
        if let Some(call) = decision.refill.take() {
            state.hand_over(Handed::Refill(call));
        }
        crate::logs::decision(&state.config, &decision);
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
