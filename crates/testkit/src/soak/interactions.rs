//! Interactions during a soak: the harness sends signed commands to the interactions
//! role as Discord would and is also their NATS handler, answering some in time and some
//! after the deadline (so they are deferred and followed up through the simulator's REST).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use relaycord_sim::{Interactions, RestCallKind};
use tokio::task::JoinSet;

use crate::interactions::interaction_id;
use crate::send_to;

/// The handler's view: what it received and what it answered (the reply stored in the
/// replies stream).
#[derive(Clone, Default)]
pub struct Handler {
    pub received: Arc<Mutex<HashSet<String>>>,
    pub replied: Arc<Mutex<HashSet<String>>>,
}

/// Queue-subscribes to `subject`; one request in `late_every` is answered after
/// `late_by`, the rest at once. A reply is published through JetStream (the reply
/// subject is captured by the replies stream) and retried until stored, as a handler
/// that must not lose its answer across a NATS node's death would do.
pub async fn start_handler(
    client: async_nats::Client,
    subject: &str,
    late_every: u64,
    late_by: Duration,
) -> Handler {
    let handler = Handler::default();
    let mut requests = client
        .queue_subscribe(subject.to_owned(), "handlers".to_owned())
        .await
        .expect("subscribe the soak handler");
    let js = jetstream::new(client);
    let state = handler.clone();
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(request) = requests.next().await {
            n += 1;
            let id = interaction_id(&request);
            state.received.lock().unwrap().insert(id.clone());
            let Some(reply_to) = request.reply else {
                continue;
            };
            let delay = if n.is_multiple_of(late_every) {
                late_by
            } else {
                Duration::ZERO
            };
            let (js, state) = (js.clone(), state.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let body = Bytes::from(format!(r#"{{"type":4,"data":{{"content":"soak {id}"}}}}"#));
                for _ in 0..60 {
                    if let Ok(ack) = js.publish(reply_to.clone(), body.clone()).await
                        && ack.await.is_ok()
                    {
                        state.replied.lock().unwrap().insert(id);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
        }
    });
    handler
}

/// How the endpoint answered one interaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The handler's reply, in the HTTP response.
    InTime,
    /// A type-4 answer that is not the handler's: the unavailable message.
    Unavailable,
    /// A deferral (type 5): the answer must come as a follow-up.
    Deferred,
    /// No 200 within Discord's 3 s (down, paused, 503): Discord shows a failure; nothing
    /// was promised.
    NotAccepted(String),
}

#[derive(Clone, Debug)]
pub struct Sent {
    pub id: String,
    pub answer: Answer,
}

/// Sends `count` signed commands `name`, one every `interval`, each in its own task so a
/// paused endpoint does not hold the others back.
pub async fn send(
    discord: Interactions,
    url: String,
    name: &'static str,
    count: u64,
    interval: Duration,
) -> Vec<Sent> {
    let http = reqwest::Client::new();
    let mut tasks = JoinSet::new();
    let mut tick = tokio::time::interval(interval);
    for _ in 0..count {
        tick.tick().await;
        let interaction = discord.command(name);
        let request = discord.signed(&interaction);
        let (http, url) = (http.clone(), url.clone());
        tasks.spawn(async move {
            let answer =
                match tokio::time::timeout(Duration::from_secs(3), send_to(&http, &url, &request))
                    .await
                {
                    Err(_) => Answer::NotAccepted("no answer within 3 s".to_owned()),
                    Ok(Err(e)) => Answer::NotAccepted(crate::error_chain(&e)),
                    Ok(Ok((200, body))) => classify(&body, &interaction.id),
                    Ok(Ok((status, _))) => Answer::NotAccepted(format!("HTTP {status}")),
                };
            Sent {
                id: interaction.id,
                answer,
            }
        });
    }
    tasks.join_all().await
}

fn classify(body: &[u8], id: &str) -> Answer {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match json["type"].as_u64() {
        Some(4) if json["data"]["content"] == format!("soak {id}") => Answer::InTime,
        Some(4) => Answer::Unavailable,
        Some(5) => Answer::Deferred,
        other => Answer::NotAccepted(format!("unexpected response type {other:?}")),
    }
}

/// Interactions whose answer reached Discord as a follow-up (an accepted edit of
/// `@original` or follow-up message).
pub fn followed_up(discord: &Interactions) -> HashSet<String> {
    discord
        .calls()
        .into_iter()
        .filter(|c| matches!(c.kind, RestCallKind::EditOriginal | RestCallKind::FollowUp))
        .filter(|c| (200..300).contains(&c.status))
        .filter_map(|c| c.interaction_id)
        .collect()
}
