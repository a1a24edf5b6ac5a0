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
