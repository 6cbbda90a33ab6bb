//! Connecting to NATS as the `[nats]` section says: one or more server URLs, then at most
//! one way of authenticating (creds file, nkey seed, token, or user and password) and
//! optional TLS. Every role and tool connects through here, so they all accept the same keys;
//! what can be checked without connecting is `NatsConfig::validate`, in the bus.

use std::time::Duration;

use anyhow::Context;
use async_nats::ConnectOptions;

use crate::config::NatsConfig;

/// A connected client named `relaycord-<role>`.
pub async fn connect(nats: &NatsConfig, role: &str) -> anyhow::Result<async_nats::Client> {
    nats.validate()?;
    let mut options = ConnectOptions::new()
        .name(format!("relaycord-{role}"))
        .connection_timeout(Duration::from_secs(10))
        .event_callback(|event| async move { on_event(event) });
    if let Some(path) = &nats.creds_file {
        options = options
            .credentials_file(path)
            .await
            .with_context(|| format!("nats.creds_file: cannot use {}", path.display()))?;
    } else if !nats.nkey_seed.is_empty() {
        options = options.nkey(nats.nkey_seed.expose().to_owned());
    } else if !nats.token.is_empty() {
        options = options.token(nats.token.expose().to_owned());
    } else if !nats.user.is_empty() {
        options = options.user_and_password(nats.user.clone(), nats.password.expose().to_owned());
    }
    if let Some(ca) = &nats.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&nats.tls_cert_file, &nats.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if nats.tls_required {
        options = options.require_tls(true);
    }
    // Neither the URL nor the client's error may print `user:password@` of nats.url.
    let url = relaycord_bus::redact::userinfo(&nats.url);
    options.connect(nats.server_addrs()?).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to NATS at {url} (nats.url / RELAYCORD_NATS__URL; credentials: \
                 nats.creds_file, nats.nkey_seed, nats.token or nats.user + nats.password): {}",
            relaycord_bus::redact::userinfo(&format!("{e:#}"))
        )
    })
}

/// Server errors are otherwise invisible: a publish the server's permissions forbid is
/// dropped with nothing but this asynchronous error, and its JetStream ack just times out.
fn on_event(event: async_nats::Event) {
    match event {
        async_nats::Event::ServerError(error) => {
            let text = error.to_string();
            match relaycord_bus::denials::record(&text) {
                Some(subject) => tracing::error!(
                    %subject,
                    "NATS refused a publish: this user has no permission to publish to \
                     {subject}; allow it in the user's `permissions.publish`"
                ),
                None => tracing::warn!(error = %text, "NATS server error"),
            }
        }
        // async-nats logs these itself only when no callback is set: keep them at the
        // level an operator watching a pod's log sees.
        async_nats::Event::Disconnected => tracing::warn!("NATS connection lost; reconnecting"),
        async_nats::Event::Connected => tracing::info!("NATS connected"),
        other => tracing::info!(event = %other, "NATS connection event"),
    }
}
