//! Connecting to NATS as the `[nats]` section says: one or more server URLs, then at most
//! one way of authenticating (creds file, nkey seed, token, or user and password) and
//! optional TLS. Every role and tool connects through here, so they all accept the same keys.

use std::time::Duration;

use anyhow::Context;
use async_nats::{ConnectOptions, ServerAddr};

use crate::config::{ConfigError, NatsConfig, invalid};

/// Checks what can be checked without connecting, naming the key to fix.
pub fn validate(nats: &NatsConfig) -> Result<(), ConfigError> {
    server_addrs(&nats.url)?;
    let methods = [
        ("nats.creds_file", nats.creds_file.is_some()),
        ("nats.nkey_seed", !nats.nkey_seed.is_empty()),
        ("nats.token", !nats.token.is_empty()),
        ("nats.user", !nats.user.is_empty()),
    ];
    let chosen: Vec<&str> = methods.iter().filter(|m| m.1).map(|m| m.0).collect();
    if chosen.len() > 1 {
        return Err(invalid(
            chosen[1],
            format!("set only one way to authenticate; {} is set too", chosen[0]),
        ));
    }
    both_or_neither(
        ("nats.user", !nats.user.is_empty()),
        ("nats.password", !nats.password.is_empty()),
        "user and password go together (RELAYCORD_NATS__PASSWORD for the secret)",
    )?;
    both_or_neither(
        ("nats.tls_cert_file", nats.tls_cert_file.is_some()),
        ("nats.tls_key_file", nats.tls_key_file.is_some()),
        "a client certificate needs its key: set both tls_cert_file and tls_key_file",
    )?;
    for (key, path) in [
        ("nats.creds_file", &nats.creds_file),
        ("nats.tls_ca_file", &nats.tls_ca_file),
        ("nats.tls_cert_file", &nats.tls_cert_file),
        ("nats.tls_key_file", &nats.tls_key_file),
    ] {
        if let Some(path) = path
            && !path.is_file()
        {
            return Err(invalid(
                key,
                format!("{} is not a readable file", path.display()),
            ));
        }
    }
    Ok(())
}

/// Two keys that only make sense together; the error names the one that is missing.
fn both_or_neither(a: (&str, bool), b: (&str, bool), problem: &str) -> Result<(), ConfigError> {
    match (a.1, b.1) {
        (true, false) => Err(invalid(b.0, problem)),
        (false, true) => Err(invalid(a.0, problem)),
        _ => Ok(()),
    }
}

/// `url` may list several servers of one cluster, comma-separated; the client picks one
/// and fails over to the others.
fn server_addrs(url: &str) -> Result<Vec<ServerAddr>, ConfigError> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<ServerAddr>()
                .map_err(|e| invalid("nats.url", format!("{u:?} is not a NATS URL: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|addrs| match addrs.is_empty() {
            true => Err(invalid("nats.url", "is empty; e.g. nats://127.0.0.1:4222")),
            false => Ok(addrs),
        })
}

/// A connected client named `relaycord-<role>`.
pub async fn connect(nats: &NatsConfig, role: &str) -> anyhow::Result<async_nats::Client> {
    validate(nats)?;
    let mut options = ConnectOptions::new()
        .name(format!("relaycord-{role}"))
        .connection_timeout(Duration::from_secs(10));
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
    let url = &nats.url;
    options.connect(server_addrs(url)?).await.with_context(|| {
        format!(
            "cannot connect to NATS at {url} (nats.url / RELAYCORD_NATS__URL; credentials: \
                 nats.creds_file, nats.nkey_seed, nats.token or nats.user + nats.password)"
        )
    })
}
