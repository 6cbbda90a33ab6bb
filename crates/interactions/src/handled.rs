//! An interaction routed to a handler: claimed, asked, and its outcome recorded — each
//! step bounded so that the HTTP response never waits on NATS past Discord's 3 s.
//!
//! | step                         | bound                        | when it does not complete          |
//! |------------------------------|------------------------------|------------------------------------|
//! | claim (create-only record)   | the deadline, retried (each attempt 500 ms) | 503, not routed (like a failed publish) |
//! | handler                      | the deadline                 | deferral; the late reply follows up |
//! | `answered` record            | [`answer_by`] (≤ Discord's 3 s) | the reply is sent anyway; the worker may send it again as a follow-up (an edit with the same content) |
//! | `deferred` record            | not awaited                  | the claim stands for it after [`DECISION_WAIT`] |
//!
//! A second request with the same interaction id (a retry, or a replay inside the
//! timestamp window) finds the claim taken: it is never routed again, and gets the owner's
//! answer if recorded by its deadline, else a deferral.

use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::http::HeaderMap;
use relaycord_bus::interaction::InteractionKeys;
use tokio::time::Instant as TokioInstant;
use tracing::Instrument;

#[cfg(doc)]
use crate::decisions::DECISION_WAIT;
use crate::decisions::{ClaimError, DISCORD_RESPONSE_LIMIT, Decision, Target};
use crate::endpoint::{Answer, Endpoint};
use crate::response;
use crate::routes::{Handler, Route};

/// Time the response needs to travel back to Discord after we send it.
const RESPONSE_MARGIN: Duration = Duration::from_millis(200);

/// Bound of one claim write: a KV leader that is gone can leave a write unanswered until
/// the client's own 5 s timeout, far past Discord's 3 s.
const CLAIM_ATTEMPT: Duration = Duration::from_millis(500);

/// Waits between claim attempts, as between the interaction's publish attempts.
const CLAIM_RETRY: relaycord_bus::backoff::Exponential =
    relaycord_bus::backoff::Exponential::new(Duration::from_millis(25), Duration::from_millis(200));

/// How often a retried request looks for its owner's answer.
const RETRY_POLL: Duration = Duration::from_millis(50);

/// The latest moment the `answered` write may be awaited for a request that arrived at
/// `started`: Discord's 3 s less the trip back, or the deadline when configured later.
pub(crate) fn answer_by(started: Instant, deadline: Duration) -> Instant {
    started + (DISCORD_RESPONSE_LIMIT - RESPONSE_MARGIN).max(deadline)
}

impl Endpoint {
    pub(crate) async fn handled(
        &self,
        keys: &InteractionKeys<'_>,
        route: &Route,
        handler: &Handler,
        request: (&HeaderMap, Bytes),
        started: Instant,
    ) -> Answer {
        let deadline = TokioInstant::from_std(started + self.settings.deadline);
        let target = Target::new(
            keys.application_id.as_deref().unwrap_or_default(),
            keys.token.as_deref().unwrap_or_default(),
            keys.kind,
            SystemTime::now(),
        );
        let claim = tokio::time::timeout_at(deadline, self.claim(&keys.id, &target, deadline));
        let claimed = claim.await.unwrap_or_else(|_| {
            Err(ClaimError::Deadline {
                attempts: 0,
                last: "an attempt was still running".to_owned(),
            })
        });
        let revision = match claimed {
            Ok(revision) => revision,
            Err(ClaimError::Taken) => return self.retried(keys, route, deadline).await,
            Err(error) => {
                tracing::warn!(%error, interaction = %keys.id, "cannot claim the interaction");
                return Answer::unrecorded("claim");
            }
        };
        // From here until the outcome is recorded, this replica's late-reply worker asks
        // this request rather than the bucket (owned.rs).
        let owner = self.owned.own(&keys.id);
        let (headers, body) = request;
        // The handler's request carries this span's context (`traceparent`).
        let span = relaycord_bus::span!(
            "handler",
            otel.kind = "client",
            outcome = tracing::field::Empty
        );
        let call = span.clone();
        let answer = match handler {
            Handler::Nats(subject) => {
                self.ask_nats(keys, route, subject, body, deadline)
                    .instrument(call)
                    .await
            }
            Handler::Http(url) => {
                self.ask_http(keys, route, url, headers, body, deadline)
                    .instrument(call)
                    .await
            }
        };
        span.record("outcome", answer.outcome);
        if answer.outcome == "deferred" {
            // Not awaited: past the deadline the deferral must not wait on NATS. Should this
            // write never land, the claim carries the same token and the worker takes it
            // for a deferral after DECISION_WAIT.
            let (decisions, id) = (self.decisions.clone(), keys.id.to_string());
            tokio::spawn(async move {
                let deferred = Decision::Deferred(target);
                if let Err(error) = decisions.settle(&id, revision, &deferred).await {
                    tracing::debug!(%error, "deferral not recorded; the claim stands for it");
                }
            });
            return answer;
        }
        let answered = Decision::Answered {
            reply: String::from_utf8_lossy(&answer.body).into_owned(),
        };
        let by = TokioInstant::from_std(answer_by(started, self.settings.deadline));
        let written =
            tokio::time::timeout_at(by, self.decisions.settle(&keys.id, revision, &answered));
        match written.await {
            Ok(Ok(())) => owner.answered(),
            // Still the right answer to send: without the record, the worker will deliver
            // the reply a second time — an edit with the same content, except for a
            // component's type-4 reply, which becomes a second message (docs/interactions.md).
            Ok(Err(error)) => tracing::warn!(%error, "cannot record an answered interaction"),
            Err(_) => tracing::warn!("answered record not written in time; sent anyway"),
        }
        answer
    }

    /// Claims `id`, retried until `deadline`: while a KV leader is elected (a node's death)
    /// writes fail or time out for a few seconds, and a retry inside Discord's 3 s beats a
    /// 503. Each attempt is bounded on its own, so a write that hangs leaves time for
    /// another; an attempt that finds the id taken by this request's own earlier write
    /// (it landed, its ack did not) is recognised by the claimant token.
    async fn claim(
        &self,
        id: &str,
        target: &Target,
        deadline: TokioInstant,
    ) -> Result<u64, ClaimError> {
        let mut attempt = 0;
        loop {
            let tried = tokio::time::timeout(CLAIM_ATTEMPT, self.decisions.claim(id, target));
            let error = match tried.await {
                Ok(Ok(revision)) => return Ok(revision),
                Ok(Err(ClaimError::Taken)) => return Err(ClaimError::Taken),
                Ok(Err(error)) => error.to_string(),
                Err(_) => "no answer within the attempt's bound".to_owned(),
            };
            attempt += 1;
            let wait = CLAIM_RETRY.delay(attempt);
            if TokioInstant::now() + wait >= deadline {
                return Err(ClaimError::Deadline {
                    attempts: attempt,
                    last: error,
                });
            }
            tracing::debug!(%error, attempt, "claim not written; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// A request for an interaction another request owns: never routed again.
    async fn retried(
        &self,
        keys: &InteractionKeys<'_>,
        route: &Route,
        deadline: TokioInstant,
    ) -> Answer {
        let owner = async {
            loop {
                match self.decisions.get(&keys.id).await {
                    Ok(Some(Decision::Answered { reply })) => return Some(reply),
                    Ok(Some(
                        Decision::Deferred(_) | Decision::Delivering(_) | Decision::Delivered,
                    )) => return None,
                    // Claimed (the owner is still waiting for its handler) or unreadable.
                    _ => tokio::time::sleep(RETRY_POLL).await,
                }
            }
        };
        match tokio::time::timeout_at(deadline, owner).await {
            Ok(Some(reply)) => Answer {
                reason: "retry",
                ..Answer::json(Bytes::from(reply), "answered")
            },
            // The owner deferred, or has not decided by our deadline: a deferral. Its late
            // reply reaches Discord once, through the owner's record.
            Ok(None) | Err(_) => Answer {
                reason: "retry",
                ..Answer::json(response::deferral(keys.kind, route.ephemeral), "deferred")
            },
        }
    }
}
