//! `cargo xtask trim-exports <module.wasm>`: removes from a proxy-wasm module the exports
//! of the callbacks tollgate does not implement, and their code, in place.
//!
//! Why: the Rust SDK exports every callback of the ABI, and Envoy enters the VM for each
//! callback a module exports: for every request, the request and response bodies, the
//! access log and stream completion, each a call into V8 that does nothing. Envoy (like
//! every proxy-wasm host) skips a callback the module does not export and carries on as
//! if it had answered `Continue` (or `true`); that is what the SDK's default answers are.
//! The callbacks of what tollgate never uses (gRPC calls, network filters, foreign
//! functions) are never called at all; their code is dead weight in every VM.
//!
//! The body of a removed export's function becomes `unreachable` when nothing else in the
//! module refers to it (no call, table element or start): no function index changes, and
//! the functions only it called stay (there is no dead-code pass). Trimming is
//! idempotent: an export already gone stays gone.

#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::process::ExitCode;
use std::{env, fs};

use wasm_encoder::{CodeSection, ExportKind, ExportSection, Function, Instruction, Module, RawSection};
use wasmparser::{ElementItems, ExternalKind, Operator, Parser, Payload, TypeRef};

/// Callbacks the filter leaves at the SDK's defaults. A callback the filter implements
/// must never be listed here: the host would stop calling it (`tests/exports.rs` checks
/// the built module keeps what it needs).
pub const UNUSED_CALLBACKS: [&str; 13] = [
    "proxy_on_response_trailers",
    "proxy_on_log",
    "proxy_on_done",
    "proxy_on_grpc_receive_initial_metadata",
    "proxy_on_grpc_receive",
    "proxy_on_grpc_receive_trailing_metadata",
    "proxy_on_grpc_close",
    "proxy_on_foreign_function",
    "proxy_on_new_connection",
    "proxy_on_downstream_data",
    "proxy_on_downstream_connection_close",
    "proxy_on_upstream_data",
    "proxy_on_upstream_connection_close",
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

/// The module without the exports named in `unused`, and how many were removed. Their
/// functions' bodies become `unreachable` when nothing else refers to them; every other
/// section is copied byte for byte.
fn trim(bytes: &[u8], unused: &[&str]) -> Result<(Vec<u8>, usize), String> {
    let dead = dead_functions(bytes, unused)?;
    let mut module = Module::new();
    let mut removed = 0;
    let mut imported = 0u32;
    let mut code: Option<CodeSection> = None;
    let mut index = 0u32;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| format!("not a wasm module: {e}"))?;
        match payload {
            Payload::Version { .. } | Payload::End(_) => {}
            Payload::ImportSection(reader) => {
                for import in reader.clone() {
                    let import = import.map_err(|e| format!("bad import section: {e}"))?;
                    imported += u32::from(matches!(import.ty, TypeRef::Func(_)));
                }
                let range = reader.range();
                module.section(&raw(bytes, 2, range.start..range.end)?);
            }
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
            Payload::CodeSectionStart { .. } => {
                code = Some(CodeSection::new());
                index = imported;
            }
            Payload::CodeSectionEntry(body) => {
                let section = code.as_mut().ok_or("a function body outside the code section")?;
                if dead.contains(&index) {
                    let mut stub = Function::new([]);
                    stub.instruction(&Instruction::Unreachable).instruction(&Instruction::End);
                    section.function(&stub);
                } else {
                    let range = body.range();
                    section.raw(bytes.get(range).ok_or("function body out of bounds")?);
                }
                index += 1;
            }
            other => {
                if let Some(section) = code.take() {
                    module.section(&section);
                }
                if let Some((id, range)) = other.as_section() {
                    module.section(&raw(bytes, id, range)?);
                }
            }
        }
    }
    if let Some(section) = code.take() {
        module.section(&section);
    }
    let trimmed = module.finish();
    wasmparser::Validator::new().validate_all(&trimmed).map_err(|e| format!("the trimmed module is invalid: {e}"))?;
    Ok((trimmed, removed))
}

/// The functions exported under a name in `unused` that nothing else refers to: not
/// another export, a call, a `ref.func`, a table element or the start function.
fn dead_functions(bytes: &[u8], unused: &[&str]) -> Result<HashSet<u32>, String> {
    let mut candidates = HashSet::new();
    let mut used = HashSet::new();
    let bad = |e: wasmparser::BinaryReaderError| format!("not a wasm module: {e}");
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(bad)? {
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(bad)?;
                    if export.kind == ExternalKind::Func {
                        if unused.contains(&export.name) {
                            candidates.insert(export.index);
                        } else {
                            used.insert(export.index);
                        }
                    }
                }
            }
            Payload::StartSection { func, .. } => {
                used.insert(func);
            }
            Payload::ElementSection(reader) => {
                for element in reader {
                    match element.map_err(bad)?.items {
                        ElementItems::Functions(functions) => {
                            for f in functions {
                                used.insert(f.map_err(bad)?);
                            }
                        }
                        ElementItems::Expressions(_, exprs) => {
                            for expr in exprs {
                                for op in expr.map_err(bad)?.get_operators_reader() {
                                    if let Operator::RefFunc { function_index } = op.map_err(bad)? {
                                        used.insert(function_index);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                for op in body.get_operators_reader().map_err(bad)? {
                    match op.map_err(bad)? {
                        Operator::Call { function_index }
                        | Operator::ReturnCall { function_index }
                        | Operator::RefFunc { function_index } => {
                            used.insert(function_index);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(candidates.difference(&used).copied().collect())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use wasm_encoder::{FunctionSection, TypeSection};

    /// Three functions `() -> ()`: 0 exported as `keep` (calls 2), 1 as `proxy_on_log`, 2
    /// as `proxy_on_done`; each but 0 does `nop`.
    fn module() -> Vec<u8> {
        let mut types = TypeSection::new();
        types.ty().function([], []);
        let mut functions = FunctionSection::new();
        let mut exports = ExportSection::new();
        let mut code = CodeSection::new();
        for (i, name) in ["keep", "proxy_on_log", "proxy_on_done"].into_iter().enumerate() {
            functions.function(0);
            exports.export(name, ExportKind::Func, i as u32);
            let mut f = Function::new([]);
            if i == 0 {
                f.instruction(&Instruction::Call(2));
            } else {
                f.instruction(&Instruction::Nop);
            }
            code.function(f.instruction(&Instruction::End));
        }
        let mut module = Module::new();
        module.section(&types).section(&functions).section(&exports).section(&code);
        module.finish()
    }

    fn exports_and_bodies(bytes: &[u8]) -> (Vec<String>, Vec<Vec<String>>) {
        let (mut exports, mut bodies) = (Vec::new(), Vec::new());
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.unwrap() {
                Payload::ExportSection(reader) => {
                    exports.extend(reader.into_iter().map(|e| e.unwrap().name.to_owned()))
                }
                Payload::CodeSectionEntry(body) => bodies.push(
                    body.get_operators_reader().unwrap().into_iter().map(|op| format!("{:?}", op.unwrap())).collect(),
                ),
                _ => {}
            }
        }
        (exports, bodies)
    }

    #[test]
    fn unused_exports_go_and_their_code_with_them_unless_something_calls_it() {
        let (trimmed, removed) = trim(&module(), &["proxy_on_log", "proxy_on_done"]).unwrap();
        assert_eq!(removed, 2);
        let (exports, bodies) = exports_and_bodies(&trimmed);
        assert_eq!(exports, ["keep"]);
        assert_eq!(bodies[0], ["Call { function_index: 2 }", "End"], "kept byte for byte");
        assert_eq!(bodies[1], ["Unreachable", "End"], "nothing refers to it: its code is gone");
        assert_eq!(bodies[2], ["Nop", "End"], "still called: kept");
        // Idempotent.
        let (again, removed) = trim(&trimmed, &["proxy_on_log", "proxy_on_done"]).unwrap();
        assert_eq!((again, removed), (trimmed, 0));
    }
}
