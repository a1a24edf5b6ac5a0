//! The chat service proper, independent of MQTT: a request (topic, payload,
//! reply routing) in, messages to publish out.
//!
//! Ordering rule: within one room, messages are handled one after another
//! (the bridge groups them by room), so the store's "next seq, then persist"
//! runs in arrival order and events are published in `seq` order.

use crate::store::{
    MarkerKind, Member, MemberChange, MemberState, NewEvent, Range, Role, RoomInfo, RoomKind,
    Store, StoredEvent,
};
use crate::wire::{self, opt_str, opt_u64, room_field, Code, Refusal};
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

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
}

/// Where the reply to a request goes.
struct ReplyTo {
    topic: Option<String>,
    corr_prop: Option<Bytes>,
    corr_field: Option<Value>,
}

/// Per-user, per-room send rate limits.
#[derive(Debug, Clone)]
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
    limits: SendLimits,
    /// (user, room) -> token bucket. A std mutex: never held across an await.
    buckets: Mutex<HashMap<(String, String), (f64, Instant)>>,
    counter: std::sync::atomic::AtomicU64,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The id of the direct room between two users: the same whoever asks.
pub fn direct_room_id(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    let plain = format!("dm.{x}.{y}");
    if plain.len() <= 64 {
        return plain;
    }
    // FNV-1a, two seeds: stable across versions and platforms
    let fnv = |seed: u64| {
        let mut h = seed;
        for b in x.bytes().chain([0u8]).chain(y.bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        h
    };
    format!(
        "dm-{:016x}{:016x}",
        fnv(0xcbf29ce484222325),
        fnv(0x84222325cbf29ce4)
    )
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
            limits,
            buckets: Mutex::new(HashMap::new()),
            counter: Default::default(),
        }
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
                self.on_send(room, user, payload, response_topic, corr)
                    .await
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

    fn reply_to(
        &self,
        user: &str,
        obj: Option<&Map<String, Value>>,
        response_topic: Option<String>,
        corr: Option<Bytes>,
    ) -> ReplyTo {
        let field_topic = obj
            .and_then(|o| o.get("reply"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let topic = response_topic
            .or(field_topic)
            .filter(|t| self.own_reply_topic(user, t));
        ReplyTo {
            topic,
            corr_prop: corr,
            corr_field: obj.and_then(|o| o.get("corr")).cloned(),
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

    fn events_topic(&self, room: &str) -> String {
        format!("{}/rooms/{room}/events", self.prefix)
    }

    fn reply(&self, to: &ReplyTo, body: Vec<u8>) -> Option<Out> {
        to.topic.as_ref().map(|t| Out {
            topic: t.clone(),
            payload: body.into(),
            corr: to.corr_prop.clone(),
        })
    }

    fn parse(payload: &[u8]) -> Result<Map<String, Value>, Refusal> {
        if payload.len() > wire::PAYLOAD_MAX {
            return Err(Refusal::new(
                Code::TooLarge,
                format!("payload exceeds {} bytes", wire::PAYLOAD_MAX),
            ));
        }
        match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(o)) => Ok(o),
            Ok(_) => Err(Refusal::bad("payload must be a JSON object")),
            Err(_) => Err(Refusal::bad("payload is not valid JSON")),
        }
    }

    async fn on_send(
        &self,
        room: &str,
        user: &str,
        payload: &[u8],
        rt: Option<String>,
        corr: Option<Bytes>,
    ) -> Vec<Out> {
        let parsed = Self::parse(payload);
        let obj = parsed.as_ref().ok();
        let to = self.reply_to(user, obj, rt, corr);
        let msg_id = obj
            .and_then(|o| o.get("msg_id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let result = match parsed {
            Ok(o) => self.send(room, user, o).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(ev) => {
                let mut out = vec![Out {
                    topic: self.events_topic(room),
                    payload: ev.json.clone(),
                    corr: None,
                }];
                out.extend(self.reply(
                    &to,
                    wire::ok_reply(to.corr_field.as_ref(), json!({"seq": ev.seq})),
                ));
                out
            }
            Err(r) => {
                tracing::debug!(room, user, code = r.code.as_str(), "send refused");
                if to.topic.is_some() {
                    self.reply(&to, wire::err_reply(to.corr_field.as_ref(), &r))
                        .into_iter()
                        .collect()
                } else {
                    let body = json!({"type": "error", "room": room, "msg_id": msg_id, "code": r.code.as_str(), "message": r.message});
                    vec![Out {
                        topic: self.inbox(user),
                        payload: body.to_string().into(),
                        corr: None,
                    }]
                }
            }
        }
    }

    async fn send(
        &self,
        room: &str,
        user: &str,
        o: Map<String, Value>,
    ) -> Result<StoredEvent, Refusal> {
        let msg_id = match opt_str(&o, "msg_id")? {
            Some(m) if wire::valid_msg_id(m) => m.to_owned(),
            Some(_) => return Err(Refusal::bad("msg_id must be 1-64 printable ASCII chars")),
            None => return Err(Refusal::bad("msg_id is required")),
        };
        let kind = opt_str(&o, "type")?.unwrap_or("message");
        let mut body = Map::new();
        body.insert("type".into(), Value::String(kind.to_owned()));
        let text = opt_str(&o, "body")?;
        if let Some(t) = text {
            if t.len() > wire::BODY_MAX {
                return Err(Refusal::new(
                    Code::TooLarge,
                    format!("body exceeds {} bytes", wire::BODY_MAX),
                ));
            }
        }
        let target = opt_u64(&o, "target")?;
        match kind {
            "message" => {
                let t = text.ok_or_else(|| Refusal::bad("body is required"))?;
                body.insert("body".into(), t.into());
                if let Some(r) = opt_u64(&o, "reply_to")? {
                    body.insert("reply_to".into(), r.into());
                }
            }
            "edit" => {
                let t = text.ok_or_else(|| Refusal::bad("body is required"))?;
                body.insert(
                    "target".into(),
                    target
                        .ok_or_else(|| Refusal::bad("target is required"))?
                        .into(),
                );
                body.insert("body".into(), t.into());
            }
            "delete" => {
                body.insert(
                    "target".into(),
                    target
                        .ok_or_else(|| Refusal::bad("target is required"))?
                        .into(),
                );
            }
            "reaction" => {
                body.insert(
                    "target".into(),
                    target
                        .ok_or_else(|| Refusal::bad("target is required"))?
                        .into(),
                );
                let emoji = opt_str(&o, "emoji")?
                    .filter(|e| !e.is_empty() && e.len() <= 64)
                    .ok_or_else(|| Refusal::bad("emoji is required (1-64 bytes)"))?;
                body.insert("emoji".into(), emoji.into());
                if o.get("remove").and_then(Value::as_bool) == Some(true) {
                    body.insert("remove".into(), true.into());
                }
            }
            _ => {
                return Err(Refusal::bad(
                    "type must be message, edit, delete or reaction",
                ))
            }
        }
        match o.get("meta") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                if Value::Object(m.clone()).to_string().len() > wire::META_MAX {
                    return Err(Refusal::new(
                        Code::TooLarge,
                        format!("meta exceeds {} bytes", wire::META_MAX),
                    ));
                }
                body.insert("meta".into(), Value::Object(m.clone()));
            }
            Some(_) => return Err(Refusal::bad("meta must be an object")),
        }
        let info = self.store.room(room).await?.ok_or_else(|| {
            Refusal::new(Code::NotMember, format!("you are not a member of {room}"))
        })?;
        let m = self.store.member(room, user).await?;
        match m.as_ref().map(|m| (m.state, m.muted)) {
            Some((MemberState::Joined, false)) => {}
            Some((MemberState::Joined, true)) => {
                return Err(Refusal::new(
                    Code::Muted,
                    format!("you are muted in {room}"),
                ))
            }
            Some((MemberState::Banned, _)) => {
                return Err(Refusal::new(
                    Code::Banned,
                    format!("you are banned from {room}"),
                ))
            }
            _ => {
                return Err(Refusal::new(
                    Code::NotMember,
                    format!("you are not a member of {}", info.id),
                ))
            }
        }
        if !self.take_token(user, room) {
            return Err(Refusal::new(
                Code::RateLimited,
                "too many messages, slow down",
            ));
        }
        let a = self
            .store
            .append(NewEvent {
                room: room.into(),
                from: user.into(),
                msg_id,
                ts: now_ms(),
                body,
                member: None,
            })
            .await?;
        Ok(a.event)
    }

    fn take_token(&self, user: &str, room: &str) -> bool {
        let now = Instant::now();
        let mut g = self.buckets.lock();
        if g.len() > 200_000 {
            g.retain(|_, (_, t)| now.duration_since(*t).as_secs() < 60);
        }
        let (tokens, last) = g
            .entry((user.to_owned(), room.to_owned()))
            .or_insert((self.limits.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.limits.per_sec)
            .min(self.limits.burst);
        *last = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }

    async fn on_rpc(
        &self,
        user: &str,
        method: &str,
        payload: &[u8],
        rt: Option<String>,
        corr: Option<Bytes>,
    ) -> Vec<Out> {
        let parsed = Self::parse(payload);
        let to = self.reply_to(user, parsed.as_ref().ok(), rt, corr);
        let mut extra = Vec::new();
        let result = match parsed {
            Ok(o) => self.rpc(user, method, &o, &mut extra).await,
            Err(e) => Err(e),
        };
        let body = match &result {
            Ok(v) => wire::ok_reply(to.corr_field.as_ref(), v.clone()),
            Err(r) => wire::err_reply(to.corr_field.as_ref(), r),
        };
        if to.topic.is_none() {
            tracing::debug!(user, method, "request without a valid reply topic");
        }
        // events first, so a client that sees the reply can already see the event
        extra.extend(self.reply(&to, body));
        extra
    }

    async fn rpc(
        &self,
        user: &str,
        method: &str,
        o: &Map<String, Value>,
        out: &mut Vec<Out>,
    ) -> Result<Value, Refusal> {
        match method {
            "history" => self.history(user, o).await,
            "sync" => self.sync(user, o).await,
            "rooms.create" => self.create(user, o, out).await,
            "rooms.join" => self.join(user, o, out).await,
            "rooms.leave" => self.leave(user, o, out).await,
            "rooms.invite" => self.invite(user, o, out).await,
            "rooms.list" => self.list(user).await,
            "rooms.members" => self.members(user, o).await,
            "read" => self.marker(user, o, MarkerKind::Read, out).await,
            "delivered" => self.marker(user, o, MarkerKind::Delivered, out).await,
            _ => Err(Refusal::bad(format!(
                "unknown method {:?}",
                method.chars().take(64).collect::<String>()
            ))),
        }
    }

    async fn readable_room(
        &self,
        user: &str,
        room: &str,
    ) -> Result<(RoomInfo, Option<Member>), Refusal> {
        let not_member =
            || Refusal::new(Code::NotMember, format!("you are not a member of {room}"));
        let info = self.store.room(room).await?.ok_or_else(not_member)?;
        let m = self.store.member(room, user).await?;
        if m.as_ref().is_some_and(|m| m.state == MemberState::Banned) {
            return Err(Refusal::new(
                Code::Banned,
                format!("you are banned from {room}"),
            ));
        }
        if !can_read(m.as_ref(), &info) {
            return Err(not_member());
        }
        Ok((info, m))
    }

    async fn history(&self, user: &str, o: &Map<String, Value>) -> Result<Value, Refusal> {
        let room = room_field(o)?;
        let limit = match opt_u64(o, "limit")? {
            None => wire::LIMIT_DEFAULT,
            Some(l) if (1..=wire::LIMIT_MAX as u64).contains(&l) => l as usize,
            Some(_) => {
                return Err(Refusal::bad(format!(
                    "limit must be 1..{}",
                    wire::LIMIT_MAX
                )))
            }
        };
        let range = match (opt_u64(o, "before")?, opt_u64(o, "after")?) {
            (Some(_), Some(_)) => return Err(Refusal::bad("give before or after, not both")),
            (Some(b), None) => Range::Before(b),
            (None, Some(a)) => Range::After(a),
            (None, None) => Range::Latest,
        };
        self.readable_room(user, &room).await?;
        let page = self.store.read(&room, range, limit).await?;
        Ok(
            json!({"room": room, "events": events_json(&page.events), "head": page.head, "has_more": page.has_more}),
        )
    }

    async fn sync(&self, user: &str, o: &Map<String, Value>) -> Result<Value, Refusal> {
        let cursors = match o.get("rooms") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                return Err(Refusal::bad(
                    "rooms must be an object {room: last_seen_seq}",
                ))
            }
        };
        if cursors.len() > 1000 {
            return Err(Refusal::bad("at most 1000 rooms per sync"));
        }
        let limit = match opt_u64(o, "limit_per_room")? {
            None => wire::LIMIT_DEFAULT,
            Some(l) if (1..=wire::LIMIT_MAX as u64).contains(&l) => l as usize,
            Some(_) => {
                return Err(Refusal::bad(format!(
                    "limit_per_room must be 1..{}",
                    wire::LIMIT_MAX
                )))
            }
        };
        let mut rooms = Map::new();
        for (room, cursor) in &cursors {
            let cursor = cursor
                .as_u64()
                .ok_or_else(|| Refusal::bad("each cursor must be an unsigned integer"))?;
            if !crate::valid_id(room) {
                return Err(Refusal::bad("invalid room id in rooms"));
            }
            let entry = match self.readable_room(user, room).await {
                Ok((_, m)) => {
                    let page = self.store.read(room, Range::After(cursor), limit).await?;
                    let read = match m {
                        Some(_) => self.store.markers(room, user).await?.read,
                        None => 0,
                    };
                    json!({"events": events_json(&page.events), "head": page.head, "has_more": page.has_more, "unread": page.head.saturating_sub(read.max(cursor))})
                }
                Err(r) if r.code == Code::Unavailable => return Err(r),
                Err(r) => {
                    json!({"left": true, "error": {"code": r.code.as_str(), "message": r.message}})
                }
            };
            rooms.insert(room.clone(), entry);
        }
        let mut joined = Vec::new();
        for m in self.store.user_rooms(user).await? {
            if !cursors.contains_key(&m.room)
                && matches!(m.state, MemberState::Joined | MemberState::Invited)
            {
                let head = self.store.head(&m.room).await?;
                joined.push(json!({"room": m.room, "state": m.state, "head": head}));
            }
        }
        Ok(json!({"rooms": rooms, "joined": joined}))
    }

    /// Appends a membership event and tells the sink before anything is published.
    async fn member_event(
        &self,
        room: &str,
        actor: &str,
        target: &str,
        action: &str,
        change: MemberChange,
        out: &mut Vec<Out>,
    ) -> Result<u64, Refusal> {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut body = Map::new();
        body.insert("type".into(), "member".into());
        body.insert("action".into(), action.into());
        body.insert("user".into(), target.into());
        body.insert(
            "role".into(),
            serde_json::to_value(change.role).unwrap_or(Value::Null),
        );
        let joined = change.state == MemberState::Joined;
        let ev = NewEvent {
            room: room.into(),
            from: actor.into(),
            msg_id: format!("${action}:{target}:{}:{n}", now_ms()),
            ts: now_ms(),
            body,
            member: Some(change),
        };
        let a = self.store.append(ev).await?;
        self.sink.member(room, target, joined);
        out.push(Out {
            topic: self.events_topic(room),
            payload: a.event.json.clone(),
            corr: None,
        });
        out.push(Out {
            topic: format!("{}/hooks/access", self.prefix),
            payload: json!({"room": room, "user": target, "joined": joined})
                .to_string()
                .into(),
            corr: None,
        });
        Ok(a.event.seq)
    }

    async fn create(
        &self,
        user: &str,
        o: &Map<String, Value>,
        out: &mut Vec<Out>,
    ) -> Result<Value, Refusal> {
        let kind = match opt_str(o, "kind")?.unwrap_or("group") {
            "group" => RoomKind::Group,
            "direct" => RoomKind::Direct,
            "channel" => RoomKind::Channel,
            _ => return Err(Refusal::bad("kind must be direct, group or channel")),
        };
        let mut members: Vec<String> = match o.get("members") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .filter(|s| crate::valid_id(s))
                        .map(str::to_owned)
                        .ok_or_else(|| Refusal::bad("members must be user ids"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(Refusal::bad("members must be an array of user ids")),
        };
        members.retain(|m| m != user);
        members.sort();
        members.dedup();
        if members.len() > 1000 {
            return Err(Refusal::bad("at most 1000 members at creation"));
        }
        let title = opt_str(o, "title")?.map(|t| t.chars().take(256).collect::<String>());
        let id = match kind {
            RoomKind::Direct => {
                let [other] = members.as_slice() else {
                    return Err(Refusal::bad("a direct room needs exactly one other member"));
                };
                direct_room_id(user, other)
            }
            _ => match opt_str(o, "room")? {
                Some(r) if crate::valid_id(r) => r.to_owned(),
                Some(_) => {
                    return Err(Refusal::bad("room must be 1-64 chars of A-Z a-z 0-9 _ . -"))
                }
                None => format!(
                    "g-{:08x}{:08x}",
                    now_ms() as u32,
                    self.counter
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        as u32
                        ^ std::process::id()
                ),
            },
        };
        let info = RoomInfo {
            id: id.clone(),
            kind,
            title,
            created_by: user.into(),
            created_ts: now_ms(),
        };
        if !self.store.create_room(info.clone()).await? {
            let existing = self
                .store
                .room(&id)
                .await?
                .ok_or_else(|| Refusal::new(Code::Unavailable, "retry"))?;
            // a direct room is the same room whoever creates it
            if existing.kind == RoomKind::Direct && kind == RoomKind::Direct {
                return Ok(json!({"room": existing, "created": false}));
            }
            return Err(Refusal::new(
                Code::Conflict,
                format!("room {id} already exists"),
            ));
        }
        if kind == RoomKind::Channel {
            self.sink.open(&id, true);
            out.push(Out {
                topic: format!("{}/hooks/access", self.prefix),
                payload: json!({"room": id, "open": true}).to_string().into(),
                corr: None,
            });
        }
        let owner = MemberChange {
            user: user.into(),
            role: Role::Owner,
            state: MemberState::Joined,
            muted: false,
        };
        self.member_event(&id, user, user, "join", owner, out)
            .await?;
        for m in &members {
            let (state, action, role) = match kind {
                RoomKind::Direct => (MemberState::Joined, "join", Role::Owner),
                _ => (MemberState::Invited, "invite", Role::Member),
            };
            self.member_event(
                &id,
                user,
                m,
                action,
                MemberChange {
                    user: m.clone(),
                    role,
                    state,
                    muted: false,
                },
                out,
            )
            .await?;
            if state == MemberState::Invited {
                out.push(Out {
                    topic: self.inbox(m),
                    payload: json!({"type": "invited", "room": id, "by": user})
                        .to_string()
                        .into(),
                    corr: None,
                });
            }
        }
        Ok(json!({"room": info, "created": true}))
    }

    async fn join(
        &self,
        user: &str,
        o: &Map<String, Value>,
        out: &mut Vec<Out>,
    ) -> Result<Value, Refusal> {
        let room = room_field(o)?;
        let info = self
            .store
            .room(&room)
            .await?
            .ok_or_else(|| Refusal::new(Code::NotFound, format!("no room {room}")))?;
        let m = self.store.member(&room, user).await?;
        let role = m.as_ref().map(|m| m.role).unwrap_or(Role::Member);
        match (m.as_ref().map(|m| m.state), info.kind) {
            (Some(MemberState::Joined), _) => {
                return Ok(json!({"seq": m.map(|m| m.since).unwrap_or(0), "already": true}))
            }
            (Some(MemberState::Banned), _) => {
                return Err(Refusal::new(
                    Code::Banned,
                    format!("you are banned from {room}"),
                ))
            }
            (Some(MemberState::Invited), _) | (_, RoomKind::Channel) => {}
            _ => {
                return Err(Refusal::new(
                    Code::Forbidden,
                    format!("{room} needs an invitation"),
                ))
            }
        }
        let seq = self
            .member_event(
                &room,
                user,
                user,
                "join",
                MemberChange {
                    user: user.into(),
                    role,
                    state: MemberState::Joined,
                    muted: false,
                },
                out,
            )
            .await?;
        Ok(json!({"seq": seq}))
    }

    async fn leave(
        &self,
        user: &str,
        o: &Map<String, Value>,
        out: &mut Vec<Out>,
    ) -> Result<Value, Refusal> {
        let room = room_field(o)?;
        let m = self.store.member(&room, user).await?;
        match m.as_ref().map(|m| m.state) {
            Some(MemberState::Joined | MemberState::Invited) => {}
            _ => {
                return Err(Refusal::new(
                    Code::NotMember,
                    format!("you are not a member of {room}"),
                ))
            }
        }
        let role = m.map(|m| m.role).unwrap_or(Role::Member);
        let seq = self
            .member_event(
                &room,
                user,
                user,
                "leave",
                MemberChange {
                    user: user.into(),
                    role,
                    state: MemberState::Left,
                    muted: false,
                },
                out,
            )
            .await?;
        Ok(json!({"seq": seq}))
    }

    async fn invite(
        &self,
        user: &str,
        o: &Map<String, Value>,
        out: &mut Vec<Out>,
    ) -> Result<Value, Refusal> {
        let room = room_field(o)?;
        let target = match opt_str(o, "user")? {
            Some(u) if crate::valid_id(u) => u.to_owned(),
            _ => return Err(Refusal::bad("user is required")),
        };
        let (info, m) = self.readable_room(user, &room).await?;
        if m.as_ref().map(|m| m.state) != Some(MemberState::Joined) {
            return Err(Refusal::new(
                Code::NotMember,
                format!("you are not a member of {room}"),
            ));
        }
        if info.kind == RoomKind::Direct {
            return Err(Refusal::new(
                Code::Forbidden,
                "a direct room has exactly two members",
            ));
        }
        match self
            .store
            .member(&room, &target)
            .await?
            .map(|m| (m.state, m.since))
        {
            Some((MemberState::Banned, _)) => {
                return Err(Refusal::new(
                    Code::Banned,
                    format!("{target} is banned from {room}"),
                ))
            }
            Some((MemberState::Joined | MemberState::Invited, since)) => {
                return Ok(json!({"seq": since, "already": true}))
            }
            _ => {}
        }
        let seq = self
            .member_event(
                &room,
                user,
                &target,
                "invite",
                MemberChange {
                    user: target.clone(),
                    role: Role::Member,
                    state: MemberState::Invited,
                    muted: false,
                },
                out,
            )
            .await?;
        out.push(Out {
            topic: self.inbox(&target),
            payload: json!({"type": "invited", "room": room, "by": user})
                .to_string()
                .into(),
            corr: None,
        });
        Ok(json!({"seq": seq}))
    }

    async fn list(&self, user: &str) -> Result<Value, Refusal> {
        let mut rooms = Vec::new();
        for m in self.store.user_rooms(user).await? {
            if !matches!(m.state, MemberState::Joined | MemberState::Invited) {
                continue;
            }
            let info = self.store.room(&m.room).await?;
            let page = self.store.read(&m.room, Range::Latest, 1).await?;
            let marks = self.store.markers(&m.room, user).await?;
            rooms.push(json!({
                "room": m.room, "kind": info.as_ref().map(|i| i.kind), "title": info.and_then(|i| i.title),
                "state": m.state, "role": m.role, "head": page.head, "read": marks.read,
                "unread": page.head.saturating_sub(marks.read),
                "last": page.events.last().and_then(|e| serde_json::from_slice::<Value>(&e.json).ok()),
            }));
        }
        Ok(json!({"rooms": rooms}))
    }

    async fn members(&self, user: &str, o: &Map<String, Value>) -> Result<Value, Refusal> {
        let room = room_field(o)?;
        self.readable_room(user, &room).await?;
        let limit = opt_u64(o, "limit")?.unwrap_or(100).clamp(1, 1000) as usize;
        let after = opt_str(o, "after")?;
        let rows = self.store.members(&room, after, limit + 1).await?;
        let has_more = rows.len() > limit;
        let mut members = Vec::new();
        for m in rows.into_iter().take(limit) {
            let marks = self.store.markers(&room, &m.user).await?;
            members.push(json!({"user": m.user, "role": m.role, "state": m.state, "muted": m.muted, "read": marks.read, "delivered": marks.delivered}));
        }
        Ok(json!({"members": members, "has_more": has_more}))
    }

    async fn marker(
        &self,
        user: &str,
        o: &Map<String, Value>,
        kind: MarkerKind,
        out: &mut Vec<Out>,
    ) -> Result<Value, Refusal> {
        let room = room_field(o)?;
        let seq = opt_u64(o, "seq")?.ok_or_else(|| Refusal::bad("seq is required"))?;
        let (_, m) = self.readable_room(user, &room).await?;
        if m.map(|m| m.state) != Some(MemberState::Joined) {
            return Err(Refusal::new(
                Code::NotMember,
                format!("you are not a member of {room}"),
            ));
        }
        let head = self.store.head(&room).await?;
        let (marks, moved) = self
            .store
            .set_marker(&room, user, kind, seq.min(head))
            .await?;
        if moved {
            out.push(Out {
                topic: format!("{}/rooms/{room}/receipts", self.prefix),
                payload: json!({"room": room, "user": user, "read": marks.read, "delivered": marks.delivered, "ts": now_ms()}).to_string().into(),
                corr: None,
            });
        }
        Ok(json!({"read": marks.read, "delivered": marks.delivered, "moved": moved}))
    }
}

fn events_json(events: &[StoredEvent]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| serde_json::from_slice(&e.json).ok())
        .collect()
}

fn broker_client_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}
