//! Test support for tollgate, shared by the root package's Envoy integration tests, the
//! quota service's tests and the benchmark harness (`bench/`).
//!
//! - [`ports`]: free ports on 127.0.0.1.
//! - [`scratch`]: a fresh directory per process started.
//! - [`process`]: a child process, its output in a log file, killed on drop.
//! - [`wait`]: polling a condition until it holds, with a message naming what was awaited.
//! - [`http`]: HTTP replies, a client, and raw HTTP/1.1 over TCP.
//! - [`stats`]: Envoy's counters from its admin `/stats`.
//! - [`envoy`]: Envoy (`$ENVOY_BIN`) started on free ports, and the repository's `envoy.yaml`.
//! - [`redis`]: `redis-server` processes and a three-master cluster.
//! - [`quota_service`]: the `tollgate-quota` binary, and a stand-in that misbehaves.
//! - [`standin`]: a stand-in AI upstream that answers with usage and streams events.

// Test support: when a process does not start, a port does not answer or an awaited
// condition never comes, the test that asked must fail there, with a message that names
// what went wrong. Panicking is how this crate reports errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub mod envoy;
pub mod http;
pub mod ports;
pub mod process;
pub mod quota_service;
pub mod redis;
pub mod scratch;
pub mod standin;
pub mod stats;
pub mod wait;

/// The repository's root (the workspace holding this crate).
pub fn workspace_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest.parent().and_then(Path::parent).expect("crates/tollgate-testkit is two levels down");
        root.canonicalize().unwrap_or_else(|_| root.to_path_buf())
    })
}
