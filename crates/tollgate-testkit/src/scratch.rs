//! Scratch directories: one per process started, for its configuration, data and log.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// A new directory `<parent>/<name>-<pid>-<n>`, created (with `parent`): unique within this
/// test process and apart from other processes' (tests of several binaries run at once).
pub fn fresh(parent: &Path, name: &str) -> PathBuf {
    let n = INSTANCE.fetch_add(1, Ordering::SeqCst);
    let dir = parent.join(format!("{name}-{}-{n}", std::process::id()));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// A new directory under the system's temporary directory (`$TMPDIR/tollgate-testkit`).
pub fn fresh_temp(name: &str) -> PathBuf {
    fresh(&std::env::temp_dir().join("tollgate-testkit"), name)
}

/// `dir`, created if it is not there (for a fixed place such as `target/bench/redis`).
pub fn at(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir.to_path_buf()
}
