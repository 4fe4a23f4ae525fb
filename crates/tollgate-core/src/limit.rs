//! The two algorithms, as pure functions of (definition, stored state, now, cost).
//!
//! A token bucket is kept as GCRA's "theoretical arrival time" (one number); a fixed
//! window as (window index, units counted). Both are a [`LimitState`], kept as two words.
//!
//! ```
//! use tollgate_core::config::Config;
//! use tollgate_core::limit::evaluate;
//! use tollgate_core::Nanos;
//!
//! // 600 per minute with bursts of 20: one token every 100 ms.
//! let config = Config::from_json(br#"{
//!   "tiers": { "pro": { "limits": [ { "name": "rpm", "limit": 600, "window": "1m", "burst": 20 } ] } },
//!   "routes": [ { "path_prefix": "/" } ]
//! }"#).unwrap();
//! let rpm = &config.tiers[0].limits[0];
//! let start = Nanos::from_secs(1_000);
//! let mut state = None;
//! for _ in 0..20 {
//!     let e = evaluate(rpm, state, start, 1);
//!     assert!(e.admitted);
//!     state = Some(e.state);
//! }
//! let denied = evaluate(rpm, state, start, 1);
//! assert!(!denied.admitted);
//! assert_eq!(denied.retry_after_ns, 100_000_000);
//! assert!(evaluate(rpm, state, Nanos(start.0 + 100_000_000), 1).admitted);
//! ```

use crate::config::{Limit, LimitKind};
use crate::time::Nanos;

/// The stored state of one limit for one caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitState {
    /// Token bucket (GCRA): the theoretical arrival time, ns since the epoch; the bucket is
    /// full again from then on.
    Bucket { tat: u64 },
    /// Fixed window: the window's index since the epoch, and the units counted in it.
    Window { index: u64, used: u64 },
}

impl LimitState {
    /// The two words shared data keeps: `[tat, 0]` or `[index, used]`.
    pub fn words(self) -> [u64; 2] {
        match self {
            LimitState::Bucket { tat } => [tat, 0],
            LimitState::Window { index, used } => [index, used],
        }
    }

    /// A state read back from its [`words`](LimitState::words), by the algorithm of `kind`.
    pub fn from_words(kind: LimitKind, [a, b]: [u64; 2]) -> LimitState {
        match kind {
            LimitKind::TokenBucket { .. } => LimitState::Bucket { tat: a },
            LimitKind::FixedWindow { .. } => LimitState::Window { index: a, used: b },
        }
    }
}

/// Where one limit of a caller's tier stands for a request: what its headers and a 429
/// say of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// The limit's index in its tier.
    pub index: usize,
    pub admitted: bool,
    /// Units left after this request (or now, when not admitted).
    pub remaining: u64,
    /// Nanoseconds until the limit is back to its full quota.
    pub reset_after_ns: u64,
    /// Nanoseconds until this request could be admitted; 0 when admitted.
    pub retry_after_ns: u64,
}

/// What the algorithm makes of one limit for one request: where it stands, and the state
/// to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evaluation {
    pub admitted: bool,
    /// State to store if the whole request is admitted (unchanged when not admitted).
    pub state: LimitState,
    /// Units left after this request (or now, when not admitted).
    pub remaining: u64,
    /// Nanoseconds until the limit is back to its full quota.
    pub reset_after_ns: u64,
    /// Nanoseconds until this request could be admitted; 0 when admitted.
    pub retry_after_ns: u64,
    /// Instant from which the stored state is equivalent to no state at all.
    pub idle_at: Nanos,
}

impl Evaluation {
    /// Where the limit stands, as limit `index` of its tier.
    pub fn standing(&self, index: usize) -> Standing {
        Standing {
            index,
            admitted: self.admitted,
            remaining: self.remaining,
            reset_after_ns: self.reset_after_ns,
            retry_after_ns: self.retry_after_ns,
        }
    }
}

pub fn evaluate(limit: &Limit, state: Option<LimitState>, now: Nanos, cost: u64) -> Evaluation {
    match limit.kind {
        LimitKind::TokenBucket { interval_ns, depth_ns, .. } => token_bucket(state, now.0, cost, interval_ns, depth_ns),
        LimitKind::FixedWindow { window_ns } => fixed_window(state, now.0, cost, limit.quota, window_ns),
    }
}

/// Gives back `units` charged earlier and never spent (a worker's unused block, see
/// [`crate::worker_block`]): the state as if they had not been charged, as far as it still counts
/// them. A token bucket cannot go above full; a fixed window's units only count in their
/// own window, so a refund in a later one changes nothing.
pub fn refund(limit: &Limit, state: LimitState, now: Nanos, units: u64) -> LimitState {
    match (limit.kind, state) {
        (LimitKind::TokenBucket { interval_ns, .. }, LimitState::Bucket { tat }) => {
            LimitState::Bucket { tat: tat.saturating_sub(units.saturating_mul(interval_ns)).max(now.0) }
        }
        (LimitKind::FixedWindow { window_ns }, LimitState::Window { index, used })
            if index == now.0 / window_ns.max(1) =>
        {
            LimitState::Window { index, used: used.saturating_sub(units) }
        }
        _ => state,
    }
}

/// Settles a reservation: the state after `reserved` units were charged, as if `actual`
/// had been instead. Units not used are refunded ([`refund`]); units used beyond the
/// reservation are charged on top, even past the limit (one request's overrun is the
/// overshoot bound), within the window they were reserved in.
pub fn settle(limit: &Limit, state: LimitState, now: Nanos, reserved: u64, actual: u64) -> LimitState {
    if actual <= reserved {
        return refund(limit, state, now, reserved - actual);
    }
    let extra = actual - reserved;
    match (limit.kind, state) {
        (LimitKind::TokenBucket { interval_ns, .. }, LimitState::Bucket { tat }) => {
            LimitState::Bucket { tat: tat.max(now.0).saturating_add(extra.saturating_mul(interval_ns)) }
        }
        (LimitKind::FixedWindow { window_ns }, LimitState::Window { index, used })
            if index == now.0 / window_ns.max(1) =>
        {
            LimitState::Window { index, used: used.saturating_add(extra) }
        }
        _ => state,
    }
}

fn token_bucket(state: Option<LimitState>, now: u64, cost: u64, interval: u64, depth: u64) -> Evaluation {
    let tat = match state {
        Some(LimitState::Bucket { tat }) => tat.max(now),
        _ => now,
    };
    let new_tat = tat.saturating_add(cost.saturating_mul(interval));
    let tokens_at = |t: u64| (depth.saturating_sub(t - now)) / interval;
    if new_tat - now <= depth {
        Evaluation {
            admitted: true,
            state: LimitState::Bucket { tat: new_tat },
            remaining: tokens_at(new_tat),
            reset_after_ns: new_tat - now,
            retry_after_ns: 0,
            idle_at: Nanos(new_tat),
        }
    } else {
        Evaluation {
            admitted: false,
            state: LimitState::Bucket { tat },
            remaining: tokens_at(tat),
            reset_after_ns: tat - now,
            retry_after_ns: new_tat - now - depth,
            idle_at: Nanos(tat),
        }
    }
}

fn fixed_window(state: Option<LimitState>, now: u64, cost: u64, quota: u64, window: u64) -> Evaluation {
    let index = now / window;
    let used = match state {
        Some(LimitState::Window { index: i, used }) if i == index => used,
        _ => 0,
    };
    let reset_at = index.saturating_add(1).saturating_mul(window);
    let reset_after_ns = reset_at - now;
    let admitted = used.saturating_add(cost) <= quota;
    let used_after = if admitted { used + cost } else { used };
    Evaluation {
        admitted,
        state: LimitState::Window { index, used: used_after },
        remaining: quota.saturating_sub(used_after),
        reset_after_ns,
        retry_after_ns: if admitted { 0 } else { reset_after_ns },
        idle_at: if used_after == 0 { Nanos(now) } else { Nanos(reset_at) },
    }
}

#[cfg(test)]
mod tests;
