//! `type = "nats"`: republish to a subject template, on the same NATS or another one.
//!
//! Headers: `Nats-Msg-Id` (= event id) and `Relaycord-Type`. With `jetstream = true` the
//! publish counts as delivered when the target stream acks it.

mod config;
mod service;

use async_nats::jetstream::{self, context::PublishError};
use relaycord_bus::{OutgoingMessage, subject::sanitize_token};
use tokio::sync::OnceCell;

pub use config::NatsSinkConfig;
pub use service::classify;

use crate::error::{SinkError, SinkErrorKind};
use crate::template::KeyTemplate;
use crate::{BuildContext, Event, Outcome, Sink};

pub struct NatsSink {
    name: String,
    config: NatsSinkConfig,
    subject: KeyTemplate,
    /// The target: the bus's own context, or another server's, connected on first use.
    target: OnceCell<jetstream::Context>,
}

impl NatsSink {
    /// Validates the config; errors name the key (`sinks.<name>.<key>`) and the fix.
    /// On the bus (`context`), a sink without a `url` of its own publishes on the bus's
    /// connection.
    pub fn build(
        name: &str,
        config: &NatsSinkConfig,
        context: &BuildContext<'_>,
    ) -> Result<Self, SinkError> {
        let bad = |key: &str, msg: String| {
            SinkError::new(SinkErrorKind::Config, format!("sinks.{name}.{key}: {msg}"))
        };
        let subject = KeyTemplate::parse(&config.subject).map_err(|e| bad("subject", e))?;
        let sample = subject.sample(name, |_| "x".to_owned());
        if sample.is_empty()
            || sample
                .split('.')
                .any(|t| t.is_empty() || t.contains(['*', '>']) || t.contains(char::is_whitespace))
        {
            return Err(bad(
                "subject",
                format!(
                    "{:?} is not a valid subject: dot-separated tokens without spaces or wildcards, e.g. \"relay.{{type}}.{{guild_id}}\"",
                    config.subject
                ),
            ));
        }
        let url = config.url.expose();
        if !url.is_empty() && url.parse::<async_nats::ServerAddr>().is_err() {
            return Err(bad(
                "url",
                "is not a NATS URL; write e.g. \"nats://127.0.0.1:4222\", or leave it empty for the bus's server".to_owned(),
            ));
        }
        let target = OnceCell::new();
        if let Some((js, subjects)) = context.bus
            && url.is_empty()
        {
            // On the bus's own server, a subject inside the gateway stream would feed the
            // sink its own output forever: refused.
            if subjects.is_own(&sample) {
                return Err(bad(
                    "subject",
                    format!(
                        "{:?} is inside Relaycord's own subjects on the same server, which would loop; use another prefix (e.g. \"relay.{{type}}\") or set url to another server",
                        config.subject
                    ),
                ));
            }
            let _ = target.set(js.clone());
        }
        Ok(Self {
            name: name.to_owned(),
            config: config.clone(),
            subject,
            target,
        })
    }

    async fn target(&self) -> Result<&jetstream::Context, String> {
        self.target
            .get_or_try_init(|| async {
                let client = async_nats::ConnectOptions::new()
                    .name(format!("relaycord-sink-{}", self.name))
                    .connect(self.config.url.expose())
                    .await
                    .map_err(|e| format!("cannot connect to the target NATS: {e}"))?;
                Ok(jetstream::new(client))
            })
            .await
    }

    async fn publish(
        &self,
        js: &jetstream::Context,
        event: &Event<'_>,
    ) -> Result<(), PublishError> {
        let subject = self.subject.render(&self.name, event.body, sanitize_token);
        let mut message = OutgoingMessage::envelope_bytes(
            subject,
            event.body.bytes.clone(),
            Some(event.id),
            Some(event.event_type),
        );
        for (name, value) in event.delivery_headers() {
            message.headers.insert(name, value.as_str());
        }
        if self.config.jetstream {
            message.publish(js).await.map(drop)
        } else {
            let client = js.client();
            client
                .publish_with_headers(message.subject, message.headers, message.payload)
                .await
                .map_err(|e| {
                    PublishError::with_source(jetstream::context::PublishErrorKind::Other, e)
                })?;
            client.flush().await.map_err(|e| {
                PublishError::with_source(jetstream::context::PublishErrorKind::Other, e)
            })
        }
    }
}

impl Sink for NatsSink {
    async fn deliver(&self, event: &Event<'_>) -> Outcome {
        let js = match self.target().await {
            Ok(js) => js,
            Err(reason) => {
                return Outcome::Retry {
                    reason,
                    status: None,
                    after: None,
                };
            }
        };
        match tokio::time::timeout(self.config.timeout, self.publish(js, event)).await {
            Ok(result) => classify(result),
            Err(_) => Outcome::Retry {
                reason: format!("no ack within {:?}", self.config.timeout),
                status: None,
                after: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_subjects_and_urls_name_the_key() {
        let ok = NatsSinkConfig::new("relay.{type}.{guild_id}");
        assert!(NatsSink::build("n", &ok, &BuildContext::default()).is_ok());
        for subject in ["relay..x", "relay.*", "relay x", "{guild}"] {
            let e = NatsSink::build("n", &NatsSinkConfig::new(subject), &BuildContext::default())
                .err()
                .unwrap()
                .to_string();
            assert!(e.starts_with("sinks.n.subject:"), "{subject}: {e}");
        }
        let e = NatsSink::build(
            "n",
            &NatsSinkConfig {
                url: relaycord_bus::Secret::new("http://x y"),
                ..ok
            },
            &BuildContext::default(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.starts_with("sinks.n.url:"), "{e}");
    }
}
