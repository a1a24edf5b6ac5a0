//! One client connection: handshake, CONNECT, then a loop that moves packets
//! between the socket and the connection's rumqttd router link, checking every
//! PUBLISH and SUBSCRIBE on the way in and every delivery on the way out.

use crate::acl::Decision;
use crate::auth::{AuthError, Principal};
use crate::codec::{self, FrameError, Version};
use crate::names::valid_client_id;
use crate::registry::ClaimError;
use crate::server::Shared;
use crate::transport::{self, Io, Kind};
use bytes::BytesMut;
use futures_util::FutureExt;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet,
    PubAck, PubAckReason, Publish, SubAck, Subscribe, SubscribeReasonCode,
};
use rumqttd::Notification;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep_until, timeout_at, Instant};
use tracing::{debug, info, warn, Instrument};

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Client sent DISCONNECT: no will.
    Clean,
    /// Network loss, timeout, protocol error: the will is published.
    Unclean,
    /// The router dropped the link (session taken over inside the router).
    RouterGone,
    /// Server shutdown or takeover by our registry.
    Stopped(DisconnectReasonCode),
}

/// Serves one accepted socket to the end.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    kind: Kind,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let span = tracing::info_span!("conn", %peer, listener = kind.name(), client_id = tracing::field::Empty, user = tracing::field::Empty);
    async move {
        if let Err(e) = run(shared, kind, tcp).await {
            debug!(error = %e, "connection closed");
        }
    }
    .instrument(span)
    .await
}

async fn run(shared: Arc<Shared>, kind: Kind, tcp: tokio::net::TcpStream) -> Result<(), String> {
    let limits = &shared.config.limits;
    let max_len = limits.max_packet_bytes;
    let deadline = Instant::now() + Duration::from_millis(limits.connect_timeout_ms);
    let io = timeout_at(
        deadline,
        transport::handshake(kind, tcp, shared.tls.as_ref(), max_len),
    )
    .await
    .map_err(|_| "handshake timeout".to_string())?
    .map_err(|e| format!("handshake: {e}"))?;
    let mut conn = Conn {
        io,
        rbuf: BytesMut::with_capacity(4096),
        wbuf: BytesMut::with_capacity(4096),
        version: Version::V4,
    };
    let packet = timeout_at(deadline, conn.read_connect(max_len))
        .await
        .map_err(|_| "connect timeout".to_string())??;
    let Packet::Connect(connect, props, will, _will_props, login) = packet else {
        return Err("first packet is not CONNECT".into());
    };

    // Authenticate.
    let (username, password) = login.map(|l| (l.username, l.password)).unwrap_or_default();
    let principal = match shared.auth.authenticate(&username, &password) {
        Ok(p) => p,
        Err(e) => {
            let code = match e {
                AuthError::Config(_) => ConnectReturnCode::ServiceUnavailable,
                _ => ConnectReturnCode::BadUserNamePassword,
            };
            info!(%username, reason = %e, "login refused");
            conn.refuse(code).await;
            return Ok(());
        }
    };
    tracing::Span::current().record("user", principal.id());
    if matches!(principal, Principal::User(_)) {
        let mut ready = shared.bridge_ready.clone();
        if timeout_at(deadline, ready.wait_for(|r| *r)).await.is_err() {
            conn.refuse(ConnectReturnCode::ServerUnavailable).await;
            return Ok(());
        }
    }

    // Client id: validated, or assigned when empty and the session is clean.
    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        if !connect.clean_session && conn.version == Version::V4 {
            conn.refuse(ConnectReturnCode::ClientIdentifierNotValid)
                .await;
            return Ok(());
        }
        let id = format!("auto-{:016x}", rand_u64());
        assigned = Some(id.clone());
        id
    } else {
        connect.client_id.clone()
    };
    if !valid_client_id(&client_id) {
        info!(client_id = %client_id.escape_debug(), "client id refused");
        conn.refuse(ConnectReturnCode::ClientIdentifierNotValid)
            .await;
        return Ok(());
    }
    tracing::Span::current().record("client_id", client_id.as_str());
    if let Some(w) = &will {
        let topic = std::str::from_utf8(&w.topic).unwrap_or("");
        if !shared.authz.check_publish(&principal, topic).allowed() {
            conn.refuse(ConnectReturnCode::NotAuthorized).await;
            return Ok(());
        }
    }

    let claim = match shared
        .registry
        .claim(
            &client_id,
            principal.id(),
            limits.connections_per_user,
            limits.max_connections,
        )
        .await
    {
        Ok(c) => c,
        Err(e) => {
            info!(reason = ?e, "connection refused");
            let code = match e {
                ClaimError::InUse => ConnectReturnCode::ClientIdentifierNotValid,
                ClaimError::UserLimit => ConnectReturnCode::QuotaExceeded,
                ClaimError::ServerFull => ConnectReturnCode::ServerBusy,
            };
            conn.refuse(code).await;
            return Ok(());
        }
    };

    let (mut link_tx, mut link_rx, session_present) =
        match shared.router.link(&client_id, connect.clean_session).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "router link failed");
                conn.refuse(ConnectReturnCode::ServerUnavailable).await;
                return Ok(());
            }
        };

    let client_max = props
        .as_ref()
        .and_then(|p| p.max_packet_size)
        .map(|m| m as usize);
    let ack_props = (conn.version == Version::V5).then(|| ConnAckProperties {
        assigned_client_identifier: assigned,
        max_packet_size: Some(max_len as u32),
        topic_alias_max: None,
        retain_available: Some(1),
        wildcard_subscription_available: Some(1),
        shared_subscription_available: Some(0),
        ..Default::default()
    });
    conn.push(Packet::ConnAck(
        ConnAck {
            session_present,
            code: ConnectReturnCode::Success,
        },
        ack_props,
    ));
    conn.flush().await.map_err(|e| e.to_string())?;
    if claim.first_of_user {
        if let Principal::User(user) = &principal {
            shared.presence(user, true);
        }
    }
    debug!(version = ?conn.version, keep_alive = connect.keep_alive, "connected");

    let mut session = Session {
        shared: shared.clone(),
        principal,
        client_id,
        pending_subs: HashMap::new(),
        client_max,
        tokens: shared.config.limits.publishes_per_sec as f64 * 2.0,
        refilled: Instant::now(),
    };
    let end = session
        .pump(
            &mut conn,
            &mut link_tx,
            &mut link_rx,
            connect.keep_alive,
            &claim.stop,
        )
        .await;
    debug!(?end, "disconnected");

    if let End::Stopped(reason) = end {
        if conn.version == Version::V5 {
            conn.push(Packet::Disconnect(
                Disconnect {
                    reason_code: reason,
                },
                None,
            ));
            let _ = conn.flush().await;
        }
    }
    if end != End::RouterGone {
        // Tell the router, so it saves a persistent session or drops a clean one.
        let bye = Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            },
            None,
        );
        let _ = link_tx.send(bye).await;
    }
    if end != End::Clean {
        if let Some(w) = will {
            shared.publish_will(w);
        }
    }
    let user = session.principal;
    if claim.finish() {
        if let Principal::User(user) = &user {
            shared.presence(user, false);
        }
    }
    conn.io.close().await;
    Ok(())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// The socket side: buffers and the protocol level.
struct Conn {
    io: Io,
    rbuf: BytesMut,
    wbuf: BytesMut,
    version: Version,
}

impl Conn {
    async fn read_connect(&mut self, max_len: usize) -> Result<Packet, String> {
        loop {
            match codec::frame(&self.rbuf, max_len) {
                Ok(Some(frame)) => {
                    if frame.packet_type() != 1 {
                        return Err("first packet is not CONNECT".into());
                    }
                    self.version =
                        codec::connect_version(&self.rbuf, &frame).map_err(|e| e.to_string())?;
                    return match codec::read(self.version, &mut self.rbuf, max_len) {
                        Ok(Some(inc)) => Ok(inc.packet),
                        Ok(None) => Err("incomplete connect".into()),
                        Err(e) => Err(e.to_string()),
                    };
                }
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            if self
                .io
                .read(&mut self.rbuf)
                .await
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("closed before CONNECT".into());
            }
        }
    }

    /// Encodes a packet for this connection's protocol level (v4 never gets properties).
    fn push(&mut self, packet: Packet) {
        let packet = match self.version {
            Version::V4 => for_v4(packet),
            Version::V5 => packet,
        };
        if let Err(e) = codec::write(self.version, packet, &mut self.wbuf) {
            warn!(error = %e, "cannot encode packet");
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let out = self.wbuf.split();
        self.io.write(&out).await
    }

    async fn refuse(&mut self, code: ConnectReturnCode) {
        let code = match (self.version, code) {
            (
                Version::V4,
                ConnectReturnCode::QuotaExceeded
                | ConnectReturnCode::ServerBusy
                | ConnectReturnCode::ServerUnavailable,
            ) => ConnectReturnCode::ServiceUnavailable,
            (_, c) => c,
        };
        self.push(Packet::ConnAck(
            ConnAck {
                session_present: false,
                code,
            },
            None,
        ));
        let _ = self.flush().await;
        self.io.close().await;
    }
}

/// Drops properties and maps v5-only reason codes, for 3.1.1 receivers
/// (rumqttd's v4 writer panics on properties).
fn for_v4(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(p, _) => Packet::PubAck(
            PubAck {
                pkid: p.pkid,
                reason: PubAckReason::Success,
            },
            None,
        ),
        Packet::SubAck(s, _) => Packet::SubAck(
            SubAck {
                pkid: s.pkid,
                return_codes: s
                    .return_codes
                    .into_iter()
                    .map(|c| match c {
                        SubscribeReasonCode::Success(q) => SubscribeReasonCode::Success(q),
                        SubscribeReasonCode::QoS0 => {
                            SubscribeReasonCode::Success(rumqttd::protocol::QoS::AtMostOnce)
                        }
                        SubscribeReasonCode::QoS1 => {
                            SubscribeReasonCode::Success(rumqttd::protocol::QoS::AtLeastOnce)
                        }
                        SubscribeReasonCode::QoS2 => {
                            SubscribeReasonCode::Success(rumqttd::protocol::QoS::ExactlyOnce)
                        }
                        _ => SubscribeReasonCode::Failure,
                    })
                    .collect(),
            },
            None,
        ),
        Packet::PubRec(p, _) => Packet::PubRec(p, None),
        Packet::PubRel(p, _) => Packet::PubRel(p, None),
        Packet::PubComp(p, _) => Packet::PubComp(p, None),
        Packet::UnsubAck(u, _) => Packet::UnsubAck(u, None),
        Packet::ConnAck(c, _) => Packet::ConnAck(c, None),
        Packet::Disconnect(d, _) => Packet::Disconnect(d, None),
        other => other,
    }
}

/// The authorized session between the socket and the router.
struct Session {
    shared: Arc<Shared>,
    principal: Principal,
    client_id: String,
    /// SUBSCRIBEs partly refused by us: pkid -> our codes (None = the router's).
    pending_subs: HashMap<u16, Vec<Option<SubscribeReasonCode>>>,
    client_max: Option<usize>,
    tokens: f64,
    refilled: Instant,
}

impl Session {
    async fn pump(
        &mut self,
        conn: &mut Conn,
        link_tx: &mut LinkTx,
        link_rx: &mut LinkRx,
        keep_alive: u16,
        stop: &tokio::sync::Notify,
    ) -> End {
        let mut shutdown = self.shared.shutdown.clone();
        let max_len = self.shared.config.limits.max_packet_bytes;
        // Keep-alive 0 is allowed (rumqttd refuses it): no timeout then.
        let grace = Duration::from_millis(keep_alive as u64 * 1500);
        let mut ka_deadline = Instant::now() + grace;
        let mut to_router: Vec<Packet> = Vec::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return End::Stopped(DisconnectReasonCode::ServerShuttingDown),
                _ = stop.notified() => return End::Stopped(DisconnectReasonCode::SessionTakenOver),
                _ = sleep_until(ka_deadline), if keep_alive > 0 => {
                    debug!("keep-alive timeout");
                    return End::Unclean;
                }
                r = conn.io.read(&mut conn.rbuf) => {
                    match r {
                        Ok(0) | Err(_) => return End::Unclean,
                        Ok(_) => {}
                    }
                    ka_deadline = Instant::now() + grace;
                    loop {
                        let inc = match codec::read(conn.version, &mut conn.rbuf, max_len) {
                            Ok(Some(inc)) => inc,
                            Ok(None) => break,
                            Err(e) => {
                                info!(error = %e, "protocol error");
                                let reason = match e {
                                    FrameError::TooLarge(_) => DisconnectReasonCode::PacketTooLarge,
                                    _ => DisconnectReasonCode::MalformedPacket,
                                };
                                if conn.version == Version::V5 {
                                    conn.push(Packet::Disconnect(Disconnect { reason_code: reason }, None));
                                    let _ = conn.flush().await;
                                }
                                return End::Unclean;
                            }
                        };
                        match self.incoming(conn, inc, &mut to_router).await {
                            Ok(true) => {}
                            Ok(false) => {
                                let _ = send_all(link_tx, &mut to_router).await;
                                let _ = conn.flush().await;
                                return End::Clean;
                            }
                            Err(reason) => {
                                if conn.version == Version::V5 {
                                    conn.push(Packet::Disconnect(Disconnect { reason_code: reason }, None));
                                    let _ = conn.flush().await;
                                }
                                return End::Unclean;
                            }
                        }
                    }
                    if send_all(link_tx, &mut to_router).await.is_err() {
                        return End::RouterGone;
                    }
                    if conn.flush().await.is_err() {
                        return End::Unclean;
                    }
                }
                n = link_rx.next() => {
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

    /// Handles one client packet. `Ok(false)`: the client disconnected cleanly.
    async fn incoming(
        &mut self,
        conn: &mut Conn,
        inc: codec::Incoming,
        to_router: &mut Vec<Packet>,
    ) -> Result<bool, DisconnectReasonCode> {
        match inc.packet {
            Packet::Publish(publish, props) => {
                if props.as_ref().is_some_and(|p| p.topic_alias.is_some()) {
                    return Err(DisconnectReasonCode::TopicAliasInvalid);
                }
                let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
                if let Some(room) = self.shared.authz.room_of(topic) {
                    self.shared.authz.access().ensure(room).await;
                }
                let decision = self.shared.authz.check_publish(&self.principal, topic);
                if let Decision::Deny(rule) = decision {
                    info!(rule, topic = %topic.escape_debug(), "publish refused");
                    if inc.qos == 2 {
                        return Err(DisconnectReasonCode::NotAuthorized);
                    }
                    if inc.qos == 1 {
                        // 3.1.1 cannot refuse a publish: it is acknowledged and dropped.
                        let reason = match conn.version {
                            Version::V4 => PubAckReason::Success,
                            Version::V5 => PubAckReason::NotAuthorized,
                        };
                        conn.push(Packet::PubAck(
                            PubAck {
                                pkid: inc.pkid,
                                reason,
                            },
                            None,
                        ));
                    }
                    return Ok(true);
                }
                self.throttle().await;
                to_router.push(Packet::Publish(publish, props));
            }
            Packet::Subscribe(sub, props) => {
                let mut codes = Vec::with_capacity(sub.filters.len());
                let mut allowed = Vec::new();
                for f in sub.filters {
                    if let Some(room) = self.shared.authz.room_of(&f.path) {
                        self.shared.authz.access().ensure(room).await;
                    }
                    match self.shared.authz.check_subscribe(
                        &self.principal,
                        &self.client_id,
                        &f.path,
                    ) {
                        Decision::Allow => {
                            codes.push(None);
                            allowed.push(f);
                        }
                        Decision::Deny(rule) => {
                            info!(rule, filter = %f.path.escape_debug(), "subscribe refused");
                            codes.push(Some(SubscribeReasonCode::NotAuthorized));
                        }
                    }
                }
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
                    if codes.iter().any(Option::is_some) {
                        self.pending_subs.insert(sub.pkid, codes);
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
            Packet::PingReq(_) => conn.push(Packet::PingResp(rumqttd::protocol::PingResp)),
            Packet::Disconnect(..) => return Ok(false),
            Packet::Connect(..) => return Err(DisconnectReasonCode::ProtocolError),
            other => to_router.push(other),
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
            Notification::Forward(f) => {
                let topic = std::str::from_utf8(&f.publish.topic).unwrap_or("");
                let too_big = self.client_max.is_some_and(|m| f.publish.len() + 5 > m);
                if too_big || !self.shared.authz.may_deliver(&self.principal, topic) {
                    // Not delivered: acknowledge it to the router ourselves.
                    if let Some(pkid) = forward_pkid(&f.publish) {
                        to_router.push(Packet::PubAck(
                            PubAck {
                                pkid,
                                reason: PubAckReason::Success,
                            },
                            None,
                        ));
                    }
                    return Outcome::Continue;
                }
                conn.push(Packet::Publish(f.publish, f.properties));
            }
            Notification::DeviceAck(ack) => {
                let mut packet: Packet = ack.into();
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
                conn.push(packet);
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

    /// Token bucket on publishes: an over-eager client is slowed, not cut off.
    async fn throttle(&mut self) {
        if matches!(self.principal, Principal::Service { .. }) {
            return;
        }
        let rate = self.shared.config.limits.publishes_per_sec.max(1) as f64;
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate).min(rate * 2.0);
        self.refilled = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / rate);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.refilled = Instant::now();
        }
        self.tokens -= 1.0;
    }
}

enum Outcome {
    Continue,
    Unscheduled,
    Disconnect,
}

/// rumqttd keeps a forward's packet id private; its serialized form has it.
fn forward_pkid(p: &Publish) -> Option<u16> {
    let raw = p.serialize();
    let qos = (raw.first()? >> 1) & 0b11;
    if qos == 0 {
        return None;
    }
    Some(u16::from_be_bytes([*raw.get(1)?, *raw.get(2)?]))
}

/// Hands queued packets to the router with a single wake-up.
async fn send_all(link_tx: &mut LinkTx, packets: &mut Vec<Packet>) -> Result<(), ()> {
    let Some(last) = packets.pop() else {
        return Ok(());
    };
    {
        let mut buf = link_tx.buffer();
        buf.extend(packets.drain(..));
    }
    link_tx.send(last).await.map(|_| ()).map_err(|_| ())
}
