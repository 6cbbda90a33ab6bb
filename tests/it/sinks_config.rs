//! `relaycord config check` on bad sink configs: it fails before anything starts and
//! names the key and the fix. Secrets never appear in the message.

use futures::TryStreamExt;
use relaycord_testkit::NatsServer;

use relaycord_testkit::relaycord;

async fn check(toml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relaycord.toml");
    std::fs::write(&path, toml).unwrap();
    let (ok, out, err) = relaycord(&["--config", path.to_str().unwrap(), "config", "check"]).await;
    (ok, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sink_configs_name_the_key_and_the_fix() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "unknown type",
            "[[sinks]]\nname = \"a\"\ntype = \"smtp\"\nurl = \"x\"\n",
            &["sinks", "smtp", "http", "discord"],
        ),
        (
            "bad URL",
            "[[sinks]]\nname = \"a\"\ntype = \"http\"\nurl = \"not a url\"\n",
            &["sinks.a.url", "https://example.com"],
        ),
        (
            "bad template",
            "[[sinks]]\nname = \"a\"\ntype = \"discord\"\nwebhook_url = \"https://discord.com/api/webhooks/1/SECRET-TOKEN\"\n[sinks.templates.MESSAGE_CREATE]\ncontent = \"{{ data.content \"\n",
            &["sinks.a.templates.MESSAGE_CREATE.content", "syntax error"],
        ),
        (
            "missing secret",
            "[[sinks]]\nname = \"a\"\ntype = \"discord\"\nchannel_id = \"290926798999357250\"\n",
            &["sinks.a.token", "DISCORD_TOKEN"],
        ),
        (
            "bad secret",
            "[[sinks]]\nname = \"a\"\ntype = \"http\"\nurl = \"http://x\"\nsecret = \"whsec_!!\"\n",
            &["sinks.a.secret", "base64"],
        ),
        (
            "bad routing key",
            "[[sinks]]\nname = \"a\"\ntype = \"amqp\"\nurl = \"amqp://guest:SECRET-PASS@h/%2f\"\nexchange = \"x\"\nrouting_key = \"{guild}\"\n",
            &["sinks.a.routing_key", "{guild_id}"],
        ),
        (
            "bad channel filter",
            "[[sinks]]\nname = \"a\"\ntype = \"http\"\nurl = \"http://x\"\nchannels = [\"general\"]\n",
            &["sinks.a.channels", "digits"],
        ),
        (
            "typo in a key",
            "[[sinks]]\nname = \"a\"\ntype = \"http\"\nurl = \"http://x\"\nsecert = \"x\"\n",
            &["secert"],
        ),
    ];
    for (what, toml, expected) in cases {
        let (ok, message) = check(toml).await;
        assert!(!ok, "{what}: accepted");
        for needle in *expected {
            assert!(
                message.contains(needle),
                "{what}: {needle:?} not in {message}"
            );
        }
        assert!(
            !message.contains("SECRET"),
            "{what}: a secret was printed: {message}"
        );
    }
    let (ok, message) =
        check("[[sinks]]\nname = \"a\"\ntype = \"http\"\nurl = \"http://127.0.0.1:1/x\"\n").await;
    assert!(ok, "{message}");
}

/// `relaycord sink` validates its sinks before it connects: with NATS unreachable the
/// error is the bad key and its fix (not a NATS error), and with NATS up no stream is
/// created for a sink that cannot run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_role_rejects_a_bad_config_before_connecting() {
    let template = "[[sinks]]\nname = \"a\"\ntype = \"discord\"\nwebhook_url = \"https://discord.com/api/webhooks/1/SECRET-TOKEN\"\n[sinks.templates.MESSAGE_CREATE]\ncontent = \"{{ data.content \"\n";
    let expected = ["sinks.a.templates.MESSAGE_CREATE.content", "syntax error"];
    // A loopback port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let nats = NatsServer::start().expect("start nats-server");
    for url in [format!("nats://{closed}"), nats.url()] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relaycord.toml");
        std::fs::write(&path, format!("[nats]\nurl = \"{url}\"\n\n{template}")).unwrap();
        let path = path.to_str().unwrap();
        let args = ["--config", path, "sink", "--metrics-listen", "127.0.0.1:0"];
        let (ok, out, err) = relaycord(&args).await;
        let message = format!("{out}{err}");
        assert!(!ok, "{url}: started with a bad template: {message}");
        for needle in expected {
            assert!(
                message.contains(needle),
                "{url}: {needle:?} not in {message}"
            );
        }
        assert!(!message.contains("NATS"), "{url}: {message}");
        assert!(!message.contains("SECRET"), "{url}: {message}");
    }
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let streams: Vec<String> = js.stream_names().try_collect().await.unwrap();
    assert!(streams.is_empty(), "streams created: {streams:?}");
}
