//! A router link for a trusted service in the same process.
//!
//! Run apart, a service such as the chat bridge is an MQTT client of the
//! broker. In one process that is a second MQTT hop over loopback for every
//! message: encode, two TCP stacks, decode, and a broker connection task,
//! about a third of the server's CPU on the chat path
//! (bench/results/profile.md). A service link talks to rumqttd's router
//! directly instead, through the same kind of link our connection tasks use:
//! its filters subscribed at QoS 1, deliveries acknowledged in delivery
//! order, QoS 1 publishes.
//!
//! The service is trusted like the broker's internal link: its publishes do
//! not pass the ACL (the MQTT service account of a bridge running apart has
//! `{prefix}/#`).

use crate::codec::{self, Version};
use crate::router::{forward_pkid, send_all, RouterHandle};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Filter, Packet, PubAck, PubAckReason, Publish,
    PublishProperties, QoS, RetainForwardRule, Subscribe,
};
use rumqttd::Notification;
use std::sync::Arc;
use tokio::sync::Mutex;
use tracing::warn;

/// One publish the router delivered to the service.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: Bytes,
    pub payload: Bytes,
    /// MQTT 5 response topic and correlation data, if the publisher set them.
    pub response_topic: Option<String>,
    pub corr: Option<Bytes>,
    /// 0 or 1; the packet id is 0 at QoS 0.
    pub qos: u8,
    pub pkid: u16,
}

/// One publish the service sends, at QoS 1.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Bytes,
    /// MQTT 5 correlation data, for replies to v5 requests.
    pub corr: Option<Bytes>,
}

/// What one [`LinkReceiver::recv`] saw besides deliveries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The router confirmed the link's subscription.
    pub subscribed: bool,
    /// The router dropped the link: nothing more will come.
    pub closed: bool,
}

/// The sending half: publishes and the final DISCONNECT.
pub struct LinkSender {
    tx: Mutex<LinkTx>,
    /// A QoS 1 PUBLISH to copy for each outgoing message (see [`qos1_publish`]).
    template: Publish,
    /// Rooms' streams this service publishes go to the sessions the broker
    /// delivers them to at once, not through the router and back
    /// (`crate::direct`).
    direct: Option<Direct>,
}

/// What a service link hands rooms' streams to.
pub(crate) type Direct = (
    Arc<crate::direct::Direct>,
    Arc<crate::metrics::BrokerMetrics>,
);

/// The receiving half.
pub struct LinkReceiver {
    rx: LinkRx,
    tx: Arc<LinkSender>,
    acks: Vec<Packet>,
}

/// Opens a link for a service (see `Broker::service_link`): `filters` are
/// subscribed at QoS 1 with retained messages never forwarded.
pub(crate) async fn open(
    router: &RouterHandle,
    client_id: &str,
    filters: Vec<String>,
    direct: Option<Direct>,
) -> Result<(Arc<LinkSender>, LinkReceiver), String> {
    let (mut tx, rx, _) = router.link(client_id, true).await?;
    if let Some((direct, _)) = &direct {
        for f in &filters {
            direct.note_router_filter(f);
        }
    }
    let subscribe = Subscribe {
        pkid: 1,
        filters: filters
            .into_iter()
            .map(|path| Filter {
                path,
                qos: QoS::AtLeastOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::Never,
            })
            .collect(),
    };
    if !subscribe.filters.is_empty() {
        tx.send(Packet::Subscribe(subscribe, None))
            .await
            .map_err(|e| e.to_string())?;
    }
    let template = match qos1_publish("-", b"", None, 1) {
        Some(Packet::Publish(p, _)) => p,
        _ => return Err("cannot build the link's QoS 1 publish".into()),
    };
    let tx = Arc::new(LinkSender {
        tx: Mutex::new(tx),
        template,
        direct,
    });
    let rx = LinkReceiver {
        rx,
        tx: tx.clone(),
        acks: Vec::new(),
    };
    Ok((tx, rx))
}

impl LinkSender {
    async fn send(&self, packets: Vec<Packet>) {
        if !self.forward(packets).await {
            warn!("the router dropped a service link");
        }
    }

    /// Publishes at QoS 1, in order. Each message is a copy of the QoS 1
    /// template with its own topic and payload (no encoding). The router
    /// does not track the packet ids of QoS 1 publishes coming in (it acks
    /// them, and the link ignores those acks), so one id serves every one.
    pub async fn publish(&self, outs: impl IntoIterator<Item = Outgoing>) {
        let packets: Vec<Packet> = outs
            .into_iter()
            .filter_map(|o| {
                let mut p = self.template.clone();
                p.topic = o.topic.into();
                p.payload = o.payload;
                let props = o.corr.map(|c| PublishProperties {
                    correlation_data: Some(c),
                    ..Default::default()
                });
                let to_router = match &self.direct {
                    Some((direct, metrics)) => {
                        crate::direct::deliver_room_stream(direct, metrics, &p, &props)
                    }
                    None => true,
                };
                to_router.then_some(Packet::Publish(p, props))
            })
            .collect();
        if !packets.is_empty() {
            self.send(packets).await;
        }
    }

    /// Hands `packets` to the router as they are, in order; false when the
    /// router dropped the link (the broker's shared publisher, `crate::publisher`).
    pub(crate) async fn forward(&self, mut packets: Vec<Packet>) -> bool {
        let mut tx = self.tx.lock().await;
        send_all(&mut tx, &mut packets).await.is_ok()
    }

    /// Ends the link with a normal DISCONNECT.
    pub async fn disconnect(&self) {
        let bye = Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        };
        self.send(vec![Packet::Disconnect(bye, None)]).await;
    }
}

impl LinkReceiver {
    /// Waits for the router, then takes everything it has handed over
    /// already, up to `max` deliveries, into `out`, so that their acks reach
    /// the router as one event, not one each.
    ///
    /// Deliveries are acknowledged here, at once and in delivery order. A
    /// service that acked only after its work would protect nothing in one
    /// process (a crash loses the router's memory with it) and would be held
    /// to rumqttd's 100 unacked deliveries per link. Returns at once when the
    /// link is closed.
    pub async fn recv(&mut self, max: usize, out: &mut Vec<Delivery>) -> Received {
        let mut seen = Received::default();
        let mut wake = false;
        let mut next = Some(self.rx.next().await);
        let start = out.len();
        while let Some(n) = next.take() {
            match n {
                Ok(Some(Notification::Forward(f))) => {
                    let pkid = forward_pkid(&f.publish).unwrap_or(0);
                    let (response_topic, corr) = match f.properties {
                        Some(p) => (p.response_topic, p.correlation_data),
                        None => (None, None),
                    };
                    if pkid != 0 {
                        let ack = PubAck {
                            pkid,
                            reason: PubAckReason::Success,
                        };
                        self.acks.push(Packet::PubAck(ack, None));
                    }
                    out.push(Delivery {
                        topic: f.publish.topic,
                        payload: f.publish.payload,
                        response_topic,
                        corr,
                        qos: u8::from(pkid != 0),
                        pkid,
                    });
                }
                Ok(Some(Notification::DeviceAck(ack))) => {
                    if let Packet::SubAck(..) = Packet::from(ack) {
                        seen.subscribed = true;
                    }
                }
                Ok(Some(Notification::Unschedule)) => wake = true,
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "the router dropped a service link");
                    seen.closed = true;
                    break;
                }
            }
            if out.len() - start < max {
                next = self.rx.next().now_or_never();
            }
        }
        if !self.acks.is_empty() {
            self.tx.send(std::mem::take(&mut self.acks)).await;
        }
        // after the acks, which are what frees the link's window
        if !seen.closed && wake && self.rx.wake().await.is_err() {
            seen.closed = true;
        }
        seen
    }
}

/// An MQTT 5 QoS 1 PUBLISH, encoded, then read back through rumqttd's own
/// codec: its `Publish` keeps QoS and packet id private, and rumqttd
/// delivers at the publisher's QoS, so a service's messages must enter the
/// router as QoS 1.
pub(crate) fn qos1_publish(
    topic: &str,
    payload: &[u8],
    corr: Option<&[u8]>,
    pkid: u16,
) -> Option<Packet> {
    let mut props = BytesMut::new();
    if let Some(c) = corr {
        props.put_u8(0x09);
        props.put_u16(u16::try_from(c.len()).ok()?);
        props.put_slice(c);
    }
    let mut body = BytesMut::with_capacity(topic.len() + payload.len() + props.len() + 16);
    body.put_u16(u16::try_from(topic.len()).ok()?);
    body.put_slice(topic.as_bytes());
    body.put_u16(pkid);
    put_varint(&mut body, props.len());
    body.put_slice(&props);
    body.put_slice(payload);
    let mut frame = BytesMut::with_capacity(body.len() + 5);
    frame.put_u8(0x32);
    put_varint(&mut frame, body.len());
    frame.put_slice(&body);
    let max = frame.len();
    match codec::read(Version::V5, &mut frame, max) {
        Ok(Some(inc)) => Some(inc.packet),
        _ => None,
    }
}

fn put_varint(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if n == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Waits for the link's SUBACK, or for what it delivers.
    async fn recv(rx: &mut LinkReceiver, what: &str) -> (Received, Vec<Delivery>) {
        let mut got = Vec::new();
        match tokio::time::timeout(Duration::from_secs(10), rx.recv(64, &mut got)).await {
            Ok(seen) => (seen, got),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }

    /// A service link's filters are noted before the router gets them
    /// (`open`): a room stream another link publishes reaches a link whose
    /// wildcard matches it, though no session subscribed to the room, and
    /// is not handed to the router before any filter matches it.
    #[tokio::test]
    async fn a_service_links_filter_gets_room_streams_through_the_router() {
        let router = crate::router::spawn(&crate::config::BrokerConfig::default());
        let direct = Arc::new(crate::direct::Direct::new("chat"));
        let metrics = crate::metrics::BrokerMetrics::unregistered();
        let with = || Some((direct.clone(), metrics.clone()));
        let (bridge, _bridge_rx) = open(&router, "t@bridge", Vec::new(), with())
            .await
            .expect("the bridge's link");
        let event = |payload: &'static str| Outgoing {
            topic: "chat/rooms/r1/events".into(),
            payload: Bytes::from_static(payload.as_bytes()),
            corr: None,
        };
        // no filter matches yet: not for the router
        bridge.publish([event("before")]).await;

        let filters = vec!["chat/rooms/+/events".to_owned()];
        let (_watcher, mut rx) = open(&router, "t@watcher", filters, with())
            .await
            .expect("the watcher's link");
        let (seen, _) = recv(&mut rx, "the SUBACK").await;
        assert!(seen.subscribed, "subscribed");
        bridge.publish([event("after")]).await;
        let (_, got) = recv(&mut rx, "the room's event").await;
        let payloads: Vec<&[u8]> = got.iter().map(|d| &d.payload[..]).collect();
        assert_eq!(payloads, [&b"after"[..]], "only what was published after");
    }

    #[test]
    fn qos1_publish_reads_back_with_its_fields() {
        let p = qos1_publish("chat/rooms/r1/events", b"{\"seq\":1}", Some(b"c-7"), 513)
            .expect("encodes");
        let Packet::Publish(publish, props) = p else {
            panic!("not a publish: {p:?}");
        };
        assert_eq!(&publish.topic[..], b"chat/rooms/r1/events");
        assert_eq!(&publish.payload[..], b"{\"seq\":1}");
        assert_eq!(
            forward_pkid(&publish),
            Some(513),
            "QoS 1 with its packet id"
        );
        assert_eq!(
            props.and_then(|p| p.correlation_data).as_deref(),
            Some(&b"c-7"[..])
        );
        let big = vec![b'x'; 300_000];
        let p = qos1_publish("t", &big, None, 1).expect("a long payload encodes");
        assert!(matches!(p, Packet::Publish(ref q, _) if q.payload.len() == 300_000));
    }
}
