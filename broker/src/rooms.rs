//! The broker's rooms link: one router link holding two filters, every
//! room's events and every room's receipts, whose deliveries are handed to
//! the sessions subscribed to them through `crate::direct`; and the shared
//! publisher, the same link's sending half, through which users' QoS 0 and
//! 1 publishes enter the router.
//!
//! With both, a chat client (its reply topic, inbox and rooms' streams,
//! its sends and requests) needs no router link of its own: it costs only
//! its session, not the ~18 KiB of queues rumqttd 0.20 preallocates per
//! link, and its connect never waits for the router's one thread
//! (docs/architecture.md, "A chat connection is not a router link").

use crate::direct::Direct;
use crate::link::{self, LinkSender};
use crate::metrics::BrokerMetrics;
use crate::router::RouterHandle;
use rumqttd::protocol::Publish;
use std::sync::Arc;
use tracing::warn;

/// Deliveries taken from the router at once (their acks go back as one event).
const BATCH: usize = 1024;

/// Opens the link, subscribes it and spawns the task that fans its
/// deliveries out; returns its sending half, the shared publisher.
pub(crate) async fn start(
    router: &RouterHandle,
    direct: Arc<Direct>,
    metrics: Arc<BrokerMetrics>,
) -> Result<Arc<LinkSender>, String> {
    // '@' is refused in clients' ids: no client can take this link over
    let filters = direct.room_filters().to_vec();
    let (tx, mut rx) = link::open(router, "chatmq@rooms", filters).await?;
    tokio::spawn(async move {
        let mut out = Vec::with_capacity(BATCH);
        loop {
            let seen = rx.recv(BATCH, &mut out).await;
            for d in out.drain(..) {
                // a room's streams are published by the bridge at QoS 1
                // (PROTOCOL.md), with no properties a client needs
                let p = Publish::new(d.topic, d.payload, false);
                let (sent, full) = direct.deliver(&p, &None);
                metrics.direct_deliveries.inc_by(sent as u64);
                if full > 0 {
                    metrics.direct_dropped.inc_by(full as u64);
                }
            }
            if seen.closed {
                warn!("the router dropped the broker's rooms link");
                return;
            }
        }
    });
    Ok(tx)
}
