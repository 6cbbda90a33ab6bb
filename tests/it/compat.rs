//! Clients that are not Relaycord see the bus contract: nats-py subscribers.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use relaycord_sim::GenerateSpec;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use relaycord_testkit::Stack;

/// A nats-py subscriber on `discord.gateway.>` receives every event's envelope with
/// `Nats-Msg-Id` equal to the envelope's `id`, on the subject the contract names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_subscriber_sees_envelopes_with_msg_id() {
    let stack = Stack::builder().shards(2).ingest().start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/py/subscribe.py");
    let already = stack.expected().len();
    let mut child = Command::new("python3")
        .args([
            script,
            "--url",
            &stack.nats_url(),
            "--count",
            "300",
            "--types",
        ])
        // Only generated events count: a late GUILD_CREATE must not end the run early.
        .arg(relaycord_testkit::GENERATED_TYPES.join(","))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 must be installed");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    if !matches!(&first, Ok(Ok(Some(l))) if l == "ready") {
        let mut err = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut err)
            .await
            .unwrap();
        panic!(
            "nats-py subscriber did not start ({first:?}): {err}\nInstall it with: pip install nats-py (scripts/test does)"
        );
    }

    stack
        .sim
        .generate(GenerateSpec {
            count: Some(300),
            rate_per_sec: 0.0,
            ..GenerateSpec::default()
        })
        .finished()
        .await;
    let mut seen: HashMap<String, serde_json::Value> = HashMap::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await
    {
        let msg: serde_json::Value = serde_json::from_str(&line).unwrap();
        seen.insert(msg["id"].as_str().unwrap().to_owned(), msg);
    }
    let _ = child.wait().await;

    let all = stack.expected();
    let generated = relaycord_testkit::expected_ids(
        &stack.sim.sent(),
        Some(&relaycord_testkit::GENERATED_TYPES),
    );
    assert_eq!(generated.len(), 300);
    assert!(all.len() >= already + 300);
    for id in &generated {
        let msg = seen
            .get(id)
            .unwrap_or_else(|| panic!("nats-py never saw {id}"));
        assert_eq!(
            msg["msg_id"], msg["id"],
            "Nats-Msg-Id must equal the envelope id"
        );
        assert_eq!(msg["data_is_object"], true);
        let subject = msg["subject"].as_str().unwrap();
        let ty = msg["type"].as_str().unwrap();
        assert!(
            subject.starts_with(&format!("discord.gateway.{ty}.")),
            "{subject} for {ty}"
        );
    }
    stack.stop().await;
}
