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
use rumqttd::protocol::{LastWill, LastWillProperties, Packet, Publish, PublishProperties, QoS};
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
    /// A [`BrokerConfig::trim_memory`] call is scheduled.
    pub(crate) trim_pending: std::sync::atomic::AtomicBool,
    /// Wills waiting for their Will Delay Interval: client id -> token of
    /// the wait; a new connection under the id removes it (MQTT-3.1.3-9).
    pub(crate) delayed_wills:
        parking_lot::Mutex<std::collections::HashMap<String, tokio::task::AbortHandle>>,
    /// Session expiry timers: client id -> the timer of its kept session
    /// (aborted when the id connects again, so they never pile up).
    /// Kept sessions' subscription options, while they are away.
    pub(crate) kept_subs:
        parking_lot::Mutex<std::collections::HashMap<String, Vec<crate::marks::SubOpts>>>,
    pub(crate) expiry_timers:
        parking_lot::Mutex<std::collections::HashMap<String, tokio::task::AbortHandle>>,
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
    pub(crate) presences: Arc<Presence>,
    /// Users' reply topics, inboxes and (for sessions that end with their
    /// connection) rooms' streams, delivered without router filters.
    pub(crate) direct: Arc<Direct>,
    /// The rooms link's sending half: users' QoS 0 and 1 publishes enter the
    /// router through it, not through links of their own (`crate::publisher`).
    pub(crate) publisher: Arc<crate::link::LinkSender>,
}

impl Shared {
    /// Records and publishes the presence of a user who came online or went
    /// offline: unretained through the router (live subscribers), kept in
    /// [`Shared::presences`] for later ones.
    ///
    /// In a cluster (`partitions` > 0) the change is a report to the bridge
    /// that owns the user, which knows the user's connections on every
    /// broker and publishes the presence to all of them (docs/cluster.md).
    pub(crate) fn presence(&self, user: &str, online: bool) {
        let payload = bytes::Bytes::from(
            schema::Presence {
                online,
                ts: now_ms(),
            }
            .to_vec(),
        );
        let partitions = self.config.partitions;
        self.presences.set_local(user, online);
        if partitions > 0 {
            let topic = presence_report_topic(&self.config.prefix, partitions, user);
            self.internal_publish(Publish::new(bytes::Bytes::from(topic), payload, false));
            return;
        }
        let topic = self.presences.topic(user);
        self.presences.set(user, payload.clone());
        self.internal_publish(Publish::new(bytes::Bytes::from(topic), payload, false));
    }

    /// A client's publish on its way to the router: in a cluster, sends,
    /// requests and typing go to their partition's topic (users' and
    /// services'; a service's typing is a bridge relaying it and stays).
    pub(crate) fn cluster_route(&self, publish: &mut Publish, who: &Principal) {
        let partitions = self.config.partitions;
        if partitions == 0 {
            return;
        }
        let prefix = &self.config.prefix;
        let Some(rest) = std::str::from_utf8(&publish.topic)
            .ok()
            .and_then(|t| t.strip_prefix(prefix.as_str()))
            .and_then(|t| t.strip_prefix('/'))
        else {
            return;
        };
        if matches!(who, Principal::Service { .. }) && rest.contains("/typing/") {
            return;
        }
        if let Some(p) = schema::cluster::route(rest, partitions) {
            let topic = schema::cluster::part_topic(prefix, p, rest);
            publish.topic = bytes::Bytes::from(topic);
        }
    }

    /// Publishes the will of `who`'s connection, under the same retain
    /// policy as a publish of theirs (a refused one is dropped).
    /// Publishes `will` once `delay` seconds have passed, unless a new
    /// connection under `client_id` comes first ([`Shared::cancel_will`]).
    pub(crate) fn delay_will(
        self: &Arc<Self>,
        client_id: &str,
        delay: u32,
        will: LastWill,
        props: Option<LastWillProperties>,
        who: Principal,
    ) {
        // copied: the CONNECT's read buffer is not kept for the wait
        let will = LastWill {
            topic: bytes::Bytes::copy_from_slice(&will.topic),
            message: bytes::Bytes::copy_from_slice(&will.message),
            qos: will.qos,
            retain: will.retain,
        };
        let shared = self.clone();
        let id = client_id.to_owned();
        // held while the task is made, so its entry is in before it looks
        let mut wills = self.delayed_wills.lock();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(u64::from(delay))).await;
            let due = {
                let mut w = shared.delayed_wills.lock();
                let mine = w.get(&id).is_some_and(|h| h.id() == tokio::task::id());
                if mine {
                    w.remove(&id);
                }
                mine
            };
            if due {
                shared.publish_will(will, props, &who);
            }
        });
        // one per client id, and a wait ended early is aborted, not left
        // sleeping (a client reconnecting in a loop cannot pile them up)
        if let Some(old) = wills.insert(client_id.to_owned(), timer.abort_handle()) {
            old.abort();
        }
    }

    /// A connection under `client_id` began: its delayed will, if any, is
    /// not sent.
    pub(crate) fn cancel_will(&self, client_id: &str) {
        let mut w = self.delayed_wills.lock();
        if !w.is_empty() {
            if let Some(timer) = w.remove(client_id) {
                timer.abort();
            }
        }
    }

    /// Publishes a will with its MQTT 5 properties (MQTT-3.1.3-10), marked
    /// with its QoS as a client's PUBLISH is (`codec::read`), so that it is
    /// delivered at the lower of its QoS and the subscription's.
    pub(crate) fn publish_will(
        &self,
        will: LastWill,
        props: Option<LastWillProperties>,
        who: &Principal,
    ) {
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
        let mut props = props.map(|p| PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            content_type: p.content_type,
            ..Default::default()
        });
        crate::marks::mark_publish(will.qos as u8, retain, &mut props);
        let mut publish = if will.qos == QoS::AtMostOnce {
            crate::marks::marked_qos0(&will.topic, &will.message, retain)
        } else {
            Publish::new(will.topic, will.message, retain)
        };
        self.cluster_route(&mut publish, who);
        if let Err(e) = self.internal.try_send(Packet::Publish(publish, props)) {
            warn!(error = %e, "will dropped");
        }
    }

    /// Memory was freed in bulk (sessions expired): hands it back to the
    /// system a second later, once for all that were freed meanwhile
    /// (`trim_memory`, set by the application; glibc keeps freed memory).
    pub(crate) fn schedule_trim(self: &std::sync::Arc<Self>) {
        use std::sync::atomic::Ordering;
        let Some(trim) = self.config.trim_memory else {
            return;
        };
        if self.trim_pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            shared.trim_pending.store(false, Ordering::SeqCst);
            let _ = tokio::task::spawn_blocking(trim).await;
        });
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

/// `{prefix}/part/{p}/presence/{user}`: a broker's report of `user`'s
/// first or last connection to it, for the bridge owning `user`.
pub(crate) fn presence_report_topic(prefix: &str, partitions: u32, user: &str) -> String {
    let p = schema::cluster::partition(user, partitions);
    schema::cluster::part_topic(prefix, p, &format!("presence/{user}"))
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
