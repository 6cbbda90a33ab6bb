use proptest::prelude::*;

use super::*;

const SESSION: &str = "9b6c3f1e2a4d4b8c8e7f6a5b4c3d2e1f";

fn key_on(frame: &str, session: Option<&str>) -> String {
    gateway_key(&Dispatch::parse(frame).unwrap().unwrap(), session)
}

fn key(frame: &str) -> String {
    key_on(frame, Some(SESSION))
}

// Payload shapes follow Discord's documented examples (discord/discord-api-docs,
// CC BY-SA 4.0), trimmed to the fields that matter here.
#[test]
fn message_create_is_keyed_by_message_id() {
    let frame = r#"{"op":0,"s":5,"t":"MESSAGE_CREATE","d":{"reactions":[{"count":1,"me":false,"emoji":{"id":null,"name":"🔥"}}],"attachments":[],"tts":false,"embeds":[],"timestamp":"2017-07-11T17:27:07.299000+00:00","mention_everyone":false,"id":"334385199974967042","pinned":false,"edited_timestamp":null,"author":{"username":"Mason","discriminator":"9999","id":"53908099506183680","avatar":"a_bab14f271d565501444b2ca3be944b25"},"mention_roles":[],"content":"Supa Hot","channel_id":"290926798999357250","mentions":[],"type":0,"guild_id":"290926798626357250"}}"#;
    assert_eq!(key(frame), "msg:334385199974967042");
    // Another session (a second shard generation) and another seq: the same message.
    let elsewhere = frame.replace(r#""s":5"#, r#""s":99"#);
    assert_eq!(key_on(&elsewhere, Some("other")), "msg:334385199974967042");
}

#[test]
fn member_add_keys_on_guild_user_and_join_time() {
    let frame = r#"{"op":0,"s":1,"t":"GUILD_MEMBER_ADD","d":{"user":{"id":"80351110224678912","username":"Nelly"},"nick":"NOT API SUPPORT","roles":[],"joined_at":"2015-04-26T06:26:56.936000+00:00","deaf":false,"mute":false,"guild_id":"197038439483310086"}}"#;
    assert_eq!(
        key(frame),
        "join:197038439483310086:80351110224678912:2015-04-26T06:26:56.936000+00:00"
    );
}

#[test]
fn interactions_share_the_http_key() {
    let frame = r#"{"op":0,"s":1,"t":"INTERACTION_CREATE","d":{"id":"786008729715212338","type":2,"token":"x"}}"#;
    assert_eq!(key(frame), interaction_key("786008729715212338"));
}

/// The sequence of issue 17: add, remove, add; edit, pin, unfurl. Six events, six ids,
/// though the adds are byte-identical and the updates share one `edited_timestamp`.
#[test]
fn toggles_and_updates_with_one_edit_time_stay_distinct() {
    let add = r#"{"user_id":"1","channel_id":"2","message_id":"3","guild_id":"4","emoji":{"id":null,"name":"🔥"}}"#;
    let edited = r#""id":"3","channel_id":"2","guild_id":"4","edited_timestamp":"2017-07-11T17:28:07.299000+00:00""#;
    let events = [
        ("MESSAGE_REACTION_ADD", add.to_owned()),
        ("MESSAGE_REACTION_REMOVE", add.to_owned()),
        ("MESSAGE_REACTION_ADD", add.to_owned()),
        ("MESSAGE_UPDATE", format!(r#"{{{edited},"content":"b"}}"#)),
        (
            "MESSAGE_UPDATE",
            format!(r#"{{{edited},"content":"b","pinned":true}}"#),
        ),
        (
            "MESSAGE_UPDATE",
            format!(r#"{{{edited},"content":"b","pinned":true,"embeds":[{{}}]}}"#),
        ),
    ];
    let keys: std::collections::HashSet<String> = events
        .iter()
        .enumerate()
        .map(|(i, (t, d))| key(&format!(r#"{{"op":0,"s":{},"t":"{t}","d":{d}}}"#, i + 10)))
        .collect();
    assert_eq!(keys.len(), 6, "{keys:?}");
}

#[test]
fn other_events_are_named_by_session_and_seq() {
    let frame = r#"{"op":0,"s":7,"t":"PRESENCE_UPDATE","d":{"user":{"id":"1"},"status":"online"}}"#;
    assert_eq!(key(frame), format!("s:{SESSION}:7"));
    assert_eq!(session_of_key(&key(frame)), Some(SESSION));
    assert!(!is_occurrence_key(&key(frame)));
    assert!(
        is_occurrence_key("msg:1") && is_occurrence_key("ix:1") && is_occurrence_key("join:1:2:3")
    );
}

#[test]
fn hostile_fields_and_session_ids_never_reach_a_key() {
    let k = key(r#"{"op":0,"s":1,"t":"MESSAGE_CREATE","d":{"id":"1\r\nX-Evil: 1"}}"#);
    assert_eq!(k, format!("s:{SESSION}:1"));
    let k = key_on(
        r#"{"op":0,"s":3,"t":"TYPING_START","d":{}}"#,
        Some("a b\r\nX: y"),
    );
    assert!(
        k.starts_with("s:x") && k.ends_with(":3") && k.is_ascii(),
        "{k}"
    );
    assert!(!k.contains(' ') && !k.contains('\n'));
    assert_eq!(session_token("a b\r\nX: y").len(), 33);
}

#[test]
fn without_a_session_the_seq_and_bytes_are_hashed() {
    let a = key_on(r#"{"op":0,"s":1,"t":"TYPING_START","d":{"x":1}}"#, None);
    let b = key_on(r#"{"op":0,"s":2,"t":"TYPING_START","d":{"x":1}}"#, None);
    assert!(a.starts_with("h:TYPING_START:"), "{a}");
    assert_ne!(a, b);
}

/// Keys are ids on the bus contract: these exact bytes must never change.
#[test]
fn encodings_are_pinned() {
    assert_eq!(
        content_hash_key("PRESENCE_UPDATE", &[br#"{"user":{"id":"1"}}"#]),
        "h:PRESENCE_UPDATE:a950a474275b7d1f4635e7ceac4db903"
    );
    assert_eq!(session_token("abc123"), "abc123");
    assert_eq!(
        session_token(""),
        format!("x{}", &hex::encode(Sha256::digest(b""))[..32])
    );
}

// ---- the identity rule, over generated histories ----

/// What one real event looks like. Templates repeat on purpose: toggles, identical
/// presences, edits sharing an `edited_timestamp`, payloads with no ids at all.
#[derive(Debug, Clone)]
enum Template {
    ReactionAdd,
    ReactionRemove,
    Update {
        pinned: bool,
    },
    Presence(u8),
    NoIds,
    NotAnObject,
    /// Events that name their one occurrence; `n` is made unique per event.
    MessageCreate,
    MemberAdd,
}

fn template() -> impl Strategy<Value = Template> {
    prop_oneof![
        Just(Template::ReactionAdd),
        Just(Template::ReactionRemove),
        any::<bool>().prop_map(|pinned| Template::Update { pinned }),
        (0u8..2).prop_map(Template::Presence),
        Just(Template::NoIds),
        Just(Template::NotAnObject),
        Just(Template::MessageCreate),
        Just(Template::MemberAdd),
    ]
}

/// The `t` and `d` of real event number `n`.
fn event(template: &Template, n: usize) -> (&'static str, String) {
    let reaction =
        r#"{"user_id":"11","message_id":"12","guild_id":"13","emoji":{"id":null,"name":"x"}}"#;
    match template {
        Template::ReactionAdd => ("MESSAGE_REACTION_ADD", reaction.into()),
        Template::ReactionRemove => ("MESSAGE_REACTION_REMOVE", reaction.into()),
        Template::Update { pinned } => (
            "MESSAGE_UPDATE",
            format!(
                r#"{{"id":"12","edited_timestamp":"2020-01-01T00:00:00+00:00","pinned":{pinned}}}"#
            ),
        ),
        Template::Presence(s) => (
            "PRESENCE_UPDATE",
            format!(r#"{{"user":{{"id":"11"}},"s":{s}}}"#),
        ),
        Template::NoIds => ("TYPING_START", "{}".into()),
        Template::NotAnObject => ("WEIRD_EVENT", "[1,2]".into()),
        Template::MessageCreate => (
            "MESSAGE_CREATE",
            format!(r#"{{"id":"{}","guild_id":"13"}}"#, 1000 + n),
        ),
        Template::MemberAdd => (
            "GUILD_MEMBER_ADD",
            format!(
                r#"{{"user":{{"id":"11"}},"guild_id":"13","joined_at":"2020-01-01T00:00:{:02}.{n:06}+00:00"}}"#,
                n % 60
            ),
        ),
    }
}

/// One sighting of real event `event` by ingest.
#[derive(Debug)]
struct Seen {
    event: usize,
    key: String,
    occurrence: bool,
}

fn sight(templates: &[Template], event_no: usize, session: &str, seq: u64) -> Seen {
    let (t, d) = event(&templates[event_no], event_no);
    let frame = format!(r#"{{"op":0,"s":{seq},"t":"{t}","d":{d}}}"#);
    let key = key_on(&frame, Some(session));
    Seen {
        event: event_no,
        occurrence: is_occurrence_key(&key),
        key,
    }
}

proptest! {
    /// A history: session A sees every event (seq = position + 1); a RESUME replays A's
    /// events from `resume_from` with their seqs; a new owner of the shard resumes A and
    /// replays from `handover_from`; a second shard generation, session B, joins at
    /// `b_from` with seqs of its own.
    #[test]
    fn one_id_per_event(
        templates in prop::collection::vec(template(), 1..40),
        resume_from in any::<prop::sample::Index>(),
        handover_from in any::<prop::sample::Index>(),
        b_from in any::<prop::sample::Index>(),
    ) {
        let n = templates.len();
        let mut seen = Vec::new();
        for i in 0..n {
            seen.push(sight(&templates, i, "sessionA", i as u64 + 1));
        }
        for from in [resume_from.index(n), handover_from.index(n)] {
            for i in from..n {
                seen.push(sight(&templates, i, "sessionA", i as u64 + 1));
            }
        }
        let mut b = Vec::new();
        for (seq, i) in (b_from.index(n)..n).enumerate() {
            b.push(sight(&templates, i, "sessionB", seq as u64 + 1));
        }
        // Never merged: within a session and across the two.
        for x in seen.iter().chain(&b) {
            for y in seen.iter().chain(&b) {
                if x.key == y.key {
                    prop_assert_eq!(x.event, y.event, "{} names two events", &x.key);
                }
            }
        }
        // The same event seen twice on one session (replay, handover): one id.
        for x in &seen {
            for y in &seen {
                if x.event == y.event {
                    prop_assert_eq!(&x.key, &y.key);
                }
            }
        }
        // Across sessions, events naming their occurrence share the id; the rest are
        // left to the reshard alignment, and are never mistaken for another event.
        for y in &b {
            let x = &seen[y.event];
            prop_assert_eq!(x.occurrence, y.occurrence);
            if y.occurrence {
                prop_assert_eq!(&x.key, &y.key);
            }
        }
    }
}
