//! The plugin configuration exactly as written, with the defaults of what is left out:
//! each struct read from JSON by its [`FromJson`], which rejects unknown fields.
//! [`super::Config`] is built from these by validation.

use serde::{Deserialize, Serialize};

use super::json::{name_of, FromJson, Json, Named, Object, Path};
use super::ConfigError;
use crate::cost::{Api, Unit};

#[derive(Debug)]
pub struct RawConfig {
    pub mode: Mode,
    pub identity: RawIdentity,
    pub keys: Vec<RawKey>,
    /// Sorted by name.
    pub tiers: Named<RawTier>,
    pub routes: Vec<RawRoute>,
    pub headers: RawHeaders,
    pub store: RawStore,
    pub quota_service: Option<RawQuotaService>,
    pub prices: Option<RawPrices>,
    pub logs: RawLogs,
}

impl FromJson for RawConfig {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        const FIELDS: &[&str] =
            &["mode", "identity", "keys", "tiers", "routes", "headers", "store", "quota_service", "prices", "logs"];
        let o = Object::new(v, path, FIELDS)?;
        Ok(RawConfig {
            mode: o.or("mode", Mode::default())?,
            identity: o.or_defaults("identity")?,
            keys: o.or("keys", Vec::new())?,
            tiers: o.required("tiers")?,
            routes: o.or("routes", Vec::new())?,
            headers: o.or_defaults("headers")?,
            store: o.or_defaults("store")?,
            quota_service: o.or("quota_service", None)?,
            prices: o.or("prices", None)?,
            logs: o.or_defaults("logs")?,
        })
    }
}

/// Log lines of refusals: how many per second a worker writes, and the key of the names
/// anonymous callers get in them.
// Debug is written out below: it must not print the key.
pub struct RawLogs {
    pub max_refusal_lines_per_second: u32,
    /// A secret (16 to 256 characters); without it each worker draws one at random.
    pub caller_name_key: Option<String>,
}

impl FromJson for RawLogs {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        let o = Object::new(v, path, &["max_refusal_lines_per_second", "caller_name_key"])?;
        Ok(RawLogs {
            max_refusal_lines_per_second: o.or("max_refusal_lines_per_second", 10)?,
            caller_name_key: o.or("caller_name_key", None)?,
        })
    }
}

impl std::fmt::Debug for RawLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawLogs")
            .field("max_refusal_lines_per_second", &self.max_refusal_lines_per_second)
            .field("caller_name_key", &self.caller_name_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Model prices for limits of `"unit": "cost"`, per 1,000 tokens.
#[derive(Debug)]
pub struct RawPrices {
    pub models: Named<RawPrice>,
    /// The price of a model not listed; without it such a request is refused (400).
    pub default: Option<RawPrice>,
}

impl FromJson for RawPrices {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        let o = Object::new(v, path, &["models", "default"])?;
        Ok(RawPrices { models: o.or("models", Vec::new())?, default: o.or("default", None)? })
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RawPrice {
    pub input_per_1k: u64,
    pub output_per_1k: u64,
}

impl FromJson for RawPrice {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        let o = Object::new(v, path, &["input_per_1k", "output_per_1k"])?;
        Ok(RawPrice { input_per_1k: o.required("input_per_1k")?, output_per_1k: o.required("output_per_1k")? })
    }
}

// Debug is written out below: it must not print the token.
pub struct RawQuotaService {
    pub cluster: String,
    pub authority: Option<String>,
    /// The service token sent as `authorization: Bearer <token>` on every callout.
    pub token: Option<String>,
    pub timeout_ms: u64,
    pub verify_keys: bool,
    pub key_cache_ttl_ms: u64,
    pub negative_cache_ttl_ms: u64,
    pub key_cache_size: usize,
    pub max_pending_callouts: u32,
    /// Of those, key verifications (default: 100, or `max_pending_callouts` if lower).
    pub max_pending_verifications: Option<u32>,
    pub breaker: RawBreaker,
    pub lease_idle_return_ms: u64,
}

impl FromJson for RawQuotaService {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        const FIELDS: &[&str] = &[
            "cluster",
            "authority",
            "token",
            "timeout_ms",
            "verify_keys",
            "key_cache_ttl_ms",
            "negative_cache_ttl_ms",
            "key_cache_size",
            "max_pending_callouts",
            "max_pending_verifications",
            "breaker",
            "lease_idle_return_ms",
        ];
        let o = Object::new(v, path, FIELDS)?;
        Ok(RawQuotaService {
            cluster: o.required("cluster")?,
            authority: o.or("authority", None)?,
            token: o.or("token", None)?,
            timeout_ms: o.or("timeout_ms", 200)?,
            verify_keys: o.or("verify_keys", true)?,
            key_cache_ttl_ms: o.or("key_cache_ttl_ms", 30_000)?,
            negative_cache_ttl_ms: o.or("negative_cache_ttl_ms", 5_000)?,
            key_cache_size: o.or("key_cache_size", 10_000)?,
            max_pending_callouts: o.or("max_pending_callouts", 1_000)?,
            max_pending_verifications: o.or("max_pending_verifications", None)?,
            breaker: o.or_defaults("breaker")?,
            lease_idle_return_ms: o.or("lease_idle_return_ms", 10_000)?,
        })
    }
}

impl std::fmt::Debug for RawQuotaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawQuotaService")
            .field("cluster", &self.cluster)
            .field("authority", &self.authority)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct RawBreaker {
    pub failures: u32,
    pub cooldown_ms: u64,
}

impl FromJson for RawBreaker {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        let o = Object::new(v, path, &["failures", "cooldown_ms"])?;
        Ok(RawBreaker { failures: o.or("failures", 5)?, cooldown_ms: o.or("cooldown_ms", 5_000)? })
    }
}

/// `enforce` replies 429/401/400; `shadow` decides and reports the same way but never blocks.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

#[derive(Debug)]
pub struct RawIdentity {
    pub api_key_header: Option<String>,
    pub anonymous: Option<RawAnonymous>,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub max_credential_length: usize,
    /// Requests with a credential that fails (malformed, unknown, revoked) answered per
    /// client network before a 429; `null` turns the limit off.
    pub failed_credentials: Option<RawFailedCredentials>,
}

impl FromJson for RawIdentity {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        const FIELDS: &[&str] = &[
            "api_key_header",
            "anonymous",
            "ipv4_prefix",
            "ipv6_prefix",
            "max_credential_length",
            "failed_credentials",
        ];
        let o = Object::new(v, path, FIELDS)?;
        Ok(RawIdentity {
            // Absent: `x-api-key`; `null`: no API keys at all.
            api_key_header: o.or("api_key_header", Some("x-api-key".to_owned()))?,
            anonymous: o.or("anonymous", None)?,
            ipv4_prefix: o.or("ipv4_prefix", 32)?,
            ipv6_prefix: o.or("ipv6_prefix", 64)?,
            max_credential_length: o.or("max_credential_length", 4096)?,
            // Absent: 20 a minute; `null`: off.
            failed_credentials: o
                .or("failed_credentials", Some(RawFailedCredentials { limit: 20, window: "1m".to_owned() }))?,
        })
    }
}

#[derive(Debug)]
pub struct RawFailedCredentials {
    pub limit: u64,
    pub window: String,
}

impl FromJson for RawFailedCredentials {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        let o = Object::new(v, path, &["limit", "window"])?;
        Ok(RawFailedCredentials { limit: o.required("limit")?, window: o.required("window")? })
    }
}

#[derive(Debug)]
pub struct RawAnonymous {
    pub tier: String,
}

impl FromJson for RawAnonymous {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        let o = Object::new(v, path, &["tier"])?;
        Ok(RawAnonymous { tier: o.required("tier")? })
    }
}

#[derive(Debug)]
pub struct RawKey {
    pub id: String,
    pub sha256: String,
    pub tier: String,
}

impl FromJson for RawKey {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        let o = Object::new(v, path, &["id", "sha256", "tier"])?;
        Ok(RawKey { id: o.required("id")?, sha256: o.required("sha256")?, tier: o.required("tier")? })
    }
}

#[derive(Debug)]
pub struct RawTier {
    pub limits: Vec<RawLimit>,
    pub upgrade_hint: Option<String>,
}

impl FromJson for RawTier {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        let o = Object::new(v, path, &["limits", "upgrade_hint"])?;
        Ok(RawTier { limits: o.required("limits")?, upgrade_hint: o.or("upgrade_hint", None)? })
    }
}

#[derive(Debug)]
pub struct RawLimit {
    pub name: String,
    pub limit: u64,
    pub window: String,
    pub algorithm: Algorithm,
    pub burst: Option<u64>,
    pub scope: Scope,
    pub failure_mode: Option<FailureMode>,
    /// Global limits: units leased from the quota service at a time (0: a callout per
    /// request). On a local limit, the older name of `worker_block`.
    pub lease_block: Option<u64>,
    /// Local limits: units one worker charges at a time and spends (0: exact).
    pub worker_block: Option<u64>,
    /// What the limit counts.
    pub unit: Unit,
}

impl FromJson for RawLimit {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        const FIELDS: &[&str] = &[
            "name",
            "limit",
            "window",
            "algorithm",
            "burst",
            "scope",
            "failure_mode",
            "lease_block",
            "worker_block",
            "unit",
        ];
        let o = Object::new(v, path, FIELDS)?;
        Ok(RawLimit {
            name: o.required("name")?,
            limit: o.required("limit")?,
            window: o.required("window")?,
            algorithm: o.or("algorithm", Algorithm::default())?,
            burst: o.or("burst", None)?,
            scope: o.or("scope", Scope::default())?,
            failure_mode: o.or("failure_mode", None)?,
            lease_block: o.or("lease_block", None)?,
            worker_block: o.or("worker_block", None)?,
            unit: o.or("unit", Unit::default())?,
        })
    }
}

/// Where a limit is counted: in this Envoy's shared data, or by the quota service for
/// every Envoy alike.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    Local,
    Global,
}

/// What a global limit does when the quota service cannot answer.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Admit, and say so in a response header and a stat.
    Open,
    /// Refuse with 503 and `Retry-After`.
    Closed,
    /// Count against a bucket of the same size in this Envoy's shared data.
    #[default]
    Local,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    TokenBucket,
    FixedWindow,
}

#[derive(Debug)]
pub struct RawRoute {
    pub path_prefix: Option<String>,
    pub path: Option<String>,
    pub methods: Option<Vec<String>>,
    pub cost: u64,
    pub limits: Option<Vec<String>>,
    /// The API whose request bodies set the cost of limits counting images or tokens.
    pub meter: Option<Api>,
    pub max_body_bytes: Option<u64>,
    pub default_max_output_tokens: Option<u64>,
    /// Images weighted by size or quality (`"1536x1024": 2`, `"hd": 2`); 1 by default.
    pub image_weights: Named<u64>,
}

impl FromJson for RawRoute {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        const FIELDS: &[&str] = &[
            "path_prefix",
            "path",
            "methods",
            "cost",
            "limits",
            "meter",
            "max_body_bytes",
            "default_max_output_tokens",
            "image_weights",
        ];
        let o = Object::new(v, path, FIELDS)?;
        Ok(RawRoute {
            path_prefix: o.or("path_prefix", None)?,
            path: o.or("path", None)?,
            methods: o.or("methods", None)?,
            cost: o.or("cost", 1)?,
            limits: o.or("limits", None)?,
            meter: o.or("meter", None)?,
            max_body_bytes: o.or("max_body_bytes", None)?,
            default_max_output_tokens: o.or("default_max_output_tokens", None)?,
            image_weights: o.or("image_weights", Vec::new())?,
        })
    }
}

#[derive(Debug)]
pub struct RawHeaders {
    pub ietf: bool,
    pub x_ratelimit: bool,
    pub problem_json: bool,
    pub openai: bool,
    pub max_retry_wait_ms: u64,
}

impl FromJson for RawHeaders {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        const FIELDS: &[&str] = &["ietf", "x_ratelimit", "problem_json", "openai", "max_retry_wait_ms"];
        let o = Object::new(v, path, FIELDS)?;
        Ok(RawHeaders {
            ietf: o.or("ietf", true)?,
            x_ratelimit: o.or("x_ratelimit", true)?,
            problem_json: o.or("problem_json", false)?,
            openai: o.or("openai", true)?,
            max_retry_wait_ms: o.or("max_retry_wait_ms", 60_000)?,
        })
    }
}

#[derive(Debug)]
pub struct RawStore {
    pub max_tracked_keys: u64,
    pub cas_retries: u32,
    pub on_contention: ContentionPolicy,
}

impl FromJson for RawStore {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        let o = Object::new(v, path, &["max_tracked_keys", "cas_retries", "on_contention"])?;
        Ok(RawStore {
            max_tracked_keys: o.or("max_tracked_keys", 100_000)?,
            cas_retries: o.or("cas_retries", 32)?,
            on_contention: o.or("on_contention", ContentionPolicy::default())?,
        })
    }
}

/// What to do when every compare-and-swap attempt lost a race (or shared data failed).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ContentionPolicy {
    /// Admit the request unmetered (counted in `tollgate.store.cas_exhausted`).
    #[default]
    Allow,
    /// Reply 503 with `Retry-After: 1`.
    Deny,
}

/// The enums of names, read by serde's derived readers (from a string).
macro_rules! from_json_by_name {
    ($($t:ty),*) => {$(
        impl FromJson for $t {
            fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
                name_of(v, path)
            }
        }
    )*};
}

from_json_by_name!(Mode, Scope, FailureMode, Algorithm, ContentionPolicy, Api, Unit);
