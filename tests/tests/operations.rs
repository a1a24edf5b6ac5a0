//! Operations: `/metrics`, `/healthz`, `/readyz`, configuration errors, and
//! the graceful shutdown on SIGTERM (nothing acknowledged is lost).

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tests::{group_room, http_get, metric, pw, send_stream, seq_of, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness() -> Result<()> {
    let srv = TestServer::start().await?;
    assert_eq!(srv.http_get("/healthz").await?, (200, "ok\n".into()));
    let (code, body) = srv.http_get("/readyz").await?;
    assert_eq!(
        (code, body.as_str()),
        (200, "ready\n"),
        "ready once started"
    );
    assert_eq!(srv.http_get("/nope").await?.0, 404);

    // a refused login, a refused subscription, a send, a refused send, a history request
    let bad = tests::client_v4(srv.tcp_port(), "alice", "wrong", "bad-1").await;
    assert!(bad.is_err(), "a wrong password is refused");
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    let mut mallory = srv.user_v4("mallory", "mallory-1").await?;
    group_room(&mut alice, "secret-room-4711", &mut [&mut bob]).await?;
    assert!(
        !mallory
            .subscribe("chat/rooms/secret-room-4711/events")
            .await?,
        "a non-member cannot subscribe"
    );
    alice
        .subscribe_ok("chat/rooms/secret-room-4711/events")
        .await?;
    alice.send("secret-room-4711", "m1", "hello").await?;
    alice.recv_msg("secret-room-4711", "alice", "m1").await?;
    mallory
        .publish_json(
            "chat/rpc/mallory/history",
            &json!({"room": "secret-room-4711", "reply": mallory.reply_topic()}),
        )
        .await?;
    let err = mallory
        .rpc_err("history", json!({"room": "secret-room-4711"}))
        .await?;
    assert_eq!(err, "not_member");
    alice
        .rpc("history", json!({"room": "secret-room-4711", "limit": 5}))
        .await?;

    let (code, m) = srv.http_get("/metrics").await?;
    assert_eq!(code, 200);
    let at_least = |name: &str, min: f64| {
        let v = metric(&m, name);
        assert!(v >= min, "{name} = {v}, want >= {min}\n{m}");
    };
    at_least("chatmq_connections", 3.0);
    at_least("chatmq_connections_opened_total{listener=\"tcp\"}", 4.0);
    at_least(
        "chatmq_auth_failures_total{reason=\"bad_credentials\"}",
        1.0,
    );
    at_least("chatmq_connections_refused_total{reason=\"auth\"}", 1.0);
    at_least(
        "chatmq_acl_denials_total{action=\"subscribe\",rule=\"not_member\"}",
        1.0,
    );
    at_least("chatmq_publishes_in_total", 1.0);
    at_least("chatmq_publishes_out_total", 1.0);
    // the room was created with an event, alice's send is another
    at_least("chatmq_events_persisted_total", 2.0);
    at_least("chatmq_store_write_seconds_count", 1.0);
    at_least("chatmq_store_write_batch_size_count", 1.0);
    at_least("chatmq_request_seconds_count{method=\"history\"}", 2.0);
    at_least("chatmq_errors_total{code=\"not_member\"}", 1.0);
    at_least("chatmq_bridge_connected", 1.0);
    at_least("chatmq_bridge_received_total{kind=\"send\"}", 1.0);
    // the router's preallocated queues are mapped on their own, none refused
    at_least("chatmq_alloc_mapped_blocks", 1.0);
    assert_eq!(metric(&m, "chatmq_alloc_fallback_blocks"), 0.0);
    assert_eq!(metric(&m, "chatmq_alloc_unmap_failed"), 0.0);
    assert_eq!(metric(&m, "chatmq_rumqttd_cursor_jumps_total"), 0.0);
    assert!(
        m.contains("chatmq_rumqttd_cursor_jumps_total 0"),
        "cursor jumps are exported even at 0"
    );
    for secret in ["secret-room-4711", "alice", "mallory"] {
        assert!(
            !m.contains(secret),
            "no room or user ids in metrics: {secret}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_names_the_key_and_exits_64() -> Result<()> {
    let bin = tests::chatmq_bin()?;
    let dir = tempfile::tempdir()?;
    let out = tokio::process::Command::new(&bin)
        .env("CHAT__BROKER__LIMITS__MAX_CONNECTIONS", "lots")
        .current_dir(dir.path())
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(64), "exit code of a bad config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broker.limits.max_connections"),
        "the message names the key: {err}"
    );
    let generated = tokio::process::Command::new(&bin)
        .arg("generate-config")
        .output()
        .await?;
    let text = String::from_utf8(generated.stdout)?;
    assert!(text.contains("[server]") && text.contains("grace_period_ms"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_loses_nothing_acknowledged() -> Result<()> {
    let mut srv = TestServer::builder()
        // the broker's per-connection publish rate (200/s) stays, so the
        // bridge keeps up and the drain has a small backlog to take in; the
        // per-room send limit is lifted so every send is stored
        .toml("[bridge]\nsends_per_sec = 100000.0\nsends_burst = 100000.0\n")
        .start()
        .await?;
    let mut alice = srv.user_v4("alice", "alice-a").await?;
    let mut bob = srv.user_v4("bob", "bob-a").await?;
    group_room(&mut alice, "st1", &mut [&mut bob]).await?;
    bob.subscribe_ok("chat/rooms/st1/events").await?;
    let port = srv.tcp_port();
    let senders = [
        // streams until the server goes away: what was acknowledged is the result
        tokio::spawn(send_stream(
            port,
            "alice",
            "st1",
            Arc::new(AtomicBool::new(false)),
        )),
        tokio::spawn(send_stream(
            port,
            "bob",
            "st1",
            Arc::new(AtomicBool::new(false)),
        )),
    ];
    // let the stream run, collecting what bob sees echoed; then SIGTERM, and
    // keep collecting until the stream goes quiet while the server drains
    let mut echoed: Vec<(u64, String)> = Vec::new();
    let started = tokio::time::Instant::now();
    let mut terminated = false;
    loop {
        let got = bob
            .recv_until("an event", Duration::from_millis(500), |m| {
                m.topic == "chat/rooms/st1/events"
            })
            .await;
        match got {
            Ok(m) => {
                let v = m.json();
                if v["type"] == "message" {
                    echoed.push((seq_of(&v), v["msg_id"].as_str().unwrap_or("").to_owned()));
                }
            }
            Err(_) if terminated => break,
            Err(_) => {}
        }
        if !terminated && started.elapsed() > Duration::from_millis(1500) {
            srv.terminate()?;
            terminated = true;
        }
    }
    let status = srv.wait_exit(Duration::from_secs(20)).await?;
    assert!(status.success(), "graceful exit: {status}");
    let mut acked = BTreeSet::new();
    for s in senders {
        acked.extend(s.await.context("sender task")??);
    }
    let log = srv.log_tail();
    assert!(
        log.contains("drained: every accepted publish reached the bridge"),
        "the drain handshake completed:\n{log}"
    );
    if acked.len() < 50 || echoed.len() < 50 {
        bail!(
            "the stream was too slow to test anything: {} acked, {} echoed",
            acked.len(),
            echoed.len()
        );
    }

    srv.start_again().await?;
    let mut carol_view = srv.user_v4("alice", "alice-b").await?;
    let mut stored: HashMap<String, u64> = HashMap::new();
    let mut after = 0u64;
    let head = loop {
        let page = carol_view
            .rpc(
                "history",
                json!({"room": "st1", "after": after, "limit": 1000}),
            )
            .await?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            let seq = seq_of(e);
            assert_eq!(seq, after + 1, "gap-free after restart");
            after = seq;
            if let Some(id) = e["msg_id"].as_str() {
                assert!(
                    stored.insert(id.to_owned(), seq).is_none(),
                    "no duplicate of {id}"
                );
            }
        }
        if events.is_empty() || page["has_more"] != json!(true) {
            break page["head"].as_u64().unwrap_or(0);
        }
    };
    assert_eq!(after, head, "history reaches the head");
    for (seq, id) in &echoed {
        assert_eq!(stored.get(id), Some(seq), "echoed {id} at {seq} survives");
    }
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged sends lost: {:?}",
        lost.len(),
        acked.len(),
        lost.iter().take(10).collect::<Vec<_>>()
    );
    Ok(())
}

/// A broker running apart whose bridge is gone: on SIGTERM it reports not
/// ready, waits for the drain as long as the grace period allows, and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_draining_and_the_grace_period_bounds_shutdown() -> Result<()> {
    let mut srv = TestServer::builder()
        .mode("broker")
        .grace_period_ms(3000)
        .start()
        .await?;
    let port = srv.http_port();
    assert_eq!(http_get(port, "/readyz").await?.0, 200);
    let started = std::time::Instant::now();
    srv.terminate()?;
    let mut saw_503 = false;
    for _ in 0..100 {
        match http_get(port, "/readyz").await {
            Ok((503, body)) => {
                assert!(body.contains("shutting down"), "{body}");
                saw_503 = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(_) => break,
        }
    }
    assert!(saw_503, "/readyz answered 503 during the drain");
    let status = srv.wait_exit(Duration::from_secs(20)).await?;
    assert!(status.success(), "exit after the grace period: {status}");
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "it waited for the bridge's drain answer"
    );
    assert!(
        srv.log_tail().contains("grace period over"),
        "the missed drain is logged:\n{}",
        srv.log_tail()
    );
    assert!(
        http_get(port, "/readyz").await.is_err(),
        "the endpoint is gone"
    );
    Ok(())
}

/// With `shutdown_spread_ms`, a SIGTERM closes users' connections spread
/// over that time (each at a point given by its client id), not all at
/// once: in a cluster they reconnect to the other brokers gradually. Every
/// connection still ends, the drain follows, and the exit is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_leave_spread_over_the_shutdown_spread() -> Result<()> {
    let mut srv = TestServer::builder()
        .broker_toml("[broker.limits]\nshutdown_spread_ms = 3000\n")
        .grace_period_ms(8000)
        .start()
        .await?;
    let mut clients = Vec::new();
    for i in 0..12 {
        clients.push(srv.user_v4("alice", &format!("spread-{i}")).await?);
    }
    let started = std::time::Instant::now();
    srv.terminate()?;
    let mut closed_at: Vec<Option<Duration>> = vec![None; clients.len()];
    while closed_at.iter().any(Option::is_none) && started.elapsed() < Duration::from_secs(15) {
        for (c, at) in clients.iter_mut().zip(closed_at.iter_mut()) {
            if at.is_none() && c.is_closed().is_some() {
                *at = Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let times: Vec<Duration> = closed_at.iter().flatten().copied().collect();
    assert_eq!(
        times.len(),
        clients.len(),
        "every connection ended: {closed_at:?}"
    );
    let (first, last) = (times.iter().min(), times.iter().max());
    let span = last.zip(first).map(|(l, f)| *l - *f).unwrap_or_default();
    assert!(
        span >= Duration::from_millis(1000),
        "closes spread over the 3 s, not all at once: {times:?}"
    );
    let status = srv.wait_exit(Duration::from_secs(20)).await?;
    assert!(status.success(), "a clean exit: {status}");
    Ok(())
}

/// rumqttd's cursor jump (a subscriber fell further behind than its filter's
/// log holds, and lost messages) is counted in
/// `chatmq_rumqttd_cursor_jumps_total`: the loss is visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_jump_is_counted() -> Result<()> {
    let srv = TestServer::builder()
        .toml("[broker.router]\nsegment_bytes = 1024\nsegments = 2\n")
        .start()
        .await?;
    let port = srv.tcp_port();
    let connect = |clean: bool| {
        let mut o = rumqttc::MqttOptions::new("jumper", "127.0.0.1", port);
        o.set_credentials("carol", pw("carol"));
        o.set_clean_session(clean);
        rumqttc::AsyncClient::new(o, 100)
    };
    async fn until_suback(el: &mut rumqttc::EventLoop) -> Result<()> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), el.poll()).await?? {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => return Ok(()),
                _ => continue,
            }
        }
    }
    // a persistent session subscribes, then goes away
    let (c, mut el) = connect(false);
    c.subscribe("devices/d1/telemetry", rumqttc::QoS::AtLeastOnce)
        .await?;
    until_suback(&mut el).await?;
    c.disconnect().await?;
    while el.poll().await.is_ok() {}
    // 40 KiB published while it is away, into a 2 KiB log
    let pubr = srv.user_v4("dave", "dave-pub").await?;
    for i in 0..200 {
        pubr.publish_raw("devices/d1/telemetry", format!("{i:0>200}"))
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // it comes back and reads on from where it was
    let (_c, mut el) = connect(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut jumps = 0.0;
    while tokio::time::Instant::now() < deadline && jumps == 0.0 {
        let _ = tokio::time::timeout(Duration::from_millis(100), el.poll()).await;
        jumps = metric(
            &srv.http_get("/metrics").await?.1,
            "chatmq_rumqttd_cursor_jumps_total",
        );
    }
    assert!(jumps >= 1.0, "the cursor jump is counted");
    assert!(
        srv.log_tail().contains("cursor jump"),
        "and logged at ERROR:\n{}",
        srv.log_tail()
    );
    Ok(())
}
