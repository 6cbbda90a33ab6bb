//! Events put on the bus directly (no ingest) and read back from it.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use relaycord_bus::{Envelope, OutgoingMessage, Subjects};
use relaycord_sinks::Driver;
use serde_json::value::RawValue;

use crate::{RecordingSink, Stack};

impl Stack {
    /// Publishes one gateway event as ingest would; returns its id.
    pub async fn publish(&self, id: &str, event_type: &str, guild: &str, data: &str) -> String {
        let data = RawValue::from_string(data.to_owned()).unwrap();
        let envelope = Envelope::gateway(id, event_type, 0, 1, Some(guild), &data);
        let subject = Subjects::default().gateway(event_type, Some(guild));
        OutgoingMessage::event(subject, &envelope)
            .publish(&self.js)
            .await
            .unwrap();
        id.to_owned()
    }

    /// `n` MESSAGE_CREATEs `msg:<base+i>` in guild 1 / channel 10; returns their ids.
    pub async fn messages(&self, base: u64, n: u64) -> Vec<String> {
        let mut ids = Vec::new();
        for i in base..base + n {
            let data = format!(
                r#"{{"id":"{i}","channel_id":"10","guild_id":"1","content":"event {i}","author":{{"id":"2","username":"u"}}}}"#
            );
            ids.push(
                self.publish(&format!("msg:{i}"), "MESSAGE_CREATE", "1", &data)
                    .await,
            );
        }
        ids
    }

    /// Waits until the sink's consumer has handed out and seen acked every message. An
    /// ordered sink (see docs/sinks.md) has one consumer per partition instead, each
    /// reading every message: all of them (the default number) must be settled.
    pub async fn wait_settled(&self, sink: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let stream = self.js.get_stream("DISCORD_GATEWAY").await.unwrap();
        let name = Driver::<RecordingSink>::consumer_name(sink);
        let partitions = format!("{name}-p");
        loop {
            // The consumer may not exist yet: the sink creates it when it starts.
            let state = match stream.consumer_info(&name).await {
                Ok(info) => Ok((info.num_pending, info.num_ack_pending)),
                Err(error) => {
                    let mut found = Vec::new();
                    let mut names = stream.consumer_names();
                    while let Some(Ok(consumer)) = names.next().await {
                        if consumer.starts_with(&partitions) {
                            found.push(consumer);
                        }
                    }
                    let mut unsettled = (0, 0);
                    for consumer in &found {
                        if let Ok(info) = stream.consumer_info(consumer).await {
                            unsettled.0 += info.num_pending;
                            unsettled.1 += info.num_ack_pending;
                        }
                    }
                    match found.len() as u32 {
                        n if n >= relaycord_sinks::config::DEFAULT_PARTITIONS => Ok(unsettled),
                        0 => Err(error),
                        _ => Ok((u64::MAX, 0)),
                    }
                }
            };
            if matches!(state, Ok((0, 0))) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "consumer of {sink} never settled: {state:?} (pending, unacked)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Envelopes stored in the interactions stream, with their subject and msg id.
    pub async fn stored(&self) -> Vec<Stored> {
        stored(&self.js).await
    }
}

/// Every `Nats-Msg-Id` stored in `stream`, with how many messages carry it: what a test
/// compares with the simulator's proof log.
pub async fn stream_ids(js: &jetstream::Context, stream: &str) -> HashMap<String, u32> {
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            headers_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut pending = consumer.cached_info().num_pending;
    let mut ids = HashMap::new();
    while pending > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(10_000)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        while let Some(Ok(message)) = batch.next().await {
            let id = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .expect("every event carries Nats-Msg-Id");
            *ids.entry(id.as_str().to_owned()).or_insert(0) += 1;
            pending = pending.saturating_sub(1);
        }
    }
    ids
}

#[derive(Debug)]
pub struct Stored {
    pub subject: String,
    pub msg_id: String,
    pub envelope: serde_json::Value,
    /// The raw `data` text inside the envelope.
    pub raw_data: String,
}

/// Envelopes stored in the interactions stream, in order.
pub async fn stored(js: &jetstream::Context) -> Vec<Stored> {
    stored_in(js, "DISCORD_INTERACTIONS").await
}

/// Envelopes stored in `stream`, in order.
pub async fn stored_in(js: &jetstream::Context, stream: &str) -> Vec<Stored> {
    let mut stream = js.get_stream(stream).await.unwrap();
    let count = stream.info().await.unwrap().state.messages;
    let mut out = Vec::new();
    if count == 0 {
        return out;
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    while (out.len() as u64) < count {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("stored message")
            .unwrap()
            .unwrap();
        let text = std::str::from_utf8(&message.payload).unwrap();
        let envelope = Envelope::from_slice(message.payload.as_ref()).unwrap();
        out.push(Stored {
            subject: message.subject.to_string(),
            msg_id: message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.to_string())
                .unwrap_or_default(),
            raw_data: envelope.data.get().to_owned(),
            envelope: serde_json::from_str(text).unwrap(),
        });
    }
    out
}

/// The decision record of an interaction, as stored (`{"state": …}`).
pub async fn decision(js: &jetstream::Context, id: &str) -> Option<serde_json::Value> {
    let store = js
        .get_key_value("DISCORD_INTERACTION_DECISIONS")
        .await
        .unwrap();
    let bytes = store.get(id).await.unwrap()?;
    Some(serde_json::from_slice(&bytes).unwrap())
}
