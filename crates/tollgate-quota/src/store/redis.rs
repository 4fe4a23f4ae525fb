//! The Redis backend: one server through a `ConnectionManager` (multiplexed, reconnects by
//! itself) or a cluster through the redis crate's async cluster connection.
//!
//! Keys:
//! - `tg:{<metered key>}`: hash, field = limit name, value = "<definition> <a> <b>", written
//!   only by `lua/check.lua`; it expires when every limit in it is full again.
//! - `tg:apikey:<sha256>`: string, the key's record as JSON (what `verify` reads).
//! - `tg:apikeys`: hash, id → the same JSON (what `list` and `revoke` read).
//!
//! On a cluster every command touches one key. On one server the checks waiting at the
//! same moment are decided by one `check.lua` call with one key each (see `batch_checks`). A key is created index first,
//! lookup second, and revoked lookup first: a failure in between can leave a listed key that
//! does not verify (revoking it again cleans up), never a key that verifies but is not listed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, RetryMethod, Script,
    ServerErrorKind, Value,
};
use tokio::sync::{mpsc, oneshot, OnceCell, Semaphore};
use tollgate_core::config::{Limit, LimitKind};
use tollgate_core::limit::LimitState;
use tollgate_core::quota::{CheckResponse, LimitResult, UsageLimit};
use tollgate_core::Nanos;

use super::{
    definition, limit_from_definition, usage_of, Check, Created, KeyRecord, Return, Store, StoreError, StoreLocation,
};

const KEY_INDEX: &str = "tg:apikeys";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct RedisStore {
    connection: Connection,
    check_script: Script,
    return_script: Script,
    usage_script: Script,
    /// One Redis server: checks go through one batching task, started on first use.
    batcher: OnceLock<mpsc::UnboundedSender<Job>>,
}

/// Most checks one `check.lua` call decides.
const MAX_BATCH: usize = 64;
/// Batches sent and not yet answered at any moment. One alone leaves the service idle
/// while Redis runs it and Redis idle while the service answers; a few overlap the two
/// (measured: 4 beat 1 and 16 in decisions/s and CPU per decision).
const MAX_IN_FLIGHT: usize = 4;

/// One check waiting for the batching task: check.lua's arguments for its key, and where
/// its part of the reply goes.
struct Job {
    key: String,
    cost: u64,
    limits: Vec<LimitArgs>,
    reply: oneshot::Sender<Result<Vec<i64>, StoreError>>,
}

struct LimitArgs {
    name: String,
    definition: String,
    x: u64,
    y: u64,
}

enum Connection {
    Single(ConnectionManager),
    /// Connected on first use, so that the service starts (and reports not ready) while
    /// the cluster is down.
    Cluster {
        client: Box<ClusterClient>,
        connection: OnceCell<ClusterConnection>,
    },
}

impl RedisStore {
    /// Prepares the connection; nothing is sent until the first command, so a store
    /// that is down makes the service unready rather than failing its start.
    pub fn open(location: &StoreLocation) -> Result<RedisStore, StoreError> {
        let connection = match location {
            StoreLocation::Memory => return Err(StoreError::permanent("`memory` is not a Redis location")),
            StoreLocation::Redis(url) => {
                let client = redis::Client::open(url.as_str()).map_err(invalid_location)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                Connection::Single(ConnectionManager::new_lazy_with_config(client, config).map_err(invalid_location)?)
            }
            StoreLocation::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(2)
                    .build()
                    .map_err(invalid_location)?;
                Connection::Cluster { client: Box::new(client), connection: OnceCell::new() }
            }
        };
        Ok(RedisStore {
            connection,
            check_script: Script::new(include_str!("../../lua/check.lua")),
            return_script: Script::new(include_str!("../../lua/return.lua")),
            usage_script: Script::new(include_str!("../../lua/usage.lua")),
            batcher: OnceLock::new(),
        })
    }

    /// The batching task's queue (one server only; a cluster decides one key per call).
    fn batcher(&self) -> Option<&mpsc::UnboundedSender<Job>> {
        let Connection::Single(manager) = &self.connection else {
            return None;
        };
        Some(self.batcher.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(batch_checks(manager.clone(), self.check_script.clone(), receiver));
            sender
        }))
    }

    async fn connection(&self) -> Result<Conn, StoreError> {
        match &self.connection {
            Connection::Single(manager) => Ok(Conn::Single(manager.clone())),
            Connection::Cluster { client, connection } => connection
                .get_or_try_init(|| client.get_async_connection())
                .await
                .map(|c| Conn::Cluster(c.clone()))
                .map_err(store_error),
        }
    }

    /// Runs `op`, once more if the connection turned out to be dead (the connection
    /// manager reconnects meanwhile). The only way a retried check counts twice is a Redis
    /// that ran the script and died before answering: the caller then pays one extra unit.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        match op(self.connection().await?).await {
            Err(e) if e.is_connection_dropped() || e.is_connection_refusal() => {
                op(self.connection().await?).await.map_err(store_error)
            }
            result => result.map_err(store_error),
        }
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        self.run(|mut c| async move { cmd.query_async(&mut c).await }).await
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

fn meter_key(key: &str) -> String {
    format!("tg:{{{key}}}")
}

fn lookup_key(sha256: &str) -> String {
    format!("tg:apikey:{sha256}")
}

fn micros_to_ms_ceil(us: i64) -> u64 {
    u64::try_from(us).unwrap_or(0).div_ceil(1000)
}

fn store_error(e: RedisError) -> StoreError {
    let transient = !matches!(e.retry_method(), RetryMethod::NoRetry);
    StoreError { transient, message: format!("redis: {e}") }
}

fn invalid_location(e: RedisError) -> StoreError {
    StoreError::permanent(format!("invalid Redis location: {e}"))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::permanent(format!("redis: unexpected {what}"))
}

impl Store for RedisStore {
    async fn check(&self, check: &Check) -> Result<CheckResponse, StoreError> {
        let limits = check
            .limits
            .iter()
            .map(|limit| {
                let (x, y) = script_arguments(limit);
                LimitArgs { name: limit.name.clone(), definition: definition(limit), x, y }
            })
            .collect();
        let (reply, answer) = oneshot::channel();
        let job = Job { key: meter_key(&check.key), cost: check.cost, limits, reply };
        let reply = match self.batcher() {
            Some(batcher) => {
                batcher.send(job).map_err(|_| StoreError::transient("redis: the batching task stopped"))?;
                answer.await.map_err(|_| StoreError::transient("redis: the batching task stopped"))??
            }
            None => {
                let jobs = [job];
                let script = &self.check_script;
                self.run(|mut c| {
                    let jobs = &jobs;
                    async move { decide_many(&mut c, script, jobs).await }
                })
                .await?
            }
        };
        check_response(check, &reply)
    }

    async fn give_back(&self, ret: &Return) -> Result<Vec<u64>, StoreError> {
        let mut invocation = self.return_script.prepare_invoke();
        invocation.key(meter_key(&ret.key)).arg(ret.units);
        for (limit, window) in ret.limits.iter().zip(&ret.windows) {
            let (x, _) = script_arguments(limit);
            invocation.arg(&limit.name).arg(definition(limit)).arg(x).arg(window.unwrap_or(0));
        }
        let invocation = &invocation;
        let reply: Vec<i64> = self.run(|mut c| async move { invocation.invoke_async(&mut c).await }).await?;
        if reply.len() != ret.limits.len() {
            return Err(corrupt("reply from return.lua"));
        }
        Ok(reply.into_iter().map(|n| u64::try_from(n).unwrap_or(0)).collect())
    }

    async fn usage(&self, key: &str) -> Result<Vec<UsageLimit>, StoreError> {
        let mut invocation = self.usage_script.prepare_invoke();
        invocation.key(meter_key(key));
        let invocation = &invocation;
        let reply: Vec<String> = self.run(|mut c| async move { invocation.invoke_async(&mut c).await }).await?;
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
            let (Some(limit), Ok(a), Ok(b)) = (limit_from_definition(name, def), a.parse::<u64>(), b.parse::<u64>())
            else {
                return Err(corrupt("value in a meter hash"));
            };
            let limit = as_scripted(limit);
            let state = match limit.kind {
                LimitKind::TokenBucket { .. } => LimitState { a: a.saturating_mul(1000), b },
                LimitKind::FixedWindow { .. } => LimitState { a, b },
            };
            usage.push(usage_of(&limit, state, now));
        }
        usage.sort_by(|x, y| x.name.cmp(&y.name));
        Ok(usage)
    }

    async fn create_key(&self, record: &KeyRecord) -> Result<Created, StoreError> {
        let json = serde_json::to_string(record).map_err(|e| StoreError::permanent(e.to_string()))?;
        let stored: bool = self.query(redis::cmd("HSETNX").arg(KEY_INDEX).arg(&record.id).arg(&json)).await?;
        if !stored {
            return Ok(Created::IdTaken);
        }
        self.query::<()>(redis::cmd("SET").arg(lookup_key(&record.sha256)).arg(&json)).await?;
        Ok(Created::Stored)
    }

    async fn find_key(&self, sha256: &str) -> Result<Option<KeyRecord>, StoreError> {
        let json: Option<String> = self.query(redis::cmd("GET").arg(lookup_key(sha256))).await?;
        json.map(|j| serde_json::from_str(&j).map_err(|_| corrupt("API key record"))).transpose()
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let entries: HashMap<String, String> = self.query(redis::cmd("HGETALL").arg(KEY_INDEX)).await?;
        entries.values().map(|json| serde_json::from_str(json).map_err(|_| corrupt("API key record"))).collect()
    }

    async fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        let json: Option<String> = self.query(redis::cmd("HGET").arg(KEY_INDEX).arg(id)).await?;
        let Some(json) = json else {
            return Ok(false);
        };
        let record: KeyRecord = serde_json::from_str(&json).map_err(|_| corrupt("API key record"))?;
        self.query::<()>(redis::cmd("DEL").arg(lookup_key(&record.sha256))).await?;
        self.query::<()>(redis::cmd("HDEL").arg(KEY_INDEX).arg(id)).await?;
        Ok(true)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.query::<()>(&redis::cmd("PING")).await
    }
}

/// check.lua's answer for one key (`admitted`, then five per limit) as a `CheckResponse`.
fn check_response(check: &Check, reply: &[i64]) -> Result<CheckResponse, StoreError> {
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

/// The batching task: takes every check queued at the moment (none waits for more to
/// come), decides them in one `check.lua` call, hands each its answer, and repeats, with
/// at most `MAX_IN_FLIGHT` calls unanswered.
async fn batch_checks(manager: ConnectionManager, script: Script, mut queue: mpsc::UnboundedReceiver<Job>) {
    let script = Arc::new(script);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let mut jobs = Vec::with_capacity(MAX_BATCH);
        if queue.recv_many(&mut jobs, MAX_BATCH).await == 0 {
            return; // the store is gone
        }
        // A caller that stopped waiting (its request timed out and was answered 503) must
        // not be charged afterwards.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let (manager, script) = (manager.clone(), Arc::clone(&script));
        tokio::spawn(async move {
            let result = match decide_many(&mut Conn::Single(manager.clone()), &script, &jobs).await {
                Err(e) if e.is_connection_dropped() || e.is_connection_refusal() => {
                    decide_many(&mut Conn::Single(manager), &script, &jobs).await
                }
                result => result,
            };
            drop(permit);
            answer_jobs(jobs, result.map_err(store_error));
        });
    }
}

/// One `check.lua` call deciding every job, in order; its flat reply.
async fn decide_many(conn: &mut Conn, script: &Script, jobs: &[Job]) -> RedisResult<Vec<i64>> {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(jobs.len());
    for job in jobs {
        cmd.arg(&job.key);
    }
    let counted = jobs.len() > 1;
    for job in jobs {
        cmd.arg(job.cost);
        if counted {
            cmd.arg(job.limits.len());
        }
        for l in &job.limits {
            cmd.arg(&l.name).arg(&l.definition).arg(l.x).arg(l.y);
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

/// Splits a batch's reply: each job gets `admitted` and five numbers per limit.
fn answer_jobs(jobs: Vec<Job>, reply: Result<Vec<i64>, StoreError>) {
    let mut rest: &[i64] = match &reply {
        Ok(reply) => reply,
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    for job in jobs {
        let len = 1 + 5 * job.limits.len();
        let answer = match rest.split_at_checked(len) {
            Some((mine, others)) => {
                rest = others;
                Ok(mine.to_vec())
            }
            None => Err(corrupt("reply from check.lua")),
        };
        // The caller may have stopped waiting (timeout): nothing to do then.
        let _ = job.reply.send(answer);
    }
}

/// One connection handle, standalone or cluster (both multiplexed and cheap to clone).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microsecond_buckets_round_the_interval_up() {
        assert_eq!(micro_bucket(60, 600, 20), (100_000, 2_000_000));
        assert_eq!(micro_bucket(1, 3, 3), (333_334, 1_000_002));
        assert_eq!(meter_key("free/ip:203.0.113.7/32"), "tg:{free/ip:203.0.113.7/32}");
    }
}
