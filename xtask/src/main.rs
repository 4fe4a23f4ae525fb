//! `cargo xtask trim-exports <module.wasm>`: removes from a proxy-wasm module the exports
//! of the stream callbacks tollgate does not implement, in place.
//!
//! Why: the Rust SDK exports every callback of the ABI, and Envoy enters the VM for each
//! callback a module exports: for every request, the request and response bodies, the
//! access log and stream completion, each a call into V8 that does nothing. Envoy (like
//! every proxy-wasm host) skips a callback the module does not export and carries on as
//! if it had answered `Continue` (or `true`); that is what the SDK's default answers are.
//! Trimming is idempotent: an export already gone stays gone.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::{env, fs};

use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
use wasmparser::{ExternalKind, Parser, Payload};

/// Callbacks the filter leaves at the SDK's defaults. A callback the filter implements
/// must never be listed here: the host would stop calling it (`tests/exports.rs` checks
/// the built module keeps what it needs).
pub const UNUSED_CALLBACKS: [&str; 6] = [
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
    "proxy_on_log",
    "proxy_on_done",
];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["trim-exports", path] => match trim_file(path) {
            Ok(removed) => {
                println!("{path}: {removed} unused callback exports removed");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xtask: {path}: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: cargo xtask trim-exports <module.wasm>");
            ExitCode::from(2)
        }
    }
}

fn trim_file(path: &str) -> Result<usize, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let (trimmed, removed) = trim(&bytes, &UNUSED_CALLBACKS)?;
    if removed > 0 {
        fs::write(path, trimmed).map_err(|e| e.to_string())?;
    }
    Ok(removed)
}

/// The module without the exports named in `unused`, and how many were removed. Every
/// other section is copied byte for byte.
fn trim(bytes: &[u8], unused: &[&str]) -> Result<(Vec<u8>, usize), String> {
    let mut module = Module::new();
    let mut removed = 0;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| format!("not a wasm module: {e}"))?;
        match payload {
            Payload::Version { .. } | Payload::End(_) => {}
            Payload::ExportSection(reader) => {
                let mut exports = ExportSection::new();
                for export in reader {
                    let export = export.map_err(|e| format!("bad export section: {e}"))?;
                    if unused.contains(&export.name) {
                        removed += 1;
                        continue;
                    }
                    exports.export(export.name, kind(export.kind), export.index);
                }
                module.section(&exports);
            }
            Payload::CodeSectionStart { range, .. } => {
                module.section(&raw(bytes, 10, range)?);
            }
            Payload::CodeSectionEntry(_) => {}
            other => {
                if let Some((id, range)) = other.as_section() {
                    module.section(&raw(bytes, id, range)?);
                }
            }
        }
    }
    let trimmed = module.finish();
    wasmparser::Validator::new().validate_all(&trimmed).map_err(|e| format!("the trimmed module is invalid: {e}"))?;
    Ok((trimmed, removed))
}

fn raw(bytes: &[u8], id: u8, range: std::ops::Range<usize>) -> Result<RawSection<'_>, String> {
    let data = bytes.get(range).ok_or("section out of bounds")?;
    Ok(RawSection { id, data })
}

fn kind(kind: ExternalKind) -> ExportKind {
    match kind {
        ExternalKind::Func => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
    }
}
