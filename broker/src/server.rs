//! Starting the broker: the rumqttd router, our listeners, and the handle
//! shared by every connection task.

use crate::acl::{Access, Authorizer};
use crate::auth::{AuthError, Authenticator, Principal};
use crate::config::BrokerConfig;
use crate::metrics::BrokerMetrics;
use crate::registry::Registry;
use crate::retain::{Retained, Verdict};
use crate::transport::Kind;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::{LastWill, Packet, PubAck, PubAckReason, Publish};
use rumqttd::{Notification, RouterConfig, SegmentConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

/// Errors starting the broker.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("auth: {0}")]
    Auth(#[from] AuthError),
    #[error("tls: {0}")]
    Tls(String),
    #[error("listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("router: {0}")]
    Router(String),
}

type LinkFn = dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync;

/// Builds router links. rumqttd's `LinkBuilder::build` blocks until the
/// router answers, so it runs on the blocking pool with a timeout.
#[derive(Clone)]
pub struct RouterHandle {
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
    pub async fn link(
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

/// State shared by all connection tasks.
pub struct Shared {
    pub config: BrokerConfig,
    pub auth: Authenticator,
    pub authz: Authorizer,
    pub registry: Registry,
    pub router: RouterHandle,
    /// The TLS acceptor new connections use, swapped when the certificate
    /// files change (`crate::reload`); a connection keeps the one it began with.
    pub tls: Option<Arc<ArcSwap<tokio_rustls::TlsAcceptor>>>,
    /// Flips to true when users are cut off (shutdown): user sessions end,
    /// service sessions (the bridge) go on until the broker is dropped.
    pub shutdown: watch::Receiver<bool>,
    /// Flips to true when the broker is dropped: every session ends.
    pub closing: watch::Receiver<bool>,
    pub metrics: Arc<BrokerMetrics>,
    /// User sessions past CONNACK, not yet ended.
    pub live_users: std::sync::atomic::AtomicUsize,
    /// False until the in-process bridge has subscribed: users are held at
    /// CONNECT until then, so no send or request is published before anyone
    /// listens (rumqttd drops messages that match no subscription).
    pub bridge_ready: watch::Receiver<bool>,
    /// Who holds which retained message on open topics.
    pub retained: Retained,
    /// Packets for the broker's own router link (presence, wills, the drain
    /// nonce, acks of what it receives), written by one task in order.
    internal: tokio::sync::mpsc::Sender<Packet>,
    connect_rate: Mutex<HashMap<std::net::IpAddr, (f64, std::time::Instant)>>,
    /// The last nonce the bridge answered on `{prefix}/hooks/drained`.
    drained: watch::Receiver<bytes::Bytes>,
}

impl Shared {
    /// Publishes the retained presence of a user who came online or went offline.
    pub fn presence(&self, user: &str, online: bool) {
        let topic = format!("{}/presence/{user}", self.config.prefix);
        let payload = serde_json::json!({ "online": online, "ts": now_ms() }).to_string();
        self.internal_publish(Publish::new(topic.into_bytes(), payload.into_bytes(), true));
    }

    /// Publishes the will of `who`'s connection, under the same retain
    /// policy as a publish of theirs (a refused one is dropped).
    pub fn publish_will(&self, will: LastWill, who: &Principal) {
        let topic = std::str::from_utf8(&will.topic).unwrap_or("");
        let mut retain = will.retain;
        match self.retain_policy(who, topic, retain, will.message.len()) {
            Verdict::Pass => {}
            Verdict::Strip => retain = false,
            Verdict::Refuse => {
                info!(topic = %topic.escape_debug(), "retained will refused");
                return;
            }
        }
        self.internal_publish(Publish::new(will.topic, will.message, retain));
    }

    /// The retain policy ([`crate::retain`]) for a publish of `who` that
    /// passed the ACL, counted in the metrics.
    pub fn retain_policy(&self, who: &Principal, topic: &str, retain: bool, len: usize) -> Verdict {
        let in_ns = self.authz.in_namespace(topic);
        let (v, held) = self.retained.check(who, topic, in_ns, retain, len);
        let m = &self.metrics;
        m.retained_messages.set(held as i64);
        match v {
            Verdict::Strip => m.retain_stripped.inc(),
            Verdict::Refuse => m.retained_refused.inc(),
            Verdict::Pass => {}
        }
        v
    }

    fn internal_publish(&self, publish: Publish) {
        if let Err(e) = self.internal.try_send(Packet::Publish(publish, None)) {
            warn!(error = %e, "internal publish dropped");
        }
    }

    /// Per-source connection rate (token bucket, burst 2x).
    fn admit(&self, ip: std::net::IpAddr) -> bool {
        let rate = self.config.limits.connects_per_sec_per_ip.max(1) as f64;
        let now = std::time::Instant::now();
        let mut g = self.connect_rate.lock();
        if g.len() > 100_000 {
            g.retain(|_, (_, t)| now.duration_since(*t).as_secs() < 10);
        }
        let (tokens, last) = g.entry(ip).or_insert((rate * 2.0, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate * 2.0);
        *last = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Connections the kernel may queue before we accept them (capped by
/// `net.core.somaxconn`, 4096 on current kernels). tokio's default is 1024:
/// when thousands of clients reconnect at once, a full queue drops their
/// SYNs and each waits out TCP's retransmission backoff (1 s, 3 s, 7 s...).
const LISTEN_BACKLOG: u32 = 4096;

fn listen(a: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if a.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(a)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Listeners, already bound (port 0 in tests).
#[derive(Default)]
pub struct Listeners {
    pub tcp: Option<TcpListener>,
    pub tls: Option<TcpListener>,
    pub ws: Option<TcpListener>,
    pub wss: Option<TcpListener>,
}

impl Listeners {
    /// Binds every address the config names.
    pub async fn bind(cfg: &BrokerConfig) -> Result<Listeners, StartError> {
        async fn b(a: Option<SocketAddr>) -> Result<Option<TcpListener>, StartError> {
            match a {
                Some(a) => listen(a).map(Some).map_err(|e| StartError::Bind(a, e)),
                None => Ok(None),
            }
        }
        Ok(Listeners {
            tcp: b(cfg.tcp).await?,
            tls: b(cfg.tls_listen).await?,
            ws: b(cfg.ws).await?,
            wss: b(cfg.wss).await?,
        })
    }
}

/// A running broker.
pub struct Broker {
    pub shared: Arc<Shared>,
    /// Bound addresses by listener name ("tcp", "tls", "ws", "wss").
    pub addrs: HashMap<&'static str, SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    closing: watch::Sender<bool>,
}

impl Broker {
    /// Starts the router and the accept loops. `access` is the membership
    /// view the bridge keeps up to date; `shutdown` flips to true to stop.
    pub async fn start(
        config: BrokerConfig,
        auth: Authenticator,
        access: Arc<Access>,
        listeners: Listeners,
        shutdown: watch::Receiver<bool>,
        bridge_ready: watch::Receiver<bool>,
        metrics: Arc<BrokerMetrics>,
    ) -> Result<Broker, StartError> {
        let tls = match &config.tls {
            Some(files) => {
                let (acceptor, pem) = crate::transport::tls_acceptor(&files.cert, &files.key)
                    .map_err(StartError::Tls)?;
                let watched = crate::reload::Watched::new(
                    "tls certificate and key",
                    vec![files.cert.clone(), files.key.clone()],
                    pem,
                );
                Some((Arc::new(ArcSwap::from_pointee(acceptor)), watched))
            }
            None if listeners.tls.is_some() || listeners.wss.is_some() => {
                return Err(StartError::Tls(
                    "a TLS listener needs broker.tls.cert and broker.tls.key".into(),
                ))
            }
            None => None,
        };
        let reserved = config
            .client_id_reservations()
            .map_err(|e| StartError::Auth(AuthError::Config(e)))?;
        let router_tx = rumqttd::Router::new(0, router_config(&config)).spawn();
        // rumqttd's alerts and meters only flow from the timer of its own
        // `Broker::start`; see crate::metrics for how we observe them instead.
        let build: Arc<LinkFn> = Arc::new(move |id: &str, clean: bool| {
            LinkBuilder::new(id, router_tx.clone())
                .clean_session(clean)
                .build()
                .map_err(|e| e.to_string())
        });
        let router = RouterHandle {
            build,
            building: Arc::new(tokio::sync::Semaphore::new(LINKS_BUILDING)),
        };
        let (mut internal_tx, mut internal_rx, _) = router
            // '@' is refused in clients' ids: no client can take this link over
            .link("chatmq@internal", true)
            .await
            .map_err(StartError::Router)?;
        let access_topic = format!("{}/hooks/access", config.prefix);
        let drained_topic = format!("{}/hooks/drained", config.prefix);
        if config.access_from_hooks {
            internal_tx
                .subscribe(access_topic.clone())
                .map_err(|e| StartError::Router(e.to_string()))?;
        }
        internal_tx
            .subscribe(drained_topic.clone())
            .map_err(|e| StartError::Router(e.to_string()))?;
        // rumqttd caches which filters a topic matches only when at least one
        // does; a topic nobody subscribes to is matched against every filter
        // (one per user's reply topic) on each publish, on the router's one
        // thread. Presence of users nobody watches was that: in a reconnect
        // storm of 10,000 users the router spent 94 % of its time in
        // `protocol::matches`. Watching presence here (and dropping it) makes
        // each presence topic a cached match after its first publish.
        internal_tx
            .subscribe(format!("{}/presence/+", config.prefix))
            .map_err(|e| StartError::Router(e.to_string()))?;
        let hooks_access = access.clone();
        let (drained_tx, drained) = watch::channel(bytes::Bytes::new());
        // One task writes the internal link, so its packets (and the acks
        // rumqttd wants in delivery order) reach the router in order, and a
        // full router channel delays them instead of dropping them.
        let (internal, mut outbox) = tokio::sync::mpsc::channel::<Packet>(65_536);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while outbox.recv_many(&mut batch, 256).await > 0 {
                if send_all(&mut internal_tx, &mut batch).await.is_err() {
                    warn!("the router dropped the broker's internal link");
                    return;
                }
            }
        });
        let acks = internal.clone();
        tokio::spawn(async move {
            while let Ok(n) = internal_rx.next().await {
                match n {
                    Some(Notification::Forward(f)) => {
                        let topic = &f.publish.topic[..];
                        if topic == access_topic.as_bytes() {
                            apply_access_hook(&hooks_access, &f.publish.payload);
                        } else if topic == drained_topic.as_bytes() {
                            drained_tx.send_replace(f.publish.payload.clone());
                        }
                        // rumqttd delivers at the publisher's QoS: a QoS 1
                        // delivery unacked would stall this link at 100
                        if let Some(pkid) = forward_pkid(&f.publish) {
                            let ack = PubAck {
                                pkid,
                                reason: PubAckReason::Success,
                            };
                            if acks.send(Packet::PubAck(ack, None)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Notification::Unschedule) if internal_rx.wake().await.is_err() => return,
                    _ => {}
                }
            }
        });
        let (closing_tx, closing) = watch::channel(false);

        let limits = &config.limits;
        access.set_miss_cache(
            limits.room_miss_cache,
            Duration::from_millis(limits.room_miss_ttl_ms),
        );
        let retained = Retained::new(limits.retained_per_user, limits.retained_bytes_per_user);
        let authz = Authorizer::new(&config.prefix, config.open_topics, access);
        let shared = Arc::new(Shared {
            config,
            auth,
            authz,
            registry: Registry::new(reserved),
            router,
            tls: tls.as_ref().map(|(a, _)| a.clone()),
            shutdown,
            closing,
            metrics,
            live_users: Default::default(),
            bridge_ready,
            retained,
            internal,
            connect_rate: Mutex::new(HashMap::new()),
            drained,
        });
        let mut addrs = HashMap::new();
        let mut tasks = Vec::new();
        let reload_secs = shared.config.secrets_reload_secs;
        if reload_secs > 0 {
            let tls = tls.map(|(a, w)| (w, a));
            let every = Duration::from_secs(reload_secs);
            tasks.push(tokio::spawn(crate::reload::run(shared.clone(), tls, every)));
        }
        for (kind, l) in [
            (Kind::Tcp, listeners.tcp),
            (Kind::Tls, listeners.tls),
            (Kind::Ws, listeners.ws),
            (Kind::Wss, listeners.wss),
        ] {
            let Some(l) = l else { continue };
            let addr = l
                .local_addr()
                .map_err(|e| StartError::Router(e.to_string()))?;
            info!(listener = kind.name(), %addr, "listening");
            addrs.insert(kind.name(), addr);
            tasks.push(tokio::spawn(accept_loop(shared.clone(), kind, l)));
        }
        Ok(Broker {
            shared,
            addrs,
            tasks,
            closing: closing_tx,
        })
    }

    /// After the users are cut off (the `shutdown` watch): waits until
    /// their sessions have ended, then until the bridge has taken in and
    /// stored everything they published (the drain handshake, see
    /// `chat_bridge::bridge`). False if `within` ran out first.
    pub async fn drain(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let sh = &self.shared;
        while sh.live_users.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    users = sh.live_users.load(std::sync::atomic::Ordering::SeqCst),
                    "user sessions still open at the end of the grace period"
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let nonce = bytes::Bytes::from(format!("{:016x}", now_ms() ^ 0x5bd1_e995_u64 << 20));
        let mut drained = sh.drained.clone();
        let topic = format!("{}/hooks/drain", sh.config.prefix);
        sh.internal_publish(Publish::new(topic.into_bytes(), nonce.to_vec(), false));
        tokio::time::timeout_at(deadline, drained.wait_for(|n| *n == nonce))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops accepting; connections see the shutdown signal themselves.
    pub fn stop_accepting(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop_accepting();
        self.closing.send_replace(true);
    }
}

async fn accept_loop(shared: Arc<Shared>, kind: Kind, listener: TcpListener) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                shared
                    .metrics
                    .opened
                    .with_label_values(&[kind.name()])
                    .inc();
                if !shared.admit(peer.ip()) {
                    info!(%peer, "connection rate exceeded");
                    shared
                        .metrics
                        .refused
                        .with_label_values(&["rate_limited"])
                        .inc();
                    continue;
                }
                tokio::spawn(crate::connection::serve(shared.clone(), kind, tcp, peer));
            }
            Err(e) => {
                // e.g. out of file descriptors: back off instead of spinning
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// `{"room":..,"user":..,"joined":bool}` or `{"room":..,"open":bool}` from the bridge.
fn apply_access_hook(access: &Access, payload: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return;
    };
    let Some(room) = v.get("room").and_then(|r| r.as_str()) else {
        return;
    };
    if let Some(open) = v.get("open").and_then(|o| o.as_bool()) {
        access.set_open(room, open);
    }
    if let (Some(user), Some(joined)) = (
        v.get("user").and_then(|u| u.as_str()),
        v.get("joined").and_then(|j| j.as_bool()),
    ) {
        access.set_member(room, user, joined);
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
    let raw = p.serialize();
    let qos = (raw.first()? >> 1) & 0b11;
    if qos == 0 {
        return None;
    }
    Some(u16::from_be_bytes([*raw.get(1)?, *raw.get(2)?]))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{Ensured, LoadBudget, Loader};

    /// A broker run apart learns of new rooms through `{prefix}/hooks/access`:
    /// that forgets a remembered miss too.
    #[tokio::test]
    async fn the_access_hook_forgets_a_miss() {
        let access = Access::new();
        let loader: Loader = Arc::new(|_room: String| Box::pin(async { Ok(None) }));
        access.set_loader(loader);
        let mut budget = LoadBudget::new(10);
        assert_eq!(access.ensure("r9", &mut budget, 10).await, Ensured::Missing);
        assert_eq!(
            access.ensure("r9", &mut budget, 10).await,
            Ensured::CachedMiss
        );
        apply_access_hook(&access, br#"{"room":"r9","user":"bob","joined":true}"#);
        assert!(access.is_member("r9", "bob"));
        assert_eq!(access.ensure("r9", &mut budget, 10).await, Ensured::Missing);
        apply_access_hook(&access, br#"{"room":"r9","open":true}"#);
        assert!(access.can_read("r9", "anyone"));
    }
}
