//! Sink metrics, labelled by sink name and outcome only (bounded).

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, exponential_buckets,
};

#[derive(Clone)]
pub struct SinkMetrics {
    /// outcome: delivered | retried | dead_lettered | skipped | duplicate | released
    pub deliveries: IntCounterVec,
    pub attempt_latency: HistogramVec,
    pub end_to_end_latency: HistogramVec,
    /// Messages of the sink's consumer not yet delivered to any worker.
    pub consumer_pending: IntGaugeVec,
    /// Messages handed to workers and not yet acked (in flight or awaiting a retry).
    pub consumer_ack_pending: IntGaugeVec,
    /// Dead letters currently stored for the sink.
    pub dead_letters: IntGaugeVec,
}

impl SinkMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["sink"]);
        let m = Self {
            deliveries: IntCounterVec::new(
                Opts::new(
                    "relaycord_sink_deliveries_total",
                    "Events handled by sink and outcome (delivered, retried, dead_lettered, skipped by a filter, duplicate skipped by dedupe, released at shutdown).",
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
        };
        registry.register(Box::new(m.deliveries.clone()))?;
        registry.register(Box::new(m.attempt_latency.clone()))?;
        registry.register(Box::new(m.end_to_end_latency.clone()))?;
        registry.register(Box::new(m.consumer_pending.clone()))?;
        registry.register(Box::new(m.consumer_ack_pending.clone()))?;
        registry.register(Box::new(m.dead_letters.clone()))?;
        // The discord sink's answers, process-wide (shared with the interactions role).
        relaycord_bus::InvalidRequests::register(registry)?;
        Ok(m)
    }
}
