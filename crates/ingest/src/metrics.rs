//! Ingest metrics. Labels are bounded: event type (Discord's fixed set) and shard id.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, exponential_buckets,
};

/// Every `kind` label of `relaycord_publish_errors_total` (the publisher's failure kinds).
pub(crate) const PUBLISH_ERROR_KINDS: [&str; 5] = [
    "no_stream",
    "permission",
    "rejected",
    "timeout",
    "unavailable",
];

#[derive(Clone)]
pub struct IngestMetrics {
    pub events: IntCounterVec,
    pub malformed: IntCounter,
    pub oversized: IntCounter,
    pub published: IntCounter,
    pub duplicates: IntCounter,
    pub publish_errors: IntCounterVec,
    pub publish_latency: Histogram,
    pub inflight: IntGaugeVec,
    pub oldest_unacked: GaugeVec,
    pub window_size: IntGauge,
    pub shard_up: IntGaugeVec,
    pub sessions: IntCounterVec,
    pub heartbeat_latency: GaugeVec,
    pub leases: IntGauge,
    /// The live generation's shard count, and the reshard in progress (see `reshard`).
    pub shard_count: IntGauge,
    pub reshard_in_progress: IntGauge,
    pub reshard_target: IntGauge,
    pub reshard_started: Gauge,
    pub reshard_held: IntGauge,
    pub reshard_skipped: IntCounter,
    /// Discord's session starts left today, as this replica last saw the shared budget.
    pub session_start_remaining: IntGauge,
    pub session_start_total: IntGauge,
    /// When Discord refills the budget that `session_start_remaining` was read from.
    pub session_start_reset: Gauge,
}

impl IngestMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            events: IntCounterVec::new(
                Opts::new(
                    "relaycord_gateway_events_total",
                    "Gateway dispatches received, by event type.",
                ),
                &["type"],
            )?,
            malformed: IntCounter::new(
                "relaycord_gateway_malformed_total",
                "Gateway frames that could not be parsed; logged and skipped.",
            )?,
            oversized: IntCounter::new(
                "relaycord_publish_oversized_total",
                "Dispatches larger than the NATS server's max_payload; logged and skipped.",
            )?,
            published: IntCounter::new(
                "relaycord_publish_total",
                "Events acknowledged by JetStream (including duplicates).",
            )?,
            duplicates: IntCounter::new(
                "relaycord_publish_duplicates_total",
                "Publishes JetStream dropped as duplicates of an earlier Nats-Msg-Id.",
            )?,
            publish_errors: IntCounterVec::new(
                Opts::new(
                    "relaycord_publish_errors_total",
                    "Failed publish attempts, each retried until acknowledged, by kind: \
                     no_stream, permission and rejected need an operator; timeout and \
                     unavailable pass with NATS.",
                ),
                &["kind"],
            )?,
            publish_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "relaycord_publish_latency_seconds",
                    "Time from gateway receipt to JetStream acknowledgement.",
                )
                .buckets(exponential_buckets(0.0001, 2.0, 18)?),
            )?,
            inflight: IntGaugeVec::new(
                Opts::new(
                    "relaycord_publish_inflight",
                    "Publishes awaiting acknowledgement, per shard.",
                ),
                &["shard", "shard_count"],
            )?,
            oldest_unacked: GaugeVec::new(
                Opts::new(
                    "relaycord_publish_oldest_unacked_seconds",
                    "Age of the shard's oldest publish awaiting acknowledgement (0: none).",
                ),
                &["shard", "shard_count"],
            )?,
            window_size: IntGauge::new(
                "relaycord_publish_window_size",
                "ingest.window: publishes a shard may have awaiting ack before it pauses \
                 reading (window fill = relaycord_publish_inflight / this).",
            )?,
            shard_up: IntGaugeVec::new(
                Opts::new(
                    "relaycord_shard_up",
                    "1 while the shard has an active gateway session; 0 while an owned \
                     shard has none or is not running.",
                ),
                &["shard", "shard_count"],
            )?,
            sessions: IntCounterVec::new(
                Opts::new(
                    "relaycord_shard_sessions_total",
                    "Sessions started (kind=identify) or resumed (kind=resume).",
                ),
                &["kind"],
            )?,
            heartbeat_latency: GaugeVec::new(
                Opts::new(
                    "relaycord_shard_heartbeat_latency_seconds",
                    "Average gateway heartbeat round trip, per shard.",
                ),
                &["shard", "shard_count"],
            )?,
            leases: IntGauge::new(
                "relaycord_shard_leases_held",
                "Shards this process owns (leases held, or statically assigned).",
            )?,
            shard_count: IntGauge::new(
                "relaycord_shard_count",
                "Shards of the live generation (the old one while a reshard is in progress).",
            )?,
            reshard_in_progress: IntGauge::new(
                "relaycord_reshard_in_progress",
                "1 while a reshard is in progress (a new generation runs beside the old), else 0.",
            )?,
            reshard_target: IntGauge::new(
                "relaycord_reshard_target_shards",
                "Shard count of the generation being brought up (0: no reshard).",
            )?,
            reshard_started: Gauge::new(
                "relaycord_reshard_started_timestamp_seconds",
                "Unix time the reshard in progress began (0: none).",
            )?,
            reshard_held: IntGauge::new(
                "relaycord_reshard_held_events",
                "Events this process's new-generation shards hold back until the switch.",
            )?,
            reshard_skipped: IntCounter::new(
                "relaycord_reshard_overlap_skipped_total",
                "Held events the new generation did not publish at the switch because the old \
                 generation had (matched by content and order).",
            )?,
            session_start_remaining: IntGauge::new(
                "relaycord_session_start_remaining",
                "Identifies left in Discord's daily session_start_limit, as last read or spent by this replica.",
            )?,
            session_start_total: IntGauge::new(
                "relaycord_session_start_total",
                "Identifies Discord allows per day (session_start_limit.total).",
            )?,
            session_start_reset: Gauge::new(
                "relaycord_session_start_reset_timestamp_seconds",
                "Unix time at which Discord refills the budget relaycord_session_start_remaining was read from; an older value is stale.",
            )?,
        };
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.malformed.clone()))?;
        registry.register(Box::new(m.oversized.clone()))?;
        registry.register(Box::new(m.published.clone()))?;
        registry.register(Box::new(m.duplicates.clone()))?;
        registry.register(Box::new(m.publish_errors.clone()))?;
        registry.register(Box::new(m.publish_latency.clone()))?;
        registry.register(Box::new(m.inflight.clone()))?;
        registry.register(Box::new(m.oldest_unacked.clone()))?;
        registry.register(Box::new(m.window_size.clone()))?;
        registry.register(Box::new(m.shard_up.clone()))?;
        registry.register(Box::new(m.sessions.clone()))?;
        registry.register(Box::new(m.heartbeat_latency.clone()))?;
        registry.register(Box::new(m.leases.clone()))?;
        registry.register(Box::new(m.shard_count.clone()))?;
        registry.register(Box::new(m.reshard_in_progress.clone()))?;
        registry.register(Box::new(m.reshard_target.clone()))?;
        registry.register(Box::new(m.reshard_started.clone()))?;
        registry.register(Box::new(m.reshard_held.clone()))?;
        registry.register(Box::new(m.reshard_skipped.clone()))?;
        registry.register(Box::new(m.session_start_remaining.clone()))?;
        registry.register(Box::new(m.session_start_total.clone()))?;
        registry.register(Box::new(m.session_start_reset.clone()))?;
        // Present at 0 from the start, so that `rate()` and `increase()` alerts see the
        // first error.
        for kind in PUBLISH_ERROR_KINDS {
            m.publish_errors.with_label_values(&[kind]);
        }
        Ok(m)
    }
}
