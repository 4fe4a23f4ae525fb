use std::process::ExitCode;

use clap::Parser;
use tollgate_quota::cli::{init_tracing, run, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    run(cli).await
}
