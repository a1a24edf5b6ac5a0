//! Bad input gets a stable error code, never a crash or a disconnect of others.

use anyhow::Result;
use serde_json::json;
use tests::{group_room, seq_of, TestServer, QUIET};

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_bad_request() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut a5 = srv.user_v5("alice", "alice-v5").await?;
    group_room(&mut alice, "r1", &mut []).await?;

    // malformed JSON (MQTT 5: the reply topic is a property)
    for payload in [&b"{not json"[..], b"", b"[1,2,3]", b"\"str\"", b"\xff\xfe"] {
        let m = a5.rpc_v5("history", payload.to_vec()).await?;
        let v = m.json();
        assert_eq!(v["ok"], false, "payload {payload:?}: {v}");
        assert_eq!(
            v["error"]["code"], "bad_request",
            "payload {payload:?}: {v}"
        );
    }
    // wrong types
    for (method, params) in [
        ("history", json!({"room": 5})),
        ("history", json!({"room": "r1", "limit": "ten"})),
        ("history", json!({"room": "r1", "limit": 0})),
        ("history", json!({"room": "r1", "limit": 1001})),
        ("history", json!({"room": "r1", "before": -1})),
        ("history", json!({"room": ["r1"]})),
        ("sync", json!({"rooms": "r1"})),
        ("sync", json!({"rooms": {"r1": "x"}})),
        ("rooms.create", json!({"kind": "bogus", "members": []})),
        ("rooms.create", json!({"kind": "group", "members": "bob"})),
        (
            "rooms.create",
            json!({"room": "bad/id", "kind": "group", "members": []}),
        ),
        ("rooms.join", json!({})),
        ("read", json!({"room": "r1", "seq": "1"})),
    ] {
        let code = alice.rpc_err(method, params.clone()).await?;
        assert_eq!(code, "bad_request", "{method} {params}");
    }
    // unknown method
    for method in ["nope", "rooms.nope", "history.x"] {
        let code = alice.rpc_err(method, json!({})).await?;
        assert_eq!(code, "bad_request", "unknown method {method}");
    }
    let m = a5.rpc_v5("does.not.exist", b"{}".to_vec()).await?;
    assert_eq!(m.json()["error"]["code"], "bad_request", "{}", m.json());
    // not_found
    let code = alice
        .rpc_err("rooms.join", json!({"room": "no-such-room"}))
        .await?;
    assert!(
        code == "not_found" || code == "forbidden",
        "join of a missing room: {code}"
    );
    // error messages carry no internals
    let r = alice.rpc_raw("history", json!({"room": 5})).await?;
    let msg = r["error"]["message"].as_str().unwrap_or("");
    assert!(
        !msg.contains("src/") && !msg.contains("panicked"),
        "message leaks internals: {msg}"
    );
    // ... and name the offending field
    let r = alice
        .rpc_raw("history", json!({"room": "r1", "limit": "ten"}))
        .await?;
    assert_eq!(
        r["error"]["message"], "limit: invalid type: string \"ten\", expected u64",
        "{r}"
    );

    // still serving
    alice.subscribe_ok("chat/rooms/r1/events").await?;
    alice.send("r1", "ok", "fine").await?;
    alice.recv_msg("r1", "alice", "ok").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_sends_go_to_inbox() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    group_room(&mut alice, "r1", &mut []).await?;
    alice.subscribe_ok("chat/rooms/r1/events").await?;
    let head = alice.head("r1").await?;

    // not a member
    bob.send("r1", "b1", "let me in").await?;
    let e = bob
        .recv_inbox("not_member error", |v| {
            v["type"] == "error" && v["msg_id"] == "b1"
        })
        .await?;
    assert_eq!(e["code"], "not_member", "{e}");
    assert_eq!(e["room"], "r1", "{e}");
    assert!(e["message"].is_string(), "{e}");
    // malformed send payloads
    for (i, payload) in [
        &b"{oops"[..],
        b"{\"body\": 5, \"msg_id\": \"x1\"}",
        b"{\"body\": \"no id\"}",
    ]
    .iter()
    .enumerate()
    {
        alice
            .publish_raw("chat/rooms/r1/send/alice", payload.to_vec())
            .await?;
        let e = alice
            .recv_inbox(&format!("bad_request for malformed send #{i}"), |v| {
                v["type"] == "error"
            })
            .await?;
        assert_eq!(e["code"], "bad_request", "malformed send {payload:?}: {e}");
    }
    // body over 16 KiB
    let big = "x".repeat(17 * 1024);
    alice.send("r1", "big", &big).await?;
    let e = alice
        .recv_inbox("too_large for a 17 KiB body", |v| {
            v["type"] == "error" && v["msg_id"] == "big"
        })
        .await?;
    assert_eq!(e["code"], "too_large", "{e}");
    // nothing of that was stored
    alice.send("r1", "good", "ok").await?;
    let ev = alice.recv_msg("r1", "alice", "good").await?;
    assert_eq!(seq_of(&ev), head + 1, "refused sends stored nothing: {ev}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_payload_does_not_hurt_others() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    group_room(&mut alice, "r1", &mut [&mut bob]).await?;
    bob.subscribe_ok("chat/rooms/r1/events").await?;
    alice.send("r1", "before", "stored").await?;
    let before = bob.recv_msg("r1", "alice", "before").await?;

    // 100 KiB request: either too_large on the reply topic or alice's connection is closed
    let pad = "p".repeat(100 * 1024);
    let reply = alice.reply_topic();
    alice
        .publish_json(
            "chat/rpc/alice/history",
            &json!({"room": "r1", "reply": reply, "corr": "huge", "pad": pad}),
        )
        .await?;
    match alice
        .recv_until("too_large reply", tests::TIMEOUT, |m| m.topic == reply)
        .await
    {
        Ok(m) => assert_eq!(m.json()["error"]["code"], "too_large", "{}", m.json()),
        Err(e) => assert!(
            alice.is_closed().is_some(),
            "neither a too_large reply nor a closed connection: {e:#}"
        ),
    }
    // 100 KiB send
    let alice2 = srv.user_v4("alice", "alice-2").await?;
    alice2.send("r1", "huge", &"y".repeat(100 * 1024)).await?;
    bob.expect_none("event for the oversize send", QUIET, |m| {
        m.json()["msg_id"] == "huge"
    })
    .await?;

    // bob unaffected, data intact
    assert_eq!(bob.is_closed(), None, "bob stays connected");
    let h = bob.rpc("history", json!({"room": "r1"})).await?;
    let events = h["events"].as_array().cloned().unwrap_or_default();
    assert!(
        events.contains(&before),
        "earlier message still stored: {h}"
    );
    bob.send("r1", "after", "still works").await?;
    let e = bob.recv_msg("r1", "bob", "after").await?;
    assert_eq!(seq_of(&e), seq_of(&before) + 1, "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn send_rate_limit_refuses_with_rate_limited() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-1").await?;
    group_room(&mut alice, "r1", &mut []).await?;
    alice.subscribe_ok("chat/rooms/r1/events").await?;
    let head = alice.head("r1").await?;
    for i in 0..100 {
        alice.send("r1", &format!("f{i}"), "flood").await?;
    }
    let e = alice
        .recv_inbox("rate_limited error", |v| v["type"] == "error")
        .await?;
    assert_eq!(e["code"], "rate_limited", "{e}");
    // what was accepted is gap-free
    tokio::time::sleep(QUIET).await;
    let h = alice
        .rpc(
            "history",
            json!({"room": "r1", "after": head, "limit": 1000}),
        )
        .await?;
    let seqs: Vec<u64> = h["events"]
        .as_array()
        .map(|a| a.iter().map(seq_of).collect())
        .unwrap_or_default();
    assert!(
        !seqs.is_empty() && seqs.len() < 100,
        "some but not all stored: {}",
        seqs.len()
    );
    assert_eq!(
        seqs,
        ((head + 1)..=(head + seqs.len() as u64)).collect::<Vec<_>>()
    );
    Ok(())
}

/// A client may send SUBSCRIBE right behind CONNECT without waiting for
/// CONNACK; when both arrive in one read, the SUBSCRIBE is answered at once,
/// not when the client next sends something (here: never, keep-alive 60 s).
#[tokio::test(flavor = "multi_thread")]
async fn subscribe_in_the_same_segment_as_connect_is_answered() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = TestServer::start().await?;
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }
    fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        assert!(body.len() < 128);
        let mut p = vec![first, body.len() as u8];
        p.extend_from_slice(body);
        p
    }
    let mut connect = Vec::new();
    string(&mut connect, b"MQTT");
    connect.extend_from_slice(&[4, 0xC2, 0, 60]); // 3.1.1, user+password+clean, keep-alive 60 s
    string(&mut connect, b"alice-pipelined");
    string(&mut connect, b"alice");
    string(&mut connect, tests::pw("alice").as_bytes());
    let mut subscribe = vec![0, 7]; // packet id 7
    string(&mut subscribe, b"chat/users/alice/inbox");
    subscribe.push(1);
    let mut both = packet(0x10, &connect);
    both.extend(packet(0x82, &subscribe));

    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", srv.tcp_port())).await?;
    s.set_nodelay(true)?;
    s.write_all(&both).await?;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    // CONNACK (4 bytes) then SUBACK (5 bytes)
    while got.len() < 9 {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .map_err(|_| anyhow::anyhow!("no SUBACK within 5 s; got {got:02x?}"))??;
        anyhow::ensure!(n > 0, "closed; got {got:02x?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(&got[..4], &[0x20, 2, 0, 0], "CONNACK accepted: {got:02x?}");
    assert_eq!(
        &got[4..8],
        &[0x90, 3, 0, 7],
        "SUBACK for packet 7: {got:02x?}"
    );
    assert!(got[8] <= 1, "inbox subscription granted: {got:02x?}");
    Ok(())
}
