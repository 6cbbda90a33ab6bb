//! `relaycord tail [SUBJECT] [--json]`: follow events live. A plain core-NATS
//! subscription: it reads what is published from now on and leaves no state behind.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use relaycord::config::Config;
use relaycord_bus::Envelope;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct TailArgs {
    /// Subject to follow; default every gateway event, `<prefix>.gateway.>`. Examples:
    /// `discord.gateway.MESSAGE_CREATE.*`, `discord.interactions.>`, `relaycord.dlq.>`.
    subject: Option<String>,
    /// Print each envelope as one JSON line (byte for byte as on the bus, but for
    /// interaction tokens; see --show-tokens).
    #[arg(long)]
    json: bool,
    /// Print interaction tokens as they are. They let whoever holds one answer (or edit
    /// the answer to) that interaction for 15 minutes, so by default they print as
    /// "<redacted>": a terminal's scrollback or a pasted log is no place for them.
    #[arg(long)]
    show_tokens: bool,
}

pub async fn run(
    config_path: Option<&Path>,
    args: TailArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let subject = args
        .subject
        .unwrap_or_else(|| config.nats.subjects().gateway_all());
    let client = relaycord::nats_client::connect(&config.nats, "tail").await?;
    let mut messages = client
        .subscribe(subject.clone())
        .await
        .with_context(|| format!("cannot subscribe to {subject:?}"))?;
    // `flush` only empties the socket buffer. A round trip on the same connection proves
    // the server processed the SUB before anything we print "following" for: the server
    // handles one connection's protocol in order, and the request's no-responders answer
    // comes back after it.
    match client.request(client.new_inbox(), Bytes::new()).await {
        Ok(_) => {}
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
        Err(e) => return Err(e).context("lost the NATS connection while subscribing"),
    }
    eprintln!("following {subject} (Ctrl-C to stop)");
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            m = messages.next() => match m { Some(m) => m, None => break },
        };
        if args.json {
            println!(
                "{}",
                json_line(&message.subject, &message.payload, args.show_tokens)
            );
        } else {
            println!("{}", pretty(&message.subject, &message.payload));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One envelope as a JSON line: the bytes as published, unless its payload carries an
/// interaction token to hide; then the envelope re-serialized with `"token":"<redacted>"`.
fn json_line(subject: &str, payload: &[u8], show_tokens: bool) -> String {
    let Ok(raw) = serde_json::from_slice::<&serde_json::value::RawValue>(payload) else {
        return serde_json::json!({"subject": subject, "non_json_payload": String::from_utf8_lossy(payload)})
            .to_string();
    };
    if show_tokens || !raw.get().contains("\"token\"") {
        return raw.get().to_owned();
    }
    let Ok(mut envelope) = serde_json::from_str::<serde_json::Value>(raw.get()) else {
        return raw.get().to_owned();
    };
    // Interactions carry it at the top of `d`.
    if let Some(token) = envelope.pointer_mut("/data/token")
        && token.is_string()
    {
        *token = "<redacted>".into();
    }
    envelope.to_string()
}

/// `TIME TYPE guild=… shard/seq id=… text`, where text is the message content (or
/// the interaction's name) cut to one line.
fn pretty(subject: &str, payload: &[u8]) -> String {
    let Ok(env) = Envelope::from_slice(payload) else {
        return format!("{subject}: {} bytes (not an envelope)", payload.len());
    };
    let data: serde_json::Value = serde_json::from_str(env.data.get()).unwrap_or_default();
    let text = data["content"]
        .as_str()
        .or_else(|| data["data"]["name"].as_str())
        .unwrap_or_default();
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(80)
        .collect();
    format!(
        "{} {:<24} guild={:<20} shard={}/{} id={} {}",
        env.received_at,
        env.event_type,
        env.guild_id.as_deref().unwrap_or("none"),
        env.shard.map_or("-".to_owned(), |s| s.to_string()),
        env.seq.map_or("-".to_owned(), |s| s.to_string()),
        env.id,
        text
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interaction_tokens_are_redacted_unless_asked() {
        let envelope = br#"{"id":"ix:9","source":"interaction","type":"INTERACTION_CREATE","shard":null,"seq":null,"guild_id":null,"received_at":"2026-12-06T00:00:00.000Z","data":{"id":"9","type":2,"token":"A_UNIQUE_TOKEN","data":{"name":"ping"}}}"#;
        let line = json_line("discord.interactions.command.ping", envelope, false);
        assert!(!line.contains("A_UNIQUE_TOKEN"), "{line}");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["data"]["token"], "<redacted>");
        assert_eq!(value["data"]["data"]["name"], "ping");
        let shown = json_line("discord.interactions.command.ping", envelope, true);
        assert_eq!(shown.as_bytes(), envelope, "byte for byte when asked");
        let message = br#"{"id":"msg:1","type":"MESSAGE_CREATE","data":{"content":"hi"}}"#;
        assert_eq!(json_line("s", message, false).as_bytes(), message);
    }

    #[test]
    fn pretty_lines_show_type_guild_id_and_content() {
        let env = br#"{"id":"msg:1","source":"gateway","type":"MESSAGE_CREATE","shard":0,"seq":42,"guild_id":"81384788765712384","received_at":"2026-11-23T12:00:00.123Z","data":{"content":"Supa\nHot","channel_id":"1"}}"#;
        let line = pretty("discord.gateway.MESSAGE_CREATE.81384788765712384", env);
        assert!(line.contains("MESSAGE_CREATE"), "{line}");
        assert!(line.contains("guild=81384788765712384"), "{line}");
        assert!(line.contains("id=msg:1 Supa Hot"), "{line}");
        assert!(pretty("x", b"nope").contains("not an envelope"));
    }
}
