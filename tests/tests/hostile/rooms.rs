//! See `hostile.rs`. Direct rooms (ids nobody can squat, answered only to
//! their two users, who may come back) and paged room lists.

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tests::*;

/// The `result` of the reply to each request, sent all at once and
/// collected afterwards (the server handles one user's requests in order).
async fn batch(c: &mut Client, method: &str, reqs: Vec<Value>) -> Result<Vec<Value>> {
    let reply = c.reply_topic();
    let topic = format!("chat/rpc/{}/{method}", c.user);
    let mut corrs = Vec::new();
    for (i, mut r) in reqs.into_iter().enumerate() {
        let corr = format!("b-{method}-{i}");
        r["reply"] = reply.clone().into();
        r["corr"] = corr.clone().into();
        c.publish_json(&topic, &r).await?;
        corrs.push(corr);
    }
    let mut out = Vec::new();
    for corr in corrs {
        let m = c
            .recv_until(&format!("reply {corr}"), TIMEOUT, |m| {
                m.topic == reply && m.json()["corr"] == corr.as_str()
            })
            .await?;
        let v = m.json();
        if v["ok"] != true {
            bail!("{method} {corr} failed: {v}");
        }
        out.push(v["result"].clone());
    }
    Ok(out)
}

/// The direct room of `a` with `b`, created (or found) by `a`.
async fn direct(a: &mut Client, b: &str) -> Result<Value> {
    a.rpc("rooms.create", json!({"kind": "direct", "members": [b]}))
        .await
}

fn room_id(r: &Value) -> Result<String> {
    r["room"]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no room id in {r}"))
}

/// `a` sends in `room` and `b` receives it (both subscribe first).
async fn talk(a: &mut Client, b: &mut Client, room: &str, msg_id: &str) -> Result<()> {
    let topic = format!("chat/rooms/{room}/events");
    a.subscribe_ok(&topic).await?;
    b.subscribe_ok(&topic).await?;
    a.send(room, msg_id, "hi").await?;
    b.recv_msg(room, &a.user, msg_id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_can_take_the_id_of_a_pairs_direct_room() -> Result<()> {
    // the id alice's and bob's direct room has on any server
    let id = {
        let srv = TestServer::start().await?;
        let mut alice = srv.user_v4("alice", "alice-0").await?;
        room_id(&direct(&mut alice, "bob").await?)?
    };
    let srv = TestServer::start().await?;
    let mut carol = srv.user_v4("carol", "carol-1").await?;
    // before alice and bob ever talk, carol takes their ids: the one of
    // earlier versions and today's
    for room in ["dm.alice.bob", id.as_str(), "DM-alice-bob"] {
        for kind in ["group", "channel"] {
            let code = carol
                .rpc_err(
                    "rooms.create",
                    json!({"room": room, "kind": kind, "members": ["alice", "bob"]}),
                )
                .await?;
            assert_eq!(code, "bad_request", "{kind} {room}");
        }
    }
    // carol's own direct room with alice is another room
    let ca = direct(&mut carol, "alice").await?;
    assert_eq!(ca["created"], true, "{ca}");
    assert_ne!(room_id(&ca)?, id);
    // alice and bob get theirs and talk
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    let r = direct(&mut alice, "bob").await?;
    assert_eq!(
        (room_id(&r)?, r["created"].clone()),
        (id.clone(), json!(true)),
        "{r}"
    );
    assert_eq!(r["room"]["kind"], "direct");
    let r = direct(&mut bob, "alice").await?;
    assert_eq!(
        (room_id(&r)?, r["created"].clone()),
        (id.clone(), json!(false)),
        "{r}"
    );
    talk(&mut alice, &mut bob, &id, "ab-1").await?;
    // carol is not let in, and is still served
    assert_eq!(
        carol.rpc_err("rooms.join", json!({"room": id})).await?,
        "not_found"
    );
    assert!(!carol.subscribe(&format!("chat/rooms/{id}/events")).await?);
    let list = carol.rpc("rooms.list", json!({})).await?;
    assert_eq!(list["rooms"].as_array().map(Vec::len), Some(1), "{list}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outsider_cannot_reach_a_direct_room_through_a_look_alike_pair() -> Result<()> {
    // "ann"+"bo.b" and "ann.bo"+"b" had one direct id (`dm.ann.bo.b`); the
    // quotes keep the dotted names single TOML keys
    let mut b = TestServer::builder();
    for u in ["ann", "bo.b", "ann.bo", "b"] {
        b = b.user(&format!("\"{u}\""), &pw(u));
    }
    let srv = b.start().await?;
    let mut ann = srv.user_v4("ann", "ann-1").await?;
    let mut bob = srv.user_v4("bo.b", "bo.b-1").await?;
    let mut eve = srv.user_v4("ann.bo", "ann.bo-1").await?;
    let mut b = srv.user_v4("b", "b-1").await?;
    let id = room_id(&direct(&mut ann, "bo.b").await?)?;
    talk(&mut ann, &mut bob, &id, "secret-1").await?;
    // "ann.bo" asks for a direct room with "b": a room of its own, not ann's
    let r = direct(&mut eve, "b").await?;
    assert_eq!(r["created"], true, "the outsider got an existing room: {r}");
    let theirs = room_id(&r)?;
    assert_ne!(theirs, id, "the outsider got ann's room: {r}");
    // nothing of ann's room reaches the outsider: the same answers as for
    // a room that does not exist
    let none = "dm-0000000000000000000000000000000000000000";
    for room in [id.as_str(), none] {
        assert_eq!(
            eve.rpc_err("rooms.join", json!({"room": room})).await?,
            "not_found",
            "{room}"
        );
        assert_eq!(
            eve.rpc_err("history", json!({"room": room})).await?,
            "not_member",
            "{room}"
        );
        let s = eve.rpc("sync", json!({"rooms": {room: 0}})).await?;
        assert_eq!(s["rooms"][room]["error"]["code"], "not_member", "{s}");
    }
    assert!(!eve.subscribe(&format!("chat/rooms/{id}/events")).await?);
    let list = eve.rpc("rooms.list", json!({})).await?;
    let rooms: Vec<&Value> = list["rooms"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    assert_eq!(rooms.len(), 1, "{list}");
    assert_eq!(rooms[0]["room"], theirs.as_str());
    // the pairs still talk
    talk(&mut eve, &mut b, &theirs, "eb-1").await?;
    ann.send(&id, "secret-2", "still here").await?;
    bob.recv_msg(&id, "ann", "secret-2").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_who_left_a_direct_room_comes_back() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    let mut carol = srv.user_v4("carol", "carol-1").await?;
    let id = room_id(&direct(&mut alice, "bob").await?)?;
    talk(&mut alice, &mut bob, &id, "m1").await?;
    bob.rpc("rooms.leave", json!({"room": id})).await?;
    assert_eq!(
        bob.rpc_err("history", json!({"room": id})).await?,
        "not_member"
    );
    // back by rooms.join
    let r = bob.rpc("rooms.join", json!({"room": id})).await?;
    assert!(r["seq"].as_u64().is_some(), "{r}");
    talk(&mut alice, &mut bob, &id, "m2").await?;
    // and by rooms.create
    bob.rpc("rooms.leave", json!({"room": id})).await?;
    let r = direct(&mut bob, "alice").await?;
    assert_eq!(
        (room_id(&r)?, r["created"].clone()),
        (id.clone(), json!(false)),
        "{r}"
    );
    let h = bob.rpc("history", json!({"room": id})).await?;
    assert!(h["head"].as_u64().is_some_and(|h| h >= 6), "{h}");
    talk(&mut bob, &mut alice, &id, "m3").await?;
    // carol cannot do the same
    assert_eq!(
        carol.rpc_err("rooms.join", json!({"room": id})).await?,
        "not_found"
    );
    let r = direct(&mut carol, "bob").await?;
    assert_ne!(room_id(&r)?, id);
    talk(&mut carol, &mut bob, &room_id(&r)?, "c1").await?;
    Ok(())
}

const ROOMS: usize = 300;

/// Every page of `method` for alice, paging with `cursor` from `next`:
/// checks each fits the reply limit and holds at most `per_page`.
async fn pages(
    alice: &mut Client,
    method: &str,
    req: Value,
    key: &str,
    (cursor, next, more): (&str, &str, &str),
    per_page: usize,
) -> Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    let mut req = req;
    loop {
        let r = alice.rpc(method, req.clone()).await?;
        let size = serde_json::to_vec(&r)?.len();
        assert!(size <= 512 * 1024, "{method} page of {size} bytes");
        let page: Vec<String> = r[key]
            .as_array()
            .ok_or_else(|| anyhow!("no {key} in {method} reply"))?
            .iter()
            .map(|e| e["room"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert!(page.len() <= per_page, "{method}: {} entries", page.len());
        assert!(
            !page.is_empty() && out.len() < ROOMS,
            "{method} makes no progress"
        );
        let last = page.last().cloned();
        out.push(page);
        if r[more] != true {
            return Ok(out);
        }
        assert_eq!(r[next].as_str(), last.as_deref(), "{method} cursor");
        req[cursor] = r[next].clone();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_in_many_rooms_gets_pages_that_fit() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    group_room(&mut bob, "bobs", &mut []).await?;
    let ids: Vec<String> = (0..ROOMS).map(|i| format!("many-{i:03}")).collect();
    let title = "t".repeat(256);
    let reqs = ids
        .iter()
        .map(|r| json!({"room": r, "kind": "group", "title": title}))
        .collect();
    batch(&mut alice, "rooms.create", reqs).await?;
    // a 2 KB message in each room: rooms.list's `last` makes the whole
    // list ~800 KB, over the 512 KiB a reply may carry
    for r in &ids {
        alice
            .subscribe_ok(&format!("chat/rooms/{r}/events"))
            .await?;
    }
    let body = "b".repeat(2000);
    for r in &ids {
        alice.send(r, "big", &body).await?;
    }
    for r in &ids {
        alice.recv_msg(r, "alice", "big").await?;
    }
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    let once = |pages: &[Vec<String>], what: &str| {
        let flat: Vec<&String> = pages.iter().flatten().collect();
        let set: BTreeSet<String> = flat.iter().map(|s| s.to_string()).collect();
        assert_eq!(flat.len(), ROOMS, "{what}: every room exactly once");
        assert_eq!(set, all, "{what}");
    };
    // an old client's request gets the first page
    let r = alice.rpc("rooms.list", json!({})).await?;
    assert!(
        r["rooms"].as_array().is_some_and(|a| a.len() <= 100),
        "default page"
    );
    assert_eq!(r["has_more"], true);
    // pages by size: the largest page is cut by the byte limit
    let keys = ("after", "next", "has_more");
    let p = pages(
        &mut alice,
        "rooms.list",
        json!({"limit": 500}),
        "rooms",
        keys,
        500,
    )
    .await?;
    assert!(p.len() >= 2, "{} pages", p.len());
    once(&p, "rooms.list");
    let p = pages(
        &mut alice,
        "rooms.list",
        json!({"limit": 64}),
        "rooms",
        keys,
        64,
    )
    .await?;
    once(&p, "rooms.list by 64");
    // sync's joined list
    let keys = ("joined_after", "joined_next", "joined_has_more");
    let p = pages(
        &mut alice,
        "sync",
        json!({"joined_limit": 50}),
        "joined",
        keys,
        50,
    )
    .await?;
    assert_eq!(p.len(), ROOMS / 50);
    once(&p, "sync joined");
    let p = pages(&mut alice, "sync", json!({}), "joined", keys, 1000).await?;
    once(&p, "sync joined, default page");
    // bob is served all along
    let r = bob.rpc("rooms.list", json!({})).await?;
    assert_eq!(r["rooms"].as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(r["has_more"], false);
    Ok(())
}
