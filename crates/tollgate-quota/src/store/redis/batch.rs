//! Batching on one Redis server: the checks waiting at the same moment are decided by one
//! `check.lua` call, with one key each, by a task that the first check starts.

use std::sync::{Arc, OnceLock};

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::connection::{is_dead_connection, store_error, Conn};
use super::corrupt;
use super::script::{decide_many, CheckArgs};
use crate::store::StoreError;

/// Most checks one `check.lua` call decides.
const MAX_BATCH: usize = 64;
/// Batches sent and not yet answered at any moment. One alone leaves the service idle
/// while Redis runs it and Redis idle while the service answers; a few overlap the two
/// (measured: 4 beat 1 and 16 in decisions/s and CPU per decision).
const MAX_IN_FLIGHT: usize = 4;

/// The batching task's queue, started on first use.
pub(super) struct Batcher {
    queue: OnceLock<mpsc::UnboundedSender<Job>>,
}

/// One check waiting for the batching task: check.lua's arguments for its key, and where
/// its part of the reply goes.
struct Job {
    check: CheckArgs,
    reply: oneshot::Sender<Result<Vec<i64>, StoreError>>,
}

impl Job {
    fn check(&self) -> &CheckArgs {
        &self.check
    }
}

impl Batcher {
    pub(super) fn new() -> Batcher {
        Batcher { queue: OnceLock::new() }
    }

    /// `check.lua`'s reply for `check` (its part of its batch's), through `manager`.
    pub(super) async fn decide(
        &self,
        manager: &ConnectionManager,
        script: &Script,
        check: CheckArgs,
    ) -> Result<Vec<i64>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(batch_checks(manager.clone(), script.clone(), receiver));
            sender
        });
        queue.send(Job { check, reply }).map_err(|_| StoreError::transient("redis: the batching task stopped"))?;
        answer.await.map_err(|_| StoreError::transient("redis: the batching task stopped"))?
    }
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
            let result = decide_batch(manager, &script, &jobs).await;
            drop(permit);
            answer_jobs(jobs, result.map_err(store_error));
        });
    }
}

/// One `check.lua` call for the whole batch, once more if the connection turned out to be
/// dead (the connection manager reconnects meanwhile).
async fn decide_batch(manager: ConnectionManager, script: &Script, jobs: &[Job]) -> RedisResult<Vec<i64>> {
    match decide_many(&mut Conn::Single(manager.clone()), script, jobs.iter().map(Job::check)).await {
        Err(e) if is_dead_connection(&e) => {
            decide_many(&mut Conn::Single(manager), script, jobs.iter().map(Job::check)).await
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
        let answer = match rest.split_at_checked(job.check.reply_len()) {
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
