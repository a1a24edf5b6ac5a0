//! Tests of the service against the embedded store (in a temp dir), behind
//! a wrapper that can fail appends and counts reads.

use super::*;
use crate::store::embedded::{EmbeddedConfig, EmbeddedStore, FsyncPolicy};
use crate::store::{Appended, Markers, NewEvent, Page, Range, Role, StoreError, StoredEvent};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The embedded store, with the next `fail` appends failing and the room
/// reads counted.
struct Flaky {
    inner: EmbeddedStore,
    fail: AtomicUsize,
    room_reads: AtomicUsize,
}

#[async_trait]
impl Store for Flaky {
    async fn append(&self, event: NewEvent) -> Result<Appended, StoreError> {
        let armed = self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if armed.is_ok() {
            return Err(StoreError::Unavailable("injected".into()));
        }
        self.inner.append(event).await
    }
    async fn lookup(
        &self,
        room: &str,
        from: &str,
        msg_id: &str,
    ) -> Result<Option<StoredEvent>, StoreError> {
        self.inner.lookup(room, from, msg_id).await
    }
    async fn head(&self, room: &str) -> Result<u64, StoreError> {
        self.inner.head(room).await
    }
    async fn read(&self, room: &str, range: Range, limit: usize) -> Result<Page, StoreError> {
        self.room_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read(room, range, limit).await
    }
    async fn create_room(&self, room: RoomInfo) -> Result<bool, StoreError> {
        self.inner.create_room(room).await
    }
    async fn room(&self, room: &str) -> Result<Option<RoomInfo>, StoreError> {
        self.room_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.room(room).await
    }
    async fn member(&self, room: &str, user: &str) -> Result<Option<Member>, StoreError> {
        self.inner.member(room, user).await
    }
    async fn members(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError> {
        self.inner.members(room, after, limit).await
    }
    async fn user_rooms(&self, user: &str) -> Result<Vec<Member>, StoreError> {
        self.inner.user_rooms(user).await
    }
    async fn set_marker(
        &self,
        room: &str,
        user: &str,
        kind: MarkerKind,
        seq: u64,
    ) -> Result<(Markers, bool), StoreError> {
        self.inner.set_marker(room, user, kind, seq).await
    }
    async fn markers(&self, room: &str, user: &str) -> Result<Markers, StoreError> {
        self.room_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.markers(room, user).await
    }
    async fn room_settings(&self, room: &str) -> Result<Option<String>, StoreError> {
        self.inner.room_settings(room).await
    }
    async fn set_room_settings(&self, room: &str, settings: &str) -> Result<(), StoreError> {
        self.inner.set_room_settings(room, settings).await
    }
    async fn is_blocked(&self, user: &str, target: &str) -> Result<bool, StoreError> {
        self.inner.is_blocked(user, target).await
    }
    async fn set_blocked(&self, user: &str, target: &str, on: bool) -> Result<(), StoreError> {
        self.inner.set_blocked(user, target, on).await
    }
    async fn blocked_users(&self, user: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        self.inner.blocked_users(user, limit).await
    }
    async fn rooms_page(
        &self,
        cursor: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<crate::store::RoomsPage, StoreError> {
        self.inner.rooms_page(cursor, limit).await
    }
    async fn expired(&self, room: &str) -> Result<crate::store::Expired, StoreError> {
        self.inner.expired(room).await
    }
    async fn expire(
        &self,
        room: &str,
        keys: Vec<crate::store::KeyAt>,
        keys_before: u64,
        events_before: u64,
    ) -> Result<crate::store::Expired, StoreError> {
        self.inner
            .expire(room, keys, keys_before, events_before)
            .await
    }
    async fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush().await
    }
}

struct NoSink;

impl AccessSink for NoSink {
    fn member(&self, _: &str, _: &str, _: bool) {}
    fn open(&self, _: &str, _: bool) {}
}

struct Fixture {
    chat: Chat,
    store: Arc<Flaky>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let inner = EmbeddedStore::open(EmbeddedConfig {
        path: dir.path().to_owned(),
        fsync: FsyncPolicy::Never,
    })
    .expect("open the embedded store");
    let store = Arc::new(Flaky {
        inner,
        fail: AtomicUsize::new(0),
        room_reads: AtomicUsize::new(0),
    });
    let chat = Chat::new(
        store.clone(),
        "chat",
        Arc::new(NoSink),
        SendLimits::default(),
    );
    Fixture {
        chat,
        store,
        _dir: dir,
    }
}

impl Fixture {
    /// A request as `user`; its whole reply and everything else published.
    async fn call(&self, user: &str, method: &str, params: Value) -> (Value, Vec<Out>) {
        let reply = format!("chat/users/{user}/replies/t1");
        let mut req = params;
        req["reply"] = reply.clone().into();
        let outs = self
            .chat
            .handle(
                &format!("chat/rpc/{user}/{method}"),
                req.to_string().as_bytes(),
                None,
                None,
            )
            .await;
        let (replies, rest): (Vec<Out>, Vec<Out>) =
            outs.into_iter().partition(|o| o.topic == reply);
        let [r] = replies.as_slice() else {
            panic!("{method} by {user}: one reply expected, got {replies:?}");
        };
        (
            serde_json::from_slice(&r.payload).expect("reply is JSON"),
            rest,
        )
    }

    async fn ok(&self, user: &str, method: &str, params: Value) -> Value {
        let (r, _) = self.call(user, method, params.clone()).await;
        assert_eq!(r["ok"], true, "{method} {params} by {user}: {r}");
        r["result"].clone()
    }

    async fn err(&self, user: &str, method: &str, params: Value) -> String {
        let (r, _) = self.call(user, method, params.clone()).await;
        assert_eq!(r["ok"], false, "{method} {params} by {user}: {r}");
        r["error"]["code"].as_str().unwrap_or_default().to_owned()
    }

    async fn state(&self, room: &str, user: &str) -> Option<(MemberState, Role)> {
        let m = self.store.member(room, user).await.expect("member read");
        m.map(|m| (m.state, m.role))
    }
}

#[tokio::test]
async fn a_create_cut_short_after_the_room_is_completed_by_its_retry() {
    let f = fixture();
    let req = json!({"room": "r1", "kind": "group", "members": ["bob", "carol"], "title": "T"});
    // the room is stored, then the owner's join fails
    f.store.fail.store(1, Ordering::SeqCst);
    assert_eq!(
        f.err("alice", "rooms.create", req.clone()).await,
        "unavailable"
    );
    assert!(f.store.room("r1").await.expect("room read").is_some());
    assert_eq!(f.state("r1", "alice").await, None);
    // nobody else completes or takes it
    assert_eq!(f.err("bob", "rooms.create", req.clone()).await, "conflict");
    assert_eq!(
        f.err(
            "alice",
            "rooms.create",
            json!({"room": "r1", "kind": "channel"})
        )
        .await,
        "conflict"
    );
    // the creator's retry completes it and answers as a fresh create
    let (r, outs) = f.call("alice", "rooms.create", req.clone()).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["created"], true, "{r}");
    assert_eq!(r["result"]["room"]["id"], "r1", "{r}");
    assert_eq!(
        f.state("r1", "alice").await,
        Some((MemberState::Joined, Role::Owner))
    );
    for m in ["bob", "carol"] {
        assert_eq!(
            f.state("r1", m).await,
            Some((MemberState::Invited, Role::Member)),
            "{m}"
        );
        assert!(
            outs.iter()
                .any(|o| o.topic == format!("chat/users/{m}/inbox")),
            "{m} is told: {outs:?}"
        );
    }
    assert_eq!(f.store.head("r1").await.expect("head"), 3);
    // a complete room is a conflict again, also for its creator
    assert_eq!(f.err("alice", "rooms.create", req).await, "conflict");
    assert_eq!(
        f.ok("bob", "rooms.join", json!({"room": "r1"})).await["seq"],
        4
    );
}

#[tokio::test]
async fn a_direct_create_cut_short_is_completed_by_either_user() {
    let f = fixture();
    let req = json!({"kind": "direct", "members": ["bob"]});
    let id = direct_room_id("alice", "bob");
    f.store.fail.store(1, Ordering::SeqCst);
    assert_eq!(
        f.err("alice", "rooms.create", req.clone()).await,
        "unavailable"
    );
    let r = f.ok("alice", "rooms.create", req).await;
    assert_eq!(
        (r["created"].clone(), r["room"]["id"].clone()),
        (json!(true), json!(id))
    );
    for u in ["alice", "bob"] {
        assert_eq!(
            f.state(&id, u).await,
            Some((MemberState::Joined, Role::Owner))
        );
    }
    // cut short after the owner's join: bob's own create brings him in
    let id = direct_room_id("carol", "dave");
    f.store.fail.store(0, Ordering::SeqCst);
    let _ = f
        .ok(
            "carol",
            "rooms.create",
            json!({"kind": "direct", "members": ["dave"]}),
        )
        .await;
    let r = f
        .ok(
            "dave",
            "rooms.create",
            json!({"kind": "direct", "members": ["carol"]}),
        )
        .await;
    assert_eq!(
        (r["created"].clone(), r["room"]["id"].clone()),
        (json!(false), json!(id))
    );
    assert_eq!(f.store.head(&id).await.expect("head"), 2, "no second join");
}

#[tokio::test]
async fn direct_rooms_take_back_their_two_users_and_nobody_else() {
    let f = fixture();
    let id = direct_room_id("alice", "bob");
    f.ok(
        "alice",
        "rooms.create",
        json!({"kind": "direct", "members": ["bob"]}),
    )
    .await;
    // bob leaves and comes back by rooms.join
    f.ok("bob", "rooms.leave", json!({"room": id})).await;
    assert_eq!(
        f.state(&id, "bob").await.map(|s| s.0),
        Some(MemberState::Left)
    );
    f.ok("bob", "rooms.join", json!({"room": id})).await;
    assert_eq!(
        f.state(&id, "bob").await,
        Some((MemberState::Joined, Role::Owner))
    );
    // alice leaves and comes back by rooms.create
    f.ok("alice", "rooms.leave", json!({"room": id})).await;
    let r = f
        .ok(
            "alice",
            "rooms.create",
            json!({"kind": "direct", "members": ["bob"]}),
        )
        .await;
    assert_eq!(
        (r["created"].clone(), r["room"]["id"].clone()),
        (json!(false), json!(id))
    );
    assert_eq!(
        f.state(&id, "alice").await,
        Some((MemberState::Joined, Role::Owner))
    );
    // to carol it is a room that does not exist
    assert_eq!(
        f.err("carol", "rooms.join", json!({"room": id})).await,
        "not_found"
    );
    assert_eq!(
        f.err(
            "carol",
            "rooms.join",
            json!({"room": direct_room_id("x", "y")})
        )
        .await,
        "not_found"
    );
    assert_eq!(
        f.err("carol", "history", json!({"room": id})).await,
        "not_member"
    );
    // a banned user stays out
    f.ok("alice", "rooms.ban", json!({"room": id, "user": "bob"}))
        .await;
    assert_eq!(
        f.err("bob", "rooms.join", json!({"room": id})).await,
        "banned"
    );
    let req = json!({"kind": "direct", "members": ["alice"]});
    assert_eq!(f.err("bob", "rooms.create", req).await, "banned");
    // nobody creates a group or channel under a direct id
    for room in [id.as_str(), "dm.alice.bob", "DM-x", "dm-0"] {
        for kind in ["group", "channel"] {
            let req = json!({"room": room, "kind": kind});
            assert_eq!(
                f.err("carol", "rooms.create", req).await,
                "bad_request",
                "{room}"
            );
        }
    }
}

/// Creates `n` group rooms `r000`.. for `user`, titled 256 chars.
async fn many_rooms(f: &Fixture, user: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let room = format!("r{i:03}");
        let title = format!("{room}-{}", "t".repeat(252));
        f.ok(user, "rooms.create", json!({"room": room, "title": title}))
            .await;
        ids.push(room);
    }
    ids
}

#[tokio::test]
async fn rooms_list_pages_within_the_byte_limit_and_skips_left_rooms() {
    let f = fixture();
    let ids = many_rooms(&f, "alice", 40).await;
    for r in ids.iter().step_by(4) {
        f.ok("alice", "rooms.leave", json!({"room": r})).await;
    }
    let active: BTreeSet<String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 4 != 0)
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(active.len(), 30);
    // pages of at most 4 KiB: cut by size before the limit of 100
    let max = 4096;
    let (mut seen, mut after, mut pages) = (Vec::new(), None::<String>, 0);
    f.store.room_reads.store(0, Ordering::SeqCst);
    loop {
        let p = f.chat.list_page("alice", after.as_deref(), 100, max).await;
        let p = p.expect("page");
        assert!(
            page::json_len(&p) <= max,
            "page over {max}: {}",
            page::json_len(&p)
        );
        let p = serde_json::to_value(&p).expect("a page serializes");
        let rooms = p["rooms"].as_array().expect("rooms").clone();
        assert!(!rooms.is_empty());
        seen.extend(
            rooms
                .iter()
                .map(|r| r["room"].as_str().unwrap_or_default().to_owned()),
        );
        pages += 1;
        if p["has_more"] != true {
            assert!(p.get("next").is_none(), "{p}");
            break;
        }
        after = p["next"].as_str().map(str::to_owned);
        assert_eq!(
            after.as_deref(),
            rooms.last().and_then(|r| r["room"].as_str())
        );
    }
    assert!(pages > 3, "{pages} pages");
    assert_eq!(seen.len(), 30, "each room once: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), active);
    // four reads per room listed (the room, its last event, its markers,
    // the events after the read marker for the unread count; a page's cut
    // entry is read once more), none for the rooms left
    let reads = f.store.room_reads.load(Ordering::SeqCst);
    assert!(reads <= 4 * (30 + pages), "{reads} reads");
    // by count, through the request
    let r = f.ok("alice", "rooms.list", json!({"limit": 7})).await;
    assert_eq!(r["rooms"].as_array().map(Vec::len), Some(7));
    assert_eq!(
        (r["has_more"].clone(), r["next"].clone()),
        (json!(true), json!("r009"))
    );
    let r = f.ok("alice", "rooms.list", json!({"after": "r036"})).await;
    assert_eq!(r["rooms"].as_array().map(Vec::len), Some(3), "{r}");
    assert_eq!(r["has_more"], false);
    // an invitation lists the room without what is said in it
    let invite = json!({"room": "r001", "user": "bob"});
    f.ok("alice", "rooms.invite", invite).await;
    let r = f.ok("bob", "rooms.list", json!({})).await;
    let r = &r["rooms"][0];
    assert_eq!(
        (r["state"].clone(), r["head"].clone()),
        (json!("invited"), json!(2))
    );
    assert_eq!(r["last"], Value::Null, "{r}");
    for bad in [
        json!({"limit": 0}),
        json!({"limit": 501}),
        json!({"after": "a/b"}),
    ] {
        assert_eq!(f.err("alice", "rooms.list", bad).await, "bad_request");
    }
}

#[tokio::test]
async fn sync_pages_joined_within_the_byte_limit() {
    let f = fixture();
    let ids = many_rooms(&f, "alice", 30).await;
    let named = json!({"r000": 0, "r001": 0});
    let max = 1400;
    let (mut seen, mut after, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let mut req = json!({"rooms": named, "joined_limit": 1000});
        if let Some(a) = &after {
            req["joined_after"] = a.clone().into();
        }
        let params = serde_json::from_value(req).expect("sync parameters");
        let p = f
            .chat
            .sync_within("alice", params, max)
            .await
            .expect("sync");
        assert!(
            page::json_len(&p) <= max,
            "page over {max}: {}",
            page::json_len(&p)
        );
        let p = serde_json::to_value(&p).expect("a page serializes");
        assert!(p["rooms"]["r000"]["head"].as_u64().is_some(), "{p}");
        let joined = p["joined"].as_array().expect("joined").clone();
        assert!(!joined.is_empty());
        seen.extend(
            joined
                .iter()
                .map(|r| r["room"].as_str().unwrap_or_default().to_owned()),
        );
        pages += 1;
        if p["joined_has_more"] != true {
            break;
        }
        after = p["joined_next"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, ids[2..].to_vec(), "each unnamed room once, in order");
    assert!(pages > 1, "{pages} pages");
    // by count, through the request
    let r = f.ok("alice", "sync", json!({"joined_limit": 5})).await;
    assert_eq!(r["joined"].as_array().map(Vec::len), Some(5));
    assert_eq!(
        (r["joined_has_more"].clone(), r["joined_next"].clone()),
        (json!(true), json!("r004"))
    );
    let r = f.ok("alice", "sync", json!({})).await;
    assert_eq!(r["joined"].as_array().map(Vec::len), Some(30));
    assert_eq!(r["joined_has_more"], false);
    let bad = json!({"joined_limit": 1001});
    assert_eq!(f.err("alice", "sync", bad).await, "bad_request");
}

/// A request's raw payload as `user`; the reply's bytes and everything else.
async fn raw_call(f: &Fixture, user: &str, method: &str, payload: &str) -> (String, Vec<Out>) {
    let reply = format!("chat/users/{user}/replies/t1");
    let outs = f
        .chat
        .handle(
            &format!("chat/rpc/{user}/{method}"),
            payload.as_bytes(),
            None,
            None,
        )
        .await;
    let (replies, rest): (Vec<Out>, Vec<Out>) = outs.into_iter().partition(|o| o.topic == reply);
    let [r] = replies.as_slice() else {
        panic!("{method} {payload}: one reply expected, got {replies:?}");
    };
    (String::from_utf8_lossy(&r.payload).into_owned(), rest)
}

#[tokio::test]
async fn a_bad_request_names_the_offending_field() {
    let f = fixture();
    f.ok("alice", "rooms.create", json!({"room": "r1"})).await;
    for (method, params, message) in [
        (
            "history",
            json!({"room": "r1", "limit": "x"}),
            r#"limit: invalid type: string "x", expected u64"#,
        ),
        (
            "history",
            json!({"room": "r1", "before": -1}),
            "before: invalid value: integer `-1`, expected u64",
        ),
        (
            "history",
            json!({"room": 5}),
            "room: invalid type: integer `5`, expected a string",
        ),
        ("history", json!({}), "room is required"),
        (
            "history",
            json!({"room": "r1", "limit": 0}),
            "limit must be 1..1000",
        ),
        (
            "sync",
            json!({"rooms": {"r1": "x"}}),
            r#"rooms.r1: invalid type: string "x", expected u64"#,
        ),
        (
            "rooms.create",
            json!({"kind": "bogus"}),
            "kind: unknown variant `bogus`, expected one of `direct`, `group`, `channel`",
        ),
        (
            "rooms.create",
            json!({"members": ["bob", 7]}),
            "members[1]: invalid type: integer `7`, expected a string",
        ),
        (
            "rooms.kick",
            json!({"room": "r1", "user": ["bob"]}),
            "user: invalid type: sequence, expected a string",
        ),
        (
            "read",
            json!({"room": "r1", "seq": "1"}),
            r#"seq: invalid type: string "1", expected u64"#,
        ),
        ("read", json!({"room": "r1"}), "seq is required"),
    ] {
        let (r, _) = f.call("alice", method, params.clone()).await;
        assert_eq!(r["error"]["code"], "bad_request", "{method} {params}: {r}");
        assert_eq!(r["error"]["message"], message, "{method} {params}");
    }
    // a send's refusal names the field too, and an unknown field is ignored
    let reply = "chat/users/alice/replies/t1";
    for (payload, message) in [
        (
            json!({"msg_id": "m1", "body": 5}),
            "body: invalid type: integer `5`, expected a string",
        ),
        (
            json!({"msg_id": "m1", "type": "poke"}),
            "type: unknown variant `poke`, expected one of `message`, `edit`, `delete`, `reaction`",
        ),
        (
            json!({"msg_id": "m1", "body": "hi", "meta": []}),
            "meta: invalid type: sequence, expected a map",
        ),
    ] {
        let mut p = payload.clone();
        p["reply"] = reply.into();
        let outs = f
            .chat
            .handle(
                "chat/rooms/r1/send/alice",
                p.to_string().as_bytes(),
                None,
                None,
            )
            .await;
        let r: Value = serde_json::from_slice(&outs[0].payload).expect("a reply");
        assert_eq!(r["error"]["message"], message, "{payload}");
    }
    let ok = json!({"msg_id": "m2", "body": "hi", "unknown": {"x": [1]}, "reply": reply});
    let outs = f
        .chat
        .handle(
            "chat/rooms/r1/send/alice",
            ok.to_string().as_bytes(),
            None,
            None,
        )
        .await;
    assert!(
        outs.iter().any(|o| o.topic == "chat/rooms/r1/events"),
        "{outs:?}"
    );
}

#[tokio::test]
async fn corr_comes_back_as_the_client_wrote_it() {
    let f = fixture();
    let reply = "chat/users/alice/replies/t1";
    for corr in [
        "5.7460254689548115e+169",
        r#"{ "a" : [1.10, null] }"#,
        "null",
        r#""7""#,
        "-0",
    ] {
        let payload = format!(r#"{{"reply":"{reply}","corr":{corr},"room":"none"}}"#);
        let (r, _) = raw_call(&f, "alice", "history", &payload).await;
        let want = format!(r#"{{"corr":{corr},"ok":false,"error":"#);
        assert!(r.starts_with(&want), "{r}");
        // on a request that fails to parse too
        let payload = format!(r#"{{"reply":"{reply}","corr":{corr},"limit":"x"}}"#);
        let (r, _) = raw_call(&f, "alice", "history", &payload).await;
        assert!(r.starts_with(&want), "{r}");
    }
}

#[tokio::test]
async fn history_and_sync_serve_the_stored_bytes() {
    let f = fixture();
    f.ok("alice", "rooms.create", json!({"room": "r1"})).await;
    let send = json!({"msg_id": "m1", "body": "h\u{e9}llo \"q\"", "meta": {"n": 1.5, "z": [true]}});
    let outs = f
        .chat
        .handle(
            "chat/rooms/r1/send/alice",
            send.to_string().as_bytes(),
            None,
            None,
        )
        .await;
    let event = outs
        .iter()
        .find(|o| o.topic == "chat/rooms/r1/events")
        .map(|o| String::from_utf8_lossy(&o.payload).into_owned())
        .expect("the event");
    let page = f.store.read("r1", Range::Latest, 10).await.expect("read");
    let stored: Vec<String> = page
        .events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.json).into_owned())
        .collect();
    assert_eq!(stored.last(), Some(&event));
    let reply = "chat/users/alice/replies/t1";
    let events = format!(r#""events":[{}]"#, stored.join(","));
    for (method, params) in [
        ("history", r#""room":"r1""#),
        ("sync", r#""rooms":{"r1":0}"#),
    ] {
        let payload = format!(r#"{{"reply":"{reply}",{params}}}"#);
        let (r, _) = raw_call(&f, "alice", method, &payload).await;
        assert!(r.contains(&events), "{method}: {r}\n{events}");
    }
    let (r, _) = raw_call(
        &f,
        "alice",
        "rooms.list",
        &format!(r#"{{"reply":"{reply}"}}"#),
    )
    .await;
    assert!(r.contains(&format!(r#""last":{event}"#)), "{r}");
    // and they read back as typed events
    let (r, _) = f.call("alice", "history", json!({"room": "r1"})).await;
    let h: schema::result::HistoryResult<schema::Event> =
        serde_json::from_value(r["result"].clone()).expect("a typed history");
    assert!(matches!(
        h.events.last().map(|e| &e.body),
        Some(schema::EventBody::Message { body, .. }) if body == "h\u{e9}llo \"q\""
    ));
}

#[tokio::test]
async fn the_access_hooks_read_as_the_broker_reads_them() {
    let f = fixture();
    let (_, outs) = f
        .call(
            "alice",
            "rooms.create",
            json!({"room": "c1", "kind": "channel"}),
        )
        .await;
    let (_, more) = f
        .call(
            "alice",
            "rooms.invite",
            json!({"room": "c1", "user": "bob"}),
        )
        .await;
    let hooks: Vec<schema::AccessHook> = outs
        .iter()
        .chain(&more)
        .filter(|o| o.topic == "chat/hooks/access")
        .map(|o| serde_json::from_slice(&o.payload).expect("an access hook"))
        .collect();
    assert_eq!(
        hooks,
        [
            schema::AccessHook::Open {
                room: "c1".into(),
                open: true
            },
            schema::AccessHook::Member {
                room: "c1".into(),
                user: "alice".into(),
                joined: true
            },
            schema::AccessHook::Member {
                room: "c1".into(),
                user: "bob".into(),
                joined: false
            },
        ]
    );
}

#[test]
fn unread_counts_others_messages_after_ones_own_last() {
    let ev = |seq: u64, from: &str, kind: &str, deleted: bool| StoredEvent {
        seq,
        json: bytes::Bytes::from(
            json!({"room": "r", "seq": seq, "ts": 1, "from": from, "msg_id": format!("m{seq}"),
                   "type": kind, "deleted": deleted})
            .to_string(),
        ),
    };
    let events = [
        ev(5, "bob", "member", false),
        ev(6, "bob", "message", false),
        ev(7, "alice", "message", false),
        ev(8, "bob", "message", false),
        ev(9, "bob", "reaction", false),
        ev(10, "bob", "message", true),
        ev(11, "carol", "message", false),
    ];
    assert_eq!(
        super::count_unread(&events, "alice", 0),
        2,
        "bob's 8 and carol's 11"
    );
    assert_eq!(
        super::count_unread(&events, "bob", 0),
        1,
        "carol's 11 after bob's own"
    );
    assert_eq!(
        super::count_unread(&events, "dave", 8),
        1,
        "after the marker only: carol's 11"
    );
    assert_eq!(
        super::count_unread(&events, "dave", 0),
        4,
        "no own event: 6, 7, 8, 11 (not the join, reaction or deleted one)"
    );
    assert_eq!(super::count_unread(&[], "alice", 11), 0);
    let junk = StoredEvent {
        seq: 12,
        json: bytes::Bytes::from_static(b"not json"),
    };
    assert_eq!(super::count_unread(&[junk], "alice", 12), 0);
}
