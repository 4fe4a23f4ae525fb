//! From the credential to the caller: a configured key (found by its tag, else by its
//! SHA-256), a key the quota service verifies (cached per worker), or, without a
//! credential, the anonymous tier keyed by the client's network.

use super::fallback::{breaker_admits, record_breaker};
use super::metering::{meter, Identified};
use super::outcome::{Caller, Decision, Outcome, QuotaReport};
use super::{to_json, Answer, Asked, Callout, Ctx, Pending, Stage, Step};
use crate::hash::{hex, sha256};
use crate::identity::{client_network, token, RequestInfo};
use crate::keycache::{CachedKey, Lookup, StaticKey};
use crate::quota::{VerifyRequest, VerifyResponse};
use crate::reply;
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
        Err(e) => Step::Done(Decision::refuse(Outcome::Malformed, reply::malformed_credential(e), config.mode)),
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
                return Step::Done(Decision::refuse(Outcome::Unauthenticated, reply::invalid_token(), config.mode));
            };
            let stale = match worker.keys.get(&hash, cx.now) {
                Lookup::Fresh(CachedKey::Known { id, tier }) => {
                    let who = Identified::key(verified_caller(&id), tier, None);
                    return meter(cx, Some(&mut worker.blocks), asked, who, report);
                }
                Lookup::Fresh(CachedKey::Unknown) => {
                    return Step::Done(Decision::refuse(Outcome::Unauthenticated, reply::invalid_token(), config.mode));
                }
                Lookup::Stale(CachedKey::Known { id, tier }) => Some((id, tier)),
                Lookup::Stale(CachedKey::Unknown) | Lookup::Missing => None,
            };
            if !breaker_admits(cx, quota) {
                let report = QuotaReport { short_circuited: true, ..report };
                return verify_unavailable(cx, asked, stale, report);
            }
            let pending = Pending { stage: Stage::Verify { asked, hash, stale }, quota: report };
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
    asked: Asked,
    hash: [u8; 32],
    stale: Option<(String, usize)>,
    answer: Answer<'_>,
    mut report: QuotaReport,
) -> Step {
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

/// `key:<id>` of a key the quota service verified.
fn verified_caller(id: &str) -> Caller {
    Caller::Named(["key:", id].concat())
}
