//! The broker's shared publisher: one router link through which users' QoS
//! 0 and 1 publishes enter the router, so that a chat client needs no
//! router link of its own. Its reply topic, inbox and rooms' streams come
//! from `crate::direct`; with both, a chat connection costs only its
//! session, not the ~18 KiB of queues rumqttd 0.20 preallocates per link,
//! and its connect never waits for the router's one thread
//! (docs/architecture.md, "A chat connection is not a router link").

use crate::link::{self, LinkSender};
use crate::router::RouterHandle;
use std::sync::Arc;
use tracing::warn;

/// Opens the link and spawns the task that takes the router's
/// acknowledgements of what it publishes; returns its sending half.
pub(crate) async fn start(router: &RouterHandle) -> Result<Arc<LinkSender>, String> {
    // '@' is escaped in clients' router ids: no client can take this link over
    let (tx, mut rx) = link::open(router, "chatmq@publish", Vec::new(), None).await?;
    tokio::spawn(async move {
        let mut out = Vec::new();
        loop {
            let seen = rx.recv(1024, &mut out).await;
            out.clear();
            if seen.closed {
                warn!("the router dropped the broker's shared publisher");
                return;
            }
        }
    });
    Ok(tx)
}
