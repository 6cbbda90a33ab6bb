//! `relaycord dlq list|show|replay|purge`: the operator's view of dead letters.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use relaycord::config::Config;
use relaycord::roles;
use relaycord_bus::Envelope;
use relaycord_sinks::SinkConfig;
use relaycord_sinks::dlq::{self, DeadLetter, Replayed};

#[derive(Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// One line per dead letter of the sink: sequence, time, id, type, attempts, status, reason.
    List {
        #[arg(long)]
        sink: String,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter in full: its headers and the original envelope.
    Show {
        /// Sequence in RELAYCORD_DLQ, as `list` prints it.
        seq: u64,
    },
    /// Deliver dead letters again through the same sink (same id, headers, secret); each one
    /// accepted is removed from the DLQ, the others stay.
    Replay {
        #[arg(long)]
        sink: String,
        /// Only these sequences (repeatable); default: all of the sink's dead letters.
        #[arg(long = "seq")]
        seqs: Vec<u64>,
    },
    /// Delete dead letters without delivering them.
    Purge {
        #[arg(long)]
        sink: String,
        /// Only these sequences (repeatable); default: all of the sink's dead letters.
        #[arg(long = "seq")]
        seqs: Vec<u64>,
    },
}

pub async fn run(config_path: Option<&Path>, args: DlqArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    // Replay builds the sink: check its config before touching NATS.
    if let DlqCommand::Replay { sink, .. } = &args.command {
        find_sink(&config, sink)?.check()?;
    }
    let js = roles::connect(&config, "dlq").await?;
    match args.command {
        DlqCommand::List { sink, json } => {
            for letter in dlq::list(&js, &sink).await? {
                if json {
                    println!("{}", serde_json::to_string(&summary(&letter))?);
                } else {
                    println!("{}", table_line(&letter));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { seq } => {
            let letter = dlq::get(&js, seq).await?;
            let mut out = summary(&letter);
            out["envelope"] = serde_json::from_slice(&letter.payload)
                .unwrap_or_else(|_| String::from_utf8_lossy(&letter.payload).into());
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay { sink, seqs } => {
            let sink_config = find_sink(&config, &sink)?;
            let letters = selected(dlq::list(&js, &sink).await?, &seqs)?;
            let results = sink_config
                .replay_dead_letters(&js, &config.nats.subjects(), &letters)
                .await?;
            let mut failed = 0;
            for (seq, outcome) in &results {
                match outcome {
                    Replayed::Delivered => println!("{seq}\tdelivered"),
                    Replayed::AlreadyDelivered => println!("{seq}\talready delivered (removed)"),
                    Replayed::Skipped(reason) => println!("{seq}\tskipped (removed): {reason}"),
                    Replayed::Failed(reason) => {
                        failed += 1;
                        println!("{seq}\tfailed: {reason}");
                    }
                }
            }
            eprintln!(
                "replayed {} dead letter(s) of {sink}: {} delivered, {failed} still in the DLQ",
                results.len(),
                results.len() - failed
            );
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        DlqCommand::Purge { sink, seqs } => {
            let removed = dlq::purge(&js, &sink, &seqs).await?;
            eprintln!("purged {removed} dead letter(s) of {sink}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn find_sink<'a>(config: &'a Config, name: &str) -> anyhow::Result<&'a SinkConfig> {
    config
        .sinks
        .iter()
        .find(|s| s.name == name)
        .with_context(|| {
            let known: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
            format!("no sink named {name:?} in the config (configured: {known:?}); replay needs its [[sinks]] entry")
        })
}

fn selected(letters: Vec<DeadLetter>, seqs: &[u64]) -> anyhow::Result<Vec<DeadLetter>> {
    if seqs.is_empty() {
        return Ok(letters);
    }
    let picked: Vec<DeadLetter> = letters
        .into_iter()
        .filter(|l| seqs.contains(&l.seq))
        .collect();
    if picked.len() != seqs.len() {
        anyhow::bail!(
            "some of --seq {seqs:?} are not dead letters of this sink (see `relaycord dlq list`)"
        );
    }
    Ok(picked)
}

fn summary(letter: &DeadLetter) -> serde_json::Value {
    serde_json::json!({
        "seq": letter.seq,
        "stored_at": humantime_serde::re::humantime::format_rfc3339_millis(letter.stored_at).to_string(),
        "id": letter.id,
        "type": letter.event_type,
        "attempts": letter.attempts,
        "status": letter.status,
        "reason": letter.reason,
        "guild_id": Envelope::from_slice(&letter.payload).ok().and_then(|e| e.guild_id.map(|g| g.into_owned())),
    })
}

fn table_line(letter: &DeadLetter) -> String {
    format!(
        "{:<8} {} {:<40} {:<22} attempts={:<3} status={:<4} {}",
        letter.seq,
        humantime_serde::re::humantime::format_rfc3339_seconds(letter.stored_at),
        letter.id,
        letter.event_type,
        letter.attempts,
        letter.status.map_or("-".to_owned(), |s| s.to_string()),
        letter.reason
    )
}
