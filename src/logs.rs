//! Log lines of decisions: one per refused request, at `info`
//! (`--component-log-level wasm:warn` silences them), at most
//! `logs.max_refusal_lines_per_second` a second per worker, the rest summed up; never a
//! token or an address (anonymous callers are named by a keyed hash, see
//! [`tollgate_core::logging`]).

use std::cell::RefCell;

use log::{debug, info, warn, Level};
use tollgate_core::decision::{Outcome, QuotaReport};
use tollgate_core::logging::{CallerNames, Line, LineBudget};
use tollgate_core::{Config, Decision};

use crate::host;

/// This worker's caller names and allowance of refusal lines.
struct Logs {
    names: CallerNames,
    budget: LineBudget,
}

thread_local! {
    static LOGS: RefCell<Option<Logs>> = const { RefCell::new(None) };
}

/// Sets the worker's caller names and allowance for `config`.
pub fn configure(config: &Config) {
    let logs = Logs { names: CallerNames::new(&config.logs), budget: LineBudget::new(&config.logs) };
    LOGS.with(|l| *l.borrow_mut() = Some(logs));
}

/// Key callers are named by key id; anonymous ones by a keyed hash of their network.
pub fn decision(config: &Config, decision: &Decision) {
    let level = match decision.outcome {
        Outcome::Allowed | Outcome::Unlimited => Level::Debug,
        _ => Level::Info,
    };
    // Admitted requests log at debug, off by default: then nothing below runs (naming an
    // anonymous caller hashes its network).
    if log::log_enabled!(level) {
        LOGS.with(|logs| {
            if let Some(logs) = logs.borrow_mut().as_mut() {
                write(config, decision, level, logs);
            }
        });
    }
    breaker(&decision.quota);
}

fn write(config: &Config, decision: &Decision, level: Level, logs: &mut Logs) {
    if level == Level::Info {
        match logs.budget.take(host::now()) {
            Line::Skip => return,
            Line::Write { suppressed_before: 0 } => {}
            Line::Write { suppressed_before } => {
                info!("{suppressed_before} refusal lines suppressed (logs.max_refusal_lines_per_second)")
            }
        }
    }
    let tier = decision.tier.and_then(|t| config.tiers.get(t)).map_or("none", |t| t.name.as_str());
    let caller = decision.caller_name(config).map_or_else(|| "-".to_owned(), |c| logs.names.name(c));
    let caller = caller.as_str();
    let limit = decision.limited_by.as_deref().unwrap_or("-");
    let outcome = decision.outcome.as_str();
    match decision.outcome {
        Outcome::Limited
        | Outcome::ShadowLimited
        | Outcome::StoreRefused
        | Outcome::StoreBypassed
        | Outcome::QuotaUnavailable
        | Outcome::CredentialsLimited => {
            info!("decision={outcome} tier={tier} limit={limit} caller={caller}")
        }
        Outcome::Unauthenticated | Outcome::Malformed | Outcome::BadRequest | Outcome::ShadowRejected => {
            info!("decision={outcome} tier={tier}")
        }
        Outcome::Allowed | Outcome::Unlimited => debug!("decision={outcome} tier={tier} caller={caller}"),
    }
}

pub fn breaker(quota: &QuotaReport) {
    if quota.breaker_opened {
        warn!("quota service breaker opened: callouts stop for the cooldown");
    }
    if quota.breaker_closed {
        info!("quota service breaker closed: callouts resume");
    }
}
