//! The decision: a pure function of (config, request, stored state, now). It returns what
//! the host must do; the host performs it (local reply, or response headers) and counts it.

use crate::config::{Config, ContentionPolicy, Mode, Tier};
use crate::headers::{rate_limit_headers, tightest, Headers, LimitStatus};
use crate::identity::{client_network, credential, Credential};
use crate::limit::{evaluate, Evaluation};
use crate::reply::{self, LocalReply, Refusal};
use crate::store::{self, state_of, Change, SharedStore, SlotRef, StoredLimit, UpdateReport};
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
    /// Unauthenticated or malformed, let through by shadow mode.
    ShadowRejected,
    /// Shared data could not be updated; admitted unmetered (`on_contention: allow`).
    StoreBypassed,
    /// Shared data could not be updated; refused with 503 (`on_contention: deny`).
    StoreRefused,
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
        }
    }
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
    /// Who was metered, safe to log: `key:<id>` or `ip:<network>`; never a token.
    pub caller: Option<String>,
    pub store: UpdateReport,
}

impl Decision {
    fn new(outcome: Outcome) -> Decision {
        Decision {
            outcome,
            tier: None,
            reply: None,
            response_headers: Vec::new(),
            limited_by: None,
            caller: None,
            store: UpdateReport::default(),
        }
    }

    fn refuse(outcome: Outcome, reply: LocalReply, mode: Mode) -> Decision {
        match mode {
            Mode::Enforce => Decision { reply: Some(reply), ..Decision::new(outcome) },
            Mode::Shadow => {
                let mut d = Decision::new(Outcome::ShadowRejected);
                d.response_headers.push(("x-tollgate-shadow", format!("would-reject; status={}", reply.status)));
                d
            }
        }
    }
}

pub fn decide<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    request: &crate::RequestInfo<'_>,
    now: Nanos,
) -> Decision {
    let Some(route) = config.route(request.method, request.path).filter(|r| r.cost > 0) else {
        return Decision::new(Outcome::Unlimited);
    };
    let (tier_index, caller, anonymous) = match credential(&config.identity, request) {
        Err(e) => return Decision::refuse(Outcome::Malformed, reply::malformed_credential(e), config.mode),
        Ok(Credential::Token(hash)) => match config.key_by_hash(&hash) {
            Some(key) => (key.tier, format!("key:{}", key.id), false),
            None => return Decision::refuse(Outcome::Unauthenticated, reply::invalid_token(), config.mode),
        },
        Ok(Credential::None) => match config.identity.anonymous_tier {
            Some(tier) => {
                let network =
                    client_network(request.client_address, config.identity.ipv4_prefix, config.identity.ipv6_prefix);
                (tier, format!("ip:{network}"), true)
            }
            None => return Decision::refuse(Outcome::Unauthenticated, reply::missing_token(), config.mode),
        },
    };
    let (Some(tier), Some(&mask)) = (config.tiers.get(tier_index), route.applies.get(tier_index)) else {
        return Decision::new(Outcome::Unlimited);
    };
    if mask == 0 {
        return Decision { tier: Some(tier_index), ..Decision::new(Outcome::Unlimited) };
    }

    let slot = SlotRef::new(&tier.name, &caller, config.store.slots);
    let mut evaluations: Vec<(usize, Evaluation)> = Vec::new();
    let (result, report) = store::update(store, &slot, now, config.store.cas_retries, |stored| {
        evaluations = applied(tier, mask, stored, now, route.cost);
        if evaluations.iter().all(|(_, e)| e.admitted) {
            next_states(tier, mask, stored, &evaluations, now)
        } else {
            Change::Keep
        }
    });
    let mut decision =
        Decision { tier: Some(tier_index), caller: Some(caller), store: report, ..Decision::new(Outcome::Allowed) };
    if result.is_err() {
        match config.store.on_contention {
            ContentionPolicy::Allow => decision.outcome = Outcome::StoreBypassed,
            ContentionPolicy::Deny => {
                decision.outcome = Outcome::StoreRefused;
                decision.reply = Some(reply::unavailable());
            }
        }
        return decision;
    }

    let statuses: Vec<LimitStatus<'_>> = evaluations
        .iter()
        .filter_map(|(i, e)| {
            tier.limits.get(*i).map(|limit| LimitStatus {
                limit,
                remaining: e.remaining,
                reset_after_ns: e.reset_after_ns,
            })
        })
        .collect();
    // The refusing limit is the one that makes the caller wait longest.
    let refusal = evaluations
        .iter()
        .enumerate()
        .filter(|(_, (_, e))| !e.admitted)
        .max_by_key(|(_, (_, e))| e.retry_after_ns)
        .map(|(pos, (i, e))| (pos, *i, e.retry_after_ns));
    let focus = refusal.map_or_else(|| tightest(&statuses), |(pos, _, _)| pos);
    rate_limit_headers(&config.headers, &statuses, focus, now, &mut decision.response_headers);

    let Some((_, limit_index, retry_after_ns)) = refusal else {
        return decision;
    };
    let Some(limit) = tier.limits.get(limit_index) else {
        return decision;
    };
    decision.limited_by = Some(limit.name.clone());
    match config.mode {
        Mode::Enforce => {
            decision.outcome = Outcome::Limited;
            let refusal = Refusal { tier, limit, anonymous, retry_after_ns, now };
            let headers = std::mem::take(&mut decision.response_headers);
            decision.reply = Some(reply::too_many_requests(config, &refusal, headers));
        }
        Mode::Shadow => {
            decision.outcome = Outcome::ShadowLimited;
            decision.response_headers.push(("x-tollgate-shadow", format!("would-limit; limit=\"{}\"", limit.name)));
        }
    }
    decision
}

/// Evaluates every limit of `tier` selected by `mask` against its stored state.
fn applied(tier: &Tier, mask: u16, stored: &[StoredLimit], now: Nanos, cost: u64) -> Vec<(usize, Evaluation)> {
    tier.limits
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(i, limit)| (i, evaluate(limit, state_of(stored, limit.fingerprint), now, cost)))
        .collect()
}

/// New states for all of the tier's limits: the applied ones advanced, the others kept.
/// States of limits no longer configured are dropped.
fn next_states(tier: &Tier, mask: u16, stored: &[StoredLimit], applied: &[(usize, Evaluation)], now: Nanos) -> Change {
    let mut states = Vec::with_capacity(tier.limits.len());
    let mut idle_at = now;
    for (i, limit) in tier.limits.iter().enumerate() {
        let evaluation = if mask & (1 << i) != 0 {
            applied.iter().find(|(j, _)| *j == i).map(|(_, e)| *e)
        } else {
            state_of(stored, limit.fingerprint).map(|s| evaluate(limit, Some(s), now, 0))
        };
        if let Some(e) = evaluation.filter(|e| e.idle_at > now) {
            idle_at = idle_at.max(e.idle_at);
            states.push(StoredLimit { fingerprint: limit.fingerprint, state: e.state });
        }
    }
    Change::Write { states, idle_at }
}

#[cfg(test)]
mod tests;
