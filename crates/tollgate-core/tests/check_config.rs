#![cfg(not(target_arch = "wasm32"))]
//! `check-config` (behind `make check-config FILE=...`) runs the filter's validation offline.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_check-config");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

#[test]
fn a_valid_file_passes() {
    let out = Command::new(BIN).arg(format!("{FIXTURES}/good/tiers.json")).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK (5 tiers, 2 keys, 3 routes, mode Enforce)"));
}

#[test]
fn an_invalid_file_fails_naming_the_field() {
    let out = Command::new(BIN).arg(format!("{FIXTURES}/bad/window_unit.json")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid configuration: tiers.free.limits[1].window: expected a duration"), "{stderr}");
}

#[test]
fn no_file_is_a_usage_error() {
    let out = Command::new(BIN).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
