//! The bus as a public API (docs/bus.md, docs/contract/): the committed AsyncAPI document
//! and envelope schema are what the code generates, the AsyncAPI project's parser accepts
//! the documents, live envelopes of every event type validate against the schema, and the
//! subscriber examples of examples/subscribers/ receive every event.
//!
//! The tools: npm `@asyncapi/parser` in tests/contract/asyncapi, PyPI `jsonschema` and
//! `nats-py`, the TypeScript example's own npm packages (scripts/setup.sh --tests).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use relaycord_sim::{RetryPolicy, SimWebhookEvent};
use relaycord_testkit::{Stack, stored_in};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

const PATIENCE: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn schema_path() -> PathBuf {
    root().join("docs/contract/envelope.schema.json")
}

/// `relaycord asyncapi ARGS` with only `env` as RELAYCORD_* configuration (the test's own
/// environment must not leak into the document); its stdout.
fn asyncapi(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = std::process::Command::new(relaycord_testkit::relaycord_bin());
    command.arg("asyncapi").args(args).current_dir(root());
    for (key, _) in std::env::vars() {
        if key.starts_with("RELAYCORD_") || key == "DISCORD_TOKEN" {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    let output = command.output().expect("relaycord runs");
    assert!(
        output.status.success(),
        "relaycord asyncapi {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// The files under docs/contract/ are what this build generates for the default
/// configuration. `RELAYCORD_BLESS=1` rewrites them (then review and commit the diff).
#[test]
fn committed_contract_matches_the_code() {
    let generated = [
        ("asyncapi.json", asyncapi(&[], &[])),
        (
            "envelope.schema.json",
            asyncapi(&["--envelope-schema"], &[]),
        ),
    ];
    let mut drifted = Vec::new();
    for (name, text) in &generated {
        let path = root().join("docs/contract").join(name);
        if std::env::var_os("RELAYCORD_BLESS").is_some() {
            std::fs::write(&path, text).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if &committed != text {
            drifted.push(format!(
                "docs/contract/{name} differs from what the code generates ({} vs {} bytes)",
                committed.len(),
                text.len()
            ));
        }
    }
    assert!(
        drifted.is_empty(),
        "{}\nThe bus contract changed: if on purpose, regenerate with \
         `RELAYCORD_BLESS=1 cargo test -p relaycord --test it contract::committed`, review the \
         diff against the compatibility promise (docs/bus.md, \"Compatibility\") and commit it.",
        drifted.join("\n")
    );
    // The schema inside the document is the committed schema.
    let doc: serde_json::Value = serde_json::from_str(&generated[0].1).unwrap();
    let mut schema: serde_json::Value = serde_json::from_str(&generated[1].1).unwrap();
    schema.as_object_mut().unwrap().remove("$schema");
    assert_eq!(doc["components"]["schemas"]["Envelope"], schema);
}

/// Runs the AsyncAPI parser over `files`; its JSON line per file, and whether all passed.
fn parse_asyncapi(files: &[&Path]) -> (Vec<serde_json::Value>, bool) {
    let dir = root().join("tests/contract/asyncapi");
    assert!(
        dir.join("node_modules/@asyncapi/parser").is_dir(),
        "@asyncapi/parser is not installed: run scripts/setup.sh --tests \
         (npm ci in tests/contract/asyncapi)"
    );
    let output = std::process::Command::new("node")
        .arg(dir.join("validate.mjs"))
        .args(files)
        .output()
        .expect("node must be installed (scripts/setup.sh --tests)");
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("parser printed {l}")))
        .collect();
    if output.stdout.is_empty() {
        panic!(
            "the parser failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    (lines, output.status.success())
}

/// The AsyncAPI project's parser accepts the document of the default configuration and of
/// a custom one (prefix, sinks, a NATS handler), and refuses a broken one: proof that it
/// really checks.
#[test]
fn the_asyncapi_parser_accepts_the_documents() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relaycord.toml");
    std::fs::write(
        &config,
        r#"
[nats]
url = "nats://user:hunter2@nats-a:4222,nats://nats-b:4222"
subject_prefix = "acme.bot"
duplicate_window = "2m"

[[interactions.routes]]
command = "ping"
handler = { nats = "acme.handlers.ping" }

[[sinks]]
name = "hooks"
type = "http"
url = "https://example.com/discord"
secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
events = ["MESSAGE_CREATE"]

[[sinks]]
name = "relay"
type = "nats"
subject = "relay.{type}.{guild_id}"
"#,
    )
    .unwrap();
    let custom = asyncapi(&[], &[("RELAYCORD_CONFIG", config.to_str().unwrap())]);
    assert!(!custom.contains("hunter2"), "credentials printed");
    let doc: serde_json::Value = serde_json::from_str(&custom).unwrap();
    assert_eq!(
        doc["x-relaycord"]["duplicateWindowSeconds"], 120.0,
        "the configured window"
    );
    assert_eq!(
        doc["channels"]["webhookEvents"]["x-jetstream"]["stream"],
        "ACME_BOT_GATEWAY"
    );
    let custom_file = dir.path().join("custom.json");
    std::fs::write(&custom_file, &custom).unwrap();

    // A document the parser must refuse: a channel address naming a parameter it does not
    // define.
    let mut broken = doc.clone();
    broken["channels"]["gatewayEvents"]["parameters"]
        .as_object_mut()
        .unwrap()
        .remove("guild");
    let broken_file = dir.path().join("broken.json");
    std::fs::write(&broken_file, broken.to_string()).unwrap();

    let committed = root().join("docs/contract/asyncapi.json");
    let (results, _) = parse_asyncapi(&[&committed, &custom_file, &broken_file]);
    for result in &results[..2] {
        assert_eq!(result["errors"], serde_json::json!([]), "{result}");
        assert_eq!(result["version"], "3.0.0");
    }
    let addresses: HashSet<&str> = results[1]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for address in [
        "acme.bot.gateway.{eventType}.{guild}",
        "acme.bot.webhooks.{eventType}.{guild}",
        "acme.bot.interactions.{kind}.{name}",
        "relaycord.dlq.{sink}",
        "acme.handlers.ping",
        "relay.{type}.{guild_id}",
    ] {
        assert!(addresses.contains(address), "{address} in {addresses:?}");
    }
    let refused = results[2]["errors"].as_array().unwrap();
    assert!(
        !refused.is_empty(),
        "the parser accepted a broken document: {}",
        results[2]
    );
    let (_, ok) = parse_asyncapi(&[&committed]);
    assert!(ok, "the parser's exit status");
    let (_, ok) = parse_asyncapi(&[&broken_file]);
    assert!(!ok, "the parser's exit status on a broken document");
}

/// Sends `count` signed webhook events of four types to the stack's endpoint; returns them.
async fn send_webhook_events(stack: &Stack, count: usize) -> Vec<SimWebhookEvent> {
    let events = stack.sim.webhook_events();
    let url = stack.webhook_events_url();
    let mut sent = Vec::new();
    for i in 0..count {
        let user = relaycord_sim::new_user_id();
        let event = match i % 4 {
            0 => events.authorized(&user, Some("290926798626357250")),
            1 => events.deauthorized(&user),
            2 => events.entitlement("CREATE", &user, &user, None),
            _ => events.entitlement("UPDATE", &user, &user, Some("290926798626357250")),
        };
        let delivery = events.deliver(&url, &event, RetryPolicy::default()).await;
        assert!(delivery.acknowledged(), "{delivery:?}");
        sent.push(event);
    }
    sent
}

/// A stack with ingest and the interactions service (for webhook events and interactions).
async fn live_stack() -> Stack {
    Stack::builder()
        .shards(2)
        .ingest()
        .interactions(Vec::new())
        .start()
        .await
}

/// Every id of the events stream: the simulator's dispatches and the webhook events, once
/// all are stored. Asserts that none the simulator or Discord sent is missing.
async fn stored_event_ids(stack: &Stack, webhook_events: usize) -> HashSet<String> {
    stack.assert_nothing_missing().await;
    let gateway = stack.expected();
    let mut ids = HashSet::new();
    let all = relaycord_testkit::eventually(PATIENCE, async || {
        ids = stack.gateway_ids().await.into_keys().collect();
        ids.len() >= gateway.len() + webhook_events
    })
    .await;
    assert!(
        all,
        "{} stored, {} sent",
        ids.len(),
        gateway.len() + webhook_events
    );
    ids
}

/// Every envelope stored during an end-to-end run validates against the committed schema:
/// hundreds of gateway dispatches of every type the simulator emits, webhook events of four
/// types and interactions from the HTTP endpoint, each checked by PyPI's `jsonschema`
/// (the reference implementation, not this code). Two corrupted envelopes are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_envelopes_of_every_type_validate_against_the_schema() {
    let stack = live_stack().await;
    stack.burst(600).finished().await;
    let webhooks = send_webhook_events(&stack, 12).await;
    for i in 0..5 {
        let command = stack.discord.command(&format!("cmd{i}"));
        let (status, _) = stack.send(&stack.discord.signed(&command)).await;
        assert_eq!(status, 200);
    }
    stored_event_ids(&stack, webhooks.len()).await;

    let mut envelopes: Vec<serde_json::Value> = stored_in(&stack.js, "DISCORD_GATEWAY")
        .await
        .into_iter()
        .chain(stored_in(&stack.js, "DISCORD_INTERACTIONS").await)
        .map(|s| s.envelope)
        .collect();
    let stored = envelopes.len();
    assert!(stored >= 600 + 12 + 5, "{stored} envelopes");
    // Two that must be refused: a gateway event without its seq, a bad event type.
    let mut bad = envelopes[0].clone();
    bad["id"] = "bad:1".into();
    bad["seq"] = serde_json::Value::Null;
    envelopes.push(bad);
    let mut bad = envelopes[1].clone();
    bad["id"] = "bad:2".into();
    bad["type"] = "message.create".into();
    envelopes.push(bad);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envelopes.jsonl");
    let text: Vec<String> = envelopes.iter().map(|e| e.to_string()).collect();
    std::fs::write(&file, text.join("\n")).unwrap();
    let output = std::process::Command::new("python3")
        .arg(root().join("tests/py/validate_envelopes.py"))
        .arg(schema_path())
        .arg(&file)
        .output()
        .expect("python3 runs");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "validator: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let invalid: BTreeMap<String, String> =
        serde_json::from_value(report["invalid"].clone()).unwrap();
    let refused: Vec<&String> = invalid.keys().collect();
    assert_eq!(
        refused,
        ["bad:1", "bad:2"],
        "only the corrupted envelopes may be refused; {} were, e.g. {:#?}",
        invalid.len(),
        invalid.iter().take(3).collect::<Vec<_>>()
    );
    let by_type: BTreeMap<String, u64> = serde_json::from_value(report["valid"].clone()).unwrap();
    let mut types: Vec<&str> = relaycord_testkit::GENERATED_TYPES.to_vec();
    types.extend([
        "GUILD_CREATE",
        "gateway",
        "webhook",
        "interaction",
        "APPLICATION_AUTHORIZED",
        "APPLICATION_DEAUTHORIZED",
        "ENTITLEMENT_CREATE",
        "ENTITLEMENT_UPDATE",
        "INTERACTION_CREATE",
    ]);
    for ty in types {
        assert!(
            by_type.get(ty).is_some_and(|n| *n > 0),
            "no valid {ty}: {by_type:?}"
        );
    }
    assert_eq!(by_type["total"], stored as u64);
    stack.stop().await;
}

/// How a subscriber example runs: its output lines arrive on a channel.
struct Subscriber {
    lines: mpsc::UnboundedReceiver<String>,
    _child: Option<tokio::process::Child>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Starts a subscriber process; its stdout lines go to the channel, stderr to the test's.
fn spawn_process(program: &str, args: &[String], dir: &Path) -> Subscriber {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{program} cannot start ({e}): run scripts/setup.sh --tests"));
    let (tx, rx) = mpsc::unbounded_channel();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let task = tokio::spawn(async move {
        while let Ok(Some(line)) = stdout.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Subscriber {
        lines: rx,
        _child: Some(child),
        task: Some(task),
    }
}

/// The arguments every example takes.
fn subscriber_args(stack: &Stack, durable: &str) -> Vec<String> {
    [
        "--url",
        &stack.nats_url(),
        "--stream",
        "DISCORD_GATEWAY",
        "--durable",
        durable,
        // One filter for both sources of the events stream, on nats-server 2.9 too (which
        // takes one filter, inside the stream's subjects or covering them all).
        "--filter",
        "discord.>",
        "--schema",
        schema_path().to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Stores a second copy of the stored event `id` under the same `Nats-Msg-Id`, as a publish
/// later than the duplicate window would (the window is shortened for it).
async fn store_again(stack: &Stack, id: &str) {
    let mut stream = stack.js.get_stream("DISCORD_GATEWAY").await.unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    config.duplicate_window = Duration::from_millis(200);
    stack.js.update_stream(config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let original = stored_in(&stack.js, "DISCORD_GATEWAY")
        .await
        .into_iter()
        .find(|s| s.msg_id == id)
        .expect("the event is stored");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    headers.insert(
        "Relaycord-Type",
        original.envelope["type"].as_str().unwrap(),
    );
    // The server forgets ids on a timer: until it has run, the copy is still a duplicate.
    let stored = relaycord_testkit::eventually(PATIENCE, async || {
        let ack = stack
            .js
            .publish_with_headers(
                original.subject.clone(),
                headers.clone(),
                original.envelope.to_string().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        if ack.duplicate {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        !ack.duplicate
    })
    .await;
    assert!(stored, "the copy was never stored");
}

/// The whole check of one example: it receives every event the simulator and the webhook
/// events sent (on the events stream, through its durable consumer), finds every envelope
/// valid, reports the copy stored again as a duplicate, and acks everything.
async fn subscriber_receives_every_event(
    start: impl FnOnce(&Stack, Vec<String>) -> Subscriber,
    durable: &str,
) {
    let stack = live_stack().await;
    let mut subscriber = start(&stack, subscriber_args(&stack, durable));
    let first = tokio::time::timeout(PATIENCE, subscriber.lines.recv()).await;
    assert!(
        matches!(&first, Ok(Some(line)) if line.contains("\"ready\"")),
        "the subscriber did not start: {first:?}"
    );

    stack.burst(300).finished().await;
    let webhooks = send_webhook_events(&stack, 8).await;
    let expected = stored_event_ids(&stack, webhooks.len()).await;
    let again = stack
        .expected()
        .into_iter()
        .find(|id| id.starts_with("msg:"))
        .unwrap();
    store_again(&stack, &again).await;

    let mut seen = HashSet::new();
    let mut duplicates = Vec::new();
    let mut invalid = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !expected.is_subset(&seen) || duplicates.is_empty() {
        let Ok(Some(line)) = tokio::time::timeout_at(deadline, subscriber.lines.recv()).await
        else {
            break;
        };
        let report: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("subscriber printed {line}"));
        if report.get("invalid").is_some() {
            invalid.push(report);
            break;
        }
        let id = report["id"].as_str().unwrap().to_owned();
        assert_eq!(
            report["msg_id"], report["id"],
            "Nats-Msg-Id is the id: {report}"
        );
        let subject = report["subject"].as_str().unwrap();
        let ty = report["type"].as_str().unwrap();
        let kind = if report["source"] == "webhook" {
            "webhooks"
        } else {
            "gateway"
        };
        assert!(
            subject.starts_with(&format!("discord.{kind}.{ty}.")),
            "{report}"
        );
        if report["duplicate"] == true {
            duplicates.push(id);
        } else {
            assert!(seen.insert(id), "reported new twice: {report}");
        }
    }
    assert!(
        invalid.is_empty(),
        "the subscriber refused an envelope: {invalid:?}"
    );
    let missing: Vec<&String> = expected.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "{} of {} events never reached the subscriber, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(
        duplicates,
        [again],
        "the copy stored again is the one duplicate"
    );
    let webhook_seen = seen.iter().filter(|id| id.starts_with("wh:")).count();
    assert_eq!(webhook_seen, webhooks.len());

    // Everything acknowledged: nothing pending, nothing waiting for an ack.
    let stream = stack.js.get_stream("DISCORD_GATEWAY").await.unwrap();
    let settled = relaycord_testkit::eventually(Duration::from_secs(10), async || {
        let info = stream.consumer_info(durable).await.unwrap();
        info.num_pending == 0 && info.num_ack_pending == 0
    })
    .await;
    assert!(settled, "the subscriber left messages unacknowledged");
    drop(subscriber);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_subscriber_receives_every_event() {
    subscriber_receives_every_event(
        |_, args| {
            let dir = root().join("examples/subscribers/python");
            let mut all = vec!["subscriber.py".to_owned()];
            all.extend(args);
            spawn_process("python3", &all, &dir)
        },
        "contract-python",
    )
    .await;
}

/// The TypeScript example, type-checked and compiled by its pinned `tsc` first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_subscriber_receives_every_event() {
    let dir = root().join("examples/subscribers/typescript");
    assert!(
        dir.join("node_modules/@nats-io/jetstream").is_dir(),
        "the TypeScript example's packages are missing: run scripts/setup.sh --tests \
         (npm ci in examples/subscribers/typescript)"
    );
    let tsc = std::process::Command::new(dir.join("node_modules/.bin/tsc"))
        .args(["-p", "."])
        .current_dir(&dir)
        .output()
        .expect("tsc runs");
    assert!(
        tsc.status.success(),
        "tsc: {}{}",
        String::from_utf8_lossy(&tsc.stdout),
        String::from_utf8_lossy(&tsc.stderr)
    );
    subscriber_receives_every_event(
        |_, args| {
            let mut all = vec!["dist/subscriber.js".to_owned()];
            all.extend(args);
            spawn_process("node", &all, &dir)
        },
        "contract-typescript",
    )
    .await;
}

/// The Rust example, its library's `run` in process (its `main` only prints the lines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_subscriber_receives_every_event() {
    subscriber_receives_every_event(
        |_, args| {
            use clap::Parser;
            let mut argv = vec!["subscriber".to_owned()];
            argv.extend(args);
            let options = relaycord_example_subscriber::Options::parse_from(argv);
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                let result = relaycord_example_subscriber::run(&options, |line| {
                    let _ = tx.send(line.to_string());
                })
                .await;
                if let Err(error) = result {
                    eprintln!("the Rust subscriber stopped: {error:#}");
                }
            });
            Subscriber {
                lines: rx,
                _child: None,
                task: Some(task),
            }
        },
        "contract-rust",
    )
    .await;
}
