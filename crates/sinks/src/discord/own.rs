//! The sink's own messages, recognised so that relaying MESSAGE_CREATE into a channel the
//! bot can see does not feed on itself: every message the sink posts comes back on the
//! gateway as a new MESSAGE_CREATE, which it would post again, forever.
//!
//! A webhook's messages carry its id (`webhook_id`, and as the author's id), which is in
//! the webhook URL. The bot's user id is the first part of its token (base64 of the id);
//! when the token is not shaped like that, it is asked once from `GET /users/@me`.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use relaycord_bus::Secret;
use relaycord_bus::subject::is_snowflake;
use reqwest::header::AUTHORIZATION;
use tokio::sync::OnceCell;

use crate::{Body, Outcome};

/// Who this sink posts as.
pub(super) enum Own {
    Webhook(String),
    Bot {
        /// `{api_base}/v10/users/@me`.
        me_url: String,
        token: Secret,
        user_id: OnceCell<String>,
    },
}

impl Own {
    pub fn webhook(id: &str) -> Self {
        Self::Webhook(id.to_owned())
    }

    pub fn bot(api_base: &str, token: &Secret) -> Self {
        let user_id = OnceCell::new();
        if let Some(id) = user_id_of_token(token.expose()) {
            let _ = user_id.set(id);
        }
        Self::Bot {
            me_url: format!("{api_base}/v10/users/@me"),
            token: token.clone(),
            user_id,
        }
    }

    /// Whether the sink itself posted this event's message. `Err` (an outcome) when the
    /// bot's id is needed but cannot be learnt now.
    pub async fn posted(&self, client: &reqwest::Client, body: &Body<'_>) -> Result<bool, Outcome> {
        let author = body.author();
        // Only a bot or a webhook can be this sink: people's messages need no lookup.
        if !author.bot {
            return Ok(false);
        }
        let own = match self {
            Self::Webhook(id) => id.as_str(),
            Self::Bot {
                me_url,
                token,
                user_id,
            } => user_id
                .get_or_try_init(|| users_me(client, me_url, token))
                .await?
                .as_str(),
        };
        Ok(author.ids.iter().any(|id| id == own))
    }
}

/// A bot token is `base64(user id).timestamp.hmac`.
fn user_id_of_token(token: &str) -> Option<String> {
    let first = token.split('.').next()?.trim_end_matches('=');
    let bytes = STANDARD_NO_PAD
        .decode(first)
        .or_else(|_| URL_SAFE_NO_PAD.decode(first))
        .ok()?;
    let id = String::from_utf8(bytes).ok()?;
    is_snowflake(&id).then_some(id)
}

async fn users_me(client: &reqwest::Client, url: &str, token: &Secret) -> Result<String, Outcome> {
    let failed = |reason: String, status: Option<u16>| {
        let reason = format!("cannot learn the bot's user id (to skip its own messages): {reason}");
        match status {
            Some(s) if (400..500).contains(&s) && s != 429 => Outcome::Permanent { reason, status },
            _ => Outcome::Retry {
                reason,
                status,
                after: None,
            },
        }
    };
    // A refused @me (bad token) counts toward Discord's per-IP ban like any other call.
    let invalid = relaycord_bus::InvalidRequests::process();
    invalid.admit().await;
    let response = client
        .get(url)
        .header(AUTHORIZATION, format!("Bot {}", token.expose()))
        .send()
        .await
        .map_err(|e| failed(e.without_url().to_string(), None))?;
    let status = response.status();
    let scope = response
        .headers()
        .get("x-ratelimit-scope")
        .map(|v| v.as_bytes().to_vec());
    invalid.observe(status.as_u16(), scope.as_deref());
    if !status.is_success() {
        return Err(failed(
            format!("GET /users/@me: HTTP {status}"),
            Some(status.as_u16()),
        ));
    }
    let body = crate::response::read(response)
        .await
        .map_err(|e| failed(format!("GET /users/@me: {e}"), None))?;
    let me: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| failed(format!("GET /users/@me: not JSON ({e})"), None))?;
    me["id"]
        .as_str()
        .filter(|id| is_snowflake(id))
        .map(str::to_owned)
        .ok_or_else(|| failed("GET /users/@me has no id".to_owned(), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bot_id_is_the_tokens_first_part() {
        // Discord's documented example token shape: base64 of the id, then two parts.
        let token = format!(
            "{}.GhJkLm.abcdefghijklmnopqrstuvwxyz0123456789AB",
            STANDARD_NO_PAD.encode("80351110224678912")
        );
        assert_eq!(
            user_id_of_token(&token).as_deref(),
            Some("80351110224678912")
        );
        assert_eq!(
            user_id_of_token("MTIzNDU2Nzg5MDEyMzQ1Njc4.x.y").as_deref(),
            Some("123456789012345678")
        );
        assert_eq!(user_id_of_token("sim-token"), None);
        assert_eq!(user_id_of_token(""), None);
        assert_eq!(user_id_of_token("bm90IGFuIGlk.x.y"), None, "not an id");
    }
}
