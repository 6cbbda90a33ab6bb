//! Transport compression end to end. The same test runs in three builds of the relaycord
//! package (scripts/test.sh): default (`zstd`: twilight asks for zstd-stream), `--features
//! zlib` without defaults (zlib-stream) and `--no-default-features` (uncompressed). Each run
//! must deliver every event the simulator logged, across a reconnect (which resets the
//! client's decompressor on a new connection), on connections that negotiated the mode of
//! that build.

use std::time::Duration;

use relaycord_sim::{Compression, GenerateSpec};

use relaycord_testkit::Stack;

/// What twilight-gateway asks for with the features this build enabled: zstd wins over zlib.
fn expected_compression() -> Compression {
    if cfg!(feature = "zstd") {
        Compression::ZstdStream
    } else if cfg!(feature = "zlib") {
        Compression::ZlibStream
    } else {
        Compression::None
    }
}

#[tokio::test]
async fn events_arrive_over_the_compression_of_this_build() {
    let shards = 4;
    let h = Stack::builder()
        .sim_config(relaycord_sim::SimConfig {
            shards,
            guilds: shards * 3,
            ..Default::default()
        })
        .config(|c| c.ingest.lease_ttl = Duration::from_secs(3))
        .ingest_unready()
        .start()
        .await;
    h.ready().await;
    let generator = h.sim.generate(GenerateSpec {
        count: Some(4000),
        rate_per_sec: 2000.0,
        ..GenerateSpec::default()
    });
    while generator.generated() < 2000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // New connections mid-stream: a fresh compression context on each side.
    h.sim.request_reconnect(1);
    h.sim.drop_connection(2);
    assert_eq!(generator.finished().await, 4000);
    h.ready().await;
    h.assert_nothing_missing().await;

    let stats = h.sim.stats();
    let expected = expected_compression();
    assert!(stats.resumes >= 2, "{stats:?}");
    assert!(stats.connections > u64::from(shards), "{stats:?}");
    assert_eq!(
        stats.connections_by_compression.get(expected),
        stats.connections,
        "every connection negotiated {:?}: {stats:?}",
        expected.as_query()
    );
    h.stop_expecting_failed_resumes(0).await;
}
