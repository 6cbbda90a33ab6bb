//! `relaycord asyncapi`: the bus contract of the running configuration, as the bus
//! builds it ([`relaycord_bus::contract`]) from the parts of the config a consumer sees.

use relaycord_bus::contract::{Contract, Republish, SinkContract};
use relaycord_interactions::routes::Handler;
use relaycord_sinks::{AnySink, Driver, SinkKind};

use crate::config::Config;

/// What the AsyncAPI document of `config` is generated from.
pub fn contract(config: &Config) -> Contract {
    let sinks = config
        .sinks
        .iter()
        .map(|sink| SinkContract {
            name: sink.name.clone(),
            kind: match &sink.kind {
                SinkKind::Http(_) => "http",
                SinkKind::Amqp(_) => "amqp",
                SinkKind::Nats(_) => "nats",
                SinkKind::Discord(_) => "discord",
            }
            .to_owned(),
            consumer: Driver::<AnySink>::consumer_name(&sink.name),
            events: sink.events.clone(),
            republish: match &sink.kind {
                SinkKind::Nats(nats) => Some(Republish {
                    subject: nats.subject.clone(),
                    jetstream: nats.jetstream,
                    other_server: !nats.url.is_empty(),
                }),
                _ => None,
            },
        })
        .collect();
    let handlers = config
        .interactions
        .routes
        .iter()
        .filter_map(|route| match &route.handler {
            Some(Handler::Nats(subject)) => Some(subject.clone()),
            _ => None,
        })
        .collect();
    Contract {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        subjects: config.nats.subjects(),
        streams: config.nats.streams(),
        nats_url: config.nats.url.clone(),
        sinks,
        handlers,
    }
}

/// The AsyncAPI document of `config`, pretty-printed, ending with a newline.
pub fn asyncapi_json(config: &Config) -> String {
    pretty(&relaycord_bus::contract::asyncapi(&contract(config)))
}

/// The envelope's JSON Schema, pretty-printed, ending with a newline.
pub fn envelope_schema_json() -> String {
    pretty(&relaycord_bus::contract::envelope_schema())
}

fn pretty(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("JSON serializes");
    text.push('\n');
    text
}
