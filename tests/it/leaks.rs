//! No secret reaches a terminal or a log: startup errors of the real binary, given
//! distinctive secret values, must name the key and never the value.

use relaycord_testkit::relaycord_with_env;

/// Runs `relaycord ARGS` with `env`; returns (success, stdout + stderr).
async fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let (ok, out, err) = relaycord_with_env(args, env).await;
    (ok, out + &err)
}

/// A numeric password used to be read as a number by the environment layer: the load
/// failed and the error quoted it. Now it is a password like any other.
#[tokio::test]
async fn a_numeric_password_in_the_environment_works_and_is_never_printed() {
    let env = [
        ("RELAYCORD_NATS__USER", "relay"),
        ("RELAYCORD_NATS__PASSWORD", "918273645"),
    ];
    let (ok, out) = run(&["config", "check"], &env).await;
    assert!(ok, "{out}");
    assert!(!out.contains("918273645"), "{out}");
}

/// A value that cannot be parsed is named by its key, not repeated.
#[tokio::test]
async fn a_bad_value_is_named_by_its_key_only() {
    let env = [("RELAYCORD_INGEST__WINDOW", "zq-7781-secretish")];
    let (ok, out) = run(&["config", "check"], &env).await;
    assert!(!ok);
    assert!(out.contains("ingest.window"), "{out}");
    assert!(!out.contains("zq-7781-secretish"), "{out}");
}

/// Credentials in `nats.url` are not printed when the connection fails (nor by
/// `config check`).
#[tokio::test]
async fn credentials_in_the_nats_url_are_never_printed() {
    // Port 1 on loopback refuses at once.
    let env = [(
        "RELAYCORD_NATS__URL",
        "nats://relay:pw-4455-unique@127.0.0.1:1",
    )];
    let (ok, out) = run(&["config", "check"], &env).await;
    assert!(ok, "{out}");
    assert!(!out.contains("pw-4455-unique"), "{out}");
    let (ok, out) = run(&["dlq", "list", "--sink", "none"], &env).await;
    assert!(!ok, "no NATS there: {out}");
    assert!(out.contains("cannot connect to NATS"), "{out}");
    assert!(!out.contains("pw-4455-unique"), "{out}");
}
