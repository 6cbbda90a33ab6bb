//! Ingest metrics. Labels are bounded: event type (Discord's fixed set) and shard id.

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, exponential_buckets,
};

#[derive(Clone)]
pub struct IngestMetrics {
    pub events: IntCounterVec,
    pub malformed: IntCounter,
    pub oversized: IntCounter,
    pub published: IntCounter,
    pub duplicates: IntCounter,
    pub publish_errors: IntCounter,
    pub publish_latency: Histogram,
    pub inflight: IntGaugeVec,
    pub shard_up: IntGaugeVec,
    pub sessions: IntCounterVec,
    pub heartbeat_latency: GaugeVec,
    pub leases: IntGauge,
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
            publish_errors: IntCounter::new(
                "relaycord_publish_errors_total",
                "Failed publish attempts; each is retried until acknowledged.",
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
                &["shard"],
            )?,
            shard_up: IntGaugeVec::new(
                Opts::new(
                    "relaycord_shard_up",
                    "1 while the shard has an active gateway session.",
                ),
                &["shard"],
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
                &["shard"],
            )?,
            leases: IntGauge::new(
                "relaycord_shard_leases_held",
                "Shards this process owns (leases held, or statically assigned).",
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
        registry.register(Box::new(m.shard_up.clone()))?;
        registry.register(Box::new(m.sessions.clone()))?;
        registry.register(Box::new(m.heartbeat_latency.clone()))?;
        registry.register(Box::new(m.leases.clone()))?;
        Ok(m)
    }
}
