//! Ingest errors, branched on by [`IngestErrorKind`].

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IngestErrorKind {
    /// `/gateway/bot` could not be read.
    Discovery,
    /// Discord rejected the token (401, or close code 4004).
    Unauthorized,
    /// A shard closed with a code that must not be retried (4010–4014).
    FatalClose,
    /// The configuration cannot work (shard range outside the shard count...).
    Config,
    /// The bus could not be set up.
    Bus,
    /// Another process took over a shard this one was running.
    LostOwnership,
    /// Discord closed an identify with 4011: too few shards for the bot's guilds.
    ShardingRequired,
}

pub type IngestError = relaycord_bus::error::Error<IngestErrorKind>;
