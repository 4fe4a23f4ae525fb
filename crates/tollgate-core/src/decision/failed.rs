//! Failed credentials: requests whose credential fails (malformed, unknown or revoked)
//! are counted per client network, the network the anonymous tier keys by, in the slot
//! table like a local limit (`identity.failed_credentials`, 20 per minute by default). A
//! verification is counted before its callout leaves, and given back when the key turns
//! out to be known: a network past the limit makes no callout, so a flood of made-up
//! tokens from one network costs at most the limit's callouts, whatever its size.

use super::outcome::{Decision, Outcome};
use super::Ctx;
use crate::config::{Config, Limit};
use crate::hash::identity_fingerprint;
use crate::headers::Headers;
use crate::identity::{client_network, RequestInfo};
use crate::json_write::JsonObject;
use crate::limit::{evaluate, refund, LimitState};
use crate::reply::LocalReply;
use crate::store::{self, words_of, Change, Limits, SharedStore, SlotRef, StoredLimit};
use crate::time::{ceil_secs, rfc3339, Nanos};

/// The pseudo-tier of the networks' counts: no tier can have this name (a tier name has
/// no '/'), so they never share an entry with a caller's limits.
const PSEUDO_TIER: &str = "tollgate/failed-credentials";

/// A failure counted for a network: its entry in the slot table, to give it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counted {
    fingerprint: u64,
}

/// The client network of a request with a credential: the host gives the address only
/// when asked ([`RequestInfo::client_address_of`]), as a configured key never needs it.
fn network(config: &Config, request: &RequestInfo<'_>) -> String {
    let identity = &config.identity;
    let looked_up;
    let address = match request.client_address {
        Some(address) => Some(address),
        None => {
            looked_up = request.client_address_of.and_then(|of| of());
            looked_up.as_deref()
        }
    };
    client_network(address, identity.ipv4_prefix, identity.ipv6_prefix)
}

/// Counts one failed credential of the request's network: `Ok(Some(_))` counted (give it
/// back with [`give_back`] if the credential turns out good), `Ok(None)` not counted (the
/// limit is off, or shared data failed: the request goes on as without it), or
/// `Err(decision)`: the network is past its limit, a 429 (boxed: the rare case).
pub(super) fn count<S: SharedStore + ?Sized>(
    cx: Ctx<'_, S>,
    request: &RequestInfo<'_>,
) -> Result<Option<Counted>, Box<Decision>> {
    let config = cx.config;
    let Some(limit) = config.identity.failed_credentials.as_ref() else {
        return Ok(None);
    };
    let caller = ["ip:", network(config, request).as_str()].concat();
    let fingerprint = identity_fingerprint(PSEUDO_TIER, &caller);
    let slot = SlotRef::from_fingerprint(fingerprint, config.store.slots);
    let now = cx.now;
    let mut refused = None;
    let (result, report) = store::update(cx.store, &slot, now, config.store.cas_retries, |stored| {
        let e = evaluate(limit, state_of(limit, stored), now, 1);
        if !e.admitted {
            refused = Some(e.retry_after_ns);
            return Change::Keep;
        }
        refused = None;
        Change::Write { states: one_state(limit, e.state.words()), idle_at: e.idle_at }
    });
    match (result, refused) {
        (Err(_), _) => Ok(None),
        (Ok(()), None) => Ok(Some(Counted { fingerprint })),
        (Ok(()), Some(retry_after_ns)) => {
            let mut d = Decision::refuse(
                Outcome::CredentialsLimited,
                too_many_failures(limit, retry_after_ns, now),
                config.mode,
            );
            d.store = report;
            d.caller = Some(super::Caller::Named(caller));
            Err(Box::new(d))
        }
    }
}

/// Gives back a failure counted for a credential that turned out good.
pub(super) fn give_back<S: SharedStore + ?Sized>(cx: Ctx<'_, S>, counted: Counted) {
    let config = cx.config;
    let Some(limit) = config.identity.failed_credentials.as_ref() else {
        return;
    };
    let slot = SlotRef::from_fingerprint(counted.fingerprint, config.store.slots);
    let now = cx.now;
    let _ = store::update(cx.store, &slot, now, config.store.cas_retries, |stored| {
        let Some(state) = state_of(limit, stored) else {
            return Change::Keep;
        };
        let e = evaluate(limit, Some(refund(limit, state, now, 1)), now, 0);
        let states = if e.idle_at > now { one_state(limit, e.state.words()) } else { Limits::new() };
        Change::Write { states, idle_at: e.idle_at }
    });
}

fn state_of(limit: &Limit, stored: &[StoredLimit]) -> Option<LimitState> {
    words_of(stored, limit.fingerprint).map(|words| LimitState::from_words(limit.kind, words))
}

fn one_state(limit: &Limit, words: [u64; 2]) -> Limits {
    std::iter::once(StoredLimit { fingerprint: limit.fingerprint, words }).collect()
}

/// 429 for a network past its limit of failed credentials: what happened, when to try
/// again, and what to check.
pub(super) fn too_many_failures(limit: &Limit, retry_after_ns: u64, now: Nanos) -> LocalReply {
    let retry_after = ceil_secs(retry_after_ns).max(1);
    let retry_at = rfc3339(now.saturating_add(retry_after_ns));
    let message = format!(
        "Too many requests with a credential that is not valid came from your network: at most {} per {} are checked. \
         Try again in {retry_after} s (at {retry_at}), and check that the whole key is sent as 'Authorization: Bearer <token>'.",
        limit.quota, limit.window.text
    );
    let mut headers = Headers::one("retry-after", &retry_after.to_string());
    headers.push("content-type", "application/json");
    let body = JsonObject::new()
        .str("code", "too_many_failed_credentials")
        .num("limit", limit.quota)
        .str("message", &message)
        .null("param")
        .str("resets_at", &retry_at)
        .num("retry_after_seconds", retry_after)
        .str("type", "rate_limit_error")
        .str("window", &limit.window.text)
        .finish_as_error();
    LocalReply { status: 429, headers, body }
}
