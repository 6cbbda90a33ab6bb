//! `relaycord-bench`: benchmarks run by hand (not part of the test suite), each reported as
//! a ratio or difference against a baseline measured in the same invocation. Results and the
//! commands that produced them are recorded in docs/benchmarks.md. Every process measured
//! (nats-server, `relaycord` roles, the receiver, wrk, node) is a child on loopback. Also the
//! full soak (`soak`, docs/reliability.md), which needs the same release build of every role.
//!
//! Build the `relaycord` binary first, in the same profile:
//! `cargo build --release -p relaycord -p relaycord-bench`.

mod discordhooks;
mod http_sink;
mod latency;
mod procs;
mod receiver;
mod shards;
mod soak;
mod stack;

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
    /// HTTP sink deliveries/s (signed, dedupe on and off) vs the receiver's ceiling under wrk.
    HttpSink(http_sink::Options),
    /// End-to-end latency simulator → ingest → NATS → HTTP sink → receiver at fixed rates.
    Latency(latency::Options),
    /// Gateway → HTTP receiver events/s, Relaycord vs discordhooks (bench/discordhooks).
    VsDiscordhooks(discordhooks::Options),
    /// The benchmarks' webhook receiver (started by them; answers 200, counts, measures).
    Receiver(receiver::Options),
    /// The soak: every role as a process under random faults, every event counted
    /// (docs/reliability.md).
    Soak(soak::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        // The receiver is a child of the other benchmarks and needs no relaycord binary.
        Command::Receiver(options) => receiver::run(&options),
        command => procs::relaycord_binary(cli.relaycord).and_then(|binary| match command {
            Command::Shards(options) => shards::run(&binary, &options),
            Command::HttpSink(options) => http_sink::run(&binary, &options),
            Command::Latency(options) => latency::run(&binary, &options),
            Command::VsDiscordhooks(options) => discordhooks::run(&binary, &options),
            Command::Soak(options) => soak::run(&binary, &options),
            Command::Receiver(_) => unreachable!("handled above"),
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
