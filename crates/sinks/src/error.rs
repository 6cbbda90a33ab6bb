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
