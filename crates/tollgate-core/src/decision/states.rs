//! Stored states as a decision reads and rewrites them: evaluated against a cost, charged,
//! refunded. A tier's states all live in the caller's entry of their slot.

use super::metering::{Costs, Metered, Standings};
use crate::config::{FailureMode, Limit, Tier};
use crate::limit::{self, evaluate, Evaluation, LimitState};
use crate::store::{words_of, Change, Limits, StoredLimit};
use crate::time::Nanos;
use crate::worker_block::ChargedLimit;

/// The fallback buckets of global limits with `failure_mode: local` live beside the
/// local limits, under the limit's fingerprint with this mask.
pub(super) const FALLBACK_SALT: u32 = 0x5f5f_0001;

/// Where the metered limits of `tier` stand for a request of `costs`, against what is
/// stored.
pub(super) fn evaluate_all(
    tier: &Tier,
    metered: &[Metered],
    stored: &[StoredLimit],
    now: Nanos,
    costs: Costs,
) -> Standings {
    metered
        .iter()
        .filter_map(|m| {
            let limit = tier.limits.get(m.index)?;
            Some(evaluate(limit, state_of(limit, stored, m.fingerprint), now, costs.of(limit)).standing(m.index))
        })
        .collect()
}

/// New states for every state the tier keeps in shared data: the metered ones charged,
/// the others carried over. States of limits no longer configured are dropped.
pub(super) fn next_states(
    tier: &Tier,
    metered: &[Metered],
    stored: &[StoredLimit],
    now: Nanos,
    costs: Costs,
) -> Change {
    rewrite_states(tier, stored, now, |index, limit, fingerprint, previous| {
        if metered.iter().any(|m| m.index == index && m.fingerprint == fingerprint) {
            Some(evaluate(limit, previous, now, costs.of(limit)))
        } else {
            previous.map(|s| evaluate(limit, Some(s), now, 0))
        }
    })
}

/// The states of the tier in a slot with `units` given back to the charged limits. Nothing
/// is written when the slot no longer has their states (the units then came back anyway:
/// a state only goes when it is idle).
pub(super) fn refund_states(
    tier: &Tier,
    charged: &[ChargedLimit],
    stored: &[StoredLimit],
    now: Nanos,
    units: u64,
) -> Change {
    if !charged.iter().any(|c| words_of(stored, c.fingerprint).is_some()) {
        return Change::Keep;
    }
    rewrite_states(tier, stored, now, |index, limit, fingerprint, previous| {
        let refunded = charged.iter().any(|c| c.index == index && c.fingerprint == fingerprint);
        previous.map(|s| {
            let s = if refunded { limit::refund(limit, s, now, units) } else { s };
            evaluate(limit, Some(s), now, 0)
        })
    })
}

/// Every state the tier keeps in shared data, as `next` evaluates it from what is stored
/// (limit index, limit, state fingerprint, stored state); the idle ones are dropped.
pub(super) fn rewrite_states(
    tier: &Tier,
    stored: &[StoredLimit],
    now: Nanos,
    mut next: impl FnMut(usize, &Limit, u32, Option<LimitState>) -> Option<Evaluation>,
) -> Change {
    let mut states = Limits::new();
    let mut idle_at = now;
    for (index, limit) in tier.limits.iter().enumerate() {
        // A local limit keeps its own state; a global one only its fallback bucket, if any.
        let own = limit.global.is_none().then_some(limit.fingerprint);
        let fallback = (limit.global == Some(FailureMode::Local)).then_some(limit.fingerprint ^ FALLBACK_SALT);
        for fingerprint in own.into_iter().chain(fallback) {
            let previous = state_of(limit, stored, fingerprint);
            if let Some(e) = next(index, limit, fingerprint, previous).filter(|e| e.idle_at > now) {
                idle_at = idle_at.max(e.idle_at);
                states.push(StoredLimit { fingerprint, words: e.state.words() });
            }
        }
    }
    Change::Write { states, idle_at }
}

/// The stored state under `fingerprint` of `limit` (its own, or its fallback bucket's).
fn state_of(limit: &Limit, stored: &[StoredLimit], fingerprint: u32) -> Option<LimitState> {
    words_of(stored, fingerprint).map(|words| LimitState::from_words(limit.kind, words))
}
