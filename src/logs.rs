//! Log lines of decisions: one per refused request, at `info`
//! (`--component-log-level wasm:warn` silences them); never a token or an address.

use log::{debug, info, warn, Level};
use tollgate_core::decision::{Outcome, QuotaReport};
use tollgate_core::hash::{hex, sha256};
use tollgate_core::{Config, Decision};

/// Key callers are named by key id; anonymous ones by a hash of their network.
pub fn decision(config: &Config, decision: &Decision) {
    let level = match decision.outcome {
        Outcome::Allowed | Outcome::Unlimited => Level::Debug,
        _ => Level::Info,
    };
    // Admitted requests log at debug, off by default: then nothing below runs (naming an
    // anonymous caller hashes its network).
    if log::log_enabled!(level) {
        let tier = decision.tier.and_then(|t| config.tiers.get(t)).map_or("none", |t| t.name.as_str());
        let caller = decision.caller_name(config).map_or_else(|| "-".to_owned(), loggable_caller);
        let caller = caller.as_str();
        let limit = decision.limited_by.as_deref().unwrap_or("-");
        let outcome = decision.outcome.as_str();
        match decision.outcome {
            Outcome::Limited
            | Outcome::ShadowLimited
            | Outcome::StoreRefused
            | Outcome::StoreBypassed
            | Outcome::QuotaUnavailable => {
                info!("decision={outcome} tier={tier} limit={limit} caller={caller}")
            }
            Outcome::Unauthenticated | Outcome::Malformed | Outcome::BadRequest | Outcome::ShadowRejected => {
                info!("decision={outcome} tier={tier}")
            }
            Outcome::Allowed | Outcome::Unlimited => debug!("decision={outcome} tier={tier} caller={caller}"),
        }
    }
    breaker(&decision.quota);
}

pub fn breaker(quota: &QuotaReport) {
    if quota.breaker_opened {
        warn!("quota service breaker opened: callouts stop for the cooldown");
    }
    if quota.breaker_closed {
        info!("quota service breaker closed: callouts resume");
    }
}

/// `key:<id>` as is; `ip:<network>` as `ip#<12 hex digits of its SHA-256>`.
fn loggable_caller(caller: &str) -> String {
    match caller.strip_prefix("ip:") {
        Some(network) => {
            let digest = hex(&sha256(network.as_bytes()));
            format!("ip#{}", digest.get(..12).unwrap_or(&digest))
        }
        None => caller.to_owned(),
    }
}
