//! The chat service proper, independent of MQTT: a request (topic, payload,
//! reply routing) in, messages to publish out.
//!
//! Ordering rule: within one room, sends are handled one after another
//! (the bridge groups them by room), so the store's "next seq, then persist"
//! runs in arrival order. Membership events come from requests, grouped by
//! user, so a room's events of one batch may come from several groups; each
//! room event's [`Out`] carries its `seq`, and the bridge publishes a batch's
//! room events sorted by it (`bridge::process`).

use crate::metrics::BridgeMetrics;
use crate::store::{MarkerKind, Member, MemberState, RoomInfo, RoomKind, Store, StoredEvent};
use crate::wire::{self, Code, Refusal};
use bytes::Bytes;
use schema::request::Envelope;
use schema::RawValue;
use std::sync::Arc;
use std::time::Instant;

mod admin;
mod block;
mod create;
mod direct;
pub mod hooks;
pub mod moderation;
mod page;
mod rate;
mod read;
mod report;
pub mod retention;
mod rooms;
mod send;
mod slow;
mod target;
#[cfg(test)]
mod tests;
mod view;

pub use direct::{direct_room_id, in_direct_pair, reserved_room_id, DIRECT_PREFIX};

/// Told about every membership change, before any reply is published, so the
/// broker's authorizer is up to date when the client acts on the reply.
pub trait AccessSink: Send + Sync {
    fn member(&self, room: &str, user: &str, joined: bool);
    fn open(&self, room: &str, open: bool);
}

/// A message to publish.
#[derive(Debug, Clone)]
pub struct Out {
    pub topic: String,
    pub payload: Bytes,
    /// MQTT 5 correlation data to echo, for replies to v5 requests.
    pub corr: Option<Bytes>,
    /// The event's `seq` when this is a room event (on `{prefix}/rooms/{room}/events`):
    /// the bridge publishes a room's events in `seq` order by it.
    pub seq: Option<u64>,
}

/// One publish the bridge received.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub payload: Bytes,
    /// MQTT 5 response topic, if any.
    pub response_topic: Option<String>,
    /// MQTT 5 correlation data, if any.
    pub corr: Option<Bytes>,
}

/// Where the reply to a request goes.
struct ReplyTo {
    topic: Option<String>,
    corr_prop: Option<Bytes>,
    /// The request's `corr` field, as the client wrote it.
    corr_field: Option<Box<RawValue>>,
}

/// Per-user, per-room send rate limits.
#[derive(Debug, Clone, Copy)]
pub struct SendLimits {
    pub per_sec: f64,
    pub burst: f64,
}

impl Default for SendLimits {
    fn default() -> Self {
        SendLimits {
            per_sec: 10.0,
            burst: 30.0,
        }
    }
}

/// The service. Cheap to share behind an `Arc`.
pub struct Chat {
    store: Arc<dyn Store>,
    prefix: String,
    sink: Arc<dyn AccessSink>,
    /// Size and page limits.
    sizes: wire::Limits,
    /// Sends per user per room.
    send_rate: rate::SendRate,
    counter: std::sync::atomic::AtomicU64,
    metrics: Arc<BridgeMetrics>,
    /// Direct rooms invite the other user instead of joining them.
    direct_acceptance: bool,
    /// Retention of events and idempotency keys.
    retention: retention::RetentionConfig,
    /// Users whose `admin.*` requests are answered (see `admin.rs`).
    admins: Vec<String>,
    /// Event hooks on (see `hooks.rs`), and who may `hooks.read`.
    hooks: bool,
    hook_users: Vec<String>,
    /// Whether a user is connected now (the broker's, in one process).
    online: Option<Online>,
    /// Pre-publish moderation (see `moderation.rs`).
    moderation: moderation::ModerationConfig,
    moderator: Option<Arc<dyn moderation::Moderator>>,
    /// Slow mode's last sends.
    last_sends: slow::LastSends,
}

/// Whether a user is connected now.
pub type Online = Arc<dyn Fn(&str) -> bool + Send + Sync>;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn can_read(m: Option<&Member>, room: &RoomInfo) -> bool {
    room.kind == RoomKind::Channel || m.is_some_and(|m| m.state == MemberState::Joined)
}

impl Chat {
    pub fn new(
        store: Arc<dyn Store>,
        prefix: &str,
        sink: Arc<dyn AccessSink>,
        limits: SendLimits,
    ) -> Self {
        Chat {
            store,
            prefix: prefix.trim_end_matches('/').to_owned(),
            sink,
            sizes: wire::Limits::default(),
            send_rate: rate::SendRate::new(limits),
            direct_acceptance: false,
            retention: Default::default(),
            admins: Vec::new(),
            hooks: false,
            hook_users: Vec::new(),
            online: None,
            moderation: Default::default(),
            moderator: None,
            last_sends: Default::default(),
            counter: Default::default(),
            metrics: BridgeMetrics::unregistered(),
        }
    }

    /// Uses `sizes` instead of the default size and page limits.
    pub fn with_limits(mut self, sizes: wire::Limits) -> Self {
        self.sizes = sizes;
        self
    }

    /// Direct rooms invite the other user, who accepts with `rooms.join`.
    pub fn with_direct_acceptance(mut self, on: bool) -> Self {
        self.direct_acceptance = on;
        self
    }

    /// Removes old events and forgets old idempotency keys (see `retention`).
    pub fn with_retention(mut self, r: retention::RetentionConfig) -> Self {
        self.retention = r;
        self
    }

    /// Answers `admin.*` requests of these users, who also read and
    /// moderate every room.
    pub fn with_admins(mut self, admins: Vec<String>) -> Self {
        self.admins = admins;
        self
    }

    /// Writes a hook record for every stored event and publishes it on
    /// `{prefix}/hooks/events`; `users` may `hooks.read` (see `hooks.rs`).
    pub fn with_hooks(mut self, on: bool, users: Vec<String>) -> Self {
        self.hooks = on;
        self.hook_users = users;
        self
    }

    /// Asks `moderator` before storing messages and edits (see `moderation.rs`).
    pub fn with_moderation(
        mut self,
        cfg: moderation::ModerationConfig,
        moderator: Arc<dyn moderation::Moderator>,
    ) -> Self {
        self.moderation = cfg;
        self.moderator = Some(moderator);
        self
    }

    /// Tells who is connected now (a message's hook lists the offline members).
    pub fn with_online(mut self, f: Online) -> Self {
        self.online = Some(f);
        self
    }

    /// A request of `user` (method and JSON params), as if it came on
    /// `{prefix}/rpc/{user}/{method}`: its result, and the events and
    /// notices it made, for the caller to publish (the admin HTTP API).
    pub async fn request(
        &self,
        user: &str,
        method: &str,
        params: &[u8],
    ) -> (Result<Box<RawValue>, wire::Refusal>, Vec<Out>) {
        let mut out = Vec::new();
        let r = match self.parse(params) {
            Ok(_) => self.rpc(user, method, params, &mut out).await,
            Err(e) => Err(e),
        };
        (r, out)
    }

    /// Counts into `metrics` instead of unregistered meters.
    pub fn with_metrics(mut self, metrics: Arc<BridgeMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The meters this service counts into.
    pub fn metrics(&self) -> &Arc<BridgeMetrics> {
        &self.metrics
    }

    /// The grouping key that serializes handling: the room for sends, the user for requests.
    pub fn order_key(&self, topic: &str) -> String {
        let rest = topic.strip_prefix(&self.prefix).unwrap_or(topic);
        let levels: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        match levels.as_slice() {
            ["rooms", room, "send", _] => format!("r:{room}"),
            ["rpc", user, ..] => format!("u:{user}"),
            _ => String::new(),
        }
    }

    /// Handles one publish the bridge received.
    pub async fn handle(
        &self,
        topic: &str,
        payload: &[u8],
        response_topic: Option<String>,
        corr: Option<Bytes>,
    ) -> Vec<Out> {
        let rest = topic.strip_prefix(&self.prefix).unwrap_or("");
        let levels: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        match levels.as_slice() {
            ["rooms", room, "send", user] if crate::valid_id(room) && crate::valid_id(user) => {
                let inc = Incoming {
                    topic: topic.to_owned(),
                    payload: Bytes::copy_from_slice(payload),
                    response_topic,
                    corr,
                };
                self.sends(vec![(room.to_string(), user.to_string(), inc)])
                    .await
                    .into_iter()
                    .flatten()
                    .collect()
            }
            ["rpc", user, method] if crate::valid_id(user) => {
                self.on_rpc(user, method, payload, response_topic, corr)
                    .await
            }
            _ => {
                tracing::debug!(%topic, "ignored publish on unexpected topic");
                Vec::new()
            }
        }
    }

    /// Handles a group that shares an [`Chat::order_key`], in order; sends to
    /// one room are appended together. One `Vec<Out>` per item, in order.
    pub async fn handle_group(&self, items: Vec<Incoming>) -> Vec<Vec<Out>> {
        let sends: Option<Vec<(String, String)>> = items
            .iter()
            .map(|i| {
                let rest = i.topic.strip_prefix(&self.prefix)?.trim_start_matches('/');
                match rest.split('/').collect::<Vec<_>>().as_slice() {
                    ["rooms", room, "send", user]
                        if crate::valid_id(room) && crate::valid_id(user) =>
                    {
                        Some((room.to_string(), user.to_string()))
                    }
                    _ => None,
                }
            })
            .collect();
        match sends {
            Some(ids) => {
                let batch = ids
                    .into_iter()
                    .zip(items)
                    .map(|((r, u), i)| (r, u, i))
                    .collect();
                self.sends(batch).await
            }
            None => {
                let mut out = Vec::with_capacity(items.len());
                for i in items {
                    out.push(
                        self.handle(&i.topic, &i.payload, i.response_topic, i.corr)
                            .await,
                    );
                }
                out
            }
        }
    }

    fn reply_to(
        &self,
        user: &str,
        env: Option<&Envelope>,
        response_topic: Option<String>,
        corr: Option<Bytes>,
    ) -> ReplyTo {
        let field_topic = env.and_then(|e| e.reply.clone());
        let topic = response_topic
            .or(field_topic)
            .filter(|t| self.own_reply_topic(user, t));
        ReplyTo {
            topic,
            corr_prop: corr,
            corr_field: env.and_then(|e| e.corr).map(ToOwned::to_owned),
        }
    }

    /// A reply topic must be one of the user's own reply topics.
    fn own_reply_topic(&self, user: &str, t: &str) -> bool {
        let want = format!("{}/users/{user}/replies/", self.prefix);
        t.strip_prefix(&want).is_some_and(broker_client_id)
    }

    fn inbox(&self, user: &str) -> String {
        format!("{}/users/{user}/inbox", self.prefix)
    }

    /// A notice for `user`'s inbox.
    fn inbox_out(&self, user: &str, notice: &schema::Inbox) -> Out {
        Out {
            topic: self.inbox(user),
            // strings and a code: serializing cannot fail
            payload: serde_json::to_vec(notice).unwrap_or_default().into(),
            corr: None,
            seq: None,
        }
    }

    /// A membership or channel change for `{prefix}/hooks/access`, which a
    /// broker run apart reads with the same type.
    fn access_out(&self, hook: &schema::AccessHook) -> Out {
        Out {
            topic: format!("{}/hooks/access", self.prefix),
            payload: hook.to_vec().into(),
            corr: None,
            seq: None,
        }
    }

    fn events_topic(&self, room: &str) -> String {
        format!("{}/rooms/{room}/events", self.prefix)
    }

    fn reply(&self, to: &ReplyTo, body: Vec<u8>) -> Option<Out> {
        to.topic.as_ref().map(|t| Out {
            topic: t.clone(),
            payload: body.into(),
            corr: to.corr_prop.clone(),
            seq: None,
        })
    }

    /// A room event to publish on the room's events topic.
    fn event_out(&self, room: &str, ev: &StoredEvent) -> Out {
        Out {
            topic: self.events_topic(room),
            payload: ev.json.clone(),
            corr: None,
            seq: Some(ev.seq),
        }
    }

    /// Checks a payload's size and reads its envelope (it must be a JSON
    /// object); its parameters are read by the method ([`wire::params`]).
    fn parse<'a>(&self, payload: &'a [u8]) -> Result<Envelope<'a>, Refusal> {
        if payload.len() > self.sizes.payload_max {
            return Err(Refusal::new(
                Code::TooLarge,
                format!("payload exceeds {} bytes", self.sizes.payload_max),
            ));
        }
        let not_json = || Refusal::bad("payload is not valid JSON");
        // the envelope skips the fields it does not read; UTF-8 is checked
        // here for all of them
        let text = std::str::from_utf8(payload).map_err(|_| not_json())?;
        serde_json::from_str::<Envelope>(text).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => Refusal::bad("payload must be a JSON object"),
            _ => not_json(),
        })
    }

    async fn on_rpc(
        &self,
        user: &str,
        method: &str,
        payload: &[u8],
        rt: Option<String>,
        corr: Option<Bytes>,
    ) -> Vec<Out> {
        let started = Instant::now();
        let parsed = self.parse(payload);
        let to = self.reply_to(user, parsed.as_ref().ok(), rt, corr);
        let mut extra = Vec::new();
        let result = match parsed {
            Ok(_) => self.rpc(user, method, payload, &mut extra).await,
            Err(e) => Err(e),
        };
        let body = match &result {
            Ok(v) => wire::ok_reply(to.corr_field.as_deref(), v),
            Err(r) => {
                self.count_refusal(r);
                wire::err_reply(to.corr_field.as_deref(), r)
            }
        };
        self.metrics
            .request_seconds
            .with_label_values(&[BridgeMetrics::method_label(method)])
            .observe(started.elapsed().as_secs_f64());
        if to.topic.is_none() {
            tracing::debug!(user, method, "request without a valid reply topic");
        }
        // events first, so a client that sees the reply can already see the event
        extra.extend(self.reply(&to, body));
        extra
    }

    fn count_refusal(&self, r: &Refusal) {
        self.metrics
            .errors
            .with_label_values(&[r.code.as_str()])
            .inc();
    }

    async fn rpc(
        &self,
        user: &str,
        method: &str,
        payload: &[u8],
        out: &mut Vec<Out>,
    ) -> Result<Box<RawValue>, Refusal> {
        use wire::params;
        match method {
            "history" => self.history(user, params(payload)?).await,
            "thread" => self.thread(user, params(payload)?).await,
            "sync" => self.sync(user, params(payload)?).await,
            "rooms.create" => self.create(user, params(payload)?, out).await,
            "rooms.join" => self.join(user, params(payload)?, out).await,
            "rooms.leave" => self.leave(user, params(payload)?, out).await,
            "rooms.invite" => self.invite(user, params(payload)?, out).await,
            "rooms.kick" | "rooms.ban" | "rooms.mute" | "rooms.role" => {
                self.moderate(user, &method[6..], params(payload)?, out)
                    .await
            }
            "rooms.list" => self.list(user, params(payload)?).await,
            "users.block" => self.block(user, params(payload)?, true).await,
            "users.unblock" => self.block(user, params(payload)?, false).await,
            "users.blocks" => self.blocks(user).await,
            "hooks.read" => self.hooks_read(user, params(payload)?).await,
            "rooms.report" => self.report(user, params(payload)?, out).await,
            "rooms.slow" => self.slow(user, params(payload)?, out).await,
            m if m.starts_with("admin.") => self.admin(user, m, payload, out).await,
            "rooms.members" => self.members(user, params(payload)?).await,
            "read" => {
                self.marker(user, params(payload)?, MarkerKind::Read, out)
                    .await
            }
            "delivered" => {
                self.marker(user, params(payload)?, MarkerKind::Delivered, out)
                    .await
            }
            _ => Err(Refusal::bad(format!(
                "unknown method {:?}",
                method.chars().take(64).collect::<String>()
            ))),
        }
    }
}

/// Stored events as they are, for a reply: their bytes are JSON already,
/// so they are only checked to be one value (a corrupt one is left out and
/// logged), never parsed into a tree and written again.
fn raw_events(events: &[StoredEvent]) -> Vec<&RawValue> {
    events.iter().filter_map(raw_event).collect()
}

/// One stored event as it is (see [`raw_events`]).
fn raw_event(e: &StoredEvent) -> Option<&RawValue> {
    match serde_json::from_slice::<&RawValue>(&e.json) {
        Ok(raw) => Some(raw),
        Err(err) => {
            tracing::warn!(seq = e.seq, error = %err, "a stored event is not JSON; left out");
            None
        }
    }
}

/// Events a room's unread count reads past the read marker; beyond them
/// every event counts (an upper bound, for a member who never read a busy room).
const UNREAD_SCAN: usize = 1000;

/// What an unread count reads of an event.
#[derive(serde::Deserialize)]
struct UnreadHead<'a> {
    #[serde(borrow)]
    from: std::borrow::Cow<'a, str>,
    #[serde(rename = "type", default, borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    deleted: bool,
}

impl Chat {
    /// `user`'s unread count in `room` after `after` (their read marker):
    /// others' messages (not deleted) after it and after `user`'s own last
    /// event there (one's own send, or join, marks the room read up to it).
    /// Membership events, edits, reactions and deletes do not count. It
    /// reads the newest [`UNREAD_SCAN`] events at most, back from the head,
    /// so a large channel's thousands of joins cost one page; a marker
    /// further back than that counts the messages among those events only
    /// (a cap, shown by apps as "999+").
    async fn unread(&self, room: &str, user: &str, after: u64, head: u64) -> Result<u64, Refusal> {
        if head <= after {
            return Ok(0);
        }
        let want = usize::try_from(head - after)
            .unwrap_or(UNREAD_SCAN)
            .min(UNREAD_SCAN);
        let page = self
            .store
            .read(room, crate::store::Range::Latest, want)
            .await?;
        Ok(count_unread(&page.events, user, after))
    }
}

/// The unread count over `events` (ascending, the newest of the room), back
/// from the newest to the first of `user`'s own or to the marker `after`:
/// see [`Chat::unread`].
fn count_unread(events: &[StoredEvent], user: &str, after: u64) -> u64 {
    let mut n = 0u64;
    for e in events.iter().rev() {
        if e.seq <= after {
            break;
        }
        let Ok(h) = serde_json::from_slice::<UnreadHead>(&e.json) else {
            continue;
        };
        if h.from == user {
            break;
        }
        if h.kind.as_deref().unwrap_or("message") == "message" && !h.deleted {
            n += 1;
        }
    }
    n
}

fn broker_client_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}
