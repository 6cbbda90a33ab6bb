//! `GET /gateway/bot`: shard count, gateway URL and identify limits.

use std::time::Duration;

use relaycord_bus::Secret;
use serde::Deserialize;

use crate::error::{IngestError, IngestErrorKind};

#[derive(Debug, Clone, Deserialize)]
pub struct GatewayBot {
    pub url: String,
    pub shards: u32,
    pub session_start_limit: SessionStartLimit,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct SessionStartLimit {
    pub total: u32,
    pub remaining: u32,
    /// Milliseconds until `remaining` resets.
    pub reset_after: u64,
    pub max_concurrency: u16,
}

impl SessionStartLimit {
    pub fn reset_after(&self) -> Duration {
        Duration::from_millis(self.reset_after)
    }
}

/// [`gateway_bot`] with a client of its own, for one-off callers (the reshard command).
pub async fn discover(api_base: &str, token: &Secret) -> Result<GatewayBot, IngestError> {
    relaycord_bus::install_crypto_provider();
    gateway_bot(&reqwest::Client::new(), api_base, token).await
}

/// Asks Discord (or the simulator at `api_base`) how to connect.
pub async fn gateway_bot(
    http: &reqwest::Client,
    api_base: &str,
    token: &Secret,
) -> Result<GatewayBot, IngestError> {
    let url = format!("{}/v10/gateway/bot", api_base.trim_end_matches('/'));
    let response = http
        .get(&url)
        .header("Authorization", format!("Bot {}", token.expose()))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .map_err(|e| {
            IngestError::with_source(IngestErrorKind::Discovery, format!("GET {url} failed"), e)
        })?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(IngestError::new(
            IngestErrorKind::Unauthorized,
            format!(
                "GET {url} answered 401: the bot token (discord.token / DISCORD_TOKEN) is not valid"
            ),
        ));
    }
    if !status.is_success() {
        return Err(IngestError::new(
            IngestErrorKind::Discovery,
            format!("GET {url} answered {status}"),
        ));
    }
    response.json().await.map_err(|e| {
        IngestError::with_source(
            IngestErrorKind::Discovery,
            format!("GET {url}: unexpected body"),
            e,
        )
    })
}
