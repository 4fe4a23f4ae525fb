//! Plugin configuration: JSON in, a validated [`Config`] out, or a [`ConfigError`] that
//! names the bad field by its path (`tiers.free.limits[1].window`) and says what was expected.

mod raw;

use std::fmt;

use hashbrown::HashMap;

pub use raw::{Algorithm, ContentionPolicy, FailureMode, Mode};
use raw::{RawConfig, RawIdentity, RawKey, RawLimit, RawQuotaService, RawRoute, RawStore, RawTier, Scope};

use crate::hash::fnv1a32;
use crate::time::NANOS_PER_SEC;

/// Upper bounds that keep every computation inside `u64` and every stored value small.
pub const MAX_LIMITS_PER_TIER: usize = 16;
pub const MAX_QUANTITY: u64 = 1_000_000_000;
pub const MAX_WINDOW_SECS: u64 = 366 * 86_400;
pub const MAX_TRACKED_KEYS: u64 = 10_000_000;
/// Entries per shared-data slot: a slot is a small set-associative bucket of callers
/// ([`crate::store`]).
pub const SLOT_WAYS: usize = 4;

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
}

#[derive(Debug, Clone)]
pub struct QuotaService {
    /// The Envoy cluster callouts go to (in Istio: `outbound|PORT||HOST`).
    pub cluster: String,
    pub authority: String,
    pub timeout_ms: u64,
    pub verify_keys: bool,
    pub key_cache_ttl_ms: u64,
    pub negative_cache_ttl_ms: u64,
    pub key_cache_size: usize,
    pub max_pending_callouts: u32,
    pub breaker_failures: u32,
    pub breaker_cooldown_ms: u64,
    /// A lease unused for this long is given back to the service (`POST /v1/return`).
    pub lease_idle_return_ms: u64,
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
}

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
}

#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Number of shared-data keys; memory is bounded by `slots × SLOT_WAYS` identities.
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
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError { path, message: e.into_inner().to_string() }
        })?;
        de.end().map_err(|e| ConfigError { path: String::new(), message: e.to_string() })?;
        Config::try_from(raw)
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

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        if raw.tiers.is_empty() {
            return err("tiers", "expected at least one tier");
        }
        let mut tiers = Vec::with_capacity(raw.tiers.len());
        for (name, tier) in &raw.tiers {
            tiers.push(validate_tier(name, tier)?);
        }
        let tier_index = |name: &str, path: &str| -> Result<usize, ConfigError> {
            tiers.iter().position(|t| t.name == name).map_or_else(
                || {
                    let known: Vec<&str> = tiers.iter().map(|t| t.name.as_str()).collect();
                    err(path, format!("unknown tier \"{name}\"; defined tiers: {}", known.join(", ")))
                },
                Ok,
            )
        };
        let identity = validate_identity(&raw.identity, &tier_index)?;
        let (keys, keys_by_hash) = validate_keys(&raw.keys, &tier_index)?;
        if raw.routes.is_empty() {
            return err("routes", "expected at least one route (use {\"path_prefix\": \"/\"} to limit every request)");
        }
        let routes = raw
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| validate_route(&format!("routes[{i}]"), r, &tiers))
            .collect::<Result<Vec<_>, _>>()?;
        let store = validate_store(&raw.store)?;
        let quota = raw.quota_service.as_ref().map(validate_quota_service).transpose()?;
        if quota.is_none() {
            for tier in &tiers {
                if let Some(i) = tier.limits.iter().position(|l| l.global.is_some()) {
                    return err(
                        format!("tiers.{}.limits[{i}].scope", tier.name),
                        "a global limit needs a \"quota_service\" to count it",
                    );
                }
            }
        }
        Ok(Config {
            mode: raw.mode,
            identity,
            tiers,
            keys,
            keys_by_hash,
            routes,
            headers: HeaderOptions {
                ietf: raw.headers.ietf,
                x_ratelimit: raw.headers.x_ratelimit,
                problem_json: raw.headers.problem_json,
            },
            store,
            quota,
        })
    }
}

fn validate_quota_service(raw: &RawQuotaService) -> Result<QuotaService, ConfigError> {
    const P: &str = "quota_service";
    if raw.cluster.is_empty() || raw.cluster.len() > 256 {
        return err(format!("{P}.cluster"), "expected the name of an Envoy cluster");
    }
    let authority = raw.authority.clone().unwrap_or_else(|| raw.cluster.clone());
    if authority.is_empty() || authority.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return err(format!("{P}.authority"), "expected a host name (no spaces or control characters)");
    }
    if !(1..=60_000).contains(&raw.timeout_ms) {
        return err(format!("{P}.timeout_ms"), "expected milliseconds from 1 to 60000");
    }
    if raw.key_cache_ttl_ms > 86_400_000 {
        return err(format!("{P}.key_cache_ttl_ms"), "expected milliseconds from 0 to 86400000");
    }
    if raw.negative_cache_ttl_ms > 86_400_000 {
        return err(format!("{P}.negative_cache_ttl_ms"), "expected milliseconds from 0 to 86400000");
    }
    if !(1..=1_000_000).contains(&raw.key_cache_size) {
        return err(format!("{P}.key_cache_size"), "expected a whole number from 1 to 1000000");
    }
    if raw.max_pending_callouts == 0 {
        return err(format!("{P}.max_pending_callouts"), "expected a whole number from 1");
    }
    if raw.breaker.failures == 0 {
        return err(format!("{P}.breaker.failures"), "expected a whole number from 1");
    }
    if !(1..=3_600_000).contains(&raw.breaker.cooldown_ms) {
        return err(format!("{P}.breaker.cooldown_ms"), "expected milliseconds from 1 to 3600000");
    }
    if !(100..=3_600_000).contains(&raw.lease_idle_return_ms) {
        return err(format!("{P}.lease_idle_return_ms"), "expected milliseconds from 100 to 3600000");
    }
    Ok(QuotaService {
        cluster: raw.cluster.clone(),
        authority,
        timeout_ms: raw.timeout_ms,
        verify_keys: raw.verify_keys,
        key_cache_ttl_ms: raw.key_cache_ttl_ms,
        negative_cache_ttl_ms: raw.negative_cache_ttl_ms,
        key_cache_size: raw.key_cache_size,
        max_pending_callouts: raw.max_pending_callouts,
        breaker_failures: raw.breaker.failures,
        breaker_cooldown_ms: raw.breaker.cooldown_ms,
        lease_idle_return_ms: raw.lease_idle_return_ms,
    })
}

/// Names that end up in stat names, header values and shared-data keys.
fn is_simple_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Stats name requests refused before a tier is known with this pseudo-tier.
pub const RESERVED_TIER: &str = "none";

const NAME_RULE: &str = "expected 1-32 characters of a-z, 0-9, '_' or '-'";

fn validate_tier(name: &str, raw: &RawTier) -> Result<Tier, ConfigError> {
    let path = format!("tiers.{name}");
    if !is_simple_name(name, 32) {
        return err(path, format!("tier name {name:?}: {NAME_RULE}"));
    }
    if name == RESERVED_TIER {
        return err(path, "the tier name \"none\" is reserved for requests refused before a tier is known");
    }
    if raw.limits.is_empty() || raw.limits.len() > MAX_LIMITS_PER_TIER {
        return err(format!("{path}.limits"), format!("expected 1 to {MAX_LIMITS_PER_TIER} limits"));
    }
    let mut limits: Vec<Limit> = Vec::with_capacity(raw.limits.len());
    for (i, l) in raw.limits.iter().enumerate() {
        let lpath = format!("{path}.limits[{i}]");
        let limit = validate_limit(&lpath, l)?;
        if limits.iter().any(|other| other.name == limit.name) {
            return err(format!("{lpath}.name"), format!("duplicate limit name \"{}\" in this tier", limit.name));
        }
        limits.push(limit);
    }
    if let Some(hint) = &raw.upgrade_hint {
        if hint.trim().is_empty() || hint.len() > 512 {
            return err(format!("{path}.upgrade_hint"), "expected a non-empty sentence of at most 512 bytes");
        }
    }
    Ok(Tier { name: name.to_owned(), limits, upgrade_hint: raw.upgrade_hint.clone() })
}

fn validate_limit(path: &str, raw: &RawLimit) -> Result<Limit, ConfigError> {
    let secs = parse_window(&raw.window).ok_or_else(|| ConfigError {
        path: format!("{path}.window"),
        message: format!("expected a duration like 10s, 1m, 1h, 1d (at most 366d), got {:?}", raw.window),
    })?;
    let mut limit = limit_from_parts(path, &raw.name, raw.limit, secs, raw.algorithm, raw.burst)?;
    limit.window.text.clone_from(&raw.window);
    limit.global = match (raw.scope, raw.failure_mode) {
        (Scope::Global, mode) => Some(mode.unwrap_or_default()),
        (Scope::Local, None) => None,
        (Scope::Local, Some(_)) => {
            return err(
                format!("{path}.failure_mode"),
                "failure_mode applies only to limits with \"scope\": \"global\"",
            )
        }
    };
    let half = limit.capacity() / 2;
    let block = |field: &str, block: Option<u64>, default: u64| match block {
        None => Ok(default),
        Some(block) if block <= half => Ok(block),
        Some(_) => err(
            format!("{path}.{field}"),
            format!("expected 0 (exact) to half the limit's capacity ({half}): two blocks must fit in it"),
        ),
    };
    match raw.scope {
        Scope::Global => {
            if raw.worker_block.is_some() {
                return err(
                    format!("{path}.worker_block"),
                    "worker_block applies only to local limits; a global limit's workers take a tenth of its lease_block",
                );
            }
            limit.lease_block = block("lease_block", raw.lease_block, default_lease_block(limit.capacity()))?;
        }
        Scope::Local => {
            // `lease_block` is the older name of a local limit's worker block.
            let (field, given) = match (raw.worker_block, raw.lease_block) {
                (Some(_), Some(_)) => {
                    return err(
                        format!("{path}.lease_block"),
                        "give worker_block alone: lease_block is its older name on a local limit",
                    )
                }
                (None, Some(b)) => ("lease_block", Some(b)),
                (w, None) => ("worker_block", w),
            };
            limit.worker_block = block(field, given, default_worker_block(limit.capacity()))?;
        }
    }
    Ok(limit)
}

/// Validates a limit given in parts (from the config, or from a quota-service request).
pub fn limit_from_parts(
    path: &str,
    name: &str,
    quota: u64,
    window_secs: u64,
    algorithm: Algorithm,
    burst: Option<u64>,
) -> Result<Limit, ConfigError> {
    if !is_simple_name(name, 32) {
        return err(format!("{path}.name"), NAME_RULE);
    }
    if quota == 0 || quota > MAX_QUANTITY {
        return err(format!("{path}.limit"), format!("expected a whole number from 1 to {MAX_QUANTITY}"));
    }
    if !(1..=MAX_WINDOW_SECS).contains(&window_secs) {
        return err(format!("{path}.window"), format!("expected a window from 1 s to {MAX_WINDOW_SECS} s"));
    }
    let window_ns = window_secs * NANOS_PER_SEC;
    let kind = match algorithm {
        Algorithm::FixedWindow => {
            if burst.is_some() {
                return err(format!("{path}.burst"), "burst applies only to the token_bucket algorithm");
            }
            LimitKind::FixedWindow { window_ns }
        }
        Algorithm::TokenBucket => {
            let capacity = burst.unwrap_or(quota);
            if capacity == 0 || capacity > MAX_QUANTITY {
                return err(format!("{path}.burst"), format!("expected a whole number from 1 to {MAX_QUANTITY}"));
            }
            // Rounded up, so that a window never refills more than `limit` tokens.
            let interval_ns = window_ns.div_ceil(quota);
            let depth_ns =
                interval_ns.checked_mul(capacity).filter(|d| *d <= u64::MAX / 4).ok_or_else(|| ConfigError {
                    path: format!("{path}.burst"),
                    message: "burst × window / limit is too large; use a smaller burst or window".to_owned(),
                })?;
            LimitKind::TokenBucket { capacity, interval_ns, depth_ns }
        }
    };
    let fingerprint = fnv1a32(format!("{name}|{algorithm:?}|{quota}|{window_secs}|{burst:?}").as_bytes());
    Ok(Limit {
        name: name.to_owned(),
        quota,
        window: Window { text: window_text(window_secs), secs: window_secs },
        kind,
        fingerprint,
        global: None,
        lease_block: 0,
        worker_block: 0,
        policy_item: format!("\"{name}\";q={quota};w={window_secs}"),
    })
}

/// Smallest lease block the default gives; below it a limit stays exact.
pub const MIN_DEFAULT_LEASE_BLOCK: u64 = 10;
/// Largest lease block the default gives.
pub const MAX_DEFAULT_LEASE_BLOCK: u64 = 1000;

/// The lease block of a global limit without `lease_block`: 1 % of its capacity, at most
/// [`MAX_DEFAULT_LEASE_BLOCK`]; 0 (exact) when that is under [`MIN_DEFAULT_LEASE_BLOCK`],
/// i.e. for every limit with a capacity under 1000 (a daily 5 or 100 stays exact).
pub fn default_lease_block(capacity: u64) -> u64 {
    one_percent_block(capacity, MIN_DEFAULT_LEASE_BLOCK)
}

/// Smallest worker block the default gives a local limit; below it the limit stays exact.
pub const MIN_DEFAULT_WORKER_BLOCK: u64 = 100;

/// The worker block of a local limit without `worker_block` (see [`crate::worker_block`]): 1 % of
/// its capacity, at most [`MAX_DEFAULT_LEASE_BLOCK`]; 0 (exact) when that is under
/// [`MIN_DEFAULT_WORKER_BLOCK`], i.e. for every limit with a capacity under 10,000.
pub fn default_worker_block(capacity: u64) -> u64 {
    one_percent_block(capacity, MIN_DEFAULT_WORKER_BLOCK)
}

/// 1 % of `capacity`, at most [`MAX_DEFAULT_LEASE_BLOCK`]; 0 (exact) under `min`.
fn one_percent_block(capacity: u64, min: u64) -> u64 {
    let block = (capacity / 100).min(MAX_DEFAULT_LEASE_BLOCK);
    if block >= min {
        block
    } else {
        0
    }
}

/// The shortest text for a window: 86400 → `1d`, 90 → `90s`.
pub fn window_text(secs: u64) -> String {
    [(86_400, "d"), (3600, "h"), (60, "m")]
        .iter()
        .find(|(unit, _)| secs.is_multiple_of(*unit))
        .map_or_else(|| format!("{secs}s"), |(unit, suffix)| format!("{}{suffix}", secs / unit))
}

/// `"10s"`, `"1m"`, `"2h"`, `"1d"` → seconds; anything else (or over 366 days) → `None`.
pub fn parse_window(text: &str) -> Option<u64> {
    let unit_at = text.len().checked_sub(1)?;
    let (digits, unit) = (text.get(..unit_at)?, text.get(unit_at..)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    let secs = n.checked_mul(scale)?;
    (1..=MAX_WINDOW_SECS).contains(&secs).then_some(secs)
}

fn validate_identity(
    raw: &RawIdentity,
    tier_index: &dyn Fn(&str, &str) -> Result<usize, ConfigError>,
) -> Result<Identity, ConfigError> {
    let api_key_header = match &raw.api_key_header {
        None => None,
        Some(h) => {
            let valid = !h.is_empty()
                && h.len() <= 64
                && h.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
            if !valid || h == "authorization" {
                return err(
                    "identity.api_key_header",
                    "expected a lower-case header name other than authorization (or null to disable)",
                );
            }
            Some(h.clone())
        }
    };
    let anonymous_tier = match &raw.anonymous {
        None => None,
        Some(a) => Some(tier_index(&a.tier, "identity.anonymous.tier")?),
    };
    if raw.ipv4_prefix > 32 {
        return err("identity.ipv4_prefix", "expected a prefix length from 0 to 32");
    }
    if raw.ipv6_prefix > 128 {
        return err("identity.ipv6_prefix", "expected a prefix length from 0 to 128");
    }
    if !(16..=16_384).contains(&raw.max_credential_length) {
        return err("identity.max_credential_length", "expected a length from 16 to 16384 bytes");
    }
    Ok(Identity {
        api_key_header,
        anonymous_tier,
        ipv4_prefix: raw.ipv4_prefix,
        ipv6_prefix: raw.ipv6_prefix,
        max_credential_length: raw.max_credential_length,
    })
}

type KeyTable = (Vec<Key>, HashMap<[u8; 32], usize>);

fn validate_keys(
    raw: &[RawKey],
    tier_index: &dyn Fn(&str, &str) -> Result<usize, ConfigError>,
) -> Result<KeyTable, ConfigError> {
    let mut keys = Vec::with_capacity(raw.len());
    let mut by_hash = HashMap::with_capacity(raw.len());
    for (i, k) in raw.iter().enumerate() {
        let path = format!("keys[{i}]");
        let id_ok = !k.id.is_empty()
            && k.id.len() <= 64
            && k.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !id_ok {
            return err(format!("{path}.id"), "expected 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-'");
        }
        if keys.iter().any(|other: &Key| other.id == k.id) {
            return err(format!("{path}.id"), format!("duplicate key id \"{}\"", k.id));
        }
        let hash = parse_sha256_hex(&k.sha256).ok_or_else(|| ConfigError {
            path: format!("{path}.sha256"),
            message: "expected 64 hex digits: the SHA-256 of the token, never the token itself".to_owned(),
        })?;
        let tier = tier_index(&k.tier, &format!("{path}.tier"))?;
        if by_hash.insert(hash, keys.len()).is_some() {
            return err(format!("{path}.sha256"), "the same hash is configured for another key");
        }
        let caller = ["key:", k.id.as_str()].concat();
        let fingerprint = crate::hash::identity_fingerprint(&k.tier, &caller);
        keys.push(Key { id: k.id.clone(), tier, caller, fingerprint });
    }
    Ok((keys, by_hash))
}

fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        let hi = (pair.first()?.to_ascii_lowercase() as char).to_digit(16)?;
        let lo = (pair.get(1)?.to_ascii_lowercase() as char).to_digit(16)?;
        *byte = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

fn validate_route(path: &str, raw: &RawRoute, tiers: &[Tier]) -> Result<Route, ConfigError> {
    let matcher = match (&raw.path_prefix, &raw.path) {
        (Some(p), None) => PathMatch::Prefix(p.clone()),
        (None, Some(p)) => PathMatch::Exact(p.clone()),
        _ => return err(path, "expected exactly one of path_prefix or path"),
    };
    let (PathMatch::Prefix(p) | PathMatch::Exact(p)) = &matcher;
    if !p.starts_with('/') {
        let field = if raw.path.is_some() { "path" } else { "path_prefix" };
        return err(format!("{path}.{field}"), "expected a path starting with '/'");
    }
    let methods = match &raw.methods {
        None => None,
        Some(ms) => {
            if ms.is_empty() {
                return err(format!("{path}.methods"), "expected at least one method (or omit it for all)");
            }
            for (i, m) in ms.iter().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    return err(format!("{path}.methods[{i}]"), "expected an upper-case method like POST");
                }
            }
            Some(ms.clone())
        }
    };
    if raw.cost > MAX_QUANTITY {
        return err(format!("{path}.cost"), format!("expected a whole number from 0 to {MAX_QUANTITY}"));
    }
    if let Some(names) = &raw.limits {
        if names.is_empty() {
            return err(format!("{path}.limits"), "expected at least one limit name (or omit it for all)");
        }
        for (i, name) in names.iter().enumerate() {
            if !tiers.iter().any(|t| t.limits.iter().any(|l| &l.name == name)) {
                return err(format!("{path}.limits[{i}]"), format!("no tier defines a limit named \"{name}\""));
            }
        }
    }
    let mut applies = Vec::with_capacity(tiers.len());
    for tier in tiers {
        let mut mask = 0u16;
        for (bit, limit) in tier.limits.iter().enumerate() {
            let applied = raw.limits.as_ref().is_none_or(|names| names.contains(&limit.name));
            if applied {
                if raw.cost > limit.capacity() {
                    return err(
                        format!("{path}.cost"),
                        format!(
                            "cost {} exceeds the capacity {} of limit \"{}\" in tier \"{}\": such a request could never be admitted",
                            raw.cost,
                            limit.capacity(),
                            limit.name,
                            tier.name
                        ),
                    );
                }
                mask |= 1 << bit;
            }
        }
        applies.push(mask);
    }
    Ok(Route { matcher, methods, cost: raw.cost, applies })
}

fn validate_store(raw: &RawStore) -> Result<StoreOptions, ConfigError> {
    if raw.max_tracked_keys == 0 || raw.max_tracked_keys > MAX_TRACKED_KEYS {
        return err("store.max_tracked_keys", format!("expected a whole number from 1 to {MAX_TRACKED_KEYS}"));
    }
    if raw.cas_retries == 0 || raw.cas_retries > 1000 {
        return err("store.cas_retries", "expected a whole number from 1 to 1000");
    }
    let slots = raw.max_tracked_keys.div_ceil(SLOT_WAYS as u64);
    Ok(StoreOptions {
        slots: u32::try_from(slots).unwrap_or(u32::MAX),
        cas_retries: raw.cas_retries,
        on_contention: raw.on_contention,
    })
}

#[cfg(test)]
mod tests;
