//! Validates a tollgate plugin configuration offline, exactly as the filter's
//! `on_configure` does: `cargo run -p tollgate-core --bin check-config -- FILE...`
//! (or `make check-config FILE=...`). Exits 1 on the first invalid file.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use tollgate_core::Config;

fn main() -> ExitCode {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: check-config FILE.json [FILE.json ...]");
        return ExitCode::from(2);
    }
    for file in &files {
        let bytes = match std::fs::read(file) {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("{file}: cannot read: {e}");
                return ExitCode::FAILURE;
            }
        };
        match Config::from_json(&bytes) {
            Ok(c) => println!(
                "{file}: OK ({} tiers, {} keys, {} routes, mode {:?})",
                c.tiers.len(),
                c.keys.len(),
                c.routes.len(),
                c.mode
            ),
            Err(e) => {
                eprintln!("{file}: invalid configuration: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
