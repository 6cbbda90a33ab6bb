//! What happened to each handled interaction, kept in a KV bucket shared by replicas.
//!
//! A handler's reply lands on the replies stream whether it was in time or not, and the
//! late-reply worker of *any* replica may read it. The record written here tells that
//! worker what to do, and makes one request the only owner of an interaction id:
//!
//! | state       | written by                                   | how                        |
//! |-------------|----------------------------------------------|----------------------------|
//! | `claimed`   | the request that routes it, before routing   | create-only: one owner per id |
//! | `answered`  | the owner, when its HTTP response is not a deferral | update of the claim's revision |
//! | `deferred`  | the owner, after sending the deferral        | update of the claim's revision |
//! | `delivered` | the late-reply worker, after the follow-up   | put (terminal)             |
//!
//! The claim carries the token and application id, so a follow-up is possible even when the
//! owner's `deferred` write never lands: past [`DECISION_WAIT`] an unsettled claim is a
//! deferral (see late.rs). Because the owner only *updates its own claim's revision*, a
//! retried request can never turn `delivered` back into anything else. Entries expire with
//! the bucket's max age, a little after the 15-minute token life.
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

/// Discord's limit for the initial response, from the moment it sent the request.
pub const DISCORD_RESPONSE_LIMIT: Duration = Duration::from_secs(3);

/// How long after its claim an interaction's owner may still record `answered`: it stops
/// waiting for that write at Discord's 3 s, and 2 s more cover a write already sent. After
/// this, a claim nobody settled is taken for a deferral.
pub const DECISION_WAIT: Duration = Duration::from_secs(5);

/// What a follow-up needs: where to send it and until when.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub application_id: String,
    pub token: String,
    pub kind: String,
    /// When the interaction was claimed (just after it arrived), in Unix milliseconds.
    pub at_ms: u64,
    /// Random, one per request: a retried claim write that finds the id taken reads it
    /// back and knows whether its own earlier attempt landed (the write timed out here
    /// but was stored) or another request owns the interaction.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub claimant: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("application_id", &self.application_id)
            .field("token", &"<redacted>")
            .field("kind", &self.kind)
            .field("at_ms", &self.at_ms)
            .field("claimant", &self.claimant)
            .finish()
    }
}

impl Target {
    /// Empty strings where the interaction has no token or application id: the follow-up
    /// is then refused (and counted) instead of sent.
    pub fn new(application_id: &str, token: &str, kind: Kind, at: SystemTime) -> Self {
        Self {
            application_id: application_id.to_owned(),
            token: token.to_owned(),
            kind: kind.as_str().to_owned(),
            at_ms: unix_ms(at),
            claimant: format!("{:016x}", rand::random::<u64>()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Decision {
    Claimed(Target),
    /// `reply` is the HTTP response that was sent, for a retry of the same id.
    Answered {
        reply: String,
    },
    Deferred(Target),
    /// The late-reply worker is posting the reply stored at stream sequence `reply` (and
    /// only that one: any other reply for the interaction is dropped).
    Delivering(Delivering),
    Delivered,
}

/// Which reply is being followed up, and where to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivering {
    pub reply: u64,
    pub target: Target,
}

/// Why an interaction could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("another request owns this interaction")]
    Taken,
    #[error("cannot write the claim: {0}")]
    Store(#[source] kv::CreateError),
    #[error("cannot read back the claim: {0}")]
    Read(#[source] kv::EntryError),
    #[error("not written before the deadline ({attempts} attempts; last: {last})")]
    Deadline { attempts: u32, last: String },
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

    /// Makes the caller the only owner of `id` (create-only); returns the claim's revision.
    /// Safe to call again after an error or a timeout: finding its own claim (same
    /// `claimant`) is success, not [`ClaimError::Taken`].
    pub async fn claim(&self, id: &str, target: &Target) -> Result<u64, ClaimError> {
        match self
            .store
            .create(id, encode(&Decision::Claimed(target.clone())))
            .await
        {
            Ok(revision) => Ok(revision),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let entry = self.store.entry(id).await.map_err(ClaimError::Read)?;
                let own = entry.as_ref().and_then(|entry| {
                    match serde_json::from_slice(&entry.value).ok()? {
                        Decision::Claimed(t) if t.claimant == target.claimant => {
                            Some(entry.revision)
                        }
                        _ => None,
                    }
                });
                own.ok_or(ClaimError::Taken)
            }
            Err(e) => Err(ClaimError::Store(e)),
        }
    }

    /// The owner's decision: replaces its claim, and only its claim (`revision`), so it can
    /// never overwrite what the late-reply worker wrote since.
    pub async fn settle(
        &self,
        id: &str,
        revision: u64,
        decision: &Decision,
    ) -> Result<(), kv::UpdateError> {
        self.store
            .update(id, encode(decision), revision)
            .await
            .map(|_| ())
    }

    /// The late-reply worker takes the follow-up for the reply at stream sequence `reply`,
    /// if the record is still at `revision`: of two replies (or two workers) only one gets
    /// it. Returns the new revision.
    pub async fn start_delivery(
        &self,
        id: &str,
        revision: u64,
        delivering: Delivering,
    ) -> Result<u64, kv::UpdateError> {
        self.store
            .update(id, encode(&Decision::Delivering(delivering)), revision)
            .await
    }

    /// The late-reply worker's terminal record, over its own `delivering` record.
    pub async fn delivered(&self, id: &str, revision: u64) -> Result<(), kv::UpdateError> {
        self.store
            .update(id, encode(&Decision::Delivered), revision)
            .await
            .map(|_| ())
    }

    /// `Ok(None)` when nothing was recorded, or the record is unreadable.
    pub async fn get(&self, id: &str) -> Result<Option<Decision>, kv::EntryError> {
        Ok(self.entry(id).await?.map(|(decision, _)| decision))
    }

    /// The decision with its revision, for a compare-and-set.
    pub async fn entry(&self, id: &str) -> Result<Option<(Decision, u64)>, kv::EntryError> {
        Ok(self.store.entry(id).await?.and_then(|entry| {
            let decision = serde_json::from_slice(&entry.value).ok()?;
            (entry.operation == kv::Operation::Put).then_some((decision, entry.revision))
        }))
    }
}

fn encode(decision: &Decision) -> Bytes {
    Bytes::from(serde_json::to_vec(decision).expect("decision serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_not_printed_and_records_round_trip() {
        let target = Target::new(
            "775799577604522054",
            "A_UNIQUE_TOKEN",
            Kind::Modal,
            UNIX_EPOCH,
        );
        for d in [
            Decision::Claimed(target.clone()),
            Decision::Deferred(target.clone()),
            Decision::Delivering(Delivering { reply: 7, target }),
            Decision::Answered {
                reply: r#"{"type":4,"data":{}}"#.into(),
            },
            Decision::Delivered,
        ] {
            assert!(!format!("{d:?}").contains("A_UNIQUE"));
            let json = serde_json::to_string(&d).unwrap();
            assert!(json.starts_with(r#"{"state":""#), "{json}");
            assert_eq!(serde_json::from_str::<Decision>(&json).unwrap(), d);
        }
        assert_eq!(parse_kind("modal"), Some(Kind::Modal));
        assert_eq!(parse_kind("ping"), None);
    }
}
