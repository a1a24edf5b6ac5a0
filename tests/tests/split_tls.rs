//! The same binary run split (broker alone + bridge alone), and MQTT over TLS
//! driven by mosquitto_pub/mosquitto_sub.

use anyhow::{bail, Result};
use serde_json::json;
use std::time::Duration;
use tests::{pki, seq_of, TestServer};

/// A broker alone and a bridge alone connected to it (service account
/// `ext-bridge`); `bridge_toml` is appended inside `[bridge]`.
async fn split_pair(client_id: &str, bridge_toml: &str) -> Result<(TestServer, TestServer)> {
    let broker = TestServer::builder().mode("broker").start().await?;
    let port = broker.tcp_port();
    let bridge = TestServer::builder()
        .mode("bridge")
        .toml(&format!(
            "[bridge]\nbroker = \"127.0.0.1:{port}\"\nclient_id = \"{client_id}\"\nusername = \"ext-bridge\"\npassword = \"pw-svc\"\n{bridge_toml}"
        ))
        .start()
        .await?;
    Ok((broker, bridge))
}

/// The split broker learns membership from the bridge's hooks a moment after
/// the reply: retries the subscription for up to 5 s.
async fn subscribe_within(c: &mut tests::Client, filter: &str) -> Result<bool> {
    for _ in 0..50 {
        if c.subscribe(filter).await? {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_and_bridge_run_apart() -> Result<()> {
    let (broker, bridge) = split_pair("ext-bridge-1", "").await?;

    let mut alice = broker.user_v4("alice", "alice-split").await?;
    let mut bob = broker.user_v4("bob", "bob-split").await?;
    let created = alice
        .rpc(
            "rooms.create",
            json!({"room": "sr", "kind": "group", "members": ["bob"]}),
        )
        .await?;
    assert_eq!(created["room"]["id"], "sr", "{created}");
    bob.rpc("rooms.join", json!({"room": "sr"})).await?;
    assert!(
        subscribe_within(&mut bob, "chat/rooms/sr/events").await?,
        "bob may subscribe to the room once the split broker learned he joined"
    );
    alice.subscribe_ok("chat/rooms/sr/events").await?;
    alice.send("sr", "s1", "over a split deployment").await?;
    let ea = alice.recv_msg("sr", "alice", "s1").await?;
    let eb = bob.recv_msg("sr", "alice", "s1").await?;
    assert_eq!(ea, eb);
    assert_eq!(
        seq_of(&ea),
        4,
        "join(1) invite(2) bob joins(3) then the message: {ea}"
    );
    // a stranger is still refused
    let mut carol = broker.user_v4("carol", "carol-split").await?;
    assert!(
        !carol.subscribe("chat/rooms/sr/events").await?,
        "carol is not a member"
    );
    drop(bridge);
    Ok(())
}

/// The split broker keeps taking the bridge's access hooks in volume (its
/// internal link acks and wakes as rumqttd requires): after 130+ hooks a
/// join is still learned.
#[tokio::test(flavor = "multi_thread")]
async fn split_broker_keeps_learning_after_many_hooks() -> Result<()> {
    let (broker, _bridge) = split_pair(
        "ext-bridge-2",
        "sends_per_sec = 1000.0\nsends_burst = 1000.0\n",
    )
    .await?;
    let mut alice = broker.user_v4("alice", "alice-hooks").await?;
    let mut bob = broker.user_v4("bob", "bob-hooks").await?;
    for i in 0..130 {
        alice
            .rpc(
                "rooms.create",
                json!({"room": format!("h{i}"), "kind": "group"}),
            )
            .await?;
    }
    alice
        .rpc("rooms.invite", json!({"room": "h129", "user": "bob"}))
        .await?;
    bob.rpc("rooms.join", json!({"room": "h129"})).await?;
    assert!(
        subscribe_within(&mut bob, "chat/rooms/h129/events").await?,
        "the broker learned of bob's join after 130+ hooks"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_listener_with_mosquitto_clients() -> Result<()> {
    if !tests::have("mosquitto_pub") {
        eprintln!("SKIPPED tls_listener_with_mosquitto_clients: needs mosquitto_pub (apt install mosquitto-clients)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let made = pki::self_signed_server()?;
    std::fs::write(&cert, &made.cert_pem)?;
    std::fs::write(&key, &made.key_pem)?;
    let srv = TestServer::builder()
        .broker_toml(&format!(
            "tls_listen = \"127.0.0.1:0\"\ntls = {{ cert = {:?}, key = {:?} }}",
            cert.display().to_string(),
            key.display().to_string()
        ))
        .start()
        .await?;
    let Some(tls) = srv.ports().tls else {
        bail!("no tls listener printed; log:\n{}", srv.log_tail())
    };
    let mut alice = srv.user_v4("alice", "alice-tls").await?;
    alice
        .rpc("rooms.create", json!({"room": "tr", "kind": "group"}))
        .await?;

    let tls = tls.to_string();
    let cafile = cert.display().to_string();
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &tls,
            "--cafile",
            &cafile,
            "-u",
            "alice",
            "-P",
            "pw-alice",
            "-i",
            "alice-tls-sub",
            "-t",
            "chat/rooms/tr/events",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .kill_on_drop(true)
        .output();
    let sub = tokio::spawn(sub);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let publ = tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &tls,
            "--cafile",
            &cafile,
            "-u",
            "alice",
            "-P",
            "pw-alice",
            "-i",
            "alice-tls-pub",
            "-q",
            "1",
            "-t",
            "chat/rooms/tr/send/alice",
            "-m",
            r#"{"msg_id":"t1","body":"over tls"}"#,
        ])
        .output()
        .await?;
    assert!(
        publ.status.success(),
        "mosquitto_pub over TLS: {}",
        String::from_utf8_lossy(&publ.stderr)
    );
    let out = sub.await??;
    let line = String::from_utf8_lossy(&out.stdout);
    let ev: serde_json::Value = serde_json::from_str(line.trim()).map_err(|e| {
        anyhow::anyhow!(
            "event over TLS {line:?}: {e}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    assert_eq!(ev["body"], "over tls");
    assert_eq!(ev["msg_id"], "t1");
    assert_eq!(seq_of(&ev), 2, "{ev}");
    Ok(())
}
