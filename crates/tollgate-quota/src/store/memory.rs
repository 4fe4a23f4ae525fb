//! The memory backend: `tollgate_core::limit::evaluate` over a map, under one mutex.
//! For a single instance, development and tests; state is lost on restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_core::config::{Limit, LimitKind};
use tollgate_core::limit::{evaluate, settle, LimitState};
use tollgate_core::quota::{CheckResponse, LimitResult, UsageLimit};
use tollgate_core::Nanos;

use super::{
    ns_to_ms_ceil, settle_marker_ttl, span_ns, usage_of, Check, Created, KeyRecord, Return, Settle, Store, StoreError,
};

/// Where the memory store reads the time: the system clock, or a clock tests move.
#[derive(Debug, Clone, Default)]
enum Clock {
    #[default]
    System,
    Manual(ManualClock),
}

impl Clock {
    fn now(&self) -> Nanos {
        match self {
            Clock::System => {
                let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                Nanos(u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX))
            }
            Clock::Manual(clock) => clock.now(),
        }
    }
}

/// A clock that moves only when told to (shared by its clones).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn starting_at(now: Nanos) -> Self {
        ManualClock(Arc::new(AtomicU64::new(now.0)))
    }

    pub fn now(&self) -> Nanos {
        Nanos(self.0.load(Ordering::SeqCst))
    }

    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(nanos, Ordering::SeqCst);
    }
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    clock: Clock,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    meters: HashMap<String, Meter>,
    /// Idle meters are dropped when the map reaches this size (amortised O(1) per check).
    sweep_at: usize,
    /// Settlements applied, by `<metered key> <id>`: until when a retry is a no-op.
    settled: HashMap<String, Nanos>,
    /// As `sweep_at`, for `settled`.
    sweep_settled_at: usize,
    keys_by_hash: HashMap<String, KeyRecord>,
    hash_by_id: HashMap<String, String>,
}

/// Everything stored for one metered key.
#[derive(Debug)]
struct Meter {
    limits: Vec<Metered>,
    /// From this instant on the meter is equivalent to no meter at all.
    idle_at: Nanos,
}

#[derive(Debug)]
struct Metered {
    limit: Limit,
    state: LimitState,
}

const MIN_SWEEP_AT: usize = 1024;

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// A store whose time is `clock`'s, for tests of time-dependent behaviour.
    pub fn with_clock(clock: ManualClock) -> Self {
        MemoryStore { clock: Clock::Manual(clock), state: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-written decision behind
        // (states are written after every evaluation succeeded), so the data is usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_now(&self, check: &Check, now: Nanos) -> CheckResponse {
        let mut state = self.lock();
        let meter = state.meters.get(&check.key);
        let evaluations: Vec<_> = check
            .limits
            .iter()
            .zip(&check.costs)
            .map(|(limit, &cost)| {
                let stored = meter.and_then(|m| m.find(limit)).map(|m| m.state);
                evaluate(limit, stored, now, cost)
            })
            .collect();
        let admitted = evaluations.iter().all(|e| e.admitted);
        if admitted && check.costs.iter().any(|&cost| cost > 0) {
            let meter = state.meter_for_writing(&check.key, now);
            for ((limit, e), &cost) in check.limits.iter().zip(&evaluations).zip(&check.costs) {
                // A limit that costs nothing is only read.
                if cost > 0 {
                    meter.write(limit, e.state);
                }
            }
        }
        let limits = check
            .limits
            .iter()
            .zip(&evaluations)
            .map(|(limit, e)| LimitResult {
                name: limit.name.clone(),
                admitted: e.admitted,
                remaining: e.remaining,
                reset_after_ms: ns_to_ms_ceil(e.reset_after_ns),
                retry_after_ms: ns_to_ms_ceil(e.retry_after_ns),
                window: match e.state {
                    LimitState::Window { index, .. } => Some(index),
                    LimitState::Bucket { .. } => None,
                },
            })
            .collect();
        CheckResponse { admitted, limits }
    }

    fn settle_now(&self, settle: &Settle, now: Nanos) -> bool {
        let mut state = self.lock();
        let marker = format!("{} {}", settle.key, settle.id);
        if state.settled.get(&marker).is_some_and(|until| *until > now) {
            return false;
        }
        let remembered_until =
            now.0.saturating_add(u64::try_from(settle_marker_ttl(&settle.limits).as_nanos()).unwrap_or(u64::MAX));
        state.sweep_settled_if_due(now);
        state.settled.insert(marker, Nanos(remembered_until));

        let meter = state.meters.get(&settle.key).filter(|m| m.idle_at > now);
        let changes: Vec<Option<LimitState>> = settle
            .limits
            .iter()
            .enumerate()
            .map(|(i, limit)| {
                let stored = meter.and_then(|m| m.find(limit)).map(|m| m.state);
                let window = settle.windows.get(i).copied().flatten();
                let (reserved, used) = (settle.reserved.get(i).copied(), settle.used.get(i).copied());
                settle_one(limit, stored, window, reserved.unwrap_or(0), used.unwrap_or(0), now)
            })
            .collect();
        if changes.iter().any(Option::is_some) {
            let meter = state.meter_for_writing(&settle.key, now);
            for (limit, change) in settle.limits.iter().zip(changes) {
                if let Some(new_state) = change {
                    meter.write(limit, new_state);
                }
            }
        }
        true
    }

    fn give_back_now(&self, ret: &Return, now: Nanos) -> Vec<u64> {
        let mut state = self.lock();
        let Some(meter) = state.meters.get_mut(&ret.key).filter(|m| m.idle_at > now) else {
            return vec![0; ret.limits.len()];
        };
        ret.limits
            .iter()
            .zip(&ret.windows)
            .map(|(limit, window)| {
                let Some(m) = meter
                    .limits
                    .iter_mut()
                    .find(|m| m.limit.name == limit.name && m.limit.fingerprint == limit.fingerprint)
                else {
                    return 0;
                };
                give_back_one(&m.limit, &mut m.state, *window, ret.units, now)
            })
            .collect()
    }
}

/// One limit's share of a settlement: its new state, if it changes.
fn settle_one(
    limit: &Limit,
    stored: Option<LimitState>,
    window: Option<u64>,
    reserved: u64,
    used: u64,
    now: Nanos,
) -> Option<LimitState> {
    let before = match limit.kind {
        LimitKind::TokenBucket { .. } => stored.unwrap_or(LimitState::Bucket { tat: now.0 }),
        LimitKind::FixedWindow { window_ns } => {
            let current = now.0 / window_ns.max(1);
            if window != Some(current) {
                return None;
            }
            match stored {
                Some(s @ LimitState::Window { index, .. }) if index == current => s,
                _ => LimitState::Window { index: current, used: 0 },
            }
        }
    };
    let after = match settle(limit, before, now, reserved, used) {
        // An overrun leaves a bucket at most one full bucket below empty.
        LimitState::Bucket { tat } => {
            LimitState::Bucket { tat: tat.min(now.0.saturating_add(span_ns(limit).saturating_mul(2))) }
        }
        window => window,
    };
    (after != before).then_some(after)
}

/// The instant from which a limit's state is equivalent to no state at all.
fn idle_at(limit: &Limit, state: LimitState) -> Nanos {
    match (limit.kind, state) {
        (_, LimitState::Bucket { tat }) => Nanos(tat),
        (LimitKind::FixedWindow { window_ns }, LimitState::Window { index, used }) if used > 0 => {
            Nanos(index.saturating_add(1).saturating_mul(window_ns))
        }
        (_, LimitState::Window { .. }) => Nanos(0),
    }
}

/// One limit's share of a return; the units given back.
fn give_back_one(limit: &Limit, state: &mut LimitState, window: Option<u64>, units: u64, now: Nanos) -> u64 {
    match (limit.kind, state) {
        (LimitKind::TokenBucket { interval_ns, .. }, LimitState::Bucket { tat }) => {
            let owed = tat.saturating_sub(now.0);
            if owed == 0 || interval_ns == 0 {
                return 0;
            }
            let returned = units.min(owed.div_ceil(interval_ns));
            *tat = tat.saturating_sub(units.saturating_mul(interval_ns)).max(now.0);
            returned
        }
        (LimitKind::FixedWindow { window_ns }, LimitState::Window { index, used }) => {
            let current = now.0 / window_ns.max(1);
            if window != Some(*index) || *index != current {
                return 0;
            }
            let returned = units.min(*used);
            *used -= returned;
            returned
        }
        _ => 0,
    }
}

impl Meter {
    fn find(&self, limit: &Limit) -> Option<&Metered> {
        self.limits.iter().find(|m| m.limit.name == limit.name && m.limit.fingerprint == limit.fingerprint)
    }

    /// Stores `state` for `limit`, replacing a limit of the same name.
    fn write(&mut self, limit: &Limit, state: LimitState) {
        self.idle_at = self.idle_at.max(idle_at(limit, state));
        match self.limits.iter_mut().find(|m| m.limit.name == limit.name) {
            Some(m) if m.limit.fingerprint == limit.fingerprint => m.state = state,
            Some(m) => *m = Metered { limit: limit.clone(), state },
            None => self.limits.push(Metered { limit: limit.clone(), state }),
        }
    }
}

impl State {
    /// The meter of `key`, created empty if there is none.
    fn meter_for_writing(&mut self, key: &str, now: Nanos) -> &mut Meter {
        sweep_if_due(&mut self.meters, &mut self.sweep_at, |m| m.idle_at > now);
        self.meters.entry(key.to_owned()).or_insert_with(|| Meter { limits: Vec::new(), idle_at: now })
    }

    fn sweep_settled_if_due(&mut self, now: Nanos) {
        sweep_if_due(&mut self.settled, &mut self.sweep_settled_at, |until| *until > now);
    }
}

/// Keeps only the entries that `keep` once the map has reached `sweep_at` entries (at least
/// `MIN_SWEEP_AT`), then waits for it to double: amortised O(1) per insertion.
fn sweep_if_due<T>(map: &mut HashMap<String, T>, sweep_at: &mut usize, keep: impl Fn(&T) -> bool) {
    if map.len() < (*sweep_at).max(MIN_SWEEP_AT) {
        return;
    }
    map.retain(|_, value| keep(value));
    *sweep_at = map.len().saturating_mul(2);
}

impl Store for MemoryStore {
    async fn check(&self, check: &Check) -> Result<CheckResponse, StoreError> {
        Ok(self.check_now(check, self.clock.now()))
    }

    async fn give_back(&self, ret: &Return) -> Result<Vec<u64>, StoreError> {
        Ok(self.give_back_now(ret, self.clock.now()))
    }

    async fn settle(&self, settle: &Settle) -> Result<bool, StoreError> {
        Ok(self.settle_now(settle, self.clock.now()))
    }

    async fn usage(&self, key: &str) -> Result<Vec<UsageLimit>, StoreError> {
        let now = self.clock.now();
        let state = self.lock();
        let Some(meter) = state.meters.get(key).filter(|m| m.idle_at > now) else {
            return Ok(Vec::new());
        };
        let mut usage: Vec<UsageLimit> = meter.limits.iter().map(|m| usage_of(&m.limit, m.state, now)).collect();
        usage.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(usage)
    }

    async fn create_key(&self, record: &KeyRecord) -> Result<Created, StoreError> {
        let mut state = self.lock();
        if state.hash_by_id.contains_key(&record.id) {
            return Ok(Created::IdTaken);
        }
        state.hash_by_id.insert(record.id.clone(), record.sha256.clone());
        state.keys_by_hash.insert(record.sha256.clone(), record.clone());
        Ok(Created::Stored)
    }

    async fn find_key(&self, sha256: &str) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.lock().keys_by_hash.get(sha256).cloned())
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(self.lock().keys_by_hash.values().cloned().collect())
    }

    async fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let Some(sha256) = state.hash_by_id.remove(id) else {
            return Ok(false);
        };
        state.keys_by_hash.remove(&sha256);
        Ok(true)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn instance_id(&self) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::quota::LimitSpec;

    fn check(key: &str, limits: &[&str]) -> Check {
        let limits: Vec<Limit> = limits
            .iter()
            .enumerate()
            .map(|(i, json)| {
                serde_json::from_str::<LimitSpec>(json).unwrap().to_limit(&format!("limits[{i}]")).unwrap()
            })
            .collect();
        Check { key: key.into(), costs: vec![1; limits.len()], limits }
    }

    #[test]
    fn idle_meters_are_swept_once_the_map_grows() {
        let clock = ManualClock::starting_at(Nanos::from_secs(1_000));
        let store = MemoryStore::with_clock(clock.clone());
        for i in 0..MIN_SWEEP_AT {
            store.check_now(
                &check(&format!("free/ip:{i}"), &[r#"{"name":"s","limit":1,"window_secs":1}"#]),
                clock.now(),
            );
        }
        assert_eq!(store.lock().meters.len(), MIN_SWEEP_AT);
        clock.advance(Duration::from_secs(2));
        store.check_now(&check("free/ip:new", &[r#"{"name":"s","limit":1,"window_secs":1}"#]), clock.now());
        assert_eq!(store.lock().meters.len(), 1, "every idle meter is gone, the new one stays");
    }

    #[test]
    fn a_changed_definition_replaces_the_stored_limit() {
        let clock = ManualClock::starting_at(Nanos::from_secs(1_000));
        let store = MemoryStore::with_clock(clock.clone());
        let old = check("k/key:a", &[r#"{"name":"d","algorithm":"fixed_window","limit":1,"window_secs":60}"#]);
        assert!(store.check_now(&old, clock.now()).admitted);
        assert!(!store.check_now(&old, clock.now()).admitted);
        let new = check("k/key:a", &[r#"{"name":"d","algorithm":"fixed_window","limit":2,"window_secs":60}"#]);
        assert!(store.check_now(&new, clock.now()).admitted);
        assert_eq!(store.lock().meters.get("k/key:a").unwrap().limits.len(), 1);
    }
}
