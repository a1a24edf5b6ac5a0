//! The authorized session: moves packets between the socket and the router,
//! checking every PUBLISH and SUBSCRIBE in and every delivery out.
//!
//! A user's session has a router link of its own only when it needs one
//! ([`Session::need_link`]): a persistent session, a subscription the broker
//! does not deliver itself (typing, presence, device topics), a QoS 2
//! publish. Its QoS 0 and 1 publishes go through the broker's shared
//! publisher and its reply topic, inbox and rooms' streams come from
//! `crate::direct` (`crate::publisher`).

use super::{Conn, End};
use crate::acl::{Decision, Ensured, LoadBudget};
use crate::auth::Principal;
use crate::codec::{self, FrameError, Version};
use crate::direct::Delivery;
use crate::marks::{mark_publish, published_marks, SubOpts};
use crate::names::router_id;
use crate::presence::filter_matches;
use crate::rate::Throttle;
use crate::retain::Verdict;
use crate::router::{forward_header, send_all};
use crate::shared::Shared;
use bytes::Bytes;
use futures_util::FutureExt;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Packet, PubAck, PubAckReason, Publish, QoS,
    RetainForwardRule, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use rumqttd::Notification;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn};

/// A session's own router link, when it has one.
pub(super) type RouterLink = (LinkTx, LinkRx);

/// The authorized session between the socket and the router.
pub(super) struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) principal: Principal,
    pub(super) client_id: String,
    /// SUBSCRIBEs partly refused by us: pkid -> our codes (None = the router's).
    pub(super) pending_subs: HashMap<u16, Vec<Option<SubscribeReasonCode>>>,
    /// SUBSCRIBEs with filters that may match presence topics: pkid ->
    /// (position in the SUBACK, filter); the current presence follows the SUBACK.
    pub(super) pending_presence: HashMap<u16, Vec<(usize, String)>>,
    /// This session in `crate::direct`: its id, the reply topic
    /// and inbox it subscribed (with the granted QoS), and the next packet
    /// id of a direct delivery.
    pub(super) direct_id: u64,
    /// Payload bytes queued for this session in `crate::direct` (it
    /// subtracts what it takes out).
    pub(super) direct_bytes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Kept deliveries of a resumed persistent session, sent before the rest.
    pub(super) direct_kept: Vec<Delivery>,
    pub(super) direct_topics: Vec<(String, QoS)>,
    /// MQTT 5 Subscription Identifiers of direct topics, where given.
    pub(super) direct_ids: Vec<(String, usize)>,
    pub(super) direct_pkid: u16,
    pub(super) client_max: Option<usize>,
    /// The router's QoS 1/2 deliveries in the order it sent them, each
    /// with the acknowledgement it may have (see [`Session::ack_router`]).
    pub(super) router_inflight: std::collections::VecDeque<(u16, RouterAck)>,
    /// The client's Receive Maximum (MQTT 5; 65,535 when not given): QoS 1
    /// and 2 deliveries it has not acknowledged, at most (MQTT-3.3.4-9).
    pub(super) receive_max: usize,
    /// QoS 1 and 2 deliveries sent and not yet acknowledged.
    pub(super) sent_unacked: usize,
    /// Router deliveries held back while `sent_unacked` is at `receive_max`.
    pub(super) held: std::collections::VecDeque<Held>,
    /// This session's router subscriptions with the MQTT 5 options rumqttd
    /// 0.20 ignores (No Local, Retain Handling), kept here.
    pub(super) subs: Vec<SubOpts>,
    /// This session's own recent publishes to topics one of its No Local
    /// subscriptions matches: (payload address, length, topic). rumqttd
    /// forwards the very `Bytes` it was given, so a forward whose payload
    /// is one of these is this session's own message.
    pub(super) own_recent: std::collections::VecDeque<(usize, usize, Bytes)>,
    /// Two of `subs` may match one topic (one has a wildcard).
    pub(super) overlap: bool,
    /// PUBLISHes forwarded more than once for overlapping subscriptions:
    /// (payload, topic, forwards of it still to come, whether those are
    /// dropped). The payload `Bytes` keeps its address reserved.
    pub(super) copies: std::collections::VecDeque<(Bytes, Bytes, usize, bool)>,
    /// The client's DISCONNECT asked for its will (reason 0x04).
    pub(super) will_on_disconnect: bool,
    /// The Session Expiry Interval the client's DISCONNECT set, if any.
    pub(super) disconnect_expiry: Option<u32>,
    /// Publishes per second (`broker.limits.publishes_per_sec`).
    pub(super) publishes: Throttle,
    /// Store reads of unknown rooms this connection may still cause.
    pub(super) loads: LoadBudget,
    /// When the login's credential (a JWT) expires, leeway included: the
    /// connection is closed then.
    pub(super) expires: Option<Instant>,
    /// When this user session ends during a shutdown spread over
    /// `limits.shutdown_spread_ms`.
    pub(super) leave_at: Option<Instant>,
    /// The router keeps this session after its connection: its rooms'
    /// streams are router subscriptions (the router keeps what it misses).
    pub(super) persistent: bool,
    /// Publishes for the shared publisher, handed over before the client
    /// sees their PUBACKs (see [`Session::hand_over`]).
    pub(super) to_shared: Vec<Packet>,
    /// A PUBLISH over the rate (`publishes`), read and waiting for its turn
    /// until `stalled_until`. Meanwhile the socket is not read (the client
    /// is slowed by TCP) but deliveries go on.
    pub(super) stalled: Option<Box<codec::Incoming>>,
    pub(super) stalled_until: Option<Instant>,
}

impl Session {
    pub(super) async fn pump(
        &mut self,
        conn: &mut Conn,
        link: &mut Option<RouterLink>,
        direct_rx: &mut tokio::sync::mpsc::Receiver<Delivery>,
        keep_alive: u16,
        stop: &tokio::sync::Notify,
    ) -> End {
        // Users are cut off first at shutdown; services (the bridge) stay
        // until the broker closes, so they can drain what users published.
        let mut shutdown = match self.principal {
            Principal::User(_) => self.shared.shutdown.clone(),
            _ => self.shared.closing.clone(),
        };
        let limits = &self.shared.config.limits;
        let max_len = match self.principal {
            Principal::User(_) => limits.max_packet_bytes,
            _ => limits.service_max_packet_bytes.max(limits.max_packet_bytes),
        };
        // Keep-alive 0 is allowed (rumqttd refuses it): no timeout then.
        let grace = Duration::from_millis(keep_alive as u64 * 1500);
        let mut ka_deadline = Instant::now() + grace;
        let mut to_router: Vec<Packet> = Vec::new();
        // Packets that came in the same read as CONNECT are handled at once,
        // not when the next bytes arrive.
        let mut pending = !conn.rbuf.is_empty();
        for d in std::mem::take(&mut self.direct_kept) {
            let (publish, props) = (d.0.clone(), d.1.clone());
            self.direct_out(conn, publish, props);
        }
        if conn.flush().await.is_err() {
            return End::Unclean;
        }
        loop {
            tokio::select! {
                _ = shutdown.changed(), if self.leave_at.is_none() => {
                    // users leave spread over `shutdown_spread_ms`, so they
                    // reconnect to the other brokers gradually, not at once
                    let spread = self.shared.config.limits.shutdown_spread_ms;
                    if spread == 0 || !matches!(self.principal, Principal::User(_)) {
                        return End::Stopped(DisconnectReasonCode::ServerShuttingDown);
                    }
                    let spread = u32::try_from(spread).unwrap_or(u32::MAX);
                    let delay = schema::cluster::partition(&self.client_id, spread);
                    self.leave_at = Some(Instant::now() + Duration::from_millis(u64::from(delay)));
                }
                _ = stop.notified() => return End::Stopped(DisconnectReasonCode::SessionTakenOver),
                // One timer for keep-alive and expiry: a second `Sleep`
                // would be part of every idle session's task.
                _ = sleep_until(self.wake_at(keep_alive, ka_deadline)), if keep_alive > 0 || self.expires.is_some() || self.leave_at.is_some() || self.stalled_until.is_some() => {
                    let now = Instant::now();
                    if self.stalled_until.is_some_and(|t| t <= now) {
                        // the stalled publish's turn: read on (the client
                        // was not silent, the broker was not reading)
                        self.stalled_until = None;
                        pending = true;
                        ka_deadline = now + grace;
                    }
                    if self.leave_at.is_some_and(|t| t <= now) {
                        return End::Stopped(DisconnectReasonCode::ServerShuttingDown);
                    }
                    if self.expires.is_some_and(|e| e <= now) {
                        info!("credentials expired: disconnecting");
                        self.shared.metrics.credentials_expired.inc();
                        return End::Stopped(DisconnectReasonCode::MaximumConnectTime);
                    }
                    // a stalled session is not reading: its client is
                    // not the one silent
                    if keep_alive > 0 && ka_deadline <= now && self.stalled_until.is_none() {
                        debug!("keep-alive timeout");
                        return End::Unclean;
                    }
                }
                r = async {
                    if std::mem::take(&mut pending) {
                        // a stalled publish may be all there is
                        Ok(conn.rbuf.len().max(1))
                    } else {
                        conn.read_more().await
                    }
                }, if self.stalled_until.is_none() => {
                    match r {
                        Ok(0) | Err(_) => return End::Unclean,
                        Ok(_) => {}
                    }
                    ka_deadline = Instant::now() + grace;
                    loop {
                        let again = self.stalled.is_some();
                        let read = match self.stalled.take() {
                            Some(inc) => Ok(Some(*inc)),
                            None => codec::read(conn.version, &mut conn.rbuf, max_len),
                        };
                        let inc = match read {
                            Ok(Some(inc)) => inc,
                            Ok(None) => break,
                            Err(e) => {
                                info!(error = %e, "protocol error");
                                let reason = match e {
                                    FrameError::TooLarge(_) => DisconnectReasonCode::PacketTooLarge,
                                    _ => DisconnectReasonCode::MalformedPacket,
                                };
                                // publishes accepted before the bad packet go on
                                let _ = self.hand_over(link, &mut to_router).await;
                                if conn.version == Version::V5 {
                                    conn.push(Packet::Disconnect(Disconnect { reason_code: reason }, None));
                                    let _ = conn.flush().await;
                                }
                                return End::Unclean;
                            }
                        };
                        if let Some(wait) = self.over_rate(&inc) {
                            // slowed, not refused: this publish waits, the
                            // rest of the socket with it, deliveries do not
                            if !again {
                                self.shared.metrics.publishes_slowed.inc();
                            }
                            self.stalled = Some(Box::new(inc));
                            self.stalled_until = Some(Instant::now() + wait);
                            break;
                        }
                        // Boxed: handling a packet awaits with the packet
                        // in hand, and inline that state would be part of
                        // every idle session's task (~1.5 KiB).
                        match Box::pin(self.incoming(conn, inc, &mut to_router, link)).await {
                            Ok(true) => {}
                            Ok(false) => {
                                let _ = self.hand_over(link, &mut to_router).await;
                                let _ = conn.flush().await;
                                return End::Clean;
                            }
                            Err(reason) => {
                                let _ = self.hand_over(link, &mut to_router).await;
                                if conn.version == Version::V5 {
                                    conn.push(Packet::Disconnect(Disconnect { reason_code: reason }, None));
                                    let _ = conn.flush().await;
                                }
                                return End::Unclean;
                            }
                        }
                    }
                    if self.hand_over(link, &mut to_router).await.is_err() {
                        return End::RouterGone;
                    }
                    if conn.flush().await.is_err() {
                        return End::Unclean;
                    }
                }
                // while deliveries wait for the client's Receive Maximum,
                // direct ones wait in their bounded queue, not here
                Some(first) = direct_rx.recv(), if self.held.is_empty() => {
                    if direct_rx.is_empty() {
                        // a publisher fanning out one batch wakes this task
                        // at its first delivery: let the rest of the batch
                        // come, so it goes out in one write, not one each
                        tokio::task::yield_now().await;
                    }
                    let mut next = Some(first);
                    while let Some(d) = next {
                        let (publish, props) = (d.0.clone(), d.1.clone());
                        self.direct_bytes
                            .fetch_sub(publish.payload.len(), std::sync::atomic::Ordering::Relaxed);
                        self.direct_out(conn, publish, props);
                        next = if self.held.is_empty() {
                            direct_rx.try_recv().ok()
                        } else {
                            None
                        };
                    }
                    if conn.flush().await.is_err() {
                        return End::Unclean;
                    }
                }
                n = async {
                    match link.as_mut() {
                        Some((_, rx)) => rx.next().await,
                        None => std::future::pending().await,
                    }
                }, if link.is_some() => {
                    let Some((link_tx, link_rx)) = link.as_mut() else {
                        continue;
                    };
                    let mut next = n;
                    let mut wake = false;
                    loop {
                        match next {
                            Ok(Some(notification)) => match self.outgoing(conn, notification, &mut to_router) {
                                Outcome::Continue => {}
                                Outcome::Unscheduled => wake = true,
                                Outcome::Disconnect => {
                                    let _ = conn.flush().await;
                                    return End::RouterGone;
                                }
                            },
                            Ok(None) => {}
                            Err(_) => return End::RouterGone,
                        }
                        match link_rx.next().now_or_never() {
                            Some(n) => next = n,
                            None => break,
                        }
                    }
                    if conn.flush().await.is_err() {
                        return End::Unclean;
                    }
                    if send_all(link_tx, &mut to_router).await.is_err() {
                        return End::RouterGone;
                    }
                    if wake && link_rx.wake().await.is_err() {
                        return End::RouterGone;
                    }
                }
            }
        }
    }

    /// When the session's one timer fires: the keep-alive deadline (if
    /// keep-alive is on), the credential's expiry, its turn to leave at a
    /// shutdown or a stalled publish's turn, whichever comes first.
    fn wake_at(&self, keep_alive: u16, ka_deadline: Instant) -> Instant {
        [
            // not while stalled: the broker is not reading then
            (keep_alive > 0 && self.stalled_until.is_none()).then_some(ka_deadline),
            self.expires,
            self.leave_at,
            self.stalled_until,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(ka_deadline)
    }

    /// Hands what the client sent to the router: its publishes through the
    /// shared publisher (before the PUBACKs written for them reach the
    /// client), the rest through its own link.
    async fn hand_over(
        &mut self,
        link: &mut Option<RouterLink>,
        to_router: &mut Vec<Packet>,
    ) -> Result<(), ()> {
        if !self.to_shared.is_empty() {
            let packets = std::mem::take(&mut self.to_shared);
            if !self.shared.publisher.forward(packets).await {
                return Err(());
            }
        }
        match link {
            Some((tx, _)) => send_all(tx, to_router).await?,
            // nothing goes to a link that is not there (see `need_link`)
            None => to_router.clear(),
        }
        // packets are ~400 bytes: an idle session keeps none
        to_router.shrink_to(0);
        Ok(())
    }

    /// Opens this session's own router link if it has none yet (clean: a
    /// session the router keeps had its link from CONNECT on).
    async fn need_link(
        &mut self,
        link: &mut Option<RouterLink>,
    ) -> Result<(), DisconnectReasonCode> {
        if link.is_some() {
            return Ok(());
        }
        match self
            .shared
            .router
            .link(&router_id(&self.client_id), true)
            .await
        {
            Ok((tx, rx, _)) => {
                *link = Some((tx, rx));
                self.shared.metrics.router_links.inc();
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, "router link failed");
                Err(DisconnectReasonCode::ServerBusy)
            }
        }
    }

    /// Handles one client packet. `Ok(false)`: the client disconnected cleanly.
    async fn incoming(
        &mut self,
        conn: &mut Conn,
        inc: codec::Incoming,
        to_router: &mut Vec<Packet>,
        link: &mut Option<RouterLink>,
    ) -> Result<bool, DisconnectReasonCode> {
        match inc.packet {
            Packet::Publish(mut publish, mut props) => {
                if props.as_ref().is_some_and(|p| p.topic_alias.is_some()) {
                    return Err(DisconnectReasonCode::TopicAliasInvalid);
                }
                let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
                if let Some(room) = self.shared.authz.membership_room(topic, true) {
                    self.ensure(room).await;
                }
                let decision = self.shared.authz.check_publish(&self.principal, topic);
                if let Decision::Deny(rule) = decision {
                    info!(rule, topic = %topic.escape_debug(), "publish refused");
                    self.shared
                        .metrics
                        .acl_denials
                        .with_label_values(&["publish", rule])
                        .inc();
                    return refuse(conn, inc.qos, inc.pkid, PubAckReason::NotAuthorized);
                }
                let len = publish.payload.len();
                match self
                    .shared
                    .retain_policy(&self.principal, topic, publish.retain, len)
                {
                    Verdict::Pass => {}
                    Verdict::Strip => publish.retain = false,
                    Verdict::Refuse => {
                        info!(topic = %topic.escape_debug(), "retained publish over the bound");
                        return refuse(conn, inc.qos, inc.pkid, PubAckReason::QuotaExceeded);
                    }
                }
                mark_publish(inc.qos, publish.retain, &mut props);
                if self
                    .subs
                    .iter()
                    .any(|s| s.no_local && filter_matches(&s.filter, topic))
                {
                    if self.own_recent.len() >= OWN_RECENT_MAX {
                        self.own_recent.pop_front();
                    }
                    let p = &publish.payload;
                    // the topic copied: not the client's read buffer kept
                    let t = Bytes::copy_from_slice(&publish.topic);
                    self.own_recent.push_back((p.as_ptr() as usize, p.len(), t));
                }
                let m = &self.shared.metrics;
                m.publishes_in.inc();
                m.bytes_in.inc_by(publish.payload.len() as u64);
                if !matches!(self.principal, Principal::User(_)) {
                    // a bridge run apart publishing a room's stream: the
                    // broker's own subscribers get it now (crate::direct);
                    // the router gets it whatever its filters, as its
                    // PUBACK is the one the bridge's session waits for
                    let m = &self.shared.metrics;
                    let _ = crate::direct::deliver_room_stream(
                        &self.shared.direct,
                        m,
                        &publish,
                        &props,
                    );
                }
                self.shared.cluster_route(&mut publish, &self.principal);
                if inc.qos < 2 && matches!(self.principal, Principal::User(_)) {
                    // through the shared publisher: acknowledged here, once
                    // handed to the router (`hand_over` runs before the
                    // client reads this PUBACK)
                    self.to_shared.push(Packet::Publish(publish, props));
                    if inc.qos == 1 {
                        let ack = PubAck {
                            pkid: inc.pkid,
                            reason: PubAckReason::Success,
                        };
                        conn.push(Packet::PubAck(ack, None));
                    }
                } else {
                    self.need_link(link).await?;
                    to_router.push(Packet::Publish(publish, props));
                }
            }
            Packet::Subscribe(sub, props) => {
                let mut replaced = Vec::new();
                let mut codes = Vec::with_capacity(sub.filters.len());
                let mut allowed = Vec::new();
                let mut presence = Vec::new();
                for mut f in sub.filters {
                    if let Some(room) = self.shared.authz.membership_room(&f.path, false) {
                        self.ensure(room).await;
                    }
                    self.ensure_shared_room(&f.path).await;
                    match self.shared.authz.check_subscribe(
                        &self.principal,
                        &self.client_id,
                        &f.path,
                    ) {
                        Decision::Allow
                            if matches!(self.principal, Principal::User(_))
                                && (self.shared.direct.is_direct(&f.path)
                                    || (!self.persistent
                                        && self.shared.direct.is_room_stream(&f.path))) =>
                        {
                            // a reply topic, inbox or room's stream:
                            // delivered by the broker, never a router
                            // filter (crate::direct)
                            let qos = match f.qos {
                                QoS::AtMostOnce => QoS::AtMostOnce,
                                _ => QoS::AtLeastOnce,
                            };
                            self.shared
                                .direct
                                .add(&self.client_id, self.direct_id, &f.path, qos);
                            self.direct_topics.retain(|(t, _)| *t != f.path);
                            self.direct_ids.retain(|(t, _)| *t != f.path);
                            if let Some(id) = props.as_ref().and_then(|p| p.id) {
                                self.direct_ids.push((f.path.clone(), id));
                            }
                            self.direct_topics.push((f.path, qos));
                            codes.push(Some(match qos {
                                QoS::AtMostOnce => SubscribeReasonCode::QoS0,
                                _ => SubscribeReasonCode::QoS1,
                            }));
                        }
                        Decision::Allow => {
                            // rumqttd delivers at the subscription's QoS and
                            // grants what it was asked: typing is QoS 0
                            if self.shared.authz.is_typing(&f.path) {
                                f.qos = QoS::AtMostOnce;
                            }
                            if f.retain_forward_rule != RetainForwardRule::Never
                                && self.shared.presences.may_match(&f.path)
                            {
                                presence.push((codes.len(), f.path.clone()));
                            }
                            let existing = self.subs.iter().position(|s| s.filter == f.path);
                            let opts = SubOpts {
                                filter: f.path.clone(),
                                no_local: f.nolocal,
                                qos: f.qos,
                                id: props.as_ref().and_then(|p| p.id),
                                rap: f.preserve_retain,
                                wants_retained: match f.retain_forward_rule {
                                    RetainForwardRule::OnEverySubscribe => true,
                                    RetainForwardRule::OnNewSubscribe => existing.is_none(),
                                    RetainForwardRule::Never => false,
                                },
                            };
                            match existing {
                                Some(i) => {
                                    // rumqttd 0.20 ignores a subscription it
                                    // has: replace it (MQTT-3.8.4-3)
                                    self.subs[i] = opts;
                                    replaced.push(f.path.clone());
                                }
                                None => self.subs.push(opts),
                            }
                            self.shared.direct.note_router_filter(&f.path);
                            codes.push(None);
                            allowed.push(f);
                        }
                        Decision::Deny(rule) => {
                            info!(rule, filter = %f.path.escape_debug(), "subscribe refused");
                            self.shared
                                .metrics
                                .acl_denials
                                .with_label_values(&["subscribe", rule])
                                .inc();
                            // MQTT 5: a user's shared subscription is
                            // "not supported" (0x9E), not "not authorized"
                            let shared_sub = matches!(self.principal, Principal::User(_))
                                && f.path.starts_with("$share/");
                            codes.push(Some(if shared_sub {
                                SubscribeReasonCode::SharedSubscriptionsNotSupported
                            } else {
                                SubscribeReasonCode::NotAuthorized
                            }));
                        }
                    }
                }
                self.overlap = SubOpts::may_overlap(&self.subs);
                if allowed.is_empty() {
                    let return_codes = codes.into_iter().flatten().collect();
                    conn.push(Packet::SubAck(
                        SubAck {
                            pkid: sub.pkid,
                            return_codes,
                        },
                        None,
                    ));
                } else {
                    self.need_link(link).await?;
                    self.shared
                        .metrics
                        .subscriptions
                        .inc_by(allowed.len() as u64);
                    if codes.iter().any(Option::is_some) {
                        self.pending_subs.insert(sub.pkid, codes);
                    }
                    if !presence.is_empty() {
                        self.pending_presence.insert(sub.pkid, presence);
                    }
                    if !replaced.is_empty() {
                        // its UNSUBACK is ours ([`INTERNAL_PKID`])
                        to_router.push(Packet::Unsubscribe(
                            rumqttd::protocol::Unsubscribe {
                                pkid: INTERNAL_PKID,
                                filters: replaced,
                            },
                            None,
                        ));
                    }
                    to_router.push(Packet::Subscribe(
                        Subscribe {
                            pkid: sub.pkid,
                            filters: allowed,
                        },
                        props,
                    ));
                }
            }
            Packet::PubAck(ack, _) if ack.pkid >= DIRECT_PKIDS => {
                // the client acknowledged a direct delivery: nothing to tell the router
                self.sent_unacked = self.sent_unacked.saturating_sub(1);
                self.release_held(conn);
            }
            Packet::PubAck(ack, _) => {
                self.ack_router(ack.pkid, RouterAck::PubAck, to_router);
                self.release_held(conn);
            }
            Packet::PubRec(rec, _) => {
                self.ack_router(rec.pkid, RouterAck::PubRec, to_router);
                self.release_held(conn);
            }
            Packet::Unsubscribe(unsub, props) => {
                self.subs.retain(|s| !unsub.filters.contains(&s.filter));
                if self.subs.is_empty() {
                    self.subs = Vec::new();
                }
                self.overlap = SubOpts::may_overlap(&self.subs);
                // own publishes awaited for No Local may not come back now
                self.own_recent = std::collections::VecDeque::new();
                let mut reasons = Vec::with_capacity(unsub.filters.len());
                for f in &unsub.filters {
                    if self.direct_topics.iter().any(|(t, _)| t == f) {
                        self.shared.direct.remove(&self.client_id, f);
                        self.direct_topics.retain(|(t, _)| t != f);
                        self.direct_ids.retain(|(t, _)| t != f);
                        reasons.push(UnsubAckReason::Success);
                    } else {
                        reasons.push(UnsubAckReason::NoSubscriptionExisted);
                    }
                }
                if link.is_some() {
                    // the router answers (a filter it never had is fine)
                    to_router.push(Packet::Unsubscribe(unsub, props));
                } else {
                    // no router link: nothing of this session is in the router
                    let ack = UnsubAck {
                        pkid: unsub.pkid,
                        reasons,
                    };
                    conn.push(Packet::UnsubAck(ack, None));
                }
            }
            Packet::PubComp(comp, props) => {
                self.sent_unacked = self.sent_unacked.saturating_sub(1);
                self.release_held(conn);
                if link.is_some() {
                    to_router.push(Packet::PubComp(comp, props));
                }
            }
            Packet::PingReq(_) => conn.push(Packet::PingResp(rumqttd::protocol::PingResp)),
            Packet::Disconnect(d, props) => {
                self.will_on_disconnect =
                    d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
                self.disconnect_expiry = props.and_then(|p| p.session_expiry_interval);
                return Ok(false);
            }
            Packet::Connect(..) => return Err(DisconnectReasonCode::ProtocolError),
            other => {
                // PUBREL (of a QoS 2 publish, which opened the link)
                self.need_link(link).await?;
                to_router.push(other);
            }
        }
        Ok(true)
    }

    /// Handles one router notification.
    fn outgoing(
        &mut self,
        conn: &mut Conn,
        n: Notification,
        to_router: &mut Vec<Packet>,
    ) -> Outcome {
        match n {
            Notification::Forward(mut f) => {
                let (dup, fqos, pkid) = forward_header(&f.publish);
                let (published, was_retained) = published_marks(dup, &mut f.properties);
                let topic = std::str::from_utf8(&f.publish.topic).unwrap_or("");
                let v5 = conn.version == Version::V5;
                let size = publish_size(&f.publish, f.properties.as_ref().filter(|_| v5));
                let too_big = self.client_max.is_some_and(|m| size > m);
                let allowed = !too_big && self.shared.authz.may_deliver(&self.principal, topic);
                if !allowed && !too_big {
                    self.shared
                        .metrics
                        .acl_denials
                        .with_label_values(&["deliver", "not_member"])
                        .inc();
                }
                let allowed = allowed
                    && self.wanted(&f.publish, topic)
                    && self.first_copy(&f.publish, fqos, topic, &mut f.properties);
                if !allowed {
                    // Not delivered: acknowledge it to the router ourselves.
                    if let Some(pkid) = pkid {
                        self.router_inflight.push_back((pkid, RouterAck::PubAck));
                        self.release_router_acks(to_router);
                    }
                    return Outcome::Continue;
                }
                if was_retained
                    && !f.publish.retain
                    && self
                        .subs
                        .iter()
                        .any(|s| s.rap && filter_matches(&s.filter, topic))
                {
                    // Retain As Published (MQTT-3.3.1-12): rumqttd cleared it
                    f.publish.retain = true;
                }
                let m = &self.shared.metrics;
                m.publishes_out.inc();
                m.bytes_out.inc_by(f.publish.payload.len() as u64);
                let Some(pkid) = pkid else {
                    // QoS 0 (the DUP mark cleared)
                    let p = Publish::new(f.publish.topic, f.publish.payload, f.publish.retain);
                    conn.push(Packet::Publish(p, f.properties));
                    return Outcome::Continue;
                };
                // Delivered at the lower of the publish's QoS and the
                // subscription's (MQTT-3.8.4-8); rumqttd uses the latter.
                match published {
                    QoS::AtMostOnce => {
                        let p = Publish::new(f.publish.topic, f.publish.payload, f.publish.retain);
                        conn.push(Packet::Publish(p, f.properties));
                        self.router_inflight.push_back((pkid, RouterAck::PubAck));
                        self.release_router_acks(to_router);
                    }
                    published => {
                        // a QoS 2 forward taken down to QoS 1 is written as
                        // such: the client's PUBACK frees the router's slot
                        // as a PUBREC would
                        self.router_inflight.push_back((pkid, RouterAck::Waiting));
                        let held = Held {
                            publish: f.publish,
                            props: f.properties,
                            pkid,
                            as_qos1: published == QoS::AtLeastOnce && fqos == 2,
                            direct: false,
                        };
                        if self.held.is_empty() && self.sent_unacked < self.receive_max {
                            self.send_held(conn, held);
                        } else {
                            self.held.push_back(held);
                        }
                    }
                }
            }
            Notification::DeviceAck(ack) => {
                let mut packet: Packet = ack.into();
                if matches!(&packet, Packet::UnsubAck(u, _) if u.pkid == INTERNAL_PKID) {
                    return Outcome::Continue;
                }
                if let Packet::SubAck(s, _) = &mut packet {
                    if let Some(codes) = self.pending_subs.remove(&s.pkid) {
                        let mut theirs = s.return_codes.drain(..);
                        let merged: Vec<_> = codes
                            .into_iter()
                            .map(|c| {
                                c.or_else(|| theirs.next())
                                    .unwrap_or(SubscribeReasonCode::Unspecified)
                            })
                            .collect();
                        drop(theirs);
                        s.return_codes = merged;
                    }
                }
                let presence = match &packet {
                    Packet::SubAck(s, _) => self
                        .pending_presence
                        .remove(&s.pkid)
                        .map(|filters| (filters, s.return_codes.clone())),
                    _ => None,
                };
                conn.push(packet);
                if let Some((filters, codes)) = presence {
                    self.current_presence(conn, &filters, &codes);
                }
            }
            Notification::Unschedule => return Outcome::Unscheduled,
            Notification::Disconnect(d, props) => {
                conn.push(Packet::Disconnect(d, props));
                return Outcome::Disconnect;
            }
            _ => {}
        }
        Outcome::Continue
    }

    /// A direct delivery (reply topic or inbox) to the client, at the
    /// subscription's QoS (0 or 1), with a packet id from
    /// [`DIRECT_PKIDS`] up (rumqttd numbers its own 1..=100).
    fn direct_out(
        &mut self,
        conn: &mut Conn,
        publish: Publish,
        mut props: Option<rumqttd::protocol::PublishProperties>,
    ) {
        let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
        let Some((_, sub_qos)) = self.direct_topics.iter().find(|(t, _)| t == topic) else {
            return; // unsubscribed meanwhile
        };
        if !self.shared.authz.may_deliver(&self.principal, topic) {
            // left the room or was kicked since subscribing
            self.shared
                .metrics
                .acl_denials
                .with_label_values(&["deliver", "not_member"])
                .inc();
            return;
        }
        let v5 = conn.version == Version::V5;
        if let Some((_, id)) = self.direct_ids.iter().find(|(t, _)| t == topic) {
            if v5 {
                props
                    .get_or_insert_with(Default::default)
                    .subscription_identifiers = vec![*id];
            }
        }
        let size = publish_size(&publish, props.as_ref().filter(|_| v5));
        if self.client_max.is_some_and(|m| size > m) {
            return;
        }
        // the bridge publishes replies and the inbox at QoS 1 (PROTOCOL.md);
        // the internal link that hands them over holds them at QoS 0
        let qos1 = *sub_qos != QoS::AtMostOnce;
        let m = &self.shared.metrics;
        m.publishes_out.inc();
        m.bytes_out.inc_by(publish.payload.len() as u64);
        let publish = Publish::new(publish.topic, publish.payload, false);
        if !qos1 {
            conn.push(Packet::Publish(publish, props));
            return;
        }
        let held = Held {
            publish,
            props,
            pkid: 0,
            as_qos1: true,
            direct: true,
        };
        if self.held.is_empty() && self.sent_unacked < self.receive_max {
            self.send_held(conn, held);
        } else {
            self.held.push_back(held);
        }
    }

    /// The packet id of the next QoS 1 publish the connection layer sends
    /// itself (direct deliveries, current presence): from [`DIRECT_PKIDS`]
    /// up, so their PUBACKs never reach the router.
    fn next_direct_pkid(&mut self) -> u16 {
        let pkid = self.direct_pkid;
        self.direct_pkid = if pkid == u16::MAX {
            DIRECT_PKIDS
        } else {
            pkid + 1
        };
        pkid
    }

    /// Whether the subscription options let a forward through: a retained
    /// message (rumqttd sets RETAIN only on those it sends at subscribe
    /// time) when a subscription that asked for them matches it (Retain
    /// Handling, MQTT-3.3.1-9/-10/-11); this session's own message not when
    /// every subscription matching it has No Local (MQTT-3.8.3-3).
    fn wanted(&mut self, publish: &Publish, topic: &str) -> bool {
        if self.subs.is_empty() {
            return true;
        }
        if publish.retain {
            return self
                .subs
                .iter()
                .any(|s| s.wants_retained && filter_matches(&s.filter, topic));
        }
        if self.own_recent.is_empty() {
            return true;
        }
        let key = (publish.payload.as_ptr() as usize, publish.payload.len());
        let Some(i) = self
            .own_recent
            .iter()
            .position(|(p, l, t)| (*p, *l) == key && *t == publish.topic)
        else {
            return true;
        };
        let own = self.own_recent.remove(i);
        if self.own_recent.is_empty() {
            self.own_recent = std::collections::VecDeque::new();
        }
        let mut matching = self
            .subs
            .iter()
            .filter(|s| filter_matches(&s.filter, topic));
        let all_no_local = matching.clone().next().is_some() && matching.all(|s| s.no_local);
        if !all_no_local {
            // a subscription without No Local takes it too: one more forward
            // of it may come (one per matching filter)
            if let Some(own) = own {
                self.own_recent.push_back(own);
            }
        }
        !all_no_local
    }

    /// Overlapping subscriptions: rumqttd forwards a PUBLISH once per
    /// matching subscription. It goes out once, with the Subscription
    /// Identifiers of all of them (MQTT-3.3.4-2/-4), when this forward has
    /// the highest QoS among them; later forwards of it are dropped. A
    /// forward at a lower QoS goes out as it is, and so do the others. The
    /// forwards of one PUBLISH share its payload `Bytes` (the router's log
    /// holds it, so its address is not reused meanwhile).
    fn first_copy(
        &mut self,
        publish: &Publish,
        fqos: u8,
        topic: &str,
        props: &mut Option<rumqttd::protocol::PublishProperties>,
    ) -> bool {
        if !self.overlap || publish.retain {
            return true;
        }
        let same =
            |p: &Bytes| p.as_ptr() == publish.payload.as_ptr() && p.len() == publish.payload.len();
        if let Some(i) = self
            .copies
            .iter()
            .position(|(p, t, _, _)| same(p) && *t == publish.topic)
        {
            let mut drop_it = true;
            if let Some(e) = self.copies.get_mut(i) {
                e.2 = e.2.saturating_sub(1);
                drop_it = e.3;
                if e.2 == 0 {
                    self.copies.remove(i);
                }
            }
            if self.copies.is_empty() {
                self.copies = std::collections::VecDeque::new();
            }
            return !drop_it;
        }
        let matching: Vec<&SubOpts> = self
            .subs
            .iter()
            .filter(|s| filter_matches(&s.filter, topic))
            .collect();
        let top = matching.iter().map(|s| s.qos as u8).max().unwrap_or(0);
        if matching.len() < 2 {
            return true;
        }
        // at the highest QoS: this one carries every identifier and the
        // others are dropped; else every copy goes out as it is
        let merged = fqos >= top;
        let others = matching.len() - 1;
        if merged {
            let ids: Vec<usize> = matching.iter().filter_map(|s| s.id).collect();
            if !ids.is_empty() {
                props
                    .get_or_insert_with(Default::default)
                    .subscription_identifiers = ids;
            }
        }
        if self.copies.len() >= COPIES_MAX {
            self.copies.pop_front();
        }
        let topic = Bytes::copy_from_slice(&publish.topic);
        self.copies
            .push_back((publish.payload.clone(), topic, others, merged));
        true
    }

    /// Sends a QoS 1 or 2 router delivery, or a QoS 1 direct one.
    fn send_held(&mut self, conn: &mut Conn, h: Held) {
        self.sent_unacked += 1;
        if h.direct {
            let pkid = self.next_direct_pkid();
            conn.push_qos1(h.publish, h.props, pkid);
        } else if h.as_qos1 {
            conn.push_qos1(h.publish, h.props, h.pkid);
        } else {
            conn.push(Packet::Publish(h.publish, h.props));
        }
    }

    /// Sends what the client's Receive Maximum held back, as far as it now allows.
    fn release_held(&mut self, conn: &mut Conn) {
        while self.sent_unacked < self.receive_max {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            self.send_held(conn, h);
        }
        if self.held.is_empty() && self.held.capacity() > 0 {
            self.held = std::collections::VecDeque::new();
        }
    }

    /// The client acknowledged a router delivery. rumqttd takes acks in
    /// delivery order only (an ack out of order drops the link), and this
    /// layer acknowledges itself the deliveries it does not pass on (refused,
    /// too large, or taken down to QoS 0): so acks wait here until every
    /// earlier delivery is acknowledged. An ack for no awaited delivery is
    /// ignored (rumqttd would drop the link for it; it re-sends a resumed
    /// session's unacknowledged deliveries, so those are awaited again).
    fn ack_router(&mut self, pkid: u16, ack: RouterAck, to_router: &mut Vec<Packet>) {
        match self
            .router_inflight
            .iter_mut()
            .find(|(p, a)| *p == pkid && *a == RouterAck::Waiting)
        {
            Some(entry) => {
                entry.1 = ack;
                if ack == RouterAck::PubAck {
                    // a QoS 2 delivery's slot is freed by its PUBCOMP
                    self.sent_unacked = self.sent_unacked.saturating_sub(1);
                }
            }
            // an ack of nothing awaited (a duplicate, or made up): rumqttd
            // would drop the link for it, so it goes no further
            None => debug!(pkid, "acknowledgement of no delivery ignored"),
        }
        self.release_router_acks(to_router);
    }

    /// Sends the acknowledgements at the front of the queue that are ready.
    fn release_router_acks(&mut self, to_router: &mut Vec<Packet>) {
        while let Some((pkid, ack)) = self.router_inflight.front().copied() {
            if ack == RouterAck::Waiting {
                break;
            }
            self.router_inflight.pop_front();
            to_router.push(ack.packet(pkid));
        }
        if self.router_inflight.is_empty() && self.router_inflight.capacity() > 16 {
            self.router_inflight.shrink_to_fit();
        }
    }

    /// The session ended: a persistent one keeps its direct topics (and
    /// collects what is published to them) for its next connection.
    pub(super) fn end_direct(&mut self, persistent: bool) {
        self.shared
            .direct
            .detach(&self.client_id, self.direct_id, persistent);
    }

    /// After a SUBACK: the current presence each granted filter matches (as
    /// a retained message would be), where this principal may receive it.
    fn current_presence(
        &mut self,
        conn: &mut Conn,
        filters: &[(usize, String)],
        codes: &[SubscribeReasonCode],
    ) {
        for (pos, filter) in filters {
            let qos1 = match codes.get(*pos) {
                Some(SubscribeReasonCode::QoS0) => false,
                Some(SubscribeReasonCode::QoS1 | SubscribeReasonCode::QoS2) => true,
                Some(SubscribeReasonCode::Success(q)) => *q != QoS::AtMostOnce,
                _ => continue,
            };
            for (topic, payload) in self.shared.presences.matching(filter) {
                if !self.shared.authz.may_deliver(&self.principal, &topic) {
                    continue;
                }
                self.shared.metrics.publishes_out.inc();
                let publish = Publish::new(Bytes::from(topic), payload, true);
                if !qos1 {
                    conn.push(Packet::Publish(publish, None));
                    continue;
                }
                // at the subscription's QoS, numbered like direct deliveries
                let pkid = self.next_direct_pkid();
                self.sent_unacked += 1;
                conn.push_qos1(publish, None, pkid);
            }
        }
    }

    /// Loads a room the packet names, if the broker does not know it yet,
    /// within this connection's load budget; counted in the metrics.
    /// A subscription to another user's presence is allowed when the two
    /// share a room; after a restart the broker knows none of their rooms
    /// yet, so it asks the store for one and loads it.
    async fn ensure_shared_room(&mut self, filter: &str) {
        let Principal::User(me) = &self.principal else {
            return;
        };
        let Some(other) = self.shared.presences.user_of(filter) else {
            return;
        };
        let access = self.shared.authz.access();
        if other == me.as_str() || other.contains(['+', '#']) || access.share_room(me, other) {
            return;
        }
        let (me, other) = (me.clone(), other.to_owned());
        if let Some(room) = access.find_shared(&me, &other, &mut self.loads).await {
            self.ensure(&room).await;
        }
    }

    async fn ensure(&mut self, room: &str) {
        let got = self
            .shared
            .authz
            .access()
            .ensure(room, &mut self.loads)
            .await;
        let m = &self.shared.metrics;
        match got {
            Ensured::Known => {}
            Ensured::CachedMiss => m.room_misses_cached.inc(),
            Ensured::Throttled => {
                debug!(room, "room load throttled");
                m.room_loads_throttled.inc();
            }
            Ensured::Found => m.room_loads.with_label_values(&["found"]).inc(),
            Ensured::Missing => m.room_loads.with_label_values(&["missing"]).inc(),
            Ensured::Failed => m.room_loads.with_label_values(&["failed"]).inc(),
        }
    }

    /// Rate of publishes: an over-eager user is slowed, not cut off.
    /// `Some(wait)`: `inc` is a PUBLISH over the rate, due in `wait`.
    fn over_rate(&self, inc: &codec::Incoming) -> Option<Duration> {
        if matches!(self.principal, Principal::Service { .. })
            || !matches!(inc.packet, Packet::Publish(..))
        {
            return None;
        }
        self.publishes.take().err()
    }
}

/// Refuses a client's publish: MQTT 5 gets a PUBACK with `reason`; 3.1.1
/// cannot refuse one, so it is acknowledged and dropped; a refused QoS 2
/// publish (no way to refuse it with a 3.1.1 PUBREC) disconnects.
fn refuse(
    conn: &mut Conn,
    qos: u8,
    pkid: u16,
    reason: PubAckReason,
) -> Result<bool, DisconnectReasonCode> {
    if qos == 2 {
        return Err(match reason {
            PubAckReason::QuotaExceeded => DisconnectReasonCode::QuotaExceeded,
            _ => DisconnectReasonCode::NotAuthorized,
        });
    }
    if qos == 1 {
        let reason = match conn.version {
            Version::V4 => PubAckReason::Success,
            Version::V5 => reason,
        };
        conn.push(Packet::PubAck(PubAck { pkid, reason }, None));
    }
    Ok(true)
}

/// Packet ids of direct deliveries start here: rumqttd 0.20 numbers the
/// deliveries it forwards 1..=100 (its `MAX_INFLIGHT`), so the two never
/// meet, and a PUBACK says by its id whose delivery it acknowledges.
pub(super) const DIRECT_PKIDS: u16 = 1024;

/// Where a router delivery's acknowledgement stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RouterAck {
    /// Sent to the client, not acknowledged yet.
    Waiting,
    PubAck,
    PubRec,
}

impl RouterAck {
    fn packet(self, pkid: u16) -> Packet {
        match self {
            RouterAck::PubRec => Packet::PubRec(
                rumqttd::protocol::PubRec {
                    pkid,
                    reason: rumqttd::protocol::PubRecReason::Success,
                },
                None,
            ),
            _ => Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                },
                None,
            ),
        }
    }
}

/// A router delivery at QoS 1 or 2, sent or held for Receive Maximum.
pub(super) struct Held {
    publish: Publish,
    props: Option<rumqttd::protocol::PublishProperties>,
    pkid: u16,
    /// Written as QoS 1 (a QoS 2 forward of a QoS 1 publish).
    as_qos1: bool,
    /// A direct delivery: numbered when sent ([`Session::next_direct_pkid`]).
    direct: bool,
}

/// PUBLISHes remembered while their other forwards come ([`Session::first_copy`]).
const COPIES_MAX: usize = 256;

/// Own publishes remembered for No Local.
const OWN_RECENT_MAX: usize = 256;

/// Packet id of the UNSUBSCRIBE this layer sends the router itself (to
/// replace a subscription); clients may not use 0 (MQTT-2.2.1-3), and its
/// UNSUBACK is not passed on.
pub(super) const INTERNAL_PKID: u16 = 0;

enum Outcome {
    Continue,
    Unscheduled,
    Disconnect,
}

/// Bytes of a variable byte integer holding `n`.
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// The encoded size of a PUBLISH with its MQTT 5 properties (`None` on
/// 3.1.1): what a client's Maximum Packet Size bounds (MQTT-3.1.2-24).
/// The fixed header is counted at its largest (5 bytes).
pub(crate) fn publish_size(
    p: &Publish,
    props: Option<&rumqttd::protocol::PublishProperties>,
) -> usize {
    let Some(props) = props else {
        return p.len() + 5;
    };
    let s = |v: &Option<String>| v.as_ref().map_or(0, |v| 3 + v.len());
    let mut n = props.payload_format_indicator.map_or(0, |_| 2)
        + props.message_expiry_interval.map_or(0, |_| 5)
        + props.topic_alias.map_or(0, |_| 3)
        + s(&props.response_topic)
        + props.correlation_data.as_ref().map_or(0, |c| 3 + c.len())
        + s(&props.content_type);
    for (k, v) in &props.user_properties {
        n += 5 + k.len() + v.len();
    }
    for id in &props.subscription_identifiers {
        n += 1 + varint_len(*id);
    }
    p.len() + 5 + varint_len(n) + n
}
