//! `chatmq::run` starts the whole server inside the caller's process: the
//! embedder's path (and a test's that needs no child process).

use anyhow::Result;
use serde_json::json;
use std::time::Duration;
use tests::{client_v4, seq_of};

#[tokio::test(flavor = "multi_thread")]
async fn run_serves_chat_in_process_and_stops_on_the_signal() -> Result<()> {
    let data = tempfile::tempdir()?;
    let mut settings =
        chatmq::settings::load(&[], std::iter::empty()).map_err(anyhow::Error::msg)?;
    settings.store.data_dir = data.path().to_path_buf();
    settings.broker.tcp = Some("127.0.0.1:0".parse()?);
    settings.broker.ws = None;
    settings.server.http = Some("127.0.0.1:0".parse()?);
    settings.server.grace_period_ms = 5_000;
    let listeners = chatmq::Listeners::bind(&settings).await?;
    let addrs = listeners.addrs();
    let tcp = addrs["tcp"].port();
    let http = addrs["http"].port();
    assert!(
        !addrs.contains_key("ws"),
        "no ws listener configured: {addrs:?}"
    );

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(chatmq::run(settings, listeners, async {
        let _ = stopped.await;
    }));

    // users are held at CONNECT until the bridge has subscribed, so the
    // first login works once the server is ready
    let mut alice = client_v4(tcp, "alice", "alice-pw", "alice-ip").await?;
    alice.subscribe_own().await?;
    let created = alice
        .rpc("rooms.create", json!({"room": "ip1", "kind": "group"}))
        .await?;
    assert_eq!(created["room"]["id"], "ip1", "{created}");
    alice.subscribe_ok("chat/rooms/ip1/events").await?;
    alice.send("ip1", "m1", "hello in-process").await?;
    let ev = alice.recv_msg("ip1", "alice", "m1").await?;
    assert!(seq_of(&ev) >= 1, "{ev}");
    let (code, _) = tests::http_get(http, "/readyz").await?;
    assert_eq!(code, 200, "ready while serving");

    stop.send(()).map_err(|_| anyhow::anyhow!("server gone"))?;
    tokio::time::timeout(Duration::from_secs(15), server).await???;
    // stopped means closed: the port no longer accepts
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", tcp))
            .await
            .is_err(),
        "MQTT port still open after run returned"
    );
    Ok(())
}
