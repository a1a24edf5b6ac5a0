//! A chat client's connection is not a rumqttd router link (issue 13;
//! docs/architecture.md, "A chat connection is not a router link"): its
//! reply topic, inbox and rooms' events and receipts are delivered by the
//! broker, its sends and requests go through the broker's shared
//! publisher. A link is opened when a session needs one (typing, presence
//! or device subscriptions, QoS 2, a persistent session), and the router
//! behaves for it as before. `chatmq_router_links` counts them.

use anyhow::{bail, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use std::time::Duration;
use tests::{
    assert_eventually, client_v4_with, group_room, metric, pw, TestServer, QUIET, TIMEOUT,
};

async fn links(srv: &TestServer) -> Result<f64> {
    Ok(metric(
        &srv.http_get("/metrics").await?.1,
        "chatmq_router_links",
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chat_client_needs_no_router_link() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    let mut carol = srv.user_v4("carol", "carol-1").await?;
    group_room(&mut alice, "r1", &mut [&mut bob, &mut carol]).await?;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.subscribe_ok("chat/rooms/r1/events").await?;
        c.subscribe_ok("chat/rooms/r1/receipts").await?;
    }

    // sends, events, requests, receipts: all without a link of their own
    alice.send("r1", "m1", "hello").await?;
    let ev = bob.recv_msg("r1", "alice", "m1").await?;
    carol.recv_msg("r1", "alice", "m1").await?;
    bob.rpc("read", json!({"room": "r1", "seq": ev["seq"]}))
        .await?;
    let receipt = alice
        .recv_until("bob's read receipt", TIMEOUT, |m| {
            m.topic == "chat/rooms/r1/receipts" && m.json()["user"] == "bob"
        })
        .await?;
    assert_eq!(receipt.json()["read"], ev["seq"], "{}", receipt.json());
    let h = carol.rpc("history", json!({"room": "r1"})).await?;
    assert!(h["events"].as_array().is_some_and(|e| !e.is_empty()), "{h}");
    assert_eq!(links(&srv).await?, 0.0, "no chat client has a router link");

    // typing is a router subscription (a wildcard): bob's session links
    // then, and typing published without a link reaches him
    bob.subscribe_ok("chat/rooms/r1/typing/+").await?;
    assert_eq!(
        links(&srv).await?,
        1.0,
        "bob's typing subscription linked him"
    );
    alice
        .publish_json("chat/rooms/r1/typing/alice", &json!({"typing": true}))
        .await?;
    bob.recv_until("alice typing", TIMEOUT, |m| {
        m.topic == "chat/rooms/r1/typing/alice"
    })
    .await?;
    // his events still come, once each
    alice.send("r1", "m2", "again").await?;
    bob.recv_msg("r1", "alice", "m2").await?;
    bob.expect_none("m2 twice", QUIET, |m| {
        m.topic == "chat/rooms/r1/events" && m.json()["msg_id"] == "m2"
    })
    .await?;

    // a kicked member's delivered subscription stops at once
    alice
        .rpc("rooms.kick", json!({"room": "r1", "user": "carol"}))
        .await?;
    alice.send("r1", "m3", "after the kick").await?;
    bob.recv_msg("r1", "alice", "m3").await?;
    carol
        .expect_none("an event after the kick", QUIET, |m| {
            m.topic == "chat/rooms/r1/events" && m.json()["msg_id"] == "m3"
        })
        .await?;

    // a link ends with its connection
    drop(bob);
    assert_eventually!(
        links(&srv).await? == 0.0,
        TIMEOUT,
        "bob's link ended with his connection"
    );
    Ok(())
}

/// UNSUBSCRIBE on a session without a router link is answered by the broker.
#[tokio::test(flavor = "multi_thread")]
async fn unsubscribe_without_a_link_is_acknowledged_and_stops_deliveries() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    group_room(&mut alice, "u1", &mut []).await?;

    let mut o = MqttOptions::new("alice-raw", "127.0.0.1", srv.tcp_port());
    o.set_credentials("alice", pw("alice"));
    let (c, mut el) = AsyncClient::new(o, 10);
    c.subscribe("chat/rooms/u1/events", QoS::AtLeastOnce)
        .await?;
    c.unsubscribe("chat/rooms/u1/events").await?;
    c.subscribe("chat/rooms/u1/receipts", QoS::AtLeastOnce)
        .await?;
    let (mut subacks, mut unsuback) = (0, false);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while subacks < 2 || !unsuback {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => subacks += 1,
            Ok(Ok(Event::Incoming(Packet::UnsubAck(_)))) => unsuback = true,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("connection failed: {e}"),
            Err(_) => bail!("{subacks} SUBACKs, UNSUBACK {unsuback} within {TIMEOUT:?}"),
        }
    }
    assert_eq!(links(&srv).await?, 0.0);
    alice.send("u1", "m1", "after the unsubscribe").await?;
    let quiet = tokio::time::Instant::now() + QUIET;
    loop {
        match tokio::time::timeout_at(quiet, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                bail!("delivered after UNSUBSCRIBE: {}", p.topic)
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("connection failed: {e}"),
            Err(_) => break,
        }
    }
    Ok(())
}

/// A persistent session keeps its rooms in the router: what is sent while
/// it is away comes when it resumes.
#[tokio::test(flavor = "multi_thread")]
async fn a_persistent_session_gets_what_its_rooms_missed() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    group_room(&mut alice, "p1", &mut [&mut bob]).await?;
    drop(bob);

    let persistent = || {
        let mut o = MqttOptions::new("bob-kept", "127.0.0.1", srv.tcp_port());
        o.set_credentials("bob", pw("bob"));
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(30));
        o
    };
    let mut bob = client_v4_with(persistent(), "bob").await?;
    bob.subscribe_ok("chat/rooms/p1/events").await?;
    assert_eq!(
        links(&srv).await?,
        1.0,
        "a persistent session links at CONNECT"
    );
    alice.send("p1", "live", "while connected").await?;
    bob.recv_msg("p1", "alice", "live").await?;
    drop(bob);
    assert_eventually!(links(&srv).await? == 0.0, TIMEOUT, "link ended");

    // sent while bob is away: stored and published before he comes back
    alice.subscribe_ok("chat/rooms/p1/events").await?;
    alice.send("p1", "away", "while away").await?;
    alice.recv_msg("p1", "alice", "away").await?;
    let mut bob = client_v4_with(persistent(), "bob").await?;
    bob.recv_msg("p1", "alice", "away").await?;
    Ok(())
}

/// Receive Maximum (MQTT-3.3.4-9) holds for a room's events delivered by the
/// broker as for the router's: at most that many unacknowledged, the rest in
/// order as the client acknowledges.
#[tokio::test(flavor = "multi_thread")]
async fn room_events_respect_receive_maximum() -> Result<()> {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::{AsyncClient as A5, Event as E5, MqttOptions as O5};
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    group_room(&mut alice, "rm", &mut []).await?;

    let mut o = O5::new("alice-slow", "127.0.0.1", srv.tcp_port());
    o.set_credentials("alice", pw("alice"));
    o.set_receive_maximum(Some(3));
    o.set_manual_acks(true);
    let (client, mut el) = A5::new(o, 100);
    let (tx, mut got) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(ev) = el.poll().await {
            match ev {
                E5::Incoming(P5::Publish(p)) => {
                    let _ = tx.send(Some(p));
                }
                E5::Incoming(P5::SubAck(_)) => {
                    let _ = tx.send(None);
                }
                _ => {}
            }
        }
    });
    client
        .subscribe(
            "chat/rooms/rm/events",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await?;
    match tokio::time::timeout(TIMEOUT, got.recv()).await {
        Ok(Some(None)) => {}
        other => bail!("no SUBACK: {other:?}"),
    }
    for i in 0..10 {
        alice.send("rm", &format!("m{i}"), "hi").await?;
    }
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let mut batch = Vec::new();
        while let Ok(Some(Some(p))) =
            tokio::time::timeout(Duration::from_millis(700), got.recv()).await
        {
            batch.push(p);
        }
        if batch.is_empty() {
            bail!("stalled after {} of 10: {seen:?}", seen.len());
        }
        assert!(
            batch.len() <= 3,
            "{} unacknowledged deliveries, the client allows 3",
            batch.len()
        );
        for p in batch {
            let v: serde_json::Value = serde_json::from_slice(&p.payload)?;
            seen.push(v["msg_id"].as_str().unwrap_or("?").to_owned());
            client.ack(&p).await?;
        }
    }
    let want: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, want, "all of them, in order");
    task.abort();
    Ok(())
}

/// A room's stream goes to the router only once a router filter matches it
/// (`broker::direct::deliver_room_stream`): a service's wildcard, plain or
/// shared, made after the rooms' first events gets every later event of
/// every room, and the clients the broker delivers to get them all.
#[tokio::test(flavor = "multi_thread")]
async fn a_router_filter_made_later_gets_the_room_streams() -> Result<()> {
    for filter in ["chat/rooms/+/events", "$share/g/chat/rooms/+/events"] {
        let srv = TestServer::start().await?;
        let mut alice = srv.user_v4("alice", "alice-1").await?;
        let mut bob = srv.user_v4("bob", "bob-1").await?;
        group_room(&mut alice, "w1", &mut [&mut bob]).await?;
        group_room(&mut alice, "w2", &mut [&mut bob]).await?;
        bob.subscribe_ok("chat/rooms/w1/events").await?;
        bob.subscribe_ok("chat/rooms/w2/events").await?;
        // no router filter matches yet: the broker's subscribers only
        alice.send("w1", "before", "one").await?;
        bob.recv_msg("w1", "alice", "before").await?;

        let mut svc = tests::client_v4(srv.tcp_port(), "ext-bridge", "pw-svc", "svc-1").await?;
        svc.subscribe_ok(filter).await?;
        alice.send("w1", "after-1", "two").await?;
        alice.send("w2", "after-2", "three").await?;
        for (room, id) in [("w1", "after-1"), ("w2", "after-2")] {
            let got = svc.recv_msg(room, "alice", id).await;
            got.map_err(|e| anyhow::anyhow!("{filter}: {e}"))?;
            bob.recv_msg(room, "alice", id).await?;
        }
    }
    Ok(())
}
