//! The sink's dedupe records against a real nats-server: copies recorded together by
//! group commit, one record per block and writer, looked up by sequence and id.

use std::time::Duration;

use relaycord_sinks::dedupe::{BLOCKS_KEPT, Dedupe};
use relaycord_testkit::Stack;

const WINDOW: Duration = Duration::from_secs(600);

/// How many records the bucket holds now (one message per key), and how many writes it
/// has taken.
async fn records(bus: &Stack, sink: &str) -> (u64, u64) {
    let mut stream = bus
        .js
        .get_stream(format!("KV_{}", Dedupe::bucket(sink)))
        .await
        .unwrap();
    let state = &stream.info().await.unwrap().state;
    (state.messages, state.last_sequence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_recorded_together_are_found_and_others_are_not() {
    let bus = Stack::builder().start().await;
    let dedupe = Dedupe::open(&bus.js, "groups", WINDOW, 1).await.unwrap();
    // 600 copies finishing at once, over sequences 1..=600: blocks 0, 1 and 2.
    let writes = (1..=600u64).map(|seq| {
        let dedupe = dedupe.clone();
        tokio::spawn(async move { dedupe.record_copy(&format!("msg:{seq}"), seq).await })
    });
    for write in writes.collect::<Vec<_>>() {
        write.await.unwrap();
    }
    for seq in 1..=600u64 {
        assert!(
            dedupe.delivered_copy(&format!("msg:{seq}"), seq).await,
            "copy {seq} recorded"
        );
    }
    assert!(
        !dedupe.delivered_copy("msg:601", 601).await,
        "never delivered"
    );
    assert!(
        !dedupe.delivered_copy("msg:other", 7).await,
        "the sequence of a delivered copy, another id (a stream created anew)"
    );
    assert!(
        !dedupe.delivered_copy("msg:8", 9).await,
        "a delivered id at another sequence (the same id stored anew)"
    );
    // Records per block, not per copy: each write of a block replaces its record with a
    // fuller one (one per block unless a write came after its generation's span); and
    // copies waiting together shared writes.
    let (kept, writes) = records(&bus, "groups").await;
    assert!((3..600).contains(&kept), "{kept} records for 3 blocks");
    assert!(writes < 600, "{writes} writes for 600 copies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_every_writer_and_of_the_old_per_copy_keys_are_read() {
    let bus = Stack::builder().start().await;
    let one = Dedupe::open(&bus.js, "writers", WINDOW, 1).await.unwrap();
    let two = Dedupe::open(&bus.js, "writers", WINDOW, 1).await.unwrap();
    one.record_copy("msg:1", 1).await;
    two.record_copy("msg:2", 2).await;
    // A copy recorded under its own key, as before block records (and as a replayed
    // dead letter still is).
    one.record("msg:3", "3").await;
    for (id, seq) in [("msg:1", 1), ("msg:2", 2), ("msg:3", 3)] {
        assert!(one.delivered_copy(id, seq).await, "{id} seen by one");
        assert!(two.delivered_copy(id, seq).await, "{id} seen by two");
    }
    assert_eq!(
        records(&bus, "writers").await.0,
        3,
        "one per writer, and the key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_let_go_from_memory_is_never_overwritten() {
    let bus = Stack::builder().start().await;
    let dedupe = Dedupe::open(&bus.js, "old-blocks", WINDOW, 1)
        .await
        .unwrap();
    dedupe.record_copy("msg:early", 5).await;
    // More later blocks than the writer keeps, so block 0 is let go.
    let later = BLOCKS_KEPT as u64 + 6;
    for block in 1..=later {
        dedupe
            .record_copy(&format!("msg:{block}"), block << 8)
            .await;
    }
    // A redelivery long after, in block 0 again: a new record beside the first.
    dedupe.record_copy("msg:late", 6).await;
    assert!(
        dedupe.delivered_copy("msg:early", 5).await,
        "the first record kept"
    );
    assert!(dedupe.delivered_copy("msg:late", 6).await);
    assert_eq!(records(&bus, "old-blocks").await.0, later + 2);
}
