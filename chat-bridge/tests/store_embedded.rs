//! The conformance suite against the embedded store, plus embedded-only
//! tests (reopen, fsync policies, config).

use chat_bridge::store::embedded::{EmbeddedConfig, EmbeddedStore, FsyncPolicy};
use chat_bridge::store::{
    conformance, MarkerKind, Markers, MemberChange, MemberState, NewEvent, Range, Role, RoomInfo,
    RoomKind, Store,
};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tempfile::TempDir;

fn open(path: &Path, fsync: FsyncPolicy) -> EmbeddedStore {
    EmbeddedStore::open(EmbeddedConfig {
        path: path.to_owned(),
        fsync,
    })
    .expect("open the embedded store")
}

/// A fresh store and the directory it lives in; keep the directory alive
/// (bound in the test) until the store is dropped.
fn fresh() -> (TempDir, Arc<dyn Store>) {
    let dir = TempDir::new().expect("temp dir");
    let store = open(dir.path(), FsyncPolicy::Always);
    (dir, Arc::new(store))
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let (_dir, store) = fresh();
            conformance::$name(store).await;
        }
    )*};
}

chat_bridge::for_each_conformance_check!(conformance_tests);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_on_fresh_stores() {
    let dir = TempDir::new().expect("temp dir");
    let n = AtomicUsize::new(0);
    conformance::run_all(|| {
        let path = dir
            .path()
            .join(n.fetch_add(1, Ordering::Relaxed).to_string());
        async move { Arc::new(open(&path, FsyncPolicy::Never)) as Arc<dyn Store> }
    })
    .await;
    assert_eq!(n.load(Ordering::Relaxed), 20, "run_all runs every check");
}

fn new_event(room: &str, from: &str, msg_id: &str, member: Option<MemberChange>) -> NewEvent {
    let mut body = serde_json::Map::new();
    body.insert("type".into(), "message".into());
    NewEvent {
        room: room.into(),
        from: from.into(),
        msg_id: msg_id.into(),
        ts: 42,
        body,
        member,
        redacts: None,
    }
}

/// A message and its delete in one call (one write batch, as a rule): the
/// tombstone written over a key written earlier in the same batch wins, also
/// after the journal is replayed on reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_batch_redaction_survives_reopen() {
    let dir = TempDir::new().expect("temp dir");
    let mut msg = new_event("r", "alice", "m1", None);
    msg.body.insert("body".into(), "secret".into());
    let mut del = new_event("r", "alice", "d1", None);
    del.body.insert("type".into(), "delete".into());
    del.body.insert("target".into(), 1.into());
    del.redacts = Some(1);
    let before = {
        let store = open(dir.path(), FsyncPolicy::Never);
        let got = store
            .append_many(vec![msg, del])
            .await
            .expect("append_many");
        assert_eq!(got.len(), 2);
        store.read("r", Range::Latest, 10).await.expect("read")
    };
    let text = String::from_utf8_lossy(&before.events[0].json).into_owned();
    assert!(
        text.contains(r#""deleted":true"#) && !text.contains("secret"),
        "{text}"
    );
    let store = open(dir.path(), FsyncPolicy::Always);
    let after = store.read("r", Range::Latest, 10).await.expect("read");
    assert_eq!(after, before, "the tombstone persists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_everything() {
    let dir = TempDir::new().expect("temp dir");
    let info = RoomInfo {
        id: "r".into(),
        kind: RoomKind::Group,
        title: Some("t".into()),
        created_by: "alice".into(),
        created_ts: 1,
    };
    let join = |user: &str| MemberChange {
        user: user.into(),
        role: Role::Owner,
        state: MemberState::Joined,
        muted: false,
    };
    let (before, first) = {
        let store = open(dir.path(), FsyncPolicy::Never);
        assert!(store.create_room(info.clone()).await.expect("create"));
        let first = store
            .append(new_event("r", "alice", "m1", Some(join("alice"))))
            .await
            .expect("append");
        store
            .append(new_event("r", "bob", "m2", Some(join("bob"))))
            .await
            .expect("append");
        store
            .append(new_event("r", "alice", "m3", None))
            .await
            .expect("append");
        store
            .set_marker("r", "bob", MarkerKind::Read, 2)
            .await
            .expect("marker");
        let page = store.read("r", Range::Latest, 10).await.expect("read");
        (page, first)
    }; // dropped: the writer syncs and stops
    let store = open(dir.path(), FsyncPolicy::Always);
    assert_eq!(store.head("r").await.expect("head"), 3, "head persists");
    let page = store.read("r", Range::Latest, 10).await.expect("read");
    assert_eq!(page, before, "the stream persists byte for byte");
    let retry = store
        .append(new_event("r", "alice", "m1", None))
        .await
        .expect("append");
    assert!(retry.duplicate, "idempotency keys persist");
    assert_eq!(retry.event, first.event);
    let next = store
        .append(new_event("r", "carol", "m4", None))
        .await
        .expect("append");
    assert_eq!(
        (next.event.seq, next.duplicate),
        (4, false),
        "appends continue at head + 1"
    );
    assert_eq!(store.room("r").await.expect("room"), Some(info));
    let bob = store.member("r", "bob").await.expect("member");
    assert_eq!(
        bob.map(|m| (m.state, m.since)),
        Some((MemberState::Joined, 2))
    );
    let users: Vec<String> = store
        .members("r", None, 10)
        .await
        .expect("members")
        .into_iter()
        .map(|m| m.user)
        .collect();
    assert_eq!(users, ["alice", "bob"]);
    let rooms = store.user_rooms("alice").await.expect("user_rooms");
    assert_eq!(rooms.len(), 1);
    assert_eq!(
        store.markers("r", "bob").await.expect("markers"),
        Markers {
            read: 2,
            delivered: 0
        }
    );
    let (_, moved) = store
        .set_marker("r", "bob", MarkerKind::Read, 1)
        .await
        .expect("marker");
    assert!(!moved, "a persisted marker still only moves forward");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fsync_policy_works() {
    for policy in [
        FsyncPolicy::Always,
        FsyncPolicy::IntervalMs(5),
        FsyncPolicy::Never,
    ] {
        let dir = TempDir::new().expect("temp dir");
        {
            let store: Arc<dyn Store> = Arc::new(open(dir.path(), policy));
            let tasks: Vec<_> = (0..4)
                .map(|t| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        for i in 0..25 {
                            let id = format!("{t}-{i}");
                            store
                                .append(new_event("r", "u", &id, None))
                                .await
                                .expect("append");
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task");
            }
            // Let an interval sync fire with nothing else pending.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            store.flush().await.expect("flush");
            assert_eq!(store.head("r").await.expect("head"), 100, "{policy:?}");
        }
        let store = open(dir.path(), policy);
        assert_eq!(
            store.head("r").await.expect("head"),
            100,
            "{policy:?}: reopened"
        );
    }
}

#[test]
fn config_deserializes() {
    let cfg: EmbeddedConfig = serde_json::from_str(r#"{"path":"/data"}"#).expect("minimal config");
    assert_eq!(cfg.fsync, FsyncPolicy::Always, "fsync defaults to always");
    for (text, want) in [
        (r#""always""#, FsyncPolicy::Always),
        (r#""never""#, FsyncPolicy::Never),
        (r#"{"intervalms":5}"#, FsyncPolicy::IntervalMs(5)),
        (r#"{"interval_ms":7}"#, FsyncPolicy::IntervalMs(7)),
    ] {
        let cfg: EmbeddedConfig =
            serde_json::from_str(&format!(r#"{{"path":"/data","fsync":{text}}}"#)).expect(text);
        assert_eq!(cfg.fsync, want, "{text}");
    }
}
