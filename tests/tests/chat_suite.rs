//! End-to-end chat flows against a spawned `chatmq` (broker + bridge + store),
//! written once for any store: `e2e_chat.rs` runs them on the embedded store,
//! `cql_store.rs` on the ScyllaDB store against a CQL node (see [`chat_suite!`]).

use anyhow::Result;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use tests::{group_room, seq_of, Store};

fn seqs(events: &Value) -> Vec<u64> {
    events
        .as_array()
        .unwrap_or_else(|| panic!("events is not an array: {events}"))
        .iter()
        .map(seq_of)
        .collect()
}

pub(crate) async fn group_room_send_and_echo(store: Store) -> Result<()> {
    let Some(builder) = store.builder()? else {
        return Ok(());
    };
    let srv = builder.start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;

    let created = alice
        .rpc(
            "rooms.create",
            json!({"room": "r1", "kind": "group", "members": ["bob"], "title": "Room 1"}),
        )
        .await?;
    assert_eq!(
        created["room"]["id"], "r1",
        "rooms.create result: {created}"
    );
    assert_eq!(
        created["room"]["kind"], "group",
        "rooms.create result: {created}"
    );

    // bob is invited, not yet a member: he may not subscribe to the events.
    alice.subscribe_ok("chat/rooms/r1/events").await?;
    let joined = bob.rpc("rooms.join", json!({"room": "r1"})).await?;
    assert!(
        joined["seq"].as_u64().is_some(),
        "rooms.join result has a seq: {joined}"
    );
    bob.subscribe_ok("chat/rooms/r1/events").await?;

    let head0 = alice.head("r1").await?;
    assert!(
        head0 >= joined["seq"].as_u64().unwrap_or(0),
        "head {head0} >= join seq {joined}"
    );

    for i in 1..=3u64 {
        let id = format!("m{i}");
        alice.send("r1", &id, &format!("hello {i}")).await?;
        let ea = alice.recv_msg("r1", "alice", &id).await?;
        let eb = bob.recv_msg("r1", "alice", &id).await?;
        assert_eq!(seq_of(&ea), head0 + i, "alice's echo of {id}: {ea}");
        assert_eq!(ea, eb, "alice and bob see the same event");
        assert_eq!(ea["room"], "r1");
        assert_eq!(ea["from"], "alice");
        assert_eq!(ea["type"], "message");
        assert_eq!(ea["body"], format!("hello {i}"));
        assert!(
            ea["ts"].as_u64().unwrap_or(0) > 1_600_000_000_000,
            "ts in ms: {ea}"
        );
    }
    // bob answers
    bob.send("r1", "b1", "hi alice").await?;
    let e = alice.recv_msg("r1", "bob", "b1").await?;
    assert_eq!(seq_of(&e), head0 + 4);

    // rooms.members
    let members = alice.rpc("rooms.members", json!({"room": "r1"})).await?;
    let list = members["members"].as_array().cloned().unwrap_or_default();
    let users: BTreeSet<String> = list
        .iter()
        .filter_map(|m| m["user"].as_str().map(str::to_owned))
        .collect();
    assert!(
        users.contains("alice") && users.contains("bob"),
        "members: {members}"
    );
    for m in &list {
        assert!(
            m.get("role").is_some() && m.get("state").is_some(),
            "member entry has role/state: {m}"
        );
    }

    // rooms.list
    let rooms = bob.rpc("rooms.list", json!({})).await?;
    let r1 = rooms["rooms"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["room"] == "r1"))
        .cloned()
        .unwrap_or_else(|| panic!("r1 not in bob's rooms.list: {rooms}"));
    assert_eq!(r1["kind"], "group", "{r1}");
    assert_eq!(r1["head"].as_u64(), Some(head0 + 4), "{r1}");
    assert!(
        r1.get("unread").is_some() && r1.get("read").is_some(),
        "{r1}"
    );
    assert_eq!(
        r1["last"]["seq"].as_u64(),
        Some(head0 + 4),
        "last event in rooms.list: {r1}"
    );

    // read marker moves unread
    bob.rpc("read", json!({"room": "r1", "seq": head0 + 4}))
        .await?;
    let rooms = bob.rpc("rooms.list", json!({})).await?;
    let r1 = rooms["rooms"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["room"] == "r1"))
        .cloned();
    let r1 = r1.unwrap_or_default();
    assert_eq!(r1["read"].as_u64(), Some(head0 + 4), "{r1}");
    assert_eq!(r1["unread"].as_u64(), Some(0), "{r1}");
    Ok(())
}

pub(crate) async fn history_paging_and_sync(store: Store) -> Result<()> {
    let Some(builder) = store.builder()? else {
        return Ok(());
    };
    let srv = builder.start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    group_room(&mut alice, "h1", &mut [&mut bob]).await?;
    alice.subscribe_ok("chat/rooms/h1/events").await?;
    let head0 = alice.head("h1").await?;
    for i in 1..=30 {
        alice
            .send("h1", &format!("m{i}"), &format!("body {i}"))
            .await?;
    }
    alice.recv_msg("h1", "alice", "m30").await?;
    let head = head0 + 30;

    // latest
    let r = alice
        .rpc("history", json!({"room": "h1", "limit": 10}))
        .await?;
    assert_eq!(
        seqs(&r["events"]),
        ((head - 9)..=head).collect::<Vec<_>>(),
        "latest page: {r}"
    );
    assert_eq!(r["head"].as_u64(), Some(head));
    assert_eq!(r["has_more"], true, "{r}");
    // before
    let r = alice
        .rpc(
            "history",
            json!({"room": "h1", "before": head - 9, "limit": 10}),
        )
        .await?;
    assert_eq!(
        seqs(&r["events"]),
        ((head - 19)..=(head - 10)).collect::<Vec<_>>(),
        "before page: {r}"
    );
    assert_eq!(r["has_more"], true, "{r}");
    // before the start
    let r = alice
        .rpc("history", json!({"room": "h1", "before": 3, "limit": 10}))
        .await?;
    assert_eq!(seqs(&r["events"]), vec![1, 2], "before 3: {r}");
    assert_eq!(r["has_more"], false, "{r}");
    // after
    let r = alice
        .rpc(
            "history",
            json!({"room": "h1", "after": head0, "limit": 20}),
        )
        .await?;
    assert_eq!(
        seqs(&r["events"]),
        ((head0 + 1)..=(head0 + 20)).collect::<Vec<_>>(),
        "after page: {r}"
    );
    assert_eq!(r["has_more"], true, "{r}");
    assert_eq!(r["events"][0]["msg_id"], "m1");
    let r = alice
        .rpc(
            "history",
            json!({"room": "h1", "after": head0 + 20, "limit": 20}),
        )
        .await?;
    assert_eq!(
        seqs(&r["events"]),
        ((head0 + 21)..=head).collect::<Vec<_>>(),
        "last after page: {r}"
    );
    assert_eq!(r["has_more"], false, "{r}");
    // full history is 1..=head
    let r = alice
        .rpc("history", json!({"room": "h1", "after": 0, "limit": 1000}))
        .await?;
    assert_eq!(
        seqs(&r["events"]),
        (1..=head).collect::<Vec<_>>(),
        "whole history: {r}"
    );

    // sync with cursors
    let r = bob
        .rpc(
            "sync",
            json!({"rooms": {"h1": head - 5}, "limit_per_room": 100}),
        )
        .await?;
    let h1 = &r["rooms"]["h1"];
    assert_eq!(
        seqs(&h1["events"]),
        ((head - 4)..=head).collect::<Vec<_>>(),
        "sync h1: {r}"
    );
    assert_eq!(h1["head"].as_u64(), Some(head), "{r}");
    assert_eq!(h1["has_more"], false, "{r}");
    assert!(h1["unread"].as_u64().is_some(), "sync unread: {r}");
    let r = bob
        .rpc("sync", json!({"rooms": {"h1": 0}, "limit_per_room": 5}))
        .await?;
    let h1 = &r["rooms"]["h1"];
    assert_eq!(seqs(&h1["events"]).len(), 5, "sync limited: {r}");
    assert_eq!(
        seqs(&h1["events"])[0],
        1,
        "sync limited starts after cursor: {r}"
    );
    assert_eq!(h1["has_more"], true, "{r}");
    let r = bob.rpc("sync", json!({"rooms": {"h1": head}})).await?;
    assert_eq!(
        r["rooms"]["h1"]["events"].as_array().map(|a| a.len()),
        Some(0),
        "up to date: {r}"
    );
    // a room joined but not named in the request is reported
    // a room joined but not named in the request is reported (under `rooms`
    // or in a `joined` list)
    let r = bob.rpc("sync", json!({"rooms": {}})).await?;
    let listed = r["rooms"].get("h1").is_some()
        || r["joined"]
            .as_array()
            .is_some_and(|a| a.iter().any(|j| j["room"] == "h1"));
    assert!(listed, "sync names joined rooms the request did not: {r}");
    Ok(())
}

pub(crate) async fn direct_room_has_one_id(store: Store) -> Result<()> {
    let Some(builder) = store.builder()? else {
        return Ok(());
    };
    let srv = builder.start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    let a = alice
        .rpc(
            "rooms.create",
            json!({"kind": "direct", "members": ["bob"]}),
        )
        .await?;
    let b = bob
        .rpc(
            "rooms.create",
            json!({"kind": "direct", "members": ["alice"]}),
        )
        .await?;
    let id = a["room"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no room id: {a}"))
        .to_owned();
    assert_eq!(
        a["room"]["id"], b["room"]["id"],
        "direct room by alice {a} vs by bob {b}"
    );
    assert_eq!(a["room"]["kind"], "direct");
    // both can talk without joining
    alice
        .subscribe_ok(&format!("chat/rooms/{id}/events"))
        .await?;
    bob.subscribe_ok(&format!("chat/rooms/{id}/events")).await?;
    alice.send(&id, "d1", "psst").await?;
    let e = bob.recv_msg(&id, "alice", "d1").await?;
    assert_eq!(e["body"], "psst");
    Ok(())
}

pub(crate) async fn retried_send_is_idempotent(store: Store) -> Result<()> {
    let Some(builder) = store.builder()? else {
        return Ok(());
    };
    let srv = builder.start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    group_room(&mut alice, "i1", &mut [&mut bob]).await?;
    alice.subscribe_ok("chat/rooms/i1/events").await?;
    alice.send("i1", "same-id", "once").await?;
    let first = alice.recv_msg("i1", "alice", "same-id").await?;
    let head = alice.head("i1").await?;
    assert_eq!(head, seq_of(&first));
    // retry: the original seq comes back (echo or reply), nothing new is stored
    alice.send("i1", "same-id", "once").await?;
    if let Ok(again) = alice.recv_msg("i1", "alice", "same-id").await {
        assert_eq!(
            seq_of(&again),
            seq_of(&first),
            "retry echo has the original seq: {again} vs {first}"
        );
    }
    alice.send("i1", "after", "next").await?;
    let next = alice.recv_msg("i1", "alice", "after").await?;
    assert_eq!(seq_of(&next), head + 1, "retry did not move head: {next}");
    let h = alice
        .rpc("history", json!({"room": "i1", "after": 0, "limit": 1000}))
        .await?;
    let ids: Vec<&Value> = h["events"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["msg_id"] == "same-id").collect())
        .unwrap_or_default();
    assert_eq!(ids.len(), 1, "msg same-id stored once: {h}");
    // a different sender may reuse the msg_id (unique per room and sender)
    bob.subscribe_ok("chat/rooms/i1/events").await?;
    bob.send("i1", "same-id", "bob's").await?;
    let e = bob.recv_msg("i1", "bob", "same-id").await?;
    assert_eq!(seq_of(&e), head + 2, "{e}");
    Ok(())
}

pub(crate) async fn concurrent_senders_get_gap_free_seqs(store: Store) -> Result<()> {
    let Some(builder) = store.builder()? else {
        return Ok(());
    };
    // The default send rate limit (burst 30 per user and room) would refuse
    // part of this burst; raise it, this test is about sequencing.
    let srv = builder
        .toml("[bridge]\nsends_per_sec = 10000.0\nsends_burst = 10000.0")
        .start()
        .await?;
    let users = ["alice", "bob", "carol", "dave"];
    let mut clients = Vec::new();
    for u in users {
        clients.push(srv.user_v4(u, &format!("{u}-c")).await?);
    }
    let mut observer = srv.user_v4("eve", "eve-obs").await?;
    {
        let (first, rest) = clients.split_at_mut(1);
        let mut others: Vec<&mut tests::Client> = rest.iter_mut().collect();
        others.push(&mut observer);
        group_room(&mut first[0], "c1", &mut others).await?;
    }
    observer.subscribe_ok("chat/rooms/c1/events").await?;
    let head0 = observer.head("c1").await?;

    let mut tasks = Vec::new();
    for c in clients {
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                c.send("c1", &format!("{}-{i}", c.user), "x").await?;
            }
            anyhow::Ok(c)
        }));
    }
    let mut clients: Vec<tests::Client> = Vec::new();
    for t in tasks {
        clients.push(t.await??);
    }
    let mut got = Vec::new();
    while got.len() < 200 {
        match observer.recv_event("c1", |e| e["type"] == "message").await {
            Ok(e) => got.push(seq_of(&e)),
            Err(err) => {
                // Diagnose: what was stored, and what did the senders hear?
                let head = observer.head("c1").await;
                let mut errors = Vec::new();
                for c in clients.iter_mut() {
                    let inbox = c.inbox_topic();
                    while let Ok(m) = c
                        .recv_until("inbox", std::time::Duration::from_millis(200), |m| {
                            m.topic == inbox
                        })
                        .await
                    {
                        errors.push(m.json());
                    }
                }
                errors.truncate(5);
                panic!(
                    "only {} of 200 message events arrived live: {err:#}\nhead now {head:?} (was {head0}); sender inbox: {errors:?}",
                    got.len()
                );
            }
        }
    }
    let set: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(set.len(), 200, "no repeated seq among live events");
    assert_eq!(
        set,
        ((head0 + 1)..=(head0 + 200)).collect::<BTreeSet<u64>>(),
        "seqs gap-free after head {head0}"
    );
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(got, sorted, "live events arrive in seq order");
    let h = observer
        .rpc("history", json!({"room": "c1", "after": 0, "limit": 1000}))
        .await?;
    assert_eq!(
        seqs(&h["events"]),
        (1..=(head0 + 200)).collect::<Vec<_>>(),
        "stored history gap-free"
    );
    // per-sender order preserved
    for u in users {
        let mine: Vec<String> = h["events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["from"] == u && e["type"] == "message")
                    .filter_map(|e| e["msg_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let want: Vec<String> = (0..50).map(|i| format!("{u}-{i}")).collect();
        assert_eq!(mine, want, "{u}'s messages stored once each, in order");
    }
    drop(clients);
    Ok(())
}

pub(crate) async fn restart_after_kill_keeps_sequence(store: Store) -> Result<()> {
    let Some(builder) = store.builder()? else {
        return Ok(());
    };
    let mut srv = builder.start().await?;
    let echoed;
    let head;
    {
        let mut alice = srv.user_v4("alice", "alice-1").await?;
        let mut bob = srv.user_v4("bob", "bob-1").await?;
        group_room(&mut alice, "k1", &mut [&mut bob]).await?;
        alice.subscribe_ok("chat/rooms/k1/events").await?;
        let mut e = Vec::new();
        for i in 0..20 {
            alice.send("k1", &format!("m{i}"), &format!("b{i}")).await?;
        }
        for i in 0..20 {
            e.push(alice.recv_msg("k1", "alice", &format!("m{i}")).await?);
        }
        echoed = e;
        head = seq_of(echoed.last().expect("20 events"));
    }
    srv.kill();
    srv.restart().await?;
    let mut alice = srv.user_v4("alice", "alice-2").await?;
    alice.subscribe_ok("chat/rooms/k1/events").await?;
    let h = alice
        .rpc("history", json!({"room": "k1", "after": 0, "limit": 1000}))
        .await?;
    assert_eq!(h["head"].as_u64(), Some(head), "head after restart: {h}");
    let stored = h["events"].as_array().cloned().unwrap_or_default();
    for e in &echoed {
        assert!(
            stored.contains(e),
            "echoed event {e} is in history after kill -9"
        );
    }
    alice.send("k1", "after-restart", "again").await?;
    let e = alice.recv_msg("k1", "alice", "after-restart").await?;
    assert_eq!(
        seq_of(&e),
        head + 1,
        "first send after restart continues the sequence: {e}"
    );
    // retry of a pre-crash msg_id is still recognised
    alice.send("k1", "m0", "b0").await?;
    alice.send("k1", "after-2", "x").await?;
    let e = alice.recv_msg("k1", "alice", "after-2").await?;
    assert_eq!(
        seq_of(&e),
        head + 2,
        "retry of pre-crash msg_id stored nothing new: {e}"
    );
    Ok(())
}

pub(crate) async fn mqtt5_response_topic_and_correlation(store: Store) -> Result<()> {
    let Some(builder) = store.builder()? else {
        return Ok(());
    };
    let srv = builder.start().await?;
    let mut alice = srv.user_v5("alice", "alice-v5").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    group_room(&mut alice, "v1", &mut [&mut bob]).await?;
    let m = alice
        .rpc_v5("history", serde_json::to_vec(&json!({"room": "v1"}))?)
        .await?;
    let v = m.json();
    assert_eq!(v["ok"], true, "v5 history reply: {v}");
    assert!(v["result"]["events"].is_array(), "{v}");
    // a v5 sender and a v4 reader
    bob.subscribe_ok("chat/rooms/v1/events").await?;
    alice.send("v1", "x5", "from v5").await?;
    let e = bob.recv_msg("v1", "alice", "x5").await?;
    assert_eq!(e["body"], "from v5");
    Ok(())
}

/// A history page bigger than any MQTT packet limit is cut short with
/// `has_more` (newest kept for `latest`), never sent whole: the bridge stays
/// connected and paging on returns the rest without a gap.
pub(crate) async fn history_larger_than_a_reply_is_cut_and_pages_on(store: Store) -> Result<()> {
    let Some(builder) = store.builder()? else {
        return Ok(());
    };
    let srv = builder
        .toml("[bridge]\nsends_per_sec = 100000.0\nsends_burst = 100000.0\n")
        .broker_toml("limits = { publishes_per_sec = 5000 }")
        .start()
        .await?;
    let mut alice = srv.user_v4("alice", "alice-big").await?;
    alice
        .rpc("rooms.create", json!({"room": "big1", "kind": "group"}))
        .await?;
    alice.subscribe_ok("chat/rooms/big1/events").await?;
    let body = "y".repeat(2000);
    let n = 400; // ~900 KiB of events: more than one reply may carry
    for i in 0..n {
        alice.send("big1", &format!("b{i}"), &body).await?;
    }
    alice
        .recv_msg("big1", "alice", &format!("b{}", n - 1))
        .await?;
    let first = alice
        .rpc("history", json!({"room": "big1", "limit": 1000}))
        .await?;
    let got = seqs(&first["events"]);
    let head = first["head"].as_u64().unwrap_or(0);
    assert!(got.len() < n, "the page was cut: {} events", got.len());
    assert!(got.len() > 100, "but still large: {} events", got.len());
    assert_eq!(first["has_more"], json!(true));
    assert_eq!(got.last().copied(), Some(head), "latest keeps the newest");
    let mut all: Vec<u64> = got.clone();
    let mut before = got[0];
    loop {
        let page = alice
            .rpc(
                "history",
                json!({"room": "big1", "before": before, "limit": 1000}),
            )
            .await?;
        let s = seqs(&page["events"]);
        let Some(first_seq) = s.first().copied() else {
            break;
        };
        all.splice(0..0, s);
        before = first_seq;
        if page["has_more"] != json!(true) {
            break;
        }
    }
    let want: Vec<u64> = (1..=head).collect();
    assert_eq!(all, want, "paging on returns everything, in order, once");
    Ok(())
}

/// The unread count of a room is others' messages after one's read
/// marker and after one's own last message there: membership events,
/// edits, reactions and deletes do not count, nor does one's own send. The
/// same count in `rooms.list` and `sync`.
pub(crate) async fn unread_counts_only_others_messages(store: Store) -> Result<()> {
    let Some(builder) = store.builder()? else {
        return Ok(());
    };
    let srv = builder.start().await?;
    let mut alice = srv.user_v4("alice", "alice-unread").await?;
    let mut bob = srv.user_v4("bob", "bob-unread").await?;
    alice.subscribe_own().await?;
    bob.subscribe_own().await?;
    tests::group_room(&mut alice, "u1", &mut [&mut bob]).await?;
    alice.subscribe_ok("chat/rooms/u1/events").await?;
    for (who, id) in [("bob", "b1"), ("bob", "b2"), ("bob", "b3")] {
        bob.send("u1", id, "to alice").await?;
        alice.recv_msg("u1", who, id).await?;
    }
    let unread = |v: &Value| {
        v["rooms"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["room"] == "u1"))
            .map(|r| r["unread"].clone())
            .unwrap_or(Value::Null)
    };
    let list = alice.rpc("rooms.list", json!({})).await?;
    assert_eq!(
        unread(&list),
        json!(3),
        "bob's 3 messages, not the membership events: {list}"
    );
    let b1 = alice.head("u1").await? - 2;
    // a reaction and an edit are not unread messages
    bob.publish_json(
        "chat/rooms/u1/send/bob",
        &json!({"msg_id": "e1", "type": "edit", "target": b1, "body": "edited"}),
    )
    .await?;
    alice.recv_msg("u1", "bob", "e1").await?;
    let list = alice.rpc("rooms.list", json!({})).await?;
    assert_eq!(unread(&list), json!(3), "an edit is not unread: {list}");
    // alice's own send marks the room read up to it
    alice.send("u1", "a1", "answer").await?;
    alice.recv_msg("u1", "alice", "a1").await?;
    let list = alice.rpc("rooms.list", json!({})).await?;
    assert_eq!(unread(&list), json!(0), "one's own send: {list}");
    bob.send("u1", "b4", "again").await?;
    bob.send("u1", "b5", "and again").await?;
    alice.recv_msg("u1", "bob", "b5").await?;
    let list = alice.rpc("rooms.list", json!({})).await?;
    assert_eq!(unread(&list), json!(2), "{list}");
    let sync = alice.rpc("sync", json!({"rooms": {"u1": 0}})).await?;
    assert_eq!(
        sync["rooms"]["u1"]["unread"],
        json!(2),
        "sync counts the same: {sync}"
    );
    // bob: only alice's message came after his own, and he sent since
    let list = bob.rpc("rooms.list", json!({})).await?;
    assert_eq!(unread(&list), json!(0), "bob's own sends came last: {list}");
    Ok(())
}

/// `read` and `delivered` move markers forward only, show in
/// `rooms.members`, and reach the room's other members on
/// `chat/rooms/{room}/receipts`.
pub(crate) async fn receipts_and_delivered_reach_members(store: Store) -> Result<()> {
    let Some(builder) = store.builder()? else {
        return Ok(());
    };
    let srv = builder.start().await?;
    let mut alice = srv.user_v4("alice", "alice-rcpt").await?;
    let mut bob = srv.user_v4("bob", "bob-rcpt").await?;
    alice.subscribe_own().await?;
    bob.subscribe_own().await?;
    tests::group_room(&mut alice, "rc1", &mut [&mut bob]).await?;
    alice.subscribe_ok("chat/rooms/rc1/receipts").await?;
    alice.subscribe_ok("chat/rooms/rc1/events").await?;
    alice.send("rc1", "m1", "one").await?;
    alice.send("rc1", "m2", "two").await?;
    let m2 = tests::seq_of(&alice.recv_msg("rc1", "alice", "m2").await?);
    let d = bob
        .rpc("delivered", json!({"room": "rc1", "seq": m2}))
        .await?;
    assert_eq!(
        (d["delivered"].as_u64(), d["moved"].as_bool()),
        (Some(m2), Some(true)),
        "{d}"
    );
    let r = alice
        .recv_until("bob's delivered receipt", tests::TIMEOUT, |m| {
            m.topic == "chat/rooms/rc1/receipts" && m.json()["user"] == "bob"
        })
        .await?
        .json();
    assert_eq!(
        (r["delivered"].as_u64(), r["read"].as_u64()),
        (Some(m2), Some(0)),
        "{r}"
    );
    let rd = bob
        .rpc("read", json!({"room": "rc1", "seq": m2 - 1}))
        .await?;
    assert_eq!(rd["read"].as_u64(), Some(m2 - 1), "{rd}");
    let r = alice
        .recv_until("bob's read receipt", tests::TIMEOUT, |m| {
            m.topic == "chat/rooms/rc1/receipts" && m.json()["read"] == json!(m2 - 1)
        })
        .await?
        .json();
    assert_eq!(r["user"], "bob");
    // markers never move back; a seq past the head is clamped to it
    let back = bob.rpc("read", json!({"room": "rc1", "seq": 1})).await?;
    assert_eq!(
        (back["read"].as_u64(), back["moved"].as_bool()),
        (Some(m2 - 1), Some(false)),
        "{back}"
    );
    alice
        .expect_none(
            "a receipt for a marker that did not move",
            Duration::from_millis(500),
            |m| m.topic == "chat/rooms/rc1/receipts" && m.json()["read"] == json!(1),
        )
        .await?;
    let far = bob
        .rpc("read", json!({"room": "rc1", "seq": m2 + 1000}))
        .await?;
    assert_eq!(far["read"].as_u64(), Some(m2), "clamped to the head: {far}");
    let members = alice.rpc("rooms.members", json!({"room": "rc1"})).await?;
    let bob_entry = members["members"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["user"] == "bob"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (bob_entry["read"].as_u64(), bob_entry["delivered"].as_u64()),
        (Some(m2), Some(m2)),
        "{members}"
    );
    // a non-member may not move markers
    let mut carol = srv.user_v4("carol", "carol-rcpt").await?;
    carol.subscribe_own().await?;
    let e = carol
        .rpc_err("read", json!({"room": "rc1", "seq": 1}))
        .await?;
    assert!(
        e == "not_member" || e == "forbidden" || e == "not_found",
        "{e}"
    );
    Ok(())
}

/// Publishes `v` on `c`'s send topic of room `v1`.
async fn send(c: &tests::Client, v: Value) -> Result<()> {
    c.publish_json(&format!("chat/rooms/v1/send/{}", c.user), &v)
        .await
}

/// `history` with `"view": "readable"` folds edits, deletes, reactions and
/// reply counts into the messages; `thread` returns a message and its
/// replies. Checked against the raw stream, which keeps every event.
pub(crate) async fn readable_view_and_threads(store: Store) -> Result<()> {
    let Some(builder) = store.builder()? else {
        return Ok(());
    };
    let srv = builder.start().await?;
    let mut alice = srv.user_v4("alice", "alice-view").await?;
    let mut bob = srv.user_v4("bob", "bob-view").await?;
    alice.subscribe_own().await?;
    bob.subscribe_own().await?;
    tests::group_room(&mut alice, "v1", &mut [&mut bob]).await?;
    alice.subscribe_ok("chat/rooms/v1/events").await?;
    send(&alice, json!({"msg_id": "root", "body": "lunch?"})).await?;
    let root = seq_of(&alice.recv_msg("v1", "alice", "root").await?);
    send(&bob, json!({"msg_id": "other", "body": "unrelated"})).await?;
    let other = seq_of(&alice.recv_msg("v1", "bob", "other").await?);
    send(
        &bob,
        json!({"msg_id": "r1", "body": "yes", "reply_to": root}),
    )
    .await?;
    alice.recv_msg("v1", "bob", "r1").await?;
    send(
        &alice,
        json!({"msg_id": "e1", "type": "edit", "target": root, "body": "lunch at 12?"}),
    )
    .await?;
    alice.recv_msg("v1", "alice", "e1").await?;
    for (who, id, emoji) in [
        ("bob", "x1", "👍"),
        ("alice", "x2", "👍"),
        ("bob", "x3", "🍕"),
    ] {
        let c = if who == "bob" { &bob } else { &alice };
        send(
            c,
            json!({"msg_id": id, "type": "reaction", "target": root, "emoji": emoji}),
        )
        .await?;
        alice.recv_msg("v1", who, id).await?;
    }
    send(
        &bob,
        json!({"msg_id": "x4", "type": "reaction", "target": root, "emoji": "🍕", "remove": true}),
    )
    .await?;
    alice.recv_msg("v1", "bob", "x4").await?;
    send(
        &bob,
        json!({"msg_id": "d1", "type": "delete", "target": other}),
    )
    .await?;
    alice.recv_msg("v1", "bob", "d1").await?;
    send(
        &alice,
        json!({"msg_id": "r2", "body": "great", "reply_to": root}),
    )
    .await?;
    alice.recv_msg("v1", "alice", "r2").await?;

    let view = alice
        .rpc(
            "history",
            json!({"room": "v1", "view": "readable", "limit": 100}),
        )
        .await?;
    let events = view["events"].as_array().cloned().unwrap_or_default();
    assert!(
        events
            .iter()
            .all(|e| !["edit", "reaction", "delete"].contains(&e["type"].as_str().unwrap_or(""))),
        "no edit, reaction or delete events of their own: {view}"
    );
    let by_id = |id: &str| {
        events
            .iter()
            .find(|e| e["msg_id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let r = by_id("root");
    assert_eq!(
        (r["body"].as_str(), r["edited"].as_bool()),
        (Some("lunch at 12?"), Some(true)),
        "{r}"
    );
    assert_eq!(
        r["reactions"],
        json!([{"emoji": "👍", "count": 2, "mine": true}]),
        "{r}"
    );
    assert_eq!(r["replies"], json!(2), "{r}");
    let o = by_id("other");
    assert_eq!(o["deleted"], json!(true), "{o}");
    assert!(o.get("body").is_none(), "a tombstone: {o}");
    assert_eq!(view["folded_to"], view["head"], "{view}");
    // the raw stream still has every event
    let raw = alice
        .rpc("history", json!({"room": "v1", "limit": 100}))
        .await?;
    assert!(
        raw["events"].as_array().map_or(0, Vec::len) > events.len(),
        "{raw}"
    );
    // sync takes the same view for each room
    let s = alice
        .rpc("sync", json!({"rooms": {"v1": 0}, "view": "readable"}))
        .await?;
    let folded = s["rooms"]["v1"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let root_in_sync = folded
        .iter()
        .find(|e| e["msg_id"] == "root")
        .cloned()
        .unwrap_or_default();
    assert_eq!(root_in_sync["body"], "lunch at 12?", "{s}");
    assert_eq!(root_in_sync["replies"], json!(2), "{s}");
    assert!(folded.iter().all(|e| e["type"] != "reaction"), "{s}");
    let raw_sync = alice.rpc("sync", json!({"rooms": {"v1": 0}})).await?;
    assert!(
        raw_sync["rooms"]["v1"]["events"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["type"] == "reaction")),
        "a plain sync keeps every event: {raw_sync}"
    );
    let bad = alice
        .rpc_err("sync", json!({"rooms": {}, "view": "pretty"}))
        .await?;
    assert_eq!(bad, "bad_request");
    let bad = alice
        .rpc_err("history", json!({"room": "v1", "view": "pretty"}))
        .await?;
    assert_eq!(bad, "bad_request");

    // the thread: the root and its two replies, readable
    let t = bob
        .rpc("thread", json!({"room": "v1", "seq": root}))
        .await?;
    assert_eq!(t["root"]["body"], "lunch at 12?", "{t}");
    assert_eq!(
        t["root"]["reactions"][0]["mine"],
        json!(true),
        "bob reacted 👍: {t}"
    );
    let replies: Vec<&str> = t["replies"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["msg_id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(replies, ["r1", "r2"], "{t}");
    assert_eq!(t["has_more"], json!(false));
    let page = bob
        .rpc("thread", json!({"room": "v1", "seq": root, "limit": 1}))
        .await?;
    assert_eq!(
        (
            page["replies"].as_array().map(Vec::len),
            page["has_more"].as_bool()
        ),
        (Some(1), Some(true)),
        "{page}"
    );
    assert_eq!(
        bob.rpc_err("thread", json!({"room": "v1", "seq": other + 1000}))
            .await?,
        "not_found"
    );
    let mut carol = srv.user_v4("carol", "carol-view").await?;
    carol.subscribe_own().await?;
    let e = carol
        .rpc_err("thread", json!({"room": "v1", "seq": root}))
        .await?;
    assert_eq!(e, "not_member");
    Ok(())
}

/// With `bridge.direct_needs_acceptance`, a direct room invites the other
/// user (an inbox notice) instead of joining them: they read nothing until
/// they accept with `rooms.join`, and may decline by leaving.
pub(crate) async fn direct_rooms_can_need_acceptance(store: Store) -> Result<()> {
    let Some(builder) = store.builder()? else {
        return Ok(());
    };
    let srv = builder
        .toml("[bridge]\ndirect_needs_acceptance = true\n")
        .start()
        .await?;
    let mut alice = srv.user_v4("alice", "alice-dm-acc").await?;
    let mut bob = srv.user_v4("bob", "bob-dm-acc").await?;
    alice.subscribe_own().await?;
    bob.subscribe_own().await?;
    let created = alice
        .rpc(
            "rooms.create",
            json!({"kind": "direct", "members": ["bob"]}),
        )
        .await?;
    let room = created["room"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let notice = bob
        .recv_inbox("the invitation", |v| {
            v["type"] == "invited" && v["room"] == json!(room)
        })
        .await?;
    assert_eq!(notice["by"], "alice", "{notice}");
    let list = bob.rpc("rooms.list", json!({})).await?;
    let entry = list["rooms"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["room"] == json!(room)))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        entry["state"], "invited",
        "not joined without consent: {list}"
    );
    alice.send(&room, "dm1", "hello bob").await?;
    let e = bob.rpc_err("history", json!({"room": room})).await?;
    assert_eq!(e, "not_member", "nothing is read before accepting");
    bob.rpc("rooms.join", json!({"room": room})).await?;
    let h = bob.rpc("history", json!({"room": room})).await?;
    assert!(
        h["events"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["msg_id"] == "dm1")),
        "after accepting: {h}"
    );
    Ok(())
}

/// Blocking keeps a user away from the blocker: no direct room, no
/// invitation, no membership at creation, no message in an existing direct
/// room (either way); unblocking lifts it.
pub(crate) async fn blocking_keeps_a_user_away(store: Store) -> Result<()> {
    let Some(builder) = store.builder()? else {
        return Ok(());
    };
    let srv = builder.start().await?;
    let mut alice = srv.user_v4("alice", "alice-block").await?;
    let mut bob = srv.user_v4("bob", "bob-block").await?;
    alice.subscribe_own().await?;
    bob.subscribe_own().await?;
    // a direct room from before the block
    let dm = alice
        .rpc(
            "rooms.create",
            json!({"kind": "direct", "members": ["bob"]}),
        )
        .await?["room"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    alice
        .subscribe_ok(&format!("chat/rooms/{dm}/events"))
        .await?;
    bob.subscribe_ok(&format!("chat/rooms/{dm}/events")).await?;
    bob.send(&dm, "before", "hi alice").await?;
    alice.recv_msg(&dm, "bob", "before").await?;

    let r = alice.rpc("users.block", json!({"user": "bob"})).await?;
    assert_eq!(r, json!({"user": "bob", "blocked": true}));
    alice.rpc("users.block", json!({"user": "bob"})).await?; // idempotent
    assert_eq!(
        alice.rpc("users.blocks", json!({})).await?,
        json!({"users": ["bob"]})
    );
    assert_eq!(
        bob.rpc("users.blocks", json!({})).await?,
        json!({"users": []})
    );
    for bad in [
        json!({"user": "alice"}),
        json!({"user": "no/such"}),
        json!({}),
    ] {
        assert_eq!(alice.rpc_err("users.block", bad).await?, "bad_request");
    }

    // bob cannot reach alice
    let e = bob
        .rpc_err(
            "rooms.create",
            json!({"kind": "direct", "members": ["alice"]}),
        )
        .await?;
    assert_eq!(e, "forbidden", "a direct room with the blocker");
    let e = bob
        .rpc_err(
            "rooms.create",
            json!({"room": "bg1", "members": ["alice", "carol"]}),
        )
        .await?;
    assert_eq!(e, "forbidden", "the blocker as a member at creation");
    let again = bob.rpc("rooms.create", json!({"room": "bg1"})).await?;
    assert_eq!(
        again["created"], true,
        "the refused create made nothing: {again}"
    );
    let e = bob
        .rpc_err("rooms.invite", json!({"room": "bg1", "user": "alice"}))
        .await?;
    assert_eq!(e, "forbidden", "an invitation of the blocker");
    bob.rpc("rooms.invite", json!({"room": "bg1", "user": "carol"}))
        .await?;
    // ... and neither can message the other in their direct room
    bob.send(&dm, "blocked-1", "still there?").await?;
    let err = bob
        .recv_inbox("the refusal of a blocked send", |v| {
            v["type"] == "error" && v["msg_id"] == "blocked-1"
        })
        .await?;
    assert_eq!(err["code"], "forbidden", "{err}");
    alice.send(&dm, "blocked-2", "bye").await?;
    let err = alice
        .recv_inbox("the blocker's own refusal", |v| {
            v["type"] == "error" && v["msg_id"] == "blocked-2"
        })
        .await?;
    assert_eq!(err["code"], "forbidden", "{err}");
    alice
        .expect_none("a blocked message", Duration::from_millis(300), |m| {
            m.json()["msg_id"] == "blocked-1"
        })
        .await?;
    // the blocker is told to unblock first
    let e = alice
        .rpc_err("rooms.invite", json!({"room": "nope", "user": "bob"}))
        .await?;
    assert_eq!(e, "not_member", "a room alice is not in says so first");
    alice.rpc("rooms.create", json!({"room": "ag1"})).await?;
    let e = alice
        .rpc_err("rooms.invite", json!({"room": "ag1", "user": "bob"}))
        .await?;
    assert_eq!(e, "forbidden");

    // unblocked: all is as before
    let r = alice.rpc("users.unblock", json!({"user": "bob"})).await?;
    assert_eq!(r, json!({"user": "bob", "blocked": false}));
    assert_eq!(
        alice.rpc("users.blocks", json!({})).await?,
        json!({"users": []})
    );
    bob.send(&dm, "after", "friends again").await?;
    alice.recv_msg(&dm, "bob", "after").await?;
    bob.rpc("rooms.invite", json!({"room": "bg1", "user": "alice"}))
        .await?;
    Ok(())
}

/// `[bridge.retention]`: a retry within the idempotency window is the
/// original event, one after it a new event; events older than their room
/// kind's retention go, oldest first, the head stays and seq goes on;
/// `history` and `sync` say `truncated` where the stream no longer reaches.
pub(crate) async fn retention_and_the_idempotency_window(store: Store) -> Result<()> {
    let Some(builder) = store.builder()? else {
        return Ok(());
    };
    let srv = builder
        .toml(
            "[bridge.retention]\nidempotency_window_secs = 1\ngroup_secs = 3\n\
             sweep_interval_ms = 200\n",
        )
        .start()
        .await?;
    let mut alice = srv.user_v4("alice", "alice-retain").await?;
    alice.subscribe_own().await?;
    alice.rpc("rooms.create", json!({"room": "ret"})).await?;
    alice.subscribe_ok("chat/rooms/ret/events").await?;
    for i in 1..=5 {
        alice.send("ret", &format!("m{i}"), "old").await?;
    }
    let first = seq_of(&alice.recv_msg("ret", "alice", "m1").await?);
    alice.recv_msg("ret", "alice", "m5").await?;
    // within the window: the original
    alice.send("ret", "m1", "retry").await?;
    let retry = alice.recv_msg("ret", "alice", "m1").await?;
    assert_eq!(seq_of(&retry), first, "a retry within the window: {retry}");
    assert_eq!(retry["body"], "old");
    // past it: a new event
    tokio::time::sleep(Duration::from_millis(1500)).await;
    alice.send("ret", "m1", "renewed").await?;
    let renewed = alice.recv_msg("ret", "alice", "m1").await?;
    assert_eq!(renewed["body"], "renewed", "past the window: {renewed}");
    let renewed_seq = seq_of(&renewed);
    assert!(renewed_seq > first + 4, "{renewed}");

    // the old events go; the history says so
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let h = loop {
        let h = alice.rpc("history", json!({"room": "ret"})).await?;
        if h["truncated"] == true {
            break h;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("history never truncated: {h}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let got = seqs(&h["events"]);
    let head = h["head"].as_u64().unwrap_or(0);
    assert_eq!(h["has_more"], false, "{h}");
    assert_eq!(got.last(), Some(&head), "the head event stays: {h}");
    assert!(got.first().is_some_and(|s| *s > 1), "the oldest went: {h}");
    let floor = got.first().copied().unwrap_or(0);
    assert_eq!(
        got,
        (floor..=head).collect::<Vec<_>>(),
        "what is kept has no gap"
    );
    // paging back from the first kept event: nothing, truncated
    let back = alice
        .rpc("history", json!({"room": "ret", "before": floor}))
        .await?;
    assert_eq!(seqs(&back["events"]), Vec::<u64>::new(), "{back}");
    assert_eq!(
        (back["has_more"].clone(), back["truncated"].clone()),
        (json!(false), json!(true))
    );
    // a cursor from before the cut: sync starts at the first kept, truncated
    let sync = alice.rpc("sync", json!({"rooms": {"ret": 0}})).await?;
    let entry = &sync["rooms"]["ret"];
    assert_eq!(entry["truncated"], true, "{sync}");
    // (the sweep may have removed more since: the floor only moves up)
    let got = seqs(&entry["events"]);
    let first = got.first().copied().unwrap_or(0);
    assert!(first >= floor, "{sync}");
    assert_eq!(
        got,
        (first..=head).collect::<Vec<_>>(),
        "from the first kept, no gap: {sync}"
    );
    // a cursor past the cut: nothing is missing, nothing said
    let sync = alice.rpc("sync", json!({"rooms": {"ret": head}})).await?;
    assert!(sync["rooms"]["ret"].get("truncated").is_none(), "{sync}");
    // seq goes on from the head; a fresh event is kept
    alice.send("ret", "fresh", "new").await?;
    let fresh = alice.recv_msg("ret", "alice", "fresh").await?;
    assert_eq!(seq_of(&fresh), head + 1, "{fresh}");
    let h = alice
        .rpc("history", json!({"room": "ret", "after": head}))
        .await?;
    assert_eq!(seqs(&h["events"]), vec![head + 1], "{h}");
    Ok(())
}

/// One `#[tokio::test]` per check of this suite, each on `$store`.
macro_rules! chat_suite {
    ($store:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn blocking_keeps_a_user_away() -> anyhow::Result<()> {
            $crate::chat_suite::blocking_keeps_a_user_away($store).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn retention_and_the_idempotency_window() -> anyhow::Result<()> {
            $crate::chat_suite::retention_and_the_idempotency_window($store).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn direct_rooms_can_need_acceptance() -> anyhow::Result<()> {
            $crate::chat_suite::direct_rooms_can_need_acceptance($store).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn readable_view_and_threads() -> anyhow::Result<()> {
            $crate::chat_suite::readable_view_and_threads($store).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn unread_counts_only_others_messages() -> anyhow::Result<()> {
            $crate::chat_suite::unread_counts_only_others_messages($store).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn receipts_and_delivered_reach_members() -> anyhow::Result<()> {
            $crate::chat_suite::receipts_and_delivered_reach_members($store).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn group_room_send_and_echo() -> anyhow::Result<()> {
            $crate::chat_suite::group_room_send_and_echo($store).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn history_paging_and_sync() -> anyhow::Result<()> {
            $crate::chat_suite::history_paging_and_sync($store).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn direct_room_has_one_id() -> anyhow::Result<()> {
            $crate::chat_suite::direct_room_has_one_id($store).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn retried_send_is_idempotent() -> anyhow::Result<()> {
            $crate::chat_suite::retried_send_is_idempotent($store).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_senders_get_gap_free_seqs() -> anyhow::Result<()> {
            $crate::chat_suite::concurrent_senders_get_gap_free_seqs($store).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn restart_after_kill_keeps_sequence() -> anyhow::Result<()> {
            $crate::chat_suite::restart_after_kill_keeps_sequence($store).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn mqtt5_response_topic_and_correlation() -> anyhow::Result<()> {
            $crate::chat_suite::mqtt5_response_topic_and_correlation($store).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn history_larger_than_a_reply_is_cut_and_pages_on() -> anyhow::Result<()> {
            $crate::chat_suite::history_larger_than_a_reply_is_cut_and_pages_on($store).await
        }
    };
}
pub(crate) use chat_suite;
