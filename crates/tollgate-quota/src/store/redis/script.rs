//! The Lua scripts of `lua/`: the arguments each is called with, and what its reply means.
//! The scripts count in microseconds where `tollgate_core` counts in nanoseconds.

use redis::{ErrorKind, RedisResult, Script, ServerErrorKind};
use tollgate_core::config::{Limit, LimitKind};
use tollgate_core::limit::LimitState;
use tollgate_core::quota::{CheckResponse, LimitResult, UsageLimit};
use tollgate_core::Nanos;

use super::connection::{Conn, Connection};
use super::corrupt;
use super::schema::{meter_key, settle_marker_key};
use crate::store::{definition, limit_from_definition, settle_marker_ttl, usage_of, Check, Return, Settle, StoreError};

/// The scripts that write a meter begin with `expiry.lua`, which sets its TTL, and
/// `state.lua`, which reads a stored state.
macro_rules! writing_script {
    ($file:literal) => {
        concat!(
            include_str!("../../../lua/expiry.lua"),
            include_str!("../../../lua/state.lua"),
            include_str!(concat!("../../../lua/", $file))
        )
    };
}

/// `check.lua`, `return.lua`, `settle.lua` and `usage.lua`, loaded into Redis on first use.
pub(super) struct Scripts {
    pub(super) check: Script,
    pub(super) give_back: Script,
    pub(super) settle: Script,
    pub(super) usage: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            check: Script::new(writing_script!("check.lua")),
            give_back: Script::new(writing_script!("return.lua")),
            settle: Script::new(writing_script!("settle.lua")),
            usage: Script::new(include_str!("../../../lua/usage.lua")),
        }
    }
}

/// One check as `check.lua` takes it for its key: the meter, and per limit its name,
/// definition, (x, y) arguments and cost.
pub(super) struct CheckArgs {
    key: String,
    limits: Vec<LimitArgs>,
}

struct LimitArgs {
    name: String,
    definition: String,
    x: u64,
    y: u64,
    cost: u64,
}

impl CheckArgs {
    pub(super) fn new(check: &Check) -> CheckArgs {
        let limits = check
            .limits
            .iter()
            .zip(&check.costs)
            .map(|(limit, &cost)| {
                let (x, y) = script_arguments(limit);
                LimitArgs { name: limit.name.clone(), definition: definition(limit), x, y, cost }
            })
            .collect();
        CheckArgs { key: meter_key(&check.key), limits }
    }

    /// How many numbers of `check.lua`'s reply are this check's: `admitted`, then five per limit.
    pub(super) fn reply_len(&self) -> usize {
        1 + 5 * self.limits.len()
    }
}

/// A limit as check.lua runs it: (x, y) arguments, see the script's header.
fn script_arguments(limit: &Limit) -> (u64, u64) {
    match limit.kind {
        LimitKind::TokenBucket { capacity, .. } => {
            let (interval_us, depth_us) = micro_bucket(limit.window.secs, limit.quota, capacity);
            (interval_us, depth_us)
        }
        LimitKind::FixedWindow { .. } => (limit.window.secs.saturating_mul(1_000_000), limit.quota),
    }
}

/// GCRA's emission interval and bucket depth in whole microseconds (the core's are in
/// nanoseconds; rounding the interval up keeps "never more than `limit` per window").
fn micro_bucket(window_secs: u64, quota: u64, capacity: u64) -> (u64, u64) {
    let interval_us = window_secs.saturating_mul(1_000_000).div_ceil(quota.max(1));
    (interval_us, interval_us.saturating_mul(capacity))
}

/// The limit with the script's microsecond arithmetic, for `evaluate` on stored state.
fn as_scripted(limit: Limit) -> Limit {
    match limit.kind {
        LimitKind::TokenBucket { capacity, .. } => {
            let (interval_us, depth_us) = micro_bucket(limit.window.secs, limit.quota, capacity);
            let kind = LimitKind::TokenBucket {
                capacity,
                interval_ns: interval_us.saturating_mul(1000),
                depth_ns: depth_us.saturating_mul(1000),
            };
            Limit { kind, ..limit }
        }
        LimitKind::FixedWindow { .. } => limit,
    }
}

fn micros_to_ms_ceil(us: i64) -> u64 {
    u64::try_from(us).unwrap_or(0).div_ceil(1000)
}

/// One `check.lua` call deciding one check (a cluster: every call touches one key); its reply.
pub(super) async fn decide_one(
    connection: &Connection,
    script: &Script,
    check: &CheckArgs,
) -> Result<Vec<i64>, StoreError> {
    connection.run(|mut c| async move { decide_many(&mut c, script, [check]).await }).await
}

/// One `check.lua` call deciding every check, in order; its flat reply.
pub(super) async fn decide_many<'a, I>(conn: &mut Conn, script: &Script, checks: I) -> RedisResult<Vec<i64>>
where
    I: IntoIterator<Item = &'a CheckArgs>,
    I::IntoIter: ExactSizeIterator + Clone,
{
    let checks = checks.into_iter();
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(checks.len());
    for check in checks.clone() {
        cmd.arg(&check.key);
    }
    let counted = checks.len() > 1;
    for check in checks {
        if counted {
            cmd.arg(check.limits.len());
        }
        for l in &check.limits {
            cmd.arg(&l.name).arg(&l.definition).arg(l.x).arg(l.y).arg(l.cost);
        }
    }
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        result => result,
    }
}

/// check.lua's answer for one key (`admitted`, then five per limit) as a `CheckResponse`.
pub(super) fn check_response(check: &Check, reply: &[i64]) -> Result<CheckResponse, StoreError> {
    let (Some(&admitted), Some(per_limit)) = (reply.first(), reply.get(1..)) else {
        return Err(corrupt("reply from check.lua"));
    };
    if admitted == -1 {
        return Err(StoreError::permanent(
            "redis: check.lua could not read or write this metered key (not a hash, or Redis is out of memory)",
        ));
    }
    if per_limit.len() != 5 * check.limits.len() {
        return Err(corrupt("reply from check.lua"));
    }
    let limits = check
        .limits
        .iter()
        .zip(per_limit.chunks_exact(5))
        .map(|(limit, r)| match *r {
            [admitted, remaining, reset_after_us, retry_after_us, window] => Ok(LimitResult {
                name: limit.name.clone(),
                admitted: admitted == 1,
                remaining: u64::try_from(remaining).unwrap_or(0),
                reset_after_ms: micros_to_ms_ceil(reset_after_us),
                retry_after_ms: micros_to_ms_ceil(retry_after_us),
                window: u64::try_from(window).ok(),
            }),
            _ => Err(corrupt("reply from check.lua")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CheckResponse { admitted: admitted == 1, limits })
}

/// `return.lua` for `ret`: the units each limit got back.
pub(super) async fn give_back(connection: &Connection, script: &Script, ret: &Return) -> Result<Vec<u64>, StoreError> {
    let mut invocation = script.prepare_invoke();
    invocation.key(meter_key(&ret.key)).arg(ret.units);
    for (limit, window) in ret.limits.iter().zip(&ret.windows) {
        let (x, _) = script_arguments(limit);
        invocation.arg(&limit.name).arg(definition(limit)).arg(x).arg(window.unwrap_or(0));
    }
    let invocation = &invocation;
    let reply: Vec<i64> = connection.run(|mut c| async move { invocation.invoke_async(&mut c).await }).await?;
    if reply.len() != ret.limits.len() {
        return Err(corrupt("reply from return.lua"));
    }
    Ok(reply.into_iter().map(|n| u64::try_from(n).unwrap_or(0)).collect())
}

/// `settle.lua` for `settle`: true if applied now, false if applied before.
pub(super) async fn settle(connection: &Connection, script: &Script, settle: &Settle) -> Result<bool, StoreError> {
    let mut invocation = script.prepare_invoke();
    let marker_ttl_ms = u64::try_from(settle_marker_ttl(&settle.limits).as_millis()).unwrap_or(u64::MAX);
    invocation.key(meter_key(&settle.key)).key(settle_marker_key(&settle.key, &settle.id)).arg(marker_ttl_ms);
    for (i, limit) in settle.limits.iter().enumerate() {
        let (x, y) = script_arguments(limit);
        let window = settle.windows.get(i).copied().flatten();
        let (reserved, used) = (settle.reserved.get(i).copied(), settle.used.get(i).copied());
        invocation.arg(&limit.name).arg(definition(limit)).arg(x).arg(y).arg(window.unwrap_or(0));
        invocation.arg(reserved.unwrap_or(0)).arg(used.unwrap_or(0));
    }
    let invocation = &invocation;
    let reply: i64 = connection.run(|mut c| async move { invocation.invoke_async(&mut c).await }).await?;
    match reply {
        1 => Ok(true),
        0 => Ok(false),
        _ => Err(corrupt("reply from settle.lua")),
    }
}

/// `usage.lua` for a metered key: Redis's `TIME`, then every field of its meter hash, read
/// here as limits and their state at that time.
pub(super) async fn usage(connection: &Connection, script: &Script, key: &str) -> Result<Vec<UsageLimit>, StoreError> {
    let mut invocation = script.prepare_invoke();
    invocation.key(meter_key(key));
    let invocation = &invocation;
    let reply: Vec<String> = connection.run(|mut c| async move { invocation.invoke_async(&mut c).await }).await?;
    let [secs, micros, fields @ ..] = reply.as_slice() else {
        return Err(corrupt("reply from usage.lua"));
    };
    let (Ok(secs), Ok(micros)) = (secs.parse::<u64>(), micros.parse::<u64>()) else {
        return Err(corrupt("TIME"));
    };
    let now_us = secs.saturating_mul(1_000_000).saturating_add(micros);
    let now = Nanos(now_us.saturating_mul(1000));
    let mut usage = Vec::new();
    for pair in fields.chunks_exact(2) {
        let [name, value] = pair else { continue };
        let mut parts = value.split(' ');
        let (Some(def), Some(a), Some(b)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(corrupt("value in a meter hash"));
        };
        let (Some(limit), Ok(a), Ok(b)) = (limit_from_definition(name, def), a.parse::<u64>(), b.parse::<u64>()) else {
            return Err(corrupt("value in a meter hash"));
        };
        let limit = as_scripted(limit);
        // The scripts keep a token bucket's arrival time in microseconds.
        let tat_or_index = match limit.kind {
            LimitKind::TokenBucket { .. } => a.saturating_mul(1000),
            LimitKind::FixedWindow { .. } => a,
        };
        let state = LimitState::from_words(limit.kind, [tat_or_index, b]);
        usage.push(usage_of(&limit, state, now));
    }
    usage.sort_by(|x, y| x.name.cmp(&y.name));
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microsecond_buckets_round_the_interval_up() {
        assert_eq!(micro_bucket(60, 600, 20), (100_000, 2_000_000));
        assert_eq!(micro_bucket(1, 3, 3), (333_334, 1_000_002));
        assert_eq!(meter_key("free/ip:203.0.113.7/32"), "tg:{free/ip:203.0.113.7/32}");
        assert_eq!(
            settle_marker_key("free/ip:203.0.113.7/32", "r-0123456789abcdef"),
            "tg:{free/ip:203.0.113.7/32}:settle:r-0123456789abcdef"
        );
    }
}
