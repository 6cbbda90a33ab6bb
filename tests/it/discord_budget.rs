//! Discord's invalid-request limit is per IP: one deployment's processes share their
//! counts through NATS KV, so one process's refused requests hold another's.

use std::time::Duration;

use async_nats::jetstream;
use relaycord_bus::InvalidRequests;
use relaycord_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_processs_refused_requests_hold_anothers() {
    let nats = NatsServer::start().unwrap();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let kv = InvalidRequests::bucket(&js, "TEST", 1).await.unwrap();
    // Two processes' counters, with a hold at 3 answers instead of 8,000.
    let seen: &'static InvalidRequests = Box::leak(Box::new(InvalidRequests::new(2, 3)));
    let other: &'static InvalidRequests = Box::leak(Box::new(InvalidRequests::new(2, 3)));
    let stop = CancellationToken::new();
    tokio::spawn({
        let (kv, stop) = (kv.clone(), stop.clone());
        async move { seen.share(kv, "sink-orders-pod-1", stop).await }
    });
    tokio::spawn({
        let (kv, stop) = (kv.clone(), stop.clone());
        async move { other.share(kv, "interactions pod/2", stop).await }
    });
    for _ in 0..3 {
        seen.observe(401, None);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while other.in_window() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the count never reached the other process"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admitted = tokio::time::timeout(Duration::from_secs(1), other.admit()).await;
    assert!(admitted.is_err(), "the other process held its request");
    assert_eq!(
        seen.in_window(),
        3,
        "a process does not count its own answers twice"
    );
    stop.cancel();
}
