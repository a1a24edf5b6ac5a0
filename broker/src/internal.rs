//! The broker's own router link: it publishes presence, wills and the drain
//! nonce, and reads `{prefix}/hooks/access` (a broker run apart from its
//! bridge) and `{prefix}/hooks/drained`.

use crate::acl::Access;
use crate::config::BrokerConfig;
use crate::direct::Direct;
use crate::metrics::BrokerMetrics;
use crate::presence::Presence;
use crate::router::{forward_pkid, send_all, RouterHandle};
use rumqttd::protocol::{Packet, PubAck, PubAckReason};
use rumqttd::Notification;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tracing::warn;

/// The two ends the rest of the broker holds.
pub(crate) struct Internal {
    /// Packets for the link, written by one task in order.
    pub(crate) outbox: mpsc::Sender<Packet>,
    /// The last nonce the bridge answered on `{prefix}/hooks/drained`.
    pub(crate) drained: watch::Receiver<bytes::Bytes>,
}

/// Opens the link, subscribes it and spawns its two tasks.
pub(crate) async fn start(
    router: &RouterHandle,
    config: &BrokerConfig,
    access: Arc<Access>,
    direct: Arc<Direct>,
    presences: Arc<Presence>,
    metrics: Arc<BrokerMetrics>,
) -> Result<Internal, String> {
    let (mut internal_tx, mut internal_rx, _) = router
        // '@' is refused in clients' ids: no client can take this link over
        .link("chatmq@internal", true)
        .await?;
    let access_topic = format!("{}/hooks/access", config.prefix);
    let drained_topic = format!("{}/hooks/drained", config.prefix);
    if config.access_from_hooks {
        internal_tx
            .subscribe(access_topic.clone())
            .map_err(|e| e.to_string())?;
    }
    internal_tx
        .subscribe(drained_topic.clone())
        .map_err(|e| e.to_string())?;
    // rumqttd caches which filters a topic matches only when at least one
    // does; a topic nobody subscribes to is matched against every filter
    // (one per user's reply topic) on each publish, on the router's one
    // thread. Presence of users nobody watches was that: in a reconnect
    // storm of 10,000 users the router spent 94 % of its time in
    // `protocol::matches`. Watching presence here (and dropping it) makes
    // each presence topic a cached match after its first publish.
    internal_tx
        .subscribe(format!("{}/presence/+", config.prefix))
        .map_err(|e| e.to_string())?;
    // Every reply topic and inbox (crate::direct): the router holds these
    // two filters instead of one per client and user.
    for filter in direct.link_filters() {
        internal_tx.subscribe(filter).map_err(|e| e.to_string())?;
    }
    let partitions = config.partitions;
    let sync_topic = schema::cluster::presence_sync_topic(&config.prefix);
    if partitions > 0 {
        internal_tx
            .subscribe(sync_topic.clone())
            .map_err(|e| e.to_string())?;
    }
    let prefix = config.prefix.clone();
    let mut drains = ClusterDrains::default();
    let users_root = format!("{}/users/", config.prefix);
    let (drained_tx, drained) = watch::channel(bytes::Bytes::new());
    // One task writes the internal link, so its packets (and the acks
    // rumqttd wants in delivery order) reach the router in order, and a
    // full router channel delays them instead of dropping them.
    let (outbox, mut queued) = mpsc::channel::<Packet>(65_536);
    tokio::spawn(async move {
        let mut batch = Vec::new();
        while queued.recv_many(&mut batch, 256).await > 0 {
            if send_all(&mut internal_tx, &mut batch).await.is_err() {
                warn!("the router dropped the broker's internal link");
                return;
            }
        }
    });
    let acks = outbox.clone();
    tokio::spawn(async move {
        while let Ok(n) = internal_rx.next().await {
            match n {
                Some(Notification::Forward(mut f)) => {
                    // a service's QoS 2 or retained publish carries marks
                    // (crate::marks) no client may see
                    let _ = crate::marks::published_marks(false, &mut f.properties);
                    let topic = &f.publish.topic[..];
                    if topic.starts_with(users_root.as_bytes()) {
                        direct.deliver_counted(&f.publish, &f.properties, &metrics);
                    } else if topic == access_topic.as_bytes() {
                        apply_access_hook(&access, &f.publish.payload);
                    } else if topic == drained_topic.as_bytes() {
                        if partitions == 0 {
                            drained_tx.send_replace(f.publish.payload.clone());
                        } else if let Some(nonce) = drains.add(&f.publish.payload, partitions) {
                            drained_tx.send_replace(nonce);
                        }
                    } else if partitions > 0 && topic == sync_topic.as_bytes() {
                        // a bridge (re)connected without our reports: every
                        // user connected here, again
                        for user in presences.local_users() {
                            let t =
                                crate::shared::presence_report_topic(&prefix, partitions, &user);
                            let payload = schema::Presence {
                                online: true,
                                ts: crate::shared::now_ms(),
                            }
                            .to_vec();
                            let p = rumqttd::protocol::Publish::new(
                                bytes::Bytes::from(t),
                                bytes::Bytes::from(payload),
                                false,
                            );
                            if acks.send(Packet::Publish(p, None)).await.is_err() {
                                return;
                            }
                        }
                    } else if partitions > 0 {
                        // a cluster's presence, published by the bridge owning the user
                        if let Some(user) = std::str::from_utf8(topic)
                            .ok()
                            .and_then(|t| presences.user_of(t))
                        {
                            presences.set(user, f.publish.payload.clone());
                        }
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
    Ok(Internal { outbox, drained })
}

/// A cluster's drain: each bridge answers `{nonce}:{p},{p},...` with the
/// partitions it drained; the broker is drained when they cover all.
#[derive(Default)]
struct ClusterDrains {
    seen: std::collections::HashMap<bytes::Bytes, std::collections::HashSet<u32>>,
}

impl ClusterDrains {
    /// Adds an answer; the nonce once every partition answered.
    fn add(&mut self, payload: &[u8], partitions: u32) -> Option<bytes::Bytes> {
        let text = std::str::from_utf8(payload).ok()?;
        let (nonce, parts) = text.split_once(':')?;
        if self.seen.len() > 16 {
            self.seen.clear();
        }
        let nonce = bytes::Bytes::copy_from_slice(nonce.as_bytes());
        let got = self.seen.entry(nonce.clone()).or_default();
        got.extend(parts.split(',').filter_map(|p| p.parse::<u32>().ok()));
        if (0..partitions).all(|p| got.contains(&p)) {
            self.seen.remove(&nonce);
            return Some(nonce);
        }
        None
    }
}

/// A [`schema::AccessHook`] from the bridge (the type it publishes with):
/// `{"room":..,"user":..,"joined":bool}` or `{"room":..,"open":bool}`.
fn apply_access_hook(access: &Access, payload: &[u8]) {
    match serde_json::from_slice::<schema::AccessHook>(payload) {
        Ok(schema::AccessHook::Member { room, user, joined }) => {
            access.set_member(&room, &user, joined)
        }
        Ok(schema::AccessHook::Open { room, open }) => access.set_open(&room, open),
        Err(e) => warn!(error = %e, "an access hook that does not read, ignored"),
    }
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
        assert_eq!(access.ensure("r9", &mut budget).await, Ensured::Missing);
        assert_eq!(access.ensure("r9", &mut budget).await, Ensured::CachedMiss);
        apply_access_hook(&access, br#"{"room":"r9","user":"bob","joined":true}"#);
        assert!(access.is_member("r9", "bob"));
        assert_eq!(access.ensure("r9", &mut budget).await, Ensured::Missing);
        apply_access_hook(&access, br#"{"room":"r9","open":true}"#);
        assert!(access.can_read("r9", "anyone"));
    }

    /// The bridge publishes with [`schema::AccessHook`]; this reads the
    /// same type, and anything else is ignored.
    #[test]
    fn a_cluster_is_drained_when_every_partition_answered() {
        let mut d = ClusterDrains::default();
        assert_eq!(d.add(b"n1:0,2", 4), None);
        assert_eq!(d.add(b"n2:1,3", 4), None, "another nonce");
        assert_eq!(d.add(b"junk", 4), None);
        assert_eq!(d.add(b"n1:1,3", 4), Some(bytes::Bytes::from_static(b"n1")));
        assert_eq!(d.add(b"n3:", 1), None);
        assert_eq!(d.add(b"n3:0", 1), Some(bytes::Bytes::from_static(b"n3")));
    }

    #[test]
    fn the_hook_the_bridge_publishes_applies() {
        let access = Access::new();
        let joined = schema::AccessHook::Member {
            room: "r1".into(),
            user: "bob".into(),
            joined: true,
        };
        apply_access_hook(&access, &joined.to_vec());
        assert!(access.is_member("r1", "bob"));
        let left = schema::AccessHook::Member {
            room: "r1".into(),
            user: "bob".into(),
            joined: false,
        };
        apply_access_hook(&access, &left.to_vec());
        assert!(!access.is_member("r1", "bob"));
        let open = schema::AccessHook::Open {
            room: "c1".into(),
            open: true,
        };
        apply_access_hook(&access, &open.to_vec());
        assert!(access.can_read("c1", "anyone"));
        for junk in [&b"not json"[..], b"{}", br#"{"room":"r1","user":"bob"}"#] {
            apply_access_hook(&access, junk);
        }
        assert!(!access.is_member("r1", "bob"));
    }
}
