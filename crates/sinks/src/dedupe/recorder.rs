//! Group commit of dedupe records.
//!
//! Deliveries that finish while a write is in flight wait for the next one, which
//! records them all: one KV write per block touched instead of one per delivery. Under
//! load that removes most of the sink's NATS messages for dedupe (a publish and its ack
//! each); alone, a delivery waits one write, as before. Each waiter learns whether the
//! write covering it was stored, and acks only after that, so the record still exists
//! before the ack.

use std::collections::{BTreeMap, BTreeSet};

use async_nats::jetstream::kv;
use tokio::sync::{mpsc, oneshot};

use super::block::{self, BlockRecord};

/// Blocks whose records stay in memory. Deliveries move forward through the stream, so
/// the oldest goes first; a copy in a block already let go (a redelivery long after) starts
/// a new generation of that block's record rather than overwrite the stored one.
const BLOCKS_KEPT: usize = 64;

/// The most deliveries one write covers.
const GROUP_MAX: usize = 4096;

struct Pending {
    seq: u64,
    hash: u32,
    stored: oneshot::Sender<bool>,
}

/// Hands delivered copies to the recording task; cheap to clone.
#[derive(Clone)]
pub(super) struct Recorder {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Recorder {
    /// Starts the task that writes `store`'s block records; it ends with the last clone.
    pub fn start(store: kv::Store) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            store,
            writer: rand::random(),
            generations: 0,
            blocks: BTreeMap::new(),
        };
        tokio::spawn(writer.run(rx));
        Self { tx }
    }

    /// Records the copy at stream sequence `seq` of the event `id`; true once a write
    /// holding it was stored.
    pub async fn record(&self, seq: u64, id: &str) -> bool {
        let (stored, done) = oneshot::channel();
        let pending = Pending {
            seq,
            hash: block::id_hash(id),
            stored,
        };
        self.tx.send(pending).is_ok() && done.await.unwrap_or(false)
    }
}

struct Writer {
    store: kv::Store,
    /// Random per process: records of concurrent workers never share a key.
    writer: u64,
    generations: u64,
    /// Block → (generation, record).
    blocks: BTreeMap<u64, (u64, BlockRecord)>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Pending>) {
        let mut group = Vec::new();
        while rx.recv_many(&mut group, GROUP_MAX).await > 0 {
            let touched: BTreeSet<u64> = group.iter().map(|p| self.add(p)).collect();
            let writes = touched.iter().map(|&b| self.write(b));
            let stored: BTreeMap<u64, bool> = futures::future::join_all(writes)
                .await
                .into_iter()
                .collect();
            for pending in group.drain(..) {
                let block = block::locate(pending.seq).0;
                // The waiter may have gone (its task cancelled): nothing to tell.
                let _ = pending.stored.send(stored[&block]);
            }
            self.let_go();
        }
    }

    /// Adds a copy to its block's record; returns the block.
    fn add(&mut self, pending: &Pending) -> u64 {
        let (block, offset) = block::locate(pending.seq);
        let generations = &mut self.generations;
        let (_, record) = self.blocks.entry(block).or_insert_with(|| {
            *generations += 1;
            (*generations, BlockRecord::default())
        });
        record.insert(offset, pending.hash);
        block
    }

    /// Writes `block`'s whole record under its own key.
    async fn write(&self, block: u64) -> (u64, bool) {
        let (generation, record) = &self.blocks[&block];
        let key = key(block, self.writer, *generation);
        match self.store.put(&key, record.encode()).await {
            Ok(_) => (block, true),
            Err(error) => {
                tracing::warn!(%key, %error, "cannot write a dedupe record; the next write of its block carries it again");
                (block, false)
            }
        }
    }

    fn let_go(&mut self) {
        while self.blocks.len() > BLOCKS_KEPT {
            self.blocks.pop_first();
        }
    }
}

/// `g.<block>.<writer>.<generation>`: every record of a block under `g.<block>.>`.
pub(super) fn key(block: u64, writer: u64, generation: u64) -> String {
    format!("g.{block}.{writer:016x}.{generation}")
}

/// The wildcard key of every record of `block`.
pub(super) fn block_keys(block: u64) -> String {
    format!("g.{block}.>")
}
