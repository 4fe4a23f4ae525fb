//! API keys: made here, stored by their SHA-256 only. Shared by the HTTP API and the CLI.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use tollgate_core::quota::{CreatedKey, KeyInfo};

use crate::error::ApiError;
use crate::store::{Created, KeyRecord, Store, StoreError};
use crate::validate::is_tier_name;

const TOKEN_PREFIX: &str = "tg_";
const MAX_NAME_CHARS: usize = 64;

/// A key about to be stored: validated, its token drawn. The token is here and, once
/// stored, in the [`CreatedKey`] answer, and nowhere else.
pub struct NewKey {
    token: String,
    record: KeyRecord,
    /// Spare ids: 64 random bits make a clash unlikely, a few tries make it harmless.
    spare_ids: Vec<String>,
}

/// Validates `tier` and `name` and draws the token and id candidates.
pub fn new_key(tier: &str, name: &str) -> Result<NewKey, ApiError> {
    validate_tier(tier)?;
    validate_name(name)?;
    let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(random::<32>()?));
    let mut ids = (0..4).map(|_| random::<8>().map(|r| format!("key_{}", hex(&r)))).collect::<Result<Vec<_>, _>>()?;
    let id = ids.pop().unwrap_or_default();
    let record = KeyRecord {
        id,
        sha256: sha256_hex(token.as_bytes()),
        tier: tier.to_owned(),
        name: name.to_owned(),
        created_at: unix_now(),
    };
    Ok(NewKey { token, record, spare_ids: ids })
}

/// Stores a new key under the first id no other key has.
pub async fn store_key<S: Store>(store: &S, key: NewKey) -> Result<CreatedKey, StoreError> {
    let NewKey { token, mut record, mut spare_ids } = key;
    loop {
        if store.create_key(&record).await? == Created::Stored {
            let KeyRecord { id, tier, name, created_at, .. } = record;
            return Ok(CreatedKey { id, token, tier, name, created_at });
        }
        match spare_ids.pop() {
            Some(id) => record.id = id,
            None => return Err(StoreError::permanent("every id drawn for the new key is taken")),
        }
    }
}

/// Every key, oldest first.
pub async fn list<S: Store>(store: &S) -> Result<Vec<KeyInfo>, StoreError> {
    let mut records = store.list_keys().await?;
    records.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(records.into_iter().map(info).collect())
}

pub fn info(record: KeyRecord) -> KeyInfo {
    KeyInfo { id: record.id, tier: record.tier, name: record.name, created_at: record.created_at }
}

pub fn validate_tier(tier: &str) -> Result<(), ApiError> {
    if is_tier_name(tier) {
        Ok(())
    } else {
        Err(ApiError::invalid("tier", format!("expected [a-z0-9_-]{{1,32}}, got {tier:?}")))
    }
}

pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let chars = name.chars().count();
    if !(1..=MAX_NAME_CHARS).contains(&chars) {
        return Err(ApiError::invalid("name", format!("expected 1 to {MAX_NAME_CHARS} characters, got {chars}")));
    }
    if let Some(bad) = name.chars().find(|c| c.is_control()) {
        return Err(ApiError::invalid("name", format!("expected printable characters, got {bad:?}")));
    }
    Ok(())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn random<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(format!("no randomness available: {e}")))?;
    Ok(bytes)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn a_created_key_is_stored_by_its_hash_only() {
        let store = MemoryStore::new();
        let key = store_key(&store, new_key("premium", "acme").unwrap()).await.unwrap();
        assert!(key.token.starts_with("tg_") && key.token.len() == 3 + 43, "{}", key.token);
        assert!(key.id.starts_with("key_") && key.id.len() == 20);
        let found = store.find_key(&sha256_hex(key.token.as_bytes())).await.unwrap().unwrap();
        assert_eq!((found.id.as_str(), found.tier.as_str()), (key.id.as_str(), "premium"));
        assert!(!format!("{found:?}").contains(&key.token));
    }

    #[test]
    fn tiers_and_names_are_checked() {
        assert!(validate_tier("premium").is_ok());
        assert!(validate_tier("Premium").unwrap_err().message.starts_with("tier: "));
        assert!(validate_tier(&"a".repeat(33)).is_err());
        assert!(validate_name("Acme Corp. (prod) — ü").is_ok());
        assert!(validate_name("").unwrap_err().message.starts_with("name: "));
        assert!(validate_name(&"é".repeat(64)).is_ok());
        assert!(validate_name(&"é".repeat(65)).is_err());
        assert!(validate_name("a\nb").is_err());
    }

    #[test]
    fn hashes_are_lower_case_hex() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
