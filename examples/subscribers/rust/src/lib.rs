//! A Relaycord subscriber in Rust: a durable JetStream pull consumer on a filtered subject
//! that validates each envelope against the contract's JSON Schema
//! (`docs/contract/envelope.schema.json`), drops what it has already seen by
//! `Nats-Msg-Id`, and acks. The contract: docs/bus.md and docs/contract/.
//!
//! `main.rs` runs [`run`] and prints one JSON line per message; the suite runs it in
//! process (tests/it/contract.rs).

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

/// Where to read from; every field has the command line's default.
#[derive(Debug, Clone, clap::Parser)]
pub struct Options {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub url: String,
    /// The events stream: `<PREFIX>_GATEWAY` holds gateway and webhook events.
    #[arg(long, default_value = "DISCORD_GATEWAY")]
    pub stream: String,
    /// Durable consumer name, shared by this subscriber's replicas.
    #[arg(long, default_value = "example-rust")]
    pub durable: String,
    /// Filter subject, e.g. `discord.gateway.MESSAGE_CREATE.*`, or `discord.>` for gateway
    /// and webhook events.
    #[arg(long, default_value = "discord.gateway.>")]
    pub filter: String,
    /// The envelope's JSON Schema.
    #[arg(long, default_value = "docs/contract/envelope.schema.json")]
    pub schema: PathBuf,
}

/// The envelope fields this subscriber reads; `data` is Discord's payload (types from
/// twilight-model, if you want them), left as JSON here. Unknown fields are ignored, as
/// the compatibility promise asks.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub guild_id: Option<String>,
    pub data: Value,
}

/// Ids already processed. An id never names two events, so a seen id can be dropped
/// forever; this keeps the last `capacity` in memory (a database table works too).
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Seen {
    fn new(capacity: usize) -> Self {
        Self {
            ids: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Records `id`; false when it was already there.
    fn insert(&mut self, id: &str) -> bool {
        if !self.ids.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        true
    }
}

/// Consumes until the connection fails, reporting each message to `report` as the JSON
/// line `main` prints: `{"ready": true}` once the consumer exists, then `{"id", "msg_id",
/// "subject", "type", "source", "duplicate"}` per message, or `{"invalid", "subject",
/// "error"}` for an envelope the schema refuses (terminated: it would never pass).
pub async fn run(options: &Options, mut report: impl FnMut(Value)) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&options.schema)
        .with_context(|| format!("cannot read {}", options.schema.display()))?;
    let schema: Value = serde_json::from_str(&text)?;
    let validator = jsonschema::draft7::new(&schema)
        .map_err(|e| anyhow::anyhow!("{}: not a valid schema: {e}", options.schema.display()))?;

    let client = async_nats::connect(&options.url).await?;
    let js = jetstream::new(client);
    let stream = js.get_stream(&options.stream).await?;
    // Created if missing, shared if it exists: a restarted subscriber resumes where the
    // durable consumer stands (acked messages are not delivered again).
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &options.durable,
            consumer::pull::Config {
                durable_name: Some(options.durable.clone()),
                filter_subject: options.filter.clone(),
                ack_policy: consumer::AckPolicy::Explicit,
                deliver_policy: consumer::DeliverPolicy::All,
                ack_wait: Duration::from_secs(30),
                max_deliver: 10,
                ..Default::default()
            },
        )
        .await?;
    report(json!({"ready": true}));

    let mut seen = Seen::new(1_000_000);
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned());
        let subject = message.subject.to_string();
        let checked = serde_json::from_slice::<Value>(&message.payload)
            .map_err(|e| e.to_string())
            .and_then(|value| match validator.validate(&value) {
                Ok(()) => serde_json::from_value::<Envelope>(value).map_err(|e| e.to_string()),
                Err(error) => Err(format!("{error} at {}", error.instance_path())),
            });
        let envelope = match checked {
            Ok(envelope) => envelope,
            Err(error) => {
                report(json!({"invalid": msg_id, "subject": subject, "error": error}));
                message
                    .ack_with(AckKind::Term)
                    .await
                    .map_err(anyhow::Error::msg)?;
                continue;
            }
        };
        let duplicate = !seen.insert(msg_id.as_deref().unwrap_or(&envelope.id));
        if !duplicate {
            // Your processing goes here; return before the ack to have it redelivered.
        }
        report(json!({
            "id": envelope.id,
            "msg_id": msg_id,
            "subject": subject,
            "type": envelope.event_type,
            "source": envelope.source,
            "duplicate": duplicate,
        }));
        message.ack().await.map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_forgets_the_oldest_beyond_its_capacity() {
        let mut seen = Seen::new(2);
        assert!(seen.insert("a"));
        assert!(!seen.insert("a"));
        assert!(seen.insert("b"));
        assert!(seen.insert("c"));
        assert!(seen.insert("a"), "forgotten");
    }
}
