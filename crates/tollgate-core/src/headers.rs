//! Rate-limit response headers: `RateLimit-Policy` / `RateLimit` as in
//! draft-ietf-httpapi-ratelimit-headers-10 (one named policy per limit), and the
//! GitHub-style `X-RateLimit-*` family for the tightest limit.

use crate::config::{HeaderOptions, Limit};
use crate::time::{ceil_secs, Nanos};

/// Where one limit stands after a decision.
#[derive(Debug, Clone, Copy)]
pub struct LimitStatus<'a> {
    pub limit: &'a Limit,
    pub remaining: u64,
    pub reset_after_ns: u64,
}

pub type Headers = Vec<(&'static str, String)>;

/// Appends the enabled header families. `tightest` indexes `statuses`: the limit the
/// `X-RateLimit-*` family describes.
pub fn rate_limit_headers(
    options: &HeaderOptions,
    statuses: &[LimitStatus<'_>],
    tightest: usize,
    now: Nanos,
    out: &mut Headers,
) {
    if statuses.is_empty() {
        return;
    }
    // Values are built with `itoa` and `push_str`: this runs for every admitted request,
    // and the `fmt` machinery was most of its cost.
    let mut digits = itoa::Buffer::new();
    if options.ietf {
        let mut policy = String::with_capacity(48 * statuses.len());
        let mut state = String::with_capacity(40 * statuses.len());
        for (i, s) in statuses.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            policy.push_str(sep);
            policy.push_str(&s.limit.policy_item);
            state.push_str(sep);
            state.push('"');
            state.push_str(&s.limit.name);
            state.push_str("\";r=");
            state.push_str(digits.format(s.remaining));
            state.push_str(";t=");
            state.push_str(digits.format(ceil_secs(s.reset_after_ns)));
        }
        out.push(("ratelimit-policy", policy));
        out.push(("ratelimit", state));
    }
    if options.x_ratelimit {
        if let Some(s) = statuses.get(tightest) {
            let capacity = s.limit.capacity();
            let mut number = |n: u64| digits.format(n).to_owned();
            out.push(("x-ratelimit-limit", number(capacity)));
            out.push(("x-ratelimit-remaining", number(s.remaining)));
            out.push(("x-ratelimit-used", number(capacity.saturating_sub(s.remaining))));
            out.push(("x-ratelimit-reset", number(now.saturating_add(s.reset_after_ns).as_secs_ceil())));
            out.push(("x-ratelimit-resource", s.limit.name.clone()));
        }
    }
}

/// The limit with the fewest units left; among equals, the one that resets last.
pub fn tightest(statuses: &[LimitStatus<'_>]) -> usize {
    statuses
        .iter()
        .enumerate()
        .min_by(|(_, a), (_, b)| a.remaining.cmp(&b.remaining).then(b.reset_after_ns.cmp(&a.reset_after_ns)))
        .map_or(0, |(i, _)| i)
}

/// `Retry-After` in whole seconds, rounded up, at least 1 when anything is left to wait.
pub fn retry_after_secs(retry_after_ns: u64) -> u64 {
    ceil_secs(retry_after_ns)
}
