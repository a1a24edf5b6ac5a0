//! Durable storage of room streams, rooms, memberships and markers.
//!
//! # The contract every implementation keeps
//!
//! * **The append is the allocation.** [`Store::append`] gives the event the
//!   room's next `seq` (head + 1) and makes it durable in one step; when it
//!   returns `Ok`, the event survives a process crash (subject to the
//!   configured fsync policy) and no other call can get the same `seq`.
//!   Within one room, appends are applied in the order they were called, so
//!   a caller that awaits appends in call order sees increasing `seq`s.
//! * **Idempotency.** An append whose `(room, from, msg_id)` was already
//!   stored returns the original event with `duplicate = true` and stores
//!   nothing.
//! * **Membership changes ride on events.** An event with a
//!   [`MemberChange`] updates the membership tables in the same durable write
//!   as the event, so the stream and the tables never disagree after a crash.
//! * **Deletes redact.** An event with [`NewEvent::redacts`] replaces the
//!   stored JSON of the event it deletes with that event's tombstone (its
//!   envelope `room`, `seq`, `ts`, `from`, `msg_id`, `type` and
//!   `"deleted":true`, nothing else), so no read serves the deleted body
//!   again. The embedded store does it in the same durable write as the
//!   delete event; ScyllaDB right after it, idempotently, and again in its
//!   repair replay (see `scylla`), so the tombstone is in place before the
//!   delete's append returns `Ok`.
//! * **Markers only move forward.** [`Store::set_marker`] ignores a `seq`
//!   lower than or equal to the stored one.
//!
//! Implementations: [`embedded`] (the default, on local disk) and
//! [`scylla`] (ScyllaDB, for deployments past one machine); [`conformance`]
//! is the test suite every implementation must pass.

pub mod conformance;
pub mod embedded;
mod payload;
pub mod scylla;

pub(crate) use payload::{event_json, redacts_of, tombstone};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Most events one history page may return.
pub const PAGE_MAX: usize = 1000;

/// Errors of a store. Internal details are logged, never sent to clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot serve now (I/O error, closed, timeout); retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored bytes could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The request breaks a precondition (e.g. room already exists with another kind).
    #[error("conflict: {0}")]
    Conflict(String),
}

pub use schema::{MemberState, Role, RoomInfo, RoomKind};

/// One row of the membership table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub room: String,
    pub user: String,
    pub role: Role,
    pub state: MemberState,
    /// Muted members read but may not send.
    #[serde(default)]
    pub muted: bool,
    /// seq of the event that last changed this row.
    pub since: u64,
}

/// A membership update applied atomically with the event that carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberChange {
    pub user: String,
    pub role: Role,
    pub state: MemberState,
    #[serde(default)]
    pub muted: bool,
}

/// An event before it has a `seq`: what the bridge asks the store to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub room: String,
    /// The sender (user id); part of the idempotency key.
    pub from: String,
    /// The client's idempotency key.
    pub msg_id: String,
    /// Server time, ms since the Unix epoch.
    pub ts: u64,
    /// The event's JSON body *without* `room`, `seq`, `ts`, `from`, `msg_id`
    /// (the store adds them); e.g. `{"type":"message","body":"hi"}`.
    pub body: serde_json::Map<String, serde_json::Value>,
    /// Membership update to apply in the same write, if any.
    pub member: Option<MemberChange>,
    /// The seq of an event of the same room this event deletes: the store
    /// replaces that event's stored JSON with its tombstone (module doc). The
    /// caller has checked that it exists; a duplicate append changes nothing.
    pub redacts: Option<u64>,
}

/// A stored event. `json` is the exact payload published on the room's
/// `events` topic: an object with `room`, `seq`, `ts`, `from`, `msg_id` and
/// the [`NewEvent::body`] fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    pub json: bytes::Bytes,
}

/// Result of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub event: StoredEvent,
    /// True when `(room, from, msg_id)` was already stored: nothing new was written.
    pub duplicate: bool,
}

/// Which part of a room's stream to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// The newest `limit` events.
    Latest,
    /// Events with `seq < before`, the newest `limit` of them.
    Before(u64),
    /// Events with `seq > after`, the oldest `limit` of them.
    After(u64),
}

/// A page of a room's stream, ascending by `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub events: Vec<StoredEvent>,
    /// The room's latest seq (0 for an empty room).
    pub head: u64,
    /// More events exist beyond this page in the direction read
    /// (older for `Latest`/`Before`, newer for `After`).
    pub has_more: bool,
}

/// A user's read and delivered markers in a room (0 = none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Markers {
    pub read: u64,
    pub delivered: u64,
}

/// Which marker to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MarkerKind {
    Read,
    Delivered,
}

/// What retention has removed from a room so far ([`Store::expire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expired {
    /// Events with a lower seq are gone: the first seq still stored (1 when
    /// nothing expired).
    pub events_before: u64,
    /// Idempotency keys of events with a lower seq are gone (never below
    /// `events_before`).
    pub keys_before: u64,
}

impl Default for Expired {
    fn default() -> Self {
        Self {
            events_before: 1,
            keys_before: 1,
        }
    }
}

/// One idempotency key to forget, and the seq it must still point at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAt {
    pub from: String,
    pub msg_id: String,
    pub seq: u64,
}

/// A page of [`Store::rooms_page`]: room ids and kinds, and where the next
/// page starts (`None`: this was the last).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoomsPage {
    pub rooms: Vec<(String, RoomKind)>,
    pub next: Option<Vec<u8>>,
}

/// Durable storage behind the bridge. Shared as `Arc<dyn Store>`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Appends an event at the room's head + 1, durably, idempotently (see module doc).
    /// The room need not exist in the rooms table (the bridge checks that).
    async fn append(&self, event: NewEvent) -> Result<Appended, StoreError>;

    /// Appends several events, in order, as one group where the store can:
    /// the same contract as [`Store::append`] for each. An `Err` of the
    /// whole call means none of the results is known.
    async fn append_many(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            out.push(self.append(e).await);
        }
        Ok(out)
    }

    /// The event stored under the idempotency key `(room, from, msg_id)`,
    /// if any (as [`Store::read`] would return it now).
    async fn lookup(
        &self,
        room: &str,
        from: &str,
        msg_id: &str,
    ) -> Result<Option<StoredEvent>, StoreError>;

    /// The room's latest seq, 0 if it has no events.
    async fn head(&self, room: &str) -> Result<u64, StoreError>;

    /// Reads a page of at most `limit` events (`limit` is clamped to 1..=[`PAGE_MAX`]).
    async fn read(&self, room: &str, range: Range, limit: usize) -> Result<Page, StoreError>;

    /// Creates a room; returns false (and changes nothing) if the id exists.
    async fn create_room(&self, room: RoomInfo) -> Result<bool, StoreError>;

    /// A room's description, if it exists.
    async fn room(&self, room: &str) -> Result<Option<RoomInfo>, StoreError>;

    /// One membership row, if any.
    async fn member(&self, room: &str, user: &str) -> Result<Option<Member>, StoreError>;

    /// A room's membership rows in any state, ordered by user id, those with
    /// user id > `after`, at most `limit`.
    async fn members(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError>;

    /// The user's membership rows in every room (any state), ordered by room id.
    async fn user_rooms(&self, user: &str) -> Result<Vec<Member>, StoreError>;

    /// Moves a marker forward; returns the markers after the call and whether it moved.
    async fn set_marker(
        &self,
        room: &str,
        user: &str,
        kind: MarkerKind,
        seq: u64,
    ) -> Result<(Markers, bool), StoreError>;

    /// The user's markers in a room.
    async fn markers(&self, room: &str, user: &str) -> Result<Markers, StoreError>;

    /// A room's settings (a JSON object, as stored), if any were set.
    async fn room_settings(&self, room: &str) -> Result<Option<String>, StoreError>;

    /// Replaces a room's settings (a JSON object).
    async fn set_room_settings(&self, room: &str, settings: &str) -> Result<(), StoreError>;

    /// Whether `user` blocks `target`.
    async fn is_blocked(&self, user: &str, target: &str) -> Result<bool, StoreError>;

    /// `user` blocks (`on`) or unblocks `target`; idempotent.
    async fn set_blocked(&self, user: &str, target: &str, on: bool) -> Result<(), StoreError>;

    /// The users `user` blocks, ordered by id, at most `limit`.
    async fn blocked_users(&self, user: &str, limit: usize) -> Result<Vec<String>, StoreError>;

    /// Every room's id and kind, a page at a time, for retention's sweep:
    /// `cursor` is the `next` of the previous page (`None`: the first).
    async fn rooms_page(
        &self,
        cursor: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<RoomsPage, StoreError>;

    /// What retention has removed from `room` so far.
    async fn expired(&self, room: &str) -> Result<Expired, StoreError>;

    /// Retention: forgets the idempotency keys `keys` (each only while it
    /// still points at its `seq`) and deletes the events with seq below
    /// `events_before`, then records the new [`Expired`] with `keys_before`.
    /// The room's head event is never deleted (the head, and so the next
    /// seq, must survive), and nothing moves back: the result is the
    /// stored state after the call. The caller passes the keys of every
    /// event in `[expired.keys_before, keys_before)`, with
    /// `events_before <= keys_before`.
    async fn expire(
        &self,
        room: &str,
        keys: Vec<KeyAt>,
        keys_before: u64,
        events_before: u64,
    ) -> Result<Expired, StoreError>;

    /// Makes everything appended so far durable regardless of the fsync policy
    /// (used on shutdown).
    async fn flush(&self) -> Result<(), StoreError>;

    /// Whether the store answers now (readiness probe). The default reads a
    /// head, which every implementation serves from its real storage.
    async fn ping(&self) -> Result<(), StoreError> {
        self.head("").await.map(|_| ())
    }
}
