//! A new-generation shard before the switch: it publishes its GUILD_CREATEs and the events
//! whose ids are the same from both generations (`msg:`, `ix:`, `join:`), and holds every
//! other event back until it knows where the old generation stopped.
//!
//! Held events are not on the bus, so the shard's session record must not move past
//! them: [`Standby::resume_point`] caps it below the first one, and a replica resuming
//! the shard after a crash gets them replayed by Discord.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use relaycord_bus::Dispatch;
use serde::Deserialize;

use super::Cut;
use super::align::{Digest, already_published};
use super::history::{self, Published};

/// Held events per shard before the shard stops reading (Discord keeps the rest; a
/// connection it closes meanwhile is resumed and replays them).
pub(crate) const MAX_HELD: usize = 200_000;

/// A guild listed in READY that never sends its GUILD_CREATE (an outage) does not hold a
/// reshard up for longer than this.
const GUILDS_TIMEOUT: Duration = Duration::from_secs(120);

/// One held dispatch: enough to publish it later and to compare it now.
pub(crate) struct Held {
    pub seq: u64,
    pub frame: String,
    guild: String,
    digest: Digest,
}

#[derive(Default)]
pub(crate) struct Standby {
    /// Guilds READY listed and those whose GUILD_CREATE is on its way to the bus.
    expected: Option<HashSet<String>>,
    created: HashSet<String>,
    ready_at: Option<Instant>,
    /// The seq of the GUILD_CREATE that completed the set: ready once it is acked.
    last_guild_seq: Option<u64>,
    reported: bool,
    held: Vec<Held>,
}

#[derive(Deserialize)]
struct ReadyGuilds {
    #[serde(default)]
    guilds: Vec<GuildId>,
}

#[derive(Deserialize)]
struct GuildId {
    id: String,
}

/// What the shard loop does with a dispatch while in standby.
pub(crate) enum Standing {
    /// Publish it now.
    Publish,
    /// Held: nothing to do until the switch.
    Held,
}

impl Standby {
    /// READY of a (new) session: whatever was held belonged to the previous session, whose
    /// events the old generation still publishes, as it has not stopped yet.
    pub fn on_ready(&mut self, dispatch: &Dispatch<'_>) {
        let guilds = serde_json::from_str::<ReadyGuilds>(dispatch.data.get())
            .map(|r| r.guilds.into_iter().map(|g| g.id).collect())
            .unwrap_or_default();
        *self = Self {
            expected: Some(guilds),
            ready_at: Some(Instant::now()),
            ..Self::default()
        };
    }

    /// Sorts one dispatch (not READY/RESUMED) received in standby.
    pub fn on_dispatch(&mut self, dispatch: &Dispatch<'_>, frame: &str, id: &str) -> Standing {
        let event_type = dispatch.event_type.as_ref();
        if matches!(event_type, "GUILD_CREATE" | "GUILD_DELETE") {
            if let Some(guild) = dispatch.guild_id() {
                self.created.insert(guild.to_owned());
                if self.all_guilds_created() && self.last_guild_seq.is_none() {
                    self.last_guild_seq = Some(dispatch.seq);
                }
            }
            return Standing::Publish;
        }
        if relaycord_bus::dedupe::is_occurrence_key(id) {
            return Standing::Publish;
        }
        self.held.push(Held {
            seq: dispatch.seq,
            frame: frame.to_owned(),
            guild: history::guild_key(dispatch.guild_id()),
            digest: history::digest(event_type, dispatch.data),
        });
        Standing::Held
    }

    fn all_guilds_created(&self) -> bool {
        self.expected
            .as_ref()
            .is_some_and(|e| e.iter().all(|g| self.created.contains(g)))
    }

    /// Whether the shard may report itself ready now that `acked_seq` is on the bus: READY
    /// and every guild's GUILD_CREATE acked (or the wait for missing guilds timed out).
    pub fn ready_to_report(&mut self, acked_seq: u64) -> bool {
        if self.reported {
            return false;
        }
        let created = self.last_guild_seq.is_some_and(|seq| acked_seq >= seq);
        let timed_out = self
            .ready_at
            .is_some_and(|at| at.elapsed() >= GUILDS_TIMEOUT);
        if created || timed_out {
            if !created {
                tracing::warn!(
                    missing = self
                        .expected
                        .as_ref()
                        .map_or(0, |e| e.len() - self.created.len()),
                    "guilds still unavailable after {GUILDS_TIMEOUT:?}; reporting the shard ready without them"
                );
            }
            self.reported = true;
        }
        self.reported
    }

    /// The highest seq the session record may hold: below the first held event.
    pub fn resume_point(&self, acked_seq: u64) -> u64 {
        match self.held.first() {
            Some(first) => acked_seq.min(first.seq.saturating_sub(1)),
            None => acked_seq,
        }
    }

    pub fn is_full(&self) -> bool {
        self.held.len() >= MAX_HELD
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// A resumed session (a replica took the shard over): READY is not replayed, and the
    /// GUILD_CREATEs not yet on the bus come in the replay before RESUMED.
    pub fn on_resumed(&mut self, seq: u64) {
        if self.expected.is_none() {
            self.last_guild_seq = Some(seq);
        }
    }

    /// The held events, in seq order, leaving none.
    pub fn take_held(&mut self) -> Vec<Held> {
        std::mem::take(&mut self.held)
    }

    /// Where the old generation stopped, per guild, given what it published.
    pub fn cut(&self, session_id: &str, published: &Published) -> Cut {
        let mut by_guild: HashMap<&str, Vec<&Held>> = HashMap::new();
        for event in &self.held {
            by_guild.entry(&event.guild).or_default().push(event);
        }
        let mut through = BTreeMap::new();
        for (guild, events) in by_guild {
            let digests: Vec<Digest> = events.iter().map(|e| e.digest).collect();
            let skipped = already_published(&digests, &published.since_joined(guild));
            if skipped > 0 {
                through.insert(guild.to_owned(), events[skipped - 1].seq);
            }
        }
        Cut {
            session_id: session_id.to_owned(),
            through,
        }
    }
}

impl Cut {
    /// Whether the old generation already published this seq of `guild`.
    pub fn covers(&self, guild: Option<&str>, seq: u64) -> bool {
        let key = history::guild_key(guild);
        self.through
            .get(&key)
            .is_some_and(|through| seq <= *through)
    }

    pub fn encode(&self) -> bytes::Bytes {
        bytes::Bytes::from(serde_json::to_vec(self).expect("a cut serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, t: &str, d: &str) -> String {
        format!(r#"{{"op":0,"s":{seq},"t":"{t}","d":{d}}}"#)
    }

    fn feed(standby: &mut Standby, seq: u64, t: &str, d: &str) -> bool {
        let raw = frame(seq, t, d);
        let dispatch = Dispatch::parse(&raw).unwrap().unwrap();
        let id = relaycord_bus::dedupe::gateway_key(&dispatch, Some("new"));
        matches!(standby.on_dispatch(&dispatch, &raw, &id), Standing::Held)
    }

    #[test]
    fn holds_what_needs_aligning_and_reports_ready_after_the_guilds() {
        let mut s = Standby::default();
        let ready = frame(
            1,
            "READY",
            r#"{"guilds":[{"id":"4194304","unavailable":true},{"id":"8388608","unavailable":true}]}"#,
        );
        s.on_ready(&Dispatch::parse(&ready).unwrap().unwrap());
        assert!(!feed(&mut s, 2, "GUILD_CREATE", r#"{"id":"4194304"}"#));
        assert!(feed(
            &mut s,
            3,
            "MESSAGE_REACTION_ADD",
            r#"{"guild_id":"4194304"}"#
        ));
        assert!(
            !feed(
                &mut s,
                4,
                "MESSAGE_CREATE",
                r#"{"id":"9","guild_id":"4194304"}"#
            ),
            "same id from both generations"
        );
        assert!(!s.ready_to_report(4), "a guild is still missing");
        assert!(!feed(&mut s, 5, "GUILD_CREATE", r#"{"id":"8388608"}"#));
        assert!(!s.ready_to_report(4), "its GUILD_CREATE is not acked yet");
        assert!(s.ready_to_report(5));
        assert_eq!(
            s.resume_point(5),
            2,
            "the record stays below the held seq 3"
        );
        assert!(!s.ready_to_report(6), "reported once");
    }

    #[test]
    fn the_cut_is_per_guild() {
        let mut s = Standby::default();
        s.on_ready(
            &Dispatch::parse(&frame(1, "READY", r#"{"guilds":[]}"#))
                .unwrap()
                .unwrap(),
        );
        let add = r#"{"guild_id":"4194304","user_id":"1"}"#;
        let other = r#"{"guild_id":"8388608","user_id":"1"}"#;
        feed(&mut s, 2, "MESSAGE_REACTION_ADD", add);
        feed(&mut s, 3, "MESSAGE_REACTION_ADD", other);
        feed(&mut s, 4, "MESSAGE_REACTION_REMOVE", add);
        feed(&mut s, 5, "MESSAGE_REACTION_ADD", add);
        let digest = |t: &str, d: &str| {
            history::digest(
                t,
                &serde_json::value::RawValue::from_string(d.into()).unwrap(),
            )
        };
        let mut published = Published::default();
        let at = |seq| history::At {
            seq,
            received_ms: 5_000,
        };
        // The old generation published add, remove for the first guild; nothing of the second.
        published.old.insert(
            "4194304".into(),
            vec![
                (at(10), digest("MESSAGE_REACTION_ADD", add)),
                (at(11), digest("MESSAGE_REACTION_REMOVE", add)),
            ],
        );
        let cut = s.cut("new", &published);
        let held = s.take_held();
        assert_eq!(
            held.iter().map(|h| h.seq).collect::<Vec<_>>(),
            vec![2, 3, 4, 5]
        );
        assert_eq!(cut.through, BTreeMap::from([("4194304".to_owned(), 4)]));
        assert!(cut.covers(Some("4194304"), 4));
        assert!(!cut.covers(Some("4194304"), 5), "the second add is new");
        assert!(!cut.covers(Some("8388608"), 3));
    }
}
