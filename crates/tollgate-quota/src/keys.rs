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
const MAX_NAME_CHARS: usize = 128;

/// The tiers keys may be made for: the deployment's (`--tiers`, `--plugin-config`), or any
/// well-formed name when the service was not told them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KnownTiers {
    Only(Vec<String>),
    Any,
}

impl KnownTiers {
    /// `free,pro`: comma-separated tier names (spaces around them ignored).
    pub fn parse_list(list: &str) -> Result<KnownTiers, String> {
        let mut tiers: Vec<String> = Vec::new();
        for name in list.split(',').map(str::trim) {
            if !is_tier_name(name) {
                return Err(format!("expected comma-separated tier names [a-z0-9_-]{{1,32}}, got {name:?}"));
            }
            if !tiers.iter().any(|t| t == name) {
                tiers.push(name.to_owned());
            }
        }
        Ok(KnownTiers::Only(tiers))
    }

    /// The tiers of a plugin configuration (the filter's JSON), which must be valid.
    pub fn from_plugin_config(json: &[u8]) -> Result<KnownTiers, String> {
        let config = tollgate_core::config::Config::from_json(json).map_err(|e| e.to_string())?;
        Ok(KnownTiers::Only(config.tiers.into_iter().map(|t| t.name).collect()))
    }

    /// Both lists given: they must name the same tiers.
    pub fn agree(self, other: KnownTiers) -> Result<KnownTiers, String> {
        match (self, other) {
            (KnownTiers::Only(mut a), KnownTiers::Only(mut b)) => {
                a.sort();
                b.sort();
                if a == b {
                    Ok(KnownTiers::Only(a))
                } else {
                    Err(format!("--tiers ({}) and --plugin-config ({}) differ", a.join(","), b.join(",")))
                }
            }
            (KnownTiers::Any, other) | (other, KnownTiers::Any) => Ok(other),
        }
    }
}

/// A key about to be stored: validated, its token drawn. The token is here and, once
/// stored, in the [`CreatedKey`] answer, and nowhere else.
pub struct NewKey {
    token: String,
    record: KeyRecord,
    /// Spare ids: 64 random bits make a clash unlikely, a few tries make it harmless.
    spare_ids: Vec<String>,
}

/// Validates `tier` and `name` and draws the token and id candidates.
pub fn new_key(tier: &str, name: &str, tiers: &KnownTiers) -> Result<NewKey, ApiError> {
    validate_tier(tier, tiers)?;
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

pub fn validate_tier(tier: &str, tiers: &KnownTiers) -> Result<(), ApiError> {
    if !is_tier_name(tier) {
        return Err(ApiError::invalid("tier", format!("expected [a-z0-9_-]{{1,32}}, got {tier:?}")));
    }
    match tiers {
        KnownTiers::Only(known) if !known.iter().any(|t| t == tier) => Err(ApiError::invalid(
            "tier",
            format!("unknown tier {tier:?}; this deployment's tiers: {}", known.join(", ")),
        )),
        _ => Ok(()),
    }
}

/// 1 to 128 characters, printable: no control, format (bidi overrides, zero-width) or
/// line-separator characters, and no space at either end. A name is shown in listings
/// and logs, where such characters could disguise it.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let chars = name.chars().count();
    if !(1..=MAX_NAME_CHARS).contains(&chars) {
        return Err(ApiError::invalid("name", format!("expected 1 to {MAX_NAME_CHARS} characters, got {chars}")));
    }
    if let Some(bad) = name.chars().find(|c| !is_printable(*c)) {
        return Err(ApiError::invalid(
            "name",
            format!("expected printable characters, got U+{:04X} (a control or format character)", u32::from(bad)),
        ));
    }
    if name.trim() != name {
        return Err(ApiError::invalid("name", "expected no space at the start or the end"));
    }
    Ok(())
}

/// Not a control (Cc), format (Cf), line or paragraph separator (Zl, Zp) character, nor a
/// noncharacter. The Cf list is Unicode 16's.
fn is_printable(c: char) -> bool {
    let cp = u32::from(c);
    let format = matches!(
        cp,
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    );
    let separator = matches!(cp, 0x2028 | 0x2029);
    let noncharacter = (0xFDD0..=0xFDEF).contains(&cp) || cp & 0xFFFE == 0xFFFE;
    !(c.is_control() || format || separator || noncharacter)
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
        let key = store_key(&store, new_key("premium", "acme", &KnownTiers::Any).unwrap()).await.unwrap();
        assert!(key.token.starts_with("tg_") && key.token.len() == 3 + 43, "{}", key.token);
        assert!(key.id.starts_with("key_") && key.id.len() == 20);
        let found = store.find_key(&sha256_hex(key.token.as_bytes())).await.unwrap().unwrap();
        assert_eq!((found.id.as_str(), found.tier.as_str()), (key.id.as_str(), "premium"));
        assert!(!format!("{found:?}").contains(&key.token));
    }

    #[test]
    fn tiers_and_names_are_checked() {
        let any = KnownTiers::Any;
        assert!(validate_tier("premium", &any).is_ok());
        assert!(validate_tier("Premium", &any).unwrap_err().message.starts_with("tier: "));
        assert!(validate_tier(&"a".repeat(33), &any).is_err());
        let known = KnownTiers::parse_list("free, pro").unwrap();
        assert!(validate_tier("pro", &known).is_ok());
        assert_eq!(
            validate_tier("gold", &known).unwrap_err().message,
            "tier: unknown tier \"gold\"; this deployment's tiers: free, pro"
        );
        assert!(validate_name("Acme Corp. (prod) — ü 日本").is_ok());
        assert!(validate_name("").unwrap_err().message.starts_with("name: "));
        assert!(validate_name(&"é".repeat(128)).is_ok());
        assert!(validate_name(&"é".repeat(129)).is_err());
        for bad in [
            "a\nb",
            "a\u{7}",
            "acme\u{202E}gpj.exe",
            "a\u{2066}b",
            "a\u{200B}b",
            "a\u{FEFF}",
            "a\u{2028}b",
            "a\u{E0041}",
        ] {
            assert!(validate_name(bad).unwrap_err().message.starts_with("name: expected printable"), "{bad:?}");
        }
        assert!(validate_name(" acme").unwrap_err().message.starts_with("name: expected no space"));
    }

    #[test]
    fn tier_lists_parse_and_must_agree() {
        assert_eq!(
            KnownTiers::parse_list("free,pro,free").unwrap(),
            KnownTiers::Only(vec!["free".into(), "pro".into()])
        );
        assert!(KnownTiers::parse_list("free,").is_err());
        assert!(KnownTiers::parse_list("Gold").is_err());
        let a = KnownTiers::parse_list("pro,free").unwrap();
        assert!(a.clone().agree(KnownTiers::parse_list("free,pro").unwrap()).is_ok());
        assert!(a.clone().agree(KnownTiers::parse_list("free").unwrap()).unwrap_err().contains("differ"));
        assert_eq!(KnownTiers::Any.agree(a.clone()).unwrap(), a);
    }

    #[test]
    fn hashes_are_lower_case_hex() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
