//! Group commit of dedupe records.
//!
//! Deliveries that finish while a write is in flight wait for the next one, which
//! records them all: one KV write per block touched instead of one per delivery. Under
//! load that removes most of the sink's NATS messages for dedupe (a publish and its ack
//! each); alone, a delivery waits one write, as before. Each waiter learns whether the
//! write covering it was stored, and acks only after that, so the record still exists
//! before the ack.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use tokio::sync::{mpsc, oneshot};

use super::block::{self, BlockRecord};

/// Blocks whose records a writer keeps in memory, at most. Deliveries move forward through
/// the stream, so the oldest goes first; a copy in a block already let go (a redelivery
/// long after) starts a new generation of that block's record rather than overwrite the
/// stored one.
pub const BLOCKS_KEPT: usize = 64;

/// How long one generation of a block's record takes new copies, from the first handed to
/// it. A record's stream timestamp is its last write, and the consumer check
/// ([`super::Dedupe::check_consumer`]) reads timestamps: bounding a generation's life
/// bounds how much older than its timestamp a copy in it can be (the span, or the time the
/// copy waited for a write in flight if longer, plus its own write). Long enough that a
/// block delivered slowly still has few records to read in a lookup.
pub const GENERATION_SPAN: Duration = Duration::from_secs(10);

/// The most deliveries one group takes (a write covers at most one block's 256).
const GROUP_MAX: usize = 4096;

struct Pending {
    seq: u64,
    hash: u32,
    /// When the copy was handed in: it may wait for a write in flight.
    at: Instant,
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
            blocks: Blocks::default(),
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
            at: Instant::now(),
            stored,
        };
        if self.tx.send(pending).is_err() {
            tracing::warn!("the dedupe writer has stopped; deliveries are not recorded");
            return false;
        }
        done.await.unwrap_or(false)
    }
}

struct Writer {
    store: kv::Store,
    /// Random per process: records of concurrent workers never share a key.
    writer: u64,
    blocks: Blocks,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Pending>) {
        let mut group = Vec::new();
        while rx.recv_many(&mut group, GROUP_MAX).await > 0 {
            let now = Instant::now();
            let touched: BTreeSet<u64> = group
                .iter()
                .map(|p| self.blocks.add(p.seq, p.hash, p.at, now))
                .collect();
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
            self.blocks.let_go(Instant::now());
        }
    }

    /// Writes `block`'s whole record under its own key.
    async fn write(&self, block: u64) -> (u64, bool) {
        let generation = &self.blocks.kept[&block];
        let key = key(block, self.writer, generation.number);
        match self.store.put(&key, generation.record.encode()).await {
            Ok(_) => (block, true),
            Err(error) => {
                let next = "a later write of its generation may carry it again";
                tracing::warn!(%key, %error, "cannot write a dedupe record; {next}");
                (block, false)
            }
        }
    }
}

/// The records a writer keeps: block → its current generation.
#[derive(Default)]
struct Blocks {
    kept: BTreeMap<u64, Generation>,
    generations: u64,
}

struct Generation {
    number: u64,
    started: Instant,
    record: BlockRecord,
}

impl Blocks {
    /// Adds a copy handed in at `at` to its block's current generation, starting one when
    /// there is none or it is [`GENERATION_SPAN`] old; returns the block. A generation is
    /// as old as the earliest copy it holds.
    fn add(&mut self, seq: u64, hash: u32, at: Instant, now: Instant) -> u64 {
        let (block, offset) = block::locate(seq);
        let current = self
            .kept
            .get(&block)
            .is_some_and(|g| now.duration_since(g.started) < GENERATION_SPAN);
        if !current {
            self.generations += 1;
            let fresh = Generation {
                number: self.generations,
                started: at,
                record: BlockRecord::default(),
            };
            self.kept.insert(block, fresh);
        }
        let generation = self.kept.get_mut(&block).expect("inserted above");
        generation.started = generation.started.min(at);
        generation.record.insert(offset, hash);
        block
    }

    /// Drops generations past their span (written for the last time already), then the
    /// lowest blocks beyond [`BLOCKS_KEPT`].
    fn let_go(&mut self, now: Instant) {
        self.kept
            .retain(|_, g| now.duration_since(g.started) < GENERATION_SPAN);
        while self.kept.len() > BLOCKS_KEPT {
            self.kept.pop_first();
        }
    }
}

/// `g.<block>.<writer>.<generation>`: every record of a block under [`block_prefix`].
fn key(block: u64, writer: u64, generation: u64) -> String {
    format!("{}{writer:016x}.{generation}", block_prefix(block))
}

/// `g.<block>.`, the start of every key of `block`'s records.
pub(super) fn block_prefix(block: u64) -> String {
    format!("g.{block}.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generation_takes_copies_for_its_span_then_a_new_one_starts() {
        let mut blocks = Blocks::default();
        let t0 = Instant::now();
        assert_eq!(blocks.add(1, 10, t0, t0), 0);
        let half = t0 + GENERATION_SPAN / 2;
        assert_eq!(blocks.add(2, 20, half, half), 0);
        assert_eq!(blocks.kept[&0].number, 1, "same generation within the span");
        let end = t0 + GENERATION_SPAN;
        blocks.add(3, 30, end, end);
        let renewed = &blocks.kept[&0];
        assert_eq!(renewed.number, 2, "a new generation after the span");
        let value = renewed.record.encode();
        assert!(block::contains(&value, 3, 30));
        assert!(
            !block::contains(&value, 1, 10),
            "it carries no copy of the old generation"
        );
    }

    #[test]
    fn blocks_are_let_go_by_age_and_beyond_the_count() {
        let mut blocks = Blocks::default();
        let t0 = Instant::now();
        blocks.add(5, 1, t0, t0);
        blocks.let_go(t0 + GENERATION_SPAN);
        assert!(blocks.kept.is_empty(), "past its span");
        for block in 0..(BLOCKS_KEPT as u64 + 6) {
            blocks.add(block << block::BLOCK_BITS, 1, t0, t0);
        }
        blocks.let_go(t0);
        assert_eq!(blocks.kept.len(), BLOCKS_KEPT);
        assert_eq!(blocks.kept.first_key_value().map(|(b, _)| *b), Some(6));
        // A block let go and written again gets a generation of its own: the stored
        // record of the earlier one is never overwritten.
        blocks.add(0, 1, t0, t0);
        assert_eq!(blocks.kept[&0].number, BLOCKS_KEPT as u64 + 8);
    }

    #[test]
    fn a_generation_is_as_old_as_the_earliest_copy_it_holds() {
        let mut blocks = Blocks::default();
        let t0 = Instant::now();
        let later = t0 + GENERATION_SPAN / 2;
        blocks.add(1, 10, later, later);
        // A copy handed in at t0 that waited for a write in flight joins it, and dates it.
        blocks.add(2, 20, t0, later);
        assert_eq!(blocks.kept[&0].started, t0);
        let end = t0 + GENERATION_SPAN;
        blocks.add(3, 30, end, end);
        assert_eq!(blocks.kept[&0].number, 2, "the span counts from t0");
    }

    #[test]
    fn keys_of_a_block_share_its_prefix_and_no_other_block_s() {
        let k = key(12, 0xab, 3);
        assert_eq!(k, "g.12.00000000000000ab.3");
        assert!(k.starts_with(&block_prefix(12)));
        assert!(!key(123, 0xab, 3).starts_with(&block_prefix(12)));
    }
}
