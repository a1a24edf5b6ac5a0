//! Reading back: a data directory pre-filled through the embedded store
//! (one room of `history_events` events; `catchup_rooms` rooms whose members
//! are the catch-up client and the connection users), then `history` round
//! trips and a `sync` catch-up over MQTT.

use crate::client::{Conn, ConnOpts, Target};
use crate::hist::Histogram;
use crate::report::{Catchup, History, Latency};
use anyhow::{bail, Context, Result};
use chat_bridge::store::embedded::{EmbeddedConfig, EmbeddedStore, FsyncPolicy};
use chat_bridge::store::{MemberChange, MemberState, NewEvent, Role, RoomInfo, RoomKind, Store};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// The room with the long history and its owner.
pub const HIST_ROOM: &str = "hist";
pub const HIST_USER: &str = "h0";
/// Member of every catch-up room.
pub const CATCHER: &str = "catcher";

/// What to pre-fill.
#[derive(Debug, Clone)]
pub struct Prefill {
    pub history_events: u64,
    pub catchup_rooms: usize,
    /// Message events per catch-up room, all missed by the catch-up client.
    pub catchup_per_room: u64,
    /// Connection users `u{i}`, each a member of [`ROOMS_PER_USER`] rooms
    /// from `c{i % catchup_rooms}` on ([`user_rooms`]).
    pub users: usize,
}

/// Room ids and heads after the pre-fill.
#[derive(Debug, Clone)]
pub struct Filled {
    pub seconds: f64,
    /// `c{r}` and its head, by r.
    pub rooms: Vec<(String, u64)>,
}

pub fn catchup_room(r: usize) -> String {
    format!("c{r:03}")
}

/// Rooms each connection user is a member of (and subscribes to).
pub const ROOMS_PER_USER: usize = 5;

/// The catch-up rooms of connection user `i`: `c{i % rooms}` (the one its
/// `sync` reads) and the next ones, [`ROOMS_PER_USER`] in all.
pub fn user_rooms(i: usize, rooms: usize) -> Vec<usize> {
    let rooms = rooms.max(1);
    (0..ROOMS_PER_USER.min(rooms))
        .map(|k| (i + k) % rooms)
        .collect()
}

pub fn conn_user(i: usize) -> String {
    format!("u{i:05}")
}

fn event(
    room: &str,
    from: &str,
    msg_id: String,
    body: Map<String, Value>,
    member: Option<MemberChange>,
) -> NewEvent {
    NewEvent {
        room: room.into(),
        from: from.into(),
        msg_id,
        ts: chat_bridge::chat::now_ms(),
        body,
        member,
        redacts: None,
    }
}

fn message(room: &str, from: &str, n: u64) -> NewEvent {
    let mut body = Map::new();
    body.insert("type".into(), "message".into());
    body.insert(
        "body".into(),
        format!("history message {n:>10} lorem ipsum dolor sit amet, consectetur").into(),
    );
    event(room, from, format!("m{n}"), body, None)
}

fn join(room: &str, user: &str, role: Role) -> NewEvent {
    let mut body = Map::new();
    body.insert("type".into(), "member".into());
    body.insert("action".into(), "join".into());
    body.insert("user".into(), user.into());
    let change = MemberChange {
        user: user.into(),
        role,
        state: MemberState::Joined,
        muted: false,
    };
    event(room, user, format!("$join:{user}"), body, Some(change))
}

async fn append(store: &EmbeddedStore, events: Vec<NewEvent>) -> Result<()> {
    for r in store.append_many(events).await? {
        r?;
    }
    Ok(())
}

/// Writes the pre-fill into `data_dir` (chatmq's `--data-dir`) directly
/// through the embedded store, with fsync off and one flush at the end.
pub async fn prefill(data_dir: &Path, p: &Prefill) -> Result<Filled> {
    let t0 = Instant::now();
    let cfg = EmbeddedConfig {
        path: data_dir.join("store"),
        fsync: FsyncPolicy::Never,
    };
    let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(cfg)).await??;
    let room = |id: &str, by: &str| RoomInfo {
        id: id.into(),
        kind: RoomKind::Group,
        title: None,
        created_by: by.into(),
        created_ts: chat_bridge::chat::now_ms(),
    };
    store.create_room(room(HIST_ROOM, HIST_USER)).await?;
    append(&store, vec![join(HIST_ROOM, HIST_USER, Role::Owner)]).await?;
    const CHUNK: u64 = 20_000;
    let mut n = 0;
    while n < p.history_events {
        let end = (n + CHUNK).min(p.history_events);
        append(
            &store,
            (n..end).map(|i| message(HIST_ROOM, HIST_USER, i)).collect(),
        )
        .await?;
        n = end;
    }
    let mut rooms = Vec::new();
    for r in 0..p.catchup_rooms {
        let id = catchup_room(r);
        store.create_room(room(&id, CATCHER)).await?;
        let mut evs = vec![join(&id, CATCHER, Role::Owner)];
        evs.extend(
            (0..p.users)
                .filter(|&i| user_rooms(i, p.catchup_rooms).contains(&r))
                .map(|i| join(&id, &conn_user(i), Role::Member)),
        );
        evs.extend((0..p.catchup_per_room).map(|i| message(&id, CATCHER, i)));
        append(&store, evs).await?;
        rooms.push((id.clone(), store.head(&id).await?));
    }
    store.flush().await?;
    tokio::task::spawn_blocking(move || drop(store)).await?;
    Ok(Filled {
        seconds: t0.elapsed().as_secs_f64(),
        rooms,
    })
}

/// Sequential round trips of one request shape; the reply must be ok and
/// hold `want` events. Returns the histogram (µs) and the mean reply size.
async fn round_trips(
    c: &mut Conn,
    n: usize,
    want: usize,
    mut params: impl FnMut(usize) -> Value,
) -> Result<(Histogram, usize)> {
    let mut h = Histogram::new();
    let mut bytes = 0;
    for i in 0..n {
        let t = Instant::now();
        let r = c
            .request("history", params(i), Duration::from_secs(30))
            .await?;
        h.record(t.elapsed().as_micros() as u64);
        let got = r["result"]["events"].as_array().map_or(0, Vec::len);
        if r["ok"] != true || got != want {
            bail!(
                "history {} returned {got} events (want {want}): {}",
                params(i),
                r.to_string().chars().take(300).collect::<String>()
            );
        }
        bytes += r.to_string().len();
    }
    Ok((h, bytes / n.max(1)))
}

/// `history` latest-50 and 1000-event pages, then the catch-up.
pub async fn run(
    target: &Target,
    p: &Prefill,
    filled: &Filled,
    requests: usize,
) -> Result<History> {
    let opts = ConnOpts::default();
    let mut c = Conn::login(target, HIST_USER, "h0-hist", opts).await?;
    c.subscribe(&[c.reply_topic()]).await?;
    let head = p.history_events + 1;
    round_trips(
        &mut c,
        5,
        50.min(head as usize),
        |_| json!({"room": HIST_ROOM, "limit": 50}),
    )
    .await?;
    let (latest, _) = round_trips(
        &mut c,
        requests,
        50.min(head as usize),
        |_| json!({"room": HIST_ROOM, "limit": 50}),
    )
    .await
    .context("history latest 50")?;
    // pages spread over the whole room (a fixed stride, so runs compare)
    let page = 1000.min(p.history_events as usize);
    let span = head.saturating_sub(page as u64).max(1);
    let (pages, page_bytes) = round_trips(&mut c, requests.div_ceil(2), page, |i| {
        let before = page as u64 + 1 + (i as u64 * 7919 * 1000) % span;
        json!({"room": HIST_ROOM, "before": before, "limit": 1000})
    })
    .await
    .context("history page of 1000")?;
    Ok(History {
        room_events: p.history_events,
        prefill_seconds: filled.seconds,
        latest50: Latency::of(&latest),
        page1000: Latency::of(&pages),
        page1000_bytes: page_bytes,
        catchup: catchup(target, p, filled).await.context("catch-up")?,
    })
}

/// One client that missed the last `catchup_per_room` events of every
/// catch-up room: `sync` with its cursors, then `history` pages for rooms
/// that answer `has_more`, until it holds every missed event.
async fn catchup(target: &Target, p: &Prefill, filled: &Filled) -> Result<Catchup> {
    let mut c = Conn::login(target, CATCHER, "catcher-1", ConnOpts::default()).await?;
    c.subscribe(&[c.reply_topic()]).await?;
    let cursors: Map<String, Value> = filled
        .rooms
        .iter()
        .map(|(r, head)| (r.clone(), json!(head - p.catchup_per_room)))
        .collect();
    let t0 = Instant::now();
    let r = c
        .call(
            "sync",
            json!({"rooms": cursors, "limit_per_room": p.catchup_per_room.clamp(1, 1000)}),
        )
        .await?;
    let mut requests = 1;
    let mut received = 0u64;
    for (room, head) in &filled.rooms {
        let entry = &r["rooms"][room];
        let mut events = entry["events"].as_array().map_or(0, Vec::len) as u64;
        let mut has_more = entry["has_more"] == true;
        let mut last = head - p.catchup_per_room + events;
        while has_more {
            let page = c
                .call(
                    "history",
                    json!({"room": room, "after": last, "limit": 1000}),
                )
                .await?;
            requests += 1;
            let n = page["events"].as_array().map_or(0, Vec::len) as u64;
            events += n;
            last += n;
            has_more = page["has_more"] == true && n > 0;
        }
        received += events;
    }
    let wall = t0.elapsed();
    let missed = p.catchup_per_room * filled.rooms.len() as u64;
    if received != missed {
        bail!("catch-up received {received} events, expected {missed}");
    }
    Ok(Catchup {
        rooms: filled.rooms.len(),
        missed_events: missed,
        received_events: received,
        requests,
        wall_ms: wall.as_secs_f64() * 1000.0,
    })
}
