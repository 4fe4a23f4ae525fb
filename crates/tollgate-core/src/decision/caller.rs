//! From the credential to the caller: a configured key (found by its tag, else by its
//! SHA-256), a key the quota service verifies (cached per worker), or, without a
//! credential, the anonymous tier keyed by the client's network. A credential that fails
//! is counted against its network ([`super::failed`]) before any verification.

use super::failed;
use super::fallback::{breaker_admits, record_breaker};
use super::metering::{meter, Identified};
use super::outcome::{Caller, Decision, Outcome, QuotaReport};
use super::{to_json, Answer, Asked, Callout, Ctx, Pending, Stage, Step, Verify};
use crate::hash::{hex, sha256};
use crate::identity::{client_network, token, RequestInfo};
use crate::json_write::JsonObject;
use crate::keycache::{CachedKey, Lookup, StaticKey};
use crate::quota::{VerifyRequest, VerifyResponse};
use crate::reply::{self, LocalReply};
use crate::store::SharedStore;
use crate::worker::Worker;

/// Identifies the caller of a request on a metered route, then meters them.
pub(super) fn identify<S: SharedStore + ?Sized>(
    cx: Ctx<'_, S>,
    worker: &mut Worker,
    asked: Asked,
    request: &RequestInfo<'_>,
) -> Step {
    let config = cx.config;
    let report = QuotaReport::default();
    match token(&config.identity, request) {
        Err(e) => match failed::count(cx, request) {
            Err(refused) => Step::Done(*refused),
            Ok(_) => Step::Done(Decision::refuse(Outcome::Malformed, reply::malformed_credential(e), config.mode)),
        },
        Ok(Some(token)) => {
            // A configured key this worker has seen is found without a SHA-256 (see
            // `KeyCache::tag`); other tokens are hashed once, here.
            let tag = worker.keys.tag(token);
            let mut hash = None;
            let known = worker.keys.static_key(tag).or_else(|| {
                let index = config.key_index_by_hash(hash.insert(sha256(token.as_bytes())))?;
                let key = config.keys.get(index)?;
                let known = StaticKey { index, tier: key.tier, fingerprint: key.fingerprint };
                worker.keys.remember_static_key(tag, known, config.keys.len());
                Some(known)
            });
            if let Some(key) = known {
                let who = Identified::key(Caller::Key(key.index), key.tier, Some(key.fingerprint));
                return meter(cx, Some(&mut worker.blocks), asked, who, report);
            }
            let hash = hash.unwrap_or_else(|| sha256(token.as_bytes()));
            let Some(quota) = config.quota.as_ref().filter(|q| q.verify_keys) else {
                return unknown_key(cx, request);
            };
            let stale = match worker.keys.get(&hash, cx.now) {
                Lookup::Fresh(CachedKey::Known { id, tier }) => {
                    let who = Identified::key(verified_caller(&id), tier, None);
                    return meter(cx, Some(&mut worker.blocks), asked, who, report);
                }
                Lookup::Fresh(CachedKey::Unknown) => return unknown_key(cx, request),
                Lookup::Stale(CachedKey::Known { id, tier }) => Some((id, tier)),
                Lookup::Stale(CachedKey::Unknown) | Lookup::Missing => None,
            };
            if !breaker_admits(cx, quota) {
                let report = QuotaReport { short_circuited: true, ..report };
                return verify_unavailable(cx, asked, stale, report);
            }
            // Counted before the callout leaves (given back if the key is good), so that a
            // network past its limit of failures makes no callout.
            if !worker.start_verification(config) {
                let mut d = Decision::refuse(Outcome::QuotaUnavailable, verifications_full(), config.mode);
                d.quota = QuotaReport { verifications_full: true, ..report };
                return Step::Done(d);
            }
            let counted = match failed::count(cx, request) {
                Ok(counted) => counted,
                Err(refused) => {
                    worker.end_verification();
                    return Step::Done(*refused);
                }
            };
            let verify = Verify { asked, hash, stale, counted };
            let pending = Pending { stage: Stage::Verify(verify), quota: report };
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
                let who = Identified {
                    tier,
                    caller: Caller::Named(["ip:", network.as_str()].concat()),
                    fingerprint: None,
                    anonymous: true,
                };
                meter(cx, Some(&mut worker.blocks), asked, who, report)
            }
            None => Step::Done(Decision::refuse(Outcome::Unauthenticated, reply::missing_token(), config.mode)),
        },
    }
}

/// The quota service's answer to a key verification: meter the caller of a known key, or
/// refuse an unknown one; both are cached for the worker.
pub(super) fn verified<S: SharedStore + ?Sized>(
    cx: Ctx<'_, S>,
    worker: &mut Worker,
    verify: Verify,
    answer: Answer<'_>,
    mut report: QuotaReport,
) -> Step {
    let Verify { asked, hash, stale, counted } = verify;
    worker.end_verification();
    let config = cx.config;
    let Some(quota) = config.quota.as_ref() else {
        return Step::Done(Decision::new(Outcome::Unlimited));
    };
    let verified = match answer {
        Answer::Response { status: 200, body } => {
            let verified = serde_json::from_slice::<VerifyResponse>(body).ok();
            report.unreadable_answers += u32::from(verified.is_none());
            verified
        }
        _ => None,
    };
    record_breaker(cx, quota, verified.is_some(), &mut report);
    let Some(verified) = verified else {
        return verify_unavailable(cx, asked, stale, report);
    };
    let tier = verified.tier.as_deref().and_then(|name| config.tiers.iter().position(|t| t.name == name));
    match (verified.known, verified.id, tier) {
        (true, Some(id), Some(tier)) => {
            if let Some(counted) = counted {
                failed::give_back(cx, counted);
            }
            worker.keys.put(hash, CachedKey::Known { id: id.clone(), tier }, cx.now, quota.key_cache_ttl_ms);
            let who = Identified::key(verified_caller(&id), tier, None);
            meter(cx, Some(&mut worker.blocks), asked, who, report)
        }
        _ => {
            worker.keys.put(hash, CachedKey::Unknown, cx.now, quota.negative_cache_ttl_ms);
            Step::Done(Decision::refuse(Outcome::Unauthenticated, reply::invalid_token(), config.mode))
        }
    }
}

/// Key verification could not be done: a stale positive entry still identifies the caller
/// (decided without worker blocks); without one, the request is refused with 503.
fn verify_unavailable<S: SharedStore + ?Sized>(
    cx: Ctx<'_, S>,
    asked: Asked,
    stale: Option<(String, usize)>,
    report: QuotaReport,
) -> Step {
    match stale {
        Some((id, tier)) => meter(cx, None, asked, Identified::key(verified_caller(&id), tier, None), report),
        None => {
            let mut d = Decision::refuse(Outcome::QuotaUnavailable, reply::quota_unavailable(), cx.config.mode);
            d.quota = report;
            Step::Done(d)
        }
    }
}

/// A token that is no key: counted against its network, then 401 (or 429 past the limit).
fn unknown_key<S: SharedStore + ?Sized>(cx: Ctx<'_, S>, request: &RequestInfo<'_>) -> Step {
    match failed::count(cx, request) {
        Err(refused) => Step::Done(*refused),
        Ok(_) => Step::Done(Decision::refuse(Outcome::Unauthenticated, reply::invalid_token(), cx.config.mode)),
    }
}

/// 503 for a key verification the worker cannot send: it has `max_pending_verifications`
/// in flight.
pub(super) fn verifications_full() -> LocalReply {
    let mut reply = reply::quota_unavailable();
    reply.body = JsonObject::new()
        .str("code", "key_verifications_busy")
        .str(
            "message",
            "Too many API keys are being verified at once, so this one cannot be checked now. Retry in 1 s.",
        )
        .null("param")
        .str("type", "server_error")
        .finish_as_error();
    reply
}

/// `key:<id>` of a key the quota service verified.
fn verified_caller(id: &str) -> Caller {
    Caller::Named(["key:", id].concat())
}
