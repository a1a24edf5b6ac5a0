//! Assembles one process: the broker, the bridge and its store, the HTTP
//! endpoints, in the role the settings give, and stops them in order.

use crate::settings::{Role, Settings};
use crate::store::{self, NoSink, Sink};
use anyhow::Context;
use broker::acl::Access;
use broker::auth::Authenticator;
use broker::http::Health;
use broker::metrics::BrokerMetrics;
use broker::Broker;
use chat_bridge::chat::{AccessSink, Chat, SendLimits};
use chat_bridge::metrics::BridgeMetrics;
use chat_bridge::store::Store;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The process's Prometheus registry and the broker's meters, made before
/// the server so that the log subscriber can feed rumqttd's warnings into
/// them (`BrokerMetrics::rumqttd_tap`).
pub struct Meters {
    pub registry: prometheus::Registry,
    pub broker: Arc<BrokerMetrics>,
}

impl Meters {
    pub fn new() -> Meters {
        let registry = prometheus::Registry::new();
        let broker = BrokerMetrics::new(&registry);
        Meters { registry, broker }
    }
}

impl Default for Meters {
    fn default() -> Self {
        Meters::new()
    }
}

/// Every socket of the process, bound before it starts (port 0 in tests).
#[derive(Default)]
pub struct Listeners {
    /// MQTT over TCP, TLS, WebSocket; none when the role runs no broker.
    pub mqtt: broker::Listeners,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub http: Option<TcpListener>,
}

impl Listeners {
    /// Binds every address the settings name for the role.
    pub async fn bind(settings: &Settings) -> anyhow::Result<Listeners> {
        let mqtt = if settings.server.role.runs_broker() {
            broker::Listeners::bind(&settings.broker).await?
        } else {
            broker::Listeners::default()
        };
        let http = match settings.server.http {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("server.http: listen on {addr}"))?,
            ),
            None => None,
        };
        Ok(Listeners { mqtt, http })
    }

    /// Bound addresses by name: `tcp`, `tls`, `ws`, `wss`, `http`.
    pub fn addrs(&self) -> BTreeMap<&'static str, SocketAddr> {
        let m = &self.mqtt;
        [
            ("tcp", &m.tcp),
            ("tls", &m.tls),
            ("ws", &m.ws),
            ("wss", &m.wss),
            ("http", &self.http),
        ]
        .into_iter()
        .filter_map(|(name, l)| Some((name, l.as_ref()?.local_addr().ok()?)))
        .collect()
    }
}

/// Starts the server and runs it until `shutdown` completes, then stops it
/// gracefully (within `server.grace_period_ms`).
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let server = tokio::select! {
        s = Server::start(settings, listeners, Meters::new()) => s?,
        _ = &mut shutdown => return Ok(()),
    };
    shutdown.await;
    server.stop().await
}

/// A started server.
pub struct Server {
    broker: Option<Broker>,
    health: Arc<Health>,
    users_stop: watch::Sender<bool>,
    bridge_stop: watch::Sender<bool>,
    http_stop: watch::Sender<bool>,
    bridge: Option<JoinHandle<()>>,
    store: Option<Arc<dyn Store>>,
    grace: Duration,
}

impl Server {
    /// Starts every part the role runs and returns once the server is ready:
    /// the broker accepts connections and, where a bridge runs, it has
    /// subscribed (users are held at CONNECT until then).
    pub async fn start(
        mut cfg: Settings,
        listeners: Listeners,
        meters: Meters,
    ) -> anyhow::Result<Server> {
        let role = cfg.server.role;
        let bridge_metrics = BridgeMetrics::new(&meters.registry);
        crate::alloc::metrics(&meters.registry);
        let health = Health::new();
        // users_stop cuts users off (the broker's shutdown); bridge_stop stops the bridge
        let (users_stop, users_stop_rx) = watch::channel(false);
        let (bridge_stop, bridge_stop_rx) = watch::channel(false);
        let (http_stop, http_stop_rx) = watch::channel(false);
        let ws_port = listeners.addrs().get("ws").map(|a| a.port());
        // the admin API: routes now, its backend once the bridge is up
        let admin = (!cfg.server.admin_token.is_empty() && role == Role::All).then(|| {
            crate::admin::AdminState::new(&cfg.server.admin_token, &cfg.server.admin_user)
        });
        if !cfg.server.admin_token.is_empty() && role != Role::All {
            tracing::warn!(
                "server.admin_token is set, but the admin API runs in `chatmq all` only"
            );
        }
        if admin.is_some() && !cfg.bridge.admin_users.contains(&cfg.server.admin_user) {
            cfg.bridge.admin_users.push(cfg.server.admin_user.clone());
        }
        if let Some(l) = listeners.http {
            let mut routes = broker::http::router(meters.registry.clone(), health.clone());
            if let Some(a) = &admin {
                routes = routes.merge(crate::admin::routes(a.clone()));
            }
            match ws_port {
                Some(ws_port) if cfg.server.demo && role.runs_broker() => {
                    let mqtt_js = crate::demo::Demo::find_mqtt_js(&cfg.server.demo_mqtt_js);
                    if mqtt_js.is_none() {
                        tracing::info!("demo page: MQTT.js from its CDN (no local mqtt.esm.js)");
                    }
                    routes = routes.merge(crate::demo::routes(crate::demo::Demo {
                        ws_port,
                        prefix: cfg.broker.prefix.clone(),
                        mqtt_js,
                    }));
                }
                _ => {}
            }
            tokio::spawn(broker::http::serve(l, routes, http_stop_rx));
        }
        let access = Arc::new(Access::new());
        // the in-process bridge flips this; a broker alone cannot know its bridge
        let (ready_tx, ready_rx) = watch::channel(role != Role::All);
        let mut server = Server {
            broker: None,
            health: health.clone(),
            users_stop,
            bridge_stop,
            http_stop,
            bridge: None,
            store: None,
            grace: Duration::from_millis(cfg.server.grace_period_ms),
        };
        if cfg.cluster.enabled() && role == Role::All {
            anyhow::bail!(
                "cluster.partitions is {}: a cluster runs brokers and bridges apart \
                 (`chatmq broker`, `chatmq bridge`); set it to 0 for one process",
                cfg.cluster.partitions
            );
        }
        cfg.broker.partitions = cfg.cluster.partitions;
        // glibc keeps what expired sessions freed unless asked
        cfg.broker.trim_memory = Some(pagealloc::trim);
        if role == Role::Broker && cfg.store.backend == crate::settings::Backend::Scylla {
            // a broker run apart reads a room's members from the shared
            // store the first time it needs them (after a restart, or a
            // room it never heard of on `{prefix}/hooks/access`)
            let store = store::open(&cfg, &bridge_metrics).await?;
            access.set_shared_loader(store::shared_loader(store.clone()));
            access.set_loader(store::loader(store));
        }
        if role.runs_broker() {
            let auth = authenticator(&mut cfg, role)?;
            let b = Broker::start(
                cfg.broker.clone(),
                auth,
                access.clone(),
                listeners.mqtt,
                users_stop_rx,
                ready_rx,
                meters.broker.clone(),
            )
            .await?;
            server.broker = Some(b);
        }
        if !role.runs_bridge() {
            return Ok(server);
        }
        let store = store::open(&cfg, &bridge_metrics).await?;
        server.store = Some(store.clone());
        let sink: Arc<dyn AccessSink> = if role == Role::All {
            access.set_loader(store::loader(store.clone()));
            access.set_shared_loader(store::shared_loader(store.clone()));
            Arc::new(Sink(access.clone()))
        } else {
            Arc::new(NoSink)
        };
        let limits = SendLimits {
            per_sec: cfg.bridge.sends_per_sec,
            burst: cfg.bridge.sends_burst,
        };
        let mut chat = Chat::new(store.clone(), &cfg.broker.prefix, sink, limits);
        if let Some(b) = &server.broker {
            chat = chat.with_online(b.connected());
        }
        if cfg.bridge.moderation.enabled {
            match &server.broker {
                Some(b) => {
                    let m = crate::moderation::LinkModerator::start(b)
                        .await
                        .map_err(|e| anyhow::anyhow!("moderation links: {e}"))?;
                    chat = chat.with_moderation(cfg.bridge.moderation.clone(), m);
                }
                None => tracing::warn!(
                    "bridge.moderation is enabled, but pre-publish moderation runs in `chatmq all` only"
                ),
            }
        }
        let chat = Arc::new(
            chat.with_limits(cfg.bridge.limits())
                .with_direct_acceptance(cfg.bridge.direct_needs_acceptance)
                .with_retention(cfg.bridge.retention.clone())
                .with_admins(cfg.bridge.admin_users.clone())
                .with_hooks(cfg.bridge.hooks, cfg.bridge.hook_users.clone())
                .with_metrics(bridge_metrics),
        );
        // retention's sweep: a cluster's bridge sweeps its partitions' rooms
        let owns: Box<dyn Fn(&str) -> bool + Send + Sync> = if cfg.cluster.enabled() {
            let hostname = std::env::var("HOSTNAME").ok();
            let ordinal = cfg
                .cluster
                .ordinal(hostname.as_deref())
                .map_err(|e| anyhow::anyhow!(e))?;
            let (parts, bridges) = (cfg.cluster.partitions, cfg.cluster.bridges.max(1));
            Box::new(move |room| schema::cluster::partition(room, parts) % bridges == ordinal)
        } else {
            Box::new(|_| true)
        };
        tokio::spawn(chat_bridge::chat::retention::run_sweeper(
            chat.clone(),
            owns,
            bridge_stop_rx.clone(),
        ));
        ready_tx.send_replace(false);
        let mut bridge_ready = ready_tx.subscribe();
        let ready_probe = ready_tx.subscribe();
        health.add(
            "bridge",
            Arc::new(move || {
                let up = *ready_probe.borrow();
                Box::pin(async move {
                    if up {
                        Ok(())
                    } else {
                        Err("not connected and subscribed to the broker".into())
                    }
                })
            }),
        );
        let probe_store = store.clone();
        health.add(
            "store",
            Arc::new(move || {
                let s = probe_store.clone();
                Box::pin(async move { s.ping().await.map_err(|e| e.to_string()) })
            }),
        );
        if let (Some(a), Some(b)) = (&admin, &server.broker) {
            let (publish, mut rx) = b
                .service_link("chatmq@admin", Vec::new())
                .await
                .map_err(|e| anyhow::anyhow!("admin link: {e}"))?;
            // nothing comes in (no filters); the receiver keeps the link open
            tokio::spawn(async move {
                let mut sink = Vec::new();
                while !rx.recv(16, &mut sink).await.closed {
                    sink.clear();
                }
            });
            a.set_backend(crate::admin::Backend {
                chat: chat.clone(),
                publish,
            });
        }
        let bcfg = cfg.bridge.clone();
        server.bridge = Some(match &server.broker {
            // in one process the bridge gets a router link, not an MQTT client
            Some(b) => crate::in_process::run(b, bcfg.batch, chat, bridge_stop_rx, ready_tx)
                .await
                .map_err(|e| anyhow::anyhow!("bridge link: {e}"))?,
            None if cfg.cluster.enabled() => {
                let prefix = cfg.broker.prefix.clone();
                let cluster = cfg.cluster.clone();
                tokio::spawn(async move {
                    let r = chat_bridge::bridge::cluster::run(
                        bcfg,
                        cluster,
                        prefix,
                        chat,
                        bridge_stop_rx,
                        ready_tx,
                    )
                    .await;
                    if let Err(e) = r {
                        tracing::error!(error = %e, "bridge stopped");
                    }
                })
            }
            None => {
                let prefix = cfg.broker.prefix.clone();
                tokio::spawn(async move {
                    let r = chat_bridge::bridge::run(bcfg, prefix, chat, bridge_stop_rx, ready_tx)
                        .await;
                    if let Err(e) = r {
                        tracing::error!(error = %e, "bridge stopped");
                    }
                })
            }
        });
        bridge_ready
            .wait_for(|r| *r)
            .await
            .map_err(|_| anyhow::anyhow!("bridge stopped"))?;
        Ok(server)
    }

    /// Bound MQTT listener addresses by name (`tcp`, `tls`, `ws`, `wss`).
    pub fn mqtt_addrs(&self) -> BTreeMap<&'static str, SocketAddr> {
        match &self.broker {
            Some(b) => b.addrs.iter().map(|(k, v)| (*k, *v)).collect(),
            None => BTreeMap::new(),
        }
    }

    /// Graceful stop: no new connections, users cut off, the bridge stores
    /// what they sent (the drain handshake), the bridge stops, the store is
    /// flushed; all within `server.grace_period_ms`.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.grace;
        let remaining = || deadline.saturating_duration_since(Instant::now());
        tracing::info!(grace_ms = self.grace.as_millis() as u64, "shutting down");
        self.health.set_draining();
        if let Some(b) = &self.broker {
            b.stop_accepting();
            let _ = self.users_stop.send(true);
            if b.drain(remaining()).await {
                tracing::info!("drained: every accepted publish reached the bridge");
            } else {
                tracing::warn!("grace period over before the bridge confirmed the drain");
            }
        }
        let _ = self.bridge_stop.send(true);
        if let Some(t) = self.bridge.take() {
            if tokio::time::timeout(remaining(), t).await.is_err() {
                tracing::warn!("grace period over before the bridge stopped");
            }
        }
        if let Some(s) = self.store.take() {
            s.flush().await.map_err(|e| anyhow::anyhow!("flush: {e}"))?;
        }
        let _ = self.http_stop.send(true);
        drop(self.broker.take());
        tracing::info!("stopped");
        Ok(())
    }
}

/// The broker's logins: configured users, the demo users if enabled, and
/// the bridge's client id reserved when the bridge runs apart.
fn authenticator(cfg: &mut Settings, role: Role) -> anyhow::Result<Authenticator> {
    cfg.broker.access_from_hooks = role == Role::Broker;
    if role == Role::Broker && !cfg.bridge.client_id.is_empty() {
        // the bridge runs apart: nobody else may take its client id (and
        // the session the broker keeps for it) while it is away
        cfg.broker
            .reserved_client_ids
            .insert(cfg.bridge.client_id.clone(), cfg.bridge.username.clone());
        // a cluster's bridge k connects as `{client_id}-{k}`
        for k in 0..cfg.cluster.partitions {
            cfg.broker.reserved_client_ids.insert(
                format!("{}-{k}", cfg.bridge.client_id),
                cfg.bridge.username.clone(),
            );
        }
    }
    let mut demo = Vec::new();
    if cfg.broker.auth.demo_users {
        tracing::warn!("demo users alice/alice-pw and bob/bob-pw are enabled; set broker.auth.demo_users = false in production");
        for (u, p) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
            if !cfg.broker.auth.users.contains_key(u) {
                cfg.broker.auth.users.insert(u.to_owned(), p.to_owned());
                demo.push(u);
            }
        }
    }
    let auth =
        Authenticator::new(&cfg.broker.auth).map_err(|e| anyhow::anyhow!("broker.auth: {e}"))?;
    let plain: Vec<&str> = auth
        .plain_text_accounts()
        .into_iter()
        .filter(|a| !demo.contains(a))
        .collect();
    if !plain.is_empty() {
        tracing::warn!(
            accounts = %plain.join(","),
            "passwords configured in plain text; store argon2id hashes instead (`chatmq hash-password`)"
        );
    }
    Ok(auth)
}
