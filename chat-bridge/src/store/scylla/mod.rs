//! The ScyllaDB store: the production [`Store`] behind the same trait as the
//! embedded one, for deployments that outgrow one machine. The schema is in
//! `schema/cql/*.cql` (applied by [`migrate`]); `docs/scylla.md` is the guide.
//!
//! # Tables (keyspace from the config)
//!
//! | table          | partition key           | clustering    | holds                                  |
//! |----------------|-------------------------|---------------|----------------------------------------|
//! | `messages`     | `(room, bucket)`        | `seq DESC`    | the event JSON, sender, msg_id, member change |
//! | `idempotency`  | `(room, sender, msg_id)`|               | `seq`                                  |
//! | `rooms`        | `room`                  |               | `RoomInfo`                             |
//! | `room_members` | `room`                  | `member`      | `Member`                               |
//! | `user_rooms`   | `member`                | `room`        | `Member` (same row)                    |
//! | `markers`      | `(room, member)`        |               | `read_seq`, `delivered_seq`            |
//! | `room_index`   | `room`                  |               | `indexed` (see Repair)                 |
//! | `user_blocks`  | `member`                | `blocked`     | who `member` blocks                    |
//! | `room_expired` | `room`                  |               | what retention removed (`retain.rs`)   |
//! | `room_settings`| `room`                  |               | the room's settings (JSON)             |
//!
//! `bucket = seq / BUCKET_SIZE`: a partition holds at most [`BUCKET_SIZE`] events.
//!
//! # The append is the allocation
//!
//! An event is stored by `INSERT ... IF NOT EXISTS` at the room's head + 1
//! (a lightweight transaction, serial consistency LOCAL_SERIAL). Nothing is
//! returned before `[applied]`: when the insert is not applied, or its answer
//! never comes (timeout), the slot is read at LOCAL_SERIAL and the pure
//! decision in `lwt.rs` says whether the row there is ours (same sender and
//! msg_id), someone else's (try the next seq, after re-reading the head), or
//! absent (try the same seq again). Two bridges that both believe they own a
//! room therefore never fork its stream: one insert wins each seq.
//!
//! # Batching (the group commit of this store)
//!
//! Appends to one room go through that room's queue; whoever holds the
//! room's lock drains the queue (up to [`MAX_BATCH`] events) and handles it
//! as one batch: one concurrent round of idempotency-key reads, then ONE
//! conditional `BATCH` of `INSERT ... IF NOT EXISTS` for up to
//! [`MAX_LWT_BATCH`] consecutive seqs of one `(room, bucket)` partition
//! (split at bucket boundaries; a conditional batch must stay in one
//! partition), then one concurrent round of index writes. Different rooms
//! run concurrently. Each room's head is cached, so the happy path never
//! reads the head first: about three round trips per batch, not per event.
//!
//! # What one LWT cannot cover, and the repair
//!
//! A conditional batch spans one partition, so the idempotency key and the
//! membership rows of an event cannot be written atomically with it. They
//! are derived data: the stream row carries `sender`, `msg_id` and the
//! membership change, so they can always be rebuilt from it. They are
//! written right after the event (before the append returns `Ok`; if those
//! writes fail, the append returns `Unavailable` and the room is reloaded),
//! and `room_index.indexed` records up to which seq they are known to be
//! written (moved lazily, one batch behind, `USING TIMESTAMP indexed` so it
//! only grows). Whenever a store loads a room (first use, after a failure, or
//! after it saw another writer's events) it replays `(indexed, head]` —
//! normally at most one or two batches — rewriting the keys and membership
//! rows, before it appends. So after a crash between the event and its index
//! writes, a retry of the same `msg_id` is still recognised as a duplicate.
//!
//! # Deletes
//!
//! A delete event ([`crate::store::NewEvent::redacts`]) turns the deleted
//! event's `payload` into its tombstone. That is a second partition's row
//! (or another row of the same partition) and cannot join the conditional
//! insert, so it is one more derived write, handled like the index rows: it
//! runs with them right after the delete is placed (before the append
//! returns `Ok`), and the repair replay re-applies it for every delete in
//! `(indexed, head]` (the stream row has no column for the target: it is
//! read back from the delete's payload). It is an idempotent plain `UPDATE`
//! of `payload` only, `USING TIMESTAMP` one above the payload's current
//! write time (read first): the LWT insert's cells carry the Paxos ballot's
//! timestamp from a coordinator's clock, so a write with the client's or
//! another node's clock could lose to it; one above what is stored cannot.
//! Nothing else writes that cell again (an insert `IF NOT EXISTS` on an
//! existing row writes nothing), and a second delete finds the tombstone
//! already there and writes nothing. A crash between the delete and its
//! tombstone leaves the room's watermark below the delete, so the next load
//! of the room heals it before any append; until then a `history` read may
//! still serve the old payload (the delete event itself is in the stream).
//!
//! Membership rows are written `USING TIMESTAMP <seq>` and markers
//! `USING TIMESTAMP <marker seq>`: the highest seq wins whatever the order
//! of writes and replays, so membership follows the stream and markers only
//! move forward, without a transaction.
//!
//! # Limits
//!
//! * Idempotency across two bridges racing the same new `msg_id` with
//!   different head caches is best effort: both may read "no key" and store
//!   it at two seqs (never at one seq twice). In normal operation a room is
//!   on one bridge, where its queue makes the check exact.
//! * `set_marker` reports `moved` from a read before the write: two racing
//!   moves may both report `true`; the stored marker is always the highest.
//! * Room state (head, index watermark) is cached per room ever appended to.

mod append;
pub(crate) mod config;
mod lwt;
mod migrate;
mod place;
mod read;
mod retain;
mod stmts;
mod tls;

pub use config::{ScyllaConfig, DEFAULT_REPLICATION};
pub use migrate::{detect, migrate, Migrated, Server, MIGRATIONS};

use super::{
    Appended, Expired, KeyAt, MarkerKind, Markers, Member, NewEvent, Page, Range, RoomInfo,
    RoomsPage, Store, StoreError, StoredEvent,
};
use async_trait::async_trait;
use scylla::client::session::Session;
use std::collections::HashMap;
use std::sync::Arc;

/// Events per `messages` partition: `bucket = seq / BUCKET_SIZE`. Part of the
/// on-disk format: never change it for an existing keyspace.
pub const BUCKET_SIZE: u64 = 1000;
/// Most appends of one room handled as one batch.
pub const MAX_BATCH: usize = 256;
/// Most inserts in one conditional batch.
pub const MAX_LWT_BATCH: usize = 64;

/// The bucket of `seq`.
pub fn bucket_of(seq: u64) -> u64 {
    seq / BUCKET_SIZE
}

/// The highest seq bucket `b` can hold.
fn last_in_bucket(b: u64) -> u64 {
    b.saturating_add(1)
        .saturating_mul(BUCKET_SIZE)
        .saturating_sub(1)
}

/// u64 -> CQL bigint.
fn big(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Conflict(format!("{v} does not fit a CQL bigint")))
}

/// CQL bigint -> u64.
fn unbig(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative value {v}")))
}

/// A driver or server error: the store cannot serve now.
fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("scylla {what}: {e}"))
}

/// A row that does not decode.
fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("scylla {what}: {e}"))
}

/// The same error again (StoreError is not Clone: it is sent to one waiter).
fn same_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
        StoreError::Corrupt(s) => StoreError::Corrupt(s.clone()),
        StoreError::Conflict(s) => StoreError::Conflict(s.clone()),
    }
}

/// Shared by the store handle and its background append tasks.
struct Inner {
    session: Session,
    st: stmts::Stmts,
    /// Per-room queue and cached state; a std mutex, held only to find or
    /// insert an entry, never across an await.
    rooms: parking_lot::Mutex<HashMap<String, Arc<append::Room>>>,
}

impl Inner {
    fn room(&self, id: &str) -> Arc<append::Room> {
        let mut rooms = self.rooms.lock();
        match rooms.get(id) {
            Some(r) => r.clone(),
            None => {
                let r = Arc::new(append::Room::new(id));
                rooms.insert(id.to_owned(), r.clone());
                r
            }
        }
    }

    /// The highest head this process has seen for `room` (0: none).
    fn hint(&self, room: &str) -> u64 {
        self.rooms.lock().get(room).map_or(0, |r| r.hint())
    }
}

/// The [`Store`] on ScyllaDB. Cheap to share (`Arc<dyn Store>`).
pub struct ScyllaStore {
    inner: Arc<Inner>,
}

impl ScyllaStore {
    /// Connects (see [`ScyllaConfig`]) and prepares every statement. Fails
    /// with `Unavailable` if the cluster cannot be reached or the schema is
    /// missing (run [`migrate`] first).
    pub async fn connect(cfg: &ScyllaConfig) -> Result<Self, StoreError> {
        let session = cfg.session().await?;
        let st = stmts::Stmts::prepare(&session, &cfg.keyspace).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                session,
                st,
                rooms: parking_lot::Mutex::new(HashMap::new()),
            }),
        })
    }
}

#[async_trait]
impl Store for ScyllaStore {
    async fn append(&self, event: NewEvent) -> Result<Appended, StoreError> {
        let mut out = append::append_many(&self.inner, vec![event]).await;
        out.pop()
            .unwrap_or_else(|| Err(StoreError::Unavailable("append lost its answer".into())))
    }

    /// A room's events share one batch (see the module doc); rooms run concurrently.
    async fn append_many(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        Ok(append::append_many(&self.inner, events).await)
    }

    async fn lookup(
        &self,
        room: &str,
        from: &str,
        msg_id: &str,
    ) -> Result<Option<StoredEvent>, StoreError> {
        append::lookup(&self.inner, room, from, msg_id).await
    }

    async fn head(&self, room: &str) -> Result<u64, StoreError> {
        read::head(&self.inner, room).await
    }

    async fn read(&self, room: &str, range: Range, limit: usize) -> Result<Page, StoreError> {
        read::page(&self.inner, room, range, limit).await
    }

    async fn create_room(&self, room: RoomInfo) -> Result<bool, StoreError> {
        read::create_room(&self.inner, &room).await
    }

    async fn room(&self, room: &str) -> Result<Option<RoomInfo>, StoreError> {
        read::room(&self.inner, room).await
    }

    async fn member(&self, room: &str, user: &str) -> Result<Option<Member>, StoreError> {
        read::member(&self.inner, room, user).await
    }

    async fn members(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError> {
        read::members(&self.inner, room, after, limit).await
    }

    async fn user_rooms(&self, user: &str) -> Result<Vec<Member>, StoreError> {
        read::user_rooms(&self.inner, user).await
    }

    async fn set_marker(
        &self,
        room: &str,
        user: &str,
        kind: MarkerKind,
        seq: u64,
    ) -> Result<(Markers, bool), StoreError> {
        read::set_marker(&self.inner, room, user, kind, seq).await
    }

    async fn markers(&self, room: &str, user: &str) -> Result<Markers, StoreError> {
        read::markers(&self.inner, room, user).await
    }

    async fn room_settings(&self, room: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> = read::one(
            &self.inner,
            &self.inner.st.settings_get,
            (room,),
            "settings read",
        )
        .await?;
        Ok(row.and_then(|(s,)| s))
    }

    async fn set_room_settings(&self, room: &str, settings: &str) -> Result<(), StoreError> {
        self.inner
            .session
            .execute_unpaged(&self.inner.st.settings_put, (room, settings))
            .await
            .map_err(|e| unavailable("settings write", e))?;
        Ok(())
    }

    async fn is_blocked(&self, user: &str, target: &str) -> Result<bool, StoreError> {
        retain::is_blocked(&self.inner, user, target).await
    }

    async fn set_blocked(&self, user: &str, target: &str, on: bool) -> Result<(), StoreError> {
        retain::set_blocked(&self.inner, user, target, on).await
    }

    async fn blocked_users(&self, user: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        retain::blocked_users(&self.inner, user, limit).await
    }

    /// A page is the driver's page (up to 1,000 rooms, token order);
    /// `limit` is not used.
    async fn rooms_page(
        &self,
        cursor: Option<Vec<u8>>,
        _limit: usize,
    ) -> Result<RoomsPage, StoreError> {
        retain::rooms_page(&self.inner, cursor).await
    }

    async fn expired(&self, room: &str) -> Result<Expired, StoreError> {
        retain::expired(&self.inner, room).await
    }

    async fn expire(
        &self,
        room: &str,
        keys: Vec<KeyAt>,
        keys_before: u64,
        events_before: u64,
    ) -> Result<Expired, StoreError> {
        retain::expire(&self.inner, room, keys, keys_before, events_before).await
    }

    /// A point read of `room_index` at a key no room has (room ids are
    /// never blank): the keyspace answers at the configured consistency.
    /// Not the default `head("")`: Cassandra refuses an empty partition key
    /// ("Key may not be empty"), ScyllaDB accepts it.
    async fn ping(&self) -> Result<(), StoreError> {
        let _row: Option<(Option<i64>,)> =
            read::one(&self.inner, &self.inner.st.index_get, (" ping",), "ping").await?;
        Ok(())
    }

    /// Every `Ok` append is already durable (LOCAL_QUORUM); this only writes
    /// the rooms' lagging index watermarks, so a restart replays less.
    async fn flush(&self) -> Result<(), StoreError> {
        append::flush(&self.inner).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(BUCKET_SIZE - 1), 0);
        assert_eq!(bucket_of(BUCKET_SIZE), 1);
        assert_eq!(bucket_of(2 * BUCKET_SIZE + 5), 2);
        assert_eq!(last_in_bucket(0), BUCKET_SIZE - 1);
        assert_eq!(last_in_bucket(1), 2 * BUCKET_SIZE - 1);
        assert_eq!(bucket_of(last_in_bucket(7)), 7);
        assert_eq!(bucket_of(last_in_bucket(7) + 1), 8);
    }

    #[test]
    fn bigint_conversions() {
        assert_eq!(big(5).ok(), Some(5));
        assert!(big(u64::MAX).is_err());
        assert_eq!(unbig(7).ok(), Some(7));
        assert!(unbig(-1).is_err());
    }
}
