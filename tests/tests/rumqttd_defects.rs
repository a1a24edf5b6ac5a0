//! Regression tests for defects of the underlying rumqttd router that the
//! connection layer must shield clients from.

use anyhow::Result;
use serde_json::{json, Value};
use std::time::Duration;
use tests::{
    client_v4, group_room, paho_available, pw, python, TestServer, PAHO_WS_SCRIPT, TIMEOUT,
};

/// (a) v5 properties on a publish must not break a 3.1.1 subscriber or the server.
#[tokio::test(flavor = "multi_thread")]
async fn v5_properties_reach_v4_subscriber() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut sub4 = srv.user_v4("bob", "bob-v4").await?;
    sub4.subscribe_ok("devices/d1").await?;
    let mut sub5 = srv.user_v5("carol", "carol-v5").await?;
    sub5.subscribe_ok("devices/d1").await?;
    let pub5 = srv.user_v5("alice", "alice-v5").await?;
    for i in 0..3 {
        pub5.publish_v5(
            "devices/d1",
            format!("reading-{i}"),
            rumqttc::v5::mqttbytes::v5::PublishProperties {
                user_properties: vec![("unit".into(), "C".into()), ("seq".into(), i.to_string())],
                response_topic: Some("devices/d1/replies".into()),
                correlation_data: Some(bytes::Bytes::from_static(b"corr")),
                content_type: Some("text/plain".into()),
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                ..Default::default()
            },
        )
        .await?;
        let want = format!("reading-{i}");
        let m = sub4
            .recv_until(&format!("{want} at the 3.1.1 subscriber"), TIMEOUT, |m| {
                m.topic == "devices/d1" && m.payload == want.as_bytes()
            })
            .await?;
        assert_eq!(m.payload, want.as_bytes());
        let m = sub5
            .recv_until(&format!("{want} at the v5 subscriber"), TIMEOUT, |m| {
                m.topic == "devices/d1" && m.payload == want.as_bytes()
            })
            .await?;
        assert!(
            m.user_properties
                .contains(&("unit".to_string(), "C".to_string())),
            "v5 subscriber keeps user properties: {:?}",
            m.user_properties
        );
    }
    assert_eq!(sub4.is_closed(), None, "3.1.1 subscriber still connected");
    // the server keeps serving chat
    let mut alice = srv.user_v4("alice", "alice-v4").await?;
    group_room(&mut alice, "after", &mut []).await?;
    alice.subscribe_ok("chat/rooms/after/events").await?;
    alice.send("after", "m1", "ok").await?;
    alice.recv_msg("after", "alice", "m1").await?;
    let r = sub4.rpc("rooms.list", json!({})).await?;
    assert!(r["rooms"].is_array());
    Ok(())
}

/// (b) An odd client id, refused twice in a row, leaves the server accepting clients.
#[tokio::test(flavor = "multi_thread")]
async fn odd_client_id_refused_twice_server_survives() -> Result<()> {
    let srv = TestServer::start().await?;
    let port = srv.tcp_port();
    for attempt in 1..=2 {
        let r = client_v4(port, "alice", &pw("alice"), "a/b#").await;
        assert!(
            r.is_err(),
            "attempt {attempt}: client id \"a/b#\" must be refused"
        );
        let r = tests::client_v5(port, "alice", &pw("alice"), "a/b#").await;
        assert!(
            r.is_err(),
            "attempt {attempt} (v5): client id \"a/b#\" must be refused"
        );
    }
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    let r = bob.rpc("rooms.list", json!({})).await?;
    assert!(r["rooms"].is_array(), "{r}");
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    group_room(&mut alice, "r", &mut [&mut bob]).await?;
    bob.subscribe_ok("chat/rooms/r/events").await?;
    alice.send("r", "m1", "hello").await?;
    bob.recv_msg("r", "alice", "m1").await?;
    Ok(())
}

/// (c) An idle half-open TCP connection to the WebSocket port must not stall
/// the accept loop.
#[tokio::test(flavor = "multi_thread")]
async fn idle_socket_does_not_block_websocket_accept() -> Result<()> {
    if let Err(why) = paho_available().await {
        println!("SKIPPED: python paho-mqtt not importable: {why}");
        return Ok(());
    }
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-rs").await?;
    group_room(&mut alice, "ws", &mut []).await?;
    // connect and send nothing; keep them open during the test
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", srv.ws_port())).await?);
    }
    // also a socket that sent half an HTTP upgrade request
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", srv.ws_port())).await?;
        s.write_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n").await?;
        idle.push(s);
    }
    let args: Vec<String> = [
        "127.0.0.1".to_string(),
        srv.ws_port().to_string(),
        "alice".into(),
        pw("alice"),
        "alice-ws".into(),
        "chat/rooms/ws/events".into(),
        "chat/rooms/ws/send/alice".into(),
        json!({"msg_id": "w1", "body": "not blocked"}).to_string(),
        "4".into(),
    ]
    .to_vec();
    // well under the server's 10 s handshake timeout
    let started = std::time::Instant::now();
    let (ok, out, err) = python(PAHO_WS_SCRIPT, &args, Duration::from_secs(20)).await?;
    assert!(
        ok,
        "paho WebSocket client blocked behind idle sockets (after {:?}); stdout: {out}; stderr: {err}",
        started.elapsed()
    );
    let res: Value = serde_json::from_str(out.trim().lines().last().unwrap_or(""))?;
    let ev: Value = serde_json::from_str(res["msg"]["payload"].as_str().unwrap_or(""))?;
    assert_eq!(ev["msg_id"], "w1", "{res}");
    drop(idle);
    Ok(())
}

/// rumqttd drops a connection that acks out of order. The bridge handles a
/// batch's rooms concurrently, so it must still ack in arrival order: sends
/// interleaved over many rooms all arrive once, and the bridge never
/// reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_over_many_rooms_keep_the_bridge_connected() -> Result<()> {
    let srv = TestServer::builder()
        .toml("[bridge]\nsends_per_sec = 100000.0\nsends_burst = 100000.0\n")
        .broker_toml("limits = { publishes_per_sec = 100000 }")
        .start()
        .await?;
    let mut alice = srv.user_v4("alice", "alice-rooms").await?;
    let rooms: Vec<String> = (0..10).map(|i| format!("mr{i}")).collect();
    for r in &rooms {
        alice
            .rpc("rooms.create", json!({"room": r, "kind": "group"}))
            .await?;
        alice
            .subscribe_ok(&format!("chat/rooms/{r}/events"))
            .await?;
    }
    let per_room = 60;
    for i in 0..per_room {
        for r in &rooms {
            alice.send(r, &format!("{r}-{i}"), "x").await?;
        }
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < rooms.len() * per_room {
        let m = alice
            .recv_until("a message event", TIMEOUT, |m| m.topic.ends_with("/events"))
            .await?;
        let v = m.json();
        if v["type"] == "message" {
            assert!(
                seen.insert(v["msg_id"].as_str().unwrap_or("").to_owned()),
                "no duplicate: {v}"
            );
        }
    }
    let log = srv.log_tail();
    assert!(
        !log.contains("bridge connection lost") && !log.contains("out of order ack"),
        "the bridge stayed connected:\n{log}"
    );
    Ok(())
}
