//! The criterion micro-benchmarks of tollgate-core.

use std::fmt::Write;

use crate::Results;

pub(super) fn write(md: &mut String, results: &Results) {
    if results.micro.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Micro-benchmarks of the core\n");
    let _ = writeln!(
        md,
        "`cargo bench -p tollgate-core` ([`crates/tollgate-core/benches/hot_path.rs`](crates/tollgate-core/benches/hot_path.rs)), \
         natively on core 1; the `.wasm` runs the same code under V8, slower. Median and 95% confidence interval.\n"
    );
    let _ = writeln!(md, "| benchmark | median | 95% CI |\n|---|---|---|");
    let show = |ns: f64| if ns >= 1000.0 { format!("{:.2} µs", ns / 1000.0) } else { format!("{ns:.1} ns") };
    for m in &results.micro {
        let _ = writeln!(md, "| `{}` | {} | {} – {} |", m.name, show(m.median_ns), show(m.low_ns), show(m.high_ns));
    }
    let _ = writeln!(md);
}
