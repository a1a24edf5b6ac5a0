//! Target `payloads`: send and request payload parsing through
//! [`Chat::handle`], over the in-memory store.
//!
//! Each input is a short script of publishes (up to [`MAX_OPS`]): who sends,
//! to which topic (a room's `send` topic, an `rpc` method from PROTOCOL.md or
//! a made-up one, or a raw topic), which reply topic and correlation data,
//! and a payload given either as raw bytes or as a JSON object built from
//! PROTOCOL.md's field names and edge values. The world starts with room
//! `r1`, alice its owner and bob a member; the script may create more.
//!
//! Checked after every publish: no panic; every message published goes to a
//! topic of the chat namespace and is a JSON object; a reply goes only to
//! the requester's own reply topic, at most once, always when a valid one
//! was given to a request, and is `ok: true` with a `result` or `ok: false`
//! with an `error.code` from PROTOCOL.md's list (never `unavailable`: this
//! store never fails), echoing the request's `corr`; an error in an inbox is
//! the sender's own and has a listed code; every event published is the
//! stored event of that `seq`, and a room's new events are published with
//! `seq` = previous + 1 (a retried send may re-publish its original event);
//! the broker's access view (the `AccessSink`) equals the store's membership.

use crate::memstore::MemStore;
use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use chat_bridge::chat::{AccessSink, Chat, Out, SendLimits};
use chat_bridge::store::{MemberChange, MemberState, NewEvent, Role, RoomInfo, RoomKind, Store};
use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

/// Most publishes per input.
pub const MAX_OPS: usize = 12;

/// PROTOCOL.md's request methods.
pub const METHODS: [&str; 14] = [
    "history",
    "sync",
    "rooms.create",
    "rooms.join",
    "rooms.leave",
    "rooms.invite",
    "rooms.kick",
    "rooms.ban",
    "rooms.mute",
    "rooms.role",
    "rooms.list",
    "rooms.members",
    "read",
    "delivered",
];

/// PROTOCOL.md's error codes.
pub const CODES: [&str; 11] = [
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_member",
    "banned",
    "muted",
    "rate_limited",
    "too_large",
    "not_found",
    "conflict",
    "unavailable",
];

const USERS: [&str; 4] = ["alice", "bob", "carol", "a.b"];
const ROOMS: [&str; 5] = ["r1", "r2", "news", "dm.alice.bob", "g-1"];
const CLIENTS: [&str; 2] = ["p1", "phone:2"];
const KEYS: [&str; 22] = [
    "msg_id",
    "type",
    "body",
    "target",
    "emoji",
    "remove",
    "meta",
    "reply_to",
    "reply",
    "corr",
    "room",
    "before",
    "after",
    "limit",
    "rooms",
    "limit_per_room",
    "kind",
    "members",
    "title",
    "user",
    "role",
    "seq",
];
const WORDS: [&str; 14] = [
    "message", "edit", "delete", "reaction", "member", "group", "channel", "direct", "admin",
    "member", "owner", "👍", "", "m1",
];

/// One input: a script of publishes.
#[derive(Debug, Arbitrary)]
pub struct Script {
    pub ops: Vec<Op>,
}

/// One publish the bridge receives.
#[derive(Debug, Arbitrary)]
pub struct Op {
    pub user: Name,
    pub target: Target,
    pub payload: Payload,
    pub response_topic: Option<ReplyTopic>,
    pub corr: Option<Vec<u8>>,
}

/// A user or room id: a known one or anything.
#[derive(Debug, Arbitrary)]
pub enum Name {
    User(u8),
    Room(u8),
    Raw(String),
}

/// The topic of a publish.
#[derive(Debug, Arbitrary)]
pub enum Target {
    Send(Name),
    Rpc(u8),
    RpcRaw(String),
    Raw(String),
}

/// An MQTT 5 response topic.
#[derive(Debug, Arbitrary)]
pub enum ReplyTopic {
    /// the requester's own reply topic
    Own(u8),
    /// another user's reply topic
    Other(Name, u8),
    Raw(String),
}

/// The payload.
#[derive(Debug, Arbitrary)]
pub enum Payload {
    Bytes(Vec<u8>),
    Json(Vec<(Key, Val)>),
}

/// A field name: one of PROTOCOL.md's or anything.
#[derive(Debug, Arbitrary)]
pub enum Key {
    Known(u8),
    Raw(String),
}

/// A JSON value with edge cases close at hand.
#[derive(Debug, Arbitrary)]
pub enum Val {
    Null,
    Bool(bool),
    Small(u8),
    U64(u64),
    I64(i64),
    F64(f64),
    Word(u8),
    Name(Name),
    /// a string of `n * 1024 + m` bytes, around the body/meta limits
    Long(u8, u8),
    Str(String),
    /// a reply topic field: own or another's
    Reply(ReplyTopic),
    Arr(Vec<Val>),
    Obj(Vec<(Key, Val)>),
}

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[usize::from(i) % list.len()]
}

impl Name {
    fn get(&self) -> String {
        match self {
            Name::User(i) => pick(&USERS, *i).to_owned(),
            Name::Room(i) => pick(&ROOMS, *i).to_owned(),
            Name::Raw(s) => s.clone(),
        }
    }
}

impl ReplyTopic {
    fn get(&self, me: &str) -> String {
        match self {
            ReplyTopic::Own(c) => format!("chat/users/{me}/replies/{}", pick(&CLIENTS, *c)),
            ReplyTopic::Other(u, c) => {
                format!("chat/users/{}/replies/{}", u.get(), pick(&CLIENTS, *c))
            }
            ReplyTopic::Raw(s) => s.clone(),
        }
    }
}

impl Key {
    fn get(&self) -> String {
        match self {
            Key::Known(i) => pick(&KEYS, *i).to_owned(),
            Key::Raw(s) => s.clone(),
        }
    }
}

impl Val {
    fn json(&self, me: &str, depth: u8) -> Value {
        if depth > 4 {
            return Value::Null;
        }
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => (*b).into(),
            Val::Small(n) => (n % 8).into(),
            Val::U64(n) => (*n).into(),
            Val::I64(n) => (*n).into(),
            Val::F64(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Val::Word(i) => pick(&WORDS, *i).into(),
            Val::Name(n) => n.get().into(),
            Val::Long(k, m) => "x"
                .repeat(usize::from(k % 70) * 1024 + usize::from(*m))
                .into(),
            Val::Str(s) => s.as_str().into(),
            Val::Reply(r) => r.get(me).into(),
            Val::Arr(a) => a.iter().map(|v| v.json(me, depth + 1)).collect(),
            Val::Obj(o) => Value::Object(object(o, me, depth + 1)),
        }
    }
}

fn object(fields: &[(Key, Val)], me: &str, depth: u8) -> Map<String, Value> {
    fields
        .iter()
        .map(|(k, v)| (k.get(), v.json(me, depth)))
        .collect()
}

/// The broker's view of access, as the bridge tells it.
#[derive(Default)]
struct Sink {
    joined: Mutex<HashSet<(String, String)>>,
    open: Mutex<HashSet<String>>,
}

impl AccessSink for Sink {
    fn member(&self, room: &str, user: &str, joined: bool) {
        let key = (room.to_owned(), user.to_owned());
        let mut g = self.joined.lock();
        if joined {
            g.insert(key);
        } else {
            g.remove(&key);
        }
    }
    fn open(&self, room: &str, open: bool) {
        let mut g = self.open.lock();
        if open {
            g.insert(room.to_owned());
        } else {
            g.remove(room);
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
    })
}

/// Inputs starting with this line are text scripts (the hand-written seeds):
/// one publish per line, `<topic> <payload>`.
pub const TEXT_MAGIC: &[u8] = b"script\n";

/// Runs one input; panics on a violated property.
pub fn run(data: &[u8]) {
    let script = match data.strip_prefix(TEXT_MAGIC) {
        Some(text) => text_script(text),
        None => match Script::arbitrary_take_rest(Unstructured::new(data)) {
            Ok(s) => s,
            Err(_) => return,
        },
    };
    runtime().block_on(run_script(&script));
}

/// A text script: each line `<topic> <payload>`, as raw topic and bytes.
pub fn text_script(text: &[u8]) -> Script {
    let ops = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (topic, payload) = match line.iter().position(|b| *b == b' ') {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, &[][..]),
            };
            let topic = String::from_utf8_lossy(topic).into_owned();
            Op {
                user: Name::Raw(served(&topic).unwrap_or_default().to_owned()),
                target: Target::Raw(topic),
                payload: Payload::Bytes(payload.to_vec()),
                response_topic: None,
                corr: None,
            }
        })
        .collect();
    Script { ops }
}

/// Seeds room r1 (alice owner, bob member), as the bridge would have stored it.
async fn seed(store: &MemStore, sink: &Sink) {
    let info = RoomInfo {
        id: "r1".into(),
        kind: RoomKind::Group,
        title: Some("seeded".into()),
        created_by: "alice".into(),
        created_ts: 1,
    };
    assert!(matches!(store.create_room(info).await, Ok(true)));
    for (user, role) in [("alice", Role::Owner), ("bob", Role::Member)] {
        let mut body = Map::new();
        body.insert("type".into(), "member".into());
        body.insert("action".into(), "join".into());
        body.insert("user".into(), user.into());
        let ev = NewEvent {
            room: "r1".into(),
            from: user.into(),
            msg_id: format!("$seed:{user}"),
            ts: 2,
            body,
            member: Some(MemberChange {
                user: user.into(),
                role,
                state: MemberState::Joined,
                muted: false,
            }),
            redacts: None,
        };
        assert!(store.append(ev).await.is_ok());
        sink.member("r1", user, true);
    }
}

/// Runs a script against a fresh world.
pub async fn run_script(script: &Script) {
    let store = Arc::new(MemStore::new());
    let sink = Arc::new(Sink::default());
    seed(&store, &sink).await;
    let chat = Chat::new(store.clone(), "chat", sink.clone(), SendLimits::default());
    // room -> highest seq published so far (the seeded events count as published)
    let mut published: HashMap<String, u64> =
        HashMap::from([("r1".to_owned(), store.events("r1").len() as u64)]);
    for op in script.ops.iter().take(MAX_OPS) {
        let user = op.user.get();
        let topic = match &op.target {
            Target::Send(room) => format!("chat/rooms/{}/send/{user}", room.get()),
            Target::Rpc(m) => format!("chat/rpc/{user}/{}", pick(&METHODS, *m)),
            Target::RpcRaw(m) => format!("chat/rpc/{user}/{m}"),
            Target::Raw(t) => t.clone(),
        };
        let payload: Vec<u8> = match &op.payload {
            Payload::Bytes(b) => b.clone(),
            Payload::Json(fields) => Value::Object(object(fields, &user, 0))
                .to_string()
                .into_bytes(),
        };
        let rt = op.response_topic.as_ref().map(|r| r.get(&user));
        let corr = op.corr.clone().map(Bytes::from);
        let out = chat
            .handle(&topic, &payload, rt.clone(), corr.clone())
            .await;
        let req = Request {
            user: &user,
            topic: &topic,
            payload: &payload,
            rt: rt.as_deref(),
            corr: corr.as_ref(),
        };
        check(&req, &out, &store, &mut published);
        check_all_published(&store, &published);
        check_access(&store, &sink);
    }
}

/// What was published to, for the checks.
struct Request<'a> {
    user: &'a str,
    topic: &'a str,
    payload: &'a [u8],
    rt: Option<&'a str>,
    corr: Option<&'a Bytes>,
}

/// Is `t` one of `user`'s own reply topics (the only kind a reply may go to)?
fn own_reply_topic(user: &str, t: &str) -> bool {
    t.strip_prefix("chat/users/")
        .and_then(|r| r.strip_prefix(user))
        .and_then(|r| r.strip_prefix("/replies/"))
        .is_some_and(|c| {
            (1..=128).contains(&c.len())
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
        })
}

/// The user a publish on `topic` is served for, parsed as `Chat::handle` does.
fn served(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("chat").unwrap_or("");
    let levels: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match levels.as_slice() {
        ["rooms", room, "send", user] if valid_id(room) && valid_id(user) => Some(user),
        ["rpc", user, _] if valid_id(user) => Some(user),
        _ => None,
    }
}

fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn check(req: &Request, out: &[Out], store: &MemStore, published: &mut HashMap<String, u64>) {
    let ctx = || {
        format!(
            "request {:?} by {:?}, payload {:?}, response topic {:?}",
            req.topic,
            req.user,
            String::from_utf8_lossy(req.payload),
            req.rt
        )
    };
    let parsed: Option<Map<String, Value>> = match serde_json::from_slice(req.payload) {
        Ok(Value::Object(o)) if req.payload.len() <= chat_bridge::wire::PAYLOAD_MAX => Some(o),
        _ => None,
    };
    // the reply topic the service should have used: the property, else the field
    let field = parsed
        .as_ref()
        .and_then(|o| o.get("reply"))
        .and_then(Value::as_str);
    let want_reply = req.rt.or(field);
    // the user the service serves the publish for (its own topic parsing:
    // the bridge only ever receives `chat/rooms/+/send/+` and `chat/rpc/+/+`)
    let Some(user) = served(req.topic) else {
        assert!(
            out.is_empty(),
            "{}: a publish the bridge does not serve was answered: {out:?}",
            ctx()
        );
        return;
    };
    let want_reply = want_reply.filter(|t| own_reply_topic(user, t));
    let mut replies = 0;
    for o in out {
        assert!(
            !o.topic.contains(['+', '#']) && o.topic.starts_with("chat/"),
            "{}: published to {:?}",
            ctx(),
            o.topic
        );
        let v: Map<String, Value> = match serde_json::from_slice(&o.payload) {
            Ok(Value::Object(v)) => v,
            _ => panic!(
                "{}: not a JSON object on {}: {:?}",
                ctx(),
                o.topic,
                String::from_utf8_lossy(&o.payload)
            ),
        };
        let levels: Vec<&str> = o.topic["chat/".len()..].split('/').collect();
        match levels.as_slice() {
            ["rooms", room, "events"] => check_event(room, &o.payload, &v, store, published, &ctx),
            ["rooms", _, "receipts"] | ["hooks", "access"] => {}
            ["users", u, "replies", _] => {
                replies += 1;
                assert_eq!(
                    Some(o.topic.as_str()),
                    want_reply,
                    "{}: reply to {}",
                    ctx(),
                    o.topic
                );
                assert_eq!(*u, user);
                assert_eq!(o.corr.as_ref(), req.corr, "{}: correlation data", ctx());
                if let Some(c) = parsed.as_ref().and_then(|p| p.get("corr")) {
                    assert!(
                        // echoed as written: read back by the same parser,
                        // it is the same value (a float included)
                        v.get("corr") == Some(c),
                        "{}: corr field not echoed: {:?}",
                        ctx(),
                        v.get("corr")
                    );
                }
                match v.get("ok") {
                    Some(Value::Bool(true)) => {
                        assert!(
                            v.contains_key("result"),
                            "{}: ok without result: {v:?}",
                            ctx()
                        )
                    }
                    Some(Value::Bool(false)) => {
                        check_code(v.get("error").and_then(|e| e.get("code")), &ctx)
                    }
                    _ => panic!("{}: reply without ok: {v:?}", ctx()),
                }
            }
            ["users", u, "inbox"] => {
                if v.get("type").and_then(Value::as_str) == Some("error") {
                    assert_eq!(*u, user, "{}: an error went to another's inbox", ctx());
                    check_code(v.get("code"), &ctx);
                }
            }
            _ => panic!("{}: published to an unexpected topic {}", ctx(), o.topic),
        }
    }
    assert!(replies <= 1, "{}: {replies} replies", ctx());
    if want_reply.is_some() {
        assert_eq!(replies, 1, "{}: a valid reply topic got no reply", ctx());
    }
}

fn check_code(code: Option<&Value>, ctx: &dyn Fn() -> String) {
    let code = code.and_then(Value::as_str);
    assert!(
        code.is_some_and(|c| CODES.contains(&c)),
        "{}: error code {code:?} is not PROTOCOL.md's",
        ctx()
    );
    assert_ne!(
        code,
        Some("unavailable"),
        "{}: unavailable from a store that never fails",
        ctx()
    );
}

fn check_event(
    room: &str,
    payload: &[u8],
    v: &Map<String, Value>,
    store: &MemStore,
    published: &mut HashMap<String, u64>,
    ctx: &dyn Fn() -> String,
) {
    assert_eq!(
        v.get("room").and_then(Value::as_str),
        Some(room),
        "{}: event of another room",
        ctx()
    );
    let seq = v
        .get("seq")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{}: event without seq: {v:?}", ctx()));
    let stored = store.events(room);
    assert!(
        seq >= 1 && stored.get(seq as usize - 1).is_some_and(|s| s == payload),
        "{}: published event {room}#{seq} is not the stored one",
        ctx()
    );
    let last = published.entry(room.to_owned()).or_insert(0);
    assert!(
        seq <= *last + 1,
        "{}: {room} published seq {seq} after {last}: a gap",
        ctx()
    );
    *last = (*last).max(seq);
}

/// Every stored event has been published: a room's stream has no event a
/// subscriber never saw live.
fn check_all_published(store: &MemStore, published: &HashMap<String, u64>) {
    for room in store.all_event_rooms() {
        let head = store.events(&room).len() as u64;
        assert_eq!(
            published.get(&room).copied().unwrap_or(0),
            head,
            "{room}: events stored but not published"
        );
    }
}

/// The sink (the broker's authorizer) agrees with the store on who is joined
/// and which rooms are open channels.
fn check_access(store: &MemStore, sink: &Sink) {
    let joined: HashSet<(String, String)> = store
        .all_members()
        .into_iter()
        .filter(|m| m.state == MemberState::Joined)
        .map(|m| (m.room, m.user))
        .collect();
    assert_eq!(
        *sink.joined.lock(),
        joined,
        "the broker's view of members differs from the store"
    );
    let open: HashSet<String> = store
        .all_rooms()
        .into_iter()
        .filter(|r| r.kind == RoomKind::Channel)
        .map(|r| r.id)
        .collect();
    assert_eq!(
        *sink.open.lock(),
        open,
        "the broker's view of open channels differs from the store"
    );
}
