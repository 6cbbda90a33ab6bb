//! The JSON of every dispatch the simulator sends.
//!
//! Shapes follow Discord's documented examples (discord/discord-api-docs, "Example Message",
//! "Example Guild", "Example Guild Member", emoji and gateway examples; CC BY-SA 4.0), trimmed
//! to what a gateway consumer sees, and extended with the gateway-only fields (`guild_id`,
//! `member`, GUILD_CREATE's `joined_at`/`channels`/…). Every payload is checked against
//! twilight-model in the tests, so a real client library can deserialize it.

use crate::snowflake::{self, Monotonic, Snowflakes};
use crate::world::{Guild, User, World};
use rand::Rng;
use serde_json::{Value, json};

/// Discord's `type` for a guild text channel.
const GUILD_TEXT: u8 = 0;

/// Message contents. They exercise JSON escaping (quotes, backslashes, control characters,
/// non-BMP unicode) so a consumer that re-encodes payloads has to round-trip them exactly.
const CONTENTS: &[&str] = &[
    "Supa Hot", // the docs' example message
    "hello world",
    "Zoë says \"hi\" 👋",
    "path is C:\\Users\\relay\\cord",
    "日本語のメッセージです",
    "line one\nline two\ttabbed",
    "🔥🔥🔥",
    "json-ish {\"a\": [1, \"two\"]} inside text",
    "a \\\"quoted\\\" backslash and a bell \u{7}",
    "zero\u{200b}width and 𝕗𝕒𝕟𝕔𝕪",
    "</script><b>not html</b> & ampersands",
    "",
];

const UNICODE_EMOJI: &[&str] = &["🔥", "👍", "❤️", "😂", "🎉", "🏳️‍🌈"];

/// Custom emoji from the docs' emoji examples.
const CUSTOM_EMOJI: &[(u64, &str, bool)] = &[
    (41_771_983_429_993_937, "LUL", false),
    (41_771_983_429_993_938, "blobdance", true),
];

const ACTIVITIES: &[&str] = &[
    "Rocket League",
    "Save the Oxford Comma",
    "Minecraft",
    "Visual Studio Code",
];

const STATUSES: &[&str] = &["online", "idle", "dnd"];

/// The READY dispatch for a new session of `shard`.
pub fn ready(
    world: &World,
    shard: [u32; 2],
    session_id: &str,
    resume_url: &str,
    guild_ids: &[u64],
) -> String {
    let mut user = world.bot_user();
    user["verified"] = json!(true);
    user["mfa_enabled"] = json!(false);
    json!({
        "v": 10,
        "user": user,
        "guilds": guild_ids
            .iter()
            .map(|id| json!({"id": id.to_string(), "unavailable": true}))
            .collect::<Vec<_>>(),
        "session_id": session_id,
        "resume_gateway_url": resume_url,
        "shard": shard,
        "application": {"id": world.bot.application_id.to_string(), "flags": 0},
    })
    .to_string()
}

/// GUILD_CREATE for `guild`, as sent after READY (shaped like the docs' "Example Guild").
pub fn guild_create(world: &World, guild: &Guild, now_ms: u64) -> String {
    let id = guild.id.to_string();
    let channels: Vec<Value> = guild
        .channels
        .iter()
        .enumerate()
        .map(|(position, channel)| {
            json!({
                "id": channel.to_string(),
                "type": GUILD_TEXT,
                "name": if position == 0 { "general" } else { "random" },
                "position": position,
                "permission_overwrites": [],
                "topic": null,
                "nsfw": false,
                "last_message_id": null,
                "rate_limit_per_user": 0,
                "parent_id": null,
            })
        })
        .collect();
    let mut bot_member = member(snowflake::unix_ms_of(guild.id) + 60_000);
    bot_member["user"] = world.bot_user();
    let mut guild_json = json!({
        "id": id,
        "name": guild.name,
        "icon": null,
        "description": "A guild of the Relaycord simulator",
        "splash": null,
        "discovery_splash": null,
        "features": [],
        "emojis": [],
        "stickers": [],
        "banner": null,
        "owner_id": guild.owner_id.to_string(),
        "application_id": null,
        "afk_channel_id": null,
        "afk_timeout": 300,
        "system_channel_id": guild.channels.first().map(u64::to_string),
        "widget_enabled": false,
        "widget_channel_id": null,
        "verification_level": 1,
        "roles": [{
            // The @everyone role shares the guild's id.
            "id": id,
            "name": "@everyone",
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": null, "tertiary_color": null},
            "hoist": false,
            "icon": null,
            "unicode_emoji": null,
            "position": 0,
            "permissions": "1071698660929",
            "managed": false,
            "mentionable": false,
            "flags": 0,
        }],
        "default_message_notifications": 1,
        "mfa_level": 0,
        "explicit_content_filter": 2,
        "max_presences": null,
        "max_members": 250_000,
        "vanity_url_code": null,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "system_channel_flags": 0,
        "preferred_locale": "en-US",
        "rules_channel_id": null,
        "public_updates_channel_id": null,
        "safety_alerts_channel_id": null,
        "nsfw_level": 0,
        "premium_progress_bar_enabled": false,
        "max_video_channel_users": 25,
        "max_stage_video_channel_users": 50,
        "incidents_data": null,
    });
    // Gateway-only GUILD_CREATE fields (a separate literal: one would exceed json!'s recursion).
    let gateway_fields = json!({
        "joined_at": iso8601(now_ms),
        "large": false,
        "unavailable": false,
        "member_count": world.users.len() + 1,
        "voice_states": [],
        "members": [bot_member],
        "channels": channels,
        "threads": [],
        "presences": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
    });
    if let (Value::Object(guild), Value::Object(extra)) = (&mut guild_json, gateway_fields) {
        guild.extend(extra);
    }
    guild_json.to_string()
}

/// The kinds of event the generator makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    MessageCreate,
    ReactionAdd,
    MemberAdd,
    PresenceUpdate,
}

impl EventKind {
    pub const fn event_type(self) -> &'static str {
        match self {
            Self::MessageCreate => "MESSAGE_CREATE",
            Self::ReactionAdd => "MESSAGE_REACTION_ADD",
            Self::MemberAdd => "GUILD_MEMBER_ADD",
            Self::PresenceUpdate => "PRESENCE_UPDATE",
        }
    }
}

/// Sources of uniqueness shared by every event of one simulator.
#[derive(Debug, Default)]
pub struct Uniques {
    pub ids: Snowflakes,
    /// Activity `created_at` values: unique, so two presence updates never look the same.
    pub activity_ms: Monotonic,
}

/// Builds the `d` of one generated event of `kind` in `guild`.
///
/// Distinctness: messages, new members and reacted-to messages get fresh snowflakes, and
/// presence updates a fresh activity `created_at`, so no two generated events are equal.
pub fn event(
    kind: EventKind,
    world: &World,
    guild: &Guild,
    uniques: &Uniques,
    rng: &mut impl Rng,
) -> String {
    let user = &world.users[rng.random_range(0..world.users.len())];
    let channel = guild.channels[rng.random_range(0..guild.channels.len())];
    let guild_id = guild.id.to_string();
    let value = match kind {
        EventKind::MessageCreate => {
            let id = uniques.ids.next();
            // Roughly one message in 50 pings everyone, as real servers do now and then.
            let everyone = rng.random_ratio(1, 50);
            let text = CONTENTS[rng.random_range(0..CONTENTS.len())];
            let content = if everyone {
                format!("@everyone {text}")
            } else {
                text.to_owned()
            };
            json!({
                "id": id.to_string(),
                "channel_id": channel.to_string(),
                "guild_id": guild_id,
                "author": user_json(user),
                "member": member(snowflake::unix_ms_of(user.id)),
                "content": content,
                "timestamp": iso8601(snowflake::unix_ms_of(id)),
                "edited_timestamp": null,
                "tts": false,
                "mention_everyone": everyone,
                "mentions": [],
                "mention_roles": [],
                "attachments": [],
                "embeds": [],
                "pinned": false,
                "type": 0,
                "flags": 0,
                "components": [],
                "nonce": id.to_string(),
            })
        }
        EventKind::ReactionAdd => {
            // A fresh message id per reaction keeps each (user, message, emoji) unique.
            let message_id = uniques.ids.next();
            let author = &world.users[rng.random_range(0..world.users.len())];
            let emoji = if rng.random_bool(0.7) {
                json!({"id": null, "name": UNICODE_EMOJI[rng.random_range(0..UNICODE_EMOJI.len())]})
            } else {
                let (id, name, animated) = CUSTOM_EMOJI[rng.random_range(0..CUSTOM_EMOJI.len())];
                json!({"id": id.to_string(), "name": name, "animated": animated})
            };
            let mut member = member(snowflake::unix_ms_of(user.id));
            member["user"] = user_json(user);
            json!({
                "user_id": user.id.to_string(),
                "type": 0,
                "message_id": message_id.to_string(),
                "message_author_id": author.id.to_string(),
                "member": member,
                "emoji": emoji,
                "channel_id": channel.to_string(),
                "burst": false,
                "burst_colors": [],
                "guild_id": guild_id,
            })
        }
        EventKind::MemberAdd => {
            // Someone new: a user created just now joins right away.
            let id = uniques.ids.next();
            let now = snowflake::unix_ms_of(id);
            let mut member = member(now);
            member["user"] = json!({
                "id": id.to_string(),
                "username": format!("newcomer{}", id % 100_000),
                "discriminator": "0",
                "global_name": user.global_name,
                "avatar": null,
                "public_flags": 0,
            });
            member["guild_id"] = json!(guild_id);
            member
        }
        EventKind::PresenceUpdate => {
            let status = STATUSES[rng.random_range(0..STATUSES.len())];
            json!({
                "user": {"id": user.id.to_string()},
                "guild_id": guild_id,
                "status": status,
                "activities": [{
                    "name": ACTIVITIES[rng.random_range(0..ACTIVITIES.len())],
                    "type": 0,
                    "created_at": uniques.activity_ms.next_at_least(snowflake::unix_ms()),
                }],
                "client_status": {"desktop": status},
            })
        }
    };
    value.to_string()
}

fn user_json(user: &User) -> Value {
    json!({
        "id": user.id.to_string(),
        "username": user.username,
        "discriminator": "0",
        "global_name": user.global_name,
        "avatar": null,
        "public_flags": 0,
    })
}

/// A guild member without `user` (as in MESSAGE_CREATE); callers add `user` where Discord does.
fn member(joined_ms: u64) -> Value {
    json!({
        "nick": null,
        "avatar": null,
        "banner": null,
        "roles": [],
        "joined_at": iso8601(joined_ms),
        "premium_since": null,
        "deaf": false,
        "mute": false,
        "flags": 0,
        "pending": false,
        "communication_disabled_until": null,
    })
}

/// Discord's timestamp format, e.g. `2017-07-11T17:27:07.299000+00:00`.
pub fn iso8601(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}000+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm), so the
/// crate needs no date library for one format.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    use std::collections::HashSet;

    const KINDS: [EventKind; 4] = [
        EventKind::MessageCreate,
        EventKind::ReactionAdd,
        EventKind::MemberAdd,
        EventKind::PresenceUpdate,
    ];

    fn world() -> World {
        World::new(&snowflake::guild_ids(4, 2))
    }

    /// Wraps `d` the way the gateway does and lets twilight-model deserialize it.
    fn twilight_parses(event_type: &str, d: &str) {
        let frame = format!(r#"{{"op":0,"t":"{event_type}","s":1,"d":{d}}}"#);
        let parsed = twilight_gateway::parse(frame, twilight_gateway::EventTypeFlags::all());
        assert!(
            matches!(parsed, Ok(Some(_))),
            "{event_type} does not deserialize: {parsed:?}\n{d}"
        );
    }

    #[test]
    fn iso8601_matches_discord_format() {
        assert_eq!(
            iso8601(1_499_793_427_299),
            "2017-07-11T17:17:07.299000+00:00"
        );
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000000+00:00");
        assert_eq!(
            iso8601(4_107_542_399_999),
            "2100-02-28T23:59:59.999000+00:00"
        );
    }

    #[test]
    fn generated_events_round_trip_and_are_distinct() {
        let world = world();
        let uniques = Uniques::default();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut seen = HashSet::new();
        let mut contents = HashSet::new();
        for i in 0..2_000 {
            let kind = KINDS[i % KINDS.len()];
            let guild = &world.guilds[i % world.guilds.len()];
            let d = event(kind, &world, guild, &uniques, &mut rng);
            // Round trip: parse and re-serialize without losing anything (escaping included).
            let value: Value = serde_json::from_str(&d).expect("valid JSON");
            assert_eq!(serde_json::to_string(&value).unwrap(), d);
            assert_eq!(value["guild_id"], json!(guild.id.to_string()));
            if let Some(content) = value["content"].as_str() {
                contents.insert(content.to_owned());
            }
            assert!(seen.insert(d), "duplicate {kind:?} event");
        }
        // The escaping-heavy contents really were produced.
        assert!(contents.iter().any(|c| c.contains('\\')));
        assert!(contents.iter().any(|c| c.contains('"')));
        assert!(contents.iter().any(|c| !c.is_ascii()));
    }

    #[test]
    fn payloads_deserialize_with_twilight_model() {
        let world = world();
        let uniques = Uniques::default();
        let mut rng = SmallRng::seed_from_u64(1);
        for kind in KINDS {
            for _ in 0..50 {
                let d = event(kind, &world, &world.guilds[0], &uniques, &mut rng);
                twilight_parses(kind.event_type(), &d);
            }
        }
        let ids: Vec<u64> = world.guilds.iter().map(|g| g.id).collect();
        twilight_parses("READY", &ready(&world, [1, 2], "abc", "ws://x", &ids));
        twilight_parses(
            "GUILD_CREATE",
            &guild_create(&world, &world.guilds[0], snowflake::unix_ms()),
        );
    }
}
