//! The Redis backend: one server or a cluster (`connection`), counts kept by the Lua
//! scripts of `lua/` (`script`) under the keys of `schema`, API keys as JSON records
//! (`api_keys`).
//!
//! On a cluster every command touches one key. On one server the checks waiting at the
//! same moment are decided by one `check.lua` call with one key each (`batch`).

mod api_keys;
mod batch;
mod connection;
mod schema;
mod script;

use tollgate_core::quota::{CheckResponse, UsageLimit};

use self::batch::Batcher;
use self::connection::Connection;
use self::script::{CheckArgs, Scripts};
use super::{Check, Created, KeyRecord, Return, Settle, Store, StoreError, StoreLocation};

pub struct RedisStore {
    connection: Connection,
    scripts: Scripts,
    /// One Redis server: checks go through one batching task, started on first use.
    batcher: Batcher,
}

impl RedisStore {
    /// Prepares the connection; nothing is sent until the first command, so a store
    /// that is down makes the service unready rather than failing its start.
    pub fn open(location: &StoreLocation) -> Result<RedisStore, StoreError> {
        Ok(RedisStore { connection: Connection::open(location)?, scripts: Scripts::new(), batcher: Batcher::new() })
    }
}

/// Redis holds something that none of this store's versions wrote.
fn corrupt(what: &str) -> StoreError {
    StoreError::permanent(format!("redis: unexpected {what}"))
}

impl Store for RedisStore {
    async fn check(&self, check: &Check) -> Result<CheckResponse, StoreError> {
        let args = CheckArgs::new(check);
        let reply = match self.connection.single() {
            Some(manager) => self.batcher.decide(manager, &self.scripts.check, args).await?,
            None => script::decide_one(&self.connection, &self.scripts.check, &args).await?,
        };
        script::check_response(check, &reply)
    }

    async fn give_back(&self, ret: &Return) -> Result<Vec<u64>, StoreError> {
        script::give_back(&self.connection, &self.scripts.give_back, ret).await
    }

    async fn settle(&self, settle: &Settle) -> Result<bool, StoreError> {
        script::settle(&self.connection, &self.scripts.settle, settle).await
    }

    async fn usage(&self, key: &str) -> Result<Vec<UsageLimit>, StoreError> {
        script::usage(&self.connection, &self.scripts.usage, key).await
    }

    async fn create_key(&self, record: &KeyRecord) -> Result<Created, StoreError> {
        api_keys::create(&self.connection, record).await
    }

    async fn find_key(&self, sha256: &str) -> Result<Option<KeyRecord>, StoreError> {
        api_keys::find(&self.connection, sha256).await
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        api_keys::list(&self.connection).await
    }

    async fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        api_keys::revoke(&self.connection, id).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.connection.query::<()>(&redis::cmd("PING")).await
    }

    async fn instance_id(&self) -> Result<Option<String>, StoreError> {
        // On a cluster INFO goes to every primary and comes back as one answer per node.
        let info: redis::Value = self.connection.query(redis::cmd("INFO").arg("server")).await?;
        let mut run_ids = Vec::new();
        run_ids_in(&info, &mut run_ids);
        if run_ids.is_empty() {
            return Err(corrupt("INFO server answer without a run_id"));
        }
        run_ids.sort_unstable();
        Ok(Some(run_ids.join(",")))
    }
}

/// Every `run_id:<id>` line of the INFO text(s) in `value`.
fn run_ids_in(value: &redis::Value, out: &mut Vec<String>) {
    use redis::Value;
    match value {
        Value::BulkString(bytes) => run_ids_in_text(&String::from_utf8_lossy(bytes), out),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => run_ids_in_text(text, out),
        Value::Array(values) | Value::Set(values) => values.iter().for_each(|v| run_ids_in(v, out)),
        Value::Map(pairs) => pairs.iter().for_each(|(_, v)| run_ids_in(v, out)),
        _ => {}
    }
}

fn run_ids_in_text(text: &str, out: &mut Vec<String>) {
    out.extend(text.lines().filter_map(|l| l.strip_prefix("run_id:")).map(|id| id.trim().to_owned()));
}
