//! A channel of 10,000 members, end to end with rumqttc clients: every
//! member joins over MQTT, a message is fanned out to the members online
//! (each gets every message once, in order), and every one of the 10,000
//! sees its unread count. Its cost per message is measured by the benchmark
//! (`chatmq-bench load --only channel`, README "Performance").

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use tests::{client_v4, seq_of, TestServer};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const MEMBERS: usize = 10_000;
const ONLINE: usize = 200;
const PARALLEL: usize = 48;
const ROOM: &str = "big";

fn member(i: usize) -> String {
    format!("m{i:05}")
}

/// Runs `f(i)` for every member, `PARALLEL` at a time; fails on the first error.
async fn each_member<F, Fut>(what: &str, f: F) -> Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(PARALLEL));
    let f = Arc::new(f);
    let mut set = JoinSet::new();
    for i in 0..MEMBERS {
        let permit = gate.clone().acquire_owned().await?;
        let f = f.clone();
        set.spawn(async move {
            let r = f(i).await.with_context(|| format!("member {}", member(i)));
            drop(permit);
            r
        });
        while let Some(done) = set.try_join_next() {
            done??;
        }
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    eprintln!("{what}: {MEMBERS} members in {:?}", started.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_of_ten_thousand_members() -> Result<()> {
    let mut b =
        TestServer::builder().broker_toml("\n[broker.limits]\nconnects_per_sec_per_ip = 1000000\n");
    for i in 0..MEMBERS {
        b = b.user(&member(i), "pw");
    }
    let srv = b.start().await?;
    let port = srv.tcp_port();
    let mut alice = srv.user_v4("alice", "alice-big").await?;
    alice.subscribe_own().await?;
    alice
        .rpc(
            "rooms.create",
            json!({"room": ROOM, "kind": "channel", "title": "Everyone"}),
        )
        .await?;

    // every member joins, over its own MQTT connection
    each_member("join", move |i| async move {
        let u = member(i);
        let mut c = client_v4(port, &u, "pw", &format!("{u}-join")).await?;
        c.subscribe_own().await?;
        let r = c.rpc("rooms.join", json!({"room": ROOM})).await?;
        if r["seq"].as_u64().is_none() {
            bail!("rooms.join answered {r}");
        }
        Ok(())
    })
    .await?;
    let mut joined = 0;
    let mut after: Option<String> = None;
    loop {
        let mut p = json!({"room": ROOM, "limit": 1000});
        if let Some(a) = &after {
            p["after"] = json!(a);
        }
        let page = alice.rpc("rooms.members", p).await?;
        let members = page["members"].as_array().cloned().unwrap_or_default();
        joined += members.iter().filter(|m| m["state"] == "joined").count();
        after = members
            .last()
            .and_then(|m| m["user"].as_str())
            .map(String::from);
        if page["has_more"] != true {
            break;
        }
    }
    assert_eq!(joined, MEMBERS + 1, "every member and the owner are joined");

    // some are online: each message reaches each of them once, in order
    let mut online = Vec::with_capacity(ONLINE);
    for i in 0..ONLINE {
        let u = member(i);
        let mut c = client_v4(port, &u, "pw", &format!("{u}-online")).await?;
        c.subscribe_ok(&format!("chat/rooms/{ROOM}/events")).await?;
        online.push(c);
    }
    alice
        .subscribe_ok(&format!("chat/rooms/{ROOM}/events"))
        .await?;
    let sent = Instant::now();
    for k in 1..=3 {
        alice
            .send(ROOM, &format!("all-{k}"), "hello everyone")
            .await?;
    }
    let mut seqs = Vec::new();
    for k in 1..=3 {
        seqs.push(seq_of(
            &alice.recv_msg(ROOM, "alice", &format!("all-{k}")).await?,
        ));
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    for c in &mut online {
        for (k, want) in (1..=3).zip(&seqs) {
            let e = c.recv_msg(ROOM, "alice", &format!("all-{k}")).await?;
            assert_eq!(seq_of(&e), *want, "{}: {e}", c.client_id);
        }
        c.expect_none("a second copy", std::time::Duration::from_millis(5), |m| {
            m.topic.ends_with("/events")
        })
        .await?;
    }
    eprintln!(
        "fan-out of 3 messages to {ONLINE} online members: {:?}",
        sent.elapsed()
    );
    drop(online);

    // every member, online or not, sees the 3 unread
    each_member("unread", move |i| async move {
        let u = member(i);
        let mut c = client_v4(port, &u, "pw", &format!("{u}-list")).await?;
        c.subscribe_own().await?;
        let list = c.rpc("rooms.list", json!({})).await?;
        let entry = list["rooms"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["room"] == ROOM))
            .cloned()
            .unwrap_or_default();
        if entry["unread"] != 3 {
            bail!("unread is not 3: {list}");
        }
        Ok(())
    })
    .await?;
    let list = alice.rpc("rooms.list", json!({})).await?;
    assert_eq!(list["rooms"][0]["unread"], 0, "the sender's own: {list}");
    Ok(())
}
