//! Errors that callers branch on by `kind()` without knowing async-nats, lapin or
//! reqwest types (the twilight pattern). Every crate defines its own kind enum and
//! aliases [`Error`] with it.

use std::error::Error as StdError;
use std::fmt;

/// Kinds of [`BusError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusErrorKind {
    /// Could not connect to (or lost) the NATS server.
    Connect,
    /// The server has no JetStream, or it did not answer in time.
    JetStreamUnavailable,
    /// Creating or updating a stream, consumer or KV bucket was refused.
    Setup,
    /// A publish was not acknowledged by the stream.
    Publish,
    /// A message on the bus could not be decoded.
    Decode,
}

pub type BusError = Error<BusErrorKind>;

/// An error with a kind, a human context line and an optional source.
#[derive(Debug)]
pub struct Error<K> {
    kind: K,
    context: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl<K: Copy> Error<K> {
    pub fn new(kind: K, context: impl Into<String>) -> Self {
        Self {
            kind,
            context: context.into(),
            source: None,
        }
    }

    pub fn with_source(
        kind: K,
        context: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self {
            kind,
            context: context.into(),
            source: Some(source.into()),
        }
    }

    pub const fn kind(&self) -> K {
        self.kind
    }
}

impl<K> fmt::Display for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl<K: fmt::Debug> StdError for Error<K> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}
