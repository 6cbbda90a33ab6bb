//! The interactions endpoint: verification (with an independent signer), publishing,
//! and refusal of every kind of bad request.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relaycord_sim::{Forgery, SignedRequest, SimConfig};
use relaycord_testkit::{
    Stack, error_chain, nats_handler, nats_route, post_chunked, send_to, start_sim,
};
use serde_json::json;

/// Signs `(timestamp, body)` pairs with PyNaCl; returns its public key and signatures.
fn pynacl_sign(seed: &[u8; 32], requests: &[(String, String)]) -> (String, Vec<String>) {
    let seed: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/py/sign_interactions.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .arg(seed)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 must be installed (scripts/setup.sh --tests)");
    {
        let mut stdin = child.stdin.take().unwrap();
        for (timestamp, body) in requests {
            let line = json!({"timestamp": timestamp, "body": body}).to_string();
            writeln!(stdin, "{line}").unwrap();
        }
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "PyNaCl signer failed (pip install pynacl, or scripts/setup.sh --tests)"
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines = text.lines().map(str::to_owned);
    let public_key = lines.next().unwrap();
    (public_key, lines.collect())
}

fn now() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn interactions_signed_by_pynacl_are_verified_published_and_deduplicated() {
    let sim = start_sim(SimConfig::default()).await;
    let discord = sim.interactions();
    // Well-formed interactions of every kind, signed by PyNaCl with its own key.
    let interactions = [
        discord.ping(),
        discord.command("cardsearch"),
        discord.component("vote:42:yes"),
        discord.modal("feedback:7"),
        discord.autocomplete("blep"),
    ];
    let ts = now();
    // Last: Discord's bare endpoint check, `{"type":1}` and nothing else.
    const BARE_PING: &str = r#"{"type":1}"#;
    let requests: Vec<(String, String)> = interactions
        .iter()
        .map(|i| (ts.clone(), i.body.clone()))
        .chain([(ts.clone(), BARE_PING.to_owned())])
        .collect();
    let (public_key, signatures) = pynacl_sign(&rand::random(), &requests);
    let stack = Stack::builder()
        .simulator(sim)
        .interactions(Vec::new())
        .config(move |c| c.discord.public_key = public_key)
        .start()
        .await;

    let signed = |i: usize| SignedRequest {
        body: interactions[i].body.clone().into_bytes(),
        signature: Some(signatures[i].clone()),
        timestamp: Some(ts.clone()),
    };
    let (status, body) = stack.send(&signed(0)).await;
    assert_eq!(
        (status, &body[..]),
        (200, &br#"{"type":1}"#[..]),
        "PING → PONG"
    );
    let bare_ping = SignedRequest {
        body: BARE_PING.as_bytes().to_vec(),
        signature: Some(signatures[interactions.len()].clone()),
        timestamp: Some(ts.clone()),
    };
    let (status, body) = stack.send(&bare_ping).await;
    assert_eq!(
        (status, &body[..]),
        (200, &br#"{"type":1}"#[..]),
        "a verified bare PING → PONG"
    );
    let expected = [
        (r#"{"type":5}"#, "discord.interactions.command.cardsearch"),
        (r#"{"type":6}"#, "discord.interactions.component.vote"),
        (r#"{"type":5}"#, "discord.interactions.modal.feedback"),
        (
            r#"{"type":8,"data":{"choices":[]}}"#,
            "discord.interactions.autocomplete.blep",
        ),
    ];
    for (i, (response, _)) in expected.iter().enumerate() {
        let (status, body) = stack.send(&signed(i + 1)).await;
        // No route: published, then deferred for a consumer of the stream to follow up.
        assert_eq!(
            (status, std::str::from_utf8(&body).unwrap()),
            (200, *response)
        );
    }
    // Discord retrying the same interaction: one message on the bus.
    assert_eq!(stack.send(&signed(1)).await.0, 200);

    let stored = stack.stored().await;
    assert_eq!(
        stored.len(),
        4,
        "PING is not published; the retry is deduplicated"
    );
    for (i, (_, subject)) in expected.iter().enumerate() {
        let interaction = &interactions[i + 1];
        let s = &stored[i];
        assert_eq!(s.subject, *subject);
        assert_eq!(s.msg_id, format!("ix:{}", interaction.id));
        assert_eq!(s.envelope["id"], json!(format!("ix:{}", interaction.id)));
        assert_eq!(s.envelope["source"], "interaction");
        assert_eq!(s.envelope["type"], "INTERACTION_CREATE");
        assert_eq!(s.envelope["guild_id"], "290926798626357999");
        assert_eq!(
            s.raw_data, interaction.body,
            "payload carried byte for byte"
        );
    }
    assert_eq!(
        stack.metric_with(
            "relaycord_interactions_requests_total",
            &[r#"outcome="pong""#]
        ),
        2.0,
        "the full PING and the bare one"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_stale_and_malformed_requests_are_refused_and_nothing_is_published_or_routed() {
    let stack = Stack::builder()
        .interactions(vec![nats_route("ping", "relaycord.handlers.ping")])
        .start()
        .await;
    let mut routed = nats_handler(
        &stack.client,
        "relaycord.handlers.>",
        Duration::ZERO,
        r#"{"type":4,"data":{"content":"pong"}}"#,
    )
    .await;
    let discord = &stack.discord;
    let command = discord.command("ping");
    for forgery in Forgery::ALL {
        let (status, _) = stack.send(&discord.forged(&command, forgery)).await;
        let expected = if forgery == Forgery::MalformedBody {
            400
        } else {
            401
        };
        assert_eq!(status, expected, "{forgery:?}");
    }
    // Valid signatures over bodies that are not routable interactions.
    for body in [
        &b"\xff\xfe not utf-8"[..],
        br#"{"type":2,"data":{"name":"ping"}}"#,
        br#"{"id":"1","type":77}"#,
        br#"[1,2,3]"#,
    ] {
        let request = discord.sign_at(body, now().parse().unwrap());
        assert_eq!(
            stack.send(&request).await.0,
            400,
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
    // Too large: 413 before anything is verified, whether the size is declared or only
    // found while streaming a chunked body (one byte over the default 256 KiB).
    let mut big = discord.signed(&command);
    big.body = vec![b' '; 300 * 1024];
    assert_eq!(stack.send(&big).await.0, 413);
    let limit = vec![b' '; 256 * 1024];
    assert_eq!(
        post_chunked(&stack.url, &[&limit, b" "], true).await,
        Some(413)
    );
    // At the limit exactly, the body is read and refused for what it is (its signature is
    // only the right shape).
    assert_eq!(post_chunked(&stack.url, &[&limit], true).await, Some(401));
    // A client hanging up mid-body is not an oversized request.
    post_chunked(&stack.url, &[b"{\"type\":"], false).await;
    let hung_up = relaycord_testkit::eventually(Duration::from_secs(10), async || {
        stack.metric_with(
            "relaycord_interactions_requests_total",
            &[r#"reason="incomplete_body""#],
        ) == 1.0
    })
    .await;
    assert!(hung_up, "the hang-up is counted as incomplete_body");

    assert!(stack.stored().await.is_empty(), "nothing was published");
    let rejected = |reason: &str| {
        stack.metric_with(
            "relaycord_interactions_requests_total",
            &[r#"outcome="rejected""#, &format!(r#"reason="{reason}""#)],
        )
    };
    assert_eq!(
        rejected("bad_signature"),
        4.0,
        "wrong key, tampered, truncated, the chunked body at the limit"
    );
    assert_eq!(rejected("stale"), 2.0);
    assert_eq!(rejected("missing_header"), 3.0, "3 forgeries");
    assert_eq!((rejected("bad_hex"), rejected("bad_length")), (1.0, 1.0));
    assert_eq!(rejected("malformed"), 5.0);
    assert_eq!(rejected("too_large"), 2.0, "declared and chunked");

    // The same request, correctly signed, goes through: the refusals were not luck.
    let (status, body) = stack.send(&discord.signed(&command)).await;
    assert_eq!(
        (status, &body[..]),
        (200, &br#"{"type":4,"data":{"content":"pong"}}"#[..])
    );
    // The handler's first request is this one: none of the refused ones was routed (one
    // publisher, one subscriber: NATS keeps their order).
    assert_eq!(routed.recv().await.unwrap(), command.id);
    assert_eq!(stack.stored().await.len(), 1);
    stack.stop().await;
}

/// One pooled client, as Discord's or a proxy's would be, sends a refused request and
/// then a good one, again and again. A refusal answered before its body is read (413 on
/// the declared size, 401 before the signature) leaves the body unread, so hyper closes
/// the connection after the answer; unless the answer says `Connection: close`, the
/// client sends its next request onto the closing connection and loses it ("connection
/// closed before message completed"). Before the 413 said so, 19 and 27 of the 100 PINGs
/// after it were lost in two runs of this test (the webhook events test lost one in CI).
/// A PING on the client's pooled connection after an answer `after`; a lost one is
/// written down.
async fn ping_after(
    stack: &Stack,
    http: &reqwest::Client,
    after: u16,
    round: usize,
    lost: &mut Vec<String>,
) {
    let ping = stack.discord.signed(&stack.discord.ping());
    match send_to(http, &stack.url, &ping).await {
        Ok((status, _)) => assert_eq!(status, 200, "the PING after a {after}"),
        Err(e) => lost.push(format!(
            "PING after {after}, round {round}: {}",
            error_chain(&e)
        )),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_client_loses_no_request_after_a_refusal() {
    let stack = Stack::builder().interactions(Vec::new()).start().await;
    let discord = &stack.discord;
    let http = reqwest::Client::new();
    // Much larger than hyper reads ahead: a small unread body is often drained whole, and
    // the race this test catches would not happen.
    let large = vec![b' '; stack.config.interactions.max_body + 1];
    let mut oversized = discord.signed(&discord.ping());
    oversized.body = large.clone();
    let refusals = [
        (oversized, 413),
        (discord.forged(&discord.ping(), Forgery::WrongKey), 401),
        (
            discord.forged(&discord.ping(), Forgery::StaleTimestamp),
            401,
        ),
    ];
    let mut lost = Vec::new();
    for round in 0..100 {
        for (request, expected) in &refusals {
            match send_to(&http, &stack.url, request).await {
                Ok((status, _)) => assert_eq!(status, *expected),
                Err(e) => lost.push(format!(
                    "refusal {expected}, round {round}: {}",
                    error_chain(&e)
                )),
            }
            ping_after(&stack, &http, *expected, round, &mut lost).await;
        }
    }
    // A path or method not served is refused the same way, its body unread.
    let unserved = [
        (
            reqwest::Method::POST,
            format!("{}/unserved", stack.url),
            404,
        ),
        (reqwest::Method::PUT, stack.url.clone(), 405),
    ];
    for round in 0..100 {
        for (method, url, expected) in &unserved {
            let request = http.request(method.clone(), url).body(large.clone());
            match request.send().await {
                Ok(response) => {
                    assert_eq!(response.status().as_u16(), *expected, "{method} {url}");
                    let close = response.headers().get("connection");
                    assert_eq!(
                        close.map(|v| v.as_bytes()),
                        Some(&b"close"[..]),
                        "{method} {url}"
                    );
                }
                Err(e) => lost.push(format!(
                    "{method} {url}, round {round}: {}",
                    error_chain(&e)
                )),
            }
            ping_after(&stack, &http, *expected, round, &mut lost).await;
        }
    }
    assert!(lost.is_empty(), "{} requests lost: {lost:#?}", lost.len());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_jetstream_nothing_is_routed_but_discord_pings_still_answer() {
    let mut stack = Stack::builder()
        .interactions(vec![nats_route("ping", "relaycord.handlers.ping")])
        .config(move |c| c.interactions.deadline = std::time::Duration::from_millis(500))
        .start()
        .await;
    stack.kill_nats();
    let command = stack.discord.command("ping");
    let (status, _) = stack.send(&stack.discord.signed(&command)).await;
    assert_eq!(
        status, 503,
        "an interaction that cannot be recorded is not routed"
    );
    let ping = stack.discord.ping();
    let (status, body) = stack.send(&stack.discord.signed(&ping)).await;
    assert_eq!((status, &body[..]), (200, &br#"{"type":1}"#[..]));
    assert_eq!(
        stack.metric_with(
            "relaycord_interactions_requests_total",
            &[r#"outcome="failed""#, r#"reason="publish""#]
        ),
        1.0
    );
    stack.stop().await;
}
