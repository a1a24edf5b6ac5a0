//! MQTT 3.1.1 with the stock mosquitto command-line clients.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;
use tests::{group_room, on_path, pw, seq_of, TestServer, TIMEOUT};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn skip() -> bool {
    if !on_path("mosquitto_pub") || !on_path("mosquitto_sub") {
        println!("SKIPPED: mosquitto_pub not installed");
        return true;
    }
    false
}

/// Starts `mosquitto_sub -d ... -C 1` and waits until it has its SUBACK.
async fn sub_one(
    port: u16,
    user: &str,
    cid: &str,
    topic: &str,
) -> Result<(
    Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
)> {
    // mosquitto_sub block-buffers stdout into a pipe: line-buffer it so the
    // `-d` SUBACK line arrives when it happens.
    let mut cmd = if on_path("stdbuf") {
        let mut c = Command::new("stdbuf");
        c.args(["-oL", "mosquitto_sub"]);
        c
    } else {
        Command::new("mosquitto_sub")
    };
    let mut child = cmd
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-V",
            "mqttv311",
            "-q",
            "1",
            "-d",
        ])
        .args([
            "-u",
            user,
            "-P",
            &pw(user),
            "-i",
            cid,
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "20",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawning mosquitto_sub")?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut seen = Vec::new();
    tokio::time::timeout(TIMEOUT, async {
        while let Some(l) = lines.next_line().await? {
            if l.contains("SUBACK") {
                return Ok(());
            }
            seen.push(l);
        }
        bail!("mosquitto_sub ended before SUBACK: {seen:?}")
    })
    .await
    .map_err(|_| anyhow!("mosquitto_sub: no SUBACK for {topic} within {TIMEOUT:?}"))??;
    Ok((child, lines))
}

/// Reads mosquitto_sub output until a JSON line arrives.
async fn next_json(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    what: &str,
) -> Result<Value> {
    let mut seen = Vec::new();
    tokio::time::timeout(TIMEOUT, async {
        while let Some(l) = lines.next_line().await? {
            if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(l.trim()) {
                return Ok(v);
            }
            seen.push(l);
        }
        bail!("mosquitto_sub ended before {what}: {seen:?}")
    })
    .await
    .map_err(|_| anyhow!("mosquitto_sub: no {what} within {TIMEOUT:?}"))?
}

async fn mosquitto_pub(port: u16, user: &str, cid: &str, topic: &str, payload: &str) -> Result<()> {
    let out = tokio::time::timeout(
        TIMEOUT,
        Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-V",
                "mqttv311",
                "-q",
                "1",
            ])
            .args([
                "-u",
                user,
                "-P",
                &pw(user),
                "-i",
                cid,
                "-t",
                topic,
                "-m",
                payload,
            ])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("mosquitto_pub did not finish within {TIMEOUT:?}"))??;
    if !out.status.success() {
        bail!(
            "mosquitto_pub failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn send_echo_and_history_with_mosquitto_clients() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let srv = TestServer::start().await?;
    let port = srv.tcp_port();
    let mut alice = srv.user_v4("alice", "alice-rs").await?;
    let mut bob = srv.user_v4("bob", "bob-rs").await?;
    group_room(&mut alice, "mq", &mut [&mut bob]).await?;
    let head = alice.head("mq").await?;

    // bob listens with mosquitto_sub, alice sends with mosquitto_pub
    let (mut sub, mut lines) = sub_one(port, "bob", "bob-sub", "chat/rooms/mq/events").await?;
    mosquitto_pub(
        port,
        "alice",
        "alice-pub",
        "chat/rooms/mq/send/alice",
        r#"{"msg_id":"mq1","body":"hi from mosquitto"}"#,
    )
    .await?;
    let ev = next_json(&mut lines, "the echo of mq1").await?;
    assert_eq!(ev["msg_id"], "mq1", "{ev}");
    assert_eq!(ev["from"], "alice", "{ev}");
    assert_eq!(ev["body"], "hi from mosquitto", "{ev}");
    assert_eq!(seq_of(&ev), head + 1, "{ev}");
    let _ = tokio::time::timeout(Duration::from_secs(5), sub.wait()).await;

    // history round trip with payload reply/corr
    let reply = "chat/users/bob/replies/bob-sub2";
    let (mut sub, mut lines) = sub_one(port, "bob", "bob-sub2", reply).await?;
    let req = json!({"reply": reply, "corr": "h-1", "room": "mq", "limit": 10}).to_string();
    mosquitto_pub(port, "bob", "bob-pub", "chat/rpc/bob/history", &req).await?;
    let r = next_json(&mut lines, "the history reply").await?;
    assert_eq!(r["corr"], "h-1", "{r}");
    assert_eq!(r["ok"], true, "{r}");
    let last = r["result"]["events"]
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(last, ev, "history ends with the echoed event: {r}");
    assert_eq!(r["result"]["head"].as_u64(), Some(head + 1), "{r}");
    let _ = tokio::time::timeout(Duration::from_secs(5), sub.wait()).await;
    Ok(())
}
