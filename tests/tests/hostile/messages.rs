//! See `hostile.rs`: edits, deletes and reactions of what is not one's own
//! or not there (issue 10, item 2), and limits as configuration (item 10).
//! The order of a batch's events (item 8) is checked by the unit test in
//! `chat-bridge/src/bridge/tests.rs`, which makes the interleaving certain.

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use tests::*;

static CORR: AtomicU64 = AtomicU64::new(0);

/// Publishes `body` to `room`'s send topic of `c`'s user with payload
/// `reply`/`corr` fields, and returns the reply.
async fn act(c: &mut Client, room: &str, mut body: Value) -> Result<Value> {
    let corr = format!("act-{}", CORR.fetch_add(1, Ordering::Relaxed));
    let reply = c.reply_topic();
    body["reply"] = reply.clone().into();
    body["corr"] = corr.clone().into();
    let topic = format!("chat/rooms/{room}/send/{}", c.user);
    c.publish_json(&topic, &body).await?;
    let m = c
        .recv_until(&format!("reply to {body}"), TIMEOUT, |m| {
            m.topic == reply && m.json()["corr"] == corr.as_str()
        })
        .await?;
    Ok(m.json())
}

/// The seq of an accepted send, or an error with the reply.
async fn ok_seq(c: &mut Client, room: &str, body: Value) -> Result<u64> {
    let r = act(c, room, body.clone()).await?;
    r["result"]["seq"]
        .as_u64()
        .filter(|_| r["ok"] == true)
        .ok_or_else(|| anyhow!("{} sent {body} to {room}: refused: {r}", c.user))
}

/// The error code of a refused send, or an error if it was accepted.
async fn refused(c: &mut Client, room: &str, body: Value) -> Result<String> {
    let r = act(c, room, body.clone()).await?;
    if r["ok"] != false {
        return Err(anyhow!("{} sent {body} to {room}: accepted: {r}", c.user));
    }
    Ok(r["error"]["code"].as_str().unwrap_or_default().to_owned())
}

fn edit(msg_id: &str, target: u64, body: &str) -> Value {
    json!({"msg_id": msg_id, "type": "edit", "target": target, "body": body})
}

fn delete(msg_id: &str, target: u64) -> Value {
    json!({"msg_id": msg_id, "type": "delete", "target": target})
}

fn react(msg_id: &str, target: u64) -> Value {
    json!({"msg_id": msg_id, "type": "reaction", "target": target, "emoji": "+1"})
}

/// The event at `seq` in `room`'s history, as `c` reads it.
async fn event_at(c: &mut Client, room: &str, seq: u64) -> Result<Value> {
    let h = c
        .rpc(
            "history",
            json!({"room": room, "after": seq - 1, "limit": 1}),
        )
        .await?;
    h["events"]
        .get(0)
        .filter(|e| e["seq"] == seq)
        .cloned()
        .ok_or_else(|| anyhow!("no event {seq} in {room}: {h}"))
}

/// Bob, a member, may neither edit nor delete Alice's message; his tries
/// store and fan out nothing. The author edits and deletes her own, an owner
/// and an admin delete a member's, anyone reacts. A deleted message reads as
/// a tombstone without its body, and is gone for a second delete, an edit
/// and a reaction; a retried delete (same msg_id) gets its original seq.
#[tokio::test(flavor = "multi_thread")]
async fn only_the_author_edits_and_moderators_delete() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    let mut carol = srv.user_v4("carol", "carol-1").await?;
    group_room(&mut alice, "r1", &mut [&mut bob, &mut carol]).await?;
    carol.subscribe_ok("chat/rooms/r1/events").await?;
    let a1 = ok_seq(
        &mut alice,
        "r1",
        json!({"msg_id": "a1", "body": "alice's words"}),
    )
    .await?;
    let b1 = ok_seq(
        &mut bob,
        "r1",
        json!({"msg_id": "b1", "body": "bob's secret", "meta": {"k": "v"}}),
    )
    .await?;
    carol.recv_msg("r1", "bob", "b1").await?;

    // Bob edits and deletes Alice's message: forbidden, on the reply topic
    assert_eq!(
        refused(&mut bob, "r1", edit("x1", a1, "alice is wrong")).await?,
        "forbidden"
    );
    assert_eq!(
        refused(&mut bob, "r1", delete("x2", a1)).await?,
        "forbidden"
    );
    // ... and, without a reply topic, on his inbox
    bob.publish_json("chat/rooms/r1/send/bob", &delete("x3", a1))
        .await?;
    let err = bob
        .recv_inbox("error for x3", |v| v["msg_id"] == "x3")
        .await?;
    assert_eq!(
        (&err["type"], &err["code"]),
        (&json!("error"), &json!("forbidden")),
        "{err}"
    );
    carol
        .expect_none("an event of bob's refused sends", QUIET, |m| {
            m.topic == "chat/rooms/r1/events"
                && m.json()["msg_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with('x'))
        })
        .await?;
    assert_eq!(
        event_at(&mut carol, "r1", a1).await?["body"],
        "alice's words",
        "untouched"
    );
    // the innocent member is still served, and nothing was stored in between
    let a2 = ok_seq(
        &mut alice,
        "r1",
        json!({"msg_id": "a2", "body": "still here"}),
    )
    .await?;
    assert_eq!(a2, b1 + 1, "the refused sends stored nothing");
    assert_eq!(seq_of(&carol.recv_msg("r1", "alice", "a2").await?), a2);

    // the owner deletes a member's message: stored and fanned out
    let d1 = ok_seq(&mut alice, "r1", delete("d1", b1)).await?;
    let ev = carol.recv_msg("r1", "alice", "d1").await?;
    assert_eq!(
        (&ev["type"], &ev["target"]),
        (&json!("delete"), &json!(b1)),
        "{ev}"
    );
    let tomb = event_at(&mut carol, "r1", b1).await?;
    assert_eq!(tomb["deleted"], true, "a tombstone: {tomb}");
    assert_eq!(
        (&tomb["from"], &tomb["msg_id"], &tomb["type"]),
        (&json!("bob"), &json!("b1"), &json!("message"))
    );
    assert!(
        tomb.get("body").is_none() && tomb.get("meta").is_none(),
        "no body or meta: {tomb}"
    );
    let all = carol.rpc("history", json!({"room": "r1"})).await?;
    assert!(
        !all.to_string().contains("bob's secret"),
        "history serves no deleted body: {all}"
    );
    // gone: a second delete, an edit by its author, a reaction
    assert_eq!(
        refused(&mut alice, "r1", delete("d2", b1)).await?,
        "not_found"
    );
    assert_eq!(
        refused(&mut bob, "r1", delete("d3", b1)).await?,
        "not_found"
    );
    assert_eq!(
        refused(&mut bob, "r1", edit("e1", b1, "revived")).await?,
        "not_found"
    );
    assert_eq!(
        refused(&mut carol, "r1", react("r1", b1)).await?,
        "not_found"
    );
    // a retry of the delete itself is answered with its seq, not refused
    assert_eq!(
        ok_seq(&mut alice, "r1", delete("d1", b1)).await?,
        d1,
        "idempotent retry"
    );

    // the author edits and deletes her own; members react; an admin deletes a member's
    let e = ok_seq(&mut alice, "r1", edit("a-edit", a1, "alice's better words")).await?;
    let ev = carol.recv_msg("r1", "alice", "a-edit").await?;
    assert_eq!(
        (seq_of(&ev), &ev["target"], &ev["body"]),
        (e, &json!(a1), &json!("alice's better words"))
    );
    ok_seq(&mut bob, "r1", react("b-react", a1)).await?;
    carol.recv_msg("r1", "bob", "b-react").await?;
    let b2 = ok_seq(&mut bob, "r1", json!({"msg_id": "b2", "body": "oops"})).await?;
    ok_seq(&mut bob, "r1", delete("b2-del", b2)).await?;
    let b3 = ok_seq(&mut bob, "r1", json!({"msg_id": "b3", "body": "spam"})).await?;
    assert_eq!(
        refused(&mut carol, "r1", delete("c-del", b3)).await?,
        "forbidden",
        "a member"
    );
    alice
        .rpc(
            "rooms.role",
            json!({"room": "r1", "user": "carol", "role": "admin"}),
        )
        .await?;
    ok_seq(&mut carol, "r1", delete("c-del2", b3)).await?;
    assert_eq!(event_at(&mut alice, "r1", b3).await?["deleted"], true);
    // an admin still may not edit someone else's message
    assert_eq!(
        refused(&mut carol, "r1", edit("c-edit", a1, "mine now")).await?,
        "forbidden"
    );
    carol.recv_msg("r1", "bob", "b2-del").await?;
    Ok(())
}

/// The target of an edit, delete or reaction must be a live message of the
/// room: a membership event, seq 0, a seq beyond the head (one that exists
/// only in another room), an edit and a deleted message are all `not_found`.
#[tokio::test(flavor = "multi_thread")]
async fn targets_must_be_live_messages_of_the_room() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v5("bob", "bob-1").await?;
    group_room(&mut alice, "r1", &mut [&mut bob]).await?;
    group_room(&mut alice, "busy", &mut []).await?;
    alice.subscribe_ok("chat/rooms/busy/events").await?;
    for i in 0..10 {
        alice.send("busy", &format!("busy-{i}"), "filler").await?;
    }
    let busy_head = seq_of(&alice.recv_msg("busy", "alice", "busy-9").await?);
    let join_seq = 1; // alice's own join, the room's first event
    let m = ok_seq(&mut alice, "r1", json!({"msg_id": "m", "body": "hello"})).await?;
    let gone = ok_seq(&mut alice, "r1", json!({"msg_id": "gone", "body": "bye"})).await?;
    ok_seq(&mut alice, "r1", delete("gone-del", gone)).await?;
    let edited = ok_seq(&mut alice, "r1", edit("m-edit", m, "hello!")).await?;
    let head = alice.head("r1").await?;
    assert!(
        busy_head > head,
        "busy has seqs r1 has not: {busy_head} vs {head}"
    );
    bob.subscribe_ok("chat/rooms/r1/events").await?;

    let mut n = 0;
    for target in [join_seq, 0, head + 1, busy_head, gone, edited] {
        for body in [
            edit(&format!("t-e{n}"), target, "x"),
            delete(&format!("t-d{n}"), target),
            react(&format!("t-r{n}"), target),
        ] {
            let code = refused(&mut alice, "r1", body.clone()).await?;
            assert_eq!(code, "not_found", "{body} at head {head}");
            n += 1;
        }
    }
    // nothing was stored or fanned out; bob is still served
    bob.expect_none("an event of a refused send", QUIET, |m| {
        m.topic == "chat/rooms/r1/events"
            && m.json()["msg_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("t-"))
    })
    .await?;
    assert_eq!(alice.head("r1").await?, head, "nothing stored");
    bob.send("r1", "still", "here").await?;
    assert_eq!(seq_of(&bob.recv_msg("r1", "bob", "still").await?), head + 1);
    Ok(())
}

/// A direct room has no moderators: the other member may not delete one's message.
#[tokio::test(flavor = "multi_thread")]
async fn direct_room_partner_cannot_delete() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    let r = alice
        .rpc(
            "rooms.create",
            json!({"kind": "direct", "members": ["bob"]}),
        )
        .await?;
    let room = r["room"]["id"]
        .as_str()
        .ok_or_else(|| anyhow!("no room id: {r}"))?
        .to_owned();
    let a1 = ok_seq(
        &mut alice,
        &room,
        json!({"msg_id": "a1", "body": "between us"}),
    )
    .await?;
    assert_eq!(
        refused(&mut bob, &room, delete("b-del", a1)).await?,
        "forbidden"
    );
    assert_eq!(
        refused(&mut bob, &room, edit("b-edit", a1, "x")).await?,
        "forbidden"
    );
    ok_seq(&mut bob, &room, react("b-react", a1)).await?;
    ok_seq(&mut alice, &room, delete("a-del", a1)).await?;
    Ok(())
}

/// Limits are configuration: a server with a small body, meta, payload and
/// history limit refuses what exceeds them (`too_large`, `bad_request`) and
/// accepts what does not; a bad value stops the server naming the key.
#[tokio::test(flavor = "multi_thread")]
async fn limits_are_configuration() -> Result<()> {
    let srv = TestServer::builder()
        .toml(
            "[bridge]\nbody_max_bytes = 100\nmeta_max_bytes = 40\npayload_max_bytes = 2048\n\
             history_limit_default = 3\nhistory_limit_max = 5\n",
        )
        .start()
        .await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    group_room(&mut alice, "r1", &mut [&mut bob]).await?;
    bob.subscribe_ok("chat/rooms/r1/events").await?;
    let long = "x".repeat(101);
    let r = act(&mut alice, "r1", json!({"msg_id": "long", "body": long})).await?;
    assert_eq!(r["error"]["code"], "too_large", "{r}");
    assert_eq!(
        refused(
            &mut alice,
            "r1",
            json!({"msg_id": "meta", "body": "m", "meta": {"k": "y".repeat(40)}})
        )
        .await?,
        "too_large"
    );
    // an oversize payload is not parsed, so its reply fields are unknown:
    // the error goes to the inbox
    let padded = json!({"msg_id": "pad", "body": "p", "pad": "z".repeat(2100)});
    alice
        .publish_json("chat/rooms/r1/send/alice", &padded)
        .await?;
    let err = alice
        .recv_inbox("too_large for the padded payload", |v| {
            v["code"] == "too_large"
        })
        .await?;
    assert!(
        err["message"].as_str().is_some_and(|m| m.contains("2048")),
        "{err}"
    );
    let at_limit = "x".repeat(100);
    let s = ok_seq(
        &mut alice,
        "r1",
        json!({"msg_id": "fits", "body": at_limit, "meta": {"k": "v"}}),
    )
    .await?;
    assert_eq!(bob.recv_msg("r1", "alice", "fits").await?["body"], at_limit);
    for i in 0..4 {
        bob.send("r1", &format!("b{i}"), "more").await?;
        bob.recv_msg("r1", "bob", &format!("b{i}")).await?;
    }
    let h = bob.rpc("history", json!({"room": "r1"})).await?;
    assert_eq!(
        h["events"].as_array().map(Vec::len),
        Some(3),
        "the default page: {h}"
    );
    assert_eq!(
        bob.rpc_err("history", json!({"room": "r1", "limit": 6}))
            .await?,
        "bad_request"
    );
    let h = bob
        .rpc("history", json!({"room": "r1", "limit": 5}))
        .await?;
    assert_eq!(h["events"].as_array().map(Vec::len), Some(5), "{h}");
    assert_eq!(seq_of(&h["events"][0]), s, "the latest five: {h}");

    // a bad value: the server does not start, and says which key
    let bad = TestServer::builder()
        .toml("[bridge]\nbody_max_bytes = 0\n")
        .start()
        .await;
    let err = bad.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(
        err.contains("bridge.body_max_bytes"),
        "refused naming the key: {err}"
    );
    Ok(())
}
