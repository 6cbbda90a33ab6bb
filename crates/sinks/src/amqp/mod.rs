//! `type = "amqp"`: publish to a RabbitMQ exchange with lapin.
//!
//! Messages are persistent (delivery mode 2), carry `message_id` = the event id (so
//! consumers can dedupe), `type` = the event type and `content_type: application/json`,
//! and count as delivered only when the broker confirms them. The connection is opened
//! lazily and replaced after any error, so a broker restart costs a few retries.

mod config;
pub mod metrics;
mod service;

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use relaycord_bus::Secret;
use tokio::sync::Mutex;

pub use config::AmqpSinkConfig;
pub use service::classify;

use crate::error::{SinkError, SinkErrorKind};
use crate::template::KeyTemplate;
use crate::{Event, Outcome, Sink};

pub struct AmqpSink {
    name: String,
    url: Secret,
    exchange: String,
    kind: ExchangeKind,
    declare: bool,
    routing_key: KeyTemplate,
    mandatory: bool,
    timeout: std::time::Duration,
    link: Mutex<Option<Link>>,
}

struct Link {
    connection: Connection,
    channel: Channel,
}

impl AmqpSink {
    /// Validates the config; errors name the key (`sinks.<name>.<key>`) and the fix.
    pub fn build(name: &str, config: &AmqpSinkConfig) -> Result<Self, SinkError> {
        let bad = |key: &str, msg: String| {
            SinkError::new(SinkErrorKind::Config, format!("sinks.{name}.{key}: {msg}"))
        };
        let url = config.url.expose();
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(bad(
                "url",
                "must be an amqp:// or amqps:// URL, e.g. \"amqp://guest:guest@127.0.0.1:5672/%2f\""
                    .to_owned(),
            ));
        }
        url.parse::<lapin::uri::AMQPUri>()
            .map_err(|e| bad("url", format!("is not a valid AMQP URL ({e})")))?;
        let kind = match config.exchange_type.as_str() {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            other => {
                return Err(bad(
                    "exchange_type",
                    format!("{other:?} is not one of direct, fanout, topic, headers"),
                ));
            }
        };
        let routing_key =
            KeyTemplate::parse(&config.routing_key).map_err(|e| bad("routing_key", e))?;
        // amqps:// goes through rustls, which needs the process-wide provider.
        relaycord_bus::install_crypto_provider();
        Ok(Self {
            name: name.to_owned(),
            url: config.url.clone(),
            exchange: config.exchange.clone(),
            kind,
            declare: config.declare && !config.exchange.is_empty(),
            routing_key,
            mandatory: config.mandatory,
            timeout: config.timeout,
            link: Mutex::new(None),
        })
    }

    /// The open channel, connecting (and declaring the exchange) when there is none.
    async fn channel(&self) -> Result<Channel, lapin::Error> {
        let mut link = self.link.lock().await;
        if let Some(l) = link.as_ref()
            && l.connection.status().connected()
            && l.channel.status().connected()
        {
            return Ok(l.channel.clone());
        }
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("relaycord-sink-{}", self.name).into());
        let connection = Connection::connect(self.url.expose(), properties).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        if self.declare {
            let options = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(
                    self.exchange.as_str().into(),
                    self.kind.clone(),
                    options,
                    FieldTable::default(),
                )
                .await?;
        }
        tracing::info!(sink = %self.name, exchange = %self.exchange, "connected to the AMQP broker");
        *link = Some(Link {
            connection,
            channel: channel.clone(),
        });
        Ok(channel)
    }

    async fn publish(&self, event: &Event<'_>) -> Outcome {
        let channel = match self.channel().await {
            Ok(channel) => channel,
            Err(error) => {
                return service::retry(format!(
                    "cannot reach the broker: {}",
                    relaycord_bus::redact::userinfo(&error.to_string())
                ));
            }
        };
        let key = self
            .routing_key
            .render(&self.name, event.body, str::to_owned);
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(event.id.into())
            .with_type(event.event_type.into())
            .with_app_id("relaycord".into())
            .with_timestamp(timestamp);
        let delivery = event.delivery_headers();
        let properties = match delivery.is_empty() {
            true => properties,
            false => {
                let mut headers = FieldTable::default();
                for (name, value) in delivery {
                    headers.insert(name.into(), AMQPValue::LongString(value.into()));
                }
                properties.with_headers(headers)
            }
        };
        let options = BasicPublishOptions {
            mandatory: self.mandatory,
            ..BasicPublishOptions::default()
        };
        let confirmation = async {
            channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    key.as_str().into(),
                    options,
                    event.body.bytes,
                    properties,
                )
                .await?
                .await
        }
        .await;
        if let Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_))) = &confirmation {
            metrics::returned(&self.name);
        }
        let outcome = classify(confirmation);
        if !matches!(outcome, Outcome::Delivered) && !channel.status().connected() {
            // The next delivery reconnects.
            self.link.lock().await.take();
        }
        outcome
    }
}

impl Sink for AmqpSink {
    async fn deliver(&self, event: &Event<'_>) -> Outcome {
        match tokio::time::timeout(self.timeout, self.publish(event)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                self.link.lock().await.take();
                service::retry(format!(
                    "no confirm from the broker within {:?}",
                    self.timeout
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(f: impl FnOnce(&mut AmqpSinkConfig)) -> Result<AmqpSink, SinkError> {
        let mut c = AmqpSinkConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f", "discord");
        f(&mut c);
        AmqpSink::build("q", &c)
    }

    #[test]
    fn bad_config_names_the_key() {
        assert!(build(|_| {}).is_ok());
        let e = build(|c| c.url = Secret::new("http://x"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("sinks.q.url:"), "{e}");
        let e = build(|c| c.exchange_type = "fan".into())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("sinks.q.exchange_type") && e.contains("fanout"),
            "{e}"
        );
        let e = build(|c| c.routing_key = "{guild}".into())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("sinks.q.routing_key") && e.contains("{guild_id}"),
            "{e}"
        );
    }

    #[test]
    fn the_url_is_never_printed() {
        let c = AmqpSinkConfig::new("amqp://user:hunter2@host/%2f", "x");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
