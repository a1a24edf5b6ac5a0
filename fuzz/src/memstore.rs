//! An in-memory [`Store`] for the `payloads` target: maps behind one mutex.
//!
//! It keeps the trait's documented contract (the conformance suite runs
//! against it in `tests/memstore.rs`): the append is the allocation (head + 1
//! under the lock), idempotency on `(room, from, msg_id)`, membership rows
//! updated with the event that carries them, markers only forward. It never
//! fails, so an `unavailable` answer seen by the fuzzer is the service's own.

use async_trait::async_trait;
use bytes::Bytes;
use chat_bridge::store::{
    Appended, MarkerKind, Markers, Member, NewEvent, Page, Range, RoomInfo, Store, StoreError,
    StoredEvent, PAGE_MAX,
};
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

#[derive(Default)]
struct Inner {
    /// room -> events in seq order (seq = index + 1)
    events: HashMap<String, Vec<Bytes>>,
    /// (room, from, msg_id) -> seq
    idem: HashMap<(String, String, String), u64>,
    rooms: HashMap<String, RoomInfo>,
    /// room -> user -> row
    members: HashMap<String, BTreeMap<String, Member>>,
    /// user -> room -> row (the same rows)
    user_rooms: HashMap<String, BTreeMap<String, Member>>,
    markers: HashMap<(String, String), Markers>,
}

/// The in-memory store. Never fails.
#[derive(Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every event of a room, in seq order (for the fuzzer's checks).
    pub fn events(&self, room: &str) -> Vec<Bytes> {
        self.inner
            .lock()
            .events
            .get(room)
            .cloned()
            .unwrap_or_default()
    }

    /// Every room that has events.
    pub fn all_event_rooms(&self) -> Vec<String> {
        self.inner.lock().events.keys().cloned().collect()
    }

    /// Every membership row of every room.
    pub fn all_members(&self) -> Vec<Member> {
        let g = self.inner.lock();
        g.members
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    /// Every room's description.
    pub fn all_rooms(&self) -> Vec<RoomInfo> {
        self.inner.lock().rooms.values().cloned().collect()
    }
}

/// The stored payload: `room, seq, ts, from, msg_id`, then the body's other
/// fields in their order (the same bytes every store publishes).
fn event_json(ev: &NewEvent, seq: u64) -> Result<Bytes, StoreError> {
    const SERVER: [&str; 5] = ["room", "seq", "ts", "from", "msg_id"];
    let head: [(&str, Value); 5] = [
        ("room", ev.room.as_str().into()),
        ("seq", seq.into()),
        ("ts", ev.ts.into()),
        ("from", ev.from.as_str().into()),
        ("msg_id", ev.msg_id.as_str().into()),
    ];
    let body = ev
        .body
        .iter()
        .filter(|(k, _)| !SERVER.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.clone()));
    let mut out = String::from("{");
    for (i, (k, v)) in head.into_iter().chain(body).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let k = serde_json::to_string(k).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let v = serde_json::to_string(&v).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        out.push_str(&k);
        out.push(':');
        out.push_str(&v);
    }
    out.push('}');
    Ok(Bytes::from(out))
}

/// A deleted message: its envelope and `"deleted": true`, nothing else.
fn tombstone(json: &[u8]) -> Result<Bytes, StoreError> {
    let v: serde_json::Map<String, Value> =
        serde_json::from_slice(json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut out = serde_json::Map::new();
    for k in ["room", "seq", "ts", "from", "msg_id", "type"] {
        if let Some(x) = v.get(k) {
            out.insert(k.into(), x.clone());
        }
    }
    out.insert("deleted".into(), true.into());
    serde_json::to_vec(&out)
        .map(Bytes::from)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[async_trait]
impl Store for MemStore {
    async fn append(&self, event: NewEvent) -> Result<Appended, StoreError> {
        let mut g = self.inner.lock();
        let key = (event.room.clone(), event.from.clone(), event.msg_id.clone());
        if let Some(&seq) = g.idem.get(&key) {
            let json = g
                .events
                .get(&event.room)
                .and_then(|evs| evs.get(seq as usize - 1))
                .cloned()
                .ok_or_else(|| StoreError::Corrupt("idempotency key without event".into()))?;
            return Ok(Appended {
                event: StoredEvent { seq, json },
                duplicate: true,
            });
        }
        let evs = g.events.entry(event.room.clone()).or_default();
        let seq = evs.len() as u64 + 1;
        let json = event_json(&event, seq)?;
        evs.push(json.clone());
        g.idem.insert(key, seq);
        if let Some(target) = event.redacts {
            // a delete redacts its target in the same write (the store contract)
            if let Some(slot) = g
                .events
                .get_mut(&event.room)
                .and_then(|evs| evs.get_mut((target as usize).wrapping_sub(1)))
            {
                *slot = tombstone(slot)?;
            }
        }
        if let Some(c) = event.member {
            let row = Member {
                room: event.room.clone(),
                user: c.user.clone(),
                role: c.role,
                state: c.state,
                muted: c.muted,
                since: seq,
            };
            g.user_rooms
                .entry(c.user.clone())
                .or_default()
                .insert(event.room.clone(), row.clone());
            g.members.entry(event.room).or_default().insert(c.user, row);
        }
        Ok(Appended {
            event: StoredEvent { seq, json },
            duplicate: false,
        })
    }

    async fn lookup(
        &self,
        room: &str,
        from: &str,
        msg_id: &str,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let g = self.inner.lock();
        let key = (room.to_owned(), from.to_owned(), msg_id.to_owned());
        Ok(g.idem.get(&key).and_then(|&seq| {
            g.events
                .get(room)
                .and_then(|evs| evs.get(seq as usize - 1))
                .map(|json| StoredEvent {
                    seq,
                    json: json.clone(),
                })
        }))
    }

    async fn head(&self, room: &str) -> Result<u64, StoreError> {
        Ok(self.inner.lock().events.get(room).map_or(0, |e| e.len()) as u64)
    }

    async fn read(&self, room: &str, range: Range, limit: usize) -> Result<Page, StoreError> {
        let limit = limit.clamp(1, PAGE_MAX) as u64;
        let g = self.inner.lock();
        let evs = g.events.get(room).map(Vec::as_slice).unwrap_or_default();
        let head = evs.len() as u64;
        // the seqs [from, to] of the page, and whether more lie beyond it
        let (from, to, has_more) = match range {
            Range::Latest | Range::Before(_) => {
                let below = match range {
                    Range::Before(b) => b.min(head + 1),
                    _ => head + 1,
                };
                let to = below.saturating_sub(1);
                let from = to.saturating_sub(limit - 1).max(1);
                (from, to, from > 1)
            }
            Range::After(a) => {
                let from = a.saturating_add(1);
                let to = a.saturating_add(limit).min(head);
                (from, to, to < head)
            }
        };
        let events = if from > to || to == 0 {
            Vec::new()
        } else {
            (from..=to)
                .map(|seq| StoredEvent {
                    seq,
                    json: evs[seq as usize - 1].clone(),
                })
                .collect()
        };
        let has_more = has_more && !events.is_empty();
        Ok(Page {
            events,
            head,
            has_more,
        })
    }

    async fn create_room(&self, room: RoomInfo) -> Result<bool, StoreError> {
        let mut g = self.inner.lock();
        if g.rooms.contains_key(&room.id) {
            return Ok(false);
        }
        g.rooms.insert(room.id.clone(), room);
        Ok(true)
    }

    async fn room(&self, room: &str) -> Result<Option<RoomInfo>, StoreError> {
        Ok(self.inner.lock().rooms.get(room).cloned())
    }

    async fn member(&self, room: &str, user: &str) -> Result<Option<Member>, StoreError> {
        Ok(self
            .inner
            .lock()
            .members
            .get(room)
            .and_then(|m| m.get(user))
            .cloned())
    }

    async fn members(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError> {
        let g = self.inner.lock();
        let Some(rows) = g.members.get(room) else {
            return Ok(Vec::new());
        };
        Ok(rows
            .iter()
            .filter(|(u, _)| after.is_none_or(|a| u.as_str() > a))
            .take(limit)
            .map(|(_, m)| m.clone())
            .collect())
    }

    async fn user_rooms(&self, user: &str) -> Result<Vec<Member>, StoreError> {
        Ok(self
            .inner
            .lock()
            .user_rooms
            .get(user)
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn set_marker(
        &self,
        room: &str,
        user: &str,
        kind: MarkerKind,
        seq: u64,
    ) -> Result<(Markers, bool), StoreError> {
        let mut g = self.inner.lock();
        let m = g
            .markers
            .entry((room.to_owned(), user.to_owned()))
            .or_default();
        let slot = match kind {
            MarkerKind::Read => &mut m.read,
            MarkerKind::Delivered => &mut m.delivered,
        };
        let moved = seq > *slot;
        if moved {
            *slot = seq;
        }
        Ok((*m, moved))
    }

    async fn markers(&self, room: &str, user: &str) -> Result<Markers, StoreError> {
        Ok(self
            .inner
            .lock()
            .markers
            .get(&(room.to_owned(), user.to_owned()))
            .copied()
            .unwrap_or_default())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
