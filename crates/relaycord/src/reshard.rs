//! `relaycord reshard --to N | status`: an operator's reshard, run by the ingest replicas.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use relaycord::config::Config;
use relaycord::roles;
use relaycord_ingest::reshard::{self, Generations};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReshardArgs {
    /// Start a reshard to this many shards (the ingest replicas carry it out).
    #[arg(long)]
    to: Option<u32>,
    #[command(subcommand)]
    command: Option<ReshardCommand>,
}

#[derive(Subcommand)]
enum ReshardCommand {
    /// The live shard count and the progress of a reshard in progress.
    Status,
    /// Abandon a reshard that has not begun switching; the old generation goes on.
    Cancel,
}

pub async fn run(config_path: Option<&Path>, args: ReshardArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let js = roles::connect(&config, "reshard").await?;
    let subjects = config.nats.subjects();
    let generations = Generations::ensure(&js, &subjects, config.nats.stream_replicas).await?;
    match (args.to, args.command) {
        (Some(to), _) => {
            let token = config
                .discord
                .require_token()
                .context("the identify budget is read from Discord's /gateway/bot")?;
            let bot = relaycord_ingest::discover(&config.discord.api_base, token).await?;
            match reshard::begin(
                &generations,
                &js,
                &subjects,
                to,
                &bot.session_start_limit,
                "command",
            )
            .await
            {
                Ok(plan) => {
                    println!(
                        "reshard {} → {to} started (Discord recommends {}); follow it with `relaycord reshard status`",
                        plan.count, bot.shards
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => {
                    eprintln!("reshard refused: {error}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        (None, Some(ReshardCommand::Status)) => {
            println!("{}", reshard::status(&generations).await?);
            Ok(ExitCode::SUCCESS)
        }
        (None, Some(ReshardCommand::Cancel)) => match reshard::cancel(&generations).await {
            Ok(plan) => {
                println!("reshard cancelled; {} shards stay", plan.count);
                Ok(ExitCode::SUCCESS)
            }
            Err(error) => {
                eprintln!("cannot cancel: {error}");
                Ok(ExitCode::FAILURE)
            }
        },
        (None, None) => anyhow::bail!("give --to N to start a reshard, or `status` / `cancel`"),
    }
}
