//! API keys in Redis: each record twice, as JSON, under its id in the index hash and under
//! its token's SHA-256 (see `schema`). A key is created index first, lookup second, and
//! revoked lookup first: a failure in between can leave a listed key that does not verify
//! (revoking it again cleans up), never a key that verifies but is not listed.

use std::collections::HashMap;

use super::connection::Connection;
use super::corrupt;
use super::schema::{lookup_key, KEY_INDEX};
use crate::store::{Created, KeyRecord, StoreError};

pub(super) async fn create(connection: &Connection, record: &KeyRecord) -> Result<Created, StoreError> {
    let json = serde_json::to_string(record).map_err(|e| StoreError::permanent(e.to_string()))?;
    let stored: bool = connection.query(redis::cmd("HSETNX").arg(KEY_INDEX).arg(&record.id).arg(&json)).await?;
    if !stored {
        return Ok(Created::IdTaken);
    }
    connection.query::<()>(redis::cmd("SET").arg(lookup_key(&record.sha256)).arg(&json)).await?;
    Ok(Created::Stored)
}

pub(super) async fn find(connection: &Connection, sha256: &str) -> Result<Option<KeyRecord>, StoreError> {
    let json: Option<String> = connection.query(redis::cmd("GET").arg(lookup_key(sha256))).await?;
    json.map(|j| parse(&j)).transpose()
}

pub(super) async fn list(connection: &Connection) -> Result<Vec<KeyRecord>, StoreError> {
    let entries: HashMap<String, String> = connection.query(redis::cmd("HGETALL").arg(KEY_INDEX)).await?;
    entries.values().map(|json| parse(json)).collect()
}

pub(super) async fn revoke(connection: &Connection, id: &str) -> Result<bool, StoreError> {
    let json: Option<String> = connection.query(redis::cmd("HGET").arg(KEY_INDEX).arg(id)).await?;
    let Some(json) = json else {
        return Ok(false);
    };
    let record = parse(&json)?;
    connection.query::<()>(redis::cmd("DEL").arg(lookup_key(&record.sha256))).await?;
    connection.query::<()>(redis::cmd("HDEL").arg(KEY_INDEX).arg(id)).await?;
    Ok(true)
}

fn parse(json: &str) -> Result<KeyRecord, StoreError> {
    serde_json::from_str(json).map_err(|_| corrupt("API key record"))
}
