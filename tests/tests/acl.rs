//! Access control: what a user may subscribe and publish to, client ids.

use anyhow::Result;
use serde_json::json;
use tests::{client_v4, client_v5, group_room, pw, seq_of, TestServer, QUIET};

#[tokio::test(flavor = "multi_thread")]
async fn refused_subscriptions() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    group_room(&mut bob, "secret", &mut []).await?;
    group_room(&mut alice, "mine", &mut []).await?;

    for filter in [
        "#",
        "chat/#",
        "chat/rooms/+/events",
        "chat/rooms/#",
        "chat/rooms/secret/events",
        "chat/rooms/secret/receipts",
        "chat/rooms/secret/typing/+",
        "chat/users/bob/replies/bob-1",
        "chat/users/bob/replies/+",
        "chat/users/bob/inbox",
        "chat/users/+/inbox",
        "chat/rooms/mine/send/bob",
        "chat/rpc/alice/history",
    ] {
        let granted = alice.subscribe(filter).await?;
        assert!(
            !granted,
            "alice's SUBSCRIBE {filter:?} must be refused in the SubAck"
        );
    }
    // and the connection still works
    alice.subscribe_ok("chat/rooms/mine/events").await?;
    let r = alice.rpc("rooms.list", json!({})).await?;
    assert!(r["rooms"].is_array(), "{r}");

    // same with MQTT 5
    let mut a5 = srv.user_v5("alice", "alice-v5").await?;
    for filter in [
        "#",
        "chat/rooms/+/events",
        "chat/rooms/secret/events",
        "chat/users/bob/inbox",
    ] {
        assert!(
            !a5.subscribe(filter).await?,
            "v5 SUBSCRIBE {filter:?} must be refused"
        );
    }
    a5.subscribe_ok("chat/rooms/mine/events").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cannot_send_as_another_user() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    group_room(&mut alice, "r1", &mut [&mut bob]).await?;
    bob.subscribe_ok("chat/rooms/r1/events").await?;
    let head = bob.head("r1").await?;

    // alice publishes to bob's send topic
    let _ = alice
        .publish_json(
            "chat/rooms/r1/send/bob",
            &json!({"msg_id": "forged", "body": "I am bob"}),
        )
        .await;
    bob.expect_none("event from a forged send", QUIET, |m| {
        m.topic == "chat/rooms/r1/events" && m.json()["msg_id"] == "forged"
    })
    .await?;
    // a legitimate send (new connection, in case the broker dropped alice's) gets head+1
    let alice2 = srv.user_v4("alice", "alice-2").await?;
    alice2.send("r1", "real", "hello").await?;
    let e = bob.recv_msg("r1", "alice", "real").await?;
    assert_eq!(seq_of(&e), head + 1, "the forged send stored nothing: {e}");

    // rpc as another user: no reply, no effect
    let _ = alice2
        .publish_json(
            "chat/rpc/bob/rooms.leave",
            &json!({"room": "r1", "reply": "chat/users/alice/replies/alice-2", "corr": "x"}),
        )
        .await;
    let members = bob.rpc("rooms.members", json!({"room": "r1"})).await?;
    let bob_state = members["members"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["user"] == "bob"))
        .map(|m| m["state"].clone());
    assert_eq!(
        bob_state,
        Some(json!("joined")),
        "forged rooms.leave had no effect: {members}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reply_topic_outside_own_namespace_gets_nothing() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    group_room(&mut alice, "r1", &mut []).await?;
    bob.subscribe_ok("devices/victim").await?;

    for reply in [
        "chat/users/bob/replies/bob-1",
        "chat/users/bob/inbox",
        "devices/victim",
    ] {
        alice
            .publish_json(
                "chat/rpc/alice/history",
                &json!({"room": "r1", "reply": reply, "corr": "steal"}),
            )
            .await?;
        alice
            .publish_json(
                "chat/rpc/alice/rooms.list",
                &json!({"reply": reply, "corr": "steal"}),
            )
            .await?;
    }
    // MQTT 5 response topic pointing at bob
    let a5 = srv.user_v5("alice", "alice-v5").await?;
    a5.publish_v5(
        "chat/rpc/alice/rooms.list",
        serde_json::to_vec(&json!({}))?,
        rumqttc::v5::mqttbytes::v5::PublishProperties {
            response_topic: Some("chat/users/bob/replies/bob-1".into()),
            correlation_data: Some(bytes::Bytes::from_static(b"steal5")),
            ..Default::default()
        },
    )
    .await?;
    // bob is in no room: nothing at all may arrive on his topics
    bob.expect_none("a reply to alice's request on bob's topics", QUIET, |_| {
        true
    })
    .await?;
    // alice herself still gets replies on her own topic
    let r = alice.rpc("rooms.list", json!({})).await?;
    assert!(r["rooms"].is_array());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn client_id_in_use_by_other_user_is_refused() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "shared-1").await?;
    let res = client_v4(srv.tcp_port(), "bob", &pw("bob"), "shared-1").await;
    assert!(
        res.is_err(),
        "bob connecting with alice's client id must be refused at CONNECT"
    );
    let res = client_v5(srv.tcp_port(), "bob", &pw("bob"), "shared-1").await;
    assert!(
        res.is_err(),
        "bob (MQTT 5) connecting with alice's client id must be refused"
    );
    // alice is still connected and served
    assert_eq!(
        alice.is_closed(),
        None,
        "alice's connection survived the takeover attempt"
    );
    let r = alice.rpc("rooms.list", json!({})).await?;
    assert!(r["rooms"].is_array());
    assert_eq!(alice.is_closed(), None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_and_client_ids_refused() -> Result<()> {
    let srv = TestServer::start().await?;
    let port = srv.tcp_port();
    assert!(
        client_v4(port, "alice", "wrong", "alice-x").await.is_err(),
        "wrong password refused"
    );
    assert!(
        client_v4(port, "nobody", "pw-nobody", "nobody-x")
            .await
            .is_err(),
        "unknown user refused"
    );
    // wildcards and control characters: refused
    for cid in ["a+b", "a#b", "a/b#", "a\nb", "a\u{0}b"] {
        let r = client_v4(port, "alice", &pw("alice"), cid).await;
        assert!(r.is_err(), "client id {cid:?} must be refused (v4)");
        let r = client_v5(port, "alice", &pw("alice"), cid).await;
        assert!(r.is_err(), "client id {cid:?} must be refused (v5)");
    }
    let long = "x".repeat(257);
    assert!(
        client_v4(port, "alice", &pw("alice"), &long).await.is_err(),
        "257-byte client id refused"
    );
    // other ids connect (devices and test suites use `/`); none gets
    // another user's reply topic, and an id of several levels matches no
    // reply topic at all (it cannot make chat requests: fail closed)
    for cid in ["a/b", "$sys", "a b", "chat/users/bob/replies/x"] {
        let mut c = client_v4(port, "alice", &pw("alice"), cid).await?;
        let mut refused = vec![
            "chat/users/bob/replies/x".to_string(),
            "chat/users/bob/replies/+".to_string(),
            format!("chat/users/bob/replies/{cid}"),
        ];
        if cid.contains('/') {
            refused.push(format!("chat/users/alice/replies/{cid}"));
        }
        for filter in refused {
            assert!(
                !c.subscribe(&filter).await?,
                "{cid:?} must not get reply topic {filter:?}"
            );
        }
    }
    // the server keeps serving
    let mut alice = srv.user_v4("alice", "alice.ok:1-_").await?;
    let r = alice
        .rpc(
            "rooms.create",
            json!({"room": "after", "kind": "group", "members": []}),
        )
        .await?;
    assert_eq!(r["room"]["id"], "after");
    alice.subscribe_ok("chat/rooms/after/events").await?;
    alice.send("after", "m1", "still here").await?;
    alice.recv_msg("after", "alice", "m1").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kicked_member_loses_access() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    let mut carol = srv.user_v4("carol", "carol-1").await?;
    group_room(&mut alice, "r1", &mut [&mut bob]).await?;
    // carol is not a member: no events, no history
    assert!(
        !carol.subscribe("chat/rooms/r1/events").await?,
        "non-member subscribe refused"
    );
    let code = carol.rpc_err("history", json!({"room": "r1"})).await?;
    assert!(
        code == "not_member" || code == "forbidden",
        "history by non-member: {code}"
    );
    // bob leaves, then may no longer subscribe or send
    bob.rpc("rooms.leave", json!({"room": "r1"})).await?;
    assert!(
        !bob.subscribe("chat/rooms/r1/events").await?,
        "subscribe after leaving refused"
    );
    bob.send("r1", "late", "hi").await?;
    let err = bob
        .recv_inbox("not_member error for a send after leaving", |v| {
            v["type"] == "error"
        })
        .await?;
    assert_eq!(err["code"], "not_member", "{err}");
    Ok(())
}

/// A user's reply topic is delivered by the broker itself (`broker::direct`,
/// not a router filter): UNSUBSCRIBE stops it at once, a new SUBSCRIBE
/// brings it back, and requests keep working throughout.
#[tokio::test(flavor = "multi_thread")]
async fn reply_topic_unsubscribe_and_subscribe_again() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-unsub").await?;
    let reply = alice.reply_topic();
    let r = alice.rpc("rooms.list", json!({})).await?;
    assert!(r["rooms"].is_array(), "{r}");

    alice.unsubscribe(&reply).await?;
    alice
        .publish_json(
            "chat/rpc/alice/rooms.list",
            &json!({"reply": reply, "corr": "after-unsub"}),
        )
        .await?;
    alice
        .expect_none("a reply after UNSUBSCRIBE", QUIET, |m| m.topic == reply)
        .await?;

    alice.subscribe_ok(&reply).await?;
    let r = alice.rpc("rooms.list", json!({})).await?;
    assert!(r["rooms"].is_array(), "subscribed again: {r}");
    Ok(())
}

/// CONNACK (MQTT 5) says shared subscriptions are available to a service
/// account, which may use them, and not to a user, whose `$share/`
/// subscription is refused with 0x9E (Shared Subscriptions not supported),
/// not 0x87 (Not authorized).
#[tokio::test(flavor = "multi_thread")]
async fn shared_subscriptions_for_services_only() -> Result<()> {
    use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let srv = TestServer::start().await?;
    let probe = |user: &'static str, password: String, filter: &'static str| {
        let port = srv.tcp_port();
        async move {
            let mut o = MqttOptions::new(format!("{user}-share"), "127.0.0.1", port);
            o.set_credentials(user, password);
            let (client, mut el) = AsyncClient::new(o, 10);
            let mut available = None;
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let ev = tokio::time::timeout_at(deadline, el.poll()).await??;
                match ev {
                    Event::Incoming(Packet::ConnAck(ack)) => {
                        available = ack.properties.and_then(|p| p.shared_subscription_available);
                        client.subscribe(filter, QoS::AtLeastOnce).await?;
                    }
                    Event::Incoming(Packet::SubAck(s)) => {
                        return Ok::<_, anyhow::Error>((available, s.return_codes));
                    }
                    _ => {}
                }
            }
        }
    };
    let (avail, codes) = probe("alice", pw("alice"), "$share/g/chat/rooms/r1/events").await?;
    assert_eq!(avail, Some(0), "a user is told there are none");
    assert_eq!(
        codes,
        vec![SubscribeReasonCode::SharedSubscriptionsNotSupported]
    );
    let (avail, codes) = probe(
        "ext-bridge",
        "pw-svc".into(),
        "$share/g/chat/rooms/+/send/+",
    )
    .await?;
    assert_eq!(avail, Some(1), "a service account is told they work");
    assert!(
        matches!(codes[..], [SubscribeReasonCode::Success(_)]),
        "{codes:?}"
    );
    // ... and they do: a member of the share group gets what its filter matches
    let mut svc = client_v5(srv.tcp_port(), "ext-bridge", "pw-svc", "svc-share").await?;
    svc.subscribe_ok("$share/g2/chat/rooms/+/typing/+").await?;
    let mut alice = srv.user_v4("alice", "alice-share").await?;
    group_room(&mut alice, "shr", &mut []).await?;
    alice
        .publish_json("chat/rooms/shr/typing/alice", &json!({"typing": true}))
        .await?;
    svc.recv_until(
        "the shared delivery",
        std::time::Duration::from_secs(10),
        |m| m.topic == "chat/rooms/shr/typing/alice",
    )
    .await?;
    // an ordinary refusal stays 0x87
    let (_, codes) = probe("alice", pw("alice"), "chat/rooms/+/events").await?;
    assert_eq!(codes, vec![SubscribeReasonCode::NotAuthorized]);
    Ok(())
}

/// A client's Maximum Packet Size bounds the whole packet, properties
/// included (MQTT-3.1.2-24): a reply whose correlation data makes it too
/// big is not sent (the client would have to drop the connection), and the
/// connection carries on.
#[tokio::test(flavor = "multi_thread")]
async fn maximum_packet_size_counts_properties() -> Result<()> {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let srv = TestServer::start().await?;
    let mut o = MqttOptions::new("alice-maxpkt", "127.0.0.1", srv.tcp_port());
    o.set_credentials("alice", pw("alice"));
    o.set_max_packet_size(Some(600));
    let (client, mut el) = AsyncClient::new(o, 10);
    let reply = "chat/users/alice/replies/alice-maxpkt";
    let request = |corr: Vec<u8>| {
        let props = PublishProperties {
            response_topic: Some(reply.to_owned()),
            correlation_data: Some(corr.into()),
            ..Default::default()
        };
        let c = client.clone();
        async move {
            c.publish_with_properties(
                "chat/rpc/alice/rooms.list",
                QoS::AtLeastOnce,
                false,
                "{}",
                props,
            )
            .await
        }
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut replies = Vec::new();
    loop {
        let ev = tokio::time::timeout_at(deadline, el.poll()).await?;
        match ev? {
            Event::Incoming(Packet::ConnAck(_)) => {
                client.subscribe(reply, QoS::AtLeastOnce).await?;
            }
            Event::Incoming(Packet::SubAck(_)) => {
                // a reply of ~100 bytes + 1000 bytes of correlation data: too big
                request(vec![b'x'; 1000]).await?;
                request(b"small".to_vec()).await?;
            }
            Event::Incoming(Packet::Publish(p)) => {
                let corr = p.properties.and_then(|pr| pr.correlation_data);
                replies.push(corr.map(|c| c.len()));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(
        replies,
        vec![Some(5)],
        "only the reply that fits, and the connection lives"
    );
    Ok(())
}
