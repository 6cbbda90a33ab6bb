//! Event identity (docs/bus.md): two different events never share an id. The sequence of
//! issue 17 — a reaction added, removed and added again; a message edited, pinned and
//! unfurled with one `edited_timestamp` — is six events, and six reach the stream.
//! (Replays and handovers storing nothing twice: `durability.rs`.)

use std::time::Duration;

use relaycord_testkit::{Stack, eventually};
use serde_json::value::RawValue;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toggles_and_updates_with_one_edit_time_all_reach_the_stream() {
    let stack = Stack::builder().shards(1).ingest().start().await;
    stack.ready().await;
    let guild = stack.sim.guild_ids()[0];
    let reaction = format!(
        r#"{{"user_id":"53908099506183680","channel_id":"290926798999357250","message_id":"334385199974967042","guild_id":"{guild}","emoji":{{"id":null,"name":"🔥"}}}}"#
    );
    let edited = format!(
        r#""id":"334385199974967042","channel_id":"290926798999357250","guild_id":"{guild}","content":"see https://discord.com","edited_timestamp":"2017-07-11T17:28:07.299000+00:00""#
    );
    let events = [
        ("MESSAGE_REACTION_ADD", reaction.clone()),
        ("MESSAGE_REACTION_REMOVE", reaction.clone()),
        ("MESSAGE_REACTION_ADD", reaction),
        (
            "MESSAGE_UPDATE",
            format!(r#"{{{edited},"pinned":false,"embeds":[]}}"#),
        ),
        (
            "MESSAGE_UPDATE",
            format!(r#"{{{edited},"pinned":true,"embeds":[]}}"#),
        ),
        (
            "MESSAGE_UPDATE",
            format!(
                r#"{{{edited},"pinned":true,"embeds":[{{"type":"link","url":"https://discord.com"}}]}}"#
            ),
        ),
    ];
    for (event_type, d) in &events {
        let d = RawValue::from_string(d.clone()).unwrap();
        stack.sim.dispatch(0, event_type, &d).unwrap();
    }
    // The six dispatches, and the ids they must be stored under: six different ones.
    let six: Vec<String> = stack
        .sim
        .sent()
        .iter()
        .filter(|d| d.event_type.starts_with("MESSAGE_"))
        .map(relaycord_testkit::dedupe_id)
        .collect();
    assert_eq!(six.len(), 6);
    let distinct: std::collections::HashSet<&String> = six.iter().collect();
    assert_eq!(distinct.len(), 6, "{six:?}");
    let expected = stack.expected();
    let stored = async || stack.stream_messages().await >= expected.len() as u64;
    eventually(Duration::from_secs(30), stored).await;
    let ids = stack.gateway_ids().await;
    assert_eq!(stack.stream_messages().await, expected.len() as u64);
    assert!(
        six.iter().all(|id| ids.get(id) == Some(&1)),
        "6 of 6 stored: {ids:?}"
    );
    assert_eq!(ids.len(), expected.len(), "nothing else stored: {ids:?}");
    assert_eq!(stack.metric("relaycord_publish_duplicates_total"), 0.0);
    stack.stop().await;
}
