//! `relaycord tail`: live events from the bus, as JSON lines or pretty lines.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use relaycord_testkit::{Stack, write_config};

async fn tail(bus: &Stack, config: &std::path::Path, extra: &[&str], want: usize) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_relaycord"))
        .arg("--config")
        .arg(config)
        .arg("tail")
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), err.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_default();
    assert!(ready.starts_with("following"), "{ready}");
    for (id, ty, data) in [
        (
            "msg:7",
            "MESSAGE_CREATE",
            r#"{"id":"7","channel_id":"10","content":"hello tail"}"#,
        ),
        ("h:TYPING_START:1", "TYPING_START", r#"{"channel_id":"10"}"#),
        (
            "msg:8",
            "MESSAGE_CREATE",
            r#"{"id":"8","channel_id":"10","content":"bye"}"#,
        ),
        (
            "ix:9",
            "INTERACTION_CREATE",
            r#"{"id":"9","type":2,"token":"A_UNIQUE_TOKEN","data":{"name":"ping"}}"#,
        ),
    ] {
        bus.publish(id, ty, "1", data).await;
    }
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    while lines.len() < want {
        let line = tokio::time::timeout(Duration::from_secs(30), out.next_line())
            .await
            .expect("a line per event")
            .unwrap()
            .unwrap();
        lines.push(line);
    }
    child.start_kill().unwrap();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_live_events_as_json_or_pretty_lines() {
    let bus = Stack::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "c.toml", &bus, "");

    let json = tail(&bus, &config, &["--json"], 3).await;
    let first: serde_json::Value = serde_json::from_str(&json[0]).unwrap();
    assert_eq!(first["id"], "msg:7");
    assert_eq!(first["data"]["content"], "hello tail");

    let pretty = tail(&bus, &config, &["discord.gateway.MESSAGE_CREATE.*"], 2).await;
    assert!(
        pretty[0].contains("MESSAGE_CREATE") && pretty[0].contains("id=msg:7 hello tail"),
        "{pretty:?}"
    );
    // The subject filter: the second line is the next MESSAGE_CREATE, never the typing event.
    assert!(
        pretty.iter().all(|l| !l.contains("TYPING_START")),
        "{pretty:?}"
    );
}

/// Interaction tokens (valid for 15 minutes) print as `<redacted>` unless asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_hides_interaction_tokens_unless_asked() {
    let bus = Stack::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "c.toml", &bus, "");

    let hidden = tail(&bus, &config, &["--json"], 4).await;
    assert!(!hidden[3].contains("A_UNIQUE_TOKEN"), "{hidden:?}");
    let interaction: serde_json::Value = serde_json::from_str(&hidden[3]).unwrap();
    assert_eq!(interaction["data"]["token"], "<redacted>");
    let shown = tail(&bus, &config, &["--json", "--show-tokens"], 4).await;
    assert!(shown[3].contains("A_UNIQUE_TOKEN"), "{shown:?}");
}
