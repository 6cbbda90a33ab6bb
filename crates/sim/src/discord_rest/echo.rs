//! Messages posted through the REST side come back on the gateway, as on Discord: every
//! message created (by the bot on a channel route, or by an incoming webhook) is
//! dispatched as MESSAGE_CREATE on the shard of its guild, authored by the bot user, or
//! by the webhook with `webhook_id` set. That is what makes a sink relaying
//! MESSAGE_CREATE into a channel the bot can see loop, if it does not skip its own posts.
//!
//! A channel of a simulated guild gives a guild event on that guild's shard; any other
//! channel is treated as a DM (no `guild_id`, shard 0). A webhook posts into the channel
//! set with [`super::DiscordRest::set_webhook_channel`], else the first guild's first
//! channel. A REST side started alone ([`super::DiscordRest::start`]) has no gateway and
//! dispatches nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use serde_json::{Value, json};

use super::lock;
use crate::payloads::iso8601;
use crate::snowflake;
use crate::state::Shared;

#[derive(Debug, Default)]
pub(super) struct Echo {
    gateway: OnceLock<Weak<Shared>>,
    webhook_channels: Mutex<HashMap<String, String>>,
}

impl Echo {
    pub fn attach(&self, shared: &Arc<Shared>) {
        let _ = self.gateway.set(Arc::downgrade(shared));
    }

    fn shared(&self) -> Option<Arc<Shared>> {
        self.gateway.get().and_then(Weak::upgrade)
    }

    pub fn set_webhook_channel(&self, webhook: &str, channel: &str) {
        lock(&self.webhook_channels).insert(webhook.to_owned(), channel.to_owned());
    }

    /// The channel a webhook posts into.
    pub fn webhook_channel(&self, webhook: &str) -> String {
        if let Some(channel) = lock(&self.webhook_channels).get(webhook) {
            return channel.clone();
        }
        self.shared()
            .and_then(|s| {
                let guild = s.world.guilds.first()?;
                guild.channels.first().map(u64::to_string)
            })
            .unwrap_or_else(|| webhook.to_owned())
    }

    /// Dispatches MESSAGE_CREATE for a message the REST side created; `webhook` is the
    /// posting webhook's id and the name it gave, if any.
    pub fn message_created(&self, created: &Value, webhook: Option<(&str, Option<&str>)>) {
        let Some(shared) = self.shared() else {
            return;
        };
        let channel = created["channel_id"]
            .as_str()
            .and_then(|c| c.parse::<u64>().ok());
        let guild = shared
            .world
            .guilds
            .iter()
            .find(|g| channel.is_some_and(|c| g.channels.contains(&c)))
            .map(|g| g.id);
        let id = created["id"]
            .as_str()
            .and_then(|i| i.parse::<u64>().ok())
            .unwrap_or_default();
        let mut d = created.clone();
        match webhook {
            Some((webhook, name)) => {
                d["author"] = json!({
                    "id": webhook,
                    "username": name.unwrap_or("Captain Hook"),
                    "discriminator": "0000",
                    "avatar": null,
                    "bot": true,
                });
                d["webhook_id"] = json!(webhook);
            }
            None => d["author"] = shared.world.bot_user(),
        }
        if let Some(guild) = guild {
            d["guild_id"] = json!(guild.to_string());
        }
        for (key, value) in [
            ("timestamp", json!(iso8601(snowflake::unix_ms_of(id)))),
            ("edited_timestamp", Value::Null),
            ("tts", json!(false)),
            ("mention_roles", json!([])),
            ("attachments", json!([])),
            ("pinned", json!(false)),
            ("flags", json!(0)),
            ("components", json!([])),
        ] {
            d[key] = value;
        }
        let delivered = match guild {
            // Every session covering the guild sees it, as the generator's events.
            Some(guild) => {
                let sent = shared.dispatch_guild(
                    &"MESSAGE_CREATE".into(),
                    &d.to_string().into(),
                    guild,
                    None,
                );
                !sent.is_empty()
            }
            None => shared
                .dispatch(0, "MESSAGE_CREATE", d.to_string(), None)
                .is_ok(),
        };
        if !delivered {
            tracing::debug!("posted message not dispatched: no session to receive it");
        }
    }
}
