//! `relaycord`: one binary, one subcommand per role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
#[cfg(feature = "dev")]
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use prometheus::Registry;
use relaycord::config::Config;
#[cfg(feature = "dev")]
use relaycord::dev::{self, DevOptions};
use relaycord::roles;
use relaycord::telemetry::{self, Health};
use relaycord::traces::{self, TelemetrySection};
#[cfg(feature = "dev")]
use relaycord_bus::Secret;
#[cfg(feature = "dev")]
use relaycord_sim::{GenerateSpec, SimConfig, Simulator};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod dlq;
mod replay;
mod reshard;
mod tail;

/// mimalloc rather than glibc's malloc: ingest allocates and frees several buffers per
/// gateway event (the inflated frame, envelope, headers, ack) on whichever worker thread
/// runs the shard, and glibc's malloc (with its free-list consolidation) was the largest
/// item of ingest's profile under load (docs/benchmarks.md, "Ingest throughput").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "relaycord",
    version,
    about = "Discord events as durable streams on NATS JetStream"
)]
struct Cli {
    /// Config file (TOML). Every key can also be set as RELAYCORD_<SECTION>__<KEY>.
    #[arg(long, global = true, env = "RELAYCORD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process against the simulator (or Discord with DISCORD_TOKEN).
    #[cfg(feature = "dev")]
    Dev {
        /// Send exactly N simulated events, wait for their delivery, print a summary, exit.
        #[arg(long)]
        events: Option<u64>,
        /// Use this NATS server instead of starting a nats-server child.
        #[arg(long)]
        nats_url: Option<String>,
        /// Simulated shards.
        #[arg(long, default_value_t = 4)]
        shards: u32,
        /// Simulated events per second (0: as fast as possible). Default: 5, or 0 with --events.
        #[arg(long)]
        rate: Option<f64>,
        /// Do not print a line per received event.
        #[arg(long)]
        quiet: bool,
        /// Seconds to wait for the last deliveries after generation.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Hold gateway shards and publish every dispatch to JetStream.
    Ingest {
        /// Run this inclusive shard range only (e.g. 0-15, for StatefulSet ordinals)
        /// instead of sharing all shards with the other replicas through leases.
        #[arg(long)]
        shards: Option<String>,
        /// Total shard count (required with --shards).
        #[arg(long)]
        shard_count: Option<u32>,
    },
    /// Deliver events to the configured sinks (all, or those named with --name).
    Sink {
        #[arg(long = "name")]
        names: Vec<String>,
        /// Metrics and health endpoint.
        #[arg(long, default_value = "127.0.0.1:9101")]
        metrics_listen: SocketAddr,
    },
    /// Serve Discord's HTTP interactions: verify, publish, route to handlers, defer.
    Interactions {
        /// Listen address (default: interactions.listen in the config).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Run the Discord simulator (gateway + REST) for local experiments.
    #[cfg(feature = "dev")]
    Sim {
        #[arg(long, default_value = "127.0.0.1:8990")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1)]
        shards: u32,
        #[arg(long, default_value = "sim-token")]
        token: String,
        /// Identify buckets reported by /gateway/bot (`shard % max_concurrency`).
        #[arg(long, default_value_t = 16)]
        max_concurrency: u16,
        /// Simulated guilds (default: 8, or one per shard when there are more shards).
        #[arg(long)]
        guilds: Option<u32>,
        /// Identifies allowed per day (session_start_limit.total).
        #[arg(long, default_value_t = 1000)]
        session_start_limit: u32,
        /// Guilds one shard may hold: IDENTIFY with fewer than ceil(guilds / this) shards is
        /// closed with 4011 (sharding required).
        #[arg(long, default_value_t = 2500)]
        max_guilds_per_shard: u32,
        /// Generate events at this rate once every shard is connected (0: none, unless
        /// --events is given; then only what a test or tool injects is sent).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Stop generating after this many events (default: until stopped); with
        /// --rate 0, as fast as possible. Prints `generated N events in S s` when done.
        #[arg(long)]
        events: Option<u64>,
        /// Add `"relaycord_sim":{"n":…,"sent_unix_us":…}` to every generated payload, for
        /// latency benchmarks (relaycord-bench's receiver reads it).
        #[arg(long)]
        stamp: bool,
    },
    /// Dead letters of a sink: list, show, replay through the sink, purge.
    Dlq(dlq::DlqArgs),
    /// Deliver the events of a time range again, to one sink only; `--only failed` takes
    /// its dead letters of the range. Run again after a stop, it continues.
    Replay(replay::ReplayArgs),
    /// Change the shard count without a gap: `--to N` starts it, `status` follows it.
    Reshard(reshard::ReshardArgs),
    /// Follow events live: pretty lines, or the envelopes as JSON lines (--json).
    Tail(tail::TailArgs),
    /// Print the bus contract of this configuration: an AsyncAPI 3.0 document (JSON) of
    /// its subjects, headers and streams, with the envelope's JSON Schema inside.
    Asyncapi {
        /// Print only the envelope's JSON Schema (docs/contract/envelope.schema.json).
        #[arg(long)]
        envelope_schema: bool,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load and validate the config (file + environment); name the bad key and the fix.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = runtime(&cli.command).expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Worker threads of ingest's runtime, unless `TOKIO_WORKER_THREADS` sets them: one spares
/// each event's task crossings a kernel wakeup (docs/ingest.md, "Worker threads"). The
/// other roles keep tokio's default, one per core: the sink measured worse on one.
const INGEST_WORKER_THREADS: usize = 1;

fn runtime(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if matches!(command, Command::Ingest { .. })
        && std::env::var_os("TOKIO_WORKER_THREADS").is_none()
    {
        builder.worker_threads(INGEST_WORKER_THREADS);
    }
    builder.build()
}

/// Cancels the returned token on Ctrl-C or SIGTERM (Kubernetes stops pods with it).
///
/// The handlers are registered before this returns, not when a task first runs: a
/// Ctrl-C in the first milliseconds must also be a clean stop, not the default
/// kill-by-signal.
#[cfg(unix)]
fn shutdown_on_signal() -> CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let trigger = token.clone();
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::spawn(async move {
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        tracing::info!("shutting down");
        trigger.cancel();
    });
    token
}

#[cfg(not(unix))]
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        trigger.cancel();
    });
    token
}

/// A startup step (connecting, say) that a shutdown cuts short: `Ok(None)` then, so a
/// Ctrl-C while NATS is still being reached is a clean exit, not a connect error.
async fn unless_shutdown<T>(
    shutdown: &CancellationToken,
    step: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<Option<T>> {
    tokio::select! {
        () = shutdown.cancelled() => Ok(None),
        result = step => result.map(Some),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_on_signal();
    match cli.command {
        #[cfg(feature = "dev")]
        Command::Dev {
            events,
            nats_url,
            shards,
            rate,
            quiet,
            timeout,
        } => {
            // The demo prints its own progress; component logs stay quiet unless RUST_LOG asks.
            // It has no config file: only the OTEL_* variables turn traces on.
            let _traces = traces::init("warn", &TelemetrySection::default(), "dev")?;
            let opts = DevOptions {
                events,
                nats_url,
                discord_token: std::env::var("DISCORD_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty())
                    .map(Secret::new),
                shards,
                rate: rate.unwrap_or(if events.is_some() { 0.0 } else { 5.0 }),
                print_events: !quiet,
                settle_timeout: Duration::from_secs(timeout),
            };
            match dev::run(opts, shutdown).await? {
                Some(report) => {
                    println!("{}", report.webhook_summary());
                    println!("{}", report.summary());
                    Ok(if report.complete() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
                None => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Ingest {
            shards,
            shard_count,
        } => {
            let mut config = Config::load(cli.config.as_deref())?;
            let _traces = traces::init("info", &config.telemetry, "ingest")?;
            tracing::info!(
                workers = tokio::runtime::Handle::current().metrics().num_workers(),
                "runtime worker threads (TOKIO_WORKER_THREADS to change)"
            );
            if let Some(shards) = shards {
                config.ingest.shards = shards;
            }
            if let Some(count) = shard_count {
                config.ingest.shard_count = relaycord::config::ShardCount::Number(count);
            }
            config.validate()?;
            let health = Health::default();
            let registry = Registry::new();
            let listener = TcpListener::bind(config.ingest.metrics_listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on ingest.metrics_listen = {}",
                        config.ingest.metrics_listen
                    )
                })?;
            telemetry::serve_metrics(listener, registry.clone(), health.clone(), shutdown.clone());
            let Some(js) = unless_shutdown(&shutdown, roles::connect(&config, "ingest")).await?
            else {
                return Ok(ExitCode::SUCCESS);
            };
            health.set_ready(true);
            roles::run_ingest(&config, js, &registry, &health, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sink {
            names,
            metrics_listen,
        } => {
            let config = Config::load(cli.config.as_deref())?;
            let _traces = traces::init("info", &config.telemetry, "sink")?;
            // Before anything else: a bad sink config must not show up as a NATS error,
            // nor leave streams behind.
            roles::select_sinks(&config, &names)?;
            let health = Health::default();
            let registry = Registry::new();
            let listener = TcpListener::bind(metrics_listen)
                .await
                .with_context(|| format!("cannot listen on --metrics-listen {metrics_listen}"))?;
            telemetry::serve_metrics(listener, registry.clone(), health.clone(), shutdown.clone());
            let Some(js) = unless_shutdown(&shutdown, roles::connect(&config, "sink")).await?
            else {
                return Ok(ExitCode::SUCCESS);
            };
            health.set_ready(true);
            roles::run_sinks(&config, &names, js, &registry, &health, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Interactions { listen } => {
            let mut config = Config::load(cli.config.as_deref())?;
            let _traces = traces::init("info", &config.telemetry, "interactions")?;
            if let Some(listen) = listen {
                config.interactions.listen = listen;
            }
            let health = Health::default();
            let registry = Registry::new();
            let metrics_listen = config.interactions.metrics_listen;
            let metrics = TcpListener::bind(metrics_listen).await.with_context(|| {
                format!("cannot listen on interactions.metrics_listen = {metrics_listen}")
            })?;
            // Up until the role has drained, not just until SIGTERM: /readyz must answer
            // 503 through interactions.drain_delay (docs/interactions.md, "Shutdown").
            let metrics_stop = CancellationToken::new();
            let _metrics_stop = metrics_stop.clone().drop_guard();
            telemetry::serve_metrics(metrics, registry.clone(), health.clone(), metrics_stop);
            let listen = config.interactions.listen;
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on interactions.listen = {listen}"))?;
            let Some(js) =
                unless_shutdown(&shutdown, roles::connect(&config, "interactions")).await?
            else {
                return Ok(ExitCode::SUCCESS);
            };
            relaycord::interactions::run_interactions(
                &config, js, &registry, &health, listener, shutdown,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "dev")]
        Command::Sim {
            listen,
            shards,
            token,
            max_concurrency,
            guilds,
            session_start_limit,
            max_guilds_per_shard,
            rate,
            events,
            stamp,
        } => {
            telemetry::init_logging("info");
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let config = SimConfig {
                shards,
                token,
                max_concurrency,
                guilds: guilds.unwrap_or(shards.max(8)),
                session_start_limit,
                max_guilds_per_shard,
                ..SimConfig::default()
            };
            let sim = Simulator::start(listener, config).await?;
            let addr = sim.local_addr();
            eprintln!("simulator: api_base = http://{addr}/api, gateway = ws://{addr}");
            if rate > 0.0 || events.is_some() {
                generate_when_ready(&sim, rate, events, stamp, &shutdown).await;
            }
            shutdown.cancelled().await;
            sim.shutdown();
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq(args) => dlq::run(cli.config.as_deref(), args).await,
        Command::Replay(args) => replay::run(cli.config.as_deref(), args, shutdown).await,
        Command::Reshard(args) => reshard::run(cli.config.as_deref(), args).await,
        Command::Tail(args) => tail::run(cli.config.as_deref(), args, shutdown).await,
        Command::Asyncapi { envelope_schema } => {
            let text = if envelope_schema {
                relaycord::contract::envelope_schema_json()
            } else {
                let config = Config::load(cli.config.as_deref())?;
                config.validate()?;
                relaycord::contract::asyncapi_json(&config)
            };
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let config = Config::load(cli.config.as_deref())?;
            for sink in &config.sinks {
                sink.check()?;
            }
            println!(
                "config ok: nats {} (prefix {:?}), {} sink(s)",
                relaycord_bus::redact::userinfo(&config.nats.url),
                config.nats.subject_prefix,
                config.sinks.len()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(feature = "dev")]
/// `relaycord sim --rate`: waits for every shard's session, then generates in the
/// background until `--events` are sent or the simulator stops, and says so on stderr.
async fn generate_when_ready(
    sim: &Simulator,
    rate: f64,
    events: Option<u64>,
    stamp: bool,
    shutdown: &CancellationToken,
) {
    eprintln!("waiting for a client to connect every shard…");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            ready = sim.wait_ready(Duration::from_secs(60)) => if ready.is_ok() { break },
        }
    }
    let what = events.map_or("events until stopped".to_owned(), |n| format!("{n} events"));
    eprintln!("all shards ready: generating {what} at {rate}/s");
    let started = std::time::Instant::now();
    let generator = sim.generate(GenerateSpec {
        count: events,
        rate_per_sec: rate,
        stamp,
        ..GenerateSpec::default()
    });
    // The generator also stops with the simulator (on shutdown); the line tells a
    // benchmark driving this process when the last event was handed to the connections.
    tokio::spawn(async move {
        let generated = generator.finished().await;
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("generated {generated} events in {seconds:.3} s");
    });
}
