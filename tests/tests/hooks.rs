//! Event hooks (`bridge.hooks`) with the push-notifier example
//! (examples/push-notifier, Python paho-mqtt) as the consumer: it gets a
//! push for each offline member only, with the unread badge, resumes from
//! its own cursor after being away, and misses nothing; the live topic
//! carries every new record once, in order, with the room's kind.

use anyhow::Result;
use serde_json::{json, Value};
use std::time::Duration;
use tests::{paho_or_skip, workspace_root, TestServer};

async fn notifier(srv: &TestServer, cursor: &std::path::Path) -> Result<Vec<Value>> {
    let script = workspace_root().join("examples/push-notifier/push_notifier.py");
    let run = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["--host", "127.0.0.1", "--port"])
        .arg(srv.tcp_port().to_string())
        .args([
            "--user",
            "ext-bridge",
            "--password",
            "pw-svc",
            "--once",
            "--cursor",
        ])
        .arg(cursor)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run).await??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "push-notifier failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_feed_a_push_notifier_that_misses_nothing() -> Result<()> {
    if !paho_or_skip().await {
        return Ok(());
    }
    let srv = TestServer::builder()
        .toml("[bridge]\nhooks = true\nhook_users = [\"ext-bridge\"]\n")
        .start()
        .await?;
    let mut alice = srv.user_v4("alice", "alice-hooks").await?;
    let mut bob = srv.user_v4("bob", "bob-hooks").await?;
    // a service watches the live topic; users may not
    let mut svc = tests::client_v4(srv.tcp_port(), "ext-bridge", "pw-svc", "svc-live").await?;
    svc.subscribe_ok("chat/hooks/events").await?;
    assert!(
        !bob.subscribe("chat/hooks/events").await?,
        "a user may not watch the hooks"
    );
    alice.subscribe_own().await?;
    alice
        .rpc(
            "rooms.create",
            json!({"room": "hk", "members": ["bob", "carol"]}),
        )
        .await?;
    bob.subscribe_own().await?;
    bob.rpc("rooms.join", json!({"room": "hk"})).await?;
    let mut carol = srv.user_v4("carol", "carol-hooks").await?;
    carol.subscribe_own().await?;
    carol.rpc("rooms.join", json!({"room": "hk"})).await?;
    drop(carol); // carol goes offline; bob stays online
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 1..=2 {
        alice
            .send("hk", &format!("h{i}"), &format!("hello {i}"))
            .await?;
    }
    // live: every record once, in order, gap-free, with the kind
    let mut live: Vec<Value> = Vec::new();
    while live
        .iter()
        .filter(|h| h["event"]["type"] == "message")
        .count()
        < 2
    {
        let m = svc
            .recv_until("a live hook", Duration::from_secs(10), |m| {
                m.topic == "chat/hooks/events"
            })
            .await?;
        live.push(m.json());
    }
    let seqs: Vec<u64> = live.iter().filter_map(|h| h["hook_seq"].as_u64()).collect();
    // the owner's join, two invitations, two joins, two messages
    assert_eq!(seqs, (seqs[0]..seqs[0] + 7).collect::<Vec<_>>(), "{live:?}");
    assert!(
        live.iter()
            .all(|h| h["kind"] == "group" && h["room"] == "hk"),
        "{live:?}"
    );
    let msgs: Vec<&Value> = live
        .iter()
        .filter(|h| h["event"]["type"] == "message")
        .collect();
    assert_eq!(msgs.len(), 2, "{live:?}");

    // the notifier: pushes for carol only (offline), with her badge
    let dir = tempfile::tempdir()?;
    let cursor = dir.path().join("cursor");
    let pushes = notifier(&srv, &cursor).await?;
    let to: Vec<(String, Value, Value)> = pushes
        .iter()
        .map(|p| {
            (
                p["push"].as_str().unwrap_or("").to_owned(),
                p["body"].clone(),
                p["badge"].clone(),
            )
        })
        .collect();
    assert_eq!(
        to,
        vec![
            ("carol".to_owned(), json!("hello 1"), json!(2)),
            ("carol".to_owned(), json!("hello 2"), json!(2)),
        ],
        "badges are the unread count now: {pushes:?}"
    );
    // away and back: only what came since, from its own cursor
    assert!(
        notifier(&srv, &cursor).await?.is_empty(),
        "nothing new, nothing again"
    );
    alice.send("hk", "h3", "hello 3").await?;
    alice.send("hk", "h3", "hello 3").await?; // a retry: one event, one hook
    let pushes = notifier(&srv, &cursor).await?;
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert_eq!(
        (pushes[0]["push"].clone(), pushes[0]["badge"].clone()),
        (json!("carol"), json!(3))
    );
    // hooks.read is for hook accounts
    let e = alice.rpc_err("hooks.read", json!({})).await?;
    assert_eq!(e, "forbidden");
    Ok(())
}
