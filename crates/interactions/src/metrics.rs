//! Interaction metrics. Labels are bounded: outcome, reason, handler type — never an
//! interaction, guild or command name (command names are chosen by users of the bot's
//! config, but a wildcard route would make them unbounded).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    exponential_buckets,
};

#[derive(Clone)]
pub struct InteractionMetrics {
    /// outcome: pong | answered | deferred | default | unavailable | rejected | failed;
    /// reason: why rejected (401/400/413) or failed; `retry` for a second request with an
    /// interaction id another request owns (answered or deferred without routing); else empty.
    pub requests: IntCounterVec,
    /// From the request's arrival to the response, by outcome.
    pub response_latency: HistogramVec,
    /// From sending to the handler to its reply; handler: nats | http; result: in_time |
    /// late | error. NATS late replies are timed by the late-reply worker, from the
    /// interaction's claim to the reply's arrival on the stream.
    pub handler_latency: HistogramVec,
    /// outcome: delivered | expired | dropped_autocomplete | invalid | undecided | failed |
    /// retried | shed | cut | duplicate.
    pub late_replies: IntCounterVec,
    /// Publishing the interaction to JetStream, until the ack.
    pub publish_latency: Histogram,
    /// HTTP connections being served.
    pub connections_open: IntGauge,
    /// Connections closed on accept because `max_connections` were open, all verified.
    pub connections_rejected: IntCounter,
    /// Connections closed to make room for a new one at `max_connections` (serve.rs).
    pub connections_evicted: IntCounter,
    /// Webhook event requests; outcome: pong | stored | duplicate | rejected | failed;
    /// reason as for `requests`.
    pub webhook_events: IntCounterVec,
}

/// Doubling buckets up to 1.6 s, then boundaries around Discord's 3 s limit: the
/// RelaycordInteractionsNearDeadline alert counts responses above `le="2.75"`.
fn response_buckets() -> prometheus::Result<Vec<f64>> {
    let mut buckets = exponential_buckets(0.0001, 2.0, 15)?;
    buckets.extend([2.0, 2.5, 2.75, 3.0, 5.0]);
    Ok(buckets)
}

impl InteractionMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "relaycord_interactions_requests_total",
                    "Interaction requests by outcome (pong, answered by a handler, deferred, default response, unavailable, rejected, failed) and reason.",
                ),
                &["outcome", "reason"],
            )?,
            response_latency: HistogramVec::new(
                HistogramOpts::new(
                    "relaycord_interactions_response_seconds",
                    "From a request's arrival to its HTTP response.",
                )
                .buckets(response_buckets()?),
                &["outcome"],
            )?,
            handler_latency: HistogramVec::new(
                HistogramOpts::new(
                    "relaycord_interactions_handler_seconds",
                    "From sending an interaction to a handler to its reply or error (result: in_time, late, error).",
                )
                .buckets(exponential_buckets(0.0001, 2.0, 24)?),
                &["handler", "result"],
            )?,
            late_replies: IntCounterVec::new(
                Opts::new(
                    "relaycord_interactions_late_replies_total",
                    "Replies that arrived after the deferral: delivered as a follow-up, expired (token older than 15 min), dropped_autocomplete (Discord takes no late choices), invalid, undecided (no record of the interaction), failed, retried, shed, cut (an HTTP handler still running past the shutdown grace period), duplicate (a second reply for an interaction already followed up).",
                ),
                &["outcome"],
            )?,
            publish_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "relaycord_interactions_publish_seconds",
                    "Publishing a verified interaction to JetStream, until its ack.",
                )
                .buckets(exponential_buckets(0.0001, 2.0, 16)?),
            )?,
            connections_open: IntGauge::new(
                "relaycord_interactions_connections_open",
                "HTTP connections being served by the interactions endpoint.",
            )?,
            connections_rejected: IntCounter::new(
                "relaycord_interactions_connections_rejected_total",
                "Connections closed on accept because interactions.max_connections were open, all serving verified requests.",
            )?,
            connections_evicted: IntCounter::new(
                "relaycord_interactions_connections_evicted_total",
                "Connections closed to make room for a new one at interactions.max_connections: the oldest not serving a verified request.",
            )?,
            webhook_events: IntCounterVec::new(
                Opts::new(
                    "relaycord_webhook_events_total",
                    "Webhook event requests by outcome (pong, stored, duplicate: a retry of an event already stored, rejected, failed: not stored, Discord retries) and reason.",
                ),
                &["outcome", "reason"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.webhook_events.clone()))?;
        registry.register(Box::new(m.connections_open.clone()))?;
        registry.register(Box::new(m.connections_rejected.clone()))?;
        registry.register(Box::new(m.connections_evicted.clone()))?;
        registry.register(Box::new(m.response_latency.clone()))?;
        registry.register(Box::new(m.handler_latency.clone()))?;
        registry.register(Box::new(m.late_replies.clone()))?;
        registry.register(Box::new(m.publish_latency.clone()))?;
        // Follow-ups count toward Discord's invalid-request limit like the sink's posts.
        relaycord_bus::InvalidRequests::register(registry)?;
        Ok(m)
    }

    pub(crate) fn request(&self, outcome: &str, reason: &str) {
        self.requests.with_label_values(&[outcome, reason]).inc();
    }

    pub(crate) fn webhook_event(&self, outcome: &str, reason: &str) {
        self.webhook_events
            .with_label_values(&[outcome, reason])
            .inc();
    }

    pub(crate) fn late(&self, outcome: &str) {
        self.late_replies.with_label_values(&[outcome]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The alert rule and the dashboards read these boundaries by their `le` label.
    #[test]
    fn response_time_has_buckets_at_the_deadline() {
        let registry = Registry::new();
        let m = InteractionMetrics::new(&registry).unwrap();
        m.response_latency
            .with_label_values(&["deferred"])
            .observe(2.8);
        let mut text = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut text,
        )
        .unwrap();
        let text = String::from_utf8(text).unwrap();
        let bucket = |le: &str| {
            let prefix = format!(
                "relaycord_interactions_response_seconds_bucket{{outcome=\"deferred\",le=\"{le}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no le={le} bucket in\n{text}"))
                .to_owned()
        };
        assert_eq!(bucket("2.75"), "0");
        assert_eq!(bucket("3"), "1");
    }
}
