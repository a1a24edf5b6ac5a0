//! The bridge's MQTT side. A send is acked to the broker only after it is
//! durable (or refused) and its event published, so a crash in between makes
//! the broker redeliver it; the store's idempotency key turns the redelivery
//! into the same `seq`.
//!
//! The core ([`process`]) takes [`Taken`] messages and answers through an
//! [`Outlet`], whatever carries them: [`run`] is a persistent-session MQTT 5
//! client (rumqttc) of a broker running apart; in one process the broker
//! gives the bridge a router link of its own instead (`broker::local_bridge`),
//! without a second MQTT hop over loopback.

use crate::chat::{Chat, Incoming, Out};
use crate::wire;

pub mod cluster;
mod limits;
pub use limits::{PACKET_OVERHEAD, PAYLOAD_MAX_LIMIT};

use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// `[bridge]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// Broker address `host:port` (MODE=bridge; in one process the embedded broker's).
    pub broker: String,
    /// The bridge's MQTT client id. A broker run apart (`chatmq broker`)
    /// keeps it for `username`: nobody else may connect with it, even while
    /// the bridge is away.
    pub client_id: String,
    pub username: String,
    pub password: String,
    /// Most messages handled in one batch (one group commit across rooms).
    pub batch: usize,
    /// Sends per user per room per second, and the burst.
    pub sends_per_sec: f64,
    pub sends_burst: f64,
    /// Largest send or request payload, bytes; longer ones get `too_large`.
    /// At most [`PAYLOAD_MAX_LIMIT`]; the broker's `max_packet_bytes` must
    /// leave [`PACKET_OVERHEAD`] bytes above it for the packet's headers.
    pub payload_max_bytes: usize,
    /// Largest message `body`, bytes (at most `payload_max_bytes`).
    pub body_max_bytes: usize,
    /// Largest `meta` object, serialized bytes (at most `payload_max_bytes`).
    pub meta_max_bytes: usize,
    /// `history` page size (and `sync` `limit_per_room`) when none is given.
    pub history_limit_default: usize,
    /// Largest `history` page (and `sync` `limit_per_room`), at most 1000.
    pub history_limit_max: usize,
    /// Direct rooms: `false` (the default) joins the other user at once;
    /// `true` invites them (an inbox notice) and they accept with
    /// `rooms.join`, so nobody is put in a conversation without consent.
    pub direct_needs_acceptance: bool,
    /// `[bridge.retention]`: how long events and idempotency keys are kept.
    pub retention: crate::chat::retention::RetentionConfig,
    /// Users whose `admin.*` requests are answered, who read and moderate
    /// every room (the admin HTTP API's account is added by the server).
    pub admin_users: Vec<String>,
    /// Event hooks: a hook record for every stored event, published on
    /// `{prefix}/hooks/events` and read back with `hooks.read`.
    pub hooks: bool,
    /// Accounts (service accounts) that may `hooks.read`.
    pub hook_users: Vec<String>,
    /// `[bridge.moderation]`: pre-publish moderation.
    pub moderation: crate::chat::moderation::ModerationConfig,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        let l = wire::Limits::default();
        BridgeConfig {
            broker: "127.0.0.1:1883".into(),
            client_id: "chat-bridge".into(),
            username: "chat-bridge".into(),
            password: String::new(),
            batch: 512,
            sends_per_sec: 10.0,
            sends_burst: 30.0,
            payload_max_bytes: l.payload_max,
            body_max_bytes: l.body_max,
            meta_max_bytes: l.meta_max,
            history_limit_default: l.history_default,
            history_limit_max: l.history_max,
            direct_needs_acceptance: false,
            retention: Default::default(),
            admin_users: Vec::new(),
            hooks: false,
            hook_users: Vec::new(),
            moderation: Default::default(),
        }
    }
}

/// One message the bridge took from the broker.
#[derive(Debug, Clone)]
pub struct Taken {
    pub topic: Bytes,
    pub payload: Bytes,
    /// MQTT 5 response topic and correlation data, if any.
    pub response_topic: Option<String>,
    pub corr: Option<Bytes>,
    /// QoS and packet id, for the acknowledgement.
    pub qos: u8,
    pub pkid: u16,
    /// Which broker connection it came on (a cluster's bridge has one per
    /// broker; 0 otherwise): acks and drain marks go back there.
    pub origin: u64,
}

impl Taken {
    /// A publish rumqttc received on broker connection `origin`.
    pub(crate) fn from_publish(p: Publish, origin: u64) -> Taken {
        let (response_topic, corr) = match p.properties {
            Some(props) => (props.response_topic, props.correlation_data),
            None => (None, None),
        };
        Taken {
            topic: p.topic,
            payload: p.payload,
            response_topic,
            corr,
            qos: p.qos as u8,
            pkid: p.pkid,
            origin,
        }
    }
}

/// Where the bridge's messages go: its publishes and its acknowledgements.
#[async_trait]
pub trait Outlet: Send + Sync + 'static {
    /// Publishes at QoS 1, in order.
    async fn publish(&self, outs: Vec<Out>);
    /// Acknowledges taken messages, in the order given (rumqttd drops a
    /// connection whose acks come out of order).
    async fn ack(&self, taken: &[Taken]);
    /// Publishes at QoS 1 to the broker `origin` only (a cluster's drain
    /// marks); where there is one broker, [`Outlet::publish`].
    async fn publish_to(&self, _origin: u64, outs: Vec<Out>) {
        self.publish(outs).await
    }
    /// Takes a message that is not the chat service's (a cluster's
    /// presence reports) out of the batch; it is still acked in order.
    async fn intercept(&self, _taken: &Taken) -> bool {
        false
    }
}

/// The filters the bridge subscribes to, at QoS 1.
pub fn filters(prefix: &str) -> [String; 3] {
    [
        format!("{prefix}/rooms/+/send/+"),
        format!("{prefix}/rpc/+/+"),
        format!("{prefix}/hooks/drain"),
    ]
}

struct Rumqttc(AsyncClient);

#[async_trait]
impl Outlet for Rumqttc {
    async fn publish(&self, outs: Vec<Out>) {
        publish_all(&self.0, outs).await;
    }

    async fn ack(&self, taken: &[Taken]) {
        for t in taken {
            ack_one(&self.0, t).await;
        }
    }
}

/// The bridge's MQTT session with a broker: persistent, manual acks.
pub(crate) fn options(cfg: &BridgeConfig, client_id: &str, host: &str, port: u16) -> MqttOptions {
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_credentials(cfg.username.clone(), cfg.password.clone());
    opts.set_clean_start(false);
    // kept until it comes back (0xFFFFFFFF: never expires), holding what
    // was published while it restarts; MQTT 5 ends a session without an
    // interval with its connection
    opts.set_session_expiry_interval(Some(u32::MAX));
    opts.set_manual_acks(true);
    // rumqttc leaves Nagle on: the bridge's small events and acks would wait
    // for the broker's delayed ACK (tens of ms per batch)
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    opts.set_network_options(net);
    opts.set_keep_alive(Duration::from_secs(30));
    // replies carry at most wire::REPLY_EVENTS_MAX bytes of events
    opts.set_max_packet_size(Some(2 << 20));
    opts.set_request_channel_capacity(4096);
    opts.set_outgoing_inflight_upper_limit(1000);
    opts
}

/// Acknowledges one taken message on `client`.
pub(crate) async fn ack_one(client: &AsyncClient, t: &Taken) {
    let qos = match t.qos {
        0 => return,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let mut p = Publish::new(
        String::from_utf8_lossy(&t.topic).into_owned(),
        qos,
        Bytes::new(),
        None,
    );
    p.pkid = t.pkid;
    if let Err(e) = client.ack(&p).await {
        warn!(error = %e, "ack failed");
    }
}

/// Runs the bridge as an MQTT client until `shutdown` flips. `ready` is set once subscribed.
pub async fn run(
    cfg: BridgeConfig,
    prefix: String,
    chat: Arc<Chat>,
    mut shutdown: watch::Receiver<bool>,
    ready: watch::Sender<bool>,
) -> Result<(), String> {
    let (host, port) = cfg
        .broker
        .rsplit_once(':')
        .ok_or("bridge.broker must be host:port")?;
    let port: u16 = port
        .parse()
        .map_err(|_| "bridge.broker port is not a number")?;
    let opts = options(&cfg, &cfg.client_id, host, port);
    let (client, mut eventloop) = AsyncClient::new(opts, 4096);

    let metrics = chat.metrics().clone();
    let (tx, rx) = mpsc::channel::<Taken>(cfg.batch * 2);
    let outlet: Arc<dyn Outlet> = Arc::new(Rumqttc(client.clone()));
    let worker = tokio::spawn(process(outlet, chat, rx, cfg.batch, prefix.clone()));
    let filters = filters(&prefix);
    loop {
        let ev = tokio::select! {
            _ = shutdown.changed() => break,
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                info!(
                    session_present = ack.session_present,
                    "bridge connected to broker"
                );
                // one SUBSCRIBE, so its SUBACK means every filter is in place
                let many = filters
                    .iter()
                    .map(|f| Filter::new(f.clone(), QoS::AtLeastOnce));
                if let Err(e) = client.subscribe_many(many).await {
                    warn!(error = %e, "subscribe failed");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                metrics.connected.set(1);
                let _ = ready.send(true);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                metrics.backlog.inc();
                let t = Taken::from_publish(p, 0);
                if tx.send(t).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.connected.set(0);
                let _ = ready.send(false);
                warn!(error = %e, "bridge connection lost; reconnecting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    metrics.connected.set(0);
    drop(tx);
    // What was taken in is stored, published and acked before we go; the
    // event loop keeps running meanwhile so those packets reach the broker.
    // Publishes arriving now are not acked: the broker keeps them for the
    // next run of this persistent session.
    let mut worker = worker;
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut worker => break,
            _ = &mut deadline => {
                warn!("bridge stopped before finishing its batch");
                break;
            }
            ev = eventloop.poll() => if ev.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            },
        }
    }
    let _ = client.disconnect().await;
    for _ in 0..50 {
        match tokio::time::timeout(Duration::from_millis(100), eventloop.poll()).await {
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) => break,
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    Ok(())
}

/// The drain handshake of a graceful shutdown: the broker, having cut off
/// its clients, publishes a nonce on `{prefix}/hooks/drain`; the bridge
/// publishes the nonce on one topic of each of its two filters. rumqttd keeps
/// one ordered log per filter, so when both come back everything clients
/// published before has been taken in; once those batches are handled (stored,
/// published, acked), the bridge answers on `{prefix}/hooks/drained`.
///
/// A cluster's bridge (`parts`: the partitions it owns) does this with the
/// broker that asked: a mark through each filter of each of its partitions,
/// the payload `{nonce}/{p}`, and answers `{nonce}:{p},{p},...`; the broker
/// is drained once its bridges' answers cover every partition.
pub(crate) struct Drain {
    request: String,
    marks: [String; 2],
    done: String,
    parts: Option<Vec<u32>>,
    prefix: String,
    /// (origin, nonce) -> marks still to come back
    seen: HashMap<(u64, bytes::Bytes), std::collections::HashSet<(usize, u32)>>,
}

impl Drain {
    pub(crate) fn new(prefix: &str, parts: Option<Vec<u32>>) -> Self {
        Drain {
            request: format!("{prefix}/hooks/drain"),
            marks: [
                format!("{prefix}/rooms/$drain/send/bridge"),
                format!("{prefix}/rpc/$drain/bridge"),
            ],
            done: format!("{prefix}/hooks/drained"),
            parts,
            prefix: prefix.to_owned(),
            seen: HashMap::new(),
        }
    }

    /// Takes a control message out of the stream; true if `p` was one.
    async fn take(&mut self, outlet: &dyn Outlet, p: &Taken) -> bool {
        if p.topic == self.request.as_bytes() {
            if self.seen.len() > 16 {
                self.seen.clear();
            }
            let nonce = p.payload.clone();
            let mut waiting = std::collections::HashSet::new();
            let mut marks = Vec::new();
            match &self.parts {
                None => {
                    for (i, m) in self.marks.iter().enumerate() {
                        waiting.insert((i, 0));
                        marks.push(Out {
                            topic: m.clone(),
                            payload: nonce.clone(),
                            corr: None,
                            seq: None,
                        });
                    }
                }
                Some(parts) => {
                    let nonce = String::from_utf8_lossy(&nonce);
                    for &part in parts {
                        for (i, rest) in ["rooms/$drain/send/bridge", "rpc/$drain/bridge"]
                            .iter()
                            .enumerate()
                        {
                            waiting.insert((i, part));
                            marks.push(Out {
                                topic: schema::cluster::part_topic(&self.prefix, part, rest),
                                payload: format!("{nonce}/{part}").into(),
                                corr: None,
                                seq: None,
                            });
                        }
                    }
                }
            }
            self.seen.insert((p.origin, nonce), waiting);
            outlet.publish_to(p.origin, marks).await;
            return true;
        }
        let Some(i) = self.marks.iter().position(|m| p.topic == m.as_bytes()) else {
            return false;
        };
        let (nonce, part) = match &self.parts {
            None => (p.payload.clone(), 0),
            Some(_) => {
                let text = String::from_utf8_lossy(&p.payload);
                let Some((n, part)) = text.rsplit_once('/') else {
                    return true;
                };
                let Ok(part) = part.parse::<u32>() else {
                    return true;
                };
                (bytes::Bytes::copy_from_slice(n.as_bytes()), part)
            }
        };
        if let Some(s) = self.seen.get_mut(&(p.origin, nonce)) {
            s.remove(&(i, part));
        }
        true
    }

    /// After a batch is handled: answers every drain whose marks all came back.
    async fn answer(&mut self, outlet: &dyn Outlet) {
        let complete: Vec<(u64, bytes::Bytes)> = self
            .seen
            .iter()
            .filter(|(_, s)| s.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for (origin, nonce) in complete {
            self.seen.remove(&(origin, nonce.clone()));
            info!("drained: everything taken in before the drain is stored");
            let payload = match &self.parts {
                None => nonce,
                Some(parts) => {
                    let list: Vec<String> = parts.iter().map(u32::to_string).collect();
                    format!("{}:{}", String::from_utf8_lossy(&nonce), list.join(",")).into()
                }
            };
            let done = Out {
                topic: self.done.clone(),
                payload,
                corr: None,
                seq: None,
            };
            outlet.publish_to(origin, vec![done]).await;
        }
    }
}

/// The `received` metric's kind for an [`Chat::order_key`].
fn kind_of(key: &str) -> &'static str {
    match key.as_bytes().first() {
        Some(b'r') => "send",
        Some(b'u') => "request",
        _ => "other",
    }
}

/// Takes what is pending, groups it by room (sends) or user (requests), and
/// handles the groups concurrently, each in arrival order; then publishes
/// and acks the batch in arrival order. Returns when `rx` closes.
///
/// Publishing order: a room's events may come from several groups of one
/// batch (a send group of the room, a request group of a user who joins it),
/// which finish in any order. So a group whose outputs hold no room event
/// (history, sync, refusals, ...) publishes as soon as it is done, and the
/// others are published together once every group is done: first all room
/// events, sorted by (room, seq), then their other outputs (replies, inbox
/// notices, `hooks/access`), each group's in its own order. Every room's
/// events are thus published in `seq` order (a batch's seqs all follow the
/// previous batch's, which is published before the next is taken), a reply
/// follows the event it reports, and `hooks/access` still precedes the reply
/// to the join it announces.
pub async fn process(
    outlet: Arc<dyn Outlet>,
    chat: Arc<Chat>,
    rx: mpsc::Receiver<Taken>,
    batch: usize,
    prefix: String,
) {
    process_with(outlet, chat, rx, batch, Drain::new(&prefix, None)).await
}

/// [`process`] with the drain of a cluster's bridge.
pub(crate) async fn process_with(
    outlet: Arc<dyn Outlet>,
    chat: Arc<Chat>,
    mut rx: mpsc::Receiver<Taken>,
    batch: usize,
    mut drain: Drain,
) {
    let metrics = chat.metrics().clone();
    let mut buf = Vec::with_capacity(batch);
    // scratch space for a batch's non-event outputs (its capacity is reused)
    let mut rest: Vec<Out> = Vec::new();
    while rx.recv_many(&mut buf, batch).await > 0 {
        metrics.batch_size.observe(buf.len() as f64);
        let msgs: Vec<Taken> = std::mem::take(&mut buf);
        let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, p) in msgs.iter().enumerate() {
            if drain.take(outlet.as_ref(), p).await || outlet.intercept(p).await {
                continue;
            }
            let key = chat.order_key(&String::from_utf8_lossy(&p.topic));
            metrics.received.with_label_values(&[kind_of(&key)]).inc();
            groups.entry(key).or_default().push(i);
        }
        let msgs_ref = &msgs;
        let tasks = groups.into_values().map(|idx| {
            let outlet = outlet.clone();
            let chat = chat.clone();
            let metrics = metrics.clone();
            async move {
                let items = idx
                    .iter()
                    .map(|&i| {
                        let p = &msgs_ref[i];
                        Incoming {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.clone(),
                            response_topic: p.response_topic.clone(),
                            corr: p.corr.clone(),
                        }
                    })
                    .collect();
                let outs: Vec<Out> = chat
                    .handle_group(items)
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
                if outs.iter().any(|o| o.seq.is_some()) {
                    return outs;
                }
                if !outs.is_empty() {
                    metrics.published.inc_by(outs.len() as u64);
                    outlet.publish(outs).await;
                }
                Vec::new()
            }
        });
        let held = futures_util::future::join_all(tasks).await;
        let outs = in_publish_order(held, &mut rest);
        metrics.published.inc_by(outs.len() as u64);
        if !outs.is_empty() {
            outlet.publish(outs).await;
        }
        // rumqttd requires acks in the order it delivered (an ack out of
        // order makes it drop the connection), so the batch is acked in
        // arrival order once every group of it is stored and published.
        outlet.ack(&msgs).await;
        metrics.backlog.sub(msgs.len() as i64);
        drain.answer(outlet.as_ref()).await;
        buf = msgs;
        buf.clear();
    }
}

/// The held outputs of a batch's groups as one list: every room event,
/// sorted by (room, seq), then the other outputs, each group's in order.
/// `rest` is scratch space (left empty, its capacity kept).
fn in_publish_order(held: Vec<Vec<Out>>, rest: &mut Vec<Out>) -> Vec<Out> {
    let total = held.iter().map(Vec::len).sum();
    let mut outs = Vec::with_capacity(total);
    for group in held {
        for o in group {
            if o.seq.is_some() {
                outs.push(o);
            } else {
                rest.push(o);
            }
        }
    }
    // A room's events share its topic. One room's batch (the common case
    // of a busy room) is in order already and only checked; otherwise a
    // sort of this batch's events without allocating (a few microseconds
    // for hundreds of events, once per batch).
    if !outs.is_sorted_by(|a, b| (&a.topic, a.seq) <= (&b.topic, b.seq)) {
        outs.sort_unstable_by(|a, b| (&a.topic, a.seq).cmp(&(&b.topic, b.seq)));
    }
    outs.append(rest);
    outs
}

pub(crate) async fn publish_all(client: &AsyncClient, outs: Vec<Out>) {
    for o in outs {
        let res = match o.corr {
            Some(c) => {
                let props = PublishProperties {
                    correlation_data: Some(c),
                    ..Default::default()
                };
                client
                    .publish_with_properties(o.topic, QoS::AtLeastOnce, false, o.payload, props)
                    .await
            }
            None => {
                client
                    .publish(o.topic, QoS::AtLeastOnce, false, o.payload)
                    .await
            }
        };
        if let Err(e) = res {
            warn!(error = %e, "publish to broker failed");
        }
    }
}

#[cfg(test)]
mod tests;
