//! `relaycord replay --sink NAME --since TIME [--until TIME]`: deliver a time range of
//! events again, to one sink only (see `relaycord_sinks::replay` and docs/sinks.md).

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use relaycord::config::Config;
use relaycord::roles;
use relaycord_sinks::replay::{self, Only, Report, Request};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct ReplayArgs {
    /// The sink to deliver to, by its `[[sinks]]` name; no other sink sees the replay.
    #[arg(long)]
    sink: String,
    /// Start of the range: an RFC 3339 time (`2026-12-06T10:00:00Z`) or a duration
    /// before now (`2h`, `90m`, `1d`).
    #[arg(long)]
    since: String,
    /// End of the range, included (same forms; default: now).
    #[arg(long)]
    until: Option<String>,
    /// Count what would be sent; send nothing.
    #[arg(long)]
    dry_run: bool,
    /// At most this many events per second (default: as fast as the receiver answers).
    #[arg(long)]
    rate: Option<f64>,
    /// `all` events of the range, or only those `failed` (dead-lettered) in it.
    #[arg(long, value_enum, default_value_t = Which::All)]
    only: Which,
    /// Forget where an earlier run of the same command stopped and start over.
    #[arg(long)]
    fresh: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Which {
    All,
    Failed,
}

pub async fn run(
    config_path: Option<&Path>,
    args: ReplayArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let sink = config
        .sinks
        .iter()
        .find(|s| s.name == args.sink)
        .with_context(|| {
            let names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
            format!(
                "no sink named {:?} in the config (sinks: {})",
                args.sink,
                names.join(", ")
            )
        })?;
    sink.check()?;
    if args.rate.is_some_and(|r| replay::pace(r).is_none()) {
        bail!("--rate must be a number of events per second above 0 and at most 1000000");
    }
    let now = SystemTime::now();
    let since = parse_time("--since", &args.since, now)?;
    let until = match &args.until {
        Some(until) => parse_time("--until", until, now)?,
        None => now,
    };
    if since > until {
        bail!(
            "--since ({}) is after --until ({})",
            show(since),
            show(until)
        );
    }
    let only = match args.only {
        Which::All => Only::All,
        Which::Failed => Only::Failed,
    };
    let request = Request {
        since,
        until: until.min(now),
        only,
        key: replay::checkpoint::key(
            &args.sink,
            &args.since,
            args.until.as_deref(),
            only == Only::Failed,
        ),
        rate: args.rate,
        dry_run: args.dry_run,
        fresh: args.fresh,
    };
    let js = roles::connect(&config, "replay").await?;
    let name = &args.sink;
    let mut progress = |r: &Report| {
        eprintln!(
            "replay {name}: {} sent, {} skipped, {} failed so far",
            r.sent, r.skipped, r.failed
        );
    };
    let report = sink
        .replay(
            &js,
            &config.nats.subjects(),
            &request,
            &shutdown,
            &mut progress,
        )
        .await?;
    print_report(name, &request, &report);
    Ok(if report.failed == 0 && report.stopped.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(sink: &str, request: &Request, r: &Report) {
    let range = match (r.since, r.until) {
        (Some(since), Some(until)) => format!("{} to {}", show(since), show(until)),
        _ => "?".to_owned(),
    };
    let what = match request.only {
        Only::All => "events",
        Only::Failed => "dead letters",
    };
    eprintln!("replay {} ({what} of {range}) to sink {sink}", request.key);
    if let Some(e) = &r.earlier {
        let started = show(std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.started_ms));
        match request.only {
            Only::All => eprintln!(
                "continued the replay started at {started}, after stream sequence {}: earlier runs sent {}, skipped {}, failed {} (--fresh starts a new one)",
                e.done_seq, e.sent, e.skipped, e.failed
            ),
            Only::Failed => eprintln!(
                "continued the replay started at {started}, with its range (--fresh starts a new one)"
            ),
        }
    }
    if let Some(oldest) = r.oldest_stored {
        eprintln!(
            "events before {} are no longer in the stream (its max_age): the range starts there",
            show(oldest)
        );
    }
    if request.dry_run {
        eprintln!("dry run: {} {what} would be sent", r.matched);
        return;
    }
    eprintln!(
        "sent {}, skipped {}, failed {}{}",
        r.sent,
        r.skipped,
        r.failed,
        match (request.only, r.failed) {
            (_, 0) => "",
            (Only::All, _) => " (dead-lettered: see `relaycord dlq list`)",
            (Only::Failed, _) => " (still in the DLQ)",
        }
    );
    if let Some(reason) = &r.stopped {
        eprintln!("stopped early: {reason}; run the same command again to continue");
    }
}

/// An RFC 3339 time, or a duration before `now`.
fn parse_time(flag: &str, value: &str, now: SystemTime) -> anyhow::Result<SystemTime> {
    if let Ok(time) = OffsetDateTime::parse(value, &Rfc3339) {
        return Ok(time.into());
    }
    match humantime::parse_duration(value) {
        Ok(ago) => now
            .checked_sub(ago)
            .with_context(|| format!("{flag} {value}: too far back")),
        Err(_) => bail!(
            "{flag} {value:?} is neither an RFC 3339 time (2026-12-06T10:00:00Z) nor a duration before now (2h, 90m)"
        ),
    }
}

fn show(time: SystemTime) -> String {
    let time = OffsetDateTime::from(time)
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    time.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_are_rfc3339_or_durations_before_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = parse_time("--since", "2026-12-06T10:00:00+01:00", now).unwrap();
        assert_eq!(show(at), "2026-12-06T09:00:00Z");
        let ago = parse_time("--since", "2h", now).unwrap();
        assert_eq!(now.duration_since(ago).unwrap(), Duration::from_secs(7200));
        let e = parse_time("--until", "yesterday", now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--until") && e.contains("RFC 3339"), "{e}");
    }
}
