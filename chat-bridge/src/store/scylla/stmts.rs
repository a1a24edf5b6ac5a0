//! Every CQL statement the store runs, prepared once at connect.

use crate::store::StoreError;
use futures_util::future::try_join_all;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, Statement};

/// Rows per page of a history or repair read (a page holds at most
/// `PAGE_MAX` events anyway; this bounds one response to ~200 payloads).
pub(super) const EVENT_PAGE_ROWS: i32 = 200;
/// Rows per page when listing a user's rooms.
pub(super) const MEMBER_PAGE_ROWS: i32 = 500;

/// How a statement is run.
#[derive(Clone, Copy)]
enum Kind {
    /// A read or an idempotent write: the driver may retry it.
    Idempotent,
    /// A read at LOCAL_SERIAL: sees (and first completes) every LWT.
    SerialRead,
    /// A conditional write: never retried blindly; its outcome is decided by
    /// the caller (see `lwt.rs`).
    Lwt,
}

pub(super) struct Stmts {
    pub(super) insert_event: PreparedStatement,
    pub(super) slots_serial: PreparedStatement,
    pub(super) bucket_max: PreparedStatement,
    pub(super) events_range: PreparedStatement,
    pub(super) event_at: PreparedStatement,
    pub(super) idem_get: PreparedStatement,
    pub(super) idem_put: PreparedStatement,
    pub(super) index_get: PreparedStatement,
    pub(super) index_put: PreparedStatement,
    pub(super) member_put: PreparedStatement,
    pub(super) user_room_put: PreparedStatement,
    pub(super) member_get: PreparedStatement,
    pub(super) members_page: PreparedStatement,
    pub(super) user_rooms: PreparedStatement,
    pub(super) room_insert: PreparedStatement,
    pub(super) room_get: PreparedStatement,
    pub(super) room_get_serial: PreparedStatement,
    pub(super) marker_get: PreparedStatement,
    pub(super) marker_read_put: PreparedStatement,
    pub(super) marker_delivered_put: PreparedStatement,
}

/// (CQL with `{ks}` for the keyspace, how it runs, page size).
const CQL: [(&str, Kind, i32); 20] = [
    (
        "INSERT INTO {ks}.messages (room, bucket, seq, sender, msg_id, ts, payload, member_change) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
        Kind::Lwt,
        0,
    ),
    (
        "SELECT seq, sender, msg_id, payload FROM {ks}.messages \
         WHERE room = ? AND bucket = ? AND seq >= ? AND seq <= ?",
        Kind::SerialRead,
        0,
    ),
    (
        "SELECT seq FROM {ks}.messages WHERE room = ? AND bucket = ? LIMIT 1",
        Kind::Idempotent,
        0,
    ),
    (
        "SELECT seq, sender, msg_id, payload, member_change FROM {ks}.messages \
         WHERE room = ? AND bucket = ? AND seq >= ? AND seq <= ?",
        Kind::Idempotent,
        EVENT_PAGE_ROWS,
    ),
    (
        "SELECT payload FROM {ks}.messages WHERE room = ? AND bucket = ? AND seq = ?",
        Kind::Idempotent,
        0,
    ),
    (
        "SELECT seq FROM {ks}.idempotency WHERE room = ? AND sender = ? AND msg_id = ?",
        Kind::Idempotent,
        0,
    ),
    (
        "INSERT INTO {ks}.idempotency (room, sender, msg_id, seq) VALUES (?, ?, ?, ?)",
        Kind::Idempotent,
        0,
    ),
    (
        "SELECT indexed FROM {ks}.room_index WHERE room = ?",
        Kind::Idempotent,
        0,
    ),
    (
        "UPDATE {ks}.room_index USING TIMESTAMP ? SET indexed = ? WHERE room = ?",
        Kind::Idempotent,
        0,
    ),
    (
        "INSERT INTO {ks}.room_members (room, member, role, state, muted, since) \
         VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
        Kind::Idempotent,
        0,
    ),
    (
        "INSERT INTO {ks}.user_rooms (member, room, role, state, muted, since) \
         VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
        Kind::Idempotent,
        0,
    ),
    (
        "SELECT member, role, state, muted, since FROM {ks}.room_members \
         WHERE room = ? AND member = ?",
        Kind::Idempotent,
        0,
    ),
    (
        "SELECT member, role, state, muted, since FROM {ks}.room_members \
         WHERE room = ? AND member > ? LIMIT ?",
        Kind::Idempotent,
        0,
    ),
    (
        "SELECT room, role, state, muted, since FROM {ks}.user_rooms WHERE member = ?",
        Kind::Idempotent,
        MEMBER_PAGE_ROWS,
    ),
    (
        "INSERT INTO {ks}.rooms (room, kind, title, created_by, created_ts) \
         VALUES (?, ?, ?, ?, ?) IF NOT EXISTS",
        Kind::Lwt,
        0,
    ),
    (
        "SELECT kind, title, created_by, created_ts FROM {ks}.rooms WHERE room = ?",
        Kind::Idempotent,
        0,
    ),
    (
        "SELECT kind, title, created_by, created_ts FROM {ks}.rooms WHERE room = ?",
        Kind::SerialRead,
        0,
    ),
    (
        "SELECT read_seq, delivered_seq FROM {ks}.markers WHERE room = ? AND member = ?",
        Kind::Idempotent,
        0,
    ),
    (
        "UPDATE {ks}.markers USING TIMESTAMP ? SET read_seq = ? WHERE room = ? AND member = ?",
        Kind::Idempotent,
        0,
    ),
    (
        "UPDATE {ks}.markers USING TIMESTAMP ? SET delivered_seq = ? \
         WHERE room = ? AND member = ?",
        Kind::Idempotent,
        0,
    ),
];

impl Stmts {
    /// Prepares every statement (concurrently) against `keyspace`.
    pub(super) async fn prepare(session: &Session, keyspace: &str) -> Result<Self, StoreError> {
        let all = try_join_all(CQL.iter().map(|&(cql, kind, page)| async move {
            let mut s = Statement::new(cql.replace("{ks}", keyspace));
            if page > 0 {
                s.set_page_size(page);
            }
            let mut p = session.prepare(s).await.map_err(|e| {
                StoreError::Unavailable(format!(
                    "preparing `{cql}` in keyspace {keyspace} (has `chatmq migrate` run?): {e}"
                ))
            })?;
            match kind {
                Kind::Idempotent => p.set_is_idempotent(true),
                Kind::SerialRead => {
                    p.set_is_idempotent(true);
                    p.set_consistency(Consistency::LocalSerial);
                }
                Kind::Lwt => p.set_is_idempotent(false),
            }
            Ok::<_, StoreError>(p)
        }))
        .await?;
        let mut it = all.into_iter();
        let mut next = || {
            it.next()
                .ok_or_else(|| StoreError::Unavailable("statement list mismatch".into()))
        };
        Ok(Self {
            insert_event: next()?,
            slots_serial: next()?,
            bucket_max: next()?,
            events_range: next()?,
            event_at: next()?,
            idem_get: next()?,
            idem_put: next()?,
            index_get: next()?,
            index_put: next()?,
            member_put: next()?,
            user_room_put: next()?,
            member_get: next()?,
            members_page: next()?,
            user_rooms: next()?,
            room_insert: next()?,
            room_get: next()?,
            room_get_serial: next()?,
            marker_get: next()?,
            marker_read_put: next()?,
            marker_delivered_put: next()?,
        })
    }
}
