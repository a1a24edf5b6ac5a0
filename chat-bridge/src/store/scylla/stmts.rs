//! Every CQL statement the store runs, prepared once at connect.

use crate::store::StoreError;
use futures_util::future::try_join_all;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, Statement};
use scylla::value::MaybeUnset;

// The bound values and the rows of the statements, as the code uses them;
// `tests::statements_match_the_schema` checks each against the CQL and the
// schema file, so a column list and its Rust type cannot drift apart.

/// `insert_event`: room, bucket, seq, sender, msg_id, ts, payload, member change.
pub(super) type InsertEvent<'a> = (
    &'a str,
    i64,
    i64,
    &'a str,
    &'a str,
    i64,
    &'a [u8],
    MaybeUnset<String>,
);
/// room, bucket, seq from, seq to.
pub(super) type SeqRange<'a> = (&'a str, i64, i64, i64);
/// `slots_serial`: seq, sender, msg_id, payload.
pub(super) type SlotRow = (i64, String, String, Vec<u8>);
/// `events_range`: seq, sender, msg_id, payload, member change.
pub(super) type EventRow = (i64, String, String, Vec<u8>, Option<String>);
/// room, sender, msg_id.
pub(super) type IdemKey<'a> = (&'a str, &'a str, &'a str);
/// room, sender, msg_id, seq.
pub(super) type IdemPut<'a> = (&'a str, &'a str, &'a str, i64);
/// timestamp, value, room.
pub(super) type IndexPut<'a> = (i64, i64, &'a str);
/// room or user, user or room, role, state, muted, since, timestamp.
pub(super) type MemberPut<'a> = (&'a str, &'a str, &'a str, &'a str, bool, i64, i64);
/// member (or room), role, state, muted, since.
pub(super) type MemberRow = (
    String,
    Option<String>,
    Option<String>,
    Option<bool>,
    Option<i64>,
);
/// room, member after, limit.
pub(super) type MembersPage<'a> = (&'a str, &'a str, i32);
/// room, kind, title, created_by, created_ts.
pub(super) type RoomPut<'a> = (&'a str, &'a str, MaybeUnset<&'a str>, &'a str, i64);
/// kind, title, created_by, created_ts.
pub(super) type RoomRow = (Option<String>, Option<String>, Option<String>, Option<i64>);
/// read, delivered.
pub(super) type MarkersRow = (Option<i64>, Option<i64>);
/// timestamp, value, room, member.
pub(super) type MarkerPut<'a> = (i64, i64, &'a str, &'a str);
/// A partition and a seq.
pub(super) type EventAt<'a> = (&'a str, i64, i64);
/// `payload_get`: payload, its write time (microseconds).
pub(super) type PayloadRow = (Option<Vec<u8>>, Option<i64>);
/// `payload_put`: timestamp, payload, room, bucket, seq.
pub(super) type PayloadPut<'a> = (i64, &'a [u8], &'a str, i64, i64);

/// `expired_put_*`: timestamp, value, room.
pub(super) type ExpiredPut<'a> = (i64, i64, &'a str);
/// `expired_get`: events_before, keys_before.
pub(super) type ExpiredRow = (Option<i64>, Option<i64>);
/// `idem_del`: room, sender, msg_id.
pub(super) type IdemDel<'a> = (&'a str, &'a str, &'a str);
/// `events_del`: room, bucket, seq below.
pub(super) type EventsDel<'a> = (&'a str, i64, i64);
/// `rooms_all`: room, kind.
pub(super) type RoomKindRow = (String, Option<String>);
/// `blocks_list`: member, limit.
pub(super) type BlocksPage<'a> = (&'a str, i32);

/// Rows per page when retention lists every room.
pub(super) const ROOMS_PAGE_ROWS: i32 = 1000;

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
    pub(super) payload_get: PreparedStatement,
    pub(super) payload_put: PreparedStatement,
    pub(super) block_get: PreparedStatement,
    pub(super) block_put: PreparedStatement,
    pub(super) block_del: PreparedStatement,
    pub(super) blocks_list: PreparedStatement,
    pub(super) rooms_all: PreparedStatement,
    pub(super) expired_get: PreparedStatement,
    pub(super) expired_put_events: PreparedStatement,
    pub(super) expired_put_keys: PreparedStatement,
    pub(super) idem_del: PreparedStatement,
    pub(super) events_del: PreparedStatement,
    pub(super) settings_get: PreparedStatement,
    pub(super) settings_put: PreparedStatement,
}

/// (CQL with `{ks}` for the keyspace, how it runs, page size).
const CQL: [(&str, Kind, i32); 34] = [
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
    (
        "SELECT payload, WRITETIME(payload) FROM {ks}.messages \
         WHERE room = ? AND bucket = ? AND seq = ?",
        Kind::Idempotent,
        0,
    ),
    // A tombstone over a deleted event's payload, written just above the
    // payload's own write time: it wins over the insert whatever the clocks
    // (see the module doc of `scylla`, "Deletes").
    (
        "UPDATE {ks}.messages USING TIMESTAMP ? SET payload = ? \
         WHERE room = ? AND bucket = ? AND seq = ?",
        Kind::Idempotent,
        0,
    ),
    (
        "SELECT blocked FROM {ks}.user_blocks WHERE member = ? AND blocked = ?",
        Kind::Idempotent,
        0,
    ),
    (
        "INSERT INTO {ks}.user_blocks (member, blocked) VALUES (?, ?)",
        Kind::Idempotent,
        0,
    ),
    (
        "DELETE FROM {ks}.user_blocks WHERE member = ? AND blocked = ?",
        Kind::Idempotent,
        0,
    ),
    (
        "SELECT blocked FROM {ks}.user_blocks WHERE member = ? LIMIT ?",
        Kind::Idempotent,
        0,
    ),
    (
        "SELECT room, kind FROM {ks}.rooms",
        Kind::Idempotent,
        ROOMS_PAGE_ROWS,
    ),
    (
        "SELECT events_before, keys_before FROM {ks}.room_expired WHERE room = ?",
        Kind::Idempotent,
        0,
    ),
    // Each cell only moves forward: written with its value as its timestamp.
    (
        "UPDATE {ks}.room_expired USING TIMESTAMP ? SET events_before = ? WHERE room = ?",
        Kind::Idempotent,
        0,
    ),
    (
        "UPDATE {ks}.room_expired USING TIMESTAMP ? SET keys_before = ? WHERE room = ?",
        Kind::Idempotent,
        0,
    ),
    (
        "DELETE FROM {ks}.idempotency WHERE room = ? AND sender = ? AND msg_id = ?",
        Kind::Idempotent,
        0,
    ),
    // A range delete: one range tombstone per bucket, never row by row.
    (
        "DELETE FROM {ks}.messages WHERE room = ? AND bucket = ? AND seq < ?",
        Kind::Idempotent,
        0,
    ),
    (
        "SELECT settings FROM {ks}.room_settings WHERE room = ?",
        Kind::Idempotent,
        0,
    ),
    (
        "INSERT INTO {ks}.room_settings (room, settings) VALUES (?, ?)",
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
            payload_get: next()?,
            payload_put: next()?,
            block_get: next()?,
            block_put: next()?,
            block_del: next()?,
            blocks_list: next()?,
            rooms_all: next()?,
            expired_get: next()?,
            expired_put_events: next()?,
            expired_put_keys: next()?,
            idem_del: next()?,
            events_del: next()?,
            settings_get: next()?,
            settings_put: next()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::scylla::migrate::{statements, MIGRATIONS};
    use scylla::deserialize::row::DeserializeRow;
    use scylla::frame::response::result::{ColumnSpec, ColumnType, NativeType, TableSpec};
    use scylla::serialize::row::{RowSerializationContext, SerializeRow};
    use scylla::serialize::writers::RowWriter;
    use std::collections::HashMap;

    type Schema = HashMap<String, HashMap<String, NativeType>>;
    /// Point reads bind their keys as `&str`s.
    type Key1<'a> = (&'a str,);
    type Key2<'a> = (&'a str, &'a str);
    type Bucket<'a> = (&'a str, i64);

    /// Table -> column -> type, from the migration files.
    fn schema() -> Schema {
        let mut tables = Schema::new();
        for (_, text) in MIGRATIONS {
            for stmt in statements(text, "ks", "{}") {
                let Some(rest) = stmt.strip_prefix("CREATE TABLE IF NOT EXISTS ks.") else {
                    continue;
                };
                let name = rest.split([' ', '(']).next().unwrap_or_default();
                let cols = tables.entry(name.to_owned()).or_default();
                for line in rest.lines().skip(1) {
                    let mut w = line.split_whitespace();
                    let (Some(col), Some(typ)) = (w.next(), w.next()) else {
                        continue;
                    };
                    let typ = match typ.trim_end_matches(',') {
                        "text" => NativeType::Text,
                        "bigint" => NativeType::BigInt,
                        "blob" => NativeType::Blob,
                        "boolean" => NativeType::Boolean,
                        "timestamp" => NativeType::Timestamp,
                        _ => continue,
                    };
                    cols.insert(col.to_owned(), typ);
                }
            }
        }
        tables
    }

    fn spec(name: &str, typ: NativeType) -> ColumnSpec<'static> {
        ColumnSpec::owned(
            name.to_owned(),
            ColumnType::Native(typ),
            TableSpec::owned("ks".into(), "t".into()),
        )
    }

    /// (the selected columns, the bound columns) of a statement, typed from the schema.
    fn shape(cql: &str, schema: &Schema) -> (Vec<ColumnSpec<'static>>, Vec<ColumnSpec<'static>>) {
        let cql = cql.replace("{ks}", "ks");
        let words: Vec<&str> = cql
            .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
            .filter(|w| !w.is_empty())
            .collect();
        let table = words
            .iter()
            .find_map(|w| w.strip_prefix("ks."))
            .unwrap_or_else(|| panic!("no table in {cql}"));
        let cols = schema
            .get(table)
            .unwrap_or_else(|| panic!("{table} is not in the schema"));
        let col = |c: &str| {
            spec(
                c,
                cols.get(c)
                    .cloned()
                    .unwrap_or_else(|| panic!("{table}.{c} is not in the schema ({cql})")),
            )
        };
        let mut selected = Vec::new();
        if words.first() == Some(&"SELECT") {
            let mut it = words.iter().skip(1).take_while(|w| **w != "FROM");
            while let Some(w) = it.next() {
                if *w == "WRITETIME" {
                    let c = it.next().copied().unwrap_or_default();
                    col(c); // the column must exist
                    selected.push(spec("writetime", NativeType::BigInt));
                } else {
                    selected.push(col(w));
                }
            }
        }
        let mut binds = Vec::new();
        if words.first() == Some(&"INSERT") {
            let list: Vec<&str> = words
                .iter()
                .skip(3)
                .take_while(|w| **w != "VALUES")
                .copied()
                .collect();
            binds.extend(list.iter().map(|c| col(c)));
        }
        for (i, w) in words.iter().enumerate() {
            if *w != "?" || words.first() == Some(&"INSERT") && !words[..i].contains(&"USING") {
                continue;
            }
            let prev = words.get(i.wrapping_sub(1)).copied().unwrap_or_default();
            binds.push(match prev {
                "TIMESTAMP" => spec("[timestamp]", NativeType::BigInt),
                "LIMIT" => spec("[limit]", NativeType::Int),
                "=" | ">" | ">=" | "<" | "<=" => {
                    col(words.get(i.wrapping_sub(2)).copied().unwrap_or_default())
                }
                other => panic!("bind marker after {other:?} in {cql}"),
            });
        }
        (selected, binds)
    }

    fn check<V: SerializeRow + Default, R>(i: usize, schema: &Schema)
    where
        R: for<'f> DeserializeRow<'f, 'f>,
    {
        let (cql, _, _) = CQL[i];
        let (selected, binds) = shape(cql, schema);
        let mut buf = Vec::new();
        V::default()
            .serialize(
                &RowSerializationContext::from_specs(&binds),
                &mut RowWriter::new(&mut buf),
            )
            .unwrap_or_else(|e| panic!("values of `{cql}`: {e}"));
        if !selected.is_empty() {
            R::type_check(&selected).unwrap_or_else(|e| panic!("row of `{cql}`: {e}"));
        }
    }

    #[test]
    fn statements_match_the_schema() {
        let s = schema();
        assert_eq!(s.len(), 11, "tables: {:?}", s.keys());
        check::<InsertEvent<'_>, ()>(0, &s);
        check::<SeqRange<'_>, SlotRow>(1, &s);
        check::<Bucket<'_>, (i64,)>(2, &s);
        check::<SeqRange<'_>, EventRow>(3, &s);
        check::<EventAt<'_>, (Vec<u8>,)>(4, &s);
        check::<IdemKey<'_>, (Option<i64>,)>(5, &s);
        check::<IdemPut<'_>, ()>(6, &s);
        check::<Key1<'_>, (Option<i64>,)>(7, &s);
        check::<IndexPut<'_>, ()>(8, &s);
        check::<MemberPut<'_>, ()>(9, &s);
        check::<MemberPut<'_>, ()>(10, &s);
        check::<Key2<'_>, MemberRow>(11, &s);
        check::<MembersPage<'_>, MemberRow>(12, &s);
        check::<Key1<'_>, MemberRow>(13, &s);
        check::<RoomPut<'_>, ()>(14, &s);
        check::<Key1<'_>, RoomRow>(15, &s);
        check::<Key1<'_>, RoomRow>(16, &s);
        check::<Key2<'_>, MarkersRow>(17, &s);
        check::<MarkerPut<'_>, ()>(18, &s);
        check::<MarkerPut<'_>, ()>(19, &s);
        check::<EventAt<'_>, PayloadRow>(20, &s);
        check::<PayloadPut<'_>, ()>(21, &s);
        check::<Key2<'_>, (String,)>(22, &s);
        check::<Key2<'_>, ()>(23, &s);
        check::<Key2<'_>, ()>(24, &s);
        check::<BlocksPage<'_>, (String,)>(25, &s);
        check::<(), RoomKindRow>(26, &s);
        check::<Key1<'_>, ExpiredRow>(27, &s);
        check::<ExpiredPut<'_>, ()>(28, &s);
        check::<ExpiredPut<'_>, ()>(29, &s);
        check::<IdemDel<'_>, ()>(30, &s);
        check::<EventsDel<'_>, ()>(31, &s);
        check::<Key1<'_>, (Option<String>,)>(32, &s);
        check::<Key2<'_>, ()>(33, &s);
    }
}
