//! One client connection: handshake, CONNECT, then a loop that moves packets
//! between the socket and the connection's rumqttd router link, checking every
//! PUBLISH and SUBSCRIBE on the way in and every delivery on the way out.

use crate::auth::{AuthError, Principal};
use crate::codec::Version;
use crate::names::{acceptable_client_id, router_id};
use crate::registry::{Claim, ClaimError, ClaimLimits};
use crate::shared::Shared;
use crate::transport::{self, Kind};
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill,
    Packet,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{timeout_at, Instant};
use tracing::{debug, info, warn, Instrument};

mod conn;
mod session;
use conn::Conn;
use session::Session;

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Client sent DISCONNECT: no will.
    Clean,
    /// Network loss, timeout, protocol error: the will is published.
    Unclean,
    /// The router dropped the link (session taken over inside the router).
    RouterGone,
    /// Server shutdown, takeover by our registry, or the credential expired
    /// (`MaximumConnectTime`): the will is published, as for any end the
    /// client did not ask for.
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
        let metrics = shared.metrics.clone();
        if let Err(e) = run(shared, kind, tcp).await {
            if let Some(reason) = e.refused {
                metrics.refused.with_label_values(&[reason]).inc();
            }
            debug!(error = %e.text, "connection closed");
        }
    }
    .instrument(span)
    .await
}

/// Why a connection ended early: the text for the log and, when it ended
/// before CONNACK, the `refused` metric's reason.
struct Failure {
    text: String,
    refused: Option<&'static str>,
}

impl From<String> for Failure {
    fn from(text: String) -> Self {
        Failure {
            text,
            refused: None,
        }
    }
}

fn refused(reason: &'static str) -> impl FnOnce(String) -> Failure {
    move |text| Failure {
        text,
        refused: Some(reason),
    }
}

/// Keeps the live-connection meters right however the session ends.
struct Live<'a> {
    shared: &'a Shared,
    user: bool,
}

impl<'a> Live<'a> {
    fn new(shared: &'a Shared, user: bool) -> Self {
        shared.metrics.connections.inc();
        if user {
            shared
                .live_users
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Live { shared, user }
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.shared.metrics.connections.dec();
        if self.user {
            self.shared
                .live_users
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// What a CONNACK'd connection keeps for its whole life. The handshake and
/// CONNECT state (the CONNECT packet and its properties, TLS or WebSocket
/// handshake futures, ~1.3 KiB) stays in [`accept`], which runs boxed, so
/// that it is not part of every idle session's task.
struct Accepted {
    conn: Conn,
    /// The session's own router link, if it needs one from the start.
    link: Option<session::RouterLink>,
    claim: Claim,
    session: Session,
    keep_alive: u16,
    will: Option<LastWill>,
    will_props: Option<rumqttd::protocol::LastWillProperties>,
    direct_rx: tokio::sync::mpsc::Receiver<crate::direct::Delivery>,
    persistent: bool,
    /// Seconds the session is kept after the connection ends (MQTT 5
    /// Session Expiry Interval, bounded; see [`session_expiry`]).
    expiry: u32,
}

async fn run(shared: Arc<Shared>, kind: Kind, tcp: tokio::net::TcpStream) -> Result<(), Failure> {
    let Some(Accepted {
        mut conn,
        mut link,
        claim,
        mut session,
        keep_alive,
        will,
        will_props,
        mut direct_rx,
        persistent,
        expiry,
    }) = Box::pin(accept(&shared, kind, tcp)).await?
    else {
        return Ok(());
    };
    let _live = Live::new(&shared, matches!(session.principal, Principal::User(_)));
    if claim.first_of_user {
        if let Principal::User(user) = &session.principal {
            shared.presence(user, true);
        }
    }
    debug!(version = ?conn.version, keep_alive, "connected");

    let end = session
        .pump(
            &mut conn,
            &mut link,
            &mut direct_rx,
            keep_alive,
            &claim.stop,
        )
        .await;
    debug!(?end, "disconnected");
    if link.is_some() {
        shared.metrics.router_links.dec();
    }
    // a v5 DISCONNECT may change the interval, not from 0 (MQTT-3.14.2-2)
    let expiry = match session.disconnect_expiry {
        Some(e) if expiry > 0 => {
            session_expiry(&shared, &session.principal, conn.version, false, Some(e))
        }
        _ => expiry,
    };
    let keep = persistent && expiry > 0;
    session.end_direct(keep);
    if keep && !session.subs.is_empty() {
        // the subscription options go with the kept session
        let subs = std::mem::take(&mut session.subs);
        shared
            .kept_subs
            .lock()
            .insert(session.client_id.clone(), subs);
    }

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
        if let Some((link_tx, _)) = link.as_mut() {
            let _ = link_tx.send(bye).await;
        }
    }
    if persistent && !keep {
        // a session resumed without an expiry ends with its connection
        // (MQTT 5 Clean Start 0, Session Expiry Interval 0)
        if drop_router_session(&shared, &session.client_id).await {
            claim.session_cleared();
        }
    }
    if end != End::Clean || session.will_on_disconnect {
        if let Some(w) = will {
            // sent when its Will Delay Interval has passed or the session
            // ends, whichever comes first (MQTT-3.1.3-9)
            let delay = will_props
                .as_ref()
                .and_then(|p| p.delay_interval)
                .unwrap_or(0)
                .min(if keep { expiry } else { 0 });
            if delay == 0 {
                shared.publish_will(w, will_props, &session.principal);
            } else {
                let who = session.principal.clone();
                shared.delay_will(&session.client_id, delay, w, will_props, who);
            }
        }
    }
    let generation = claim.generation();
    let user = session.principal;
    if claim.finish() {
        if let Principal::User(user) = &user {
            shared.presence(user, false);
        }
    }
    if keep && expiry != u32::MAX {
        let s = shared.clone();
        let client_id = session.client_id.clone();
        let mut timers = shared.expiry_timers.lock();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(u64::from(expiry))).await;
            {
                let mut t = s.expiry_timers.lock();
                if t.get(&client_id)
                    .is_some_and(|h| h.id() == tokio::task::id())
                {
                    t.remove(&client_id);
                }
            }
            expire_session(&s, &client_id, generation).await;
        });
        // one timer per client id: a new one replaces an older one
        if let Some(old) = timers.insert(session.client_id, timer.abort_handle()) {
            old.abort();
        }
        drop(timers);
    }
    shared
        .metrics
        .sessions_kept
        .set(shared.registry.persistent_sessions() as i64);
    conn.io.close().await;
    Ok(())
}

/// Handshake, CONNECT, authentication, client id, registry claim, router
/// link and CONNACK. `Ok(None)`: refused, and the client was told why.
async fn accept(
    shared: &Arc<Shared>,
    kind: Kind,
    tcp: tokio::net::TcpStream,
) -> Result<Option<Accepted>, Failure> {
    let limits = &shared.config.limits;
    let max_len = limits.max_packet_bytes;
    let deadline = Instant::now() + Duration::from_millis(limits.connect_timeout_ms);
    let io = timeout_at(
        deadline,
        transport::handshake(
            kind,
            tcp,
            shared.tls.as_ref().map(|t| t.load_full()),
            max_len,
        ),
    )
    .await
    .map_err(|_| "handshake timeout".to_string())
    .map_err(refused("handshake"))?
    .map_err(|e| format!("handshake: {e}"))
    .map_err(refused("handshake"))?;
    let mut conn = Conn::new(io);
    let packet = timeout_at(deadline, conn.read_connect(max_len))
        .await
        .map_err(|_| "connect timeout".to_string())
        .map_err(refused("protocol"))?
        .map_err(refused("protocol"))?;
    let Packet::Connect(connect, props, will, will_props, login) = packet else {
        return Err(refused("protocol")("first packet is not CONNECT".into()));
    };
    let metrics = &shared.metrics;
    let refuse = |reason: &'static str| metrics.refused.with_label_values(&[reason]).inc();

    // Authenticate.
    let (username, password) = login.map(|l| (l.username, l.password)).unwrap_or_default();
    // A hashed password waits for a verification slot: not past the deadline.
    let login = match timeout_at(deadline, shared.auth.authenticate(&username, &password)).await {
        Ok(Ok(login)) => login,
        Err(_) => {
            info!(%username, "login not checked within the connect timeout");
            refuse("auth_busy");
            conn.refuse(ConnectReturnCode::ServerUnavailable).await;
            return Ok(None);
        }
        Ok(Err(e)) => {
            let (code, label) = match e {
                AuthError::Config(_) => (ConnectReturnCode::ServiceUnavailable, "config"),
                AuthError::Missing => (ConnectReturnCode::BadUserNamePassword, "missing"),
                AuthError::BadCredentials => {
                    (ConnectReturnCode::BadUserNamePassword, "bad_credentials")
                }
                AuthError::BadToken(_) => (ConnectReturnCode::BadUserNamePassword, "bad_token"),
            };
            info!(%username, reason = %e, "login refused");
            metrics.auth_failures.with_label_values(&[label]).inc();
            refuse("auth");
            conn.refuse(code).await;
            return Ok(None);
        }
    };
    let principal = login.principal;
    tracing::Span::current().record("user", principal.id());
    if matches!(principal, Principal::User(_)) {
        let mut ready = shared.bridge_ready.clone();
        if timeout_at(deadline, ready.wait_for(|r| *r)).await.is_err() {
            refuse("not_ready");
            conn.refuse(ConnectReturnCode::ServerUnavailable).await;
            return Ok(None);
        }
    }

    // Client id: validated, or assigned when empty and the session is clean.
    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        if !connect.clean_session && conn.version == Version::V4 {
            refuse("client_id");
            conn.refuse(ConnectReturnCode::ClientIdentifierNotValid)
                .await;
            return Ok(None);
        }
        let id = format!("auto-{:016x}", rand_u64());
        assigned = Some(id.clone());
        id
    } else {
        connect.client_id.clone()
    };
    if !acceptable_client_id(&client_id) {
        info!(client_id = %client_id.escape_debug(), "client id refused");
        refuse("client_id");
        conn.refuse(ConnectReturnCode::ClientIdentifierNotValid)
            .await;
        return Ok(None);
    }
    tracing::Span::current().record("client_id", client_id.as_str());
    if let Some(w) = &will {
        let topic = std::str::from_utf8(&w.topic).unwrap_or("");
        if let crate::acl::Decision::Deny(rule) = shared.authz.check_publish(&principal, topic) {
            metrics.acl_denials.with_label_values(&["will", rule]).inc();
            refuse("will_denied");
            conn.refuse(ConnectReturnCode::NotAuthorized).await;
            return Ok(None);
        }
    }

    // The router keeps a session under the id after this connection ends
    // unless it links with a clean session (rumqttd 0.20: whatever a v5
    // Session Expiry Interval says), and the id stays bound as long. This
    // layer ends it when its expiry runs out ([`expire_session`]).
    let asked = props.as_ref().and_then(|p| p.session_expiry_interval);
    let expiry = session_expiry(
        shared,
        &principal,
        conn.version,
        connect.clean_session,
        asked,
    );
    let resume = !connect.clean_session;
    let persistent = resume || expiry > 0;
    let claim_limits = ClaimLimits {
        connections_per_user: limits.connections_per_user,
        max_connections: limits.max_connections,
        sessions_per_user: match principal {
            Principal::User(_) => limits.persistent_sessions_per_user,
            Principal::Service { .. } => usize::MAX,
        },
    };
    let claim = match shared
        .registry
        .claim(&client_id, principal.id(), persistent, &claim_limits)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            info!(reason = ?e, "connection refused");
            let (code, label) = match e {
                ClaimError::InUse => (
                    ConnectReturnCode::ClientIdentifierNotValid,
                    "client_id_in_use",
                ),
                ClaimError::Reserved => (
                    ConnectReturnCode::ClientIdentifierNotValid,
                    "client_id_reserved",
                ),
                ClaimError::UserLimit => (ConnectReturnCode::QuotaExceeded, "user_limit"),
                ClaimError::SessionLimit => (ConnectReturnCode::QuotaExceeded, "session_limit"),
                ClaimError::ServerFull => (ConnectReturnCode::ServerBusy, "server_full"),
            };
            refuse(label);
            conn.refuse(code).await;
            return Ok(None);
        }
    };

    shared.cancel_will(&client_id);
    if let Some(timer) = shared.expiry_timers.lock().remove(&client_id) {
        // resumed or replaced before it expired
        timer.abort();
    }
    if !resume && expiry > 0 {
        // Clean Start 1 with an expiry: no old session, but this one is
        // kept; rumqttd links either clean (kept by neither) or not
        // (resuming), so the old session is ended first
        drop_router_session(shared, &client_id).await;
    }
    // A user's clean session gets a router link only when it needs one
    // (session::Session::need_link); a session the router keeps, or an old
    // one it must drop, and a service's, link now.
    let link_now = persistent || claim.had_session || !matches!(principal, Principal::User(_));
    let (link, session_present) = if link_now {
        match shared
            .router
            .link(&router_id(&client_id), !persistent)
            .await
        {
            Ok((tx, rx, present)) => {
                shared.metrics.router_links.inc();
                (Some((tx, rx)), present)
            }
            Err(e) => {
                warn!(error = %e, "router link failed");
                refuse("router");
                conn.refuse(ConnectReturnCode::ServerUnavailable).await;
                return Ok(None);
            }
        }
    } else {
        (None, false)
    };
    if !persistent {
        // the router dropped any session kept under the id and keeps none
        claim.session_cleared();
    }
    let session_present = session_present && resume;

    let receive_max = props
        .as_ref()
        .and_then(|p| p.receive_maximum)
        .filter(|m| *m > 0)
        .unwrap_or(u16::MAX);
    let client_max = props
        .as_ref()
        .and_then(|p| p.max_packet_size)
        .map(|m| m as usize);
    let ack_props = (conn.version == Version::V5).then(|| ConnAckProperties {
        assigned_client_identifier: assigned,
        // the interval the server keeps, when it is not what was asked
        session_expiry_interval: asked.is_some_and(|a| a != expiry).then_some(expiry),
        max_packet_size: Some(match principal {
            Principal::User(_) => max_len as u32,
            _ => limits.service_max_packet_bytes.max(max_len) as u32,
        }),
        topic_alias_max: None,
        retain_available: Some(1),
        wildcard_subscription_available: Some(1),
        // shared subscriptions work for service accounts, never for users
        shared_subscription_available: Some(match principal {
            Principal::User(_) => 0,
            _ => 1,
        }),
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
    // a resumed session's subscription options, as it left them (rumqttd
    // sends no retained messages on a resume)
    let kept_subs = shared.kept_subs.lock().remove(&client_id);
    let mut subs = if resume {
        kept_subs.unwrap_or_default()
    } else {
        Vec::new()
    };
    for s in &mut subs {
        s.wants_retained = false;
    }
    let (direct_queue, direct_rx) = crate::direct::Queue::new();
    // a persistent session's reply topic and inbox, as it left them, with
    // what was published to them meanwhile
    let (direct_id, direct_topics, direct_kept) =
        shared.direct.attach(&client_id, &direct_queue, !resume);
    Ok(Some(Accepted {
        conn,
        link,
        claim,
        session: Session {
            shared: shared.clone(),
            principal,
            client_id,
            pending_subs: HashMap::new(),
            pending_presence: HashMap::new(),
            direct_id,
            direct_kept,
            direct_bytes: direct_queue.bytes.clone(),
            direct_topics,
            direct_ids: Vec::new(),
            direct_pkid: session::DIRECT_PKIDS,
            client_max,
            router_inflight: std::collections::VecDeque::new(),
            receive_max: usize::from(receive_max),
            sent_unacked: 0,
            held: std::collections::VecDeque::new(),
            overlap: crate::marks::SubOpts::may_overlap(&subs),
            subs,
            own_recent: std::collections::VecDeque::new(),
            copies: std::collections::VecDeque::new(),
            will_on_disconnect: false,
            disconnect_expiry: None,
            publishes: crate::rate::Throttle::new(shared.config.limits.publishes_per_sec),
            loads: crate::acl::LoadBudget::new(shared.config.limits.room_loads_per_sec),
            expires: login.expires_at.and_then(instant_of),
            leave_at: None,
            persistent,
            to_shared: Vec::new(),
            stalled: None,
            stalled_until: None,
        },
        keep_alive: connect.keep_alive,
        will,
        will_props,
        direct_rx,
        persistent,
        expiry,
    }))
}

/// How long, in seconds, a session is kept after its connection ends
/// (`u32::MAX`: until resumed). MQTT 5: the Session Expiry Interval asked
/// (absent: 0), at most `limits.max_session_expiry_secs` for users. 3.1.1:
/// a persistent session (`clean_session = false`) is kept
/// `limits.max_session_expiry_secs` for users, until resumed for services;
/// a clean one not at all.
fn session_expiry(
    shared: &Shared,
    who: &Principal,
    version: Version,
    clean: bool,
    asked: Option<u32>,
) -> u32 {
    let max = shared.config.limits.max_session_expiry_secs;
    let user = matches!(who, Principal::User(_));
    match version {
        Version::V5 => {
            let e = asked.unwrap_or(0);
            if user {
                e.min(max)
            } else {
                e
            }
        }
        Version::V4 if clean => 0,
        Version::V4 if user => max,
        Version::V4 => u32::MAX,
    }
}

/// Ends the session the router keeps under `client_id`: a clean link, then
/// its DISCONNECT. The caller holds the id (a claim or an expiry).
async fn drop_router_session(shared: &Shared, client_id: &str) -> bool {
    match shared.router.link(&router_id(client_id), true).await {
        Ok((mut tx, _rx, _)) => {
            let bye = Packet::Disconnect(
                Disconnect {
                    reason_code: DisconnectReasonCode::NormalDisconnection,
                },
                None,
            );
            tx.send(bye).await.is_ok()
        }
        Err(e) => {
            warn!(error = %e, "could not end a session in the router");
            false
        }
    }
}

/// The Session Expiry Interval of the session kept under `client_id` since
/// connection `generation` ended has run out: unless it was resumed since,
/// the router, the registry and the direct deliveries drop it.
async fn expire_session(shared: &Arc<Shared>, client_id: &str, generation: u64) {
    let Some(expiry) = shared.registry.expire(client_id, generation) else {
        return;
    };
    if !drop_router_session(shared, client_id).await {
        return;
    }
    shared.direct.forget(client_id);
    shared.kept_subs.lock().remove(client_id);
    expiry.done();
    shared.schedule_trim();
    let m = &shared.metrics;
    m.sessions_expired.inc();
    m.sessions_kept
        .set(shared.registry.persistent_sessions() as i64);
    debug!(client_id = %client_id.escape_debug(), "session expired");
}

/// The monotonic instant of a unix time in seconds; `None` when it is too
/// far ahead to represent (it never comes).
fn instant_of(unix_secs: u64) -> Option<Instant> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Instant::now().checked_add(Duration::from_secs(unix_secs).saturating_sub(now))
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
