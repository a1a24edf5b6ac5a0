//! Presence (`chat/presence/{user}`): a subscriber gets the user's current
//! state at once as a retained message, then every change live; only users
//! who share a room may subscribe. The state is the broker's own (not a
//! rumqttd retained message, see `broker/src/presence.rs`), so this is
//! checked with a client nobody here wrote (mosquitto_sub prints the retain
//! flag) as well as with rumqttc.

use anyhow::{bail, Result};
use serde_json::Value;
use std::time::Duration;
use tests::{group_room, TestServer, TIMEOUT};

/// One message of `chat/presence/{of}` as `user` sees it with mosquitto_sub:
/// (retain flag, payload).
async fn mosquitto_presence(port: u16, user: &str, of: &str) -> Result<(bool, Value)> {
    let out = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv311"])
        .args([
            "-u",
            user,
            "-P",
            &tests::pw(user),
            "-i",
            &format!("{user}-mosq"),
        ])
        .args(["-t", &format!("chat/presence/{of}"), "-C", "1", "-W", "5"])
        .args(["-F", "%r %p"])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let Some((flag, payload)) = text.split_once(' ') else {
        bail!(
            "mosquitto_sub printed {text:?} ({}; stderr {})",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    Ok((flag == "1", serde_json::from_str(payload)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_retained_then_live() -> Result<()> {
    if !tests::have("mosquitto_sub") {
        eprintln!("SKIPPED presence_is_retained_then_live: needs mosquitto_sub (apt install mosquitto-clients)");
        return Ok(());
    }
    let srv = TestServer::start().await?;
    let port = srv.tcp_port();
    let mut alice = srv.user_v4("alice", "alice-p").await?;
    let mut bob = srv.user_v4("bob", "bob-p").await?;
    group_room(&mut alice, "pr", &mut [&mut bob]).await?;

    // a later subscriber gets the current state, flagged retained
    let (retained, v) = mosquitto_presence(port, "bob", "alice").await?;
    assert!(
        retained,
        "the current presence comes as a retained message: {v}"
    );
    assert_eq!(v["online"], true, "{v}");
    assert!(v["ts"].as_u64().is_some(), "{v}");

    // live: bob watches, alice goes away
    assert!(bob.subscribe("chat/presence/alice").await?);
    let first = bob
        .recv_until("alice's current presence", TIMEOUT, |m| {
            m.topic == "chat/presence/alice"
        })
        .await?;
    assert_eq!(first.json()["online"], true);
    alice.disconnect().await;
    drop(alice);
    let gone = bob
        .recv_until("alice going offline", TIMEOUT, |m| {
            m.topic == "chat/presence/alice" && m.json()["online"] == false
        })
        .await?;
    assert!(gone.json()["ts"].as_u64() >= first.json()["ts"].as_u64());

    // and the new state is what a later subscriber gets
    let (retained, v) = mosquitto_presence(port, "bob", "alice").await?;
    assert!(retained && v["online"] == false, "offline, retained: {v}");

    // someone who shares no room with alice gets nothing (refused SUBACK)
    let mut carol = srv.user_v4("carol", "carol-p").await?;
    assert!(
        !carol.subscribe("chat/presence/alice").await?,
        "carol shares no room with alice"
    );
    carol
        .expect_none("alice's presence", Duration::from_secs(1), |m| {
            m.topic.starts_with("chat/presence/")
        })
        .await?;
    Ok(())
}

/// After a restart the broker has loaded nobody's rooms: a subscription to
/// the presence of a user one shares a room with is still allowed (the
/// broker finds the shared room in the store), and the presence comes at
/// the subscription's QoS 1 (checked with mosquitto_sub, which prints it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_after_a_restart_at_qos_1() -> Result<()> {
    if !tests::have("mosquitto_sub") {
        eprintln!("SKIPPED presence_after_a_restart_at_qos_1: needs mosquitto_sub (apt install mosquitto-clients)");
        return Ok(());
    }
    let mut srv = TestServer::start().await?;
    {
        let mut alice = srv.user_v4("alice", "alice-r").await?;
        let mut bob = srv.user_v4("bob", "bob-r").await?;
        group_room(&mut alice, "pr-restart", &mut [&mut bob]).await?;
    }
    srv.restart().await?;
    let alice = srv.user_v4("alice", "alice-r2").await?;
    // two messages: the current state, then alice leaving
    let watch = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &srv.tcp_port().to_string()])
        .args([
            "-V",
            "mqttv311",
            "-u",
            "bob",
            "-P",
            &tests::pw("bob"),
            "-i",
            "bob-mosq-r",
        ])
        .args(["-t", "chat/presence/alice", "-q", "1", "-C", "2", "-W", "8"])
        .args(["-F", "%q %r %p"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    alice.disconnect().await;
    drop(alice);
    let out = watch.wait_with_output().await?;
    let all = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut lines = all.lines();
    let text = lines.next().unwrap_or_default().to_owned();
    let live = lines.next().unwrap_or_default().to_owned();
    assert!(
        live.starts_with("1 0 ") && live.contains("\"online\":false"),
        "the change comes live at QoS 1, not retained: {all:?}"
    );
    let mut parts = text.splitn(3, ' ');
    let (qos, retained, payload) = (parts.next(), parts.next(), parts.next());
    let v: Value = serde_json::from_str(payload.unwrap_or("null"))?;
    assert_eq!(
        v["online"],
        true,
        "bob may watch alice after a restart: {text:?} ({}; {})",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        retained,
        Some("1"),
        "the current state, flagged retained: {text:?}"
    );
    assert_eq!(
        qos,
        Some("1"),
        "delivered at the subscription's QoS 1: {text:?}"
    );
    // somebody who shares no room with alice is still refused
    let out = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &srv.tcp_port().to_string(),
            "-V",
            "mqttv311",
        ])
        .args([
            "-u",
            "carol",
            "-P",
            &tests::pw("carol"),
            "-i",
            "carol-mosq-r",
        ])
        .args(["-t", "chat/presence/alice", "-q", "1", "-C", "1", "-W", "2"])
        .args(["-F", "%p"])
        .output()
        .await?;
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "carol shares no room with alice: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

/// A channel shares no presence: two members of a channel (which may have
/// thousands) cannot watch each other through it, while a group does
/// allow it. Presence is never fanned out to a large channel's members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_shares_no_presence() -> Result<()> {
    let srv = TestServer::start().await?;
    let mut alice = srv.user_v4("alice", "alice-ch").await?;
    let mut bob = srv.user_v4("bob", "bob-ch").await?;
    alice
        .rpc(
            "rooms.create",
            serde_json::json!({"room": "big", "kind": "channel", "title": "everyone"}),
        )
        .await?;
    bob.rpc("rooms.join", serde_json::json!({"room": "big"}))
        .await?;
    assert!(
        !bob.subscribe("chat/presence/alice").await?,
        "a channel in common does not share presence"
    );
    group_room(&mut alice, "small", &mut [&mut bob]).await?;
    assert!(
        bob.subscribe("chat/presence/alice").await?,
        "a group in common does"
    );
    let m = bob
        .recv_until("alice's presence", TIMEOUT, |m| {
            m.topic == "chat/presence/alice"
        })
        .await?;
    assert_eq!(m.json()["online"], true);
    Ok(())
}
