//! `relaycord-bench`: benchmarks run by hand (not part of the test suite), each reported as
//! a ratio or difference against a baseline measured in the same invocation. Results and the
//! commands that produced them are recorded in docs/benchmarks.md. Also the full soak
//! (`soak`, docs/reliability.md), which needs the same release build of every role.
//!
//! Build the `relaycord` binary first, in the same profile:
//! `cargo build --release -p relaycord -p relaycord-bench`.

mod procs;
mod shards;
mod soak;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "relaycord-bench", about = "Relaycord benchmarks")]
struct Cli {
    /// The `relaycord` binary to measure (default: next to this executable).
    #[arg(long, global = true)]
    relaycord: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Shard density: resident memory of one `relaycord ingest` process per gateway shard.
    Shards(shards::Options),
    /// The soak: every role as a process under random faults, every event counted
    /// (docs/reliability.md).
    Soak(soak::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = procs::relaycord_binary(cli.relaycord).and_then(|binary| match cli.command {
        Command::Shards(options) => shards::run(&binary, &options),
        Command::Soak(options) => soak::run(&binary, &options),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
