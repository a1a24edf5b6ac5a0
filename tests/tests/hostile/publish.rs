//! See `hostile.rs`. Retained messages (typing, presence, open topics) and
//! the store reads a client can cause by naming rooms that do not exist.

use anyhow::{anyhow, bail, Result};
use serde_json::json;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tests::*;

#[path = "publish/raw.rs"]
mod raw;
use raw::Raw;

const TYPING: &str = "chat/rooms/r1/typing/alice";

/// alice and bob in room `r1`; bob's helper client watches its events.
async fn room_r1(srv: &TestServer) -> Result<(Client, Client)> {
    let mut alice = srv.user_v4("alice", "alice-rpc").await?;
    let mut bob = srv.user_v4("bob", "bob-rpc").await?;
    group_room(&mut alice, "r1", &mut [&mut bob]).await?;
    bob.subscribe_ok("chat/rooms/r1/events").await?;
    Ok((alice, bob))
}

/// The innocent: bob still gets alice's message, carol still gets replies.
async fn others_served(srv: &TestServer, alice: &Client, bob: &mut Client, id: &str) -> Result<()> {
    alice.send("r1", id, "still here").await?;
    bob.recv_msg("r1", "alice", id).await?;
    let mut carol = srv.user_v4("carol", &format!("carol-{id}")).await?;
    let r = carol.rpc("rooms.list", json!({})).await?;
    assert!(r["rooms"].is_array(), "{r}");
    Ok(())
}

/// A later subscriber to r1's typing subscribes (granted QoS 0), then alice
/// types live: nothing may arrive before that live message, which arrives
/// at QoS 0. A retained message would come first (rumqttd sends retained
/// messages before the log), so there is no waiting for something not to
/// happen.
async fn later_typing(srv: &TestServer, v5: bool, cid: &str) -> Result<()> {
    let port = srv.tcp_port();
    let mut later = Raw::connect(port, "bob", cid, v5, None).await?;
    let granted = later
        .subscribe(&[
            "chat/rooms/r1/typing/+",
            "chat/rooms/r1/events",
            "chat/rooms/elsewhere/events",
        ])
        .await?;
    let mut typist = Raw::connect(port, "alice", &format!("{cid}-live"), v5, None).await?;
    typist
        .publish(TYPING, r#"{"typing":false,"live":true}"#, 1, false)
        .await?;
    let mut got = later
        .until("alice's live typing", |g| g.text().contains("live"))
        .await?;
    let live = got.pop().ok_or_else(|| anyhow!("empty"))?;
    assert!(
        got.is_empty(),
        "no retained typing for a later subscriber: {got:?}"
    );
    assert_eq!(
        granted,
        vec![Some(0), Some(1), None],
        "typing is granted at QoS 0, events at 1, a foreign room refused"
    );
    assert_eq!(live.qos, 0, "typing is delivered at QoS 0: {live:?}");
    assert!(!live.retain, "{live:?}");
    Ok(())
}

async fn retained_typing(v5: bool) -> Result<()> {
    let srv = TestServer::start().await?;
    let (alice, mut bob) = room_r1(&srv).await?;
    let mut typist = Raw::connect(srv.tcp_port(), "alice", "alice-typ", v5, None).await?;
    for qos in [0, 1, 2] {
        typist
            .publish(TYPING, r#"{"typing":true,"sticky":true}"#, qos, true)
            .await?;
    }
    // the retain flag is stripped, the message itself still goes out
    later_typing(&srv, v5, "bob-later").await?;
    let (_, body) = srv.http_get("/metrics").await?;
    assert!(
        metric(&body, "chatmq_retain_stripped_total") >= 3.0,
        "{body}"
    );
    others_served(&srv, &alice, &mut bob, "m-typing").await
}

#[tokio::test(flavor = "multi_thread")]
async fn retained_typing_is_not_kept_v4() -> Result<()> {
    retained_typing(false).await
}

#[tokio::test(flavor = "multi_thread")]
async fn retained_typing_is_not_kept_v5() -> Result<()> {
    retained_typing(true).await
}

async fn mosquitto_pub(port: u16, version: &str, cid: &str, topic: &str, msg: &str) -> Result<()> {
    let args = [
        "-h",
        "127.0.0.1",
        "-V",
        version,
        "-q",
        "1",
        "-r",
        "-u",
        "alice",
        "-i",
        cid,
        "-t",
        topic,
        "-m",
        msg,
    ];
    let out = tokio::time::timeout(
        TIMEOUT,
        tokio::process::Command::new("mosquitto_pub")
            .args(args)
            .args(["-p", &port.to_string(), "-P", &pw("alice")])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("mosquitto_pub did not finish within {TIMEOUT:?}"))??;
    if !out.status.success() {
        bail!(
            "mosquitto_pub -V {version} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_pub_retained_typing_is_not_kept() -> Result<()> {
    if !on_path("mosquitto_pub") {
        println!("SKIPPED: mosquitto_pub not installed");
        return Ok(());
    }
    let srv = TestServer::start().await?;
    let (alice, mut bob) = room_r1(&srv).await?;
    let port = srv.tcp_port();
    mosquitto_pub(port, "mqttv311", "alice-mq4", TYPING, r#"{"typing":true}"#).await?;
    mosquitto_pub(port, "mqttv5", "alice-mq5", TYPING, r#"{"typing":true}"#).await?;
    later_typing(&srv, false, "bob-mq").await?;
    others_served(&srv, &alice, &mut bob, "m-mosq").await
}

#[tokio::test(flavor = "multi_thread")]
async fn retained_will_on_typing_is_not_kept() -> Result<()> {
    let srv = TestServer::start().await?;
    let (alice, mut bob) = room_r1(&srv).await?;
    let port = srv.tcp_port();
    let mut watcher = Raw::connect(port, "bob", "bob-watch", false, None).await?;
    watcher.subscribe(&["chat/rooms/r1/typing/+"]).await?;
    let will = (TYPING, r#"{"typing":true,"will":true}"#, true);
    let dying = Raw::connect(port, "alice", "alice-will", false, Some(will)).await?;
    drop(dying); // no DISCONNECT: the will is published
    watcher
        .until("alice's will", |g| g.text().contains("will"))
        .await?;
    later_typing(&srv, false, "bob-after-will").await?;
    others_served(&srv, &alice, &mut bob, "m-will").await
}

#[tokio::test(flavor = "multi_thread")]
async fn users_cannot_publish_presence() -> Result<()> {
    let srv = TestServer::start().await?;
    let (alice, mut bob) = room_r1(&srv).await?;
    let port = srv.tcp_port();
    let topic = "chat/presence/alice";
    for v5 in [false, true] {
        let mut forger = Raw::connect(port, "alice", &format!("alice-p{v5}"), v5, None).await?;
        let refused = if v5 { "NotAuthorized" } else { "Success" };
        let r = forger
            .publish(topic, r#"{"online":false,"forged":true}"#, 1, true)
            .await?;
        assert_eq!(r, refused, "v5 {v5}: a forged presence is refused");
        // an empty retained publish would clear the broker's presence
        assert_eq!(forger.publish(topic, "", 1, true).await?, refused);
    }
    let mut later = Raw::connect(port, "bob", "bob-presence", true, None).await?;
    assert_eq!(later.subscribe(&[topic]).await?, vec![Some(1)]);
    let got = later.until("alice's presence", |_| true).await?;
    let v: serde_json::Value = serde_json::from_slice(&got[0].payload)?;
    assert_eq!(v["online"], true, "the broker's retained presence: {v}");
    assert!(v.get("forged").is_none(), "{v}");
    others_served(&srv, &alice, &mut bob, "m-presence").await
}

/// Subscribes carol to `filter`, then alice publishes a live marker on
/// `marker`; returns `(topic, payload)` of the retained messages before it.
async fn retained_seen(
    srv: &TestServer,
    filter: &str,
    marker: &str,
) -> Result<Vec<(String, String)>> {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let port = srv.tcp_port();
    let mut carol = Raw::connect(port, "carol", &format!("carol-later-{n}"), false, None).await?;
    assert_eq!(carol.subscribe(&[filter]).await?, vec![Some(1)]);
    let mut alice = Raw::connect(port, "alice", &format!("alice-marker-{n}"), false, None).await?;
    alice.publish(marker, "marker", 1, false).await?;
    let mut got = carol.until("the marker", |g| g.topic == marker).await?;
    got.pop();
    for g in &got {
        assert!(
            g.retain,
            "only retained messages come before the marker: {g:?}"
        );
    }
    let mut v: Vec<(String, String)> = got
        .into_iter()
        .map(|g| (g.topic.clone(), g.text()))
        .collect();
    v.sort();
    Ok(v)
}

#[tokio::test(flavor = "multi_thread")]
async fn retained_on_open_topics_are_bounded_per_user() -> Result<()> {
    // the defaults: 32 retained messages per user
    let srv = TestServer::start().await?;
    let (alice, mut bob) = room_r1(&srv).await?;
    let port = srv.tcp_port();
    let mut a5 = Raw::connect(port, "alice", "alice-dev5", true, None).await?;
    let t = |i: &str| format!("dev/alice/{i}");
    for i in 0..32 {
        let r = a5
            .publish(&t(&i.to_string()), &format!("v{i}"), 1, true)
            .await?;
        assert_eq!(r, "Success", "retained #{i} is within the bound");
    }
    assert_eq!(
        a5.publish(&t("32"), "over", 1, true).await?,
        "QuotaExceeded"
    );
    // replacing one of one's own retained messages and clearing one are fine
    assert_eq!(a5.publish(&t("0"), "v0-new", 1, true).await?, "Success");
    assert_eq!(a5.publish(&t("1"), "", 1, true).await?, "Success");
    assert_eq!(a5.publish(&t("32"), "v32", 1, true).await?, "Success");
    assert_eq!(
        a5.publish(&t("33"), "over", 1, true).await?,
        "QuotaExceeded"
    );
    // 3.1.1 has no negative PUBACK: acknowledged and dropped
    let mut a4 = Raw::connect(port, "alice", "alice-dev4", false, None).await?;
    assert_eq!(a4.publish(&t("v4"), "over", 1, true).await?, "Success");
    // the bound is per user
    let mut b5 = Raw::connect(port, "bob", "bob-dev5", true, None).await?;
    assert_eq!(b5.publish("dev/bob/1", "bob's", 1, true).await?, "Success");

    let seen = retained_seen(&srv, "dev/alice/#", &t("marker")).await?;
    let mut want: Vec<(String, String)> = (2..=32)
        .map(|i| (t(&i.to_string()), format!("v{i}")))
        .collect();
    want.push((t("0"), "v0-new".into()));
    want.sort();
    assert_eq!(seen, want, "exactly the retained messages within the bound");
    let seen = retained_seen(&srv, "dev/bob/#", "dev/bob/marker").await?;
    assert_eq!(seen, vec![("dev/bob/1".to_string(), "bob's".to_string())]);

    let (_, body) = srv.http_get("/metrics").await?;
    assert_eq!(
        metric(&body, "chatmq_retained_refused_total"),
        3.0,
        "{body}"
    );
    assert_eq!(metric(&body, "chatmq_retained_messages"), 33.0, "{body}");
    others_served(&srv, &alice, &mut bob, "m-bound").await
}

#[tokio::test(flavor = "multi_thread")]
async fn retained_bytes_are_bounded_per_user() -> Result<()> {
    let srv = TestServer::builder()
        .toml("[broker.limits]\nretained_per_user = 10\nretained_bytes_per_user = 1000\n")
        .start()
        .await?;
    let (alice, mut bob) = room_r1(&srv).await?;
    let mut a5 = Raw::connect(srv.tcp_port(), "alice", "alice-bytes", true, None).await?;
    let big = "x".repeat(600);
    // topic and payload count: 11 + 600 bytes
    assert_eq!(a5.publish("dev/alice/a", &big, 1, true).await?, "Success");
    assert_eq!(
        a5.publish("dev/alice/b", &big, 1, true).await?,
        "QuotaExceeded"
    );
    assert_eq!(
        a5.publish("dev/alice/a", "small", 1, true).await?,
        "Success"
    );
    assert_eq!(a5.publish("dev/alice/b", &big, 1, true).await?, "Success");
    let seen = retained_seen(&srv, "dev/alice/#", "dev/alice/marker").await?;
    let want = vec![
        ("dev/alice/a".to_string(), "small".to_string()),
        ("dev/alice/b".to_string(), big.clone()),
    ];
    assert_eq!(seen, want);
    others_served(&srv, &alice, &mut bob, "m-bytes").await
}

#[tokio::test(flavor = "multi_thread")]
async fn retained_can_be_turned_off() -> Result<()> {
    let srv = TestServer::builder()
        .toml("[broker.limits]\nretained_per_user = 0\n")
        .start()
        .await?;
    let (alice, mut bob) = room_r1(&srv).await?;
    let port = srv.tcp_port();
    // a refused retained publish goes nowhere; a plain one is delivered
    let mut live = Raw::connect(port, "carol", "carol-live", false, None).await?;
    assert_eq!(live.subscribe(&["dev/alice/#"]).await?, vec![Some(1)]);
    let mut a5 = Raw::connect(port, "alice", "alice-off5", true, None).await?;
    assert_eq!(
        a5.publish("dev/alice/r", "kept?", 1, true).await?,
        "QuotaExceeded"
    );
    let mut a4 = Raw::connect(port, "alice", "alice-off4", false, None).await?;
    assert_eq!(
        a4.publish("dev/alice/r4", "kept?", 1, true).await?,
        "Success"
    );
    assert_eq!(
        a5.publish("dev/alice/plain", "plain", 1, false).await?,
        "Success"
    );
    let got = live
        .until("the plain publish", |g| g.text() == "plain")
        .await?;
    assert_eq!(
        got.len(),
        1,
        "refused retained publishes go nowhere: {got:?}"
    );
    let seen = retained_seen(&srv, "dev/alice/#", "dev/alice/marker").await?;
    assert!(seen.is_empty(), "nothing retained: {seen:?}");
    others_served(&srv, &alice, &mut bob, "m-off").await
}

async fn metrics_of(srv: &TestServer) -> Result<String> {
    let (status, body) = srv.http_get("/metrics").await?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    Ok(body)
}

fn loads(body: &str) -> f64 {
    ["found", "missing", "failed"]
        .iter()
        .map(|r| metric(body, &format!("chatmq_room_loads_total{{result=\"{r}\"}}")))
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_rooms_cost_bounded_store_loads() -> Result<()> {
    let mut srv = TestServer::builder()
        .toml("[broker.limits]\nroom_loads_per_sec = 1\nroom_miss_ttl_ms = 600000\n")
        .start()
        .await?;
    {
        let mut bob = srv.user_v4("bob", "bob-0").await?;
        group_room(&mut bob, "old", &mut []).await?;
    }
    // after a restart the broker learns `old` from the store on first use
    srv.restart().await?;
    let missing = r#"chatmq_room_loads_total{result="missing"}"#;
    let mut alice = srv.user_v4("alice", "alice-1").await?;

    // a miss costs one store read, then is remembered
    assert!(!alice.subscribe("chat/rooms/ghost/events").await?);
    assert_eq!(metric(&metrics_of(&srv).await?, missing), 1.0);
    for i in 0..100 {
        alice
            .publish_json("chat/rooms/ghost/typing/alice", &json!({"typing": true}))
            .await?;
        alice.send("ghost", &format!("g{i}"), "anyone?").await?;
    }
    for _ in 0..10 {
        // (the SUBACK also proves every publish before it was handled)
        assert!(!alice.subscribe("chat/rooms/ghost/events").await?);
    }
    let body = metrics_of(&srv).await?;
    assert_eq!(metric(&body, missing), 1.0, "one room, one read: {body}");
    assert!(
        metric(&body, "chatmq_room_misses_cached_total") >= 110.0,
        "{body}"
    );

    // a room created after its miss was remembered is usable at once
    assert!(!alice.subscribe("chat/rooms/later/events").await?);
    assert_eq!(metric(&metrics_of(&srv).await?, missing), 2.0);
    alice
        .rpc("rooms.create", json!({"room": "later", "kind": "group"}))
        .await?;
    alice.subscribe_ok("chat/rooms/later/events").await?;
    alice.send("later", "l1", "first").await?;
    alice.recv_msg("later", "alice", "l1").await?;

    // many different unknown rooms: loads follow the connection's rate
    let before = loads(&metrics_of(&srv).await?);
    let t0 = Instant::now();
    for i in 0..100 {
        let topic = format!("chat/rooms/ghost-{i}/typing/alice");
        alice.publish_json(&topic, &json!({"typing": true})).await?;
    }
    assert!(!alice.subscribe("chat/rooms/ghost-x/events").await?);
    let secs = t0.elapsed().as_secs_f64();
    let body = metrics_of(&srv).await?;
    let made = loads(&body) - before;
    // burst 2, then 1 per second
    assert!(
        made <= 2.0 + secs.ceil(),
        "{made} loads in {secs:.1} s: {body}"
    );
    assert!(
        metric(&body, "chatmq_room_loads_throttled_total") >= 1.0,
        "{body}"
    );

    // another connection has its own budget: bob's room loads and works
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    bob.subscribe_ok("chat/rooms/old/events").await?;
    bob.send("old", "o1", "still served").await?;
    bob.recv_msg("old", "bob", "o1").await?;
    let body = metrics_of(&srv).await?;
    assert!(
        metric(&body, r#"chatmq_room_loads_total{result="found"}"#) >= 1.0,
        "{body}"
    );
    Ok(())
}

/// A user over `publishes_per_sec` is slowed, not cut off, and not deaf:
/// while Bob's flood of typing waits its turn (a burst of 10, then 5 a
/// second), Alice's message reaches him at once; Alice, watching his
/// typing, has seen no more of it than the rate allows by then, and later
/// sees the end of it. Before, a throttled session slept with what it had
/// read of the flood (up to rumqttc's 100 in flight, ~18 s here) and
/// delivered nothing meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_publisher_still_receives() -> Result<()> {
    let srv = TestServer::builder()
        .broker_toml("limits = { publishes_per_sec = 5 }")
        .start()
        .await?;
    let (mut alice, mut bob) = room_r1(&srv).await?;
    alice.subscribe_ok("chat/rooms/r1/typing/+").await?;
    let flood = 110;
    let t0 = Instant::now();
    for n in 0..flood {
        bob.publish_json("chat/rooms/r1/typing/bob", &json!({"typing": true, "n": n}))
            .await?;
    }
    alice.send("r1", "m-throttled", "for the busy one").await?;
    bob.recv_msg("r1", "alice", "m-throttled").await?;
    // what of the flood Alice has by now, counted before the time is taken
    let is_flood = |m: &Msg| m.topic == "chat/rooms/r1/typing/bob";
    let mut seen = 0u32;
    while alice
        .recv_until("bob's typing", Duration::from_millis(20), is_flood)
        .await
        .is_ok()
    {
        seen += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    assert!(
        f64::from(seen) <= 10.0 + 5.0 * secs.ceil(),
        "{seen} of the flood passed in {secs:.1} s: not slowed"
    );
    assert!(
        seen < flood,
        "the message came before the flood was through"
    );
    // slowed, not dropped: the flood's last one arrives
    alice
        .recv_until("the flood's last typing", Duration::from_secs(90), |m| {
            is_flood(m) && m.json()["n"] == flood - 1
        })
        .await?;
    // every publish past the burst waited once; Alice's few did not
    let (_, body) = srv.http_get("/metrics").await?;
    let slowed = metric(&body, "chatmq_publishes_slowed_total");
    assert!(
        (f64::from(flood) - 11.0..=f64::from(flood)).contains(&slowed),
        "{slowed} publishes slowed: {body}"
    );
    others_served(&srv, &alice, &mut bob, "m-after-flood").await
}
