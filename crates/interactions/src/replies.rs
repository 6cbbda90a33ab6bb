//! Where handlers' replies go: `<prefix>.replies.<replica>.<interaction id>`.
//!
//! A NATS handler answers a request the ordinary way (`msg.respond(...)`), and the reply
//! subject it answers on is captured by the `<STEM>_INTERACTION_REPLIES` stream. So a
//! reply is both seen at once by the replica waiting for it (a core subscription, one per
//! replica) and kept durably: when it comes after the deadline, or after the replica that
//! deferred has died, the late-reply worker of any replica still finds it (see
//! DESIGN.md, "Traps": a late reply on a core inbox would die with the process).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use relaycord_bus::Subjects;
use relaycord_bus::streams::stream_stem;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::decisions::TOKEN_LIFETIME;
use crate::error::{InteractionsError, InteractionsErrorKind};

pub fn replies_stream(subjects: &Subjects) -> String {
    format!("{}_INTERACTION_REPLIES", stream_stem(subjects))
}

pub fn replies_all(subjects: &Subjects) -> String {
    subjects.replies_all()
}

/// The interaction id of a reply subject (its last token).
pub fn interaction_id(subject: &str) -> &str {
    subject.rsplit('.').next().unwrap_or_default()
}

/// Creates or updates the replies stream. Replies are useless after the token expires.
pub async fn ensure_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<(), InteractionsError> {
    let config = stream::Config {
        name: replies_stream(subjects),
        subjects: vec![replies_all(subjects)],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        max_age: TOKEN_LIFETIME + Duration::from_secs(60),
        duplicate_window: Duration::from_secs(120),
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    // Replicas start together: see create_or_update for why not async-nats's own.
    relaycord_bus::streams::create_or_update(js, config)
        .await
        .map(|_| ())
        .map_err(|e| {
            InteractionsError::with_source(InteractionsErrorKind::Setup, "replies stream", e)
        })
}

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<async_nats::Message>>>>;

/// Routes replies on this replica's subscription to the request waiting for them.
#[derive(Clone)]
pub struct ReplyMux {
    subjects: Subjects,
    replica: String,
    waiting: Waiting,
}

/// A registered wait; dropping it unregisters, so a reply arriving after the deadline
/// finds no waiter and is left to the late-reply worker.
pub struct Waiter {
    id: String,
    waiting: Waiting,
    pub reply: oneshot::Receiver<async_nats::Message>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        lock(&self.waiting).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ReplyMux {
    /// Subscribes to `<prefix>.replies.<replica>.*` until `shutdown`.
    pub async fn start(
        client: &async_nats::Client,
        subjects: &Subjects,
        replica: &str,
        shutdown: CancellationToken,
    ) -> Result<Self, InteractionsError> {
        let mut subscriber = client
            .subscribe(subjects.replies_to(replica))
            .await
            .map_err(|e| {
                InteractionsError::with_source(
                    InteractionsErrorKind::Setup,
                    "replies subscription",
                    e,
                )
            })?;
        let waiting = Waiting::default();
        let mux = Self {
            subjects: subjects.clone(),
            replica: replica.to_owned(),
            waiting: Arc::clone(&waiting),
        };
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = shutdown.cancelled() => break,
                    message = subscriber.next() => match message {
                        Some(message) => message,
                        None => break,
                    },
                };
                let id = interaction_id(&message.subject).to_owned();
                if let Some(tx) = lock(&waiting).remove(&id) {
                    let _ = tx.send(message);
                }
            }
            let _ = subscriber.unsubscribe().await;
        });
        Ok(mux)
    }

    pub fn reply_subject(&self, interaction_id: &str) -> String {
        self.subjects.reply(&self.replica, interaction_id)
    }

    /// Registers before the request is sent, so a fast reply cannot be missed. `None`
    /// when this id is being waited for already: a second waiter must not replace the
    /// first (whose reply would then go to the wrong request, or nowhere).
    pub fn wait(&self, interaction_id: &str) -> Option<Waiter> {
        let mut waiting = lock(&self.waiting);
        if waiting.contains_key(interaction_id) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        waiting.insert(interaction_id.to_owned(), tx);
        Some(Waiter {
            id: interaction_id.to_owned(),
            waiting: Arc::clone(&self.waiting),
            reply: rx,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_waiter_for_the_same_id_does_not_replace_the_first() {
        let mux = ReplyMux {
            subjects: Subjects::default(),
            replica: "r1".into(),
            waiting: Waiting::default(),
        };
        let first = mux.wait("42").expect("first waiter");
        assert!(mux.wait("42").is_none(), "the first waiter is kept");
        assert!(mux.wait("43").is_some(), "other ids are independent");
        // A reply for 42 still goes to the first waiter (its receiver is the one alive).
        assert!(!lock(&mux.waiting)["42"].is_closed());
        drop(first);
        assert!(
            !lock(&mux.waiting).contains_key("42"),
            "unregistered on drop"
        );
        assert!(
            mux.wait("42").is_some(),
            "free again once the first is done"
        );
    }

    #[test]
    fn names_follow_the_prefix() {
        let s = Subjects::new("acme.bot");
        assert_eq!(replies_stream(&s), "ACME_BOT_INTERACTION_REPLIES");
        assert_eq!(replies_all(&s), "acme.bot.replies.>");
        assert_eq!(
            interaction_id("acme.bot.replies.r1.786008729715212338"),
            "786008729715212338"
        );
    }
}
