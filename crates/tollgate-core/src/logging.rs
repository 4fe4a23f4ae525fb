//! What log lines of refusals may say, and how many a worker writes.
//!
//! An anonymous caller is named by a keyed hash of its network, `ip#<12 hex digits of
//! HMAC-SHA256>`: without the key, the name cannot be turned back into the address by
//! hashing every IPv4 address (an unkeyed hash of a /32 is reversed in a fraction of a
//! second). The key is `logs.caller_name_key`; without one, each worker draws its own at
//! random, and the same network then has a different name in each worker and after
//! each restart.
//!
//! A worker writes at most `logs.max_refusal_lines_per_second` refusal lines a second;
//! the lines it skipped are counted and summed up in one line with the next one it writes.

use std::hash::{BuildHasher, RandomState};

use crate::config::LogOptions;
use crate::hash::{hex, hmac_sha256};
use crate::time::{Nanos, NANOS_PER_SEC};

/// Names callers in log lines.
pub struct CallerNames {
    key: Vec<u8>,
}

impl std::fmt::Debug for CallerNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallerNames(..)")
    }
}

impl CallerNames {
    /// Names under the configured key, or under one drawn at random for this worker.
    pub fn new(options: &LogOptions) -> CallerNames {
        let key = match &options.caller_name_key {
            Some(secret) => secret.expose().to_vec(),
            None => {
                // Four 64-bit draws of the host's randomness (`random_get` under WASI).
                let state = RandomState::new();
                (0u8..4).flat_map(|i| state.hash_one(i).to_le_bytes()).collect()
            }
        };
        CallerNames { key }
    }

    /// `key:<id>` as is; `ip:<network>` as `ip#<12 hex digits of its keyed hash>`.
    pub fn name(&self, caller: &str) -> String {
        match caller.strip_prefix("ip:") {
            Some(network) => {
                let digest = hex(&hmac_sha256(&self.key, network.as_bytes()));
                ["ip#", digest.get(..12).unwrap_or(&digest)].concat()
            }
            None => caller.to_owned(),
        }
    }
}

/// A worker's allowance of refusal lines: `per_second` a second.
#[derive(Debug, Clone, Default)]
pub struct LineBudget {
    per_second: u32,
    second: u64,
    written: u32,
    suppressed: u64,
}

/// Whether to write a line, and the lines skipped before it to sum up first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    Write { suppressed_before: u64 },
    Skip,
}

impl LineBudget {
    pub fn new(options: &LogOptions) -> LineBudget {
        LineBudget { per_second: options.max_refusal_lines_per_second, ..LineBudget::default() }
    }

    /// Takes one line of the allowance at `now`, if any is left this second.
    pub fn take(&mut self, now: Nanos) -> Line {
        let second = now.0 / NANOS_PER_SEC;
        if second != self.second {
            self.second = second;
            self.written = 0;
        }
        if self.written >= self.per_second {
            self.suppressed = self.suppressed.saturating_add(1);
            return Line::Skip;
        }
        self.written += 1;
        Line::Write { suppressed_before: std::mem::take(&mut self.suppressed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::hash::sha256;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn options(logs: &str) -> LogOptions {
        let json = format!(
            r#"{{"tiers": {{"free": {{"limits": [{{"name": "rpm", "limit": 1, "window": "1m"}}]}}}},
                "routes": [{{"path_prefix": "/"}}], "logs": {logs}}}"#
        );
        match Config::from_json(json.as_bytes()) {
            Ok(config) => config.logs,
            Err(e) => unreachable!("{e}"),
        }
    }

    #[test]
    fn an_anonymous_name_is_keyed_and_not_the_plain_hash() {
        let a = CallerNames::new(&options(r#"{"caller_name_key": "0123456789abcdef-one"}"#));
        let b = CallerNames::new(&options(r#"{"caller_name_key": "0123456789abcdef-two"}"#));
        let unkeyed = ["ip#", &hex(&sha256(b"203.0.113.7/32"))[..12]].concat();
        let name = a.name("ip:203.0.113.7/32");
        assert_eq!(name.len(), 15);
        assert_ne!(name, unkeyed, "an unkeyed hash of a /32 is reversed by trying them all");
        assert_ne!(name, b.name("ip:203.0.113.7/32"), "another key, another name");
        assert_eq!(name, a.name("ip:203.0.113.7/32"), "one key, one name");
        assert_eq!(a.name("key:alice"), "key:alice");
        let expected = hex(&hmac_sha256(b"0123456789abcdef-one", b"203.0.113.7/32"));
        assert_eq!(name, ["ip#", &expected[..12]].concat());
    }

    #[test]
    fn without_a_key_each_worker_draws_its_own() {
        let (a, b) = (CallerNames::new(&options("{}")), CallerNames::new(&options("{}")));
        assert_ne!(a.name("ip:203.0.113.7/32"), b.name("ip:203.0.113.7/32"));
    }

    #[test]
    fn the_key_is_a_secret_of_16_to_256_bytes_never_shown() {
        for bad in [r#""short""#, r#""                ""#] {
            let json = format!(
                r#"{{"tiers": {{"free": {{"limits": [{{"name": "rpm", "limit": 1, "window": "1m"}}]}}}},
                    "routes": [{{"path_prefix": "/"}}], "logs": {{"caller_name_key": {bad}}}}}"#
            );
            let e = Config::from_json(json.as_bytes()).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.starts_with("logs.caller_name_key:"), "{e}");
            assert!(!e.contains("short"));
        }
        let logs = options(r#"{"caller_name_key": "do-not-print-this-secret"}"#);
        assert!(!format!("{logs:?}").contains("do-not-print"));
    }

    #[test]
    fn lines_past_the_allowance_are_skipped_and_summed_up_next_second() {
        let mut budget = LineBudget::new(&options(r#"{"max_refusal_lines_per_second": 2}"#));
        let t = Nanos::from_secs(100);
        assert_eq!(budget.take(t), Line::Write { suppressed_before: 0 });
        assert_eq!(budget.take(t), Line::Write { suppressed_before: 0 });
        for _ in 0..1000 {
            assert_eq!(budget.take(t), Line::Skip);
        }
        let next = Nanos::from_secs(101);
        assert_eq!(budget.take(next), Line::Write { suppressed_before: 1000 });
        assert_eq!(budget.take(next), Line::Write { suppressed_before: 0 });
        assert_eq!(budget.take(next), Line::Skip);
    }
}
