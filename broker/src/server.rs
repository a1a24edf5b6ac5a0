//! Starting the broker: the rumqttd router, the broker's internal link,
//! our listeners and their accept loops; draining and stopping.

use crate::acl::{Access, Authorizer};
use crate::auth::{AuthError, Authenticator};
use crate::config::BrokerConfig;
use crate::direct::Direct;
use crate::link::{LinkReceiver, LinkSender};
use crate::metrics::BrokerMetrics;
use crate::presence::Presence;
use crate::rate::ConnectRate;
use crate::registry::Registry;
use crate::retain::Retained;
use crate::shared::{now_ms, Shared};
use crate::transport::Kind;
use arc_swap::ArcSwap;
use rumqttd::protocol::Publish;
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
    pub(crate) shared: Arc<Shared>,
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
        let router = crate::router::spawn(&config);
        let direct = Arc::new(Direct::new(&config.prefix));
        let presences = Arc::new(Presence::new(&config.prefix));
        let internal = crate::internal::start(
            &router,
            &config,
            access.clone(),
            direct.clone(),
            presences.clone(),
            metrics.clone(),
        )
        .await
        .map_err(StartError::Router)?;
        let publisher = crate::publisher::start(&router)
            .await
            .map_err(StartError::Router)?;
        let (closing_tx, closing) = watch::channel(false);

        let limits = &config.limits;
        access.set_miss_cache(
            limits.room_miss_cache,
            Duration::from_millis(limits.room_miss_ttl_ms),
        );
        let retained = Retained::new(limits.retained_per_user, limits.retained_bytes_per_user);
        let authz = Authorizer::new(&config.prefix, config.open_topics, access);
        let connect_rate = ConnectRate::new(limits.connects_per_sec_per_ip);
        let shared = Arc::new(Shared {
            presences,
            direct,
            publisher,
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
            trim_pending: Default::default(),
            delayed_wills: Default::default(),
            expiry_timers: Default::default(),
            kept_subs: Default::default(),
            bridge_ready,
            retained,
            internal: internal.outbox,
            connect_rate,
            drained: internal.drained,
        });
        let mut addrs = HashMap::new();
        let mut tasks = Vec::new();
        let reload_secs = shared.config.secrets_reload_secs;
        let idle = shared.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                idle.connect_rate.forget_idle();
            }
        }));
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

    /// Opens a router link for a trusted service in this process (the chat
    /// bridge): `client_id` must contain `@` (refused in clients' ids, so no
    /// client can take it over); `filters` are subscribed at QoS 1.
    pub async fn service_link(
        &self,
        client_id: &str,
        filters: Vec<String>,
    ) -> Result<(Arc<LinkSender>, LinkReceiver), String> {
        if !client_id.contains('@') {
            return Err(format!("service link id {client_id:?} lacks '@'"));
        }
        let direct = (self.shared.direct.clone(), self.shared.metrics.clone());
        crate::link::open(&self.shared.router, client_id, filters, Some(direct)).await
    }

    /// Whether a user has a connection to this broker now, as a function
    /// the chat service can keep.
    pub fn connected(&self) -> Arc<dyn Fn(&str) -> bool + Send + Sync> {
        let p = self.shared.presences.clone();
        Arc::new(move |user| p.is_local(user))
    }

    /// The namespace prefix (`broker.prefix`).
    pub fn prefix(&self) -> &str {
        &self.shared.config.prefix
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
                if !shared.connect_rate.admit(peer.ip()) {
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
