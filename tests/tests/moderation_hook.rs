//! Pre-publish moderation with the moderation-hook example
//! (examples/moderation-hook, Python paho-mqtt) as the service: a clean
//! message passes, a word of the reject list is refused with the reason
//! before anything is stored, a masked word is rewritten, a retry of a
//! stored message is not asked again, and with the service gone the
//! configured `on_timeout` verdict applies.

use anyhow::Result;
use serde_json::json;
use std::process::Stdio;
use std::time::Duration;
use tests::{paho_or_skip, seq_of, workspace_root, TestServer};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderation_hook_accepts_rejects_and_rewrites() -> Result<()> {
    if !paho_or_skip().await {
        return Ok(());
    }
    let srv = TestServer::builder()
        .toml("[bridge.moderation]\nenabled = true\ntimeout_ms = 3000\non_timeout = \"reject\"\n")
        .start()
        .await?;
    let script = workspace_root().join("examples/moderation-hook/moderation_hook.py");
    let mut hook = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["--host", "127.0.0.1", "--port"])
        .arg(srv.tcp_port().to_string())
        .args([
            "--user",
            "ext-bridge",
            "--password",
            "pw-svc",
            "--reject",
            "spam",
            "--mask",
            "darn",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(
        hook.stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    )
    .lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await??;
    assert_eq!(ready.as_deref(), Some("ready"));

    let mut alice = srv.user_v4("alice", "alice-mh").await?;
    alice.subscribe_own().await?;
    alice.rpc("rooms.create", json!({"room": "mh"})).await?;
    alice.subscribe_ok("chat/rooms/mh/events").await?;
    alice.send("mh", "ok1", "hello there").await?;
    let ok = alice.recv_msg("mh", "alice", "ok1").await?;
    assert_eq!(ok["body"], "hello there");
    alice.send("mh", "bad1", "buy SPAM now").await?;
    let err = alice
        .recv_inbox("the rejection", |v| {
            v["type"] == "error" && v["msg_id"] == "bad1"
        })
        .await?;
    assert_eq!(err["code"], "forbidden", "{err}");
    assert!(
        err["message"].as_str().is_some_and(|m| m.contains("spam")),
        "{err}"
    );
    alice.send("mh", "mask1", "darn it").await?;
    let masked = alice.recv_msg("mh", "alice", "mask1").await?;
    assert_eq!(
        (masked["body"].clone(), masked["moderated"].clone()),
        (json!("d*** it"), json!(true))
    );
    // nothing rejected was stored: ok1 and mask1 follow each other
    assert_eq!(seq_of(&masked), seq_of(&ok) + 1);

    // the service goes away: on_timeout = "reject" refuses new sends, but a
    // retry of a stored one is answered with it, unasked
    hook.kill().await?;
    alice.send("mh", "ok1", "hello there").await?;
    let again = alice.recv_msg("mh", "alice", "ok1").await?;
    assert_eq!(seq_of(&again), seq_of(&ok));
    alice.send("mh", "late", "anyone?").await?;
    let err = alice
        .recv_inbox("the timeout", |v| {
            v["type"] == "error" && v["msg_id"] == "late"
        })
        .await?;
    assert_eq!(err["code"], "forbidden", "{err}");
    let (_, metrics) = srv.http_get("/metrics").await?;
    assert!(
        tests::metric(&metrics, "chatmq_moderation_timeouts_total") >= 1.0,
        "{metrics}"
    );
    Ok(())
}
