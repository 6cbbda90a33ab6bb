//! Sink errors, branched on by [`SinkErrorKind`].

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkErrorKind {
    /// The sink's configuration is invalid; the message names the key and the fix.
    Config,
    /// The consumer could not be created or read.
    Bus,
}

pub type SinkError = relaycord_bus::error::Error<SinkErrorKind>;

/// A bus failure with its cause: the consumer, a stream or a bucket could not be used.
pub(crate) fn bus(
    context: impl Into<String>,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> SinkError {
    SinkError::with_source(SinkErrorKind::Bus, context, e)
}
