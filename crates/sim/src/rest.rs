//! HTTP side: the gateway websocket route and the REST endpoints a gateway client needs.

use crate::gateway;
use crate::state::Shared;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(gateway::upgrade))
        .route("/api/gateway", get(gateway_info))
        .route("/api/v10/gateway", get(gateway_info))
        .route("/api/gateway/bot", get(gateway_bot))
        .route("/api/v10/gateway/bot", get(gateway_bot))
        .route("/api/users/@me", get(current_user))
        .route("/api/v10/users/@me", get(current_user))
        .merge(crate::interactions::routes(&shared))
        .merge(crate::discord_rest::routes(&shared))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "404: Not Found") })
        .with_state(shared)
}

/// `GET /gateway`: no authentication, like Discord.
async fn gateway_info(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    Json(json!({ "url": shared.gateway_url() }))
}

/// `GET /gateway/bot`, shaped like the docs' example response.
async fn gateway_bot(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let expected = format!("Bot {}", shared.config.token);
    let authorized = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|value| value.as_bytes() == expected.as_bytes());
    if !authorized {
        return error(StatusCode::UNAUTHORIZED, "401: Unauthorized");
    }
    let (remaining, reset_after) = shared.session_start_limit();
    Json(json!({
        "url": shared.gateway_url(),
        "shards": shared.recommended_shards(),
        "session_start_limit": {
            "total": shared.config.session_start_limit,
            "remaining": remaining,
            "reset_after": reset_after.as_millis() as u64,
            "max_concurrency": shared.config.max_concurrency,
        },
    }))
    .into_response()
}

/// `GET /users/@me`: the bot user, as READY's `user`.
async fn current_user(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let expected = format!("Bot {}", shared.config.token);
    let authorized = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|value| value.as_bytes() == expected.as_bytes());
    if !authorized {
        return error(StatusCode::UNAUTHORIZED, "401: Unauthorized");
    }
    Json(shared.world.bot_user()).into_response()
}

/// Discord's error body: `{"message": "...", "code": 0}`.
fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "message": message, "code": 0 }))).into_response()
}
