//! From the raw JSON to a validated [`Config`]: every field checked, each error naming
//! the field's path.

use hashbrown::HashMap;

use super::limits::{default_lease_block, default_worker_block, limit_from_parts, parse_window};
use super::raw::{
    RawConfig, RawIdentity, RawKey, RawLimit, RawLogs, RawPrice, RawPrices, RawQuotaService, RawRoute, RawStore,
    RawTier, Scope,
};
use super::*;
use crate::cost::Price;
use crate::hash::fnv1a32;

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
        let prices = validate_prices(raw.prices.as_ref())?;
        if raw.headers.max_retry_wait_ms > MAX_RETRY_WAIT_MS {
            return err("headers.max_retry_wait_ms", format!("expected milliseconds from 0 to {MAX_RETRY_WAIT_MS}"));
        }
        if prices.models.is_empty() && prices.default.is_none() {
            for tier in &tiers {
                if let Some(i) = tier.limits.iter().position(|l| l.unit == Unit::Cost) {
                    return err(
                        format!("tiers.{}.limits[{i}].unit", tier.name),
                        "a limit of cost needs \"prices\" (per model, or a default)",
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
                openai: raw.headers.openai,
                max_retry_wait_ms: raw.headers.max_retry_wait_ms,
            },
            store,
            quota,
            prices,
            logs: validate_logs(&raw.logs)?,
        })
    }
}

/// An hour: a client told to retry holds its request (and often a user) that long.
const MAX_RETRY_WAIT_MS: u64 = 3_600_000;

fn validate_quota_service(raw: &RawQuotaService) -> Result<QuotaService, ConfigError> {
    const P: &str = "quota_service";
    if raw.cluster.is_empty() || raw.cluster.len() > 256 {
        return err(format!("{P}.cluster"), "expected the name of an Envoy cluster");
    }
    let authority = raw.authority.clone().unwrap_or_else(|| raw.cluster.clone());
    if authority.is_empty() || authority.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return err(format!("{P}.authority"), "expected a host name (no spaces or control characters)");
    }
    let authorization = raw.token.as_deref().map(validate_service_token).transpose()?;
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
    let max_pending_verifications = match raw.max_pending_verifications {
        None => DEFAULT_MAX_PENDING_VERIFICATIONS.min(raw.max_pending_callouts),
        Some(n) if (1..=raw.max_pending_callouts).contains(&n) => n,
        Some(_) => {
            return err(
                format!("{P}.max_pending_verifications"),
                "expected a whole number from 1 to max_pending_callouts",
            )
        }
    };
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
        authorization,
        timeout_ms: raw.timeout_ms,
        verify_keys: raw.verify_keys,
        key_cache_ttl_ms: raw.key_cache_ttl_ms,
        negative_cache_ttl_ms: raw.negative_cache_ttl_ms,
        key_cache_size: raw.key_cache_size,
        max_pending_callouts: raw.max_pending_callouts,
        max_pending_verifications,
        breaker_failures: raw.breaker.failures,
        breaker_cooldown_ms: raw.breaker.cooldown_ms,
        lease_idle_return_ms: raw.lease_idle_return_ms,
    })
}

/// Shortest and longest service token: long enough to be drawn at random, short enough
/// for one header.
pub const SERVICE_TOKEN_CHARS: std::ops::RangeInclusive<usize> = 16..=1024;

/// A service token: 16 to 1024 visible ASCII characters. The error never repeats it.
fn validate_service_token(token: &str) -> Result<Authorization, ConfigError> {
    if !SERVICE_TOKEN_CHARS.contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return err(
            "quota_service.token",
            format!(
                "expected {} to {} visible ASCII characters (no spaces), the token the quota service \
                 was started with (--service-token)",
                SERVICE_TOKEN_CHARS.start(),
                SERVICE_TOKEN_CHARS.end()
            ),
        );
    }
    Ok(Authorization::bearer(token))
}

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
    if raw.unit != Unit::Requests {
        // Images and tokens are reserved and settled per request: a worker never holds a
        // block of them. A global one may lease, when asked to (exact by default).
        let exact_only = [("worker_block", raw.worker_block)]
            .into_iter()
            .chain((raw.scope == Scope::Local).then_some(("lease_block", raw.lease_block)));
        for (field, given) in exact_only {
            if given.is_some_and(|b| b > 0) {
                return err(format!("{path}.{field}"), "a limit of images or tokens is exact: expected 0 or nothing");
            }
        }
        limit.unit = raw.unit;
        // A limit that starts counting other units starts afresh.
        limit.fingerprint ^= fnv1a32(raw.unit.as_str().as_bytes());
        if raw.scope == Scope::Global {
            limit.lease_block = block("lease_block", raw.lease_block, 0)?;
        }
        return Ok(limit);
    }
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
    let failed_credentials = match &raw.failed_credentials {
        None => None,
        Some(f) => {
            const PATH: &str = "identity.failed_credentials";
            let secs = parse_window(&f.window).ok_or_else(|| ConfigError {
                path: format!("{PATH}.window"),
                message: format!("expected a duration like 10s, 1m, 1h (at most 366d), got {:?}", f.window),
            })?;
            let mut limit = limit_from_parts(PATH, "failed_credentials", f.limit, secs, Algorithm::TokenBucket, None)?;
            limit.window.text.clone_from(&f.window);
            Some(limit)
        }
    };
    Ok(Identity {
        api_key_header,
        anonymous_tier,
        ipv4_prefix: raw.ipv4_prefix,
        ipv6_prefix: raw.ipv6_prefix,
        max_credential_length: raw.max_credential_length,
        failed_credentials,
    })
}

/// Key verifications a worker has in flight at most, by default.
pub const DEFAULT_MAX_PENDING_VERIFICATIONS: u32 = 100;

fn validate_logs(raw: &RawLogs) -> Result<LogOptions, ConfigError> {
    if raw.max_refusal_lines_per_second > 10_000 {
        return err("logs.max_refusal_lines_per_second", "expected a whole number from 0 to 10000");
    }
    let caller_name_key = match &raw.caller_name_key {
        None => None,
        Some(key) if (16..=256).contains(&key.len()) && !key.trim().is_empty() => Some(Secret(key.clone())),
        // The value is a secret: the error never repeats it.
        Some(_) => return err("logs.caller_name_key", "expected a secret of 16 to 256 bytes"),
    };
    Ok(LogOptions { max_refusal_lines_per_second: raw.max_refusal_lines_per_second, caller_name_key })
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
    let meter = validate_meter(path, raw)?;
    let mut applies = Vec::with_capacity(tiers.len());
    for tier in tiers {
        let mut mask = 0u16;
        for (bit, limit) in tier.limits.iter().enumerate() {
            let named = raw.limits.as_ref().is_some_and(|names| names.contains(&limit.name));
            let applied = raw.limits.is_none() || named;
            // Images and tokens are only known from a metered route's body, and images only
            // from a route that generates them.
            if !meter.as_ref().map_or(limit.unit == Unit::Requests, |m| limit.unit.counted_by(m.api)) {
                if named {
                    return err(
                        format!("{path}.limits"),
                        format!(
                            "limit \"{}\" counts {}: it applies only on a route with a \"meter\" that reads them",
                            limit.name,
                            limit.unit.as_str()
                        ),
                    );
                }
                continue;
            }
            if applied {
                if limit.unit == Unit::Requests && raw.cost > limit.capacity() {
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
    Ok(Route { matcher, methods, cost: raw.cost, applies, meter })
}

/// Model prices, each at most 10⁹ per 1,000 tokens.
fn validate_prices(raw: Option<&RawPrices>) -> Result<Prices, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Prices::default());
    };
    let price = |path: String, p: &RawPrice| {
        for (field, value) in [("input_per_1k", p.input_per_1k), ("output_per_1k", p.output_per_1k)] {
            if value > MAX_QUANTITY {
                return err(format!("{path}.{field}"), format!("expected 0 to {MAX_QUANTITY}"));
            }
        }
        Ok(Price { input_per_1k: p.input_per_1k, output_per_1k: p.output_per_1k })
    };
    let models = raw
        .models
        .iter()
        .map(|(name, p)| Ok((name.clone(), price(format!("prices.models.{name}"), p)?)))
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let default = raw.default.as_ref().map(|p| price("prices.default".to_owned(), p)).transpose()?;
    Ok(Prices { models, default })
}

/// The route's meter, if it has one; its bounds checked.
fn validate_meter(path: &str, raw: &RawRoute) -> Result<Option<Meter>, ConfigError> {
    let Some(api) = raw.meter else {
        for (field, given) in [
            ("max_body_bytes", raw.max_body_bytes.is_some()),
            ("default_max_output_tokens", raw.default_max_output_tokens.is_some()),
            ("image_weights", !raw.image_weights.is_empty()),
        ] {
            if given {
                return err(format!("{path}.{field}"), "applies only to a route with a \"meter\"");
            }
        }
        return Ok(None);
    };
    let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if !(1..=MAX_BODY_BYTES).contains(&max_body_bytes) {
        return err(format!("{path}.max_body_bytes"), format!("expected 1 to {MAX_BODY_BYTES} bytes"));
    }
    let default_max_output_tokens = raw.default_max_output_tokens.unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS);
    if default_max_output_tokens > MAX_QUANTITY {
        return err(format!("{path}.default_max_output_tokens"), format!("expected 0 to {MAX_QUANTITY}"));
    }
    for (name, weight) in &raw.image_weights {
        if !(1..=1000).contains(weight) {
            return err(format!("{path}.image_weights.{name}"), "expected a weight from 1 to 1000");
        }
    }
    Ok(Some(Meter {
        api,
        max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
        default_max_output_tokens,
        image_weights: raw.image_weights.iter().map(|(k, v)| (k.clone(), *v)).collect(),
    }))
}

fn validate_store(raw: &RawStore) -> Result<StoreOptions, ConfigError> {
    if raw.max_tracked_keys == 0 || raw.max_tracked_keys > MAX_TRACKED_KEYS {
        return err("store.max_tracked_keys", format!("expected a whole number from 1 to {MAX_TRACKED_KEYS}"));
    }
    if raw.cas_retries == 0 || raw.cas_retries > 1000 {
        return err("store.cas_retries", "expected a whole number from 1 to 1000");
    }
    let slots = raw.max_tracked_keys.saturating_mul(SLOTS_PER_TRACKED_KEY);
    Ok(StoreOptions {
        max_tracked_keys: raw.max_tracked_keys,
        slots: u32::try_from(slots).unwrap_or(u32::MAX),
        cas_retries: raw.cas_retries,
        on_contention: raw.on_contention,
    })
}
