//! The late-reply worker: one durable pull consumer on the replies stream, shared by
//! every replica, sends each reply that came after a deferral as a follow-up.
//!
//! | decision in KV          | what the worker does                                       |
//! |-------------------------|------------------------------------------------------------|
//! | `answered`, `delivered` | ack (it was the HTTP response, or was already sent)        |
//! | `deferred`, token alive | PATCH @original / POST follow-up, record `delivered`, ack  |
//! | `deferred`, expired     | term, counted as expired                                   |
//! | none yet                | nak with delay (the deciding replica has not written yet); |
//! |                         | after [`UNDECIDED_GRACE`], ack: the replica died undecided,|
//! |                         | so Discord got no response and no follow-up is possible    |

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, consumer::pull};
use futures::StreamExt;
use relaycord_bus::Subjects;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::decisions::{Decision, Decisions, TOKEN_LIFETIME, parse_kind, unix_ms};
use crate::error::{InteractionsError, InteractionsErrorKind};
use crate::metrics::InteractionMetrics;
use crate::replies::{interaction_id, replies_all, replies_stream};
use crate::response::{FollowUp, follow_up};
use crate::rest::{DiscordRest, RestError};

/// Durable consumer name, shared by all replicas.
pub const CONSUMER: &str = "relaycord-late-replies";

/// Deliveries of one reply before it is given up (max_deliver is always set).
const MAX_DELIVER: i64 = 100;

/// How long a reply may wait for its interaction's decision to be recorded.
pub const UNDECIDED_GRACE: Duration = Duration::from_secs(60);

pub(crate) struct LateWorker {
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub decisions: Decisions,
    pub rest: DiscordRest,
    pub metrics: InteractionMetrics,
    pub concurrency: usize,
}

impl LateWorker {
    /// Creates (or finds) the durable consumer. Called at start, so a setup problem
    /// surfaces there, and again whenever the consumer vanished while running.
    pub async fn consumer(&self) -> Result<PullConsumer, InteractionsError> {
        let setup = |e: Box<dyn std::error::Error + Send + Sync>| {
            InteractionsError::with_source(InteractionsErrorKind::Setup, "late-reply consumer", e)
        };
        let stream = self
            .js
            .get_stream(replies_stream(&self.subjects))
            .await
            .map_err(|e| setup(e.into()))?;
        stream
            .get_or_create_consumer(
                CONSUMER,
                pull::Config {
                    durable_name: Some(CONSUMER.to_owned()),
                    filter_subject: replies_all(&self.subjects),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_deliver: MAX_DELIVER,
                    deliver_policy: jetstream::consumer::DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| setup(e.into()))
    }

    /// Consumes until `shutdown`. NATS outages and a deleted consumer are waited out:
    /// replies stay on the stream meanwhile.
    pub async fn run(self, mut consumer: PullConsumer, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.concurrency.max(1)));
        while !shutdown.is_cancelled() {
            let mut messages = match consumer.messages().await {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(%error, "late-reply consumer unavailable; retrying");
                    pause(&shutdown).await;
                    if let Ok(again) = this.consumer().await {
                        consumer = again;
                    }
                    continue;
                }
            };
            loop {
                let message = tokio::select! {
                    () = shutdown.cancelled() => return,
                    message = messages.next() => message,
                };
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        tracing::debug!(%error, "late-reply pull interrupted");
                        continue;
                    }
                    None => break,
                };
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let this = Arc::clone(&this);
                tokio::spawn(async move {
                    let ack = this.handle(&message).await;
                    if let Err(error) = message.ack_with(ack).await {
                        tracing::debug!(%error, "late-reply ack failed; it will be redelivered");
                    }
                    drop(permit);
                });
            }
            pause(&shutdown).await;
        }
    }

    async fn handle(&self, message: &jetstream::Message) -> AckKind {
        let id = interaction_id(&message.subject);
        let info = message.info().ok();
        let delivered = info.as_ref().map_or(1, |i| i.delivered);
        // Status messages (e.g. no responders) and empty payloads carry no reply.
        if message.payload.is_empty() || message.status.is_some() {
            return AckKind::Ack;
        }
        if delivered >= MAX_DELIVER {
            self.metrics.late("failed");
            return AckKind::Term;
        }
        let decision = match self.decisions.get(id).await {
            Ok(decision) => decision,
            Err(_) => return AckKind::Nak(Some(backoff(delivered))),
        };
        match decision {
            Some(Decision::Answered | Decision::Delivered) => AckKind::Ack,
            None => {
                let published_ms = info
                    .map(|i| (i.published.unix_timestamp_nanos() / 1_000_000) as u64)
                    .unwrap_or_default();
                let age = unix_ms(SystemTime::now()).saturating_sub(published_ms);
                if Duration::from_millis(age) > UNDECIDED_GRACE {
                    AckKind::Ack
                } else {
                    AckKind::Nak(Some(Duration::from_millis(500)))
                }
            }
            Some(Decision::Deferred {
                application_id,
                token,
                kind,
                at_ms,
            }) => {
                let age = Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(at_ms));
                if age >= TOKEN_LIFETIME {
                    self.metrics.late("expired");
                    return AckKind::Term;
                }
                let Some(kind) = parse_kind(&kind) else {
                    return AckKind::Term;
                };
                let follow = match follow_up(kind, &message.payload) {
                    Ok(FollowUp::Nothing) => return AckKind::Ack,
                    Ok(follow) => follow,
                    Err(error) => {
                        tracing::warn!(interaction = id, %error, "late reply is not deliverable");
                        self.metrics.late("invalid");
                        return AckKind::Term;
                    }
                };
                match self.rest.send(&application_id, &token, &follow).await {
                    Ok(()) => {
                        // Recorded before the ack, so a redelivery (lost ack) or a second
                        // reply does not post a second follow-up message.
                        let _ = self.decisions.record(id, &Decision::Delivered).await;
                        self.metrics.late("delivered");
                        AckKind::Ack
                    }
                    Err(RestError::Expired) => {
                        self.metrics.late("expired");
                        AckKind::Term
                    }
                    Err(RestError::Rejected(status)) => {
                        tracing::warn!(interaction = id, status, "Discord refused the late reply");
                        self.metrics.late("invalid");
                        AckKind::Term
                    }
                    Err(RestError::Retry(after)) => {
                        self.metrics.late("retried");
                        AckKind::Nak(Some(after.unwrap_or_else(|| backoff(delivered))))
                    }
                }
            }
        }
    }
}

/// 0.5 s doubling to 30 s.
fn backoff(delivered: i64) -> Duration {
    let exp = delivered.clamp(1, 7) as u32 - 1;
    Duration::from_millis(500 * 2u64.pow(exp)).min(Duration::from_secs(30))
}

async fn pause(shutdown: &CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}
