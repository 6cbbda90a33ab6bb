//! `relaycord_sink_amqp_returned_total{sink}`: messages the broker returned as
//! unroutable (mandatory, no queue bound for their routing key).
//!
//! Process-wide, like the Discord invalid-request counter: the sink is built apart from
//! the driver's metrics (`config check`, DLQ replay), and its label is the sink's name.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, Opts, Registry};

static RETURNED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "relaycord_sink_amqp_returned_total",
            "AMQP publishes the broker returned as unroutable (no queue bound); each is a failed attempt.",
        ),
        &["sink"],
    )
    .expect("a valid metric")
});

pub(super) fn returned(sink: &str) {
    RETURNED.with_label_values(&[sink]).inc();
}

/// Registers the counter in `registry`; again is a no-op.
pub fn register(registry: &Registry) -> prometheus::Result<()> {
    match registry.register(Box::new(RETURNED.clone())) {
        Err(prometheus::Error::AlreadyReg) => Ok(()),
        other => other,
    }
}
