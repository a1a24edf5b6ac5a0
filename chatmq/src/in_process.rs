//! The bridge of the all-in-one process, on a broker service link instead
//! of an MQTT connection (see `broker::link` for why): deliveries become
//! the bridge's [`Taken`] messages, its [`Out`] publishes become the link's
//! QoS 1 publishes. The chat logic is the same [`process`] as a bridge run
//! apart.

use async_trait::async_trait;
use broker::link::{Delivery, LinkSender, Outgoing};
use broker::Broker;
use chat_bridge::bridge::{filters, process, Outlet, Taken};
use chat_bridge::chat::{Chat, Out};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// The link's id: `@` is refused in clients' ids.
const LINK_ID: &str = "chatmq@bridge";

struct Link(Arc<LinkSender>);

#[async_trait]
impl Outlet for Link {
    async fn publish(&self, outs: Vec<Out>) {
        self.0
            .publish(outs.into_iter().map(|o| Outgoing {
                topic: o.topic,
                payload: o.payload,
                corr: o.corr,
            }))
            .await;
    }

    /// The link acks on receipt (see `broker::link::LinkReceiver::recv`).
    async fn ack(&self, _taken: &[Taken]) {}
}

fn taken(d: Delivery) -> Taken {
    Taken {
        topic: d.topic,
        payload: d.payload,
        response_topic: d.response_topic,
        corr: d.corr,
        qos: d.qos,
        pkid: d.pkid,
        origin: 0,
    }
}

/// Runs the in-process bridge until `shutdown` flips; `ready` is set once
/// its filters are subscribed. What was taken in is stored, published and
/// acked before it returns.
pub(crate) async fn run(
    broker: &Broker,
    batch: usize,
    chat: Arc<Chat>,
    mut shutdown: watch::Receiver<bool>,
    ready: watch::Sender<bool>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let prefix = broker.prefix().to_owned();
    let (sender, mut link) = broker
        .service_link(LINK_ID, filters(&prefix).into())
        .await?;
    let metrics = chat.metrics().clone();
    let (tx, rx) = mpsc::channel::<Taken>(batch * 2);
    let outlet = Arc::new(Link(sender.clone()));
    let worker = tokio::spawn(process(outlet as Arc<dyn Outlet>, chat, rx, batch, prefix));
    info!("bridge linked to the router in-process");
    Ok(tokio::spawn(async move {
        let mut got = Vec::new();
        'link: loop {
            let seen = tokio::select! {
                _ = shutdown.changed() => break,
                seen = link.recv(batch, &mut got) => seen,
            };
            if seen.subscribed {
                metrics.connected.set(1);
                let _ = ready.send(true);
            }
            metrics.backlog.add(got.len() as i64);
            for d in got.drain(..) {
                if tx.send(taken(d)).await.is_err() {
                    break 'link;
                }
            }
            if seen.closed {
                break;
            }
        }
        metrics.connected.set(0);
        let _ = ready.send(false);
        drop(tx);
        if tokio::time::timeout(Duration::from_secs(10), worker)
            .await
            .is_err()
        {
            warn!("bridge stopped before finishing its batch");
        }
        sender.disconnect().await;
    }))
}
