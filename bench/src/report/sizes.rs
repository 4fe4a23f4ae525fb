//! The sizes of the `.wasm` files.

use std::fmt::Write;

use super::format::thousands;
use crate::Results;

pub(super) fn write(md: &mut String, results: &Results) {
    let _ = writeln!(md, "## Sizes\n\n| file | bytes |\n|---|---|");
    for (name, bytes) in &results.sizes {
        let _ = writeln!(md, "| `{name}` | {} ({:.1} KiB) |", thousands(*bytes as f64), *bytes as f64 / 1024.0);
    }
    let _ = writeln!(
        md,
        "\n`tollgate.wasm` is built by `make wasm` (release: LTO, one codegen unit, `panic = \"abort\"`, stripped).\n"
    );
}
