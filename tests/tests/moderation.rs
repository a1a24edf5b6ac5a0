//! Moderation: kick, ban, mute and roles, and that a removed user's
//! subscription stops delivering at once.

use anyhow::Result;
use serde_json::json;
use std::time::Duration;
use tests::{group_room, seq_of, TestServer};

#[tokio::test(flavor = "multi_thread")]
async fn kick_ban_mute_and_roles() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-mod").await?;
    let mut bob = srv.user_v4("bob", "bob-mod").await?;
    let mut carol = srv.user_v4("carol", "carol-mod").await?;
    group_room(&mut alice, "mod1", &mut [&mut bob, &mut carol]).await?;
    alice.subscribe_ok("chat/rooms/mod1/events").await?;
    bob.subscribe_ok("chat/rooms/mod1/events").await?;

    // a plain member may not moderate
    assert_eq!(
        bob.rpc_err("rooms.kick", json!({"room": "mod1", "user": "carol"}))
            .await?,
        "forbidden"
    );

    // mute: bob's send is refused with `muted`, unmute restores it
    alice
        .rpc("rooms.mute", json!({"room": "mod1", "user": "bob"}))
        .await?;
    bob.send("mod1", "x1", "muted?").await?;
    let err = bob
        .recv_inbox("muted error", |v| v["msg_id"] == "x1")
        .await?;
    assert_eq!(err["code"], "muted", "{err}");
    alice
        .rpc(
            "rooms.mute",
            json!({"room": "mod1", "user": "bob", "remove": true}),
        )
        .await?;
    bob.send("mod1", "x2", "back").await?;
    bob.recv_msg("mod1", "bob", "x2").await?;

    // kick: bob stops receiving at once and may not send
    let kicked = alice
        .rpc("rooms.kick", json!({"room": "mod1", "user": "bob"}))
        .await?;
    assert!(kicked["seq"].as_u64().is_some(), "{kicked}");
    alice.send("mod1", "a1", "bob is gone").await?;
    let e = alice.recv_msg("mod1", "alice", "a1").await?;
    assert!(seq_of(&e) > 0);
    bob.expect_none("events after the kick", Duration::from_millis(800), |m| {
        m.topic == "chat/rooms/mod1/events"
            && String::from_utf8_lossy(&m.payload).contains("\"a1\"")
    })
    .await?;
    bob.send("mod1", "x3", "still here?").await?;
    let err = bob
        .recv_inbox("not_member after kick", |v| v["msg_id"] == "x3")
        .await?;
    assert_eq!(err["code"], "not_member", "{err}");
    assert!(
        !bob.subscribe("chat/rooms/mod1/events").await?,
        "a kicked user may not subscribe again"
    );

    // ban: bob may not join even when invited
    alice
        .rpc("rooms.ban", json!({"room": "mod1", "user": "bob"}))
        .await?;
    assert_eq!(
        bob.rpc_err("rooms.join", json!({"room": "mod1"})).await?,
        "banned"
    );
    assert_eq!(
        alice
            .rpc_err("rooms.invite", json!({"room": "mod1", "user": "bob"}))
            .await?,
        "banned"
    );
    alice
        .rpc(
            "rooms.ban",
            json!({"room": "mod1", "user": "bob", "remove": true}),
        )
        .await?;
    alice
        .rpc("rooms.invite", json!({"room": "mod1", "user": "bob"}))
        .await?;
    bob.rpc("rooms.join", json!({"room": "mod1"})).await?;

    // roles: carol made admin may kick a member but not the owner
    alice
        .rpc(
            "rooms.role",
            json!({"room": "mod1", "user": "carol", "role": "admin"}),
        )
        .await?;
    carol
        .rpc("rooms.kick", json!({"room": "mod1", "user": "bob"}))
        .await?;
    assert_eq!(
        carol
            .rpc_err("rooms.kick", json!({"room": "mod1", "user": "alice"}))
            .await?,
        "forbidden"
    );
    assert_eq!(
        carol
            .rpc_err(
                "rooms.role",
                json!({"room": "mod1", "user": "bob", "role": "admin"})
            )
            .await?,
        "forbidden"
    );

    // every change is an event in the room's stream
    let h = alice
        .rpc("history", json!({"room": "mod1", "limit": 1000}))
        .await?;
    let actions: Vec<String> = h["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["type"] == "member")
        .filter_map(|e| e["action"].as_str().map(str::to_owned))
        .collect();
    for a in ["mute", "unmute", "kick", "ban", "unban", "role"] {
        assert!(
            actions.iter().any(|x| x == a),
            "history has a {a} event: {actions:?}"
        );
    }
    Ok(())
}

/// `rooms.report`: a member reports a message; the room's owners and
/// admins (not plain members) get an inbox notice naming the message, its
/// author and the reporter; a service sees it on `chat/hooks/reports`.
#[tokio::test(flavor = "multi_thread")]
async fn reports_reach_the_rooms_moderators() -> Result<()> {
    let srv = TestServer::builder()
        .toml("[bridge]\nhooks = true\n")
        .start()
        .await?;
    let mut alice = srv.user_v4("alice", "alice-rep").await?;
    let mut bob = srv.user_v4("bob", "bob-rep").await?;
    let mut carol = srv.user_v4("carol", "carol-rep").await?;
    let mut mallory = srv.user_v4("mallory", "mallory-rep").await?;
    let mut eve = srv.user_v4("eve", "eve-rep").await?;
    group_room(
        &mut alice,
        "rep1",
        &mut [&mut bob, &mut carol, &mut mallory],
    )
    .await?;
    alice
        .rpc(
            "rooms.role",
            json!({"room": "rep1", "user": "bob", "role": "admin"}),
        )
        .await?;
    let mut svc = tests::client_v4(srv.tcp_port(), "ext-bridge", "pw-svc", "svc-rep").await?;
    svc.subscribe_ok("chat/hooks/reports").await?;
    mallory.subscribe_ok("chat/rooms/rep1/events").await?;
    mallory.send("rep1", "spam1", "buy now").await?;
    let spam = seq_of(&mallory.recv_msg("rep1", "mallory", "spam1").await?);

    let r = carol
        .rpc(
            "rooms.report",
            json!({"room": "rep1", "seq": spam, "reason": "spam"}),
        )
        .await?;
    assert_eq!(
        r,
        json!({"reported": true, "moderators": 2}),
        "alice (owner) and bob (admin)"
    );
    for m in [&mut alice, &mut bob] {
        let n = m
            .recv_inbox("the report", |v| {
                v["type"] == "report" && v["room"] == "rep1"
            })
            .await?;
        assert_eq!(
            (
                n["seq"].as_u64(),
                n["author"].clone(),
                n["by"].clone(),
                n["reason"].clone()
            ),
            (Some(spam), json!("mallory"), json!("carol"), json!("spam")),
            "{n}"
        );
    }
    mallory
        .expect_none("a report", Duration::from_millis(300), |m| {
            m.topic == "chat/users/mallory/inbox" && m.json()["type"] == "report"
        })
        .await?;
    let hook = svc
        .recv_until("the report hook", Duration::from_secs(10), |m| {
            m.topic == "chat/hooks/reports"
        })
        .await?
        .json();
    assert_eq!(
        (hook["seq"].as_u64(), hook["by"].clone()),
        (Some(spam), json!("carol"))
    );
    // what cannot be reported
    eve.subscribe_own().await?;
    let e = eve
        .rpc_err("rooms.report", json!({"room": "rep1", "seq": spam}))
        .await?;
    assert_eq!(e, "not_member");
    let e = carol
        .rpc_err("rooms.report", json!({"room": "rep1", "seq": 9999}))
        .await?;
    assert_eq!(e, "not_found");
    let e = carol
        .rpc_err("rooms.report", json!({"room": "rep1"}))
        .await?;
    assert_eq!(e, "bad_request");
    Ok(())
}

/// Slow mode: set by an owner, announced in the room, one message per
/// `seconds` for members (a second within the window is `rate_limited`,
/// edits are not slowed), owners unslowed; 0 turns it off; members may not
/// set it.
#[tokio::test(flavor = "multi_thread")]
async fn slow_mode_per_room() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-slow").await?;
    let mut bob = srv.user_v4("bob", "bob-slow").await?;
    group_room(&mut alice, "slow1", &mut [&mut bob]).await?;
    bob.subscribe_ok("chat/rooms/slow1/events").await?;
    assert_eq!(
        bob.rpc_err("rooms.slow", json!({"room": "slow1", "seconds": 5}))
            .await?,
        "forbidden"
    );
    assert_eq!(
        alice
            .rpc_err("rooms.slow", json!({"room": "slow1", "seconds": 99999}))
            .await?,
        "bad_request"
    );
    alice
        .rpc("rooms.slow", json!({"room": "slow1", "seconds": 2}))
        .await?;
    let announced = bob.recv_event("slow1", |e| e["type"] == "settings").await?;
    assert_eq!(announced["slow_secs"], 2, "{announced}");

    bob.send("slow1", "s1", "first").await?;
    let first = seq_of(&bob.recv_msg("slow1", "bob", "s1").await?);
    bob.send("slow1", "s2", "too soon").await?;
    let err = bob
        .recv_inbox("the slow-mode refusal", |v| {
            v["type"] == "error" && v["msg_id"] == "s2"
        })
        .await?;
    assert_eq!(err["code"], "rate_limited", "{err}");
    // an edit is not slowed; the owner is not slowed
    bob.publish_json(
        "chat/rooms/slow1/send/bob",
        &json!({"msg_id": "e1", "type": "edit", "target": first, "body": "first!"}),
    )
    .await?;
    bob.recv_msg("slow1", "bob", "e1").await?;
    for i in 0..3 {
        alice.send("slow1", &format!("a{i}"), "owner").await?;
        bob.recv_msg("slow1", "alice", &format!("a{i}")).await?;
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    bob.send("slow1", "s3", "after the wait").await?;
    bob.recv_msg("slow1", "bob", "s3").await?;
    // off again
    alice
        .rpc("rooms.slow", json!({"room": "slow1", "seconds": 0}))
        .await?;
    for i in 0..3 {
        bob.send("slow1", &format!("f{i}"), "free").await?;
        bob.recv_msg("slow1", "bob", &format!("f{i}")).await?;
    }
    Ok(())
}
