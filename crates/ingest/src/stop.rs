//! How the coordinator ends a shard task, and whether the shard may still write its
//! session record on the way out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
pub(crate) struct Stop {
    token: CancellationToken,
    lost: Arc<AtomicBool>,
    resumable: Arc<AtomicBool>,
}

impl Stop {
    /// Shutdown or handover: drain, save the session, close with the RESUME code.
    pub fn handover(&self) {
        self.token.cancel();
    }

    /// The lease is someone else's: drain and close, but never write the session record,
    /// which now belongs to the new owner.
    pub fn lost(&self) {
        // Set before the cancel, so the shard sees it when it wakes up.
        self.lost.store(true, Ordering::SeqCst);
        self.token.cancel();
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Set by the shard once its session record is in KV: from then on, a handover
    /// loses nothing, because the next owner resumes and Discord replays what this
    /// process had not read. Before that (identify queued, READY not yet saved), a
    /// handover would make the next owner identify anew and strand the first session's
    /// unread events, so the coordinator hands over resumable shards only.
    pub fn set_resumable(&self) {
        self.resumable.store(true, Ordering::SeqCst);
    }

    pub fn is_resumable(&self) -> bool {
        self.resumable.load(Ordering::SeqCst)
    }

    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }
}
