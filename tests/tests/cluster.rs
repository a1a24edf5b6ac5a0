//! A cluster on loopback (issue 14, docs/cluster.md): 3 brokers and 2
//! bridges as separate `chatmq` processes on the CQL node of `.ci/run`,
//! real MQTT clients (rumqttc) on different brokers.
//!
//! Skips (saying so) without `SCYLLA_URI`; fails instead under
//! `CHATMQ_CQL_REQUIRED` (as in CI).

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tests::{
    client_v4, cql_node, fresh_keyspace, group_room, migrate_cql, pw, read_whole_room, seq_of,
    Client, TestServer,
};
use tokio::time::Instant;

const PARTITIONS: u32 = 8;
const BRIDGE_ID: &str = "cl-bridge";

/// Brokers and bridges of one test, on one fresh keyspace.
struct Cluster {
    uri: String,
    ks: String,
    brokers: Vec<TestServer>,
    bridges: Vec<TestServer>,
}

fn cluster_toml(bridges: u32, ordinal: Option<u32>, brokers: &[u16]) -> String {
    let list: Vec<String> = brokers
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    let mut s = format!(
        "[cluster]\npartitions = {PARTITIONS}\nbridges = {bridges}\nbrokers = [{}]\n\
         resolve_interval_ms = 500\npresence_grace_ms = 2000\n",
        list.join(", ")
    );
    if let Some(k) = ordinal {
        s.push_str(&format!("bridge_ordinal = {k}\n"));
    }
    s
}

impl Cluster {
    /// `Ok(None)`: no CQL node (the test skips, saying so).
    async fn start(brokers: usize, bridges: u32) -> Result<Option<Cluster>> {
        let Some(uri) = cql_node() else {
            return Ok(None);
        };
        let ks = fresh_keyspace("cluster");
        migrate_cql(&uri, &ks)?;
        let mut c = Cluster {
            uri,
            ks,
            brokers: Vec::new(),
            bridges: Vec::new(),
        };
        for _ in 0..brokers {
            let b = TestServer::builder()
                .mode("broker")
                .cql_store(&c.uri, &c.ks)
                .toml(&cluster_toml(bridges, None, &[]))
                .start()
                .await?;
            c.brokers.push(b);
        }
        for k in 0..bridges {
            let b = c.bridge(k, bridges).await?;
            c.bridges.push(b);
        }
        Ok(Some(c))
    }

    fn ports(&self) -> Vec<u16> {
        self.brokers.iter().map(TestServer::tcp_port).collect()
    }

    fn bridge_config(&self, k: u32, bridges: u32) -> String {
        format!(
            "[bridge]\nclient_id = \"{BRIDGE_ID}\"\nusername = \"ext-bridge\"\npassword = \"pw-svc\"\n\
             sends_per_sec = 100000.0\nsends_burst = 100000.0\n{}",
            cluster_toml(bridges, Some(k), &self.ports())
        )
    }

    /// Starts bridge `k` of `bridges`.
    async fn bridge(&self, k: u32, bridges: u32) -> Result<TestServer> {
        TestServer::builder()
            .mode("bridge")
            .cql_store(&self.uri, &self.ks)
            .toml(&self.bridge_config(k, bridges))
            .start()
            .await
    }

    /// Restarts bridge `i` (SIGTERM) as bridge `k` of `bridges`.
    async fn rescale_bridge(&mut self, i: usize, k: u32, bridges: u32) -> Result<()> {
        let text = self.bridge_config(k, bridges);
        let b = &mut self.bridges[i];
        b.terminate()?;
        b.wait_exit(Duration::from_secs(30)).await?;
        let path = b.config_path().to_owned();
        let old = std::fs::read_to_string(&path)?;
        let cut = old.find("[bridge]").context("bridge section")?;
        std::fs::write(&path, format!("{}{text}", &old[..cut]))?;
        b.start_again().await
    }

    async fn user(&self, broker: usize, user: &str, id: &str) -> Result<Client> {
        let mut c = client_v4(self.brokers[broker].tcp_port(), user, &pw(user), id).await?;
        c.subscribe_own().await?;
        Ok(c)
    }
}

/// Subscribes, retrying while the broker has not yet heard of the
/// membership that allows it (the bridge's access hook is on its way).
async fn subscribe_eventually(c: &mut Client, filter: &str) -> Result<()> {
    for _ in 0..100 {
        if c.subscribe(filter).await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{} could not subscribe to {filter}", c.user)
}

/// The message events on `room` reaching `c` until `n` distinct seqs came or
/// `span` passed: (seq, msg_id) in arrival order, duplicates included.
async fn collect(c: &mut Client, room: &str, n: usize, span: Duration) -> Vec<(u64, String)> {
    let topic = format!("chat/rooms/{room}/events");
    let deadline = Instant::now() + span;
    let mut out = Vec::new();
    let mut distinct = std::collections::BTreeSet::new();
    while distinct.len() < n {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        match c
            .recv_until("a room event", left, |m| m.topic == topic)
            .await
        {
            Ok(m) => {
                let v = m.json();
                if v["type"] == "message" {
                    distinct.insert(seq_of(&v));
                    out.push((seq_of(&v), v["msg_id"].as_str().unwrap_or("").to_owned()));
                }
            }
            Err(_) => break,
        }
    }
    out
}

/// Chat across brokers: members on broker 0 and broker 2 see each other's
/// messages gap-free and each exactly once; history and sync from a third
/// broker; typing, presence and receipts cross brokers; a kick on one
/// broker ends delivery on every broker at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_presence_typing_receipts_and_kick_across_brokers() -> Result<()> {
    let Some(c) = Cluster::start(3, 2).await? else {
        return Ok(());
    };
    let mut alice = c.user(0, "alice", "alice-c0").await?;
    let mut bob = c.user(2, "bob", "bob-c2").await?;
    let mut carol = c.user(1, "carol", "carol-c1").await?;

    // a user may not touch a cluster's internal topics
    assert!(
        !alice.subscribe("chat/part/#").await?,
        "chat/part/# refused"
    );

    group_room(&mut alice, "x1", &mut [&mut bob, &mut carol]).await?;
    for u in [&mut alice, &mut bob, &mut carol] {
        subscribe_eventually(u, "chat/rooms/x1/events").await?;
    }
    // presence: bob on broker 2 watches alice (a room in common), connected to broker 0
    bob.subscribe_ok("chat/presence/alice").await?;
    let online = bob
        .recv_until("alice online", Duration::from_secs(15), |m| {
            m.topic == "chat/presence/alice" && m.json()["online"] == true
        })
        .await?;
    assert_eq!(online.json()["online"], true);

    bob.subscribe_ok("chat/rooms/x1/typing/+").await?;
    bob.subscribe_ok("chat/rooms/x1/receipts").await?;
    alice.clear();
    bob.clear();
    carol.clear();

    for i in 0..20 {
        alice.send("x1", &format!("a{i}"), "from broker 0").await?;
        bob.send("x1", &format!("b{i}"), "from broker 2").await?;
    }
    for (who, client) in [
        ("alice", &mut alice),
        ("bob", &mut bob),
        ("carol", &mut carol),
    ] {
        let got = collect(client, "x1", 40, Duration::from_secs(30)).await;
        let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(seqs.len(), 40, "{who}: each message exactly once: {got:?}");
        assert_eq!(sorted.len(), 40, "{who}: no duplicates: {got:?}");
        assert_eq!(
            sorted.last().copied().unwrap_or(0) - sorted[0] + 1,
            40,
            "{who}: gap-free: {seqs:?}"
        );
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{who}: in order: {seqs:?}"
        );
    }

    // nor publish there: a send forged onto every partition's topic as bob
    for part in 0..PARTITIONS {
        alice
            .publish_json(
                &format!("chat/part/{part}/rooms/x1/send/bob"),
                &json!({"msg_id": "forged", "body": "as bob"}),
            )
            .await?;
    }
    alice.send("x1", "after-forgery", "a marker").await?;
    alice.recv_msg("x1", "alice", "after-forgery").await?;

    // history and sync answered through broker 1
    let (stored, head) = read_whole_room(&mut carol, "x1").await?;
    assert!(
        !stored.contains_key("forged"),
        "a user's publish under chat/part/ is refused"
    );
    assert!(stored.contains_key("after-forgery"));
    assert_eq!(stored.len(), 41, "history holds every message once");
    let sync = carol.rpc("sync", json!({"rooms": {"x1": 0}})).await?;
    assert_eq!(sync["rooms"]["x1"]["head"], json!(head), "{sync}");

    // typing from broker 0 reaches broker 2
    alice
        .publish_json("chat/rooms/x1/typing/alice", &json!({"typing": true}))
        .await?;
    bob.recv_until("alice typing", Duration::from_secs(10), |m| {
        m.topic == "chat/rooms/x1/typing/alice"
    })
    .await?;

    // a receipt of alice's reaches bob
    alice
        .rpc("read", json!({"room": "x1", "seq": head}))
        .await?;
    let r = bob
        .recv_until("alice's receipt", Duration::from_secs(10), |m| {
            m.topic == "chat/rooms/x1/receipts" && m.json()["user"] == "alice"
        })
        .await?;
    assert_eq!(r.json()["read"], json!(head));

    // kick on broker 0: carol, on broker 1 and on broker 2, stops
    // receiving at once on both
    let mut carol2 = c.user(2, "carol", "carol-c2").await?;
    subscribe_eventually(&mut carol2, "chat/rooms/x1/events").await?;
    alice.send("x1", "before-kick", "for carol too").await?;
    carol2.recv_msg("x1", "alice", "before-kick").await?;
    alice
        .rpc("rooms.kick", json!({"room": "x1", "user": "carol"}))
        .await?;
    alice.send("x1", "after-kick", "not for carol").await?;
    bob.recv_msg("x1", "alice", "after-kick").await?;
    for (broker, c) in [(1, &mut carol), (2, &mut carol2)] {
        c.expect_none(
            &format!("an event after the kick on broker {broker}"),
            Duration::from_millis(1500),
            |m| m.topic == "chat/rooms/x1/events" && m.json()["msg_id"] == "after-kick",
        )
        .await?;
    }

    // alice leaves broker 0: bob sees her offline
    alice.disconnect().await;
    drop(alice);
    bob.recv_until("alice offline", Duration::from_secs(15), |m| {
        m.topic == "chat/presence/alice" && m.json()["online"] == false
    })
    .await?;
    Ok(())
}

/// A client that does what PROTOCOL.md asks: each send retried (same
/// `msg_id`) until its echo; when its broker goes away, it connects to the
/// next one, subscribes again and retries what is pending. Runs until `stop`
/// and nothing is pending. Returns msg_id -> seq of every echo.
async fn retrying_sender(
    ports: Vec<u16>,
    user: &'static str,
    room: &'static str,
    stop: Arc<AtomicBool>,
) -> Result<HashMap<String, u64>> {
    let topic = format!("chat/rooms/{room}/events");
    let mut at = 0usize;
    let mut n = 0u32;
    let connect = |at: usize, n: u32| {
        let port = ports[at % ports.len()];
        async move {
            let mut c = client_v4(port, user, &pw(user), &format!("{user}-rs-{n}")).await?;
            c.subscribe_own().await?;
            c.subscribe_ok(&format!("chat/rooms/{room}/events")).await?;
            anyhow::Ok(c)
        }
    };
    let mut c = connect(at, n).await?;
    let mut pending: BTreeMap<String, Instant> = BTreeMap::new();
    let mut echoed = HashMap::new();
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let mut next = 0u32;
    let mut retries = 0usize;
    let mut synced = 0usize;
    let mut last_seq = 0u64;
    let mut stopped_at: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            let t = *stopped_at.get_or_insert_with(Instant::now);
            if pending.is_empty() {
                eprintln!(
                    "{user}: {} echoed, {retries} retries, {synced} found by sync after a reconnect",
                    echoed.len()
                );
                return Ok(echoed);
            }
            if t.elapsed() > Duration::from_secs(90) {
                bail!(
                    "{user}: {} sends never echoed: {:?}",
                    pending.len(),
                    pending.keys().take(5).collect::<Vec<_>>()
                );
            }
        } else {
            while pending.len() < 5 {
                let id = format!("{user}-{run}-{next}");
                next += 1;
                pending.insert(id.clone(), Instant::now());
                let _ = c.send(room, &id, "retried until echoed").await;
            }
        }
        match c
            .recv_until("an echo", Duration::from_millis(300), |m| m.topic == topic)
            .await
        {
            Ok(m) => {
                let v = m.json();
                last_seq = last_seq.max(seq_of(&v));
                if v["from"] == user {
                    if let Some(id) = v["msg_id"].as_str() {
                        pending.remove(id);
                        echoed.insert(id.to_owned(), seq_of(&v));
                    }
                }
            }
            Err(_) if c.is_closed().is_some() => {
                // the broker went away: the next one
                loop {
                    at += 1;
                    n += 1;
                    match connect(at, n).await {
                        Ok(new) => {
                            c = new;
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                // catch up with sync from the last seq seen: echoes missed
                // while away clear their sends without a retry
                synced += catch_up(&mut c, room, user, last_seq, &mut pending, &mut echoed).await?;
                for (id, t) in pending.iter_mut() {
                    *t = Instant::now();
                    retries += 1;
                    let _ = c.send(room, id, "retried until echoed").await;
                }
            }
            Err(_) => {
                for (id, t) in pending.iter_mut() {
                    if t.elapsed() > Duration::from_secs(3) {
                        *t = Instant::now();
                        retries += 1;
                        let _ = c.send(room, id, "retried until echoed").await;
                    }
                }
            }
        }
    }
}

/// `sync` of `room` from `after` (paged): the user's messages found clear
/// their pending sends. Returns how many it cleared.
async fn catch_up(
    c: &mut Client,
    room: &str,
    user: &str,
    mut after: u64,
    pending: &mut BTreeMap<String, Instant>,
    echoed: &mut HashMap<String, u64>,
) -> Result<usize> {
    let mut cleared = 0;
    loop {
        let r = c.rpc("sync", json!({"rooms": {room: after}})).await?;
        let page = &r["rooms"][room];
        let events = page["events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            after = after.max(seq_of(e));
            if e["from"] == user {
                if let Some(id) = e["msg_id"].as_str() {
                    if pending.remove(id).is_some() {
                        cleared += 1;
                    }
                    echoed.insert(id.to_owned(), seq_of(e));
                }
            }
        }
        if events.is_empty() || page["has_more"] != json!(true) {
            return Ok(cleared);
        }
    }
}

/// Senders retrying until echoed, running.
struct Load {
    room: &'static str,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Result<HashMap<String, u64>>>>,
}

/// Starts a retrying sender per `(user, first broker)` and lets them run 2 s.
async fn start_load(c: &Cluster, room: &'static str, senders: &[(&'static str, usize)]) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let ports = c.ports();
    let mut tasks = Vec::new();
    for (user, first) in senders {
        let mut order = ports.clone();
        order.rotate_left(*first % ports.len());
        tasks.push(tokio::spawn(retrying_sender(
            order,
            user,
            room,
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    Load { room, stop, tasks }
}

/// Lets the senders run 3 s more, stops them (each waits for its last
/// echoes), and checks the room: gap-free, each msg_id once, every echo at
/// its seq.
async fn finish_load(c: &mut Cluster, load: Load) -> Result<()> {
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.stop.store(true, Ordering::Relaxed);
    let mut echoed = HashMap::new();
    for t in load.tasks {
        echoed.extend(t.await.context("sender task")??);
    }
    let survivor = c
        .brokers
        .iter_mut()
        .position(TestServer::is_running)
        .context("no broker left")?;
    let mut reader = client_v4(
        c.brokers[survivor].tcp_port(),
        "carol",
        &pw("carol"),
        "carol-reader",
    )
    .await?;
    reader.subscribe_own().await?;
    let (stored, head) = read_whole_room(&mut reader, load.room).await?;
    for (id, seq) in &echoed {
        assert_eq!(stored.get(id), Some(seq), "echoed {id} kept its seq {seq}");
    }
    if echoed.len() < 30 {
        bail!("too few sends to test anything: {}", echoed.len());
    }
    eprintln!(
        "{}: {} echoed, head {head}, gap-free, no duplicate",
        load.room,
        echoed.len()
    );
    Ok(())
}

/// A room all senders and the reader are members of.
async fn load_room(c: &Cluster, room: &str) -> Result<()> {
    let n = c.brokers.len();
    let mut alice = c.user(0, "alice", &format!("alice-{room}")).await?;
    let mut bob = c.user(1 % n, "bob", &format!("bob-{room}")).await?;
    let mut carol = c.user(2 % n, "carol", &format!("carol-{room}")).await?;
    let mut dave = c.user(2 % n, "dave", &format!("dave-{room}")).await?;
    group_room(&mut alice, room, &mut [&mut bob, &mut carol, &mut dave]).await?;
    Ok(())
}

/// kill -9 of a bridge under load, a broker's graceful stop (drained by
/// both bridges), then kill -9 of a broker: the clients retry
/// until echoed (and those of the dead broker move to another one and
/// catch up); nothing echoed is lost, no duplicate, no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_and_broker_kill_9_under_load() -> Result<()> {
    let Some(mut c) = Cluster::start(3, 2).await? else {
        return Ok(());
    };
    load_room(&c, "k1").await?;
    // bridge 0 dies and comes back
    let load = start_load(&c, "k1", &[("alice", 0), ("bob", 1)]).await;
    c.bridges[0].kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.bridges[0].start_again().await?;
    finish_load(&mut c, load).await?;
    // broker 2 stops gracefully (a rolling update): its clients are cut
    // off only after the bridges confirm every partition drained
    let load = start_load(&c, "k1", &[("alice", 0), ("dave", 2)]).await;
    c.brokers[2].terminate()?;
    c.brokers[2].wait_exit(Duration::from_secs(30)).await?;
    let log = c.brokers[2].log_tail();
    assert!(
        log.contains("drained: every accepted publish reached the bridge"),
        "broker 2 drained through both bridges:\n{log}"
    );
    finish_load(&mut c, load).await?;
    // broker 1 dies for good: bob moves to another broker and catches up
    let load = start_load(&c, "k1", &[("alice", 0), ("bob", 1)]).await;
    c.brokers[1].kill();
    finish_load(&mut c, load).await?;
    // a client that was away catches up with sync on the last broker
    let mut dave = c.user(0, "dave", "dave-late").await?;
    let r = dave.rpc("sync", json!({"rooms": {}})).await?;
    assert!(r.is_object(), "{r}");
    Ok(())
}

/// A bridge added (2 -> 3) and removed (3 -> 2) under load, one process at
/// a time as a rolling update does: no fork, no gap, nothing echoed lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_added_and_removed_under_load() -> Result<()> {
    let Some(mut c) = Cluster::start(2, 2).await? else {
        return Ok(());
    };
    load_room(&c, "s1").await?;
    let load = start_load(&c, "s1", &[("alice", 0), ("bob", 1)]).await;
    let third = c.bridge(2, 3).await?;
    c.bridges.push(third);
    c.rescale_bridge(0, 0, 3).await?;
    c.rescale_bridge(1, 1, 3).await?;
    finish_load(&mut c, load).await?;
    let load = start_load(&c, "s1", &[("alice", 1), ("bob", 0)]).await;
    c.bridges[2].terminate()?;
    c.bridges[2].wait_exit(Duration::from_secs(30)).await?;
    c.rescale_bridge(0, 0, 2).await?;
    c.rescale_bridge(1, 1, 2).await?;
    finish_load(&mut c, load).await?;
    Ok(())
}
