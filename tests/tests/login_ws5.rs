//! JWT logins end to end, and MQTT 5 over WebSocket with paho.

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use std::time::Duration;
use tests::{
    client_v4, group_room, paho_available, pw, python, seq_of, TestServer, PAHO_WS_SCRIPT,
};

/// An HS256 JWT made with Python's standard library (the server's secret is
/// `test-secret` in the fixture's config).
async fn hs256(sub: &str, exp_offset_secs: i64) -> Result<String> {
    let script = r#"
import sys, json, hmac, hashlib, base64, time
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=")
h = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
p = b(json.dumps({"sub": sys.argv[1], "exp": int(time.time()) + int(sys.argv[2])}).encode())
s = b(hmac.new(b"test-secret", h + b"." + p, hashlib.sha256).digest())
print((h + b"." + p + b"." + s).decode())
"#;
    let (ok, out, err) = python(
        script,
        &[sub.to_string(), exp_offset_secs.to_string()],
        Duration::from_secs(20),
    )
    .await?;
    if !ok {
        return Err(anyhow!("token script failed: {err}"));
    }
    Ok(out.trim().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_login_acts_as_sub() -> Result<()> {
    let srv = TestServer::start().await?;
    let token = hs256("zoe", 300).await?;
    // the user id comes from `sub` (the username may be empty or equal it); zoe is not a static user
    let mut zoe = client_v4(srv.tcp_port(), "zoe", &token, "zoe-1").await?;
    zoe.subscribe_own()
        .await
        .map_err(|e| anyhow!("zoe's own topics must be hers: {e:#}"))?;
    let r = zoe
        .rpc("rooms.create", json!({"room": "jz", "kind": "group"}))
        .await?;
    assert_eq!(r["room"]["created_by"], "zoe", "{r}");
    // an expired token and a token for someone else's username are refused
    let expired = hs256("zoe", -3600).await?;
    assert!(
        client_v4(srv.tcp_port(), "", &expired, "zoe-2")
            .await
            .is_err(),
        "expired token refused"
    );
    assert!(
        client_v4(srv.tcp_port(), "alice", &token, "zoe-3")
            .await
            .is_err(),
        "username must equal sub"
    );
    // zoe still works
    let r = zoe.rpc("rooms.list", json!({})).await?;
    assert_eq!(r["rooms"][0]["room"], "jz", "{r}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn paho_websocket_mqtt5_send_and_echo() -> Result<()> {
    if let Err(why) = paho_available().await {
        println!("SKIPPED: python paho-mqtt not importable: {why}");
        return Ok(());
    }
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-rs5").await?;
    let mut bob = srv.user_v4("bob", "bob-rs5").await?;
    group_room(&mut alice, "ws5", &mut [&mut bob]).await?;
    bob.subscribe_ok("chat/rooms/ws5/events").await?;
    let head = bob.head("ws5").await?;
    let script = PAHO_WS_SCRIPT.replace("protocol=mqtt.MQTTv311", "protocol=mqtt.MQTTv5");
    let args: Vec<String> = vec![
        "127.0.0.1".into(),
        srv.ws_port().to_string(),
        "alice".into(),
        pw("alice"),
        "alice-ws5".into(),
        "chat/rooms/ws5/events".into(),
        "chat/rooms/ws5/send/alice".into(),
        json!({"msg_id": "w5", "body": "mqtt 5 over websocket"}).to_string(),
        "15".into(),
    ];
    let (ok, out, err) = python(&script, &args, Duration::from_secs(30)).await?;
    assert!(
        ok,
        "paho MQTT 5 over WebSocket got no echo; stdout: {out}; stderr: {err}"
    );
    let res: Value = serde_json::from_str(out.trim().lines().last().unwrap_or(""))?;
    let ev: Value = serde_json::from_str(res["msg"]["payload"].as_str().unwrap_or(""))?;
    assert_eq!(ev["msg_id"], "w5", "{res}");
    assert_eq!(seq_of(&ev), head + 1, "{res}");
    assert_eq!(bob.recv_msg("ws5", "alice", "w5").await?, ev);
    Ok(())
}
