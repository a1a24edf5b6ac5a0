//! Tests of the service against the embedded store (in a temp dir), behind
//! a wrapper that can fail appends and counts reads.

use super::*;
use crate::store::embedded::{EmbeddedConfig, EmbeddedStore, FsyncPolicy};
use crate::store::{Appended, Markers, NewEvent, Page, Range, Role, StoreError, StoredEvent};
use async_trait::async_trait;
use serde_json::json;
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
    // three reads per room listed (a page's cut entry is read once more),
    // none for the rooms left
    let reads = f.store.room_reads.load(Ordering::SeqCst);
    assert!(reads <= 3 * (30 + pages), "{reads} reads");
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
        let Value::Object(o) = req else {
            unreachable!()
        };
        let p = f.chat.sync_within("alice", &o, max).await.expect("sync");
        assert!(
            page::json_len(&p) <= max,
            "page over {max}: {}",
            page::json_len(&p)
        );
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
