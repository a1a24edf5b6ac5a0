//! rumqttd's router and the links to it: started once per broker, then one
//! link per client session, the broker's internal link and service links.
//! The bottom layer: it imports only `config`.

use crate::config::BrokerConfig;
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{Notification, RouterConfig, SegmentConfig};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

type LinkFn = dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync;

/// Builds router links. rumqttd's `LinkBuilder::build` blocks until the
/// router answers, so it runs on the blocking pool with a timeout.
#[derive(Clone)]
pub(crate) struct RouterHandle {
    build: Arc<LinkFn>,
    /// Links being built at once. rumqttd answers them one by one; without a
    /// bound a reconnect storm parks thousands of blocking threads and the
    /// late ones time out while the router is still working through them.
    building: Arc<tokio::sync::Semaphore>,
}

/// Most router links built at the same time.
const LINKS_BUILDING: usize = 64;
/// How long a link build may take once it has its turn.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);

impl RouterHandle {
    /// Returns the link and whether a previous session was resumed.
    pub(crate) async fn link(
        &self,
        client_id: &str,
        clean: bool,
    ) -> Result<(LinkTx, LinkRx, bool), String> {
        let _turn = self
            .building
            .acquire()
            .await
            .map_err(|_| "router closed".to_string())?;
        let build = self.build.clone();
        let id = client_id.to_owned();
        let mut task = tokio::task::spawn_blocking(move || build(&id, clean));
        let (tx, rx, ack) = match tokio::time::timeout(LINK_TIMEOUT, &mut task).await {
            Ok(joined) => joined.map_err(|e| e.to_string())??,
            Err(_) => {
                // The build cannot be cancelled: when it completes, end the
                // late link so it cannot collide with the client's retry.
                tokio::spawn(async move {
                    if let Ok(Ok((mut tx, _rx, _))) = task.await {
                        let bye = Packet::Disconnect(
                            rumqttd::protocol::Disconnect {
                                reason_code:
                                    rumqttd::protocol::DisconnectReasonCode::NormalDisconnection,
                            },
                            None,
                        );
                        let _ = tx.send(bye).await;
                    }
                });
                return Err("router did not answer".into());
            }
        };
        let present = match ack {
            Notification::DeviceAck(a) => match Packet::from(a) {
                Packet::ConnAck(c, _) => c.session_present,
                _ => false,
            },
            _ => false,
        };
        Ok((tx, rx, present))
    }
}

/// Starts rumqttd's router on its own threads.
pub(crate) fn spawn(config: &BrokerConfig) -> RouterHandle {
    let router_tx = rumqttd::Router::new(0, router_config(config)).spawn();
    // rumqttd's alerts and meters only flow from the timer of its own
    // `Broker::start`; see crate::metrics for how we observe them instead.
    let build: Arc<LinkFn> = Arc::new(move |id: &str, clean: bool| {
        LinkBuilder::new(id, router_tx.clone())
            .clean_session(clean)
            .build()
            .map_err(|e| e.to_string())
    });
    RouterHandle {
        build,
        building: Arc::new(tokio::sync::Semaphore::new(LINKS_BUILDING)),
    }
}

/// The router configuration `chatmq` runs with (public for
/// `examples/link_memory.rs`, which measures rumqttd alone with it).
pub fn router_config(cfg: &BrokerConfig) -> RouterConfig {
    let r = &cfg.router;
    let bridge = SegmentConfig {
        max_segment_size: r.bridge_segment_bytes,
        max_segment_count: r.bridge_segments,
    };
    let mut custom = HashMap::new();
    for f in ["rooms/+/send/+", "rpc/+/+"] {
        custom.insert(format!("{}/{f}", cfg.prefix), bridge.clone());
    }
    RouterConfig {
        // above our own limit, so the router never silently refuses a link
        max_connections: cfg.limits.max_connections + 64,
        max_outgoing_packet_count: r.max_outgoing_packets,
        max_segment_size: r.segment_bytes,
        max_segment_count: r.segments,
        custom_segment: Some(custom),
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    }
}

/// rumqttd keeps a forward's packet id private; its serialized form has it.
pub(crate) fn forward_pkid(p: &Publish) -> Option<u16> {
    forward_header(p).2
}

/// A forward's DUP flag, QoS and packet id (`None` at QoS 0), which
/// rumqttd keeps private; its serialized form has them.
pub(crate) fn forward_header(p: &Publish) -> (bool, u8, Option<u16>) {
    // the header without topic and payload: no copy of them per delivery
    let mut head = p.clone();
    head.topic = bytes::Bytes::new();
    head.payload = bytes::Bytes::new();
    let raw = head.serialize();
    let Some(first) = raw.first() else {
        return (false, 0, None);
    };
    let dup = first & 0b1000 != 0;
    let qos = (first >> 1) & 0b11;
    if qos == 0 {
        return (dup, 0, None);
    }
    match (raw.get(1), raw.get(2)) {
        (Some(a), Some(b)) => (dup, qos, Some(u16::from_be_bytes([*a, *b]))),
        _ => (dup, qos, None),
    }
}

/// Hands queued packets to the router with a single wake-up.
pub(crate) async fn send_all(link_tx: &mut LinkTx, packets: &mut Vec<Packet>) -> Result<(), ()> {
    let Some(last) = packets.pop() else {
        return Ok(());
    };
    {
        let mut buf = link_tx.buffer();
        buf.extend(packets.drain(..));
    }
    link_tx.send(last).await.map(|_| ()).map_err(|_| ())
}
