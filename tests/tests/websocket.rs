//! MQTT 3.1.1 over WebSocket with a client written by others (Python paho-mqtt).

use anyhow::Result;
use serde_json::{json, Value};
use std::time::Duration;
use tests::{group_room, paho_available, pw, python, seq_of, TestServer, PAHO_WS_SCRIPT};

#[tokio::test(flavor = "multi_thread")]
async fn paho_websocket_send_and_echo() -> Result<()> {
    if let Err(why) = paho_available().await {
        println!("SKIPPED: python paho-mqtt not importable: {why}");
        return Ok(());
    }
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-rs").await?;
    let mut bob = srv.user_v4("bob", "bob-rs").await?;
    group_room(&mut alice, "ws1", &mut [&mut bob]).await?;
    bob.subscribe_ok("chat/rooms/ws1/events").await?;
    let head = bob.head("ws1").await?;

    let args: Vec<String> = [
        "127.0.0.1".to_string(),
        srv.ws_port().to_string(),
        "alice".into(),
        pw("alice"),
        "alice-ws".into(),
        "chat/rooms/ws1/events".into(),
        "chat/rooms/ws1/send/alice".into(),
        json!({"msg_id": "w1", "body": "over websocket"}).to_string(),
        "15".into(),
    ]
    .to_vec();
    let (ok, out, err) = python(PAHO_WS_SCRIPT, &args, Duration::from_secs(30)).await?;
    assert!(
        ok,
        "paho over WebSocket got no echo; stdout: {out}; stderr: {err}"
    );
    let res: Value = serde_json::from_str(out.trim().lines().last().unwrap_or(""))?;
    let ev: Value = serde_json::from_str(res["msg"]["payload"].as_str().unwrap_or(""))?;
    assert_eq!(ev["msg_id"], "w1", "{res}");
    assert_eq!(ev["from"], "alice", "{res}");
    assert_eq!(seq_of(&ev), head + 1, "{res}");
    // the TCP client sees the same event
    let e = bob.recv_msg("ws1", "alice", "w1").await?;
    assert_eq!(e, ev);
    Ok(())
}
