//! A block record: the copies one writer delivered among 256 consecutive stream sequences.
//!
//! One KV value per (block, writer, generation) replaces one KV key per copy, so a group
//! of deliveries finishing together costs one write per block they touch instead of one
//! write each (see [`super::recorder`]). The record is cumulative: each write carries every
//! copy the writer recorded in the block so far, so a failed write is repaired by the
//! next one and a lookup reads one value per writer.
//!
//! Each entry is the copy's offset in the block and a 32-bit hash of its id. The
//! sequence alone would name a different event if the stream were deleted and created
//! again within the dedupe window (sequences restart at 1); the id's hash keeps that from
//! skipping a new event, as the id in the per-copy keys did (a wrong match needs the
//! same sequence *and* a 2⁻³² hash collision).

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

/// Sequences per block: 2^8 (the offset is a byte). Small enough that a full record stays
/// near 1 KiB (it is written whole each time), large enough that a group of deliveries
/// touches one or two.
pub const BLOCK_BITS: u32 = 8;

/// The first byte of a record's value; a lookup ignores a value in a format it does not
/// know rather than misread it.
const FORMAT: u8 = 1;
const ENTRY: usize = 5;

/// The block of stream sequence `seq` and its offset in it.
pub fn locate(seq: u64) -> (u64, u8) {
    // The offset is the low 8 bits, which is what the cast keeps.
    (seq >> BLOCK_BITS, seq as u8)
}

/// FNV-1a over the id's bytes: fixed by its definition, so records written by one build
/// are read by every other (std's hasher promises no such thing).
pub fn id_hash(id: &str) -> u32 {
    id.bytes().fold(0x811c_9dc5, |hash: u32, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// The copies one writer recorded in one block.
#[derive(Debug, Default)]
pub struct BlockRecord {
    entries: BTreeMap<u8, u32>,
}

impl BlockRecord {
    /// Adds a copy; a copy recorded again (its sequence reused by a stream created anew)
    /// takes the newer id.
    pub fn insert(&mut self, offset: u8, hash: u32) {
        self.entries.insert(offset, hash);
    }

    pub fn encode(&self) -> Bytes {
        let mut value = BytesMut::with_capacity(1 + ENTRY * self.entries.len());
        value.put_u8(FORMAT);
        for (&offset, &hash) in &self.entries {
            value.put_u8(offset);
            value.put_u32(hash);
        }
        value.freeze()
    }
}

/// Whether the encoded record `value` holds the copy at `offset` whose id hashes to
/// `hash`.
pub fn contains(value: &[u8], offset: u8, hash: u32) -> bool {
    let Some((&FORMAT, entries)) = value.split_first() else {
        return false;
    };
    entries
        .chunks_exact(ENTRY)
        .any(|e| e[0] == offset && e[1..] == hash.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_map_to_blocks_of_256() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(255), (0, 255));
        assert_eq!(locate(256), (1, 0));
        assert_eq!(locate(1_000_003), (3906, 67));
    }

    #[test]
    fn the_hash_is_fnv_1a() {
        // Published FNV-1a 32 test vectors: records written by any build must agree.
        assert_eq!(id_hash(""), 0x811c_9dc5);
        assert_eq!(id_hash("a"), 0xe40c_292c);
        assert_eq!(id_hash("foobar"), 0xbf9c_f968);
    }

    #[test]
    fn a_record_holds_its_copies_and_nothing_else() {
        let mut record = BlockRecord::default();
        let a = id_hash("msg:1");
        let b = id_hash("msg:2");
        record.insert(3, a);
        record.insert(200, b);
        let value = record.encode();
        assert_eq!(value.len(), 1 + 2 * ENTRY);
        assert!(contains(&value, 3, a));
        assert!(contains(&value, 200, b));
        assert!(!contains(&value, 3, b), "same sequence, another id");
        assert!(!contains(&value, 4, a), "same id, another sequence");
        assert!(!contains(&[], 3, a));
        let mut unknown = value.to_vec();
        unknown[0] = 2;
        assert!(!contains(&unknown, 3, a), "a format it does not know");
    }

    #[test]
    fn a_copy_recorded_again_takes_the_newer_id() {
        let mut record = BlockRecord::default();
        record.insert(7, id_hash("old"));
        record.insert(7, id_hash("new"));
        let value = record.encode();
        assert!(contains(&value, 7, id_hash("new")));
        assert!(!contains(&value, 7, id_hash("old")));
        assert_eq!(value.len(), 1 + ENTRY);
    }
}
