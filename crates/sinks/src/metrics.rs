//! Sink metrics, labelled by sink name and outcome only (bounded).

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, exponential_buckets,
};

use crate::pause::PausedSinks;

#[derive(Clone)]
pub struct SinkMetrics {
    /// outcome: delivered | retried | dead_lettered | skipped | duplicate | released |
    /// held | probe_failed | panicked | ...
    pub deliveries: IntCounterVec,
    pub attempt_latency: HistogramVec,
    pub end_to_end_latency: HistogramVec,
    /// Messages of the sink's consumer not yet delivered to any worker.
    pub consumer_pending: IntGaugeVec,
    /// Messages handed to workers and not yet acked (in flight or awaiting a retry).
    pub consumer_ack_pending: IntGaugeVec,
    /// Dead letters currently stored for the sink.
    pub dead_letters: IntGaugeVec,
    /// The most dead letters kept per sink (the DLQ's `max_msgs_per_subject`).
    pub dead_letters_max: IntGauge,
    /// Bytes stored in the DLQ, and its cap: the oldest letters are dropped at the cap.
    pub dlq_bytes: IntGauge,
    pub dlq_max_bytes: IntGauge,
    /// 1 while the sink is paused after a run of failures (see [`crate::pause`]).
    pub paused: IntGaugeVec,
    /// The paused sinks and why, for `/readyz`.
    pub paused_sinks: PausedSinks,
    /// Ordered sinks: lanes with events waiting or in flight in this process.
    pub lanes_active: IntGaugeVec,
    /// Ordered sinks: lanes whose next event failed and waits for another try.
    pub lanes_blocked: IntGaugeVec,
    /// Ordered sinks: how long the oldest event waiting in a lane has waited.
    pub lane_oldest_wait: GaugeVec,
    /// Ordered sinks: partitions of the lanes this process delivers.
    pub partitions_owned: IntGaugeVec,
}

impl SinkMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["sink"]);
        let m = Self {
            deliveries: IntCounterVec::new(
                Opts::new(
                    "relaycord_sink_deliveries_total",
                    "Events handled by sink and outcome (delivered, retried, dead_lettered, skipped by a filter, duplicate skipped by dedupe, released at shutdown, held by a paused sink, probe_failed, panicked: the sink panicked and the event was nak'd).",
                ),
                &["sink", "outcome"],
            )?,
            attempt_latency: HistogramVec::new(
                HistogramOpts::new(
                    "relaycord_sink_attempt_duration_seconds",
                    "Duration of one delivery attempt.",
                )
                .buckets(exponential_buckets(0.0005, 2.0, 16)?),
                &["sink"],
            )?,
            end_to_end_latency: HistogramVec::new(
                HistogramOpts::new(
                    "relaycord_sink_end_to_end_seconds",
                    "From the event's received_at to its successful delivery.",
                )
                .buckets(exponential_buckets(0.001, 2.0, 20)?),
                &["sink"],
            )?,
            consumer_pending: gauge(
                "relaycord_sink_consumer_pending",
                "Events in the stream not yet handed to the sink (consumer num_pending).",
            )?,
            consumer_ack_pending: gauge(
                "relaycord_sink_consumer_ack_pending",
                "Events handed to the sink's workers and not yet acked (consumer num_ack_pending).",
            )?,
            dead_letters: gauge(
                "relaycord_sink_dead_letters",
                "Dead letters stored for the sink (relaycord.dlq.<sink>).",
            )?,
            dead_letters_max: IntGauge::new(
                "relaycord_sink_dead_letters_max",
                "Dead letters kept per sink (nats.dlq_max_msgs_per_sink); beyond it the oldest are dropped.",
            )?,
            dlq_bytes: IntGauge::new(
                "relaycord_dlq_bytes",
                "Bytes stored in the RELAYCORD_DLQ stream.",
            )?,
            dlq_max_bytes: IntGauge::new(
                "relaycord_dlq_max_bytes",
                "Size cap of the RELAYCORD_DLQ stream (nats.dlq_max_bytes); beyond it the oldest letters are dropped.",
            )?,
            paused: gauge(
                "relaycord_sink_paused",
                "1 while the sink is paused after a run of failed events (see /readyz for why).",
            )?,
            paused_sinks: PausedSinks::default(),
            lanes_active: gauge(
                "relaycord_sink_lanes_active",
                "Ordered sinks: lanes with events waiting or being delivered in this process.",
            )?,
            lanes_blocked: gauge(
                "relaycord_sink_lanes_blocked",
                "Ordered sinks: lanes whose next event failed and waits to be tried again (its successors wait behind it).",
            )?,
            lane_oldest_wait: GaugeVec::new(
                Opts::new(
                    "relaycord_sink_lane_oldest_wait_seconds",
                    "Ordered sinks: how long the oldest event waiting in a lane of this process has waited since it was pulled.",
                ),
                &["sink"],
            )?,
            partitions_owned: gauge(
                "relaycord_sink_partitions_owned",
                "Ordered sinks: partitions of the lanes this process holds the lease of.",
            )?,
        };
        registry.register(Box::new(m.deliveries.clone()))?;
        registry.register(Box::new(m.attempt_latency.clone()))?;
        registry.register(Box::new(m.end_to_end_latency.clone()))?;
        registry.register(Box::new(m.consumer_pending.clone()))?;
        registry.register(Box::new(m.consumer_ack_pending.clone()))?;
        registry.register(Box::new(m.dead_letters.clone()))?;
        registry.register(Box::new(m.dead_letters_max.clone()))?;
        registry.register(Box::new(m.dlq_bytes.clone()))?;
        registry.register(Box::new(m.dlq_max_bytes.clone()))?;
        registry.register(Box::new(m.paused.clone()))?;
        registry.register(Box::new(m.lanes_active.clone()))?;
        registry.register(Box::new(m.lanes_blocked.clone()))?;
        registry.register(Box::new(m.lane_oldest_wait.clone()))?;
        registry.register(Box::new(m.partitions_owned.clone()))?;
        // The discord sink's answers, process-wide (shared with the interactions role).
        relaycord_bus::InvalidRequests::register(registry)?;
        crate::amqp::metrics::register(registry)?;
        Ok(m)
    }
}

/// One sink's series of the metrics every delivery updates, looked up once: a lookup
/// hashes the labels and takes the vector's lock, on every event.
#[derive(Clone)]
pub(crate) struct DeliveryHandles {
    pub delivered: IntCounter,
    pub attempt_latency: Histogram,
    pub end_to_end_latency: Histogram,
}

impl DeliveryHandles {
    pub(crate) fn new(metrics: &SinkMetrics, sink: &str) -> Self {
        Self {
            delivered: metrics.deliveries.with_label_values(&[sink, "delivered"]),
            attempt_latency: metrics.attempt_latency.with_label_values(&[sink]),
            end_to_end_latency: metrics.end_to_end_latency.with_label_values(&[sink]),
        }
    }
}
