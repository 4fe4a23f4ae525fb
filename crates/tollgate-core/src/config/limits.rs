//! A limit's definition in parts (shared with the quota service, which validates the
//! limits a request names), the default blocks, and windows as text.

use super::{
    err, is_simple_name, Algorithm, ConfigError, Limit, LimitKind, Window, MAX_QUANTITY, MAX_WINDOW_SECS, NAME_RULE,
};
use crate::cost::Unit;
use crate::hash::fnv1a32;
use crate::time::NANOS_PER_SEC;

pub fn limit_from_parts(
    path: &str,
    name: &str,
    quota: u64,
    window_secs: u64,
    algorithm: Algorithm,
    burst: Option<u64>,
) -> Result<Limit, ConfigError> {
    if !is_simple_name(name, 32) {
        return err(format!("{path}.name"), NAME_RULE);
    }
    if quota == 0 || quota > MAX_QUANTITY {
        return err(format!("{path}.limit"), format!("expected a whole number from 1 to {MAX_QUANTITY}"));
    }
    if !(1..=MAX_WINDOW_SECS).contains(&window_secs) {
        return err(format!("{path}.window"), format!("expected a window from 1 s to {MAX_WINDOW_SECS} s"));
    }
    let window_ns = window_secs * NANOS_PER_SEC;
    let kind = match algorithm {
        Algorithm::FixedWindow => {
            if burst.is_some() {
                return err(format!("{path}.burst"), "burst applies only to the token_bucket algorithm");
            }
            LimitKind::FixedWindow { window_ns }
        }
        Algorithm::TokenBucket => {
            let capacity = burst.unwrap_or(quota);
            if capacity == 0 || capacity > MAX_QUANTITY {
                return err(format!("{path}.burst"), format!("expected a whole number from 1 to {MAX_QUANTITY}"));
            }
            // Rounded up, so that a window never refills more than `limit` tokens.
            let interval_ns = window_ns.div_ceil(quota);
            let depth_ns =
                interval_ns.checked_mul(capacity).filter(|d| *d <= u64::MAX / 4).ok_or_else(|| ConfigError {
                    path: format!("{path}.burst"),
                    message: "burst × window / limit is too large; use a smaller burst or window".to_owned(),
                })?;
            LimitKind::TokenBucket { capacity, interval_ns, depth_ns }
        }
    };
    let fingerprint = fnv1a32(format!("{name}|{algorithm:?}|{quota}|{window_secs}|{burst:?}").as_bytes());
    Ok(Limit {
        name: name.to_owned(),
        quota,
        window: Window { text: window_text(window_secs), secs: window_secs },
        kind,
        fingerprint,
        global: None,
        lease_block: 0,
        worker_block: 0,
        unit: Unit::Requests,
        policy_item: format!("\"{name}\";q={quota};w={window_secs}"),
    })
}

/// Smallest lease block the default gives; below it a limit stays exact.
pub const MIN_DEFAULT_LEASE_BLOCK: u64 = 10;
/// Largest lease block the default gives.
pub const MAX_DEFAULT_LEASE_BLOCK: u64 = 1000;

/// The lease block of a global limit without `lease_block`: 1 % of its capacity, at most
/// [`MAX_DEFAULT_LEASE_BLOCK`]; 0 (exact) when that is under [`MIN_DEFAULT_LEASE_BLOCK`],
/// i.e. for every limit with a capacity under 1000 (a daily 5 or 100 stays exact).
pub fn default_lease_block(capacity: u64) -> u64 {
    one_percent_block(capacity, MIN_DEFAULT_LEASE_BLOCK)
}

/// Smallest worker block the default gives a local limit; below it the limit stays exact.
pub const MIN_DEFAULT_WORKER_BLOCK: u64 = 100;

/// The worker block of a local limit without `worker_block` (see [`crate::worker_block`]): 1 % of
/// its capacity, at most [`MAX_DEFAULT_LEASE_BLOCK`]; 0 (exact) when that is under
/// [`MIN_DEFAULT_WORKER_BLOCK`], i.e. for every limit with a capacity under 10,000.
pub fn default_worker_block(capacity: u64) -> u64 {
    one_percent_block(capacity, MIN_DEFAULT_WORKER_BLOCK)
}

/// 1 % of `capacity`, at most [`MAX_DEFAULT_LEASE_BLOCK`]; 0 (exact) under `min`.
fn one_percent_block(capacity: u64, min: u64) -> u64 {
    let block = (capacity / 100).min(MAX_DEFAULT_LEASE_BLOCK);
    if block >= min {
        block
    } else {
        0
    }
}

/// The shortest text for a window: 86400 → `1d`, 90 → `90s`.
pub fn window_text(secs: u64) -> String {
    [(86_400, "d"), (3600, "h"), (60, "m")]
        .iter()
        .find(|(unit, _)| secs.is_multiple_of(*unit))
        .map_or_else(|| format!("{secs}s"), |(unit, suffix)| format!("{}{suffix}", secs / unit))
}

/// `"10s"`, `"1m"`, `"2h"`, `"1d"` → seconds; anything else (or over 366 days) → `None`.
pub fn parse_window(text: &str) -> Option<u64> {
    let unit_at = text.len().checked_sub(1)?;
    let (digits, unit) = (text.get(..unit_at)?, text.get(unit_at..)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    let secs = n.checked_mul(scale)?;
    (1..=MAX_WINDOW_SECS).contains(&secs).then_some(secs)
}
