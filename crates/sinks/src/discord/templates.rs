//! Messages from templates: minijinja over the envelope, then Discord's limits.
//!
//! Limits are enforced here rather than left to a 400: content 2000 characters, 10
//! embeds, 256/4096/2048 for title/description/footer and 6000 over all embeds. Cut
//! text ends with a visible marker so a reader knows something is missing.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use serde_json::Value;

use super::config::{EmbedTemplate, MessageTemplate};
use crate::Body;

pub const MAX_CONTENT: usize = 2000;
pub const MAX_EMBEDS: usize = 10;
pub const MAX_EMBED_TOTAL: usize = 6000;
const MAX_TITLE: usize = 256;
const MAX_DESCRIPTION: usize = 4096;
const MAX_FOOTER: usize = 2048;
pub const TRUNCATED: &str = "… [truncated]";

/// Built-in templates; `default` covers every other event type.
const DEFAULTS: &[(&str, &str)] = &[
    (
        "MESSAGE_CREATE",
        "**{{ data.author.username }}** in <#{{ data.channel_id }}>: {{ data.content }}",
    ),
    (
        "MESSAGE_UPDATE",
        "✏️ **{{ data.author.username }}** edited a message in <#{{ data.channel_id }}>: {{ data.content }}",
    ),
    (
        "MESSAGE_DELETE",
        "🗑️ A message was deleted in <#{{ data.channel_id }}>",
    ),
    (
        "MESSAGE_REACTION_ADD",
        "{{ data.emoji.name }} added by <@{{ data.user_id }}> in <#{{ data.channel_id }}>",
    ),
    ("GUILD_MEMBER_ADD", "👋 **{{ data.user.username }}** joined"),
    ("GUILD_MEMBER_REMOVE", "**{{ data.user.username }}** left"),
    // Webhook events (docs/webhook-events.md).
    (
        "APPLICATION_AUTHORIZED",
        "🎉 **{{ data.user.username }}** added the app {% if data.guild %}to **{{ data.guild.name }}**{% else %}to their account{% endif %}",
    ),
    (
        "APPLICATION_DEAUTHORIZED",
        "**{{ data.user.username }}** removed the app",
    ),
    (
        "ENTITLEMENT_CREATE",
        "💎 <@{{ data.user_id }}> received SKU {{ data.sku_id }}",
    ),
    (
        "default",
        "`{{ type }}`{% if guild_id %} in guild {{ guild_id }}{% endif %}",
    ),
];

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Message {
    pub content: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub embeds: Vec<Embed>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Embed {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub footer: Option<Footer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub color: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Footer {
    pub text: String,
}

/// The compiled templates of one sink.
pub struct Templates {
    env: Environment<'static>,
    /// Event type → (has content, embed templates with their colors).
    messages: BTreeMap<String, (bool, Vec<Option<u32>>)>,
}

impl Templates {
    /// Compiles the configured templates over the defaults. Errors name the key
    /// (`templates.<TYPE>.content`) and minijinja's reason.
    pub fn compile(
        configured: &BTreeMap<String, MessageTemplate>,
    ) -> Result<Self, (String, String)> {
        let mut env = Environment::new();
        // Payloads vary by event and API version: a missing field renders empty
        // instead of failing the delivery.
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        let mut messages = BTreeMap::new();
        let mut all: BTreeMap<String, MessageTemplate> = DEFAULTS
            .iter()
            .map(|(t, c)| {
                (
                    (*t).to_owned(),
                    MessageTemplate {
                        content: Some((*c).to_owned()),
                        embeds: Vec::new(),
                    },
                )
            })
            .collect();
        all.extend(configured.clone());
        for (event_type, template) in &all {
            let mut add = |part: String, source: &str| {
                env.add_template_owned(format!("{event_type}.{part}"), source.to_owned())
                    .map_err(|e| (format!("templates.{event_type}.{part}"), e.to_string()))
            };
            if let Some(content) = &template.content {
                add("content".to_owned(), content)?;
            }
            let mut colors = Vec::new();
            for (
                i,
                EmbedTemplate {
                    title,
                    description,
                    url,
                    footer,
                    color,
                },
            ) in template.embeds.iter().enumerate()
            {
                for (name, source) in [
                    ("title", title),
                    ("description", description),
                    ("url", url),
                    ("footer", footer),
                ] {
                    if let Some(source) = source {
                        add(format!("embeds.{i}.{name}"), source)?;
                    }
                }
                colors.push(*color);
            }
            messages.insert(event_type.clone(), (template.content.is_some(), colors));
        }
        Ok(Self { env, messages })
    }

    /// Renders the message for one envelope, within Discord's limits.
    pub fn render(&self, body: &Body<'_>) -> Result<Message, String> {
        let env = body
            .envelope()
            .map_err(|e| format!("not an envelope: {e}"))?;
        let data: Value = serde_json::from_str(env.data.get()).unwrap_or(Value::Null);
        let ctx = minijinja::context! {
            id => env.id.as_ref(),
            type => env.event_type.as_ref(),
            guild_id => env.guild_id.as_deref(),
            shard => env.shard,
            seq => env.seq,
            received_at => env.received_at.as_ref(),
            occurred_at => env.occurred_at.as_deref(),
            source => env.source.as_str(),
            data => data,
        };
        let key = if self.messages.contains_key(env.event_type.as_ref()) {
            env.event_type.as_ref()
        } else {
            "default"
        };
        let (has_content, colors) = &self.messages[key];
        let part = |name: &str| -> Result<Option<String>, String> {
            match self.env.get_template(&format!("{key}.{name}")) {
                Ok(t) => t
                    .render(&ctx)
                    .map(|s| Some(s.trim().to_owned()).filter(|s| !s.is_empty()))
                    .map_err(|e| format!("template {key}.{name} failed: {e}")),
                Err(_) => Ok(None),
            }
        };
        let mut message = Message {
            content: if *has_content {
                part("content")?.unwrap_or_default()
            } else {
                String::new()
            },
            embeds: Vec::new(),
        };
        for (i, color) in colors.iter().enumerate() {
            message.embeds.push(Embed {
                title: part(&format!("embeds.{i}.title"))?,
                description: part(&format!("embeds.{i}.description"))?,
                url: part(&format!("embeds.{i}.url"))?,
                footer: part(&format!("embeds.{i}.footer"))?.map(|text| Footer { text }),
                color: *color,
            });
        }
        enforce_limits(&mut message);
        if message.content.is_empty() && message.embeds.is_empty() {
            return Err(format!("template {key} rendered an empty message"));
        }
        Ok(message)
    }
}

/// Cuts `text` to `max` characters, ending with the visible marker when cut.
pub fn truncate(text: &mut String, max: usize) {
    if text.chars().count() <= max {
        return;
    }
    let keep = max.saturating_sub(TRUNCATED.chars().count());
    let cut = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
    text.truncate(cut);
    text.push_str(TRUNCATED);
}

fn embed_chars(e: &Embed) -> usize {
    let len = |s: &Option<String>| s.as_ref().map_or(0, |s| s.chars().count());
    len(&e.title) + len(&e.description) + e.footer.as_ref().map_or(0, |f| f.text.chars().count())
}

pub fn enforce_limits(m: &mut Message) {
    if m.embeds.len() > MAX_EMBEDS {
        let note = format!(
            "\n[{} more embed(s) not shown]",
            m.embeds.len() - MAX_EMBEDS
        );
        m.embeds.truncate(MAX_EMBEDS);
        truncate(&mut m.content, MAX_CONTENT - note.chars().count());
        m.content.push_str(&note);
    }
    truncate(&mut m.content, MAX_CONTENT);
    for e in &mut m.embeds {
        if let Some(t) = &mut e.title {
            truncate(t, MAX_TITLE);
        }
        if let Some(d) = &mut e.description {
            truncate(d, MAX_DESCRIPTION);
        }
        if let Some(f) = &mut e.footer {
            truncate(&mut f.text, MAX_FOOTER);
        }
    }
    // Over the total: shorten descriptions, last embed first.
    let mut total: usize = m.embeds.iter().map(embed_chars).sum();
    for e in m.embeds.iter_mut().rev() {
        if total <= MAX_EMBED_TOTAL {
            break;
        }
        if let Some(d) = &mut e.description {
            let len = d.chars().count();
            let excess = total - MAX_EMBED_TOTAL;
            let target = len.saturating_sub(excess).max(TRUNCATED.chars().count());
            truncate(d, target);
            total = total - len + d.chars().count();
        }
    }
    // Still over (titles and footers alone): drop embeds from the end.
    while m.embeds.iter().map(embed_chars).sum::<usize>() > MAX_EMBED_TOTAL {
        m.embeds.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &Templates, envelope: &[u8]) -> Result<Message, String> {
        t.render(&Body::new(&bytes::Bytes::copy_from_slice(envelope)))
    }

    const ENV: &[u8] = br#"{"id":"msg:1","source":"gateway","type":"MESSAGE_CREATE","shard":0,"seq":1,"guild_id":"81384788765712384","received_at":"2026-11-23T12:00:00.000Z","data":{"id":"1","channel_id":"290926798999357250","content":"Supa Hot @everyone","author":{"id":"53908099506183680","username":"Mason"}}}"#;

    #[test]
    fn defaults_render_per_event_type() {
        let t = Templates::compile(&BTreeMap::new()).unwrap();
        let m = render(&t, ENV).unwrap();
        assert_eq!(
            m.content,
            "**Mason** in <#290926798999357250>: Supa Hot @everyone"
        );
        let other = String::from_utf8_lossy(ENV).replace("MESSAGE_CREATE", "TYPING_START");
        assert_eq!(
            render(&t, other.as_bytes()).unwrap().content,
            "`TYPING_START` in guild 81384788765712384"
        );
    }

    #[test]
    fn webhook_events_have_built_in_messages() {
        let t = Templates::compile(&BTreeMap::new()).unwrap();
        let to_guild = br#"{"id":"wh:APPLICATION_AUTHORIZED:ab","source":"webhook","type":"APPLICATION_AUTHORIZED","shard":null,"seq":null,"guild_id":"42","received_at":"2026-11-23T12:00:00.000Z","occurred_at":"2026-11-23T11:59:59.123456","data":{"integration_type":0,"user":{"id":"5","username":"nelly"},"guild":{"id":"42","name":"Plants"}}}"#;
        assert_eq!(
            render(&t, to_guild).unwrap().content,
            "🎉 **nelly** added the app to **Plants**"
        );
        let to_account = br#"{"id":"wh:APPLICATION_AUTHORIZED:cd","source":"webhook","type":"APPLICATION_AUTHORIZED","shard":null,"seq":null,"guild_id":null,"received_at":"2026-11-23T12:00:00.000Z","occurred_at":"2026-11-23T11:59:59.123457","data":{"integration_type":1,"user":{"id":"5","username":"nelly"}}}"#;
        assert_eq!(
            render(&t, to_account).unwrap().content,
            "🎉 **nelly** added the app to their account"
        );
    }

    #[test]
    fn configured_templates_and_embeds() {
        let mut c = BTreeMap::new();
        c.insert(
            "MESSAGE_CREATE".to_owned(),
            MessageTemplate {
                content: None,
                embeds: vec![EmbedTemplate {
                    title: Some("{{ data.author.username }}".into()),
                    description: Some("{{ data.content }} {{ data.nothing.here }}".into()),
                    color: Some(0x5865F2),
                    ..EmbedTemplate::default()
                }],
            },
        );
        let m = render(&Templates::compile(&c).unwrap(), ENV).unwrap();
        assert_eq!(m.content, "");
        assert_eq!(m.embeds[0].title.as_deref(), Some("Mason"));
        assert_eq!(
            m.embeds[0].description.as_deref(),
            Some("Supa Hot @everyone")
        );
        assert_eq!(m.embeds[0].color, Some(0x5865F2));
    }

    #[test]
    fn bad_templates_name_the_key() {
        let mut c = BTreeMap::new();
        c.insert(
            "GUILD_MEMBER_ADD".to_owned(),
            MessageTemplate {
                content: Some("{{ data.user.username ".into()),
                embeds: vec![],
            },
        );
        let Err((key, reason)) = Templates::compile(&c) else {
            panic!("must fail")
        };
        assert_eq!(key, "templates.GUILD_MEMBER_ADD.content");
        assert!(!reason.is_empty());
    }

    #[test]
    fn limits_are_enforced_visibly() {
        let mut m = Message {
            content: "é".repeat(2500),
            embeds: (0..12)
                .map(|_| Embed {
                    title: Some("t".repeat(300)),
                    description: Some("d".repeat(4096)),
                    ..Embed::default()
                })
                .collect(),
        };
        enforce_limits(&mut m);
        assert_eq!(m.content.chars().count(), MAX_CONTENT);
        assert!(m.content.contains(TRUNCATED));
        assert!(m.content.ends_with("[2 more embed(s) not shown]"));
        assert_eq!(m.embeds.len(), MAX_EMBEDS);
        assert!(m.embeds.iter().map(embed_chars).sum::<usize>() <= MAX_EMBED_TOTAL);
        assert!(m.embeds[0].title.as_ref().unwrap().ends_with(TRUNCATED));
        assert!(
            m.embeds
                .iter()
                .filter_map(|e| e.description.as_ref())
                .any(|d| d.ends_with(TRUNCATED))
        );
        let mut short = Message {
            content: "ok".into(),
            embeds: vec![],
        };
        enforce_limits(&mut short);
        assert_eq!(short.content, "ok");
    }
}
