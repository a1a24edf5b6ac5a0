//! The per-process state every connection task shares.

use crate::acl::Authorizer;
use crate::auth::{Authenticator, Principal};
use crate::config::BrokerConfig;
use crate::direct::Direct;
use crate::metrics::BrokerMetrics;
use crate::presence::Presence;
use crate::rate::ConnectRate;
use crate::registry::Registry;
use crate::retain::{Retained, Verdict};
use crate::router::RouterHandle;
use arc_swap::ArcSwap;
use rumqttd::protocol::{LastWill, Packet, Publish};
use std::sync::Arc;
use tokio::sync::watch;
use tracing::{info, warn};

/// State shared by all connection tasks.
pub(crate) struct Shared {
    pub(crate) config: BrokerConfig,
    pub(crate) auth: Authenticator,
    pub(crate) authz: Authorizer,
    pub(crate) registry: Registry,
    pub(crate) router: RouterHandle,
    /// The TLS acceptor new connections use, swapped when the certificate
    /// files change (`crate::reload`); a connection keeps the one it began with.
    pub(crate) tls: Option<Arc<ArcSwap<tokio_rustls::TlsAcceptor>>>,
    /// Flips to true when users are cut off (shutdown): user sessions end,
    /// service sessions (the bridge) go on until the broker is dropped.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Flips to true when the broker is dropped: every session ends.
    pub(crate) closing: watch::Receiver<bool>,
    pub(crate) metrics: Arc<BrokerMetrics>,
    /// User sessions past CONNACK, not yet ended.
    pub(crate) live_users: std::sync::atomic::AtomicUsize,
    /// False until the in-process bridge has subscribed: users are held at
    /// CONNECT until then, so no send or request is published before anyone
    /// listens (rumqttd drops messages that match no subscription).
    pub(crate) bridge_ready: watch::Receiver<bool>,
    /// Who holds which retained message on open topics.
    pub(crate) retained: Retained,
    /// Packets for the broker's own router link (presence, wills, the drain
    /// nonce, acks of what it receives), written by one task in order.
    pub(crate) internal: tokio::sync::mpsc::Sender<Packet>,
    /// New connections per source address (`broker.limits.connects_per_sec_per_ip`).
    pub(crate) connect_rate: ConnectRate,
    /// The last nonce the bridge answered on `{prefix}/hooks/drained`.
    pub(crate) drained: watch::Receiver<bytes::Bytes>,
    /// Each user's last presence, handed to new subscribers by the
    /// connection layer (not a rumqttd retained message: see `presence`).
    pub(crate) presences: Presence,
    /// Users' reply topics and inboxes, delivered without router filters.
    pub(crate) direct: Arc<Direct>,
}

impl Shared {
    /// Records and publishes the presence of a user who came online or went
    /// offline: unretained through the router (live subscribers), kept in
    /// [`Shared::presences`] for later ones.
    pub(crate) fn presence(&self, user: &str, online: bool) {
        let topic = self.presences.topic(user);
        let payload = bytes::Bytes::from(
            schema::Presence {
                online,
                ts: now_ms(),
            }
            .to_vec(),
        );
        self.presences.set(user, payload.clone());
        self.internal_publish(Publish::new(bytes::Bytes::from(topic), payload, false));
    }

    /// Publishes the will of `who`'s connection, under the same retain
    /// policy as a publish of theirs (a refused one is dropped).
    pub(crate) fn publish_will(&self, will: LastWill, who: &Principal) {
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
    pub(crate) fn retain_policy(
        &self,
        who: &Principal,
        topic: &str,
        retain: bool,
        len: usize,
    ) -> Verdict {
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

    pub(crate) fn internal_publish(&self, publish: Publish) {
        if let Err(e) = self.internal.try_send(Packet::Publish(publish, None)) {
            warn!(error = %e, "internal publish dropped");
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
