//! [`process`] against a real [`Chat`] on the embedded store: the order in
//! which a batch's outputs reach the [`Outlet`].

use super::*;
use crate::chat::AccessSink;
use crate::store::embedded::{EmbeddedConfig, EmbeddedStore, FsyncPolicy};
use crate::store::{
    Appended, MarkerKind, Markers, Member, MemberChange, MemberState, NewEvent, Page, Range, Role,
    RoomInfo, RoomKind, Store, StoreError, StoredEvent,
};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::Notify;

struct NoSink;

impl AccessSink for NoSink {
    fn member(&self, _: &str, _: &str, _: bool) {}
    fn open(&self, _: &str, _: bool) {}
}

/// Records every publish, in the order the calls were made.
#[derive(Default)]
struct Recorder {
    published: Mutex<Vec<Out>>,
}

#[async_trait]
impl Outlet for Recorder {
    async fn publish(&self, outs: Vec<Out>) {
        self.published.lock().extend(outs);
    }
    async fn ack(&self, _: &[Taken]) {}
}

/// The embedded store, with the interleaving that used to publish out of
/// order made certain: a membership event (`append`) takes its seq first,
/// then the sends of the same room (`append_many`) take theirs and are
/// answered, and only then is the membership event answered.
struct Gate {
    inner: Arc<dyn Store>,
    member_stored: Notify,
    sends_done: Notify,
}

#[async_trait]
impl Store for Gate {
    async fn append(&self, event: NewEvent) -> Result<Appended, StoreError> {
        let r = self.inner.append(event).await;
        self.member_stored.notify_one();
        self.sends_done.notified().await;
        r
    }
    async fn append_many(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        self.member_stored.notified().await;
        let r = self.inner.append_many(events).await;
        self.sends_done.notify_one();
        r
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
        self.inner.read(room, range, limit).await
    }
    async fn create_room(&self, room: RoomInfo) -> Result<bool, StoreError> {
        self.inner.create_room(room).await
    }
    async fn room(&self, room: &str) -> Result<Option<RoomInfo>, StoreError> {
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

fn taken(topic: &str, payload: Value) -> Taken {
    Taken {
        topic: Bytes::from(topic.to_owned()),
        payload: Bytes::from(payload.to_string()),
        response_topic: None,
        corr: None,
        qos: 1,
        pkid: 1,
        origin: 0,
    }
}

/// A channel `r1` of alice's, with alice joined (seq 1).
async fn channel(store: &Arc<dyn Store>) {
    let info = RoomInfo {
        id: "r1".into(),
        kind: RoomKind::Channel,
        title: None,
        created_by: "alice".into(),
        created_ts: 1,
    };
    assert_eq!(store.create_room(info).await.ok(), Some(true));
    let mut body = serde_json::Map::new();
    body.insert("type".into(), "member".into());
    let join = NewEvent {
        room: "r1".into(),
        from: "alice".into(),
        msg_id: "$join:alice".into(),
        ts: 1,
        body,
        member: Some(MemberChange {
            user: "alice".into(),
            role: Role::Owner,
            state: MemberState::Joined,
            muted: false,
        }),
        redacts: None,
    };
    assert_eq!(store.append(join).await.map(|a| a.event.seq).ok(), Some(1));
}

/// A join (a request, in bob's group) and two sends to the same room (the
/// room's group) in one batch: the room's events are published in seq
/// order although the sends are stored and answered before the join is;
/// the join's `hooks/access` precedes its reply, every reply follows its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_publishes_each_rooms_events_in_seq_order() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let embedded = EmbeddedStore::open(EmbeddedConfig {
        path: dir.path().to_owned(),
        fsync: FsyncPolicy::Never,
    })
    .expect("open the embedded store");
    let inner: Arc<dyn Store> = Arc::new(embedded);
    channel(&inner).await;
    let store = Arc::new(Gate {
        inner,
        member_stored: Notify::new(),
        sends_done: Notify::new(),
    });
    let chat = Arc::new(Chat::new(
        store,
        "chat",
        Arc::new(NoSink),
        crate::chat::SendLimits::default(),
    ));
    let recorder = Arc::new(Recorder::default());
    let (tx, rx) = mpsc::channel(16);
    let reply = "chat/users/bob/replies/b1";
    for t in [
        taken(
            "chat/rpc/bob/rooms.join",
            json!({"room": "r1", "reply": reply, "corr": "j"}),
        ),
        taken(
            "chat/rooms/r1/send/alice",
            json!({"msg_id": "m1", "body": "one"}),
        ),
        taken(
            "chat/rooms/r1/send/alice",
            json!({"msg_id": "m2", "body": "two"}),
        ),
    ] {
        tx.send(t).await.expect("queue");
    }
    drop(tx); // one batch, then process returns
    let outlet: Arc<dyn Outlet> = recorder.clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        process(outlet, chat, rx, 16, "chat".into()),
    )
    .await
    .expect("the batch is handled");

    let published = recorder.published.lock().clone();
    let json = |o: &Out| serde_json::from_slice::<Value>(&o.payload).unwrap_or_default();
    let events: Vec<(u64, Value)> = published
        .iter()
        .filter(|o| o.topic == "chat/rooms/r1/events")
        .map(|o| (json(o)["seq"].as_u64().unwrap_or(0), json(o)))
        .collect();
    let seqs: Vec<u64> = events.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [2, 3, 4], "events in seq order: {events:?}");
    assert_eq!(events[0].1["type"], "member", "bob's join took seq 2");
    let at = |pred: &dyn Fn(&Out) -> bool| {
        published
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("not published: {published:?}"))
    };
    let access = at(&|o| o.topic == "chat/hooks/access");
    let join_reply = at(&|o| o.topic == reply);
    let join_event = at(&|o| o.topic == "chat/rooms/r1/events" && json(o)["seq"] == 2);
    assert!(
        join_event < access && access < join_reply,
        "event, then hooks/access, then the reply: {published:?}"
    );
    assert_eq!(json(&published[join_reply])["result"]["seq"], 2);
}
