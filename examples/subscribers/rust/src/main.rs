//! `cargo run -p relaycord-example-subscriber -- --filter 'discord.gateway.MESSAGE_CREATE.*'`
//! from the repository root: one JSON line per message (see the library's `run`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = relaycord_example_subscriber::Options::parse();
    relaycord_example_subscriber::run(&options, |line| println!("{line}")).await
}
