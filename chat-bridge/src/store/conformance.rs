//! The conformance suite every [`Store`] implementation must pass.
//!
//! Each check is a `pub async fn name(store: Arc<dyn Store>)` that panics
//! (assert!) on a violation, so an implementation's test file can run each as
//! its own test; [`run_all`] runs them all, each on a fresh store. Checks use
//! room and user ids unique to the call, so they also work against a shared
//! database (ScyllaDB). Some checks spawn tokio tasks: run them on a
//! multi-thread runtime to exercise real concurrency.

use super::{
    Appended, Expired, KeyAt, MarkerKind, Markers, Member, MemberChange, MemberState, NewEvent,
    Page, Range, Role, RoomInfo, RoomKind, Store, PAGE_MAX,
};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Calls `$m!(check, check, ...)` with the name of every check, so an
/// implementation's test file gets one `#[test]` per check without repeating
/// the list: `chat_bridge::for_each_conformance_check!(my_tests);`.
#[macro_export]
macro_rules! for_each_conformance_check {
    ($m:ident) => {
        $m!(
            seq_starts_at_one_and_is_gap_free,
            concurrent_appends_one_room,
            rooms_are_independent,
            idempotent_retry,
            idempotent_retry_concurrent,
            same_msg_id_other_sender_is_new,
            stored_json,
            paging_edges,
            paging_clamps_limit,
            create_room_once,
            membership,
            membership_transitions,
            markers_move_forward,
            flush_works,
            append_many_keeps_order,
            deletes_redact,
            blocks,
            rooms_pages_list_every_room,
            retention_expires_oldest,
            room_settings_replace,
        );
    };
}

/// Runs every check, each against a fresh store from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    macro_rules! run {
        ($($check:ident),* $(,)?) => {$(
            $check(make().await).await;
        )*};
    }
    for_each_conformance_check!(run);
}

/// An id unique to this process run and call: `tag-<time>-<counter>`.
fn uid(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("{tag}-{t:x}-{}", N.fetch_add(1, Ordering::Relaxed))
}

fn event(room: &str, from: &str, msg_id: &str) -> NewEvent {
    let mut body = serde_json::Map::new();
    body.insert("type".into(), "message".into());
    body.insert("body".into(), format!("text of {msg_id}").into());
    NewEvent {
        room: room.to_owned(),
        from: from.to_owned(),
        msg_id: msg_id.to_owned(),
        ts: 1_760_000_000_000,
        body,
        member: None,
        redacts: None,
    }
}

fn member_event(room: &str, msg_id: &str, user: &str, state: MemberState, muted: bool) -> NewEvent {
    let mut e = event(room, user, msg_id);
    e.body.insert("type".into(), "member".into());
    e.member = Some(MemberChange {
        user: user.to_owned(),
        role: Role::Member,
        state,
        muted,
    });
    e
}

async fn append(store: &Arc<dyn Store>, e: NewEvent) -> Appended {
    let what = format!("append {}/{}/{}", e.room, e.from, e.msg_id);
    match store.append(e).await {
        Ok(a) => a,
        Err(err) => panic!("{what} failed: {err}"),
    }
}

/// Appends `n` new events to `room` (msg ids `m0..`), in order; returns their seqs.
async fn fill(store: &Arc<dyn Store>, room: &str, n: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(n);
    for i in 0..n {
        seqs.push(
            append(store, event(room, "filler", &format!("m{i}")))
                .await
                .event
                .seq,
        );
    }
    seqs
}

async fn head(store: &Arc<dyn Store>, room: &str) -> u64 {
    store
        .head(room)
        .await
        .unwrap_or_else(|e| panic!("head({room}): {e}"))
}

async fn read(store: &Arc<dyn Store>, room: &str, range: Range, limit: usize) -> Page {
    let page = store
        .read(room, range, limit)
        .await
        .unwrap_or_else(|e| panic!("read({room}, {range:?}, {limit}): {e}"));
    for e in &page.events {
        let v: serde_json::Value = serde_json::from_slice(&e.json).unwrap_or_else(|err| {
            panic!(
                "read({room}, {range:?}): event {} is not JSON: {err}",
                e.seq
            )
        });
        assert_eq!(
            v["seq"], e.seq,
            "read({room}, {range:?}): json seq differs from StoredEvent::seq"
        );
        assert_eq!(v["room"], room, "read({room}, {range:?}): json room");
    }
    page
}

fn seqs(page: &Page) -> Vec<u64> {
    page.events.iter().map(|e| e.seq).collect()
}

/// Checks a page: its seqs, has_more and head.
fn expect_page(
    page: &Page,
    what: &str,
    want: impl IntoIterator<Item = u64>,
    has_more: bool,
    head: u64,
) {
    assert_eq!(
        seqs(page),
        want.into_iter().collect::<Vec<_>>(),
        "{what}: seqs"
    );
    assert_eq!(page.has_more, has_more, "{what}: has_more");
    assert_eq!(page.head, head, "{what}: head");
}

/// The first seq of a room is 1, and each append takes head + 1.
pub async fn seq_starts_at_one_and_is_gap_free(store: Arc<dyn Store>) {
    let room = uid("seq");
    assert_eq!(head(&store, &room).await, 0, "an empty room's head is 0");
    for want in 1..=5u64 {
        let a = append(&store, event(&room, "alice", &format!("m{want}"))).await;
        assert_eq!(a.event.seq, want, "append #{want} gets seq {want}");
        assert!(!a.duplicate, "a new msg_id is not a duplicate");
        assert_eq!(
            head(&store, &room).await,
            want,
            "head follows the last append"
        );
    }
}

/// `append_many` allocates in order, detects a duplicate inside the batch
/// and one already stored, and continues from the head.
pub async fn append_many_keeps_order(store: Arc<dyn Store>) {
    let room = uid("many");
    append(&store, event(&room, "alice", "m0")).await;
    let batch = vec![
        event(&room, "alice", "m1"),
        event(&room, "bob", "m1"),
        event(&room, "alice", "m0"),
        event(&room, "alice", "m1"),
        event(&room, "alice", "m2"),
    ];
    let got: Vec<(u64, bool)> = store
        .append_many(batch)
        .await
        .expect("append_many")
        .into_iter()
        .map(|r| r.map(|a| (a.event.seq, a.duplicate)).expect("each append"))
        .collect();
    assert_eq!(
        got,
        vec![(2, false), (3, false), (1, true), (2, true), (4, false)],
        "seqs in call order; duplicates answered with the original seq"
    );
    assert_eq!(head(&store, &room).await, 4);
}

/// 8 concurrent tasks x 200 appends to one room produce exactly 1..=1600,
/// and each task sees its own appends in increasing order.
pub async fn concurrent_appends_one_room(store: Arc<dyn Store>) {
    const TASKS: usize = 8;
    const EACH: usize = 200;
    let room = uid("conc");
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (store, room) = (store.clone(), room.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(EACH);
            for i in 0..EACH {
                got.push(
                    append(&store, event(&room, &format!("u{t}"), &format!("m{i}")))
                        .await
                        .event
                        .seq,
                );
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let got = t
            .await
            .unwrap_or_else(|e| panic!("append task failed: {e}"));
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "one caller's appends get increasing seqs: {got:?}"
        );
        all.extend(got);
    }
    all.sort_unstable();
    let n = (TASKS * EACH) as u64;
    assert_eq!(
        all,
        (1..=n).collect::<Vec<_>>(),
        "seqs are exactly 1..={n}: no gap, no repeat"
    );
    assert_eq!(head(&store, &room).await, n);
    let mut after = 0;
    while after < n {
        let page = read(&store, &room, Range::After(after), PAGE_MAX).await;
        let want: Vec<u64> = (after + 1..=n.min(after + PAGE_MAX as u64)).collect();
        assert_eq!(seqs(&page), want, "stream read back after {after}");
        after = want.last().copied().unwrap_or(n);
    }
}

/// Interleaved (and concurrent) appends across rooms: each room counts on its own.
pub async fn rooms_are_independent(store: Arc<dyn Store>) {
    const ROOMS: usize = 12;
    const EACH: u64 = 15;
    let rooms: Vec<String> = (0..ROOMS).map(|_| uid("indep")).collect();
    for i in 0..EACH {
        // Round-robin, sequential half...
        for room in &rooms[..ROOMS / 2] {
            let a = append(&store, event(room, "bob", &format!("m{i}"))).await;
            assert_eq!(a.event.seq, i + 1, "{room}: round-robin append {i}");
        }
    }
    // ...and the other half concurrently, one task per room.
    let mut tasks = Vec::new();
    for room in &rooms[ROOMS / 2..] {
        let (store, room) = (store.clone(), room.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let a = append(&store, event(&room, "bob", &format!("m{i}"))).await;
                assert_eq!(a.event.seq, i + 1, "{room}: concurrent append {i}");
            }
        }));
    }
    for t in tasks {
        t.await
            .unwrap_or_else(|e| panic!("append task failed: {e}"));
    }
    for room in &rooms {
        assert_eq!(head(&store, room).await, EACH, "{room}: head");
        let page = read(&store, room, Range::Latest, PAGE_MAX).await;
        expect_page(
            &page,
            &format!("{room}: whole stream"),
            1..=EACH,
            false,
            EACH,
        );
    }
}

/// A retry of (room, from, msg_id) returns the original event, duplicate =
/// true, and stores nothing.
pub async fn idempotent_retry(store: Arc<dyn Store>) {
    let room = uid("idem");
    fill(&store, &room, 2).await;
    let first = append(&store, event(&room, "alice", "retry-me")).await;
    assert_eq!(first.event.seq, 3);
    assert!(!first.duplicate);
    let mut retry = event(&room, "alice", "retry-me");
    retry.body.insert("body".into(), "a different body".into());
    retry.ts += 5;
    let again = append(&store, retry).await;
    assert!(again.duplicate, "a retry is flagged duplicate");
    assert_eq!(
        again.event, first.event,
        "a retry returns the original event (seq and bytes)"
    );
    assert_eq!(head(&store, &room).await, 3, "a retry does not move head");
    let next = append(&store, event(&room, "alice", "next")).await;
    assert_eq!(
        next.event.seq, 4,
        "the next new event follows without a gap"
    );
    let page = read(&store, &room, Range::Latest, 10).await;
    expect_page(&page, "after a retry", 1..=4, false, 4);
}

/// Retries racing the first attempt: exactly one is new, all get its seq.
pub async fn idempotent_retry_concurrent(store: Arc<dyn Store>) {
    const KEYS: usize = 20;
    const COPIES: usize = 4;
    let room = uid("idem-race");
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        for _ in 0..COPIES {
            let (store, room) = (store.clone(), room.clone());
            tasks.push(tokio::spawn(async move {
                (
                    k,
                    append(&store, event(&room, "carol", &format!("k{k}"))).await,
                )
            }));
        }
    }
    let mut by_key: Vec<Vec<Appended>> = vec![Vec::new(); KEYS];
    for t in tasks {
        let (k, a) = t
            .await
            .unwrap_or_else(|e| panic!("append task failed: {e}"));
        by_key[k].push(a);
    }
    for (k, got) in by_key.iter().enumerate() {
        let new = got.iter().filter(|a| !a.duplicate).count();
        assert_eq!(
            new, 1,
            "key k{k}: exactly one of {COPIES} racing appends is new"
        );
        assert!(
            got.iter().all(|a| a.event == got[0].event),
            "key k{k}: every racing append returns the same event"
        );
    }
    assert_eq!(head(&store, &room).await, KEYS as u64, "one event per key");
}

/// The idempotency key includes the sender.
pub async fn same_msg_id_other_sender_is_new(store: Arc<dyn Store>) {
    let room = uid("idem-from");
    let a = append(&store, event(&room, "alice", "same")).await;
    let b = append(&store, event(&room, "bob", "same")).await;
    assert!(
        !b.duplicate,
        "same msg_id from another sender is a new event"
    );
    assert_eq!((a.event.seq, b.event.seq), (1, 2));
    let other_room = uid("idem-room");
    let c = append(&store, event(&other_room, "alice", "same")).await;
    assert!(
        !c.duplicate,
        "same (from, msg_id) in another room is a new event"
    );
    assert_eq!(c.event.seq, 1);
}

/// The stored payload: room, seq, ts, from, msg_id first, then the body;
/// the body cannot override the server's fields; reads return the same bytes.
pub async fn stored_json(store: Arc<dyn Store>) {
    let room = uid("json");
    fill(&store, &room, 1).await;
    let mut e = event(&room, "alice", "j1");
    e.ts = 1_234;
    for (k, v) in [
        ("seq", "999"),
        ("room", "\"evil\""),
        ("from", "\"mallory\""),
        ("ts", "1"),
        ("msg_id", "\"x\""),
    ] {
        e.body
            .insert(k.into(), serde_json::from_str(v).unwrap_or_default());
    }
    e.body
        .insert("extra".into(), serde_json::json!({"nested": [1, 2]}));
    let a = append(&store, e).await;
    let v: serde_json::Value = serde_json::from_slice(&a.event.json)
        .unwrap_or_else(|err| panic!("stored json is not JSON: {err}"));
    assert_eq!(v["room"], room.as_str(), "room is the server's");
    assert_eq!(v["seq"], 2, "seq is the server's, not the body's");
    assert_eq!(v["ts"], 1_234, "ts is the server's");
    assert_eq!(v["from"], "alice", "from is the server's");
    assert_eq!(v["msg_id"], "j1", "msg_id is the server's");
    assert_eq!(v["type"], "message", "body fields are kept");
    assert_eq!(v["body"], "text of j1");
    assert_eq!(v["extra"], serde_json::json!({"nested": [1, 2]}));
    assert_eq!(
        v.as_object().map(|o| o.len()),
        Some(8),
        "no other fields: {v}"
    );
    assert!(
        a.event.json.starts_with(br#"{"room":"#),
        "the payload starts with room: {}",
        String::from_utf8_lossy(&a.event.json)
    );
    let page = read(&store, &room, Range::After(1), 1).await;
    assert_eq!(
        page.events,
        vec![a.event],
        "read returns the exact stored bytes"
    );
}

fn delete_event(room: &str, from: &str, msg_id: &str, target: u64) -> NewEvent {
    let mut e = event(room, from, msg_id);
    e.body.remove("body");
    e.body.insert("type".into(), "delete".into());
    e.body.insert("target".into(), target.into());
    e.redacts = Some(target);
    e
}

fn json_of(e: &super::StoredEvent) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_slice(&e.json)
        .unwrap_or_else(|err| panic!("event {} is not a JSON object: {err}", e.seq))
}

/// An event with `redacts` turns the target into its tombstone (the
/// envelope and `"deleted":true`, nothing else) in reads, lookups and
/// duplicate answers; retries and second deletes change nothing more; a
/// target appended in the same call is redacted too.
pub async fn deletes_redact(store: Arc<dyn Store>) {
    let room = uid("redact");
    let mut secret = event(&room, "alice", "m1");
    secret.body.insert("body".into(), "the secret".into());
    secret
        .body
        .insert("meta".into(), serde_json::json!({"mention": "bob"}));
    secret.body.insert("reply_to".into(), 1.into());
    let original = append(&store, secret.clone()).await.event;
    append(&store, event(&room, "bob", "m2")).await;
    let kept = read(&store, &room, Range::After(1), 1).await.events;
    let del = append(&store, delete_event(&room, "alice", "d1", 1)).await;
    assert_eq!((del.event.seq, del.duplicate), (3, false));
    let v = json_of(&del.event);
    assert_eq!(
        (&v["type"], &v["target"]),
        (&"delete".into(), &1.into()),
        "the delete event is stored as given"
    );
    let page = read(&store, &room, Range::Latest, 10).await;
    expect_page(&page, "after the delete", 1..=3, false, 3);
    let tomb = json_of(&page.events[0]);
    let mut want = json_of(&original);
    want.retain(|k, _| ["room", "seq", "ts", "from", "msg_id", "type"].contains(&k.as_str()));
    want.insert("deleted".into(), true.into());
    assert_eq!(
        tomb, want,
        "the target is its tombstone: no body, meta or reply_to"
    );
    assert_eq!(page.events[1..2], kept[..], "other events are untouched");
    assert_eq!(
        page.events[2], del.event,
        "the delete event reads back as stored"
    );
    let found = store
        .lookup(&room, "alice", "m1")
        .await
        .unwrap_or_else(|e| panic!("lookup: {e}"));
    assert_eq!(
        found.as_ref(),
        Some(&page.events[0]),
        "lookup sees the tombstone"
    );
    let none = store.lookup(&room, "alice", "nope").await;
    assert!(
        matches!(none, Ok(None)),
        "lookup of an unknown key: {none:?}"
    );
    let again = append(&store, secret).await;
    assert!(
        again.duplicate,
        "a retry of the deleted message is a duplicate"
    );
    assert_eq!(again.event, page.events[0], "answered with the tombstone");
    // a retried delete and a second delete change nothing more
    let retry = append(&store, delete_event(&room, "alice", "d1", 1)).await;
    assert_eq!((retry.event.seq, retry.duplicate), (3, true));
    let second = append(&store, delete_event(&room, "carol", "d2", 1)).await;
    assert_eq!(second.event.seq, 4);
    let page = read(&store, &room, Range::Latest, 10).await;
    assert_eq!(json_of(&page.events[0]), want, "the tombstone is stable");
    // a target appended in the same call as its delete
    let got: Vec<u64> = store
        .append_many(vec![
            event(&room, "bob", "m5"),
            delete_event(&room, "bob", "d5", 5),
        ])
        .await
        .expect("append_many")
        .into_iter()
        .map(|r| r.map(|a| a.event.seq).expect("each append"))
        .collect();
    assert_eq!(got, [5, 6]);
    let page = read(&store, &room, Range::After(4), 10).await;
    expect_page(&page, "same-call delete", 5..=6, false, 6);
    let v = json_of(&page.events[0]);
    assert_eq!(
        v.get("deleted"),
        Some(&true.into()),
        "redacted in the same call: {v:?}"
    );
    assert!(v.get("body").is_none(), "no body: {v:?}");
    // a target that is not an earlier event redacts nothing
    let odd = append(&store, delete_event(&room, "bob", "d7", 99)).await;
    assert_eq!(odd.event.seq, 7);
    assert_eq!(head(&store, &room).await, 7);
}

/// Latest / Before / After on an empty room, at the edges and at exact page boundaries.
pub async fn paging_edges(store: Arc<dyn Store>) {
    let empty = uid("page-empty");
    for range in [
        Range::Latest,
        Range::Before(10),
        Range::Before(1),
        Range::After(0),
        Range::After(5),
    ] {
        let page = read(&store, &empty, range, 10).await;
        expect_page(&page, &format!("empty room {range:?}"), [], false, 0);
    }
    let room = uid("page");
    fill(&store, &room, 25).await;
    let cases: &[(Range, usize, std::ops::RangeInclusive<u64>, bool)] = &[
        (Range::Latest, 10, 16..=25, true),
        (Range::Latest, 25, 1..=25, false),
        (Range::Latest, 26, 1..=25, false),
        (Range::Latest, 24, 2..=25, true),
        (Range::Before(16), 10, 6..=15, true),
        (Range::Before(11), 10, 1..=10, false),
        (Range::Before(12), 10, 2..=11, true),
        (Range::Before(2), 10, 1..=1, false),
        (Range::Before(26), 5, 21..=25, true),
        (Range::Before(1000), 30, 1..=25, false),
        (Range::After(0), 10, 1..=10, true),
        (Range::After(15), 10, 16..=25, false),
        (Range::After(14), 10, 15..=24, true),
        (Range::After(24), 10, 25..=25, false),
        (Range::After(0), 25, 1..=25, false),
    ];
    for (range, limit, want, more) in cases.iter().cloned() {
        let page = read(&store, &room, range, limit).await;
        expect_page(&page, &format!("{range:?} limit {limit}"), want, more, 25);
    }
    for range in [
        Range::Before(1),
        Range::Before(0),
        Range::After(25),
        Range::After(1000),
        Range::After(u64::MAX),
    ] {
        let page = read(&store, &room, range, 10).await;
        expect_page(&page, &format!("{range:?} (nothing there)"), [], false, 25);
    }
}

/// limit 0 reads 1; a limit above PAGE_MAX reads PAGE_MAX.
pub async fn paging_clamps_limit(store: Arc<dyn Store>) {
    let room = uid("clamp");
    let n = PAGE_MAX as u64 + 5;
    // Concurrent appends so group-committing stores fill the room quickly.
    let tasks: Vec<_> = (0..5u64)
        .map(|t| {
            let (store, room) = (store.clone(), room.clone());
            tokio::spawn(async move {
                for i in (t..n).step_by(5) {
                    append(&store, event(&room, "filler", &format!("m{i}"))).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await
            .unwrap_or_else(|e| panic!("append task failed: {e}"));
    }
    let page = read(&store, &room, Range::Latest, 0).await;
    expect_page(&page, "Latest limit 0", [n], true, n);
    let page = read(&store, &room, Range::After(3), 0).await;
    expect_page(&page, "After(3) limit 0", [4], true, n);
    let page = read(&store, &room, Range::Latest, PAGE_MAX + 100).await;
    expect_page(&page, "Latest limit > PAGE_MAX", 6..=n, true, n);
    let page = read(&store, &room, Range::After(0), usize::MAX).await;
    expect_page(
        &page,
        "After(0) limit usize::MAX",
        1..=PAGE_MAX as u64,
        true,
        n,
    );
}

/// create_room is create-if-absent.
pub async fn create_room_once(store: Arc<dyn Store>) {
    let id = uid("create");
    let first = RoomInfo {
        id: id.clone(),
        kind: RoomKind::Group,
        title: Some("first".into()),
        created_by: "alice".into(),
        created_ts: 10,
    };
    let second = RoomInfo {
        kind: RoomKind::Channel,
        title: None,
        created_by: "bob".into(),
        created_ts: 20,
        ..first.clone()
    };
    assert_eq!(
        store.room(&id).await.ok(),
        Some(None),
        "no room before creation"
    );
    assert_eq!(
        store.create_room(first.clone()).await.ok(),
        Some(true),
        "first create succeeds"
    );
    assert_eq!(
        store.create_room(second).await.ok(),
        Some(false),
        "second create returns false"
    );
    assert_eq!(
        store.room(&id).await.ok(),
        Some(Some(first)),
        "the first description is kept"
    );
    let racing: Vec<_> = (0..6)
        .map(|i| {
            let store = store.clone();
            let info = RoomInfo {
                id: format!("{id}-race"),
                kind: RoomKind::Direct,
                title: None,
                created_by: format!("u{i}"),
                created_ts: i,
            };
            tokio::spawn(async move { store.create_room(info).await.ok() })
        })
        .collect();
    let mut wins = 0;
    for t in racing {
        if t.await.ok().flatten() == Some(true) {
            wins += 1;
        }
    }
    assert_eq!(wins, 1, "exactly one of racing creates wins");
}

async fn member(store: &Arc<dyn Store>, room: &str, user: &str) -> Option<Member> {
    store
        .member(room, user)
        .await
        .unwrap_or_else(|e| panic!("member({room}, {user}): {e}"))
}

/// Membership rows ride on events: member(), members() paging, user_rooms().
pub async fn membership(store: Arc<dyn Store>) {
    let room = uid("members");
    let users: Vec<String> = [7, 2, 9, 0, 5, 1, 8, 3, 6, 4]
        .iter()
        .map(|i| format!("user{i:02}"))
        .collect();
    for (i, u) in users.iter().enumerate() {
        let a = append(
            &store,
            member_event(&room, &format!("join{i}"), u, MemberState::Joined, false),
        )
        .await;
        let row = member(&store, &room, u).await;
        let want = Member {
            room: room.clone(),
            user: u.clone(),
            role: Role::Member,
            state: MemberState::Joined,
            muted: false,
            since: a.event.seq,
        };
        assert_eq!(row, Some(want), "member({u}) after its join event");
    }
    assert_eq!(
        member(&store, &room, "nobody").await,
        None,
        "no row for a stranger"
    );
    let mut sorted = users.clone();
    sorted.sort();
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .members(&room, after.as_deref(), 3)
            .await
            .unwrap_or_else(|e| panic!("members({room}, {after:?}): {e}"));
        assert!(page.len() <= 3, "members() returns at most limit rows");
        let Some(last) = page.last() else { break };
        after = Some(last.user.clone());
        listed.extend(page.into_iter().map(|m| m.user));
    }
    assert_eq!(
        listed, sorted,
        "members() pages through every row ordered by user id"
    );
    let tail = store.members(&room, Some("user08"), 10).await.ok();
    assert_eq!(
        tail.map(|m| m.len()),
        Some(1),
        "members() after user08 returns only user09"
    );
    let past = store.members(&room, Some("zzz"), 10).await.ok();
    assert_eq!(
        past,
        Some(Vec::new()),
        "members() after the last user is empty"
    );

    let alice = uid("alice");
    let mut rooms: Vec<String> = (0..4).map(|_| uid("ur")).collect();
    rooms.reverse();
    for r in &rooms {
        append(
            &store,
            member_event(r, "join", &alice, MemberState::Joined, false),
        )
        .await;
    }
    rooms.sort();
    let mine = store
        .user_rooms(&alice)
        .await
        .unwrap_or_else(|e| panic!("user_rooms: {e}"));
    assert_eq!(
        mine.iter().map(|m| m.room.clone()).collect::<Vec<_>>(),
        rooms,
        "user_rooms() ordered by room id"
    );
    assert!(mine
        .iter()
        .all(|m| m.user == alice && m.state == MemberState::Joined));
    assert_eq!(
        store.user_rooms(&uid("nobody")).await.ok(),
        Some(Vec::new())
    );
}

/// invited -> joined -> left -> joined, banned, muted: the latest event wins
/// in both directions (room -> user and user -> room).
pub async fn membership_transitions(store: Arc<dyn Store>) {
    let room = uid("trans");
    let user = uid("dave");
    let steps = [
        (MemberState::Invited, false),
        (MemberState::Joined, false),
        (MemberState::Left, false),
        (MemberState::Joined, false),
        (MemberState::Joined, true),
        (MemberState::Banned, false),
    ];
    for (i, (state, muted)) in steps.into_iter().enumerate() {
        let a = append(
            &store,
            member_event(&room, &format!("s{i}"), &user, state, muted),
        )
        .await;
        let row = member(&store, &room, &user)
            .await
            .unwrap_or_else(|| panic!("step {i}: no member row"));
        assert_eq!(
            (row.state, row.muted, row.since),
            (state, muted, a.event.seq),
            "step {i}: member()"
        );
        let mine = store
            .user_rooms(&user)
            .await
            .unwrap_or_else(|e| panic!("user_rooms: {e}"));
        assert_eq!(mine, vec![row], "step {i}: user_rooms() shows the same row");
    }
    let all = store
        .members(&room, None, 10)
        .await
        .unwrap_or_else(|e| panic!("members: {e}"));
    assert_eq!(all.len(), 1, "transitions update one row, never add rows");
}

/// Markers only move forward; read and delivered are independent.
pub async fn markers_move_forward(store: Arc<dyn Store>) {
    let (room, user) = (uid("marks"), uid("erin"));
    let set = |kind, seq| {
        let (store, room, user) = (store.clone(), room.clone(), user.clone());
        async move {
            store
                .set_marker(&room, &user, kind, seq)
                .await
                .unwrap_or_else(|e| panic!("set_marker({kind:?}, {seq}): {e}"))
        }
    };
    let m = |read, delivered| Markers { read, delivered };
    assert_eq!(
        store.markers(&room, &user).await.ok(),
        Some(m(0, 0)),
        "no markers yet"
    );
    assert_eq!(
        set(MarkerKind::Read, 5).await,
        (m(5, 0), true),
        "read 0 -> 5 moves"
    );
    assert_eq!(
        set(MarkerKind::Read, 3).await,
        (m(5, 0), false),
        "read 5 -> 3 is ignored"
    );
    assert_eq!(
        set(MarkerKind::Read, 5).await,
        (m(5, 0), false),
        "read 5 -> 5 is ignored"
    );
    assert_eq!(
        set(MarkerKind::Delivered, 2).await,
        (m(5, 2), true),
        "delivered moves on its own"
    );
    assert_eq!(set(MarkerKind::Delivered, 9).await, (m(5, 9), true));
    assert_eq!(
        set(MarkerKind::Read, 7).await,
        (m(7, 9), true),
        "read moves without touching delivered"
    );
    assert_eq!(
        store.markers(&room, &user).await.ok(),
        Some(m(7, 9)),
        "markers() reads them back"
    );
    assert_eq!(
        store.markers(&room, "someone-else").await.ok(),
        Some(m(0, 0)),
        "per user"
    );
    assert_eq!(
        store.markers(&uid("other"), &user).await.ok(),
        Some(m(0, 0)),
        "per room"
    );
    // Racing moves: the highest wins.
    let racing: Vec<_> = (10..30)
        .rev()
        .map(|s| tokio::spawn(set(MarkerKind::Delivered, s)))
        .collect();
    for t in racing {
        t.await.unwrap_or_else(|e| panic!("set_marker task: {e}"));
    }
    assert_eq!(
        store.markers(&room, &user).await.ok(),
        Some(m(7, 29)),
        "racing moves end at the highest"
    );
}

/// flush() succeeds, also with nothing pending, and changes nothing visible.
pub async fn flush_works(store: Arc<dyn Store>) {
    store
        .flush()
        .await
        .unwrap_or_else(|e| panic!("flush on an idle store: {e}"));
    let room = uid("flush");
    fill(&store, &room, 3).await;
    store.flush().await.unwrap_or_else(|e| panic!("flush: {e}"));
    assert_eq!(head(&store, &room).await, 3);
    let page = read(&store, &room, Range::Latest, 10).await;
    expect_page(&page, "after flush", 1..=3, false, 3);
}

/// Blocking: per ordered pair, idempotent both ways, listed in id order.
pub async fn blocks(store: Arc<dyn Store>) {
    let (a, b, c) = (uid("blocker"), uid("b"), uid("c"));
    let is = |u: String, t: String| {
        let store = store.clone();
        async move {
            store
                .is_blocked(&u, &t)
                .await
                .unwrap_or_else(|e| panic!("is_blocked: {e}"))
        }
    };
    assert!(!is(a.clone(), b.clone()).await, "nobody blocks at first");
    for (t, on) in [(&b, true), (&b, true), (&c, true)] {
        store
            .set_blocked(&a, t, on)
            .await
            .unwrap_or_else(|e| panic!("set_blocked: {e}"));
    }
    assert!(is(a.clone(), b.clone()).await && is(a.clone(), c.clone()).await);
    assert!(!is(b.clone(), a.clone()).await, "a block has a direction");
    let listed = store.blocked_users(&a, 10).await.ok();
    assert_eq!(listed, Some(vec![b.clone(), c.clone()]), "listed in order");
    assert_eq!(
        store.blocked_users(&a, 1).await.ok().map(|v| v.len()),
        Some(1)
    );
    for _ in 0..2 {
        store
            .set_blocked(&a, &b, false)
            .await
            .unwrap_or_else(|e| panic!("unblock: {e}"));
    }
    assert!(!is(a.clone(), b.clone()).await, "unblocked");
    assert_eq!(store.blocked_users(&a, 10).await.ok(), Some(vec![c]));
}

/// `rooms_page` walks every room once, with its kind.
pub async fn rooms_pages_list_every_room(store: Arc<dyn Store>) {
    let mut want = std::collections::HashMap::new();
    for kind in [RoomKind::Group, RoomKind::Channel, RoomKind::Direct] {
        let id = uid("listed");
        let info = RoomInfo {
            id: id.clone(),
            kind,
            title: None,
            created_by: "u".into(),
            created_ts: 1,
        };
        assert_eq!(store.create_room(info).await.ok(), Some(true));
        want.insert(id, kind);
    }
    let mut cursor = None;
    let mut seen = std::collections::HashMap::new();
    for _ in 0..100_000 {
        let page = store
            .rooms_page(cursor, 2)
            .await
            .unwrap_or_else(|e| panic!("rooms_page: {e}"));
        for (id, kind) in page.rooms {
            assert!(seen.insert(id.clone(), kind).is_none(), "{id} listed twice");
        }
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    assert!(cursor.is_none(), "the pages end");
    for (id, kind) in want {
        assert_eq!(seen.get(&id), Some(&kind), "{id}");
    }
}

/// Retention removes the oldest events and their keys, never the head,
/// never moves back, and forgets a key only while it points at its event.
pub async fn retention_expires_oldest(store: Arc<dyn Store>) {
    let room = uid("retain");
    fill(&store, &room, 10).await;
    store.flush().await.unwrap_or_else(|e| panic!("flush: {e}"));
    let expired = |store: Arc<dyn Store>, room: String| async move {
        store
            .expired(&room)
            .await
            .unwrap_or_else(|e| panic!("expired: {e}"))
    };
    assert_eq!(
        expired(store.clone(), room.clone()).await,
        Expired::default()
    );
    let key = |i: u64| KeyAt {
        from: "filler".into(),
        msg_id: format!("m{}", i - 1),
        seq: i,
    };
    let expire = |keys: Vec<KeyAt>, k: u64, e: u64| {
        let (store, room) = (store.clone(), room.clone());
        async move {
            store
                .expire(&room, keys, k, e)
                .await
                .unwrap_or_else(|err| panic!("expire: {err}"))
        }
    };
    let got = expire((1..6).map(key).collect(), 6, 4).await;
    let want = Expired {
        events_before: 4,
        keys_before: 6,
    };
    assert_eq!(got, want);
    assert_eq!(expired(store.clone(), room.clone()).await, want);
    let page = read(&store, &room, Range::After(0), 100).await;
    assert_eq!(
        seqs(&page),
        (4..=10).collect::<Vec<_>>(),
        "events 1..=3 are gone"
    );
    let page = read(&store, &room, Range::Latest, 100).await;
    assert_eq!(seqs(&page), (4..=10).collect::<Vec<_>>());
    assert_eq!(head(&store, &room).await, 10, "the head stays");
    // m0's key (seq 1) is forgotten: the same msg_id is a new event
    let again = append(&store, event(&room, "filler", "m0")).await;
    assert_eq!((again.event.seq, again.duplicate), (11, false));
    // m6's key (seq 7) is kept
    let dup = append(&store, event(&room, "filler", "m6")).await;
    assert_eq!((dup.event.seq, dup.duplicate), (7, true));
    assert_eq!(
        store
            .lookup(&room, "filler", "m6")
            .await
            .ok()
            .flatten()
            .map(|e| e.seq),
        Some(7)
    );
    // a key that points at a newer event is not forgotten with the old one
    expire(vec![key(1)], 6, 4).await;
    let dup = append(&store, event(&room, "filler", "m0")).await;
    assert_eq!((dup.event.seq, dup.duplicate), (11, true));
    // nothing moves back
    assert_eq!(expire(Vec::new(), 1, 1).await, want);
    // everything old, asked for: the head event stays
    store.flush().await.unwrap_or_else(|e| panic!("flush: {e}"));
    let all = expire((6..=10).map(key).collect(), 1000, 1000).await;
    assert_eq!(all.events_before, 11, "up to the head, not past it");
    assert!(all.keys_before >= all.events_before);
    let page = read(&store, &room, Range::Latest, 100).await;
    assert_eq!(seqs(&page), vec![11]);
    let next = append(&store, event(&room, "filler", "after")).await;
    assert_eq!((next.event.seq, next.duplicate), (12, false), "seq goes on");
}

/// Room settings: none at first, then the last set, per room.
pub async fn room_settings_replace(store: Arc<dyn Store>) {
    let (a, b) = (uid("set-a"), uid("set-b"));
    assert_eq!(store.room_settings(&a).await.ok(), Some(None));
    for v in [r#"{"slow_secs":30}"#, r#"{"slow_secs":0}"#] {
        store
            .set_room_settings(&a, v)
            .await
            .unwrap_or_else(|e| panic!("set_room_settings: {e}"));
        assert_eq!(store.room_settings(&a).await.ok(), Some(Some(v.to_owned())));
    }
    assert_eq!(store.room_settings(&b).await.ok(), Some(None), "per room");
}
