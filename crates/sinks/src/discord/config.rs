//! `type = "discord"` sink configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use relaycord_bus::Secret;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Posts a message per event: to an incoming webhook, or to a channel as the bot.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscordSinkConfig {
    /// Incoming webhook, `https://discord.com/api/webhooks/<id>/<token>` (a secret).
    /// Set this or `channel_id`.
    #[serde(default)]
    pub webhook_url: Option<Secret>,
    /// Channel to post to as the bot; a template such as `"{channel_id}"` posts each
    /// event into its own channel. Needs `token`.
    #[serde(default)]
    pub channel_id: Option<String>,
    /// Bot token for `channel_id` (a secret). Empty: the `DISCORD_TOKEN` environment
    /// variable.
    #[serde(default)]
    pub token: Option<Secret>,
    /// REST base URL; the simulator's `http://127.0.0.1:PORT/api` in tests.
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// Message templates by event type (`MESSAGE_CREATE`, ...; `default` for the rest),
    /// in minijinja syntax over the envelope (`id`, `type`, `guild_id`, `data`...).
    /// Types without one use the built-in template.
    #[serde(default)]
    pub templates: BTreeMap<String, MessageTemplate>,
    /// Webhook mode: name and avatar shown for the messages.
    #[serde(default)]
    pub username: Option<String>,
    /// Webhook mode: avatar image URL shown for the messages.
    #[serde(default)]
    pub avatar_url: Option<String>,
    /// Who relayed text may ping. Default: nobody (`{"parse": []}`), so a relayed
    /// `@everyone` or `<@id>` is shown but notifies no one.
    #[serde(default)]
    pub allowed_mentions: AllowedMentions,
    /// Bot requests per second over every route, in this process (Discord's global limit
    /// is 50 per bot token: replicas sharing a token each take a share; 90% of it is used).
    #[serde(default = "default_global_rate")]
    pub global_rate: u32,
    /// Time allowed for one request.
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    /// Skip events caused by this sink's own bot user or webhook, so that relaying
    /// MESSAGE_CREATE into a channel the bot can see does not post its own posts again,
    /// forever. `false` relays them too.
    #[serde(default = "default_true")]
    pub skip_own_messages: bool,
}

fn default_true() -> bool {
    true
}

/// A message's parts; each string is a minijinja template.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageTemplate {
    /// The message text (Discord takes up to 2,000 characters).
    #[serde(default)]
    pub content: Option<String>,
    /// Embeds (Discord takes up to 10 per message).
    #[serde(default)]
    pub embeds: Vec<EmbedTemplate>,
}

/// One embed's parts; each string is a minijinja template.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedTemplate {
    /// Bold heading of the embed.
    #[serde(default)]
    pub title: Option<String>,
    /// Body text.
    #[serde(default)]
    pub description: Option<String>,
    /// Link the title points to.
    #[serde(default)]
    pub url: Option<String>,
    /// Small text at the bottom.
    #[serde(default)]
    pub footer: Option<String>,
    /// RGB as a number, e.g. `0x5865F2`.
    #[serde(default)]
    pub color: Option<u32>,
}

/// Discord's `allowed_mentions` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowedMentions {
    /// Any of `users`, `roles`, `everyone`.
    #[serde(default)]
    pub parse: Vec<String>,
    /// User ids that may be pinged (without `users` in `parse`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Role ids that may be pinged (without `roles` in `parse`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

impl DiscordSinkConfig {
    /// A webhook-mode sink with every other option at its default.
    pub fn webhook(url: impl Into<String>) -> Self {
        Self {
            webhook_url: Some(Secret::new(url.into())),
            ..Self::empty()
        }
    }

    /// A bot-mode sink posting to `channel_id` with `token`.
    pub fn channel(
        channel_id: impl Into<String>,
        token: impl Into<String>,
        api_base: impl Into<String>,
    ) -> Self {
        Self {
            channel_id: Some(channel_id.into()),
            token: Some(Secret::new(token.into())),
            api_base: api_base.into(),
            ..Self::empty()
        }
    }

    fn empty() -> Self {
        Self {
            webhook_url: None,
            channel_id: None,
            token: None,
            api_base: default_api_base(),
            templates: BTreeMap::new(),
            username: None,
            avatar_url: None,
            allowed_mentions: AllowedMentions::default(),
            global_rate: default_global_rate(),
            timeout: default_timeout(),
            skip_own_messages: true,
        }
    }
}

fn default_api_base() -> String {
    relaycord_bus::DISCORD_API_BASE.to_owned()
}

fn default_global_rate() -> u32 {
    50
}

fn default_timeout() -> Duration {
    Duration::from_secs(15)
}
