//! One run of every role as a real process, with a distinctive value in every secret the
//! config can hold, under the conditions that print the most: simulated traffic, a
//! receiver that fails a share of deliveries (retries and dead letters), an HTTP
//! interaction handler that cannot be reached, a Discord sink posting through a webhook,
//! a NATS outage, debug logging, the CLI, and configs that fail to load. Every log line,
//! CLI output, dead-letter header and `/metrics` page is searched: no secret appears.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, Uri};
use futures::StreamExt;
use relaycord_sim::{GenerateSpec, SimConfig};
use relaycord_testkit::{NatsServer, eventually, relaycord_bin, relaycord_with_env, start_sim};
use tokio::process::{Child, Command};

const NATS_PASSWORD: &str = "natspw-Q7x2-leakcheck";
const BOT_TOKEN: &str = "bottoken-M4k9-leakcheck";
const URL_PATH_SECRET: &str = "pathsecret-Z81p-leakcheck";
const URL_QUERY_SECRET: &str = "querysecret-H3v6-leakcheck";
const HEADER_SECRET: &str = "headersecret-W5n1-leakcheck";
/// `whsec_` + base64("leakcheck-signing-key-7731").
const SIGNING_SECRET: &str = "whsec_bGVha2NoZWNrLXNpZ25pbmcta2V5LTc3MzE=";
const WEBHOOK_TOKEN: &str = "webhooktoken-R2d8-leakcheck";
const HANDLER_SECRET: &str = "handlersecret-J6c3-leakcheck";
/// A sink header given through the environment (`RELAYCORD_SINKS__0__HEADERS__…`).
const ENV_HEADER_SECRET: &str = "envheader-T9q4-leakcheck";

/// What must never be printed. The signing secret is also searched without its prefix.
const SECRETS: [&str; 10] = [
    NATS_PASSWORD,
    BOT_TOKEN,
    URL_PATH_SECRET,
    URL_QUERY_SECRET,
    HEADER_SECRET,
    SIGNING_SECRET,
    "bGVha2NoZWNrLXNpZ25pbmcta2V5LTc3MzE",
    WEBHOOK_TOKEN,
    HANDLER_SECRET,
    ENV_HEADER_SECRET,
];

const WAIT: Duration = Duration::from_secs(60);

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A receiver on any path that answers 400 to every third request, 500 to the next,
/// 200 to the rest, and remembers the URLs and header values it was sent (proof the
/// secrets were in use).
#[derive(Default)]
struct Receiver {
    requests: AtomicU64,
    seen: std::sync::Mutex<Vec<String>>,
}

async fn start_receiver() -> (Arc<Receiver>, String) {
    let state = Arc::new(Receiver::default());
    let shared = Arc::clone(&state);
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
        let state = Arc::clone(&shared);
        async move {
            let values: Vec<&str> = headers.values().filter_map(|v| v.to_str().ok()).collect();
            state.seen.lock().unwrap().push(format!("{uri} {values:?}"));
            match state.requests.fetch_add(1, Ordering::SeqCst) % 3 {
                0 => StatusCode::BAD_REQUEST,
                1 => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::OK,
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (state, format!("http://{addr}"))
}

struct Ports {
    ingest_metrics: String,
    interactions: String,
    interactions_metrics: String,
}

fn config_toml(nats: &str, api: &str, public_key: &str, receiver: &str, p: &Ports) -> String {
    format!(
        r#"
[nats]
url = "{nats}"
user = "relay"

[discord]
api_base = "{api}"
public_key = "{public_key}"

[ingest]
metrics_listen = "{ingest_metrics}"
lease_ttl = "3s"

[interactions]
listen = "{interactions}"
metrics_listen = "{interactions_metrics}"
deadline = "300ms"

[[interactions.routes]]
command = "hook"
handler = {{ http = "http://127.0.0.1:1/handler/{HANDLER_SECRET}?key={HANDLER_SECRET}" }}

[[sinks]]
name = "web"
type = "http"
url = "{receiver}/hook/{URL_PATH_SECRET}?token={URL_QUERY_SECRET}"
secret = "{SIGNING_SECRET}"
headers = {{ authorization = "Bearer {HEADER_SECRET}" }}
max_attempts = 2
backoff = {{ initial = "20ms", max = "100ms" }}

[[sinks]]
name = "relay"
type = "discord"
webhook_url = "{api}/webhooks/4242/{WEBHOOK_TOKEN}"
events = ["MESSAGE_CREATE"]
max_attempts = 2
backoff = {{ initial = "20ms", max = "100ms" }}
"#,
        ingest_metrics = p.ingest_metrics,
        interactions = p.interactions,
        interactions_metrics = p.interactions_metrics,
    )
}

/// `relaycord --config CONFIG ARGS` with the secrets in the environment and debug logs
/// from every Relaycord crate; stdout and stderr go to `<dir>/<name>.log`.
fn spawn(config: &Path, dir: &Path, name: &str, args: &[&str]) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    Command::new(relaycord_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(secret_env())
        .env(
            "RUST_LOG",
            "info,relaycord=debug,relaycord_ingest=debug,relaycord_sinks=debug,\
             relaycord_interactions=debug,relaycord_bus=debug",
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn relaycord")
}

fn secret_env() -> [(&'static str, &'static str); 3] {
    [
        ("RELAYCORD_NATS__PASSWORD", NATS_PASSWORD),
        ("DISCORD_TOKEN", BOT_TOKEN),
        ("RELAYCORD_SINKS__0__HEADERS__X-API-KEY", ENV_HEADER_SECRET),
    ]
}

/// Runs a CLI command to completion; returns (success, stdout + stderr).
async fn cli(config: &Path, args: &[&str]) -> (bool, String) {
    let config = config.to_str().expect("a UTF-8 temp path");
    let args: Vec<&str> = ["--config", config].iter().chain(args).copied().collect();
    let (ok, out, err) = relaycord_with_env(&args, &secret_env()).await;
    (ok, out + &err)
}

/// The end of a child's log, for failure messages.
fn log_of(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let start = text.len().saturating_sub(4000);
    text[text.floor_char_boundary(start)..].to_owned()
}

async fn get(url: &str) -> Option<String> {
    let response = reqwest::get(url).await.ok()?;
    response.text().await.ok()
}

fn metric_sum(page: &str, name: &str, label: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Asserts no secret occurs in `text`, naming where it was found.
fn assert_clean(place: &str, text: &str, leaks: &mut BTreeMap<String, Vec<&'static str>>) {
    for secret in SECRETS {
        if text.contains(secret) {
            leaks.entry(place.to_owned()).or_default().push(secret);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_of_every_role_prints_no_secret_anywhere() {
    let mut nats = NatsServer::start_with(&["--user", "relay", "--pass", NATS_PASSWORD]).unwrap();
    let sim = start_sim(SimConfig {
        token: BOT_TOKEN.to_owned(),
        ..SimConfig::default()
    })
    .await;
    let (receiver, receiver_url) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports {
        ingest_metrics: free_addr(),
        interactions: free_addr(),
        interactions_metrics: free_addr(),
    };
    let (web_metrics, relay_metrics) = (free_addr(), free_addr());
    let public_key = sim.interactions().public_key_hex();
    let config = dir.path().join("relaycord.toml");
    std::fs::write(
        &config,
        config_toml(
            &nats.url(),
            &sim.api_base(),
            &public_key,
            &receiver_url,
            &ports,
        ),
    )
    .unwrap();

    let mut children = vec![
        spawn(&config, dir.path(), "ingest", &["ingest"]),
        spawn(&config, dir.path(), "interactions", &["interactions"]),
        spawn(
            &config,
            dir.path(),
            "sink-web",
            &["sink", "--name", "web", "--metrics-listen", &web_metrics],
        ),
        spawn(
            &config,
            dir.path(),
            "sink-relay",
            &[
                "sink",
                "--name",
                "relay",
                "--metrics-listen",
                &relay_metrics,
            ],
        ),
    ];
    // Every role that the test talks to directly must be ready first: on a
    // loaded machine interactions can bind its port well after ingest is ready.
    for (role, metrics) in [
        ("ingest", &ports.ingest_metrics),
        ("interactions", &ports.interactions_metrics),
    ] {
        let ready = format!("http://{metrics}/readyz");
        assert!(
            eventually(WAIT, async || reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success()))
            .await,
            "{role} never became ready; logs in {}",
            dir.path().display()
        );
    }

    sim.generate(GenerateSpec {
        count: Some(150),
        rate_per_sec: 0.0,
        ..GenerateSpec::default()
    });
    let interactions = sim.interactions();
    let endpoint = format!("http://{}/interactions", ports.interactions);
    let http = reqwest::Client::new();
    for request in [
        interactions.signed(&interactions.command("hook")),
        interactions.signed(&interactions.ping()),
    ] {
        let mut post = http.post(&endpoint).body(request.body.clone());
        for (name, value) in request.headers() {
            post = post.header(name, value);
        }
        let status = post.send().await.expect("interactions endpoint").status();
        assert!(status.is_success(), "{status}");
    }

    // Deliveries succeed, fail and dead-letter in both sinks.
    let web_page = format!("http://{web_metrics}/metrics");
    let relay_page = format!("http://{relay_metrics}/metrics");
    let outcomes = async |page: &str, outcome: &str| {
        get(page).await.map_or(0.0, |p| {
            metric_sum(
                &p,
                "relaycord_sink_deliveries_total",
                &format!("outcome=\"{outcome}\""),
            )
        })
    };
    assert!(
        eventually(WAIT, async || outcomes(&web_page, "delivered").await > 0.0
            && outcomes(&web_page, "dead_lettered").await > 0.0)
        .await,
        "the web sink delivered and dead-lettered: {:?}\n{}",
        get(&web_page).await,
        log_of(dir.path(), "sink-web")
    );
    assert!(
        eventually(WAIT, async || outcomes(&relay_page, "delivered").await
            > 0.0)
        .await,
        "the relay sink posted through its webhook: {:?}\n{}",
        get(&relay_page).await,
        log_of(dir.path(), "sink-relay")
    );

    // A NATS outage: every role logs its reconnects.
    nats.stop();
    assert!(
        eventually(WAIT, async || [
            "ingest",
            "interactions",
            "sink-web",
            "sink-relay"
        ]
        .iter()
        .all(|name| log_of(dir.path(), name).contains("NATS connection lost")))
        .await,
        "every role saw the outage"
    );
    nats.restart().unwrap();
    let before = outcomes(&web_page, "delivered").await;
    sim.generate(GenerateSpec {
        count: Some(30),
        rate_per_sec: 0.0,
        ..GenerateSpec::default()
    });
    assert!(
        eventually(WAIT, async || outcomes(&web_page, "delivered").await
            > before)
        .await,
        "deliveries resumed after the outage"
    );

    let mut leaks = BTreeMap::new();
    let mut scanned = 0;

    // The CLI over the dead letters, and configs that cannot load.
    let (ok, list) = cli(&config, &["dlq", "list", "--sink", "web"]).await;
    assert!(ok && list.lines().count() > 1, "{list}");
    assert_clean("dlq list", &list, &mut leaks);
    let (ok, json) = cli(&config, &["dlq", "list", "--sink", "web", "--json"]).await;
    assert!(ok && !json.is_empty(), "{json}");
    assert_clean("dlq list --json", &json, &mut leaks);
    let first_seq = list
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("a dead letter's sequence")
        .to_owned();
    let (ok, show) = cli(&config, &["dlq", "show", &first_seq]).await;
    assert!(ok, "{show}");
    assert_clean("dlq show", &show, &mut leaks);
    let (ok, check) = cli(&config, &["config", "check"]).await;
    assert!(ok, "{check}");
    assert_clean("config check", &check, &mut leaks);
    scanned += 4;

    let good = std::fs::read_to_string(&config).unwrap();
    for (what, from, to) in [
        (
            "unparsable sink url",
            format!("url = \"{receiver_url}/hook"),
            format!("url = \"htp:/ /bad {URL_QUERY_SECRET} {receiver_url}/hook"),
        ),
        (
            "bad signing secret",
            format!("secret = \"{SIGNING_SECRET}\""),
            format!("secret = \"whsec_!!{HEADER_SECRET}\""),
        ),
        (
            "bad webhook url",
            "webhook_url = \"".to_owned(),
            format!("webhook_url = \"ftp://x/{WEBHOOK_TOKEN}/"),
        ),
    ] {
        let bad = dir.path().join("bad.toml");
        assert!(good.contains(&from), "{what}: {from}");
        std::fs::write(&bad, good.replacen(&from, &to, 1)).unwrap();
        let (ok, out) = cli(&bad, &["config", "check"]).await;
        assert!(!ok, "{what} must be refused: {out}");
        assert_clean(&format!("config check ({what})"), &out, &mut leaks);
        scanned += 1;
    }

    // Dead letters as stored, headers included.
    let client =
        async_nats::ConnectOptions::with_user_and_password("relay".into(), NATS_PASSWORD.into())
            .connect(nats.url())
            .await
            .unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("RELAYCORD_DLQ").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut letters = consumer
        .fetch()
        .max_messages(1000)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    while let Some(Ok(letter)) = letters.next().await {
        let headers = format!("{:?}", letter.headers);
        assert_clean("dead-letter headers", &headers, &mut leaks);
        scanned += 1;
    }

    for page in [
        format!("http://{}/metrics", ports.ingest_metrics),
        format!("http://{}/metrics", ports.interactions_metrics),
        web_page.clone(),
        relay_page.clone(),
    ] {
        let text = get(&page).await.expect("metrics page");
        assert_clean(&page, &text, &mut leaks);
        scanned += 1;
    }

    for child in &mut children {
        let pid = child.id().expect("still running").to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
    }
    for child in &mut children {
        tokio::time::timeout(WAIT, child.wait())
            .await
            .expect("a clean stop")
            .unwrap();
    }
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    assert_eq!(logs.len(), 4);
    let mut log_text = String::new();
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap();
        assert_clean(&log.display().to_string(), &text, &mut leaks);
        log_text.push_str(&text);
        scanned += 1;
    }

    assert!(leaks.is_empty(), "secrets printed: {leaks:#?}");
    // The run did exercise the paths that print: failed deliveries, the unreachable
    // handler, the outage; and the secrets were really in use.
    for expected in [
        "delivery failed; retrying",
        "dead-lettered",
        "HTTP handler failed",
        "sink started sink=relay",
    ] {
        // Also proves the lines are plain: colour codes would split `sink=relay`.
        assert!(log_text.contains(expected), "no log line says {expected:?}");
    }
    let seen = receiver.seen.lock().unwrap().join("\n");
    for used in [
        URL_PATH_SECRET,
        URL_QUERY_SECRET,
        HEADER_SECRET,
        ENV_HEADER_SECRET,
    ] {
        assert!(seen.contains(used), "the receiver never saw {used}");
    }
    assert!(scanned >= 14, "{scanned}");
}
