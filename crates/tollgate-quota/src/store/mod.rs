//! Where counts and API keys live: one [`Store`] trait, a memory backend for a single
//! instance and tests, and a Redis backend (one server or a cluster) for replicas.

mod location;
pub mod memory;
pub mod redis;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tollgate_core::config::{Algorithm, Limit, LimitKind};
use tollgate_core::limit::{evaluate, LimitState};
use tollgate_core::quota::{CheckResponse, UsageLimit};
use tollgate_core::Nanos;

pub use self::location::StoreLocation;
pub use self::memory::{ManualClock, MemoryStore};
pub use self::redis::RedisStore;

/// A validated `/v1/check` request.
#[derive(Debug, Clone)]
pub struct Check {
    /// The metered key, `<tier>/key:<id>` or `<tier>/ip:<network>`.
    pub key: String,
    /// One per limit, in `limits` order: the units it must have; 0 only reads it.
    pub costs: Vec<u64>,
    /// At least one, names unique, in request order.
    pub limits: Vec<Limit>,
}

/// A validated `/v1/return` request.
#[derive(Debug, Clone)]
pub struct Return {
    pub key: String,
    /// Units every limit gets back.
    pub units: u64,
    /// At least one, names unique, in request order.
    pub limits: Vec<Limit>,
    /// One per limit: the fixed window's index the units were taken in (None for token buckets).
    pub windows: Vec<Option<u64>>,
}

/// A validated `/v1/settle` request.
#[derive(Debug, Clone)]
pub struct Settle {
    pub key: String,
    /// Names the settlement: 16 to 64 characters of `[0-9A-Za-z_-]`.
    pub id: String,
    /// At least one, names unique, in request order.
    pub limits: Vec<Limit>,
    /// One per limit: the fixed window's index the units were reserved in (None for token buckets).
    pub windows: Vec<Option<u64>>,
    /// One per limit: the units the check charged.
    pub reserved: Vec<u64>,
    /// One per limit: the units the request used.
    pub used: Vec<u64>,
}

/// An API key as stored: never the token, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    /// Lower-case hex of SHA-256(token).
    pub sha256: String,
    pub tier: String,
    pub name: String,
    /// Unix seconds.
    pub created_at: u64,
}

/// Whether [`Store::create_key`] stored the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Stored,
    /// Another key has this id already; nothing was written.
    IdTaken,
}

/// The operations of the service on its state. Every call is one decision or one lookup;
/// implementations are shared by all requests (`&self`) and never block the runtime.
pub trait Store: Send + Sync + 'static {
    /// One all-or-nothing decision: admitted only if every limit admits its cost, and then
    /// every limit is charged its cost; otherwise nothing is charged.
    fn check(&self, check: &Check) -> impl Future<Output = Result<CheckResponse, StoreError>> + Send;

    /// Gives `units` back to every limit of the key, all in one step: a token bucket's
    /// TAT moves back by `units` intervals but never before now (never fuller than full);
    /// a fixed window's count falls by at most its count, and only if the window is still
    /// the one named in `windows` (which must also be the current one). A limit not held
    /// under this definition gets nothing. Returns, per limit, the units given back.
    fn give_back(&self, ret: &Return) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send;

    /// Charges each limit what was used instead of what was reserved, all in one step, once
    /// per (key, id): true if applied now, false if a settlement with this id was applied
    /// before (nothing changes then). Per limit, `used < reserved` gives the difference back
    /// as [`Store::give_back`] does; `used > reserved` charges the overrun even past the
    /// limit, a token bucket's TAT at most two depths ahead of now (one full bucket below
    /// empty) and a fixed window only while the window named is the current one. A limit
    /// not held (or held under another definition) counts from a fresh state.
    fn settle(&self, settle: &Settle) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every limit stored for a metered key, as of now, by name; empty when nothing is held.
    fn usage(&self, key: &str) -> impl Future<Output = Result<Vec<UsageLimit>, StoreError>> + Send;

    fn create_key(&self, record: &KeyRecord) -> impl Future<Output = Result<Created, StoreError>> + Send;

    /// The key whose token hashes to `sha256` (lower-case hex).
    fn find_key(&self, sha256: &str) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    fn list_keys(&self) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send;

    /// Removes a key; false if no key has this id.
    fn revoke_key(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Succeeds when the store answers.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// What identifies the running store: it changes when the store restarts or fails
    /// over (Redis: the `run_id` of `INFO server`, of every primary of a cluster). `None`
    /// for a store that lives and dies with this process (memory).
    fn instance_id(&self) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
}

/// A store that failed. `transient` errors (connection lost, timeout, cluster
/// reconfiguring) are worth retrying soon; the others need an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    pub transient: bool,
    pub message: String,
}

impl StoreError {
    pub fn transient(message: impl Into<String>) -> Self {
        StoreError { transient: true, message: message.into() }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        StoreError { transient: false, message: message.into() }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {}

/// How long a settlement's id is remembered, at least: a retry within this time is a no-op.
pub const MIN_SETTLE_MARKER_TTL: Duration = Duration::from_secs(1);
/// How long a settlement's id is remembered, at most: markers are one key each, so the
/// longest window of a tier (up to 366 days) would hold millions of them; retries come
/// within seconds.
pub const MAX_SETTLE_MARKER_TTL: Duration = Duration::from_secs(3600);

/// How long a settlement over `limits` is remembered: the longest time any of them takes
/// to forget a charge (a fixed window's window, a token bucket's depth), within
/// [`MIN_SETTLE_MARKER_TTL`]..=[`MAX_SETTLE_MARKER_TTL`]. A retry later than that of a
/// settlement to a fixed window changes nothing anyway: its window has passed.
pub fn settle_marker_ttl(limits: &[Limit]) -> Duration {
    let longest = limits.iter().map(span_ns).max().unwrap_or(0);
    Duration::from_nanos(longest).clamp(MIN_SETTLE_MARKER_TTL, MAX_SETTLE_MARKER_TTL)
}

/// The time a limit takes to forget a charge: a fixed window's length, a token bucket's
/// depth (the time to refill from empty).
pub(crate) fn span_ns(limit: &Limit) -> u64 {
    match limit.kind {
        LimitKind::TokenBucket { depth_ns, .. } => depth_ns,
        LimitKind::FixedWindow { window_ns } => window_ns,
    }
}

/// A limit's definition as stored next to its counts: enough to rebuild the limit.
pub(crate) fn definition(limit: &Limit) -> String {
    match limit.kind {
        LimitKind::TokenBucket { capacity, .. } => format!("t:{}:{}:{capacity}", limit.quota, limit.window.secs),
        LimitKind::FixedWindow { .. } => format!("f:{}:{}", limit.quota, limit.window.secs),
    }
}

/// The inverse of [`definition`]; `None` for text that no version of it wrote.
pub(crate) fn limit_from_definition(name: &str, definition: &str) -> Option<Limit> {
    let mut parts = definition.split(':');
    let algorithm = parts.next()?;
    let quota: u64 = parts.next()?.parse().ok()?;
    let window_secs: u64 = parts.next()?.parse().ok()?;
    let (algorithm, burst) = match algorithm {
        "t" => {
            let capacity: u64 = parts.next()?.parse().ok()?;
            (Algorithm::TokenBucket, (capacity != quota).then_some(capacity))
        }
        "f" => (Algorithm::FixedWindow, None),
        _ => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    tollgate_core::config::limit_from_parts("stored", name, quota, window_secs, algorithm, burst).ok()
}

/// What a stored limit looks like at `now`: counts, units left, time to full.
pub(crate) fn usage_of(limit: &Limit, state: LimitState, now: Nanos) -> UsageLimit {
    let e = evaluate(limit, Some(state), now, 0);
    let (algorithm, burst) = match limit.kind {
        LimitKind::TokenBucket { .. } => (Algorithm::TokenBucket, limit.burst()),
        LimitKind::FixedWindow { .. } => (Algorithm::FixedWindow, None),
    };
    // What was counted, past the limit too (a settlement charges an overrun in full).
    let used = match (limit.kind, state) {
        (LimitKind::TokenBucket { interval_ns, .. }, LimitState::Bucket { tat }) => {
            tat.saturating_sub(now.0).div_ceil(interval_ns.max(1))
        }
        (LimitKind::FixedWindow { window_ns }, LimitState::Window { index, used })
            if index == now.0 / window_ns.max(1) =>
        {
            used
        }
        _ => 0,
    };
    UsageLimit {
        name: limit.name.clone(),
        algorithm,
        limit: limit.quota,
        window_secs: limit.window.secs,
        burst,
        used,
        remaining: e.remaining,
        reset_after_ms: ns_to_ms_ceil(e.reset_after_ns),
    }
}

/// Durations on the wire are whole milliseconds, rounded up: a caller that waits as
/// told is never early.
pub(crate) fn ns_to_ms_ceil(ns: u64) -> u64 {
    ns.div_ceil(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::quota::LimitSpec;

    fn limit(json: &str) -> Limit {
        serde_json::from_str::<LimitSpec>(json).unwrap().to_limit("limits[0]").unwrap()
    }

    #[test]
    fn definitions_round_trip() {
        for json in [
            r#"{"name":"rpm","limit":100,"window_secs":60,"burst":20}"#,
            r#"{"name":"rpm","limit":100,"window_secs":60}"#,
            r#"{"name":"day","algorithm":"fixed_window","limit":5,"window_secs":86400}"#,
        ] {
            let l = limit(json);
            let back = limit_from_definition(&l.name, &definition(&l)).unwrap();
            assert_eq!(
                (back.kind, back.quota, back.window.secs, back.fingerprint),
                (l.kind, l.quota, l.window.secs, l.fingerprint)
            );
        }
        assert!(limit_from_definition("x", "t:1:2").is_none());
        assert!(limit_from_definition("x", "f:1:2:3").is_none());
        assert!(limit_from_definition("x", "q:1:2").is_none());
    }
}
