//! Where the store is: the `--store` flag, parsed, and shown without passwords.

use std::fmt;
use std::str::FromStr;

/// `--store`: `memory`, `redis://host:port/db` or `redis+cluster://host1:port1,host2:port2`.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Memory,
    /// A `redis://` (or `rediss://`) URL, as the redis crate reads it.
    Redis(String),
    /// One `redis://` URL per seed node.
    Cluster(Vec<String>),
}

impl FromStr for StoreLocation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "memory" {
            return Ok(StoreLocation::Memory);
        }
        if s.starts_with("redis://") || s.starts_with("rediss://") {
            return Ok(StoreLocation::Redis(s.to_owned()));
        }
        if let Some(rest) = s.strip_prefix("redis+cluster://") {
            // Credentials, if any, come once before the node list and apply to every node.
            let (auth, nodes) = match rest.rsplit_once('@') {
                Some((auth, nodes)) => (format!("{auth}@"), nodes),
                None => (String::new(), rest),
            };
            let nodes: Vec<String> = nodes
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| format!("redis://{auth}{n}"))
                .collect();
            if nodes.is_empty() {
                return Err("redis+cluster:// needs at least one host:port".to_owned());
            }
            return Ok(StoreLocation::Cluster(nodes));
        }
        Err(format!(
            "expected `memory`, `redis://host:port/db` or `redis+cluster://host1:port1,host2:port2`, got {:?}",
            redact(s)
        ))
    }
}

/// Shown in logs: the location without any password.
impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Memory => f.write_str("memory"),
            StoreLocation::Redis(url) => f.write_str(&redact(url)),
            StoreLocation::Cluster(nodes) => {
                let hosts: Vec<String> =
                    nodes.iter().map(|n| redact(n).trim_start_matches("redis://").to_owned()).collect();
                write!(f, "redis+cluster://{}", hosts.join(","))
            }
        }
    }
}

impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `scheme://user:password@host/...` → `scheme://host/...`.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{rest}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_locations_parse_and_hide_passwords() {
        assert_eq!("memory".parse::<StoreLocation>().unwrap(), StoreLocation::Memory);
        let single: StoreLocation = "redis://:secret@10.0.0.1:6380/2".parse().unwrap();
        assert_eq!(single, StoreLocation::Redis("redis://:secret@10.0.0.1:6380/2".into()));
        assert_eq!(single.to_string(), "redis://10.0.0.1:6380/2");
        let cluster: StoreLocation = "redis+cluster://u:pw@a:7000, b:7001".parse().unwrap();
        assert_eq!(cluster, StoreLocation::Cluster(vec!["redis://u:pw@a:7000".into(), "redis://u:pw@b:7001".into()]));
        assert_eq!(cluster.to_string(), "redis+cluster://a:7000,b:7001");
        assert!("redis+cluster://".parse::<StoreLocation>().is_err());
        let err = "postgres://u:pw@h/db".parse::<StoreLocation>().unwrap_err();
        assert!(!err.contains("pw"), "{err}");
    }
}
