//! The plugin configuration exactly as written: serde structs that reject unknown fields.
//! [`super::Config`] is built from these by validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cost::{Api, Unit};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub identity: RawIdentity,
    #[serde(default)]
    pub keys: Vec<RawKey>,
    pub tiers: BTreeMap<String, RawTier>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub headers: RawHeaders,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub quota_service: Option<RawQuotaService>,
    #[serde(default)]
    pub prices: Option<RawPrices>,
    #[serde(default)]
    pub logs: RawLogs,
}

/// Log lines of refusals: how many per second a worker writes, and the key of the names
/// anonymous callers get in them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogs {
    #[serde(default = "default_max_refusal_lines_per_second")]
    pub max_refusal_lines_per_second: u32,
    /// A secret (16 to 256 characters); without it each worker draws one at random.
    #[serde(default)]
    pub caller_name_key: Option<String>,
}

impl Default for RawLogs {
    fn default() -> Self {
        RawLogs { max_refusal_lines_per_second: default_max_refusal_lines_per_second(), caller_name_key: None }
    }
}

fn default_max_refusal_lines_per_second() -> u32 {
    10
}

/// Model prices for limits of `"unit": "cost"`, per 1,000 tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrices {
    #[serde(default)]
    pub models: BTreeMap<String, RawPrice>,
    /// The price of a model not listed; without it such a request is refused (400).
    #[serde(default)]
    pub default: Option<RawPrice>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input_per_1k: u64,
    pub output_per_1k: u64,
}

// Debug is written out below: it must not print the token.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuotaService {
    pub cluster: String,
    #[serde(default)]
    pub authority: Option<String>,
    /// The service token sent as `authorization: Bearer <token>` on every callout.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "yes")]
    pub verify_keys: bool,
    #[serde(default = "default_key_cache_ttl_ms")]
    pub key_cache_ttl_ms: u64,
    #[serde(default = "default_negative_cache_ttl_ms")]
    pub negative_cache_ttl_ms: u64,
    #[serde(default = "default_key_cache_size")]
    pub key_cache_size: usize,
    #[serde(default = "default_max_pending")]
    pub max_pending_callouts: u32,
    /// Of those, key verifications (default: 100, or `max_pending_callouts` if lower).
    #[serde(default)]
    pub max_pending_verifications: Option<u32>,
    #[serde(default)]
    pub breaker: RawBreaker,
    #[serde(default = "default_lease_idle_return_ms")]
    pub lease_idle_return_ms: u64,
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

fn default_lease_idle_return_ms() -> u64 {
    10_000
}

fn default_timeout_ms() -> u64 {
    200
}
fn default_key_cache_ttl_ms() -> u64 {
    30_000
}
fn default_negative_cache_ttl_ms() -> u64 {
    5_000
}
fn default_key_cache_size() -> usize {
    10_000
}
fn default_max_pending() -> u32 {
    1_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    #[serde(default = "default_breaker_cooldown_ms")]
    pub cooldown_ms: u64,
}

impl Default for RawBreaker {
    fn default() -> Self {
        RawBreaker { failures: default_breaker_failures(), cooldown_ms: default_breaker_cooldown_ms() }
    }
}

fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown_ms() -> u64 {
    5_000
}

/// `enforce` replies 429/401/400; `shadow` decides and reports the same way but never blocks.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    #[serde(default = "default_api_key_header")]
    pub api_key_header: Option<String>,
    #[serde(default)]
    pub anonymous: Option<RawAnonymous>,
    #[serde(default = "default_ipv4_prefix")]
    pub ipv4_prefix: u8,
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
    #[serde(default = "default_max_credential_length")]
    pub max_credential_length: usize,
    /// Requests with a credential that fails (malformed, unknown, revoked) answered per
    /// client network before a 429; `null` turns the limit off.
    #[serde(default = "default_failed_credentials")]
    pub failed_credentials: Option<RawFailedCredentials>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailedCredentials {
    pub limit: u64,
    pub window: String,
}

fn default_failed_credentials() -> Option<RawFailedCredentials> {
    Some(RawFailedCredentials { limit: 20, window: "1m".to_owned() })
}

impl Default for RawIdentity {
    fn default() -> Self {
        RawIdentity {
            api_key_header: default_api_key_header(),
            anonymous: None,
            ipv4_prefix: default_ipv4_prefix(),
            ipv6_prefix: default_ipv6_prefix(),
            max_credential_length: default_max_credential_length(),
            failed_credentials: default_failed_credentials(),
        }
    }
}

fn default_api_key_header() -> Option<String> {
    Some("x-api-key".to_owned())
}
fn default_ipv4_prefix() -> u8 {
    32
}
fn default_ipv6_prefix() -> u8 {
    64
}
fn default_max_credential_length() -> usize {
    4096
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnonymous {
    pub tier: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: String,
    pub sha256: String,
    pub tier: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    pub limits: Vec<RawLimit>,
    #[serde(default)]
    pub upgrade_hint: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    pub name: String,
    pub limit: u64,
    pub window: String,
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default)]
    pub burst: Option<u64>,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub failure_mode: Option<FailureMode>,
    /// Global limits: units leased from the quota service at a time (0: a callout per
    /// request). On a local limit, the older name of `worker_block`.
    #[serde(default)]
    pub lease_block: Option<u64>,
    /// Local limits: units one worker charges at a time and spends (0: exact).
    #[serde(default)]
    pub worker_block: Option<u64>,
    /// What the limit counts.
    #[serde(default)]
    pub unit: Unit,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default = "default_cost")]
    pub cost: u64,
    #[serde(default)]
    pub limits: Option<Vec<String>>,
    /// The API whose request bodies set the cost of limits counting images or tokens.
    #[serde(default)]
    pub meter: Option<Api>,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub default_max_output_tokens: Option<u64>,
    /// Images weighted by size or quality (`"1536x1024": 2`, `"hd": 2`); 1 by default.
    #[serde(default)]
    pub image_weights: BTreeMap<String, u64>,
}

fn default_cost() -> u64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    #[serde(default = "yes")]
    pub ietf: bool,
    #[serde(default = "yes")]
    pub x_ratelimit: bool,
    #[serde(default)]
    pub problem_json: bool,
    #[serde(default = "yes")]
    pub openai: bool,
    #[serde(default = "default_max_retry_wait_ms")]
    pub max_retry_wait_ms: u64,
}

impl Default for RawHeaders {
    fn default() -> Self {
        RawHeaders {
            ietf: true,
            x_ratelimit: true,
            problem_json: false,
            openai: true,
            max_retry_wait_ms: default_max_retry_wait_ms(),
        }
    }
}

fn default_max_retry_wait_ms() -> u64 {
    60_000
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    #[serde(default = "default_max_tracked_keys")]
    pub max_tracked_keys: u64,
    #[serde(default = "default_cas_retries")]
    pub cas_retries: u32,
    #[serde(default)]
    pub on_contention: ContentionPolicy,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            max_tracked_keys: default_max_tracked_keys(),
            cas_retries: default_cas_retries(),
            on_contention: ContentionPolicy::default(),
        }
    }
}

fn default_max_tracked_keys() -> u64 {
    100_000
}
fn default_cas_retries() -> u32 {
    32
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
