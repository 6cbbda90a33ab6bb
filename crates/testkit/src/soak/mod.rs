//! The soak (docs/reliability.md): a 3-node JetStream cluster with R3 streams, every
//! Relaycord role as a real process (two ingest replicas sharing 8 shards by leases, the
//! interactions service, an HTTP sink with two replicas and a NATS sink), the simulator
//! as Discord, and a fault schedule drawn from a seed killing, pausing and cutting them
//! while events flow. Then every event is counted at every sink.
//!
//! Used by the light run in the end-to-end suite (tests/it/soak.rs) and the full run,
//! `relaycord-bench soak` (scripts/soak.sh).

mod count;
mod faults;
mod interactions;
mod procs;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use relaycord::config::Config;
use relaycord_devkit::{NatsCluster, dedupe_id, is_published};
use relaycord_sim::{GenerateSpec, SimConfig};
use serde_json::{Value, json};

pub use faults::Kind;

use crate::{SECRET, TestReceiver, start_sim, stream_ids};
use count::{SinkCount, secs};
use interactions::Answer;

const SHARDS: u32 = 8;
const LEASE_TTL: Duration = Duration::from_secs(3);
const ACK_WAIT: Duration = Duration::from_secs(2);
/// The interactions deadline; the handler answers every fifth request after it.
const DEADLINE: Duration = Duration::from_secs(1);
const LATE_BY: Duration = Duration::from_secs(2);
const OUT_STREAM: &str = "SOAK_RELAY";

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub events: u64,
    pub seed: u64,
    /// Events per second the simulator generates.
    pub rate: f64,
    /// Faults continue after generation until every kind ran this often.
    pub min_per_kind: u32,
    /// Signed interactions sent over the generation time.
    pub interactions: u64,
    /// Of every this many receiver requests, three fail (500, timeout, 429).
    pub flaky_period: u64,
    /// How long everything may take to arrive once generation and faults are over.
    pub settle: Duration,
    /// The `relaycord` binary.
    pub relaycord: PathBuf,
    /// Config, logs; kept for post-mortems.
    pub dir: PathBuf,
}

impl Options {
    /// The light run of the test suite: 20,000 events, every fault kind at least once.
    pub fn light(seed: u64, relaycord: PathBuf, dir: PathBuf) -> Self {
        Self {
            events: 20_000,
            seed,
            rate: 250.0,
            min_per_kind: 1,
            interactions: 200,
            flaky_period: 12,
            settle: Duration::from_secs(300),
            relaycord,
            dir,
        }
    }
}

/// A fresh seed (the time), for runs not asked to replay one.
pub fn random_seed() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007)
}

/// The result: `json` is what the JSON file holds.
pub struct Report {
    pub json: Value,
    pub lost: usize,
    pub faults_per_kind: Vec<(&'static str, usize)>,
}

impl Report {
    /// A short table of the figures that matter.
    pub fn table(&self) -> String {
        let j = &self.json;
        let mut out = format!(
            "soak seed {} — {} events, {} faults in {:.0} s (settled {:.0} s after generation)\n",
            j["seed"], j["events"], j["faults"]["total"], j["wall_s"], j["settle_s"]
        );
        out += &format!(
            "{:<8} {:>10} {:>6} {:>6} {:>6} {:>12} {:>12} {:>14}\n",
            "sink",
            "delivered",
            "dlq",
            "lost",
            "dups",
            "unexplained",
            "redeliveries",
            "max latency s"
        );
        for sink in ["web", "relay"] {
            let s = &j["sinks"][sink];
            let cells: Vec<String> = [
                "delivered",
                "dead_lettered",
                "lost",
                "duplicates",
                "unexplained_duplicates",
                "redeliveries",
                "max_latency_s",
            ]
            .iter()
            .map(|k| s[*k].to_string())
            .collect();
            out += &format!(
                "{:<8} {:>10} {:>6} {:>6} {:>6} {:>12} {:>12} {:>14}\n",
                sink, cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
            );
        }
        let i = &j["interactions"];
        out += &format!(
            "interactions: {} sent, {} in time, {} followed up, {} unavailable, {} not accepted, {} never reached the handler, {} lost\n",
            i["sent"],
            i["in_time"],
            i["followed_up"],
            i["unavailable"],
            i["not_accepted"],
            i["never_reached_handler"],
            i["lost"]
        );
        let kinds: Vec<String> = self
            .faults_per_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out += &format!("faults: {}\n", kinds.join(", "));
        out += &format!("LOST: {}\n", self.lost);
        out
    }
}

fn config_toml(nats: &str, sim: &relaycord_sim::Simulator, receiver: &str, listen: &str) -> String {
    format!(
        r#"[nats]
url = "{nats}"
stream_replicas = 3

[discord]
token = "{token}"
api_base = "{api}"
public_key = "{public_key}"

[ingest]
metrics_listen = "127.0.0.1:0"
lease_ttl = "{lease_ttl}s"

[interactions]
listen = "{listen}"
metrics_listen = "127.0.0.1:0"
deadline = "{deadline}ms"

[[interactions.routes]]
command = "soak"
handler = {{ nats = "soak.handler" }}

[[sinks]]
name = "web"
type = "http"
url = "{receiver}"
secret = "{SECRET}"
timeout = "1s"
max_attempts = 100000
concurrency = 64
ack_wait = "{ack_wait}s"
backoff = {{ initial = "50ms", max = "1s" }}

[[sinks]]
name = "relay"
type = "nats"
subject = "soakout.{{type}}"
jetstream = true
timeout = "5s"
max_attempts = 100000
concurrency = 64
ack_wait = "{ack_wait}s"
backoff = {{ initial = "50ms", max = "1s" }}
"#,
        token = sim.config().token,
        api = sim.api_base(),
        public_key = sim.interactions().public_key_hex(),
        lease_ttl = LEASE_TTL.as_secs(),
        deadline = DEADLINE.as_millis(),
        ack_wait = ACK_WAIT.as_secs(),
    )
}

/// The stream the NATS sink publishes into: replicated like the bus, deduping ids for
/// longer than the run.
async fn out_stream(js: &jetstream::Context) {
    js.create_stream(jetstream::stream::Config {
        name: OUT_STREAM.to_owned(),
        subjects: vec!["soakout.>".to_owned()],
        num_replicas: 3,
        duplicate_window: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .expect("create the NATS sink's target stream");
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound").to_string()
}

/// Runs the soak; panics only when the stack cannot be set up.
pub async fn run(options: &Options) -> Report {
    relaycord_bus::install_crypto_provider();
    let started = Instant::now();
    let start_time = SystemTime::now();
    eprintln!(
        "soak: seed {} ({} events at {}/s), logs in {}",
        options.seed,
        options.events,
        options.rate,
        options.dir.display()
    );
    std::fs::create_dir_all(&options.dir).expect("create the soak directory");
    let cluster = NatsCluster::start(3).expect("start a 3-node nats-server cluster");
    let sim = start_sim(SimConfig {
        shards: SHARDS,
        guilds: SHARDS * 4,
        heartbeat_interval: Duration::from_secs(5),
        ..SimConfig::default()
    })
    .await;
    let receiver = TestReceiver::start(Duration::ZERO).await;
    receiver.set_flaky_period(options.flaky_period);
    let listen = free_addr();
    let config_path = options.dir.join("relaycord.toml");
    std::fs::write(
        &config_path,
        config_toml(&cluster.urls(), &sim, &receiver.url, &listen),
    )
    .expect("write the soak config");
    let config = Config::load(Some(&config_path)).expect("the soak config loads");
    let js = crate::stack::connect(&config, true).await;
    out_stream(&js).await;
    let handler = interactions::start_handler(js.client(), "soak.handler", 5, LATE_BY).await;

    let mut procs = procs::Procs::new(&options.relaycord, &config_path, &options.dir);
    for (name, args) in [
        ("ingest-a", &["ingest"][..]),
        ("ingest-b", &["ingest"]),
        ("interactions", &["interactions"]),
        (
            "sink-web-a",
            &["sink", "--name", "web", "--metrics-listen", "127.0.0.1:0"],
        ),
        (
            "sink-web-b",
            &["sink", "--name", "web", "--metrics-listen", "127.0.0.1:0"],
        ),
        (
            "sink-relay",
            &["sink", "--name", "relay", "--metrics-listen", "127.0.0.1:0"],
        ),
    ] {
        procs.add(name, args).expect("start a relaycord role");
    }
    let roles = procs.roles.len();
    let procs = Arc::new(Mutex::new(procs));
    sim.wait_ready(Duration::from_secs(120))
        .await
        .expect("both ingest replicas took every shard");

    let generating = Instant::now();
    let generator = sim.generate(GenerateSpec {
        count: Some(options.events),
        rate_per_sec: options.rate,
        ..GenerateSpec::default()
    });
    let interval = Duration::from_secs_f64(
        (options.events as f64 / options.rate / options.interactions.max(1) as f64).max(0.02),
    );
    let sender = tokio::spawn(interactions::send(
        sim.interactions(),
        format!("http://{listen}/interactions"),
        "soak",
        options.interactions,
        interval,
    ));
    let cluster = Arc::new(Mutex::new(cluster));
    let generated = Arc::new(AtomicBool::new(false));
    let world = faults::World {
        procs: Arc::clone(&procs),
        cluster: Arc::clone(&cluster),
        sim: sim.clone(),
        receiver: receiver.clone(),
        runtime: tokio::runtime::Handle::current(),
        start: started,
    };
    let schedule = faults::Schedule::new(
        options.seed,
        roles,
        3,
        SHARDS,
        faults::Timing {
            lease_ttl: LEASE_TTL,
            ack_wait: ACK_WAIT,
        },
    );
    let bounds = faults::Bounds {
        generated: Arc::clone(&generated),
        min_per_kind: options.min_per_kind,
        max_faults: (options.min_per_kind as usize * Kind::ALL.len() * 4).max(100),
    };
    let fault_thread = std::thread::spawn(move || faults::run(&world, schedule, &bounds));

    // One line every 30 s, so a long run shows how far it is.
    let progress = tokio::spawn({
        let (receiver, sim) = (receiver.clone(), sim.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!(
                    "soak: {:>7.0}s dispatched {} delivered to web {}",
                    started.elapsed().as_secs_f64(),
                    sim.stats().dispatches,
                    receiver.distinct()
                );
            }
        }
    });
    let made = generator.finished().await;
    let generation = generating.elapsed();
    eprintln!("soak: {made} events generated in {generation:.0?}");
    generated.store(true, Ordering::SeqCst);
    let sent = sender.await.expect("the interactions sender");
    let fault_log = tokio::task::spawn_blocking(move || fault_thread.join())
        .await
        .expect("join")
        .expect("the fault thread");
    procs
        .lock()
        .unwrap()
        .restart_exited()
        .expect("restart a role");
    let faults_done = Instant::now();

    // Every event the simulator created that ingest publishes, with when it was made.
    let expected: HashMap<String, SystemTime> = sim
        .sent()
        .iter()
        .filter(|d| is_published(d))
        .map(|d| (dedupe_id(d), d.created_at))
        .collect();
    let deadline = faults_done + options.settle;
    let sinks_done = settle(&js, &receiver, &expected, deadline).await;
    let discord = sim.interactions();
    let late_expected: Vec<&str> = sent
        .iter()
        .filter(|s| s.answer == Answer::Deferred)
        .map(|s| s.id.as_str())
        .collect();
    crate::eventually(
        deadline.saturating_duration_since(Instant::now()),
        async || {
            let followed = interactions::followed_up(&discord);
            let replied = handler.replied.lock().unwrap().clone();
            late_expected
                .iter()
                .all(|id| followed.contains(*id) || !replied.contains(*id))
        },
    )
    .await;
    progress.abort();
    let settle_time = faults_done.elapsed();
    eprintln!("soak: counting ({sinks_done:?} settled after {settle_time:.0?})");

    let web_dlq = count::dead_letters(&js, "web").await.unwrap_or_default();
    let relay_dlq = count::dead_letters(&js, "relay").await.unwrap_or_default();
    let relay_got = count::stored_times(&js, OUT_STREAM, "soakout.>")
        .await
        .expect("read the NATS sink's stream");
    let mut web = SinkCount::new(
        &expected,
        &receiver.accepted_at(),
        &web_dlq,
        &fault_log,
        start_time,
    );
    web.redeliveries = Some(
        receiver
            .requests()
            .saturating_sub(receiver.distinct() as u64),
    );
    let relay = SinkCount::new(&expected, &relay_got, &relay_dlq, &fault_log, start_time);
    let gateway = stream_ids(&js, "DISCORD_GATEWAY").await;
    let interactions = count_interactions(&sent, &handler, &discord);
    let lost = web.lost.len() + relay.lost.len() + interactions.1;
    // The nodes' logs go with the report: elections and catch-ups are the first thing a
    // loss next to a `nats_kill` needs (their stores are deleted when the cluster drops).
    for (i, node) in cluster.lock().unwrap().nodes.iter().enumerate() {
        let kept = options.dir.join(format!("nats-n{i}.log"));
        if let Err(error) = std::fs::copy(node.log_path(), &kept) {
            eprintln!("soak: cannot keep {}: {error}", kept.display());
        }
    }
    let procs = procs.lock().unwrap();
    let faults_per_kind: Vec<(&'static str, usize)> =
        count::per_kind(&fault_log).into_iter().collect();
    let stats = sim.stats();
    let json = json!({
        "seed": options.seed,
        "events": expected.len(),
        "generated": made,
        "rate": options.rate,
        "nats_server": std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server on PATH".to_owned()),
        "wall_s": secs(started.elapsed()),
        "generation_s": secs(generation),
        "settle_s": secs(settle_time),
        "settled": sinks_done,
        "lost": lost,
        "sinks": {"web": web.to_json(), "relay": relay.to_json()},
        "gateway_stream": {
            "stored": gateway.values().map(|n| *n as u64).sum::<u64>(),
            "ids_stored_twice": gateway.values().filter(|n| **n > 1).count(),
        },
        "interactions": interactions.0,
        "faults": {
            "total": fault_log.len(),
            "per_kind": faults_per_kind.iter().map(|(k, n)| (k.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "log": fault_log.iter().map(|f| json!({
                "at_s": secs(f.at), "kind": f.kind.name(), "target": f.target, "hold_s": secs(f.hold),
            })).collect::<Vec<_>>(),
        },
        "starts": procs.roles.iter().map(|r| (r.name.clone(), json!(r.starts))).collect::<serde_json::Map<_, _>>(),
        "unexpected_exits": procs.unexpected_exits,
        "simulator": {
            "connections": stats.connections, "identifies": stats.identifies,
            "resumes": stats.resumes, "failed_resumes": stats.failed_resumes,
            "replayed": stats.replayed, "identify_violations": stats.identify_violations,
        },
    });
    Report {
        json,
        lost,
        faults_per_kind,
    }
}

/// Waits until every expected event reached the receiver (or its dead letters) and the
/// NATS sink's consumer has nothing left, or `deadline`. Returns whether it settled.
async fn settle(
    js: &jetstream::Context,
    receiver: &TestReceiver,
    expected: &HashMap<String, SystemTime>,
    deadline: Instant,
) -> bool {
    loop {
        // Looked up on every round: right after a node's death the request can time out,
        // and a stream handle that failed once must not make the whole wait fail.
        let gateway = js.get_stream("DISCORD_GATEWAY").await;
        let accepted = receiver.accepted_at();
        let web_missing = expected
            .keys()
            .filter(|id| !accepted.contains_key(*id))
            .count();
        let relay_idle = match &gateway {
            Ok(stream) => stream
                .consumer_info("relaycord-relay")
                .await
                .is_ok_and(|i| i.num_pending == 0 && i.num_ack_pending == 0),
            Err(_) => false,
        };
        if (web_missing == 0 && relay_idle) || Instant::now() > deadline {
            if !relay_idle {
                // What kept the NATS sink's consumer busy, for the post-mortem.
                let state = match &gateway {
                    Ok(stream) => match stream.consumer_info("relaycord-relay").await {
                        Ok(i) => format!(
                            "pending {}, ack pending {}, redelivered {}, ack floor {:?}, delivered {:?}",
                            i.num_pending,
                            i.num_ack_pending,
                            i.num_redelivered,
                            i.ack_floor.stream_sequence,
                            i.delivered.stream_sequence
                        ),
                        Err(e) => format!("consumer info failed: {e}"),
                    },
                    Err(e) => format!("no stream: {e}"),
                };
                eprintln!("soak: the relay sink's consumer is not idle: {state}");
            }
            return web_missing == 0 && relay_idle;
        }
        // Dead letters count as accounted for: when some are missing, look there.
        if relay_idle && web_missing > 0 {
            let dlq = count::dead_letters(js, "web").await.unwrap_or_default();
            if expected
                .keys()
                .all(|id| accepted.contains_key(id) || dlq.contains_key(id))
            {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The interactions' outcome and how many were lost: deferred, answered late by the
/// handler (its reply stored), and never followed up.
fn count_interactions(
    sent: &[interactions::Sent],
    handler: &interactions::Handler,
    discord: &relaycord_sim::Interactions,
) -> (Value, usize) {
    let followed = interactions::followed_up(discord);
    let received = handler.received.lock().unwrap().clone();
    let replied = handler.replied.lock().unwrap().clone();
    let of = |answer: fn(&Answer) -> bool| sent.iter().filter(|s| answer(&s.answer)).count();
    let deferred: Vec<&interactions::Sent> = sent
        .iter()
        .filter(|s| s.answer == Answer::Deferred)
        .collect();
    let lost: Vec<&str> = deferred
        .iter()
        .filter(|s| !followed.contains(&s.id) && replied.contains(&s.id))
        .map(|s| s.id.as_str())
        .collect();
    let never_reached: Vec<&str> = deferred
        .iter()
        .filter(|s| !received.contains(&s.id))
        .map(|s| s.id.as_str())
        .collect();
    let json = json!({
        "sent": sent.len(),
        "in_time": of(|a| *a == Answer::InTime),
        "unavailable": of(|a| *a == Answer::Unavailable),
        "deferred": deferred.len(),
        "followed_up": deferred.iter().filter(|s| followed.contains(&s.id)).count(),
        "not_accepted": of(|a| matches!(a, Answer::NotAccepted(_))),
        "never_reached_handler": never_reached.len(),
        "never_reached_handler_ids": never_reached,
        "lost": lost.len(),
        "lost_ids": lost,
    });
    (json, lost.len())
}

/// Writes the report as JSON to `path`.
pub fn write_json(report: &Report, path: &Path) -> std::io::Result<()> {
    std::fs::write(
        path,
        serde_json::to_string_pretty(&report.json).expect("JSON"),
    )
}
