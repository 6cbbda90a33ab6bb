//! Ingest's state in NATS KV: gateway sessions, shard leases, replica membership and
//! identify slots. Everything a replacement process needs lives here, none of it in
//! the process that dies.

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use bytes::Bytes;
use relaycord_bus::{Subjects, streams::stream_stem};
use serde::{Deserialize, Serialize};

use crate::error::{IngestError, IngestErrorKind};

/// The KV buckets ingest uses.
#[derive(Clone)]
pub struct Buckets {
    /// `s.<count>.<id>` → [`SessionRecord`]. Kept for a day: past Discord's resume window
    /// a session is useless anyway.
    pub sessions: kv::Store,
    /// `s.<count>.<id>` → owning replica id; entries expire `lease_ttl` after their last renewal.
    pub leases: kv::Store,
    /// `<replica id>` → "", renewed like leases; the live replicas that share the shards.
    pub members: kv::Store,
    /// `b.<bucket>` → replica id, expiring after [`IDENTIFY_INTERVAL`]: one identify per
    /// max_concurrency bucket per 5 s (plus padding) across every replica.
    pub identify: kv::Store,
}

/// How long an identify slot is held. Discord allows one identify per rate-limit bucket
/// every 5 seconds, measured where it receives them; the slot is taken before twilight
/// sends the IDENTIFY, so one IDENTIFY delayed on its way (scheduler, TLS, a slow
/// connect) followed by a prompt one could land less than 5 s apart. Half a second of
/// padding absorbs that jitter at the cost of 10 % slower start-up.
pub const IDENTIFY_INTERVAL: Duration = Duration::from_millis(5_500);

impl Buckets {
    pub async fn ensure(
        js: &jetstream::Context,
        subjects: &Subjects,
        replicas: usize,
        lease_ttl: Duration,
    ) -> Result<Self, IngestError> {
        let stem = stream_stem(subjects);
        let bucket = |name: &str, max_age: Duration| {
            let name = format!("{stem}_{name}");
            async move {
                relaycord_bus::kv::ensure_bucket(js, &name, max_age, replicas)
                    .await
                    .map_err(|e| {
                        IngestError::with_source(
                            IngestErrorKind::Bus,
                            "cannot set up ingest state",
                            e,
                        )
                    })
            }
        };
        Ok(Self {
            sessions: bucket("SESSIONS", Duration::from_secs(24 * 3600)).await?,
            leases: bucket("LEASES", lease_ttl).await?,
            members: bucket("MEMBERS", lease_ttl).await?,
            identify: bucket("IDENTIFY", IDENTIFY_INTERVAL).await?,
        })
    }
}

/// The KV key of one shard, including the shard count: a session or lease of a
/// different sharding is never reused.
pub fn shard_key(id: u32, count: u32) -> String {
    format!("s.{count}.{id}")
}

/// Where a shard can resume: the last seq below which every dispatch is on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub session_id: String,
    pub seq: u64,
    pub resume_url: Option<String>,
}

/// A record as stored: with the claim of the [`SessionStore`] that wrote it, so that a
/// writer finding the revision moved can tell its own earlier write (whose reply was lost)
/// from another owner's. Records written before claims existed have none.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    record: SessionRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claim: Option<String>,
}

/// A token naming one claim of one shard by one process: the process id, the time and a
/// counter, so two claims never share one even on different hosts or in one process.
fn new_claim() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Why a session could not be saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveError {
    /// Another process wrote the record since we read it: it owns the shard now.
    Fenced,
    /// NATS did not answer; try again later.
    Unavailable,
}

/// Reads and writes racing with a previous owner before a claim gives up (and retries
/// the shard later).
const CLAIM_ATTEMPTS: usize = 5;

/// Reads and writes one shard's session record with compare-and-set on the KV
/// revision, so a process that lost its shard can never overwrite its successor's record.
pub struct SessionStore {
    kv: kv::Store,
    key: String,
    revision: Option<u64>,
    /// Written into every record this store saves.
    claim: String,
}

impl SessionStore {
    pub async fn load(
        kv: kv::Store,
        id: u32,
        count: u32,
    ) -> Result<(Self, Option<SessionRecord>), IngestError> {
        let key = shard_key(id, count);
        let entry = kv.entry(key.clone()).await.map_err(|e| {
            IngestError::with_source(
                IngestErrorKind::Bus,
                format!("cannot read session {key}"),
                e,
            )
        })?;
        let (revision, record) = match entry {
            // An empty value is a claim placeholder (see `claim`): owned, no session yet.
            Some(entry) if entry.operation == kv::Operation::Put && !entry.value.is_empty() => {
                let record = serde_json::from_slice::<Stored>(&entry.value)
                    .inspect_err(
                        |e| tracing::warn!(%key, error = %e, "ignoring unreadable session record"),
                    )
                    .ok()
                    .map(|stored| stored.record);
                (Some(entry.revision), record)
            }
            Some(entry) => (Some(entry.revision), None),
            None => (None, None),
        };
        let claim = new_claim();
        Ok((
            Self {
                kv,
                key,
                revision,
                claim,
            },
            record,
        ))
    }

    /// Loads the record and takes it over for this process: rewrites it (or, when there
    /// is none, an empty placeholder) so that the KV revision moves past the one any
    /// previous owner read. From then on a save by a previous owner is fenced however late
    /// it comes (a replica that was cut off and has not yet noticed its lease is gone),
    /// and this process's own saves are not. Returns the record to resume from.
    pub async fn claim(
        kv: kv::Store,
        id: u32,
        count: u32,
    ) -> Result<(Self, Option<SessionRecord>), IngestError> {
        for _ in 0..CLAIM_ATTEMPTS {
            let (mut store, record) = Self::load(kv.clone(), id, count).await?;
            let value = match &record {
                Some(record) => store.encode(record),
                None => Bytes::new(),
            };
            // Revision 0 expects no entry at all: a create.
            match kv
                .update(&store.key, value, store.revision.unwrap_or(0))
                .await
            {
                Ok(revision) => {
                    store.revision = Some(revision);
                    return Ok((store, record));
                }
                // The previous owner saved between our read and our write: read again.
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => {
                    return Err(IngestError::with_source(
                        IngestErrorKind::Bus,
                        format!("cannot claim session {}", store.key),
                        e,
                    ));
                }
            }
        }
        Err(IngestError::new(
            IngestErrorKind::Bus,
            format!(
                "session {} keeps changing under us; retrying later",
                shard_key(id, count)
            ),
        ))
    }

    /// Writes `record` if the KV entry is still at the revision this store last wrote or
    /// read. When it is not, the entry is read back: if it holds this store's own claim,
    /// the move was this store's earlier write whose reply was lost (a timeout, a leader
    /// election) and the save goes on from there; anything else is another owner.
    pub async fn save(&mut self, record: &SessionRecord) -> Result<(), SaveError> {
        let value = self.encode(record);
        match self.write(value.clone()).await {
            Err(SaveError::Fenced) => {
                if !self.adopt_own_write().await? {
                    return Err(SaveError::Fenced);
                }
                tracing::info!(
                    key = %self.key,
                    "session record moved by this process's own earlier save (its reply was lost)"
                );
                self.write(value).await
            }
            result => result,
        }
    }

    async fn write(&mut self, value: Bytes) -> Result<(), SaveError> {
        let result = match self.revision {
            Some(revision) => self
                .kv
                .update(&self.key, value, revision)
                .await
                .map_err(|e| {
                    if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                        SaveError::Fenced
                    } else {
                        SaveError::Unavailable
                    }
                }),
            None => self.kv.create(&self.key, value).await.map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists {
                    SaveError::Fenced
                } else {
                    SaveError::Unavailable
                }
            }),
        };
        self.revision = Some(result?);
        Ok(())
    }

    /// Reads the entry back; when its record carries this store's claim, takes its
    /// revision as ours and returns true.
    async fn adopt_own_write(&mut self) -> Result<bool, SaveError> {
        let entry = self
            .kv
            .entry(self.key.clone())
            .await
            .map_err(|_| SaveError::Unavailable)?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(false);
        };
        let own = serde_json::from_slice::<Stored>(&entry.value)
            .is_ok_and(|stored| stored.claim.as_deref() == Some(self.claim.as_str()));
        if own {
            self.revision = Some(entry.revision);
        }
        Ok(own)
    }

    fn encode(&self, record: &SessionRecord) -> Bytes {
        let stored = Stored {
            record: record.clone(),
            claim: Some(self.claim.clone()),
        };
        Bytes::from(serde_json::to_vec(&stored).expect("session record serializes"))
    }
}
