//! The bridge of the all-in-one process on a router link of its own.
//!
//! Run apart, the bridge is an MQTT client of the broker. In one process that
//! is a second MQTT hop over loopback for every message: encode, two TCP
//! stacks, decode, and a broker connection task, about a third of the
//! server's CPU on the chat path (bench/results/profile.md). Here the bridge
//! talks to rumqttd's router directly, through the same kind of link our
//! connection tasks use, with the same subscriptions at QoS 1, acks in
//! delivery order and QoS 1 publishes; the chat logic is the same
//! [`chat_bridge::bridge::process`].
//!
//! The bridge is trusted like the broker's internal link: its publishes do
//! not pass the ACL (the MQTT service account of a bridge running apart has
//! `{prefix}/#`).

use crate::codec::{self, Version};
use crate::server::{forward_pkid, send_all, Shared};
use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use chat_bridge::bridge::{filters, process, Outlet, Taken};
use chat_bridge::chat::{Chat, Out};
use futures_util::FutureExt;
use rumqttd::local::LinkTx;
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Filter, Packet, PubAck, PubAckReason, Publish,
    PublishProperties, QoS, RetainForwardRule, Subscribe,
};
use rumqttd::Notification;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Mutex};
use tracing::{info, warn};

struct Local {
    tx: Mutex<LinkTx>,
    /// A QoS 1 PUBLISH to copy for each event (see [`qos1_publish`]).
    template: Publish,
}

impl Local {
    async fn send(&self, mut packets: Vec<Packet>) {
        let mut tx = self.tx.lock().await;
        if send_all(&mut tx, &mut packets).await.is_err() {
            warn!("the router dropped the bridge's link");
        }
    }
}

/// An MQTT 5 QoS 1 PUBLISH, encoded, then read back through rumqttd's own
/// codec: its `Publish` keeps QoS and packet id private, and rumqttd
/// delivers at the publisher's QoS, so events must enter the router as QoS 1.
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

#[async_trait]
impl Outlet for Local {
    /// Each event is a copy of the QoS 1 template with its own topic and
    /// payload (no encoding). The router does not track the packet ids of
    /// QoS 1 publishes coming in (it acks them, and the bridge ignores those
    /// acks), so the template's one id serves every event.
    async fn publish(&self, outs: Vec<Out>) {
        let packets = outs
            .into_iter()
            .map(|o| {
                let mut p = self.template.clone();
                p.topic = o.topic.into();
                p.payload = o.payload;
                let props = o.corr.map(|c| PublishProperties {
                    correlation_data: Some(c),
                    ..Default::default()
                });
                Packet::Publish(p, props)
            })
            .collect();
        self.send(packets).await;
    }

    /// Acked on receipt instead (see [`run`]).
    async fn ack(&self, _taken: &[Taken]) {}
}

/// Runs the in-process bridge until `shutdown` flips; `ready` is set once
/// its filters are subscribed.
pub async fn run(
    shared: Arc<Shared>,
    batch: usize,
    chat: Arc<Chat>,
    mut shutdown: watch::Receiver<bool>,
    ready: watch::Sender<bool>,
) -> Result<(), String> {
    let prefix = shared.config.prefix.clone();
    // '@' is refused in clients' ids: no client can take this link over
    let (mut link_tx, mut link_rx, _) = shared.router.link("chatmq@bridge", true).await?;
    let subscribe = Subscribe {
        pkid: 1,
        filters: filters(&prefix)
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
    link_tx
        .send(Packet::Subscribe(subscribe, None))
        .await
        .map_err(|e| e.to_string())?;
    let template = match qos1_publish("-", b"", None, 1) {
        Some(Packet::Publish(p, _)) => p,
        _ => return Err("cannot build the bridge's QoS 1 publish".into()),
    };
    let outlet = Arc::new(Local {
        tx: Mutex::new(link_tx),
        template,
    });
    let metrics = chat.metrics().clone();
    let (tx, rx) = mpsc::channel::<Taken>(batch * 2);
    let worker = tokio::spawn(process(
        outlet.clone() as Arc<dyn Outlet>,
        chat,
        rx,
        batch,
        prefix,
    ));
    info!("bridge linked to the router in-process");
    let mut acks = Vec::new();
    let mut taken = Vec::new();
    'link: loop {
        let n = tokio::select! {
            _ = shutdown.changed() => break,
            n = link_rx.next() => n,
        };
        // Everything the router has handed over already is taken in one go,
        // so that its acks reach the router as one event, not one each.
        let mut next = Some(n);
        let mut wake = false;
        let mut gone = false;
        while let Some(n) = next.take() {
            match n {
                Ok(Some(Notification::Forward(f))) => {
                    let pkid = forward_pkid(&f.publish).unwrap_or(0);
                    let (response_topic, corr) = match f.properties {
                        Some(p) => (p.response_topic, p.correlation_data),
                        None => (None, None),
                    };
                    // Acked at once, in delivery order. The bridge acks a
                    // send only after it is stored so that a broker keeping
                    // its session redelivers it after a bridge crash; in one
                    // process a crash loses the router's memory with the
                    // bridge, so a later ack would protect nothing, and it
                    // would hold the bridge to rumqttd's 100 unacked
                    // deliveries per link. Shutdown still drains everything
                    // taken in (the drain handshake).
                    if pkid != 0 {
                        let ack = PubAck {
                            pkid,
                            reason: PubAckReason::Success,
                        };
                        acks.push(Packet::PubAck(ack, None));
                    }
                    taken.push(Taken {
                        topic: f.publish.topic,
                        payload: f.publish.payload,
                        response_topic,
                        corr,
                        qos: if pkid == 0 { 0 } else { 1 },
                        pkid,
                    });
                }
                Ok(Some(Notification::DeviceAck(ack))) => {
                    if let Packet::SubAck(..) = Packet::from(ack) {
                        metrics.connected.set(1);
                        let _ = ready.send(true);
                    }
                }
                Ok(Some(Notification::Unschedule)) => wake = true,
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "the router dropped the bridge's link");
                    gone = true;
                    break;
                }
            }
            if taken.len() < batch {
                next = link_rx.next().now_or_never();
            }
        }
        if !acks.is_empty() {
            outlet.send(std::mem::take(&mut acks)).await;
        }
        metrics.backlog.add(taken.len() as i64);
        for t in taken.drain(..) {
            if tx.send(t).await.is_err() {
                break 'link;
            }
        }
        // after the acks, which are what frees the link's window
        if gone || (wake && link_rx.wake().await.is_err()) {
            break;
        }
    }
    metrics.connected.set(0);
    let _ = ready.send(false);
    drop(tx);
    // what was taken in is stored, published and acked before we go
    if tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .is_err()
    {
        warn!("bridge stopped before finishing its batch");
    }
    let bye = Disconnect {
        reason_code: DisconnectReasonCode::NormalDisconnection,
    };
    outlet.send(vec![Packet::Disconnect(bye, None)]).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
