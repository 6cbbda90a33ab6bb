//! `relaycord dev`, the newcomer's first command, run as the real binary: the counted
//! demo proves every simulated event arrived, and Ctrl-C stops everything it started.

use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn dev() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relaycord"));
    cmd.arg("dev")
        .env_remove("DISCORD_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// `relaycord dev --events N` prints the summary line the README promises and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_events_prints_the_summary_and_exits_zero() {
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        dev().args(["--events", "500", "--quiet"]).output(),
    )
    .await
    .expect("relaycord dev --events 500 finished within 5 minutes")
    .expect("run relaycord dev");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {}: {stdout}\n{stderr}",
        out.status
    );
    let summary = stdout.lines().last().unwrap_or_default();
    // Webhook events: the simulator plays Discord at the interactions role's Events URL.
    assert!(
        stdout.lines().any(|l| l == "delivered 8/8 webhook events"),
        "no webhook events summary in {stdout}\n{stderr}"
    );
    let rest = summary
        .strip_prefix("delivered 500/500 events, 0 missing, ")
        .unwrap_or_else(|| panic!("unexpected summary {summary:?}\n{stderr}"));
    let duplicates: u64 = rest
        .strip_suffix(" duplicates")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected summary {summary:?}"));
    // At-least-once allows duplicates, but an undisturbed run on loopback has no reason
    // for more than a handful.
    assert!(duplicates < 50, "{summary}");
}

/// Runs `relaycord dev --rate 50` in its own process group, waits until `moment` says
/// so (it sees each stderr line, or `None` once the first event printed on stdout), then
/// sends SIGINT to the whole group as a terminal's Ctrl-C does. Returns the exit status
/// and the address of the nats-server child the demo started.
async fn ctrl_c_when(moment: impl Fn(Option<&str>) -> bool) -> (std::process::ExitStatus, String) {
    let mut child = dev()
        .args(["--rate", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run relaycord dev");
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut nats_addr = None;
    let mut interrupt_now = false;
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("nats-server started on nats://") {
                nats_addr = Some(rest.split_whitespace().next().unwrap().to_owned());
            }
            if nats_addr.is_some() && moment(Some(&line)) {
                interrupt_now = true;
                return;
            }
            if line.starts_with("generating events") {
                return;
            }
        }
        panic!("relaycord dev exited before generating events");
    })
    .await
    .expect("relaycord dev started within 60 s");
    let nats_addr = nats_addr.expect("nats-server started before the generator");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    if !interrupt_now {
        assert!(moment(None), "the moment to interrupt never came");
        let first = tokio::time::timeout(Duration::from_secs(120), stdout.next_line())
            .await
            .expect("an event printed within 2 minutes")
            .unwrap()
            .expect("stdout open");
        assert!(!first.is_empty());
    }
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });

    let pgid = child.id().unwrap();
    let kill = std::process::Command::new("kill")
        .args(["-INT", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("relaycord dev stopped within 60 s of Ctrl-C")
        .unwrap();
    (status, nats_addr)
}

fn assert_clean_stop(status: std::process::ExitStatus, nats_addr: &str) {
    assert!(status.success(), "exit status after Ctrl-C: {status}");
    assert!(
        TcpStream::connect(nats_addr).is_err(),
        "the demo's nats-server on {nats_addr} outlived it"
    );
}

/// Ctrl-C (SIGINT to the whole foreground process group, as a terminal sends it) stops
/// the demo with status 0, and the nats-server child it started is gone with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_the_demo_and_its_nats_server() {
    let (status, nats_addr) = ctrl_c_when(|line| line.is_none()).await;
    assert_clean_stop(status, &nats_addr);
}

/// Ctrl-C while the demo is still starting (the receiver is up, ingest is claiming and
/// connecting its shards) is just as clean: exit 0, nothing left running. It used to
/// report "ingest stopped unexpectedly" and exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_startup_is_a_clean_stop() {
    let (status, nats_addr) =
        ctrl_c_when(|line| line.is_some_and(|l| l.starts_with("receiver listening on"))).await;
    assert_clean_stop(status, &nats_addr);
}

/// Ctrl-C right after the nats-server child started, before anything else exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_right_after_nats_started_is_a_clean_stop() {
    let (status, nats_addr) = ctrl_c_when(|line| line.is_some()).await;
    assert_clean_stop(status, &nats_addr);
}

/// `relaycord sim --rate --events`: the standalone simulator generates events on its own
/// once a client holds every shard; an unmodified twilight shard receives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_simulator_generates_events_for_an_unmodified_client() {
    use twilight_gateway::{ConfigBuilder, EventTypeFlags, Intents, Shard, ShardId, StreamExt};

    relaycord_bus::install_crypto_provider();
    // Port 0: the simulator binds its own and names it on its first line.
    let mut sim = Command::new(env!("CARGO_BIN_EXE_relaycord"))
        .args(["sim", "--listen", "127.0.0.1:0", "--shards", "1"])
        .args(["--rate", "500", "--events", "30"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run relaycord sim");
    let mut stderr = BufReader::new(sim.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            // simulator: api_base = http://ADDR/api, gateway = ws://ADDR
            if let Some(rest) = line.strip_prefix("simulator: api_base = http://") {
                return rest.split('/').next().unwrap().to_owned();
            }
        }
        panic!("relaycord sim exited before listening");
    })
    .await
    .expect("the simulator listens");

    let config = ConfigBuilder::new("sim-token".into(), Intents::GUILD_MESSAGES)
        .proxy_url(format!("ws://{addr}"))
        .build();
    let mut shard = Shard::with_config(ShardId::ONE, config);
    let mut generated = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while generated < 30 {
            let message = shard.next_event(EventTypeFlags::all()).await;
            let event = message
                .expect("the shard stays open")
                .expect("a valid event");
            let kind = event.kind().name().unwrap_or_default();
            if relaycord_testkit::GENERATED_TYPES.contains(&kind) {
                generated += 1;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {generated} of 30 generated events arrived"));
    sim.start_kill().unwrap();
}
