//! The root context (configuration, stats) and the per-request HTTP context, which only
//! gathers the request's facts, asks `tollgate_core::decide`, and carries out the answer.

use std::rc::Rc;

use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType};
use tollgate_core::decision::Outcome;
use tollgate_core::{decide, Config, RequestInfo};

use crate::host::{self, HostSharedData};
use crate::metrics::Metrics;

#[derive(Default)]
pub struct TollgateRoot {
    state: Option<Rc<State>>,
}

struct State {
    config: Config,
    metrics: Metrics,
}

impl Context for TollgateRoot {}

impl RootContext for TollgateRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = host::plugin_configuration() else {
            error!("invalid configuration: the plugin configuration is empty; expected a JSON object");
            return false;
        };
        match Config::from_json(&bytes) {
            Ok(config) => {
                let metrics = Metrics::define(&config);
                info!(
                    "configured: mode={:?} tiers={} keys={} routes={} tracked keys<={}",
                    config.mode,
                    config.tiers.len(),
                    config.keys.len(),
                    config.routes.len(),
                    u64::from(config.store.slots) * tollgate_core::config::SLOT_WAYS as u64
                );
                self.state = Some(Rc::new(State { config, metrics }));
                true
            }
            Err(e) => {
                error!("invalid configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let state = self.state.clone()?;
        Some(Box::new(TollgateHttp { state, response_headers: Vec::new() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct TollgateHttp {
    state: Rc<State>,
    response_headers: Vec<(&'static str, String)>,
}

impl Context for TollgateHttp {}

impl HttpContext for TollgateHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let config = &self.state.config;
        let headers = hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
        let mut request = RequestInfo::from_headers(&headers, config.identity.api_key_header.as_deref());
        // The client address is only needed for callers without a credential.
        let address =
            if request.authorization.is_empty() && request.api_key.is_empty() { host::source_address() } else { None };
        request.client_address = address.as_deref();

        let decision = decide(config, &HostSharedData, &request, host::now());
        self.state.metrics.record(decision.tier, decision.outcome, &decision.store);
        log_decision(config, &decision);

        match decision.reply {
            Some(reply) => {
                let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
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

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in self.response_headers.drain(..) {
            let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, &value);
        }
        Action::Continue
    }
}

fn log_decision(config: &Config, decision: &tollgate_core::Decision) {
    let tier = decision.tier.and_then(|t| config.tiers.get(t)).map_or("none", |t| t.name.as_str());
    let caller = decision.caller.as_deref().unwrap_or("-");
    let limit = decision.limited_by.as_deref().unwrap_or("-");
    match decision.outcome {
        Outcome::Limited | Outcome::ShadowLimited | Outcome::StoreRefused | Outcome::StoreBypassed => {
            info!("decision={} tier={tier} limit={limit} caller={caller}", decision.outcome.as_str())
        }
        Outcome::Unauthenticated | Outcome::Malformed | Outcome::ShadowRejected => {
            info!("decision={} tier={tier}", decision.outcome.as_str())
        }
        Outcome::Allowed | Outcome::Unlimited => {
            debug!("decision={} tier={tier} caller={caller}", decision.outcome.as_str())
        }
    }
}
