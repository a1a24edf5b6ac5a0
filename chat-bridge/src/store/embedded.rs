//! The embedded store: everything in one directory on local disk, on
//! [fjall](https://docs.rs/fjall) (chosen by measurement, see `docs/store.md`).
//!
//! # Writes
//!
//! Every mutation (append, create_room, set_marker, flush) goes through one
//! channel to ONE writer thread, which group-commits everything pending in one
//! atomic fjall write batch and then answers each waiter (see `writer.rs`).
//! One writer makes read-modify-write steps (head + 1, idempotency, "markers
//! only move forward", "create only if absent") race-free without locks, and
//! channel order is the per-room append order.
//!
//! # Reads
//!
//! Reads never wait for the writer: each takes a fjall snapshot, so it sees
//! whole committed batches only.
//!
//! # Key layout
//!
//! `lp(s)` is `s` prefixed by its length as a u16 big-endian, so a key
//! component followed by more bytes is unambiguous and a prefix scan on
//! `lp(room)` covers exactly one room. Integers are u64 big-endian, so byte
//! order is numeric order. Keyspaces (one fjall LSM tree each):
//!
//! | keyspace     | key                              | value                           |
//! |--------------|----------------------------------|---------------------------------|
//! | `events`     | `lp(room) ++ seq`                | the event JSON, as published    |
//! | `idem`       | `lp(room) ++ lp(from) ++ msg_id` | `seq`                           |
//! | `rooms`      | `room`                           | `RoomInfo` JSON                 |
//! | `members`    | `lp(room) ++ user`               | `Member` JSON                   |
//! | `user_rooms` | `lp(user) ++ room`               | `Member` JSON (same row)        |
//! | `markers`    | `lp(room) ++ user`               | `read ++ delivered`             |
//! | `blocks`     | `lp(user) ++ target`             | empty                           |
//! | `expired`    | `room`                           | `events_before ++ keys_before`  |
//! | `settings`   | `room`                           | the room's settings (JSON)      |
//!
//! `members` and `user_rooms` are written in the same batch as the event
//! that carries the change, so they never disagree; likewise the tombstone
//! that replaces a deleted event's JSON in `events` is written in the same
//! batch as the delete event.

mod keys;
mod writer;

use super::{
    Appended, Expired, KeyAt, MarkerKind, Markers, Member, NewEvent, Page, Range, RoomInfo,
    RoomsPage, Store, StoreError, StoredEvent, PAGE_MAX,
};
use async_trait::async_trait;
use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, Readable, Snapshot};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use tokio::sync::oneshot;
use writer::{Cmd, Writer};

/// Configuration of the embedded store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EmbeddedConfig {
    /// The data directory; created if missing.
    pub path: PathBuf,
    /// When appends reach the disk platter; default `always`.
    #[serde(default)]
    pub fsync: FsyncPolicy,
}

/// When committed writes are forced to stable storage (`fsync`).
///
/// In every policy a write reaches the OS before `append` returns, so it
/// survives a crash of the process; the policies differ on power loss or an
/// OS crash. In TOML config: `fsync = "always"`, `fsync = { intervalms = 5 }`
/// (`interval_ms` is accepted too), `fsync = "never"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fsync every group commit before answering (the default): an echoed
    /// event survives a process crash AND power loss.
    #[default]
    Always,
    /// fsync at most every N ms: survives a process crash (writes reach the
    /// OS before append returns), may lose the last N ms on power loss.
    #[serde(alias = "interval_ms")]
    IntervalMs(u64),
    /// Never fsync explicitly, leave it to the OS (and to `flush`):
    /// survives a process crash, may lose more on power loss.
    Never,
}

/// Handles to the database and its keyspaces (cheap to clone).
#[derive(Clone)]
struct Tables {
    db: Database,
    events: Keyspace,
    idem: Keyspace,
    rooms: Keyspace,
    members: Keyspace,
    user_rooms: Keyspace,
    markers: Keyspace,
    blocks: Keyspace,
    expired: Keyspace,
    settings: Keyspace,
}

/// The default [`Store`]: fjall on local disk, one writer thread with group commit.
pub struct EmbeddedStore {
    t: Tables,
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<Cmd>>,
    writer: Option<JoinHandle<()>>,
}

/// Maps an engine error: I/O and a poisoned database are transient for the
/// caller (`Unavailable`); undecodable data is `Corrupt`.
fn engine_err(e: fjall::Error) -> StoreError {
    match e {
        fjall::Error::Io(_) | fjall::Error::Poisoned | fjall::Error::Storage(_) => {
            StoreError::Unavailable(format!("embedded store: {e}"))
        }
        other => StoreError::Corrupt(format!("embedded store: {other}")),
    }
}

/// A room's latest seq in a snapshot, 0 if it has no events.
fn head_in(snap: &Snapshot, events: &Keyspace, room: &str) -> Result<u64, StoreError> {
    match snap.prefix(events, keys::prefix(room)?).next_back() {
        None => Ok(0),
        Some(g) => keys::seq_of(&g.key().map_err(engine_err)?),
    }
}

/// What retention removed from a room, in a snapshot.
fn expired_in(snap: &Snapshot, expired: &Keyspace, room: &str) -> Result<Expired, StoreError> {
    match snap.get(expired, room.as_bytes()).map_err(engine_err)? {
        Some(v) => keys::expired_of(&v),
        None => Ok(Expired::default()),
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `cfg.path` and starts its writer
    /// thread. Blocking (recovery reads the journal): call it once at
    /// startup, from `main` or `tokio::task::spawn_blocking`.
    pub fn open(cfg: EmbeddedConfig) -> Result<Self, StoreError> {
        let db = Database::builder(&cfg.path)
            .manual_journal_persist(true)
            .open()
            .map_err(engine_err)?;
        let ks = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(engine_err)
        };
        let t = Tables {
            events: ks("events")?,
            idem: ks("idem")?,
            rooms: ks("rooms")?,
            members: ks("members")?,
            user_rooms: ks("user_rooms")?,
            markers: ks("markers")?,
            blocks: ks("blocks")?,
            expired: ks("expired")?,
            settings: ks("settings")?,
            db: db.clone(),
        };
        let (tx, rx) = mpsc::channel();
        let w = Writer::new(t.clone(), cfg.fsync);
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| StoreError::Unavailable(format!("spawning the store writer: {e}")))?;
        Ok(Self {
            t,
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// Sends a command to the writer and waits for its answer.
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Cmd,
    ) -> Result<T, StoreError> {
        let stopped = || StoreError::Unavailable("embedded store writer stopped".into());
        let (reply, rx) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or_else(stopped)?
            .send(make(reply))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Runs a read off the async threads (a long page may touch the disk).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Tables) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let t = self.t.clone();
        tokio::task::spawn_blocking(move || f(&t))
            .await
            .map_err(|e| StoreError::Unavailable(format!("embedded store read task: {e}")))?
    }
}

impl Drop for EmbeddedStore {
    /// Closes the channel and waits for the writer to finish its last batch
    /// and sync, so the directory can be reopened right away.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            if w.join().is_err() {
                tracing::error!("embedded store writer panicked");
            }
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Pages of at most this many events are read on the calling thread.
const INLINE_PAGE: usize = 100;

/// Reads a page; see [`Store::read`].
fn read_page(t: &Tables, room: &str, range: Range, limit: usize) -> Result<Page, StoreError> {
    let limit = limit.clamp(1, PAGE_MAX);
    let snap = t.db.snapshot();
    let head = head_in(&snap, &t.events, room)?;
    let take = |it: &mut dyn Iterator<Item = fjall::Guard>| -> Result<(Vec<StoredEvent>, bool), StoreError> {
        let mut events = Vec::with_capacity(limit.min(64));
        for g in it {
            if events.len() == limit {
                return Ok((events, true));
            }
            let (k, v) = g.into_inner().map_err(engine_err)?;
            events.push(StoredEvent {
                seq: keys::seq_of(&k)?,
                json: Bytes::copy_from_slice(&v),
            });
        }
        Ok((events, false))
    };
    let (mut events, has_more) = match range {
        Range::Latest => take(&mut snap.prefix(&t.events, keys::prefix(room)?).rev())?,
        Range::Before(b) if b <= 1 || head == 0 => (Vec::new(), false),
        Range::Before(b) => {
            let r = keys::event(room, 1)?..keys::event(room, b)?;
            take(&mut snap.range(&t.events, r).rev())?
        }
        Range::After(a) if a >= head => (Vec::new(), false),
        Range::After(a) => {
            let r = keys::event(room, a + 1)?..=keys::event(room, head)?;
            take(&mut snap.range(&t.events, r))?
        }
    };
    if !matches!(range, Range::After(_)) {
        events.reverse();
    }
    Ok(Page {
        events,
        head,
        has_more,
    })
}

/// `Member` rows of one prefix scan, from `start`, at most `limit`.
fn member_rows(
    t: &Tables,
    ks: &Keyspace,
    prefix: Vec<u8>,
    start: std::ops::Bound<Vec<u8>>,
    limit: usize,
) -> Result<Vec<Member>, StoreError> {
    let snap = t.db.snapshot();
    let mut rows = Vec::new();
    for g in snap.range(ks, (start, std::ops::Bound::Unbounded)) {
        if rows.len() == limit {
            break;
        }
        let (k, v) = g.into_inner().map_err(engine_err)?;
        if !k.starts_with(&prefix) {
            break;
        }
        rows.push(decode("member", &v)?);
    }
    Ok(rows)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn append(&self, event: NewEvent) -> Result<Appended, StoreError> {
        self.call(|reply| Cmd::Append(Box::new(event), reply)).await
    }

    /// Queues every append before waiting, so they share one group commit.
    async fn append_many(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        let stopped = || StoreError::Unavailable("embedded store writer stopped".into());
        let tx = self.tx.as_ref().ok_or_else(stopped)?;
        let mut waiting = Vec::with_capacity(events.len());
        for e in events {
            let (reply, rx) = oneshot::channel();
            tx.send(Cmd::Append(Box::new(e), reply))
                .map_err(|_| stopped())?;
            waiting.push(rx);
        }
        let mut out = Vec::with_capacity(waiting.len());
        for rx in waiting {
            out.push(rx.await.unwrap_or_else(|_| Err(stopped())));
        }
        Ok(out)
    }

    async fn lookup(
        &self,
        room: &str,
        from: &str,
        msg_id: &str,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let snap = self.t.db.snapshot();
        let Some(v) = snap
            .get(&self.t.idem, keys::idem(room, from, msg_id)?)
            .map_err(engine_err)?
        else {
            return Ok(None);
        };
        let seq = keys::get_u64(&v)?;
        // a key whose event retention removed is no key (see `expire`)
        let json = snap
            .get(&self.t.events, keys::event(room, seq)?)
            .map_err(engine_err)?;
        Ok(json.map(|json| StoredEvent {
            seq,
            json: Bytes::copy_from_slice(&json),
        }))
    }

    async fn head(&self, room: &str) -> Result<u64, StoreError> {
        head_in(&self.t.db.snapshot(), &self.t.events, room)
    }

    async fn read(&self, room: &str, range: Range, limit: usize) -> Result<Page, StoreError> {
        if limit <= INLINE_PAGE {
            // a short page is one range scan, like the point reads above:
            // read here. Handing it to the blocking pool cost several times
            // the read (thread wake-ups: ~10 % of the server's CPU in a
            // reconnect storm of `sync`s, bench/results/profile.md)
            return read_page(&self.t, room, range, limit);
        }
        let room = room.to_owned();
        self.blocking(move |t| read_page(t, &room, range, limit))
            .await
    }

    async fn create_room(&self, room: RoomInfo) -> Result<bool, StoreError> {
        self.call(|reply| Cmd::CreateRoom(room, reply)).await
    }

    async fn room(&self, room: &str) -> Result<Option<RoomInfo>, StoreError> {
        let v = self.t.db.snapshot().get(&self.t.rooms, room.as_bytes());
        v.map_err(engine_err)?
            .map(|v| decode("room", &v))
            .transpose()
    }

    async fn member(&self, room: &str, user: &str) -> Result<Option<Member>, StoreError> {
        let v = self
            .t
            .db
            .snapshot()
            .get(&self.t.members, keys::pair(room, user)?);
        v.map_err(engine_err)?
            .map(|v| decode("member", &v))
            .transpose()
    }

    async fn members(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError> {
        let prefix = keys::prefix(room)?;
        let start = match after {
            Some(u) => std::ops::Bound::Excluded(keys::pair(room, u)?),
            None => std::ops::Bound::Included(prefix.clone()),
        };
        self.blocking(move |t| member_rows(t, &t.members, prefix, start, limit))
            .await
    }

    async fn user_rooms(&self, user: &str) -> Result<Vec<Member>, StoreError> {
        let prefix = keys::prefix(user)?;
        let start = std::ops::Bound::Included(prefix.clone());
        // one user's rooms: a short prefix scan, read here (see `read`)
        member_rows(&self.t, &self.t.user_rooms, prefix, start, usize::MAX)
    }

    async fn set_marker(
        &self,
        room: &str,
        user: &str,
        kind: MarkerKind,
        seq: u64,
    ) -> Result<(Markers, bool), StoreError> {
        let (room, user) = (room.to_owned(), user.to_owned());
        self.call(|reply| Cmd::Marker {
            room,
            user,
            kind,
            seq,
            reply,
        })
        .await
    }

    async fn markers(&self, room: &str, user: &str) -> Result<Markers, StoreError> {
        let v = self
            .t
            .db
            .snapshot()
            .get(&self.t.markers, keys::pair(room, user)?);
        match v.map_err(engine_err)? {
            Some(v) => keys::markers_of(&v),
            None => Ok(Markers::default()),
        }
    }

    async fn room_settings(&self, room: &str) -> Result<Option<String>, StoreError> {
        let v = self.t.db.snapshot().get(&self.t.settings, room.as_bytes());
        Ok(v.map_err(engine_err)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    async fn set_room_settings(&self, room: &str, settings: &str) -> Result<(), StoreError> {
        let (room, settings) = (room.to_owned(), settings.to_owned());
        self.call(|reply| Cmd::Settings {
            room,
            settings,
            reply,
        })
        .await
    }

    async fn is_blocked(&self, user: &str, target: &str) -> Result<bool, StoreError> {
        self.t
            .db
            .snapshot()
            .contains_key(&self.t.blocks, keys::pair(user, target)?)
            .map_err(engine_err)
    }

    async fn set_blocked(&self, user: &str, target: &str, on: bool) -> Result<(), StoreError> {
        let (user, target) = (user.to_owned(), target.to_owned());
        self.call(|reply| Cmd::Block {
            user,
            target,
            on,
            reply,
        })
        .await
    }

    async fn blocked_users(&self, user: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let prefix = keys::prefix(user)?;
        self.blocking(move |t| {
            let mut out = Vec::new();
            for g in t.db.snapshot().prefix(&t.blocks, &prefix).take(limit) {
                let k = g.key().map_err(engine_err)?;
                let rest = k.get(prefix.len()..).unwrap_or_default();
                out.push(String::from_utf8_lossy(rest).into_owned());
            }
            Ok(out)
        })
        .await
    }

    async fn rooms_page(
        &self,
        cursor: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<RoomsPage, StoreError> {
        let limit = limit.max(1);
        self.blocking(move |t| {
            let start = match cursor {
                Some(c) => std::ops::Bound::Excluded(c),
                None => std::ops::Bound::Unbounded,
            };
            let mut page = RoomsPage::default();
            for g in
                t.db.snapshot()
                    .range(&t.rooms, (start, std::ops::Bound::Unbounded))
            {
                if page.rooms.len() == limit {
                    page.next = page.rooms.last().map(|(id, _)| id.as_bytes().to_vec());
                    break;
                }
                let (_, v) = g.into_inner().map_err(engine_err)?;
                let info: RoomInfo = decode("room", &v)?;
                page.rooms.push((info.id, info.kind));
            }
            Ok(page)
        })
        .await
    }

    async fn expired(&self, room: &str) -> Result<Expired, StoreError> {
        expired_in(&self.t.db.snapshot(), &self.t.expired, room)
    }

    async fn expire(
        &self,
        room: &str,
        keys: Vec<KeyAt>,
        keys_before: u64,
        events_before: u64,
    ) -> Result<Expired, StoreError> {
        let room = room.to_owned();
        self.call(|reply| Cmd::Expire {
            room,
            keys,
            keys_before,
            events_before,
            reply,
        })
        .await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.call(Cmd::Flush).await
    }
}
