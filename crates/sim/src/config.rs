//! Simulator configuration.

use std::time::Duration;

/// What the simulated Discord looks like to a client.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The initial shard count: what `/gateway/bot` recommends until
    /// [`crate::Simulator::set_recommended_shards`], and the count the shard-numbered control
    /// methods and `wait_ready` refer to. IDENTIFY accepts any count from the required minimum
    /// (see `max_guilds_per_shard`) up, as Discord does. Default 1.
    pub shards: u32,
    /// Identify buckets (`shard % max_concurrency`), reported by `/gateway/bot`. Default 16, so
    /// tests that honour it still start quickly.
    pub max_concurrency: u16,
    /// The bot token clients must present (IDENTIFY/RESUME, and `Authorization: Bot <token>`
    /// on REST). Default `sim-token`.
    pub token: String,
    /// Heartbeat interval sent in HELLO. Default 41.25 s, like Discord.
    pub heartbeat_interval: Duration,
    /// Number of simulated guilds. Default 8. Ids are spread so every shard owns at least one
    /// guild whenever `guilds >= shards`.
    pub guilds: u32,
    /// Identifies allowed (`session_start_limit.total`/`remaining`). Default 1000.
    pub session_start_limit: u32,
    /// When `session_start_limit.remaining` refills, from the simulator's start (and then
    /// every period). Default 24 h, like Discord; tests of the limit shorten it.
    pub session_start_reset_after: Duration,
    /// Guilds one shard may hold: an IDENTIFY with fewer than `ceil(guilds / this)` shards is
    /// closed with 4011 (sharding required). Default 2500, like Discord; changeable at run
    /// time with [`crate::Simulator::set_max_guilds_per_shard`].
    pub max_guilds_per_shard: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            shards: 1,
            max_concurrency: 16,
            token: "sim-token".to_owned(),
            heartbeat_interval: Duration::from_millis(41_250),
            guilds: 8,
            session_start_limit: 1000,
            session_start_reset_after: Duration::from_secs(24 * 3600),
            max_guilds_per_shard: 2500,
        }
    }
}
