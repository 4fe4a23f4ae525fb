//! Rate-limit response headers: `RateLimit-Policy` / `RateLimit` as in
//! draft-ietf-httpapi-ratelimit-headers-10 (one named policy per limit), and the
//! GitHub-style `X-RateLimit-*` family for the tightest limit.

use crate::config::{HeaderOptions, Limit};
use crate::cost::Unit;
use crate::limit::Standing;
use crate::time::{ceil_secs, Nanos};

/// Headers to send: static names, and values kept end to end in one buffer, so that a
/// request's rate-limit headers cost two allocations rather than one per header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    text: String,
    /// Each header's name and the end of its value in `text` (it starts where the
    /// previous one ended).
    ends: Vec<(&'static str, usize)>,
}

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Just `name: value`.
    pub fn one(name: &'static str, value: &str) -> Headers {
        let mut headers = Headers::new();
        headers.push(name, value);
        headers
    }

    /// Room for `headers` values of `bytes` bytes in all.
    pub fn with_capacity(headers: usize, bytes: usize) -> Headers {
        Headers { text: String::with_capacity(bytes), ends: Vec::with_capacity(headers) }
    }

    /// Makes room for `headers` more values of `bytes` bytes in all.
    pub fn reserve(&mut self, headers: usize, bytes: usize) {
        self.text.reserve(bytes);
        self.ends.reserve(headers);
    }

    pub fn push(&mut self, name: &'static str, value: &str) {
        self.push_with(name, |text| text.push_str(value));
    }

    /// Adds a header whose value `write` appends to the buffer.
    pub fn push_with(&mut self, name: &'static str, write: impl FnOnce(&mut String)) {
        write(&mut self.text);
        self.ends.push((name, self.text.len()));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(name, end)| {
            let value = self.text.get(start..end).unwrap_or_default();
            start = end;
            (name, value)
        })
    }

    /// The value of the first header called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// Appends the enabled header families for the limits (of a tier's `limits`) whose
/// `standings` are given. `tightest` indexes `standings`: the limit the `X-RateLimit-*`
/// family describes.
pub fn rate_limit_headers(
    options: &HeaderOptions,
    limits: &[Limit],
    standings: &[Standing],
    tightest: usize,
    now: Nanos,
    out: &mut Headers,
) {
    if standings.is_empty() {
        return;
    }
    let statuses = standings.iter().filter_map(|s| Some((limits.get(s.index)?, s)));
    out.reserve(7, 80 * standings.len() + 64);
    // Values are built with `itoa` and `push_str` into one buffer: this runs for every
    // admitted request, and the `fmt` machinery and an allocation per value were most of
    // its cost.
    let mut digits = itoa::Buffer::new();
    if options.ietf {
        out.push_with("ratelimit-policy", |text| {
            for (i, (limit, _)) in statuses.clone().enumerate() {
                if i > 0 {
                    text.push_str(", ");
                }
                text.push_str(&limit.policy_item);
            }
        });
        out.push_with("ratelimit", |text| {
            for (i, (limit, s)) in statuses.clone().enumerate() {
                if i > 0 {
                    text.push_str(", ");
                }
                text.push('"');
                text.push_str(&limit.name);
                text.push_str("\";r=");
                text.push_str(digits.format(s.remaining));
                text.push_str(";t=");
                text.push_str(digits.format(ceil_secs(s.reset_after_ns)));
            }
        });
    }
    if options.x_ratelimit {
        if let Some((limit, s)) = standings.get(tightest).and_then(|s| Some((limits.get(s.index)?, s))) {
            let capacity = limit.capacity();
            let reset = now.saturating_add(s.reset_after_ns).as_secs_ceil();
            let mut number = |name: &'static str, n: u64| out.push(name, digits.format(n));
            number("x-ratelimit-limit", capacity);
            number("x-ratelimit-remaining", s.remaining);
            number("x-ratelimit-used", capacity.saturating_sub(s.remaining));
            number("x-ratelimit-reset", reset);
            out.push("x-ratelimit-resource", &limit.name);
        }
    }
}

/// OpenAI's headers for the tightest limit of requests and the tightest of tokens among
/// `standings`: `x-ratelimit-limit-requests`, `-remaining-requests`, `-reset-requests`
/// (a duration such as `6m0s`), and the same three with `-tokens`.
pub fn openai_headers(limits: &[Limit], standings: &[Standing], out: &mut Headers) {
    let tightest_of = |tokens: bool| {
        standings
            .iter()
            .filter_map(|s| Some((limits.get(s.index)?, s)))
            .filter(|(l, _)| if tokens { l.unit.settles() } else { l.unit == Unit::Requests })
            .min_by(|(_, a), (_, b)| a.remaining.cmp(&b.remaining).then(b.reset_after_ns.cmp(&a.reset_after_ns)))
    };
    let mut digits = itoa::Buffer::new();
    if let Some((limit, s)) = tightest_of(false) {
        out.push("x-ratelimit-limit-requests", digits.format(limit.capacity()));
        out.push("x-ratelimit-remaining-requests", digits.format(s.remaining));
        out.push("x-ratelimit-reset-requests", &duration(s.reset_after_ns));
    }
    if let Some((limit, s)) = tightest_of(true) {
        out.push("x-ratelimit-limit-tokens", digits.format(limit.capacity()));
        out.push("x-ratelimit-remaining-tokens", digits.format(s.remaining));
        out.push("x-ratelimit-reset-tokens", &duration(s.reset_after_ns));
    }
}

/// A duration as OpenAI writes it: `1s`, `6m0s`, `1h2m3s` (whole seconds, rounded up).
pub fn duration(ns: u64) -> String {
    let secs = ceil_secs(ns);
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// The limit with the fewest units left; among equals, the one that resets last.
pub fn tightest(standings: &[Standing]) -> usize {
    standings
        .iter()
        .enumerate()
        .min_by(|(_, a), (_, b)| a.remaining.cmp(&b.remaining).then(b.reset_after_ns.cmp(&a.reset_after_ns)))
        .map_or(0, |(i, _)| i)
}

/// `Retry-After` in whole seconds, rounded up, at least 1 when anything is left to wait.
pub fn retry_after_secs(retry_after_ns: u64) -> u64 {
    ceil_secs(retry_after_ns)
}

#[cfg(test)]
mod tests {
    use super::{duration, Headers};

    #[test]
    fn durations_read_as_openai_writes_them() {
        const SEC: u64 = 1_000_000_000;
        assert_eq!(duration(1), "1s");
        assert_eq!(duration(SEC), "1s");
        assert_eq!(duration(59 * SEC + 1), "1m0s");
        assert_eq!(duration(360 * SEC), "6m0s");
        assert_eq!(duration(3723 * SEC), "1h2m3s");
        assert_eq!(duration(0), "0s");
    }

    #[test]
    fn values_share_one_buffer_and_keep_their_order() {
        let mut h = Headers::new();
        assert!(h.is_empty() && h.get("a").is_none());
        h.push("a", "1");
        h.push("empty", "");
        h.push_with("b", |t| t.push_str("two"));
        h.push("a", "3");
        assert_eq!(h.len(), 4);
        assert_eq!(h.iter().collect::<Vec<_>>(), [("a", "1"), ("empty", ""), ("b", "two"), ("a", "3")]);
        assert_eq!((h.get("a"), h.get("empty"), h.get("b"), h.get("c")), (Some("1"), Some(""), Some("two"), None));
        assert_eq!(Headers::one("retry-after", "1").iter().collect::<Vec<_>>(), [("retry-after", "1")]);
    }
}
