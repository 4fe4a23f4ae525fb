//! A circuit breaker shared by every worker (it lives in shared data): after `failures`
//! failed callouts in a row it opens, and callouts stop for `cooldown`; then one worker
//! claims a probe, and its result closes the breaker or opens it for another cooldown.

use crate::store::{compare_and_swap, SharedStore, StoreError};
use crate::time::Nanos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BreakerState {
    /// Failed callouts in a row.
    pub failures: u32,
    /// While `now < open_until`, nobody calls out.
    pub open_until: Nanos,
    /// A probe is in flight until this instant (after `open_until`).
    pub probe_until: Nanos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failures: u32,
    pub cooldown_ns: u64,
    /// How long a claimed probe may take before another worker may probe.
    pub probe_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: call out.
    Call,
    /// Half-open and this worker claimed the probe: call out.
    Probe,
    /// Open (or another worker is probing): do not call out.
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    Closed,
}

impl BreakerState {
    pub fn encode(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..4].copy_from_slice(&self.failures.to_le_bytes());
        out[4..12].copy_from_slice(&self.open_until.0.to_le_bytes());
        out[12..].copy_from_slice(&self.probe_until.0.to_le_bytes());
        out
    }

    /// Unreadable bytes read as a closed breaker.
    pub fn decode(bytes: &[u8]) -> BreakerState {
        let Ok(bytes) = <[u8; 20]>::try_from(bytes) else {
            return BreakerState::default();
        };
        let (f, rest) = bytes.split_at(4);
        let (o, p) = rest.split_at(8);
        BreakerState {
            failures: u32::from_le_bytes(f.try_into().unwrap_or_default()),
            open_until: Nanos(u64::from_le_bytes(o.try_into().unwrap_or_default())),
            probe_until: Nanos(u64::from_le_bytes(p.try_into().unwrap_or_default())),
        }
    }

    pub fn is_open(&self, now: Nanos) -> bool {
        self.open_until > now
    }
}

/// Whether this request may call out.
pub fn admit<S: SharedStore + ?Sized>(store: &S, key: &str, config: &BreakerConfig, now: Nanos) -> Admission {
    let mut admission = Admission::Call;
    let (result, _) = compare_and_swap(store, key, 8, |bytes| {
        let state = BreakerState::decode(bytes);
        if state.open_until == Nanos(0) {
            admission = Admission::Call;
            return None;
        }
        if state.is_open(now) || state.probe_until > now {
            admission = Admission::Open;
            return None;
        }
        admission = Admission::Probe;
        Some(BreakerState { probe_until: now.saturating_add(config.probe_ns), ..state }.encode().to_vec())
    });
    match result {
        Ok(()) => admission,
        // Lost every race for the probe: someone else is probing.
        Err(_) => Admission::Open,
    }
}

/// Records a callout's result; reports whether the breaker opened or closed.
pub fn record<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    config: &BreakerConfig,
    success: bool,
    now: Nanos,
) -> Result<Transition, StoreError> {
    let mut transition = Transition::None;
    compare_and_swap(store, key, 16, |bytes| {
        let state = BreakerState::decode(bytes);
        transition = Transition::None;
        if success {
            if state == BreakerState::default() {
                return None;
            }
            if state.open_until != Nanos(0) {
                transition = Transition::Closed;
            }
            return Some(BreakerState::default().encode().to_vec());
        }
        let failures = state.failures.saturating_add(1);
        // A failed probe, or the threshold reached while closed: open for a cooldown.
        let reopen = state.open_until != Nanos(0) && !state.is_open(now);
        let next = if reopen || (state.open_until == Nanos(0) && failures >= config.failures) {
            transition = Transition::Opened;
            BreakerState { failures, open_until: now.saturating_add(config.cooldown_ns), probe_until: Nanos(0) }
        } else {
            BreakerState { failures, ..state }
        };
        Some(next.encode().to_vec())
    })
    .0?;
    Ok(transition)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FakeSharedData;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const KEY: &str = "tollgate/breaker/q";
    const CFG: BreakerConfig = BreakerConfig { failures: 3, cooldown_ns: 5_000_000_000, probe_ns: 1_000_000_000 };
    const T0: Nanos = Nanos(1_000_000_000_000);

    fn at(ms: u64) -> Nanos {
        T0.saturating_add(ms * 1_000_000)
    }

    #[test]
    fn opens_after_consecutive_failures_then_probes_after_the_cooldown() {
        let s = FakeSharedData::default();
        assert_eq!(admit(&s, KEY, &CFG, at(0)), Admission::Call);
        assert_eq!(record(&s, KEY, &CFG, false, at(0)), Ok(Transition::None));
        assert_eq!(record(&s, KEY, &CFG, false, at(1)), Ok(Transition::None));
        assert_eq!(admit(&s, KEY, &CFG, at(2)), Admission::Call);
        assert_eq!(record(&s, KEY, &CFG, false, at(2)), Ok(Transition::Opened));
        assert_eq!(admit(&s, KEY, &CFG, at(3)), Admission::Open);
        assert_eq!(admit(&s, KEY, &CFG, at(5001)), Admission::Open, "cooldown runs from the opening failure");
        assert_eq!(admit(&s, KEY, &CFG, at(5002)), Admission::Probe);
        assert_eq!(admit(&s, KEY, &CFG, at(5003)), Admission::Open, "one probe at a time");
        assert_eq!(record(&s, KEY, &CFG, true, at(5010)), Ok(Transition::Closed));
        assert_eq!(admit(&s, KEY, &CFG, at(5011)), Admission::Call);
    }

    #[test]
    fn a_failed_probe_opens_for_another_cooldown() {
        let s = FakeSharedData::default();
        for i in 0..3 {
            record(&s, KEY, &CFG, false, at(i)).unwrap();
        }
        assert_eq!(admit(&s, KEY, &CFG, at(6000)), Admission::Probe);
        assert_eq!(record(&s, KEY, &CFG, false, at(6100)), Ok(Transition::Opened));
        assert_eq!(admit(&s, KEY, &CFG, at(6200)), Admission::Open);
        assert_eq!(admit(&s, KEY, &CFG, at(11_100)), Admission::Probe);
    }

    #[test]
    fn a_lost_probe_can_be_claimed_again_later() {
        let s = FakeSharedData::default();
        for i in 0..3 {
            record(&s, KEY, &CFG, false, at(i)).unwrap();
        }
        assert_eq!(admit(&s, KEY, &CFG, at(6000)), Admission::Probe);
        assert_eq!(admit(&s, KEY, &CFG, at(6999)), Admission::Open);
        assert_eq!(admit(&s, KEY, &CFG, at(7001)), Admission::Probe, "the first probe never reported");
    }

    #[test]
    fn success_resets_the_count_and_writes_only_when_needed() {
        let s = FakeSharedData::default();
        record(&s, KEY, &CFG, false, at(0)).unwrap();
        record(&s, KEY, &CFG, false, at(1)).unwrap();
        record(&s, KEY, &CFG, true, at(2)).unwrap();
        record(&s, KEY, &CFG, false, at(3)).unwrap();
        record(&s, KEY, &CFG, false, at(4)).unwrap();
        assert_eq!(admit(&s, KEY, &CFG, at(5)), Admission::Call, "not three in a row");
        record(&s, KEY, &CFG, true, at(6)).unwrap();
        let writes = s.writes();
        record(&s, KEY, &CFG, true, at(7)).unwrap();
        assert_eq!(s.writes(), writes, "a closed, clean breaker is not rewritten");
    }

    #[test]
    fn garbage_reads_as_closed() {
        assert_eq!(BreakerState::decode(b"xyz"), BreakerState::default());
        let s = BreakerState { failures: 2, open_until: Nanos(7), probe_until: Nanos(9) };
        assert_eq!(BreakerState::decode(&s.encode()), s);
    }
}
