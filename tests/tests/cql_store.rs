//! The server on the ScyllaDB store (`store.backend = "scylla"`) against a
//! real CQL node: `chatmq migrate` fresh and re-run, the end-to-end chat
//! suite (`chat_suite.rs`, also run by `e2e_chat` on the embedded store),
//! chat all-in-one with a kill -9, and the split deployment (broker + bridge processes) with a kill -9 of the bridge
//! mid-stream.
//!
//! The node is `SCYLLA_URI`; `.ci/run` starts an Apache Cassandra 5.0 node
//! with `tests/cql/start` (no ScyllaDB can run on CI machines; docs/scylla.md
//! lists how the two differ). Without `SCYLLA_URI` each test prints SKIPPED,
//! unless `CHATMQ_CQL_REQUIRED` is set (CI), where it fails.
//!
//! ```sh
//! export SCYLLA_URI=$(tests/cql/start)
//! cargo test -p chatmq --test cql_store
//! tests/cql/stop
//! ```

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tests::{
    cql_node, fresh_keyspace, group_room, migrate_cql, read_whole_room, send_stream, seq_of,
    TestServer,
};

mod chat_suite;

/// The end-to-end chat flows of `e2e_chat`, each on a fresh keyspace.
mod chat {
    crate::chat_suite::chat_suite!(tests::Store::Cql);
}

/// The per-room send limit lifted, so that every send of a stream is stored.
const NO_SEND_LIMIT: &str = "sends_per_sec = 100000.0\nsends_burst = 100000.0\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_fresh_then_rerun() -> Result<()> {
    let Some(uri) = cql_node() else {
        return Ok(());
    };
    let ks = fresh_keyspace("migrate");
    let first = migrate_cql(&uri, &ks)?;
    assert!(
        first.contains(&format!("keyspace {ks}: applied 001_init")),
        "a fresh keyspace gets every migration: {first}"
    );
    assert!(first.contains("server: "), "names the server: {first}");
    if std::env::var("CQL_SERVER").as_deref() == Ok("cassandra") {
        assert!(
            first.contains("server: Apache Cassandra"),
            "Cassandra is not taken for ScyllaDB (no tablets option): {first}"
        );
    }
    let again = migrate_cql(&uri, &ks)?;
    assert!(
        again.contains(&format!("keyspace {ks}: up to date")) && !again.contains("applied"),
        "a re-run applies nothing: {again}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_without_schema_refuses_to_start() -> Result<()> {
    let Some(uri) = cql_node() else {
        return Ok(());
    };
    let ks = fresh_keyspace("nomigrate");
    let started = TestServer::builder().cql_store(&uri, &ks).start().await;
    let Err(e) = started else {
        bail!("the server started on a keyspace nobody migrated");
    };
    assert!(
        format!("{e:#}").contains("migrate"),
        "the error says to run `chatmq migrate`: {e:#}"
    );
    Ok(())
}

/// All-in-one on the CQL store: chat, history, sync, then kill -9 and a
/// restart: what was echoed is still there, the sequence continues, a
/// pre-crash retry is recognised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_in_one_chat_survives_kill_9() -> Result<()> {
    let Some(uri) = cql_node() else {
        return Ok(());
    };
    let ks = fresh_keyspace("all");
    migrate_cql(&uri, &ks)?;
    let mut srv = TestServer::builder().cql_store(&uri, &ks).start().await?;
    // the readiness probe pings the store (no empty partition key: Cassandra
    // refuses one, ScyllaDB does not)
    let (code, body) = srv.http_get("/readyz").await?;
    assert_eq!(
        (code, body.as_str()),
        (200, "ready\n"),
        "ready on the CQL store"
    );
    let mut echoed = Vec::new();
    {
        let mut alice = srv.user_v4("alice", "alice-cql-1").await?;
        let mut bob = srv.user_v4("bob", "bob-cql-1").await?;
        group_room(&mut alice, "c1", &mut [&mut bob]).await?;
        bob.subscribe_ok("chat/rooms/c1/events").await?;
        for i in 0..20 {
            alice.send("c1", &format!("m{i}"), &format!("b{i}")).await?;
        }
        for i in 0..20 {
            echoed.push(bob.recv_msg("c1", "alice", &format!("m{i}")).await?);
        }
        let seqs: Vec<u64> = echoed.iter().map(seq_of).collect();
        let first = seqs[0];
        assert_eq!(
            seqs,
            (first..first + 20).collect::<Vec<_>>(),
            "gap-free, in order"
        );
        let r = bob
            .rpc(
                "sync",
                json!({"rooms": {"c1": first + 14}, "limit_per_room": 100}),
            )
            .await?;
        let got: Vec<u64> = r["rooms"]["c1"]["events"]
            .as_array()
            .map(|a| a.iter().map(seq_of).collect())
            .unwrap_or_default();
        assert_eq!(
            got,
            (first + 15..first + 20).collect::<Vec<_>>(),
            "sync: {r}"
        );
    }
    let head = seq_of(echoed.last().context("20 events")?);
    srv.kill();
    srv.restart().await?;
    let mut alice = srv.user_v4("alice", "alice-cql-2").await?;
    alice.subscribe_ok("chat/rooms/c1/events").await?;
    let (stored, h) = read_whole_room(&mut alice, "c1").await?;
    assert_eq!(h, head, "head after kill -9");
    for e in &echoed {
        let id = e["msg_id"].as_str().unwrap_or_default();
        assert_eq!(
            stored.get(id),
            Some(&seq_of(e)),
            "echoed {id} survives kill -9"
        );
    }
    alice.send("c1", "m0", "b0").await?; // a retry of a pre-crash send
    alice.send("c1", "after", "x").await?;
    let e = alice.recv_msg("c1", "alice", "after").await?;
    assert_eq!(
        seq_of(&e),
        head + 1,
        "the sequence continues; the retry stored nothing: {e}"
    );
    Ok(())
}

/// Split mode: a broker process and a bridge process on the CQL store. Two
/// senders stream into a room; the bridge is killed (SIGKILL) mid-stream and
/// started again while the senders go on. Every send the broker
/// acknowledged is stored exactly once, the room is gap-free, and what was
/// echoed before the kill kept its seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_bridge_kill_9_mid_stream_loses_nothing_acknowledged() -> Result<()> {
    let Some(uri) = cql_node() else {
        return Ok(());
    };
    let ks = fresh_keyspace("split");
    migrate_cql(&uri, &ks)?;
    let broker = TestServer::builder().mode("broker").start().await?;
    let port = broker.tcp_port();
    let mut bridge = TestServer::builder()
        .mode("bridge")
        .cql_store(&uri, &ks)
        .toml(&format!(
            "[bridge]\nbroker = \"127.0.0.1:{port}\"\nclient_id = \"ext-bridge-cql\"\n\
             username = \"ext-bridge\"\npassword = \"pw-svc\"\n{NO_SEND_LIMIT}"
        ))
        .start()
        .await?;

    let mut alice = broker.user_v4("alice", "alice-split-cql").await?;
    let mut bob = broker.user_v4("bob", "bob-split-cql").await?;
    group_room(&mut alice, "s1", &mut [&mut bob]).await?;
    // the split broker learns bob's join from the bridge's hook a moment later
    let mut subscribed = false;
    for _ in 0..50 {
        if bob.subscribe("chat/rooms/s1/events").await? {
            subscribed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        subscribed,
        "bob may subscribe once the broker learned his join"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let senders = [
        tokio::spawn(send_stream(port, "alice", "s1", stop.clone())),
        tokio::spawn(send_stream(port, "bob", "s1", stop.clone())),
    ];
    let mut echoed = messages(drain_events(&mut bob, "s1", Duration::from_millis(2000)).await);
    let echoed_before_kill = echoed.len();
    bridge.kill();
    // the broker keeps acknowledging sends while the bridge is away
    tokio::time::sleep(Duration::from_millis(1000)).await;
    bridge.start_again().await?;
    echoed.extend(messages(
        drain_events(&mut bob, "s1", Duration::from_millis(2000)).await,
    ));
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeSet::new();
    for s in senders {
        acked.extend(s.await.context("sender task")??);
    }
    if acked.len() < 50 || echoed_before_kill < 20 {
        bail!(
            "the stream was too slow to test anything: {} acked, {echoed_before_kill} echoed before the kill",
            acked.len()
        );
    }

    // wait for the bridge to take in the backlog: the head stops moving
    let mut last = 0;
    let mut settled = 0;
    for _ in 0..300 {
        let h = alice.head("s1").await?;
        if h == last {
            settled += 1;
            if settled == 5 {
                break;
            }
        } else {
            (last, settled) = (h, 0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (stored, head) = read_whole_room(&mut alice, "s1").await?;
    for (seq, id) in &echoed {
        assert_eq!(
            stored.get(id),
            Some(seq),
            "echoed {id} at {seq} kept its seq"
        );
    }
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged sends lost (head {head}): {:?}\nbridge log:\n{}",
        lost.len(),
        acked.len(),
        lost.iter().take(10).collect::<Vec<_>>(),
        bridge.log_tail()
    );
    eprintln!(
        "split kill -9: {} acknowledged, {} echoed ({echoed_before_kill} before the kill), head {head}",
        acked.len(),
        echoed.len()
    );
    Ok(())
}

/// `(seq, msg_id)` of the message events among `msgs`.
fn messages(msgs: Vec<tests::Msg>) -> Vec<(u64, String)> {
    msgs.iter()
        .map(tests::Msg::json)
        .filter(|v| v["type"] == "message")
        .map(|v| (seq_of(&v), v["msg_id"].as_str().unwrap_or("").to_owned()))
        .collect()
}

/// Every event on `room`'s events topic that reaches `c` within `span`.
async fn drain_events(c: &mut tests::Client, room: &str, span: Duration) -> Vec<tests::Msg> {
    let topic = format!("chat/rooms/{room}/events");
    let deadline = tokio::time::Instant::now() + span;
    let mut out = Vec::new();
    while let Some(left) = deadline.checked_duration_since(tokio::time::Instant::now()) {
        match c
            .recv_until("a room event", left, |m| m.topic == topic)
            .await
        {
            Ok(m) => out.push(m),
            Err(_) => break,
        }
    }
    out
}
