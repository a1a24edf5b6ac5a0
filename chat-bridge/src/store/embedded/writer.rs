//! The single writer thread: group commit of every mutation.
//!
//! Commands arrive on one channel, in call order. The writer takes the first,
//! drains whatever else is pending (up to [`MAX_BATCH`]), applies them all to
//! ONE fjall write batch against a snapshot plus the batch's own pending
//! state, commits once with the policy's durability, then answers every
//! waiter. A failed commit answers every waiter of the batch with the error
//! and forgets the cached heads it touched.

use super::super::{
    Appended, Expired, KeyAt, MarkerKind, Markers, Member, NewEvent, RoomInfo, StoreError,
    StoredEvent,
};
use super::{engine_err, keys, FsyncPolicy, Tables};
use bytes::Bytes;
use fjall::{PersistMode, Readable, Snapshot};
use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most commands applied in one durable write.
const MAX_BATCH: usize = 512;

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A mutation for the writer.
pub(super) enum Cmd {
    Append(Box<NewEvent>, Reply<Appended>),
    CreateRoom(RoomInfo, Reply<bool>),
    Marker {
        room: String,
        user: String,
        kind: MarkerKind,
        seq: u64,
        reply: Reply<(Markers, bool)>,
    },
    Settings {
        room: String,
        settings: String,
        reply: Reply<()>,
    },
    Block {
        user: String,
        target: String,
        on: bool,
        reply: Reply<()>,
    },
    Expire {
        room: String,
        keys: Vec<KeyAt>,
        keys_before: u64,
        events_before: u64,
        reply: Reply<Expired>,
    },
    Flush(Reply<()>),
}

/// A computed answer, sent once the batch is committed.
enum Done {
    Append(Reply<Appended>, Result<Appended, StoreError>),
    Room(Reply<bool>, Result<bool, StoreError>),
    Marker(Reply<(Markers, bool)>, Result<(Markers, bool), StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
    Expired(Reply<Expired>, Result<Expired, StoreError>),
    Flush(Reply<()>),
}

impl Done {
    /// Sends the answer, or `failed` if the batch did not commit. A waiter
    /// that went away is ignored: its command was applied all the same.
    fn send(self, failed: Option<&StoreError>) {
        fn pick<T>(r: Result<T, StoreError>, failed: Option<&StoreError>) -> Result<T, StoreError> {
            match failed {
                Some(e) => Err(StoreError::Unavailable(format!("commit failed: {e}"))),
                None => r,
            }
        }
        match self {
            Done::Append(tx, r) => drop(tx.send(pick(r, failed))),
            Done::Room(tx, r) => drop(tx.send(pick(r, failed))),
            Done::Marker(tx, r) => drop(tx.send(pick(r, failed))),
            Done::Unit(tx, r) => drop(tx.send(pick(r, failed))),
            Done::Expired(tx, r) => drop(tx.send(pick(r, failed))),
            Done::Flush(tx) => drop(tx.send(pick(Ok(()), failed))),
        }
    }
}

/// What the batch being built has written so far, so later commands in the
/// same batch see it (the snapshot does not).
#[derive(Default)]
struct Pending {
    idem: HashMap<Vec<u8>, StoredEvent>,
    rooms: HashSet<String>,
    markers: HashMap<Vec<u8>, Markers>,
    /// Retention state written in this batch, by room.
    expired: HashMap<String, Expired>,
    /// Tombstones written in this batch, by event key (rare: deletes only).
    redacted: HashMap<Vec<u8>, Bytes>,
    /// Rooms whose cached head moved in this batch.
    touched: Vec<String>,
}

pub(super) struct Writer {
    t: Tables,
    policy: FsyncPolicy,
    /// Each room's head, loaded lazily from disk; only this thread writes events.
    heads: HashMap<String, u64>,
    /// Committed but not yet fsynced.
    dirty: bool,
    last_sync: Instant,
}

impl Writer {
    pub(super) fn new(t: Tables, policy: FsyncPolicy) -> Self {
        Self {
            t,
            policy,
            heads: HashMap::new(),
            dirty: false,
            last_sync: Instant::now(),
        }
    }

    /// Runs until every sender is gone, then syncs what is left.
    pub(super) fn run(mut self, rx: Receiver<Cmd>) {
        while let Some(first) = self.wait(&rx) {
            let mut cmds = Vec::with_capacity(16);
            cmds.push(first);
            while cmds.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => cmds.push(c),
                    Err(_) => break,
                }
            }
            self.apply(cmds);
        }
        if self.dirty {
            if let Err(e) = self.sync() {
                tracing::error!(error = %e, "embedded store: final sync failed");
            }
        }
    }

    /// The next command; under `IntervalMs`, syncs when the interval is due.
    fn wait(&mut self, rx: &Receiver<Cmd>) -> Option<Cmd> {
        loop {
            let FsyncPolicy::IntervalMs(ms) = self.policy else {
                return rx.recv().ok();
            };
            if !self.dirty {
                return rx.recv().ok();
            }
            let due = self.last_sync + Duration::from_millis(ms);
            let now = Instant::now();
            if now < due {
                match rx.recv_timeout(due - now) {
                    Ok(c) => return Some(c),
                    Err(RecvTimeoutError::Disconnected) => return None,
                    Err(RecvTimeoutError::Timeout) => {}
                }
            }
            if let Err(e) = self.sync() {
                tracing::error!(error = %e, "embedded store: interval sync failed");
            }
        }
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        // Even on failure: fjall poisons itself, so later commits fail loudly
        // instead of this loop retrying a broken disk.
        self.dirty = false;
        self.last_sync = Instant::now();
        self.t.db.persist(PersistMode::SyncAll).map_err(engine_err)
    }

    fn apply(&mut self, cmds: Vec<Cmd>) {
        let snap = self.t.db.snapshot();
        let mode = match self.policy {
            FsyncPolicy::Always => PersistMode::SyncData,
            FsyncPolicy::IntervalMs(_) | FsyncPolicy::Never => PersistMode::Buffer,
        };
        let mut batch = self.t.db.batch().durability(Some(mode));
        let mut p = Pending::default();
        let mut done = Vec::with_capacity(cmds.len());
        let mut flush = false;
        for cmd in cmds {
            done.push(match cmd {
                Cmd::Append(ev, tx) => {
                    Done::Append(tx, self.append(&snap, &mut batch, &mut p, &ev))
                }
                Cmd::CreateRoom(info, tx) => {
                    Done::Room(tx, self.create_room(&snap, &mut batch, &mut p, &info))
                }
                Cmd::Marker {
                    room,
                    user,
                    kind,
                    seq,
                    reply,
                } => Done::Marker(
                    reply,
                    self.marker(&snap, &mut batch, &mut p, &room, &user, kind, seq),
                ),
                Cmd::Block {
                    user,
                    target,
                    on,
                    reply,
                } => Done::Unit(reply, self.block(&mut batch, &user, &target, on)),
                Cmd::Settings {
                    room,
                    settings,
                    reply,
                } => {
                    batch.insert(&self.t.settings, room.as_bytes(), settings.as_bytes());
                    Done::Unit(reply, Ok(()))
                }
                Cmd::Expire {
                    room,
                    keys,
                    keys_before,
                    events_before,
                    reply,
                } => Done::Expired(
                    reply,
                    self.expire(
                        &snap,
                        &mut batch,
                        &mut p,
                        &room,
                        &keys,
                        keys_before,
                        events_before,
                    ),
                ),
                Cmd::Flush(tx) => {
                    flush = true;
                    Done::Flush(tx)
                }
            });
        }
        let wrote = !batch.is_empty();
        let mut outcome = batch.commit().map_err(engine_err);
        if outcome.is_ok() && wrote {
            match self.policy {
                FsyncPolicy::Always => self.last_sync = Instant::now(),
                _ => self.dirty = true,
            }
        }
        if outcome.is_ok() && flush {
            outcome = self.sync();
        }
        if outcome.is_err() {
            for room in &p.touched {
                self.heads.remove(room);
            }
        }
        let failed = outcome.err();
        for d in done {
            d.send(failed.as_ref());
        }
    }

    fn head(&mut self, snap: &Snapshot, room: &str) -> Result<u64, StoreError> {
        if let Some(h) = self.heads.get(room) {
            return Ok(*h);
        }
        let h = super::head_in(snap, &self.t.events, room)?;
        self.heads.insert(room.to_owned(), h);
        Ok(h)
    }

    fn append(
        &mut self,
        snap: &Snapshot,
        batch: &mut fjall::OwnedWriteBatch,
        p: &mut Pending,
        ev: &NewEvent,
    ) -> Result<Appended, StoreError> {
        let ik = keys::idem(&ev.room, &ev.from, &ev.msg_id)?;
        if let Some(event) = p.idem.get(&ik) {
            let event = event.clone();
            return Ok(Appended {
                event,
                duplicate: true,
            });
        }
        if let Some(v) = snap.get(&self.t.idem, &ik).map_err(engine_err)? {
            let seq = keys::get_u64(&v)?;
            // a key whose event retention removed is no key (see `expire`)
            if let Some(json) = snap
                .get(&self.t.events, keys::event(&ev.room, seq)?)
                .map_err(engine_err)?
            {
                let event = StoredEvent {
                    seq,
                    json: Bytes::copy_from_slice(&json),
                };
                return Ok(Appended {
                    event,
                    duplicate: true,
                });
            }
        }
        let seq = self
            .head(snap, &ev.room)?
            .checked_add(1)
            .ok_or_else(|| StoreError::Conflict(format!("{}: seq space exhausted", ev.room)))?;
        let ek = keys::event(&ev.room, seq)?;
        let json = Bytes::from(super::super::payload::event_json(ev, seq)?);
        let member = match &ev.member {
            None => None,
            Some(mc) => {
                let row = Member {
                    room: ev.room.clone(),
                    user: mc.user.clone(),
                    role: mc.role,
                    state: mc.state,
                    muted: mc.muted,
                    since: seq,
                };
                let v = serde_json::to_vec(&row)
                    .map_err(|e| StoreError::Corrupt(format!("encoding member: {e}")))?;
                Some((
                    keys::pair(&ev.room, &mc.user)?,
                    keys::pair(&mc.user, &ev.room)?,
                    v,
                ))
            }
        };
        let tomb = match ev.redacts {
            Some(target) if target < seq => self.tombstone(snap, p, &ev.room, target)?,
            _ => None,
        };
        // Nothing below can fail: the batch gets all of the event or none of it.
        batch.insert(&self.t.events, ek, json.as_ref());
        if let Some((tk, tv)) = tomb {
            // a target written earlier in this same batch: the later insert
            // of a key in one batch wins (memtable and journal replay alike)
            batch.insert(&self.t.events, tk.as_slice(), tv.as_ref());
            p.redacted.insert(tk, tv);
        }
        batch.insert(&self.t.idem, ik.as_slice(), seq.to_be_bytes().as_slice());
        if let Some((mk, uk, v)) = member {
            batch.insert(&self.t.members, mk, v.as_slice());
            batch.insert(&self.t.user_rooms, uk, v);
        }
        self.heads.insert(ev.room.clone(), seq);
        p.touched.push(ev.room.clone());
        let event = StoredEvent { seq, json };
        p.idem.insert(ik, event.clone());
        Ok(Appended {
            event,
            duplicate: false,
        })
    }

    /// The key and tombstone of `room`'s event `target`, as of this batch
    /// (pending writes first, then the snapshot); `None` if there is no such
    /// event (the caller checked it exists: logged, nothing to redact).
    fn tombstone(
        &self,
        snap: &Snapshot,
        p: &Pending,
        room: &str,
        target: u64,
    ) -> Result<Option<(Vec<u8>, Bytes)>, StoreError> {
        let key = keys::event(room, target)?;
        let current = match p.redacted.get(&key) {
            Some(t) => Some(t.clone()),
            None => {
                let prefix = keys::prefix(room)?;
                // written earlier in this batch (idem keys start with lp(room))
                let pending = p
                    .idem
                    .iter()
                    .find(|(k, e)| e.seq == target && k.starts_with(&prefix))
                    .map(|(_, e)| e.json.clone());
                match pending {
                    Some(j) => Some(j),
                    None => snap
                        .get(&self.t.events, &key)
                        .map_err(engine_err)?
                        .map(|v| Bytes::copy_from_slice(&v)),
                }
            }
        };
        let Some(current) = current else {
            tracing::warn!(room, target, "embedded store: delete of a missing event");
            return Ok(None);
        };
        let tomb = Bytes::from(super::super::payload::tombstone(&current)?);
        Ok(Some((key, tomb)))
    }

    fn create_room(
        &mut self,
        snap: &Snapshot,
        batch: &mut fjall::OwnedWriteBatch,
        p: &mut Pending,
        info: &RoomInfo,
    ) -> Result<bool, StoreError> {
        if p.rooms.contains(&info.id)
            || snap
                .contains_key(&self.t.rooms, info.id.as_bytes())
                .map_err(engine_err)?
        {
            return Ok(false);
        }
        let v = serde_json::to_vec(info)
            .map_err(|e| StoreError::Corrupt(format!("encoding room: {e}")))?;
        batch.insert(&self.t.rooms, info.id.as_bytes(), v);
        p.rooms.insert(info.id.clone());
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    fn marker(
        &mut self,
        snap: &Snapshot,
        batch: &mut fjall::OwnedWriteBatch,
        p: &mut Pending,
        room: &str,
        user: &str,
        kind: MarkerKind,
        seq: u64,
    ) -> Result<(Markers, bool), StoreError> {
        let key = keys::pair(room, user)?;
        let mut m = match p.markers.get(&key) {
            Some(m) => *m,
            None => match snap.get(&self.t.markers, &key).map_err(engine_err)? {
                Some(v) => keys::markers_of(&v)?,
                None => Markers::default(),
            },
        };
        let slot = match kind {
            MarkerKind::Read => &mut m.read,
            MarkerKind::Delivered => &mut m.delivered,
        };
        if seq <= *slot {
            return Ok((m, false));
        }
        *slot = seq;
        batch.insert(
            &self.t.markers,
            key.as_slice(),
            keys::markers_value(m).as_slice(),
        );
        p.markers.insert(key, m);
        Ok((m, true))
    }

    fn block(
        &mut self,
        batch: &mut fjall::OwnedWriteBatch,
        user: &str,
        target: &str,
        on: bool,
    ) -> Result<(), StoreError> {
        let key = keys::pair(user, target)?;
        if on {
            batch.insert(&self.t.blocks, key, b"".as_slice());
        } else {
            batch.remove(&self.t.blocks, key);
        }
        Ok(())
    }

    /// See [`crate::store::Store::expire`]. Events are deleted up to the
    /// committed head (exclusive) only; keys only while they point at their seq.
    #[allow(clippy::too_many_arguments)]
    fn expire(
        &mut self,
        snap: &Snapshot,
        batch: &mut fjall::OwnedWriteBatch,
        p: &mut Pending,
        room: &str,
        forget: &[KeyAt],
        keys_before: u64,
        events_before: u64,
    ) -> Result<Expired, StoreError> {
        let cur = match p.expired.get(room) {
            Some(e) => *e,
            None => super::expired_in(snap, &self.t.expired, room)?,
        };
        let head = super::head_in(snap, &self.t.events, room)?;
        let events_before = events_before.min(head).max(cur.events_before);
        let next = Expired {
            events_before,
            keys_before: keys_before.max(cur.keys_before).max(events_before),
        };
        for k in forget {
            let ik = keys::idem(room, &k.from, &k.msg_id)?;
            let points_at = match p.idem.get(&ik) {
                Some(e) => Some(e.seq),
                None => match snap.get(&self.t.idem, &ik).map_err(engine_err)? {
                    Some(v) => Some(keys::get_u64(&v)?),
                    None => None,
                },
            };
            if points_at == Some(k.seq) {
                batch.remove(&self.t.idem, ik.clone());
                p.idem.remove(&ik);
            }
        }
        if events_before > cur.events_before {
            let r = keys::event(room, cur.events_before)?..keys::event(room, events_before)?;
            for g in snap.range(&self.t.events, r) {
                batch.remove(&self.t.events, g.key().map_err(engine_err)?);
            }
        }
        if next != cur {
            batch.insert(
                &self.t.expired,
                room.as_bytes(),
                keys::expired_value(next).as_slice(),
            );
            p.expired.insert(room.to_owned(), next);
        }
        Ok(next)
    }
}
