//! Counters and the proof-log record: what a test reads to prove what happened.

use crate::compression::Compression;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One dispatch, as created: what [`crate::Simulator::sent`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentDispatch {
    pub shard: u32,
    pub session_id: String,
    pub seq: u64,
    pub event_type: String,
    /// The raw `d` JSON, byte for byte as sent.
    pub data: String,
    pub guild_id: Option<u64>,
    /// The generator's event number (from 0) for generated events: the same number on every
    /// session the event went to, and on a [`crate::Simulator::duplicate_last`] of it. `None`
    /// for READY, GUILD_CREATE, RESUMED and scripted dispatches.
    pub event: Option<u64>,
    /// The shard count of the session (`shard` is within it).
    pub shard_count: u32,
    /// When the simulator created it: where an end-to-end latency starts.
    pub created_at: std::time::SystemTime,
}

/// A slot that has a session, as [`crate::Simulator::live_sessions`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveSession {
    pub shard_count: u32,
    pub shard: u32,
    pub session_id: String,
    /// Whether a connection currently serves the session (false between a disconnect and
    /// the RESUME; its dispatches wait in the session log meanwhile).
    pub connected: bool,
}

/// Counters since the simulator started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Websocket connections accepted.
    pub connections: u64,
    /// The same connections by the transport compression they negotiated (`compress=`).
    pub connections_by_compression: CompressionCounts,
    /// Successful IDENTIFYs (new sessions).
    pub identifies: u64,
    /// Successful RESUMEs.
    pub resumes: u64,
    /// RESUMEs answered with INVALID_SESSION or closed with 4007.
    pub failed_resumes: u64,
    /// Dispatches created (every entry of the proof log, READY/GUILD_CREATE/RESUMED included).
    pub dispatches: u64,
    /// Dispatches sent again by RESUME replays.
    pub replayed: u64,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// Heartbeats left without HEARTBEAT_ACK because their shard was a zombie
    /// ([`crate::Simulator::set_zombie`]).
    pub heartbeats_unacked: u64,
    /// IDENTIFYs less than 5 s after the previous one of the same bucket
    /// (`shard % max_concurrency`): Discord's identify rate limit, counted but not enforced.
    pub identify_violations: u64,
    /// IDENTIFYs refused (closed with 4008) because `session_start_limit.remaining` was 0.
    pub session_start_exhausted: u64,
    pub session_start_remaining: u32,
}

/// Connections per negotiated transport compression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompressionCounts {
    pub none: u64,
    pub zlib_stream: u64,
    pub zstd_stream: u64,
}

impl CompressionCounts {
    /// Connections that negotiated `compression`.
    pub fn get(&self, compression: Compression) -> u64 {
        match compression {
            Compression::None => self.none,
            Compression::ZlibStream => self.zlib_stream,
            Compression::ZstdStream => self.zstd_stream,
        }
    }
}

/// The live counters behind [`SimStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connections: AtomicU64,
    /// Indexed like [`Counters::count_connection`].
    pub by_compression: [AtomicU64; 3],
    pub identifies: AtomicU64,
    pub resumes: AtomicU64,
    pub failed_resumes: AtomicU64,
    pub dispatches: AtomicU64,
    pub replayed: AtomicU64,
    pub heartbeats: AtomicU64,
    pub heartbeats_unacked: AtomicU64,
    pub identify_violations: AtomicU64,
    pub session_start_exhausted: AtomicU64,
}

impl Counters {
    pub fn count_connection(&self, compression: Compression) {
        self.connections.fetch_add(1, Relaxed);
        let index = match compression {
            Compression::None => 0,
            Compression::ZlibStream => 1,
            Compression::ZstdStream => 2,
        };
        self.by_compression[index].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self, session_start_remaining: u32) -> SimStats {
        SimStats {
            connections: self.connections.load(Relaxed),
            connections_by_compression: CompressionCounts {
                none: self.by_compression[0].load(Relaxed),
                zlib_stream: self.by_compression[1].load(Relaxed),
                zstd_stream: self.by_compression[2].load(Relaxed),
            },
            identifies: self.identifies.load(Relaxed),
            resumes: self.resumes.load(Relaxed),
            failed_resumes: self.failed_resumes.load(Relaxed),
            dispatches: self.dispatches.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            heartbeats: self.heartbeats.load(Relaxed),
            heartbeats_unacked: self.heartbeats_unacked.load(Relaxed),
            identify_violations: self.identify_violations.load(Relaxed),
            session_start_exhausted: self.session_start_exhausted.load(Relaxed),
            session_start_remaining,
        }
    }
}
