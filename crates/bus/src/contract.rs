//! The bus contract in machine-readable form: a JSON Schema of the [`Envelope`], derived
//! from the type itself, and an AsyncAPI 3.0 document of the subjects, headers and streams
//! of one configuration (`relaycord asyncapi`). Both are committed under `docs/contract/`
//! for the default configuration, and `tests/it/contract.rs` fails when they drift from
//! this code.
//!
//! Like the rest of the contract, the subjects and headers are spelled here and nowhere
//! else: the document is built from [`Subjects`], [`crate::headers`] and the stream names
//! of [`crate::streams`].

use serde_json::{Map, Value, json};

use crate::envelope::Envelope;
use crate::streams::{DLQ_STREAM, StreamSettings, gateway_stream, interactions_stream};
use crate::subject::Subjects;
use crate::{DEFAULT_PREFIX, headers};

/// The JSON Schema (draft-07, so that AsyncAPI's default schema format, ajv's default and
/// every validator read it alike) of the envelope, generated from [`Envelope`]: field
/// types, doc comments and patterns from its attributes, the rules that depend on
/// `source` from [`per_source_rules`]. Unknown fields are allowed: new ones are a
/// compatible change (docs/bus.md, "Compatibility").
pub fn envelope_schema() -> Value {
    let mut schema = schemars::generate::SchemaSettings::draft07()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<Envelope<'static>>()
        .to_value();
    drop_rust_formats(&mut schema);
    if let Some(object) = schema.as_object_mut() {
        object.insert(
            "$comment".to_owned(),
            json!(
                "Generated from crates/bus/src/envelope.rs by `relaycord asyncapi --envelope-schema`; \
                 do not edit (tests/it/contract.rs checks the committed copy)."
            ),
        );
    }
    schema
}

/// Removes schemars' `uint32`/`uint64` formats (the bounds are in `minimum`): they are
/// not JSON Schema formats, and strict validators (ajv) refuse formats they do not know.
fn drop_rust_formats(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            if object
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| f.starts_with("uint") || f.starts_with("int"))
            {
                object.remove("format");
            }
            object.values_mut().for_each(drop_rust_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_rust_formats),
        _ => {}
    }
}

/// The envelope's rules that depend on its `source`, added to the derived schema: shard
/// and seq are numbers exactly for gateway events, an interaction from the endpoint is an
/// `INTERACTION_CREATE`, and a webhook event says when it occurred.
pub(crate) fn per_source_rules(schema: &mut schemars::Schema) {
    let when = |source: &str, then: Value| {
        json!({
            "if": {"properties": {"source": {"const": source}}, "required": ["source"]},
            "then": then,
        })
    };
    let numbered = |kind: &str| {
        json!({
            "properties": {"shard": {"type": kind}, "seq": {"type": kind}},
            "required": ["shard", "seq"],
        })
    };
    schema.insert(
        "allOf".to_owned(),
        json!([
            when("gateway", numbered("integer")),
            when("interaction", {
                let mut rule = numbered("null");
                rule["properties"]["type"] = json!({"const": "INTERACTION_CREATE"});
                rule
            }),
            when("webhook", {
                let mut rule = numbered("null");
                rule["properties"]["occurred_at"] = json!({"type": "string", "minLength": 1});
                rule["required"] = json!(["shard", "seq", "occurred_at"]);
                rule
            }),
        ]),
    );
}

/// A sink as the document shows it: its dead-letter subject and durable consumer, and
/// for a nats sink where it republishes.
#[derive(Debug, Clone)]
pub struct SinkContract {
    pub name: String,
    /// The sink type (`http`, `nats`, …).
    pub kind: String,
    /// The durable consumer on the events stream, shared by the sink's replicas.
    pub consumer: String,
    /// Event types the sink selects (empty: all).
    pub events: Vec<String>,
    /// A nats sink's target subject template and whether it publishes through JetStream.
    pub republish: Option<Republish>,
}

#[derive(Debug, Clone)]
pub struct Republish {
    /// The subject template, `{field}` placeholders included.
    pub subject: String,
    pub jetstream: bool,
    /// Whether the target is another NATS server than the bus's.
    pub other_server: bool,
}

/// What the AsyncAPI document is generated from: the parts of a configuration that a
/// consumer sees.
#[derive(Debug, Clone)]
pub struct Contract {
    /// Relaycord's version (the document's `info.version`).
    pub version: String,
    pub subjects: Subjects,
    pub streams: StreamSettings,
    /// `nats.url`, comma-separated servers; credentials are never printed.
    pub nats_url: String,
    pub sinks: Vec<SinkContract>,
    /// Subjects of the NATS interaction handlers of the configured routes.
    pub handlers: Vec<String>,
}

impl Default for Contract {
    fn default() -> Self {
        Self {
            version: String::new(),
            subjects: Subjects::default(),
            streams: StreamSettings::default(),
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            sinks: Vec::new(),
            handlers: Vec::new(),
        }
    }
}

fn seconds(duration: std::time::Duration) -> Value {
    json!(duration.as_secs_f64())
}

/// `{name}` placeholders of a subject template, in order, once each.
fn placeholders(template: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for piece in template.split('{').skip(1) {
        if let Some((name, _)) = piece.split_once('}')
            && !name.is_empty()
            && !names.iter().any(|n| n == name)
        {
            names.push(name.to_owned());
        }
    }
    names
}

/// The headers of an event message as a JSON Schema; `gateway` adds the shard header.
fn event_headers(gateway: bool) -> Value {
    let mut properties = Map::new();
    properties.insert(
        headers::MSG_ID.to_owned(),
        json!({
            "type": "string",
            "description": "The envelope's `id`: JetStream's dedupe key (the stream keeps one \
                message per id within its duplicate window). Two different Discord events never \
                share it; dedupe on it, forever if you like.",
        }),
    );
    properties.insert(
        headers::TYPE.to_owned(),
        json!({"type": "string", "description": "The envelope's `type`, readable without parsing the body."}),
    );
    let mut required = vec![json!(headers::MSG_ID), json!(headers::TYPE)];
    if gateway {
        properties.insert(
            headers::SHARD.to_owned(),
            json!({"type": "string", "pattern": "^[0-9]+$", "description": "The shard that read the dispatch (decimal), as the envelope's `shard`."}),
        );
        required.push(json!(headers::SHARD));
    }
    properties.insert(
        headers::TRACEPARENT.to_owned(),
        json!({
            "type": "string",
            "description": "W3C trace context of the span that published the message; present only \
                while tracing is on in the publishing process. Optional: continue it with any \
                OpenTelemetry W3C propagator, or ignore it.",
        }),
    );
    properties.insert(
        crate::trace::TRACESTATE.to_owned(),
        json!({"type": "string", "description": "W3C trace state, beside `traceparent` when the span has one."}),
    );
    json!({"type": "object", "properties": properties, "required": required})
}

/// The AsyncAPI 3.0 document of `contract`: the application described is Relaycord, so
/// its operations `send` the events that subscribers receive.
pub fn asyncapi(contract: &Contract) -> Value {
    let subjects = &contract.subjects;
    let prefix = subjects.prefix();
    let settings = &contract.streams;
    let events_stream = gateway_stream(subjects);
    let interactions = interactions_stream(subjects);
    let envelope_ref = json!({"$ref": "#/components/schemas/Envelope"});

    let stream_facts = |name: &str, subjects: Vec<String>, max_age: std::time::Duration| {
        json!({
            "stream": name,
            "subjects": subjects,
            "retention": "limits",
            "storage": "file",
            "discard": "old",
            "replicas": settings.replicas,
            "maxAgeSeconds": seconds(max_age),
            "maxBytes": settings.max_bytes,
            "duplicateWindowSeconds": seconds(settings.duplicate_window),
        })
    };
    let event_stream_facts = stream_facts(
        &events_stream,
        vec![subjects.gateway_all(), subjects.webhooks_all()],
        settings.max_age,
    );
    let consume = |filter: String| {
        json!({
            "description": "Create a durable pull consumer on the stream with this filter subject, \
                deliver policy `all` (or `new`), ack policy `explicit`, and a max_deliver of your \
                choice; fetch in batches, ack each message after it is processed, dedupe by \
                `Nats-Msg-Id`. One durable name is shared by a consumer's replicas. nats-server 2.9 \
                takes one filter subject per consumer, inside one of the stream's subjects (or \
                `<prefix>.>` for the whole events stream); 2.10+ also take several \
                (`filter_subjects`) and any that overlaps the stream's subjects.",
            "filterSubject": filter,
            "deliverPolicy": "all",
            "ackPolicy": "explicit",
        })
    };

    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    let event_type_param = |about: &str, examples: &[&str]| {
        json!({
            "description": format!("Discord's event type ({about}): `[A-Z0-9_]+`, up to 64 characters."),
            "examples": examples,
        })
    };
    let guild_param = json!({
        "description": "The guild the event is about, as a decimal snowflake (`d.guild_id`; `d.id` \
            for GUILD_CREATE, GUILD_UPDATE and GUILD_DELETE), or `none` outside a guild. The \
            envelope's `guild_id` is the same id.",
        "examples": ["81384788765712384", "none"],
    });

    let mut add = |key: &str,
                   message: &str,
                   channel: Value,
                   message_body: Value,
                   action: &str,
                   summary: &str| {
        let mut channel = channel;
        channel["messages"] =
            json!({ message: {"$ref": format!("#/components/messages/{message}")} });
        channels.insert(key.to_owned(), channel);
        messages.insert(message.to_owned(), message_body);
        operations.insert(
            format!("{action}{}", capitalize(key)),
            json!({
                "action": action,
                "summary": summary,
                "channel": {"$ref": format!("#/channels/{key}")},
                "messages": [{"$ref": format!("#/channels/{key}/messages/{message}")}],
            }),
        );
    };

    add(
        "gatewayEvents",
        "GatewayEvent",
        json!({
            "address": format!("{prefix}.gateway.{{eventType}}.{{guild}}"),
            "title": "Gateway dispatches",
            "description": format!(
                "Every dispatch of the bot's gateway shards but READY and RESUMED (connection \
                 events), GUILD_CREATE included. Filters: `{all}` (everything), `{one}` (one \
                 type), `{prefix}.gateway.*.<guild>` (one guild).",
                all = subjects.gateway_all(),
                one = subjects.gateway_type("MESSAGE_CREATE"),
            ),
            "parameters": {
                "eventType": event_type_param("the gateway dispatch's `t`", &["MESSAGE_CREATE", "GUILD_MEMBER_ADD"]),
                "guild": guild_param.clone(),
            },
            "x-jetstream": event_stream_facts.clone(),
            "x-consume": consume(subjects.gateway_all()),
        }),
        json!({
            "name": "GatewayEvent",
            "title": "A gateway dispatch",
            "summary": "The envelope of one dispatch; `source` is `gateway`, `data` is Discord's `d`.",
            "contentType": "application/json",
            "headers": event_headers(true),
            "payload": envelope_ref.clone(),
        }),
        "send",
        "Relaycord publishes each dispatch once JetStream acknowledged it, under the event's id.",
    );
    add(
        "webhookEvents",
        "WebhookEvent",
        json!({
            "address": format!("{prefix}.webhooks.{{eventType}}.{{guild}}"),
            "title": "Webhook events",
            "description": format!(
                "Discord's webhook events (the application's Webhook Events URL): \
                 APPLICATION_AUTHORIZED, ENTITLEMENT_CREATE, … Stored in the same stream as the \
                 gateway dispatches, so one consumer filter (`{both}`) selects both sources in one \
                 order; `{one}` (one type from either source) needs nats-server 2.10+. Filter: \
                 `{all}`.",
                both = subjects.everything(),
                one = format!("{prefix}.*.ENTITLEMENT_CREATE.*"),
                all = subjects.webhooks_all(),
            ),
            "parameters": {
                "eventType": event_type_param("the webhook event's `event.type`", &["APPLICATION_AUTHORIZED", "ENTITLEMENT_CREATE"]),
                "guild": guild_param,
            },
            "x-jetstream": event_stream_facts.clone(),
            "x-consume": consume(subjects.webhooks_all()),
        }),
        json!({
            "name": "WebhookEvent",
            "title": "A webhook event",
            "summary": "The envelope of one webhook event; `source` is `webhook`, `data` is Discord's \
                `event.data`, `occurred_at` its `event.timestamp`.",
            "contentType": "application/json",
            "headers": event_headers(false),
            "payload": envelope_ref.clone(),
        }),
        "send",
        "Relaycord publishes each verified webhook event once, then answers Discord 204.",
    );
    add(
        "interactions",
        "Interaction",
        json!({
            "address": format!("{prefix}.interactions.{{kind}}.{{name}}"),
            "title": "Interactions",
            "description": format!(
                "Interactions, from the HTTP endpoint (`source` `interaction`) and INTERACTION_CREATE \
                 dispatches of the gateway (`source` `gateway`), under one id `ix:<id>`. The envelope \
                 carries the interaction token (valid 15 minutes): restrict who may subscribe to \
                 `{all}` with NATS permissions.",
                all = subjects.interactions_all(),
            ),
            "parameters": {
                "kind": {"enum": ["command", "component", "modal", "autocomplete"], "description": "The interaction's kind."},
                "name": {
                    "description": "The command's name, or a component's or modal's custom_id up to its first \
                        `:`, with every character outside `[A-Za-z0-9_-]` replaced by `_`.",
                    "examples": ["ping", "vote"],
                },
            },
            "x-jetstream": stream_facts(&interactions, vec![subjects.interactions_all()], settings.max_age),
            "x-consume": consume(subjects.interactions_all()),
        }),
        json!({
            "name": "Interaction",
            "title": "An interaction",
            "summary": "The envelope of one interaction; `type` is INTERACTION_CREATE, `data` the interaction.",
            "contentType": "application/json",
            "headers": event_headers(false),
            "payload": envelope_ref.clone(),
        }),
        "send",
        "Relaycord publishes each verified interaction before any handler sees it.",
    );
    let sink_names: Vec<&str> = contract.sinks.iter().map(|s| s.name.as_str()).collect();
    add(
        "deadLetters",
        "DeadLetter",
        json!({
            "address": crate::subject::dlq_pattern("{sink}"),
            "title": "Dead letters",
            "description": "What a sink could not deliver, with the reason (docs/sinks.md). Not an \
                envelope: read them with `relaycord dlq`. Shared by every bot on the server, hence \
                the fixed `relaycord.` prefix.",
            "parameters": {
                "sink": if sink_names.is_empty() {
                    json!({"description": "The sink's name (characters outside `[A-Za-z0-9_-]` replaced by `_`)."})
                } else {
                    json!({"description": "The sink's name.", "enum": sink_names})
                },
            },
            "x-jetstream": {
                "stream": DLQ_STREAM,
                "subjects": [crate::subject::dlq_pattern(">")],
                "retention": "limits",
                "discard": "old",
                "replicas": settings.replicas,
                "maxAgeSeconds": seconds(settings.dlq_max_age),
                "maxMessagesPerSubject": settings.dlq_max_msgs_per_sink,
                "maxBytes": settings.dlq_max_bytes,
            },
        }),
        json!({
            "name": "DeadLetter",
            "title": "A dead letter",
            "summary": "The stored envelope's bytes with the failure in headers (docs/sinks.md, \"Dead letters\").",
            "contentType": "application/json",
        }),
        "send",
        "A sink stores an event it gave up on; the DLQ stream acknowledges it before the event is terminated.",
    );

    for (i, subject) in contract.handlers.iter().enumerate() {
        add(
            &format!("handler{}", i + 1),
            &format!("HandlerRequest{}", i + 1),
            json!({
                "address": subject,
                "title": format!("Interaction handler {subject}"),
                "description": "A NATS request/reply handler of a configured route: the request is the \
                    interaction's envelope; the reply an interaction response (docs/interactions.md).",
            }),
            json!({
                "name": format!("HandlerRequest{}", i + 1),
                "contentType": "application/json",
                "payload": envelope_ref.clone(),
            }),
            "send",
            "Relaycord asks the handler for the interaction's response.",
        );
    }
    for (i, sink) in contract.sinks.iter().enumerate() {
        let Some(republish) = &sink.republish else {
            continue;
        };
        let mut parameters = Map::new();
        for name in placeholders(&republish.subject) {
            parameters.insert(
                name.clone(),
                json!({"description": format!("The event's `{name}`, sanitized to one subject token.")}),
            );
        }
        let mut channel = json!({
            "address": republish.subject,
            "title": format!("Republished by sink {}", sink.name),
            "description": format!(
                "The nats sink `{}` republishes the envelopes it selects here, byte for byte, {}{}.",
                sink.name,
                if republish.jetstream {
                    "through JetStream with `Nats-Msg-Id` = the envelope's id"
                } else {
                    "with a core NATS publish"
                },
                if republish.other_server { ", on another NATS server (the sink's `url`)" } else { "" },
            ),
        });
        if !parameters.is_empty() {
            channel["parameters"] = Value::Object(parameters);
        }
        add(
            &format!("sink{}", i + 1),
            &format!("Republished{}", i + 1),
            channel,
            json!({
                "name": format!("Republished{}", i + 1),
                "contentType": "application/json",
                "headers": event_headers(false),
                "payload": envelope_ref.clone(),
            }),
            "send",
            "A nats sink republishes each selected event, at least once.",
        );
    }

    let sinks: Vec<Value> = contract
        .sinks
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "type": s.kind,
                "consumer": s.consumer,
                "stream": events_stream,
                "events": s.events,
                "deadLetters": crate::subject::dlq(&s.name).as_str(),
            })
        })
        .collect();

    let mut servers = Map::new();
    for (i, url) in contract
        .nats_url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .enumerate()
    {
        let origin = crate::redact::url_origin(url);
        let (scheme, host) = origin
            .split_once("://")
            .unwrap_or(("nats", origin.as_str()));
        servers.insert(
            format!("nats{}", i + 1),
            json!({
                "host": host,
                "protocol": if scheme == "tls" { "nats+tls" } else { "nats" },
                "description": "A NATS server with JetStream (the configuration's `nats.url`).",
            }),
        );
    }

    let mut schema = envelope_schema();
    if let Some(object) = schema.as_object_mut() {
        // The document says which draft its schemas follow (AsyncAPI's default format).
        object.remove("$schema");
    }

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": if prefix == DEFAULT_PREFIX {
                "Relaycord bus".to_owned()
            } else {
                format!("Relaycord bus ({prefix})")
            },
            "version": contract.version,
            "description": "Discord's events as Relaycord stores them on NATS JetStream: gateway \
                dispatches, webhook events and interactions, one JSON envelope each (docs/bus.md). \
                The application described is Relaycord: it sends; any NATS client receives with a \
                durable consumer (`x-consume` of each channel). Compatibility: new fields, event \
                types and channels in minor releases; anything else only in a major one.",
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
            "externalDocs": {
                "description": "The bus contract in prose",
                "url": "https://github.com/relaycord/relaycord/blob/main/docs/bus.md",
            },
        },
        "defaultContentType": "application/json",
        "servers": servers,
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": {"Envelope": schema},
            "messages": messages,
        },
        "x-relaycord": {
            "subjectPrefix": prefix,
            "streams": {
                "events": events_stream,
                "interactions": interactions,
                "deadLetters": DLQ_STREAM,
            },
            "duplicateWindowSeconds": seconds(settings.duplicate_window),
            "dedupe": "JetStream stores at most one message per Nats-Msg-Id within the duplicate \
                window; an id never names two events, so a consumer may drop an id it has seen, \
                forever (docs/bus.md, \"Event identity\").",
            "eventsFilter": subjects.everything(),
            "sinks": sinks,
        },
    })
}

fn capitalize(key: &str) -> String {
    let mut chars = key.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_once_in_order() {
        assert_eq!(
            placeholders("relay.{type}.{guild_id}.{type}"),
            ["type", "guild_id"]
        );
        assert!(placeholders("relay.all").is_empty());
    }

    #[test]
    fn the_schema_leaves_data_open_and_checks_the_rest() {
        let schema = envelope_schema();
        assert_eq!(schema["properties"]["data"].get("type"), None, "{schema}");
        let required = schema["required"].as_array().unwrap();
        for field in ["id", "source", "type", "received_at", "data"] {
            assert!(required.contains(&json!(field)), "{field}: {schema}");
        }
        let sources: Vec<&Value> = schema["properties"]["source"]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|variant| &variant["const"])
            .collect();
        assert_eq!(
            sources,
            [&json!("gateway"), &json!("interaction"), &json!("webhook")]
        );
        assert_eq!(schema["properties"]["seq"].get("format"), None);
    }

    #[test]
    fn the_document_follows_the_prefix() {
        let doc = asyncapi(&Contract {
            subjects: Subjects::new("acme.bot"),
            ..Contract::default()
        });
        assert_eq!(
            doc["channels"]["gatewayEvents"]["address"],
            "acme.bot.gateway.{eventType}.{guild}"
        );
        assert_eq!(
            doc["channels"]["webhookEvents"]["x-jetstream"]["stream"],
            "ACME_BOT_GATEWAY"
        );
        assert_eq!(
            doc["channels"]["deadLetters"]["address"],
            "relaycord.dlq.{sink}"
        );
    }
}
