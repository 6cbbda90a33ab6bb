//! Shared test harness: a simulator on a free port and unmodified twilight shards against it.
#![allow(dead_code)] // each test file uses a different part

use futures::StreamExt;
use relaycord_sim::{SentDispatch, SimConfig, Simulator};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::time::Duration;
use tokio::sync::mpsc;
use twilight_gateway::queue::{InMemoryQueue, Queue};
use twilight_gateway::{ConfigBuilder, EventTypeFlags, Intents, Message, Shard, ShardId};

/// Upper bound for anything that should take milliseconds; only reached when a test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub async fn start(config: SimConfig) -> Simulator {
    // Several providers may be compiled in (workspace feature unification): pick one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Simulator::start(listener, config).await.unwrap()
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// An unmodified twilight shard pointed at the simulator.
pub fn shard(sim: &Simulator, id: ShardId, token: &str) -> Shard {
    shard_with_queue(sim, id, token, InMemoryQueue::default())
}

pub fn shard_with_queue<Q: Queue>(sim: &Simulator, id: ShardId, token: &str, queue: Q) -> Shard<Q> {
    let config = ConfigBuilder::new(token.to_owned(), Intents::GUILDS | Intents::GUILD_MESSAGES)
        .proxy_url(sim.gateway_url())
        .queue(queue)
        .build();
    Shard::with_config(id, config)
}

/// A gateway frame as the client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    pub seq: u64,
    pub event_type: String,
    pub data: String,
}

#[derive(Debug, Default)]
pub struct Received {
    pub dispatches: Vec<Dispatch>,
    /// Opcodes of every text frame, in order.
    pub ops: Vec<u8>,
    /// Close frames the shard reported (gateway closes, and 1006 for transport failures).
    pub closes: Vec<Option<u16>>,
    pub errors: Vec<String>,
    /// The shard's stream ended (fatal close).
    pub ended: bool,
}

impl Received {
    fn record(
        &mut self,
        item: Option<Result<Message, twilight_gateway::error::ReceiveMessageError>>,
    ) {
        match item {
            Some(Ok(Message::Text(text))) => {
                #[derive(Deserialize)]
                struct Frame<'a> {
                    op: u8,
                    s: Option<u64>,
                    t: Option<String>,
                    #[serde(borrow)]
                    d: Option<&'a RawValue>,
                }
                let frame: Frame<'_> = serde_json::from_str(&text).expect("frame is JSON");
                self.ops.push(frame.op);
                if frame.op == 0 {
                    let event_type = frame.t.expect("dispatch has t");
                    // Every dispatch must be something a real client library can deserialize.
                    let parsed = twilight_gateway::parse(text.clone(), EventTypeFlags::all());
                    assert!(
                        parsed.is_ok(),
                        "twilight cannot parse {event_type}: {parsed:?}"
                    );
                    self.dispatches.push(Dispatch {
                        seq: frame.s.expect("dispatch has s"),
                        event_type,
                        data: frame.d.expect("dispatch has d").get().to_owned(),
                    });
                }
            }
            Some(Ok(Message::Close(frame))) => self.closes.push(frame.map(|f| f.code)),
            Some(Err(error)) => self.errors.push(error.to_string()),
            None => self.ended = true,
        }
    }

    pub fn seqs(&self) -> Vec<u64> {
        self.dispatches.iter().map(|d| d.seq).collect()
    }

    pub fn last_seq(&self) -> u64 {
        self.dispatches.last().map_or(0, |d| d.seq)
    }

    pub fn count(&self, event_type: &str) -> usize {
        self.dispatches
            .iter()
            .filter(|d| d.event_type == event_type)
            .count()
    }
}

/// A shard polled continuously by its own task, as a real bot does.
pub struct Client {
    rx: mpsc::UnboundedReceiver<
        Option<Result<Message, twilight_gateway::error::ReceiveMessageError>>,
    >,
    pub received: Received,
}

impl Client {
    pub fn spawn<Q: Queue + Unpin + Send + 'static>(mut shard: Shard<Q>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let item = shard.next().await;
                let end = item.is_none();
                if tx.send(item).is_err() || end {
                    break;
                }
            }
        });
        Self {
            rx,
            received: Received::default(),
        }
    }

    /// Receives until `done` holds; panics (with what was received) after [`PATIENCE`].
    pub async fn until(&mut self, what: &str, done: impl Fn(&Received) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !done(&self.received) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(item)) => self.received.record(item),
                Ok(None) => panic!(
                    "shard task ended while waiting for {what}: {:?}",
                    self.summary()
                ),
                Err(_) => panic!("timed out waiting for {what}: {:?}", self.summary()),
            }
        }
    }

    fn summary(&self) -> (Vec<u64>, &[Option<u16>], &[String], bool) {
        let r = &self.received;
        (r.seqs(), &r.closes, &r.errors, r.ended)
    }
}

/// Drives a shard by hand (for tests that stop reading).
pub async fn poll_once<Q: Queue + Unpin>(shard: &mut Shard<Q>, received: &mut Received) {
    let item = tokio::time::timeout(PATIENCE, shard.next())
        .await
        .expect("shard produced nothing in time");
    received.record(item);
}

/// The proof log of one shard.
pub fn sent_on(sim: &Simulator, shard: u32) -> Vec<SentDispatch> {
    sim.sent()
        .into_iter()
        .filter(|d| d.shard == shard)
        .collect()
}

/// The client saw exactly the dispatches the simulator logged for `session`, in order, with
/// no gap, duplicate or alteration.
pub fn assert_received_everything(received: &Received, logged: &[SentDispatch]) {
    let expected: Vec<Dispatch> = logged
        .iter()
        .map(|d| Dispatch {
            seq: d.seq,
            event_type: d.event_type.clone(),
            data: d.data.clone(),
        })
        .collect();
    assert_eq!(
        received.seqs(),
        (1..=logged.len() as u64).collect::<Vec<_>>(),
        "seqs must be contiguous from 1"
    );
    assert_eq!(received.dispatches.len(), expected.len());
    for (got, want) in received.dispatches.iter().zip(&expected) {
        assert_eq!(got, want, "dispatch differs from the proof log");
    }
}
