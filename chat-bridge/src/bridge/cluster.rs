//! A cluster's bridge (docs/cluster.md): bridge `k` of `M`, an MQTT client
//! of every broker.
//!
//! - It resolves `[cluster] brokers` (host names resolving to several
//!   addresses, e.g. a headless Service, count each address) again every
//!   `resolve_interval_ms`, and keeps one persistent session per broker
//!   address, with the client id `{client_id}-{k}`.
//! - On each broker it subscribes to the partitions it owns
//!   ([`schema::cluster::bridge_filters`]) and unsubscribes from the others
//!   (a session kept from a run with another `M`).
//! - Everything it takes in goes through the one [`process`](super::process)
//!   core; acks go back to the broker that delivered, in order.
//! - It publishes room events, inbox notices, receipts, access hooks and
//!   replies to every broker that is up (a reply is delivered by the
//!   broker its client is connected to; the others hold no session for it).
//! - Typing (QoS 0) is relayed to every broker at once.
//! - Presence: brokers report a user's first and last connection to them;
//!   the bridge owning the user keeps, per user, the brokers that have
//!   them, and publishes `{prefix}/presence/{user}` to every broker when
//!   that set becomes empty or stops being empty. A broker that comes back
//!   without the session (restarted), or stays away longer than
//!   `presence_grace_ms`, has its users dropped from the sets.

use super::{ack_one, options, process_with, publish_all, BridgeConfig, Drain, Outlet, Taken};
use crate::chat::{Chat, Out};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

/// `[cluster]` settings (docs/cluster.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Partitions rooms and users are hashed into; the same on every broker
    /// and bridge, fixed for the cluster's life. 0: no cluster (one broker,
    /// one bridge).
    pub partitions: u32,
    /// This bridge's ordinal `k` (it owns partitions `p % bridges == k`).
    /// Unset: the number after the last `-` of `$HOSTNAME` (a StatefulSet
    /// pod `chatmq-bridge-2` is 2).
    pub bridge_ordinal: Option<u32>,
    /// How many bridges share the partitions.
    pub bridges: u32,
    /// Where the brokers are: `host:port` entries; a name resolving to
    /// several addresses (a headless Service) is one broker per address.
    /// A list, or one comma-separated string (environment variables).
    #[serde(deserialize_with = "crate::store::scylla::config::nodes_de")]
    pub brokers: Vec<String>,
    /// How often the names in `brokers` are resolved again, ms.
    pub resolve_interval_ms: u64,
    /// How long a broker may stay unreachable before the users connected
    /// to it count as gone (presence), ms.
    pub presence_grace_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            partitions: 0,
            bridge_ordinal: None,
            bridges: 1,
            brokers: Vec::new(),
            resolve_interval_ms: 5_000,
            presence_grace_ms: 10_000,
        }
    }
}

impl ClusterConfig {
    /// A cluster (more than one broker or bridge) is configured.
    pub fn enabled(&self) -> bool {
        self.partitions > 0
    }

    /// The bridge's ordinal: configured, or from `hostname`'s last `-N`.
    pub fn ordinal(&self, hostname: Option<&str>) -> Result<u32, String> {
        let k = match self.bridge_ordinal {
            Some(k) => k,
            None => hostname
                .and_then(|h| h.rsplit_once('-'))
                .and_then(|(_, n)| n.parse().ok())
                .ok_or("cluster.bridge_ordinal is not set and $HOSTNAME does not end in -N")?,
        };
        if k >= self.bridges {
            return Err(format!(
                "cluster.bridge_ordinal {k} is not below cluster.bridges {}",
                self.bridges
            ));
        }
        Ok(k)
    }

    /// Checks what both roles need.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if self.bridges == 0 || self.bridges > self.partitions {
            return Err(format!(
                "cluster.bridges must be 1..=cluster.partitions ({}), not {}",
                self.partitions, self.bridges
            ));
        }
        if self.partitions > 4096 {
            return Err("cluster.partitions must be at most 4096".into());
        }
        Ok(())
    }
}

/// Users and the broker connections that report them.
#[derive(Default)]
struct Aggregate {
    users: HashMap<String, HashSet<u64>>,
}

impl Aggregate {
    /// A broker's report; `Some(online)` when the user's presence changed.
    fn report(&mut self, origin: u64, user: &str, online: bool) -> Option<bool> {
        if online {
            let set = self.users.entry(user.to_owned()).or_default();
            set.insert(origin);
            (set.len() == 1).then_some(true)
        } else {
            let set = self.users.get_mut(user)?;
            if !set.remove(&origin) {
                return None;
            }
            if set.is_empty() {
                self.users.remove(user);
                return Some(false);
            }
            None
        }
    }

    /// Forgets a broker's users; those now offline.
    fn reset(&mut self, origin: u64) -> Vec<String> {
        let mut gone = Vec::new();
        self.users.retain(|user, set| {
            if set.remove(&origin) && set.is_empty() {
                gone.push(user.clone());
                return false;
            }
            true
        });
        gone
    }

    fn online(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }
}

/// One broker connection.
struct Conn {
    client: AsyncClient,
    /// Connected and subscribed.
    up: AtomicBool,
}

/// Where the bridge's publishes go: every broker that is up.
struct Brokers {
    conns: RwLock<HashMap<u64, Arc<Conn>>>,
    presence: Mutex<Aggregate>,
    presence_root: String,
    metrics: Arc<crate::metrics::BridgeMetrics>,
}

impl Brokers {
    fn up(&self) -> Vec<Arc<Conn>> {
        self.conns
            .read()
            .values()
            .filter(|c| c.up.load(Ordering::Relaxed))
            .cloned()
            .collect()
    }

    fn get(&self, origin: u64) -> Option<Arc<Conn>> {
        self.conns.read().get(&origin).cloned()
    }

    /// Publishes to one broker; a broker whose queue stays full for 5
    /// seconds (stalled, or gone without our noticing yet) is skipped.
    async fn publish_on(&self, conn: &Conn, outs: Vec<Out>) {
        let n = outs.len() as u64;
        if tokio::time::timeout(Duration::from_secs(5), publish_all(&conn.client, outs))
            .await
            .is_err()
        {
            warn!("a broker took no publishes for 5 s; skipped");
            self.metrics.broker_publish_dropped.inc_by(n);
        }
    }

    fn presence_out(&self, user: &str, online: bool) -> Out {
        Out {
            topic: format!("{}{user}", self.presence_root),
            payload: schema::Presence {
                online,
                ts: crate::chat::now_ms(),
            }
            .to_vec()
            .into(),
            corr: None,
            seq: None,
        }
    }

    /// Forgets the users of broker `origin`; publishes who went offline.
    async fn reset(&self, origin: u64) {
        let gone = self.presence.lock().reset(origin);
        if !gone.is_empty() {
            info!(users = gone.len(), "a broker's users count as offline");
            let outs = gone.iter().map(|u| self.presence_out(u, false)).collect();
            self.publish(outs).await;
        }
    }
}

#[async_trait]
impl Outlet for Brokers {
    async fn publish(&self, outs: Vec<Out>) {
        let up = self.up();
        let down = self.conns.read().len().saturating_sub(up.len());
        if down > 0 {
            self.metrics
                .broker_publish_dropped
                .inc_by((down * outs.len()) as u64);
        }
        if let Some((last, rest)) = up.split_last() {
            for c in rest {
                self.publish_on(c, outs.clone()).await;
            }
            self.publish_on(last, outs).await;
        }
    }

    async fn publish_to(&self, origin: u64, outs: Vec<Out>) {
        if let Some(c) = self.get(origin) {
            self.publish_on(&c, outs).await;
        }
    }

    async fn ack(&self, taken: &[Taken]) {
        for t in taken {
            if let Some(c) = self.get(t.origin) {
                ack_one(&c.client, t).await;
            }
        }
    }

    async fn intercept(&self, t: &Taken) -> bool {
        let Some(user) = std::str::from_utf8(&t.topic)
            .ok()
            .and_then(|topic| topic.strip_prefix(&self.presence_root))
        else {
            return false;
        };
        let Ok(report) = serde_json::from_slice::<schema::Presence>(&t.payload) else {
            warn!("a presence report that does not read, ignored");
            return true;
        };
        let changed = self.presence.lock().report(t.origin, user, report.online);
        if let Some(online) = changed {
            self.publish(vec![self.presence_out(user, online)]).await;
        }
        true
    }
}

/// What every connection task shares.
struct Ctx {
    cfg: BridgeConfig,
    cluster: ClusterConfig,
    ordinal: u32,
    prefix: String,
    brokers: Arc<Brokers>,
    ready: watch::Sender<bool>,
    /// Flips when the bridge stops taking messages in.
    intake_stop: watch::Receiver<bool>,
    /// Flips when the connections are to close.
    close: watch::Receiver<bool>,
}

impl Ctx {
    fn set_connected(&self) {
        let n = self.brokers.up().len();
        self.brokers.metrics.connected.set(n as i64);
        self.ready.send_replace(n > 0);
    }
}

/// Runs bridge `k` of a cluster until `shutdown` flips; `ready` is true
/// while it is subscribed on at least one broker.
pub async fn run(
    cfg: BridgeConfig,
    cluster: ClusterConfig,
    prefix: String,
    chat: Arc<Chat>,
    mut shutdown: watch::Receiver<bool>,
    ready: watch::Sender<bool>,
) -> Result<(), String> {
    cluster.validate()?;
    let hostname = std::env::var("HOSTNAME").ok();
    let ordinal = cluster.ordinal(hostname.as_deref())?;
    if cluster.brokers.is_empty() {
        return Err("cluster.brokers is empty: the bridge has no broker to connect to".into());
    }
    let owned: Vec<u32> =
        schema::cluster::owned(cluster.partitions, ordinal, cluster.bridges).collect();
    info!(
        ordinal,
        bridges = cluster.bridges,
        partitions = cluster.partitions,
        owned = owned.len(),
        "cluster bridge"
    );
    let metrics = chat.metrics().clone();
    let brokers = Arc::new(Brokers {
        conns: RwLock::new(HashMap::new()),
        presence: Mutex::new(Aggregate::default()),
        presence_root: format!("{prefix}/presence/"),
        metrics: metrics.clone(),
    });
    let (tx, rx) = mpsc::channel::<Taken>(cfg.batch * 2);
    let outlet: Arc<dyn Outlet> = brokers.clone();
    let worker = tokio::spawn(process_with(
        outlet,
        chat,
        rx,
        cfg.batch,
        Drain::new(&prefix, Some(owned)),
    ));
    let (intake_tx, intake_stop) = watch::channel(false);
    let (close_tx, close) = watch::channel(false);
    let ctx = Arc::new(Ctx {
        cfg,
        cluster,
        ordinal,
        prefix,
        brokers: brokers.clone(),
        ready,
        intake_stop,
        close,
    });

    // address -> (connection id, its task's stop)
    let mut known: HashMap<SocketAddr, (u64, watch::Sender<bool>)> = HashMap::new();
    let mut last: HashMap<String, Vec<SocketAddr>> = HashMap::new();
    let mut tasks = Vec::new();
    let next_id = AtomicU64::new(1);
    let every = Duration::from_millis(ctx.cluster.resolve_interval_ms.max(100));
    loop {
        let mut want = BTreeSet::new();
        for entry in &ctx.cluster.brokers {
            match tokio::net::lookup_host(entry.as_str()).await {
                Ok(addrs) => {
                    let addrs: Vec<SocketAddr> = addrs.collect();
                    last.insert(entry.clone(), addrs);
                }
                Err(e) => {
                    warn!(broker = %entry, error = %e, "cannot resolve; keeping its last addresses")
                }
            }
            want.extend(last.get(entry).into_iter().flatten().copied());
        }
        for addr in &want {
            if known.contains_key(addr) {
                continue;
            }
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let (stop_tx, stop) = watch::channel(false);
            info!(broker = %addr, "a broker to connect to");
            tasks.push(tokio::spawn(connection(
                ctx.clone(),
                id,
                *addr,
                tx.clone(),
                stop,
            )));
            known.insert(*addr, (id, stop_tx));
        }
        let gone: Vec<SocketAddr> = known
            .keys()
            .filter(|a| !want.contains(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some((id, stop)) = known.remove(&addr) {
                info!(broker = %addr, "a broker no longer resolves; disconnecting");
                stop.send_replace(true);
                brokers.conns.write().remove(&id);
                brokers.reset(id).await;
            }
        }
        metrics.brokers.set(known.len() as i64);
        ctx.set_connected();
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    // Stop taking in; what was taken in is stored, published and acked while
    // the connections keep running; then they disconnect (the brokers keep
    // what was not acked for this ordinal's next run).
    intake_tx.send_replace(true);
    drop(tx);
    if tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .is_err()
    {
        warn!("bridge stopped before finishing its batch");
    }
    close_tx.send_replace(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    metrics.connected.set(0);
    Ok(())
}

/// One broker: connect, subscribe, take in, reconnect; until stopped.
async fn connection(
    ctx: Arc<Ctx>,
    id: u64,
    addr: SocketAddr,
    tx: mpsc::Sender<Taken>,
    mut stop: watch::Receiver<bool>,
) {
    let client_id = format!("{}-{}", ctx.cfg.client_id, ctx.ordinal);
    let opts = options(&ctx.cfg, &client_id, &addr.ip().to_string(), addr.port());
    let (client, mut eventloop) = AsyncClient::new(opts, 4096);
    let conn = Arc::new(Conn {
        client: client.clone(),
        up: AtomicBool::new(false),
    });
    ctx.brokers.conns.write().insert(id, conn.clone());
    let filters = schema::cluster::bridge_filters(
        &ctx.prefix,
        ctx.cluster.partitions,
        ctx.ordinal,
        ctx.cluster.bridges,
    );
    let owned: HashSet<&str> = filters.iter().map(|(f, _)| f.as_str()).collect();
    let others: Vec<String> = (0..ctx.cluster.bridges)
        .filter(|k| *k != ctx.ordinal)
        .flat_map(|k| {
            schema::cluster::bridge_filters(
                &ctx.prefix,
                ctx.cluster.partitions,
                k,
                ctx.cluster.bridges,
            )
        })
        .map(|(f, _)| f)
        .filter(|f| !owned.contains(f.as_str()))
        .collect();
    let drain = format!("{}/hooks/drain", ctx.prefix);
    let sync = schema::cluster::presence_sync_topic(&ctx.prefix);
    let mut tx = Some(tx);
    let mut intake_stop = ctx.intake_stop.clone();
    let mut close = ctx.close.clone();
    let mut synced = false;
    let mut need_sync = false;
    let mut down_since: Option<Instant> = None;
    let mut reset_done = false;
    let grace = Duration::from_millis(ctx.cluster.presence_grace_ms);
    loop {
        let ev = tokio::select! {
            _ = stop.changed() => break,
            _ = close.changed() => break,
            _ = intake_stop.changed(), if tx.is_some() => {
                tx = None;
                continue;
            }
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                info!(broker = %addr, session_present = ack.session_present, "bridge connected to broker");
                if !ack.session_present {
                    // a broker restarted (or forgot us): its users' reports
                    // before now are stale
                    ctx.brokers.reset(id).await;
                }
                need_sync = !synced || !ack.session_present;
                let many = filters
                    .iter()
                    .map(|(f, q)| {
                        let qos = if *q == 0 {
                            QoS::AtMostOnce
                        } else {
                            QoS::AtLeastOnce
                        };
                        Filter::new(f.clone(), qos)
                    })
                    .chain(std::iter::once(Filter::new(
                        drain.clone(),
                        QoS::AtLeastOnce,
                    )));
                if let Err(e) = client.subscribe_many(many).await {
                    warn!(error = %e, "subscribe failed");
                }
                if ack.session_present && !others.is_empty() {
                    // a session of a run with another ordinal count
                    for f in &others {
                        if let Err(e) = client.unsubscribe(f.clone()).await {
                            warn!(error = %e, "unsubscribe failed");
                        }
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                conn.up.store(true, Ordering::Relaxed);
                down_since = None;
                reset_done = false;
                ctx.set_connected();
                if need_sync {
                    need_sync = false;
                    synced = true;
                    if let Err(e) =
                        client.try_publish(sync.clone(), QoS::AtLeastOnce, false, Bytes::new())
                    {
                        warn!(error = %e, "presence sync request not sent");
                    }
                }
                // the broker (perhaps new) learns who is online elsewhere
                let online = ctx.brokers.presence.lock().online();
                let outs = online
                    .iter()
                    .map(|u| ctx.brokers.presence_out(u, true))
                    .collect();
                // not on this task: it polls the connection those publishes need
                let (brokers, c) = (ctx.brokers.clone(), conn.clone());
                tokio::spawn(async move { brokers.publish_on(&c, outs).await });
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = std::str::from_utf8(&p.topic)
                    .ok()
                    .and_then(|t| schema::cluster::unpart(&ctx.prefix, t))
                    .map(|(_, t)| t)
                    // the drain request is not a partition topic
                    .unwrap_or_else(|| String::from_utf8_lossy(&p.topic).into_owned());
                if p.qos == QoS::AtMostOnce {
                    // typing: relayed to every broker at once, never acked
                    for c in ctx.brokers.up() {
                        if c.client
                            .try_publish(topic.clone(), QoS::AtMostOnce, false, p.payload.clone())
                            .is_err()
                        {
                            ctx.brokers.metrics.broker_publish_dropped.inc();
                        }
                    }
                    continue;
                }
                let Some(sender) = &tx else {
                    // stopping: the broker keeps it for our next run
                    continue;
                };
                ctx.brokers.metrics.backlog.inc();
                let mut p = p;
                p.topic = Bytes::from(topic);
                let t = Taken::from_publish(p, id);
                if sender.send(t).await.is_err() {
                    tx = None;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if conn.up.swap(false, Ordering::Relaxed) {
                    warn!(broker = %addr, error = %e, "broker connection lost; reconnecting");
                    ctx.set_connected();
                }
                let since = *down_since.get_or_insert_with(Instant::now);
                if !reset_done && since.elapsed() >= grace {
                    reset_done = true;
                    ctx.brokers.reset(id).await;
                }
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = close.changed() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
    conn.up.store(false, Ordering::Relaxed);
    let _ = client.disconnect().await;
    for _ in 0..20 {
        match tokio::time::timeout(Duration::from_millis(100), eventloop.poll()).await {
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) => break,
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    ctx.brokers.conns.write().remove(&id);
    ctx.set_connected();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_is_online_while_any_broker_has_the_user() {
        let mut a = Aggregate::default();
        assert_eq!(a.report(1, "alice", true), Some(true));
        assert_eq!(a.report(2, "alice", true), None, "already online");
        assert_eq!(a.report(1, "alice", false), None, "still on broker 2");
        assert_eq!(a.report(1, "alice", false), None, "a repeated report");
        assert_eq!(a.report(2, "alice", false), Some(false));
        assert_eq!(a.report(2, "bob", false), None, "never online");
        assert_eq!(a.report(1, "bob", true), Some(true));
        assert_eq!(a.report(2, "carol", true), Some(true));
        assert_eq!(a.report(1, "carol", true), None);
        let mut gone = a.reset(1);
        gone.sort();
        assert_eq!(gone, vec!["bob".to_owned()], "carol is still on broker 2");
        assert_eq!(a.online(), vec!["carol".to_owned()]);
    }

    #[test]
    fn the_ordinal_comes_from_config_or_the_host_name() {
        let mut c = ClusterConfig {
            partitions: 8,
            bridges: 3,
            ..Default::default()
        };
        assert_eq!(c.ordinal(Some("chatmq-bridge-2")), Ok(2));
        assert!(c.ordinal(Some("chatmq-bridge-3")).is_err(), "3 of 3");
        assert!(c.ordinal(Some("laptop")).is_err());
        assert!(c.ordinal(None).is_err());
        c.bridge_ordinal = Some(1);
        assert_eq!(c.ordinal(Some("chatmq-bridge-2")), Ok(1));
        assert!(c.validate().is_ok());
        c.bridges = 9;
        assert!(c.validate().is_err(), "more bridges than partitions");
        c.bridges = 0;
        assert!(c.validate().is_err());
        assert!(ClusterConfig::default().validate().is_ok());
    }
}
