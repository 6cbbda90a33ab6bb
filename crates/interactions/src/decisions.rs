//! What happened to each handled interaction, kept in a KV bucket shared by replicas.
//!
//! A handler's reply lands on the replies stream whether it was in time or not, and the
//! late-reply worker of *any* replica may read it. The record written here tells that
//! worker what to do: `answered` (it was the HTTP response: drop it), `deferred` (send it
//! as a follow-up, with the token and application id stored here), `delivered` (a
//! follow-up was sent already: a redelivered or second reply is dropped). Entries expire
//! with the bucket's max age, a little after the 15-minute token life.
//!
//! The token is a credential valid 15 minutes: restrict who may read the bucket (see
//! docs/interactions.md).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use relaycord_bus::Subjects;
use relaycord_bus::interaction::Kind;
use relaycord_bus::streams::stream_stem;
use serde::{Deserialize, Serialize};

use crate::error::{InteractionsError, InteractionsErrorKind};

/// How long Discord accepts follow-ups with an interaction token.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Decision {
    Answered,
    Deferred {
        application_id: String,
        token: String,
        kind: String,
        /// When the deferral was sent, in Unix milliseconds.
        at_ms: u64,
    },
    Delivered,
}

impl std::fmt::Debug for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Answered => f.write_str("Answered"),
            Self::Delivered => f.write_str("Delivered"),
            Self::Deferred {
                application_id,
                kind,
                at_ms,
                ..
            } => f
                .debug_struct("Deferred")
                .field("application_id", application_id)
                .field("token", &"<redacted>")
                .field("kind", kind)
                .field("at_ms", at_ms)
                .finish(),
        }
    }
}

impl Decision {
    pub fn deferred(application_id: &str, token: &str, kind: Kind, at: SystemTime) -> Self {
        Self::Deferred {
            application_id: application_id.to_owned(),
            token: token.to_owned(),
            kind: kind.as_str().to_owned(),
            at_ms: unix_ms(at),
        }
    }
}

pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

pub(crate) fn parse_kind(kind: &str) -> Option<Kind> {
    [
        Kind::Command,
        Kind::Component,
        Kind::Modal,
        Kind::Autocomplete,
    ]
    .into_iter()
    .find(|k| k.as_str() == kind)
}

/// The KV bucket of decisions: `<STEM>_INTERACTION_DECISIONS`.
#[derive(Clone)]
pub struct Decisions {
    store: kv::Store,
}

impl Decisions {
    pub fn bucket(subjects: &Subjects) -> String {
        format!("{}_INTERACTION_DECISIONS", stream_stem(subjects))
    }

    pub async fn open(
        js: &jetstream::Context,
        subjects: &Subjects,
        replicas: usize,
    ) -> Result<Self, InteractionsError> {
        let name = Self::bucket(subjects);
        let store = relaycord_bus::kv::ensure_bucket(
            js,
            &name,
            TOKEN_LIFETIME + Duration::from_secs(5 * 60),
            replicas,
        )
        .await
        .map_err(|e| {
            InteractionsError::with_source(InteractionsErrorKind::Setup, "decisions bucket", e)
        })?;
        Ok(Self { store })
    }

    pub async fn record(&self, id: &str, decision: &Decision) -> Result<(), kv::PutError> {
        let bytes = Bytes::from(serde_json::to_vec(decision).expect("decision serializes"));
        self.store.put(id, bytes).await.map(|_| ())
    }

    /// `Ok(None)` when nothing was recorded (yet), or the record is unreadable.
    pub async fn get(&self, id: &str) -> Result<Option<Decision>, kv::EntryError> {
        Ok(self
            .store
            .get(id)
            .await?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_not_printed_and_records_round_trip() {
        let d = Decision::deferred(
            "775799577604522054",
            "A_UNIQUE_TOKEN",
            Kind::Modal,
            UNIX_EPOCH,
        );
        assert!(!format!("{d:?}").contains("A_UNIQUE"));
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.starts_with(r#"{"state":"deferred","#), "{json}");
        assert_eq!(serde_json::from_str::<Decision>(&json).unwrap(), d);
        assert_eq!(parse_kind("modal"), Some(Kind::Modal));
        assert_eq!(parse_kind("ping"), None);
    }
}
