#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use tollgate_quota::cli::{init_tracing, run, Cli};

// Every request allocates a little (JSON, HTTP, Redis arguments) on two or more threads:
// mimalloc's thread-local caches beat glibc malloc's arenas there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    run(cli).await
}
