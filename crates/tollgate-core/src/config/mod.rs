//! Plugin configuration: JSON in, a validated [`Config`] out, or a [`ConfigError`] that
//! names the bad field by its path (`tiers.free.limits[1].window`) and says what was expected.

mod json;
mod limits;
mod raw;
mod validate;

use std::fmt;

use hashbrown::HashMap;

use json::FromJson;
pub use limits::{
    default_lease_block, default_worker_block, limit_from_parts, parse_window, window_text, MAX_DEFAULT_LEASE_BLOCK,
    MIN_DEFAULT_LEASE_BLOCK, MIN_DEFAULT_WORKER_BLOCK,
};
use raw::RawConfig;
pub use raw::{Algorithm, ContentionPolicy, FailureMode, Mode};
pub use validate::SERVICE_TOKEN_CHARS;

use crate::cost::{Api, Price, Unit};
use crate::json_path;

/// Upper bounds that keep every computation inside `u64` and every stored value small.
pub const MAX_LIMITS_PER_TIER: usize = 16;
pub const MAX_QUANTITY: u64 = 1_000_000_000;
pub const MAX_WINDOW_SECS: u64 = 366 * 86_400;
pub const MAX_TRACKED_KEYS: u64 = 10_000_000;
/// Entries per shared-data slot: a slot is a small set-associative bucket of callers
/// ([`crate::store`]).
pub const SLOT_WAYS: usize = 4;
/// Slots per tracked caller: callers hash to slots unevenly, and a slot that gets more
/// live callers than it has ways displaces some. With one slot per caller (four ways of
/// headroom) fewer than 1 % of `max_tracked_keys` live callers are displaced; with a
/// quarter (no headroom), about 20 % were (docs/ARCHITECTURE.md, "Slots").
pub const SLOTS_PER_TRACKED_KEY: u64 = 1;

#[derive(Debug)]
pub struct Config {
    pub mode: Mode,
    pub identity: Identity,
    pub tiers: Vec<Tier>,
    pub keys: Vec<Key>,
    keys_by_hash: HashMap<[u8; 32], usize>,
    pub routes: Vec<Route>,
    pub headers: HeaderOptions,
    pub store: StoreOptions,
    /// The quota service, if any limit is global or keys are verified remotely.
    pub quota: Option<QuotaService>,
    /// Model prices, for limits of cost.
    pub prices: Prices,
    pub logs: LogOptions,
}

/// Log lines of refusals.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Refusal lines a worker writes per second at most; the rest are counted and
    /// summed up in one line (0: none).
    pub max_refusal_lines_per_second: u32,
    /// The key of anonymous callers' names in log lines (`None`: random per worker).
    pub caller_name_key: Option<Secret>,
}

/// A secret from the configuration: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Model prices per 1,000 tokens.
#[derive(Debug, Default)]
pub struct Prices {
    pub models: Vec<(String, Price)>,
    /// The price of a model not listed (`None`: such a request is refused).
    pub default: Option<Price>,
}

impl Prices {
    /// The price of `model` (the default for one not listed, or without a model).
    pub fn of(&self, model: Option<&str>) -> Option<Price> {
        model.and_then(|m| self.models.iter().find(|(name, _)| name == m)).map(|(_, p)| *p).or(self.default)
    }
}

#[derive(Debug, Clone)]
pub struct QuotaService {
    /// The Envoy cluster callouts go to (in Istio: `outbound|PORT||HOST`).
    pub cluster: String,
    pub authority: String,
    /// `authorization` of every callout, if `quota_service.token` is set.
    pub authorization: Option<Authorization>,
    pub timeout_ms: u64,
    pub verify_keys: bool,
    pub key_cache_ttl_ms: u64,
    pub negative_cache_ttl_ms: u64,
    pub key_cache_size: usize,
    /// Callouts in flight per worker, of every kind.
    pub max_pending_callouts: u32,
    /// Of those, key verifications; a request past it gets a 503 without a callout.
    pub max_pending_verifications: u32,
    pub breaker_failures: u32,
    pub breaker_cooldown_ms: u64,
    /// A lease unused for this long is given back to the service (`POST /v1/return`).
    pub lease_idle_return_ms: u64,
}

/// `Bearer <service token>`: the value of the callouts' `authorization` header. Its Debug
/// does not show the token, so that no log line carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct Authorization(String);

impl Authorization {
    pub fn bearer(token: &str) -> Authorization {
        Authorization(format!("Bearer {token}"))
    }

    /// The header value.
    pub fn value(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Authorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer <redacted>")
    }
}

#[derive(Debug)]
pub struct Identity {
    /// Lower-case header name carrying an API key, if enabled.
    pub api_key_header: Option<String>,
    /// Tier of callers without a credential; `None` means such callers get 401.
    pub anonymous_tier: Option<usize>,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub max_credential_length: usize,
    /// Requests with a failing credential answered per client network (the anonymous
    /// tier's) before a 429, counted in shared data before any key verification;
    /// `None`: off.
    pub failed_credentials: Option<Limit>,
}

#[derive(Debug)]
pub struct Key {
    pub id: String,
    pub tier: usize,
    /// How the key is metered and logged: `key:<id>`.
    pub caller: String,
    /// [`crate::hash::identity_fingerprint`] of its tier and caller: where its state lives.
    pub fingerprint: u64,
}

#[derive(Debug)]
pub struct Tier {
    pub name: String,
    pub limits: Vec<Limit>,
    pub upgrade_hint: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Limit {
    pub name: String,
    /// Requests (cost units) allowed per window.
    pub quota: u64,
    pub window: Window,
    pub kind: LimitKind,
    /// Changes whenever the limit's definition changes, so stored state of an old
    /// definition is never applied to a new one.
    pub fingerprint: u32,
    /// `None`: counted locally. `Some(mode)`: counted by the quota service, with `mode`
    /// when it cannot answer.
    pub global: Option<FailureMode>,
    /// Global limits: units leased from the quota service at a time (see [`crate::lease`])
    /// instead of a callout per request; 0 is exact. Always 0 for a local limit.
    pub lease_block: u64,
    /// Local limits: units charged in shared data by one worker and spent by it (see
    /// [`crate::worker_block`]) instead of a shared-data update per request; 0 is exact.
    /// Always 0 for a global limit (a worker's block of a lease follows from `lease_block`).
    pub worker_block: u64,
    /// What the limit counts: requests (times the route's cost), or on metered routes
    /// images or tokens.
    pub unit: Unit,
    /// This limit's item of the `RateLimit-Policy` header, `"name";q=<quota>;w=<secs>`:
    /// it never changes, so it is written once here rather than for every request.
    pub policy_item: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// GCRA token bucket: one token every `interval_ns`, at most `capacity` stored.
    TokenBucket { capacity: u64, interval_ns: u64, depth_ns: u64 },
    /// Counter over windows aligned to the Unix epoch (so `1d` resets at 00:00 UTC).
    FixedWindow { window_ns: u64 },
}

impl Limit {
    /// Largest cost a single request may have and still ever be admitted.
    pub fn capacity(&self) -> u64 {
        match self.kind {
            LimitKind::TokenBucket { capacity, .. } => capacity,
            LimitKind::FixedWindow { .. } => self.quota,
        }
    }

    pub fn burst(&self) -> Option<u64> {
        match self.kind {
            LimitKind::TokenBucket { capacity, .. } if capacity != self.quota => Some(capacity),
            _ => None,
        }
    }
}

/// A window as configured (`"1d"`) and in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub text: String,
    pub secs: u64,
}

#[derive(Debug)]
pub struct Route {
    pub matcher: PathMatch,
    /// Upper-case methods; `None` matches every method.
    pub methods: Option<Vec<String>>,
    pub cost: u64,
    /// Per tier, a bit mask of the tier's limits that apply on this route.
    pub applies: Vec<u16>,
    /// How the route's request bodies are read for limits of images or tokens; `None`:
    /// the body is never read, and only limits of requests apply.
    pub meter: Option<Meter>,
}

/// A metered route: its API, and the bounds and defaults of reading its bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meter {
    pub api: Api,
    /// A larger body is refused with 413 before it is read whole.
    pub max_body_bytes: usize,
    /// The output a token limit reserves when the request sets no maximum.
    pub default_max_output_tokens: u64,
    /// Weights of image sizes and qualities (an image of two weighted properties counts
    /// their product).
    pub image_weights: Vec<(String, u64)>,
}

/// Request bodies above this are refused by default (Envoy buffers at most 1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 256 * 1024;
/// The largest `max_body_bytes`: below Envoy's default buffer limit of 1 MiB, which
/// would otherwise answer first, in plain text.
pub const MAX_BODY_BYTES: u64 = 1_000_000;
/// The output a token limit reserves for a request that sets no maximum, by default.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4096;

#[derive(Debug, PartialEq, Eq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

#[derive(Debug, Clone, Copy)]
pub struct HeaderOptions {
    pub ietf: bool,
    pub x_ratelimit: bool,
    pub problem_json: bool,
    /// OpenAI's `x-ratelimit-*-requests` and `-tokens`, on metered routes.
    pub openai: bool,
    /// The longest wait a 429 asks clients to retry after (`rate_limit_exceeded`,
    /// `retry-after-ms`); a longer one tells them not to (`x-should-retry: false`,
    /// `insufficient_quota`): SDKs would otherwise sleep through it or retry in vain.
    pub max_retry_wait_ms: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Callers tracked at once: live callers past it may displace one another.
    pub max_tracked_keys: u64,
    /// Number of shared-data keys: one per tracked caller ([`SLOTS_PER_TRACKED_KEY`]),
    /// of `SLOT_WAYS` entries each.
    pub slots: u32,
    pub cas_retries: u32,
    pub on_contention: ContentionPolicy,
}

/// A configuration error: where (`path`) and what was expected (`message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(path: impl Into<String>, message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError { path: path.into(), message: message.into() })
}

impl Config {
    /// Parses and validates the plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let value: json::Json = serde_json::from_slice(bytes)
            .map_err(|e| ConfigError { path: json_path::error_path(bytes, &e), message: e.to_string() })?;
        Config::try_from(RawConfig::from_json(&value, json::Path::Root)?)
    }

    /// The key whose SHA-256 is `hash`, if configured.
    pub fn key_by_hash(&self, hash: &[u8; 32]) -> Option<&Key> {
        self.key_index_by_hash(hash).and_then(|i| self.keys.get(i))
    }

    /// The index in `keys` of the key whose SHA-256 is `hash`, if configured.
    pub fn key_index_by_hash(&self, hash: &[u8; 32]) -> Option<usize> {
        self.keys_by_hash.get(hash).copied()
    }

    /// The first route matching the request, if any.
    pub fn route(&self, method: &str, path: &str) -> Option<&Route> {
        self.route_index(method, path).and_then(|i| self.routes.get(i))
    }

    /// The index of the first route matching the request, if any.
    pub fn route_index(&self, method: &str, path: &str) -> Option<usize> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        self.routes.iter().position(|r| r.matches(method, path))
    }
}

impl Route {
    fn matches(&self, method: &str, path: &str) -> bool {
        let path_ok = match &self.matcher {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
        };
        path_ok && self.methods.as_ref().is_none_or(|ms| ms.iter().any(|m| m == method))
    }
}

/// Stats name requests refused before a tier is known with this pseudo-tier.
pub const RESERVED_TIER: &str = "none";

/// Whether `s` is 1 to `max` characters of a-z, 0-9, `_` or `-`: names end up in stat
/// names, header values and shared-data keys.
pub(crate) fn is_simple_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The rule of tier, limit and key names.
const NAME_RULE: &str = "expected 1-32 characters of a-z, 0-9, '_' or '-'";

#[cfg(test)]
mod tests;
