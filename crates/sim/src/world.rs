//! The simulated world: the bot, its guilds (with channels) and a pool of users.
//!
//! Deterministic for a given config, so ids are the same from one run to the next.

use crate::snowflake;
use serde_json::{Value, json};

/// Usernames and display names; the display names need JSON escaping or are not ASCII.
const USER_NAMES: &[(&str, &str)] = &[
    ("mason", "Mason"),
    ("zoe", "Zoë"),
    ("lukasz", "Łukasz"),
    ("yamada", "山田"),
    ("obrien", "O'Brien"),
    ("quote", "\"Quotes\" McGee"),
    ("slash", "back\\slash"),
    ("emoji", "🦀 Ferris"),
];

/// The bot the simulator pretends the client is.
#[derive(Debug)]
pub struct Bot {
    pub user_id: u64,
    pub application_id: u64,
}

#[derive(Debug)]
pub struct Guild {
    pub id: u64,
    pub name: String,
    pub owner_id: u64,
    pub channels: Vec<u64>,
}

#[derive(Debug)]
pub struct User {
    pub id: u64,
    pub username: String,
    pub global_name: String,
}

/// Fixed fixture data for one simulator: deterministic, so ids repeat between runs.
#[derive(Debug)]
pub struct World {
    pub bot: Bot,
    pub guilds: Vec<Guild>,
    pub users: Vec<User>,
}

impl World {
    pub fn new(guild_ids: &[u64]) -> Self {
        // 2017-ish ids for the fixed users and the bot, made of the same parts as real ones.
        const USERS_CREATED_MS: u64 = 1_490_000_000_000;
        let users: Vec<User> = (0..32u64)
            .map(|i| {
                let (username, global_name) = USER_NAMES[i as usize % USER_NAMES.len()];
                User {
                    id: snowflake::compose(USERS_CREATED_MS + i * 86_400_000, i),
                    username: format!("{username}{i}"),
                    global_name: global_name.to_owned(),
                }
            })
            .collect();
        let guilds = guild_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| Guild {
                id,
                name: format!("Simulated Guild {i}"),
                owner_id: users[i % users.len()].id,
                // Channels are created right after their guild: same timestamp, next increments.
                channels: (1..=2).map(|n| id + n).collect(),
            })
            .collect();
        Self {
            bot: Bot {
                user_id: snowflake::compose(USERS_CREATED_MS - 1_000, 0),
                application_id: snowflake::compose(USERS_CREATED_MS - 1_000, 0),
            },
            guilds,
            users,
        }
    }

    pub fn bot_user(&self) -> Value {
        json!({
            "id": self.bot.user_id.to_string(),
            "username": "relaycord-sim",
            "discriminator": "0",
            "global_name": null,
            "avatar": null,
            "bot": true,
            "flags": 0,
        })
    }
}
