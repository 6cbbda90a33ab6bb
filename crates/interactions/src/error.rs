//! Errors of the interactions service, branched on by [`InteractionsErrorKind`].

pub use relaycord_bus::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InteractionsErrorKind {
    /// A setting is unusable (public key, routes, listen address).
    Config,
    /// A stream, consumer, KV bucket or subscription could not be set up.
    Setup,
    /// The HTTP server failed.
    Serve,
}

pub type InteractionsError = Error<InteractionsErrorKind>;
