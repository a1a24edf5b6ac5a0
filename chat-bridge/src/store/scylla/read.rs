//! Reads (head, pages, rooms, members, markers), the small writes that are
//! not appends (rooms, markers), and the row helpers the append path shares.

use super::lwt::Ident;
use super::stmts::{MemberRow as RawMember, RoomRow as RawRoom};
use super::{big, bucket_of, corrupt, last_in_bucket, stmts, unavailable, unbig, Inner};
use crate::store::{
    MarkerKind, Markers, Member, MemberChange, Page, Range, RoomInfo, StoreError, StoredEvent,
    PAGE_MAX,
};
use bytes::Bytes;
use scylla::deserialize::row::DeserializeRow;
use scylla::response::query_result::QueryResult;
use scylla::response::{PagingState, PagingStateResponse};
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, MaybeUnset, Row};
use std::ops::ControlFlow;

/// Most rows `members` returns at once.
const MEMBERS_MAX: usize = 10_000;
/// Most rows `user_rooms` collects (in pages); beyond, it logs and truncates.
const USER_ROOMS_MAX: usize = 100_000;

/// At most one row of a point read.
pub(super) async fn one<T>(
    inner: &Inner,
    stmt: &PreparedStatement,
    values: impl SerializeRow,
    what: &str,
) -> Result<Option<T>, StoreError>
where
    T: for<'f> DeserializeRow<'f, 'f>,
{
    let res = inner
        .session
        .execute_unpaged(stmt, values)
        .await
        .map_err(|e| unavailable(what, e))?;
    let rows = res.into_rows_result().map_err(|e| corrupt(what, e))?;
    rows.maybe_first_row::<T>().map_err(|e| corrupt(what, e))
}

/// Every row of a paged read, page by page, at most `max`.
async fn paged<T>(
    inner: &Inner,
    stmt: &PreparedStatement,
    values: impl SerializeRow,
    max: usize,
    what: &str,
) -> Result<Vec<T>, StoreError>
where
    T: for<'f> DeserializeRow<'f, 'f>,
{
    let mut out = Vec::new();
    let mut state = PagingState::start();
    loop {
        let (res, more): (QueryResult, PagingStateResponse) = inner
            .session
            .execute_single_page(stmt, &values, state)
            .await
            .map_err(|e| unavailable(what, e))?;
        let rows = res.into_rows_result().map_err(|e| corrupt(what, e))?;
        for r in rows.rows::<T>().map_err(|e| corrupt(what, e))? {
            if out.len() == max {
                return Ok(out);
            }
            out.push(r.map_err(|e| corrupt(what, e))?);
        }
        match more.into_paging_control_flow() {
            ControlFlow::Break(()) => return Ok(out),
            ControlFlow::Continue(s) => state = s,
        }
    }
}

/// The answer of a conditional write: `[applied]`, and the `sender` and
/// `msg_id` of the existing row when the answer carries them (ScyllaDB
/// always returns the old row; Cassandra only when not applied).
pub(super) fn lwt_answer(res: &QueryResult) -> Result<(Option<bool>, Option<Ident>), StoreError> {
    let Some(rows) = res.clone().into_rows_result().ok() else {
        return Ok((None, None));
    };
    let specs = rows.column_specs();
    let col = |name: &str| specs.get_by_name(name).map(|(i, _)| i);
    let (applied, sender, msg_id) = (col("[applied]"), col("sender"), col("msg_id"));
    let Some(row) = rows
        .maybe_first_row::<Row>()
        .map_err(|e| corrupt("lwt answer", e))?
    else {
        return Ok((None, None));
    };
    let get = |i: Option<usize>| i.and_then(|i| row.columns.get(i)).and_then(Option::as_ref);
    let applied = get(applied).and_then(CqlValue::as_boolean);
    let text = |i| get(i).and_then(CqlValue::as_text).cloned();
    let existing = match (text(sender), text(msg_id)) {
        (Some(sender), Some(msg_id)) => Some(Ident { sender, msg_id }),
        _ => None,
    };
    Ok((applied, existing))
}

/// The latest seq of `room`, searching from bucket `from` (which must hold
/// an event unless the room is empty): a full bucket means look at the next.
pub(super) async fn probe(inner: &Inner, room: &str, from: u64) -> Result<u64, StoreError> {
    let mut b = from;
    let mut head = 0;
    loop {
        let max: Option<(i64,)> =
            one(inner, &inner.st.bucket_max, (room, big(b)?), "head read").await?;
        let Some((m,)) = max else { return Ok(head) };
        head = unbig(m)?;
        if head < last_in_bucket(b) {
            return Ok(head);
        }
        b += 1;
    }
}

/// [`crate::store::Store::head`]: from the cached hint, else from the index watermark.
pub(super) async fn head(inner: &Inner, room: &str) -> Result<u64, StoreError> {
    let mut from = inner.hint(room);
    if from == 0 {
        let w: Option<(Option<i64>,)> =
            one(inner, &inner.st.index_get, (room,), "room index read").await?;
        if let Some((Some(w),)) = w {
            from = unbig(w)?;
        }
    }
    probe(inner, room, bucket_of(from)).await
}

/// A row of the stream, as the repair needs it.
pub(super) struct EventRow {
    pub(super) seq: u64,
    pub(super) sender: String,
    pub(super) msg_id: String,
    pub(super) payload: Bytes,
    pub(super) member: Option<MemberChange>,
}

/// The events `lo..=hi` of `room`, ascending, one bucket at a time, paged.
pub(super) async fn scan(
    inner: &Inner,
    room: &str,
    lo: u64,
    hi: u64,
) -> Result<Vec<EventRow>, StoreError> {
    let mut out = Vec::new();
    if lo > hi {
        return Ok(out);
    }
    for b in bucket_of(lo)..=bucket_of(hi) {
        let (from, to) = (lo.max(b * super::BUCKET_SIZE), hi.min(last_in_bucket(b)));
        let max = usize::try_from(to - from + 1).unwrap_or(usize::MAX);
        let values: stmts::SeqRange = (room, big(b)?, big(from)?, big(to)?);
        let mut rows: Vec<stmts::EventRow> =
            paged(inner, &inner.st.events_range, values, max, "history read").await?;
        rows.reverse(); // the partition is seq DESC
        for (seq, sender, msg_id, payload, member) in rows {
            let member = member
                .map(|m| serde_json::from_str(&m).map_err(|e| corrupt("member change", e)))
                .transpose()?;
            out.push(EventRow {
                seq: unbig(seq)?,
                sender,
                msg_id,
                payload: Bytes::from(payload),
                member,
            });
        }
    }
    Ok(out)
}

/// Slots `lo..=hi` (one bucket) read at LOCAL_SERIAL: `out[i]` is slot `lo + i`.
pub(super) async fn slots_serial(
    inner: &Inner,
    room: &str,
    lo: u64,
    hi: u64,
) -> Result<Vec<Option<(Ident, Bytes)>>, StoreError> {
    let values: stmts::SeqRange = (room, big(bucket_of(lo))?, big(lo)?, big(hi)?);
    let res = inner
        .session
        .execute_unpaged(&inner.st.slots_serial, values)
        .await
        .map_err(|e| unavailable("serial read", e))?;
    let rows = res
        .into_rows_result()
        .map_err(|e| corrupt("serial read", e))?;
    let mut out = vec![None; usize::try_from(hi - lo + 1).unwrap_or(0)];
    for r in rows
        .rows::<stmts::SlotRow>()
        .map_err(|e| corrupt("serial read", e))?
    {
        let (seq, sender, msg_id, payload) = r.map_err(|e| corrupt("serial read", e))?;
        let slot = unbig(seq)?
            .checked_sub(lo)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| out.get_mut(i));
        if let Some(slot) = slot {
            *slot = Some((Ident { sender, msg_id }, Bytes::from(payload)));
        }
    }
    Ok(out)
}

/// The seqs a page covers: `lo..=hi`, or `None` for an empty page.
pub(super) fn page_bounds(range: Range, limit: usize, head: u64) -> Option<(u64, u64)> {
    let span = limit.clamp(1, PAGE_MAX) as u64 - 1;
    let newest = |hi: u64| Some((hi.saturating_sub(span).max(1), hi));
    match range {
        _ if head == 0 => None,
        Range::Latest => newest(head),
        Range::Before(b) if b <= 1 => None,
        Range::Before(b) => newest((b - 1).min(head)),
        Range::After(a) if a >= head => None,
        Range::After(a) => Some((a + 1, head.min((a + 1).saturating_add(span)))),
    }
}

/// [`crate::store::Store::read`]. The stream is gap-free from 1, so the seqs
/// of a page (and whether more exist) follow from the head alone.
pub(super) async fn page(
    inner: &Inner,
    room: &str,
    range: Range,
    limit: usize,
) -> Result<Page, StoreError> {
    let head = head(inner, room).await?;
    let Some((lo, hi)) = page_bounds(range, limit, head) else {
        return Ok(Page {
            events: Vec::new(),
            head,
            has_more: false,
        });
    };
    let events = scan(inner, room, lo, hi)
        .await?
        .into_iter()
        .map(|r| StoredEvent {
            seq: r.seq,
            json: r.payload,
        })
        .collect();
    let has_more = match range {
        Range::After(_) => hi < head,
        Range::Latest | Range::Before(_) => lo > 1,
    };
    Ok(Page {
        events,
        head,
        has_more,
    })
}

/// A serde enum (role, state, kind) as its config/wire string.
pub(super) fn enum_str<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        Ok(other) => Err(corrupt("encoding enum", other)),
        Err(e) => Err(corrupt("encoding enum", e)),
    }
}

pub(super) fn parse_enum<T: serde::de::DeserializeOwned>(
    what: &str,
    s: Option<String>,
) -> Result<T, StoreError> {
    let s = s.ok_or_else(|| corrupt(what, "missing"))?;
    serde_json::from_value(serde_json::Value::String(s)).map_err(|e| corrupt(what, e))
}

fn room_info(
    id: &str,
    (kind, title, created_by, created_ts): RawRoom,
) -> Result<RoomInfo, StoreError> {
    Ok(RoomInfo {
        id: id.to_owned(),
        kind: parse_enum("room kind", kind)?,
        title,
        created_by: created_by.unwrap_or_default(),
        created_ts: created_ts.map(unbig).transpose()?.unwrap_or(0),
    })
}

/// [`crate::store::Store::create_room`]: `INSERT ... IF NOT EXISTS`; on an
/// unknown outcome the row is read at LOCAL_SERIAL (ours if identical).
pub(super) async fn create_room(inner: &Inner, info: &RoomInfo) -> Result<bool, StoreError> {
    let kind = enum_str(&info.kind)?;
    let values: stmts::RoomPut = (
        &info.id,
        &kind,
        MaybeUnset::from_option(info.title.as_deref()),
        &info.created_by,
        big(info.created_ts)?,
    );
    let mut last = None;
    for _ in 0..3 {
        match inner
            .session
            .execute_unpaged(&inner.st.room_insert, &values)
            .await
        {
            Ok(res) => match lwt_answer(&res)?.0 {
                Some(applied) => return Ok(applied),
                None => return Err(corrupt("room insert", "no [applied] column")),
            },
            Err(e) => {
                tracing::debug!(room = %info.id, error = %e, "scylla: room insert outcome unknown");
                last = Some(e);
            }
        }
        let row: Option<RawRoom> = one(
            inner,
            &inner.st.room_get_serial,
            (&info.id,),
            "serial room read",
        )
        .await?;
        match row {
            Some(row) => return Ok(room_info(&info.id, row)? == *info),
            None => continue,
        }
    }
    Err(unavailable(
        "room insert",
        last.map_or_else(|| "no answer".to_owned(), |e| e.to_string()),
    ))
}

pub(super) async fn room(inner: &Inner, id: &str) -> Result<Option<RoomInfo>, StoreError> {
    let row: Option<RawRoom> = one(inner, &inner.st.room_get, (id,), "room read").await?;
    row.map(|r| room_info(id, r)).transpose()
}

/// `(other, ...)` -> `Member`; `other` is the user (by room) or the room (by user).
fn member_row(room: Option<&str>, user: Option<&str>, r: RawMember) -> Result<Member, StoreError> {
    let (other, role, state, muted, since) = r;
    Ok(Member {
        room: room.map_or_else(|| other.clone(), str::to_owned),
        user: user.map_or(other, str::to_owned),
        role: parse_enum("member role", role)?,
        state: parse_enum("member state", state)?,
        muted: muted.unwrap_or(false),
        since: since.map(unbig).transpose()?.unwrap_or(0),
    })
}

pub(super) async fn member(
    inner: &Inner,
    room: &str,
    user: &str,
) -> Result<Option<Member>, StoreError> {
    let row: Option<RawMember> =
        one(inner, &inner.st.member_get, (room, user), "member read").await?;
    row.map(|r| member_row(Some(room), None, r)).transpose()
}

pub(super) async fn members(
    inner: &Inner,
    room: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Member>, StoreError> {
    let limit = limit.min(MEMBERS_MAX);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let n = i32::try_from(limit).unwrap_or(i32::MAX);
    let values: stmts::MembersPage = (room, after.unwrap_or(""), n);
    let rows: Vec<RawMember> =
        paged(inner, &inner.st.members_page, values, limit, "members read").await?;
    rows.into_iter()
        .map(|r| member_row(Some(room), None, r))
        .collect()
}

pub(super) async fn user_rooms(inner: &Inner, user: &str) -> Result<Vec<Member>, StoreError> {
    let rows: Vec<RawMember> = paged(
        inner,
        &inner.st.user_rooms,
        (user,),
        USER_ROOMS_MAX,
        "user rooms read",
    )
    .await?;
    if rows.len() == USER_ROOMS_MAX {
        tracing::warn!(user, max = USER_ROOMS_MAX, "scylla: user_rooms truncated");
    }
    rows.into_iter()
        .map(|r| member_row(None, Some(user), r))
        .collect()
}

pub(super) async fn markers(inner: &Inner, room: &str, user: &str) -> Result<Markers, StoreError> {
    let row: Option<stmts::MarkersRow> =
        one(inner, &inner.st.marker_get, (room, user), "markers read").await?;
    let (read, delivered) = row.unwrap_or((None, None));
    Ok(Markers {
        read: read.map(unbig).transpose()?.unwrap_or(0),
        delivered: delivered.map(unbig).transpose()?.unwrap_or(0),
    })
}

/// [`crate::store::Store::set_marker`]: the cell is written
/// `USING TIMESTAMP seq`, so the highest seq wins whatever the order.
pub(super) async fn set_marker(
    inner: &Inner,
    room: &str,
    user: &str,
    kind: MarkerKind,
    seq: u64,
) -> Result<(Markers, bool), StoreError> {
    let mut m = markers(inner, room, user).await?;
    let (slot, stmt) = match kind {
        MarkerKind::Read => (&mut m.read, &inner.st.marker_read_put),
        MarkerKind::Delivered => (&mut m.delivered, &inner.st.marker_delivered_put),
    };
    if seq <= *slot {
        return Ok((m, false));
    }
    *slot = seq;
    let s = big(seq)?;
    inner
        .session
        .execute_unpaged(stmt, {
            let v: stmts::MarkerPut = (s, s, room, user);
            v
        })
        .await
        .map_err(|e| unavailable("marker write", e))?;
    Ok((m, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_bounds_follow_the_embedded_store() {
        let b = |r, l| page_bounds(r, l, 25);
        assert_eq!(b(Range::Latest, 10), Some((16, 25)));
        assert_eq!(b(Range::Latest, 26), Some((1, 25)));
        assert_eq!(b(Range::Latest, 0), Some((25, 25)), "limit 0 reads 1");
        assert_eq!(b(Range::Before(16), 10), Some((6, 15)));
        assert_eq!(b(Range::Before(2), 10), Some((1, 1)));
        assert_eq!(b(Range::Before(1000), 30), Some((1, 25)));
        assert_eq!(b(Range::Before(1), 10), None);
        assert_eq!(b(Range::Before(0), 10), None);
        assert_eq!(b(Range::After(0), 10), Some((1, 10)));
        assert_eq!(b(Range::After(24), 10), Some((25, 25)));
        assert_eq!(b(Range::After(25), 10), None);
        assert_eq!(b(Range::After(u64::MAX), 10), None);
        assert_eq!(
            b(Range::After(0), usize::MAX),
            Some((1, 25)),
            "limit clamps to PAGE_MAX"
        );
        assert_eq!(page_bounds(Range::Latest, 10, 0), None, "empty room");
        assert_eq!(
            page_bounds(Range::After(0), usize::MAX, 5000),
            Some((1, PAGE_MAX as u64))
        );
    }

    #[test]
    fn enums_round_trip_as_strings() -> Result<(), StoreError> {
        use crate::store::{MemberState, Role, RoomKind};
        assert_eq!(enum_str(&Role::Owner)?, "owner");
        assert_eq!(enum_str(&MemberState::Banned)?, "banned");
        assert_eq!(enum_str(&RoomKind::Channel)?, "channel");
        let r: Role = parse_enum("role", Some("admin".into()))?;
        assert_eq!(r, Role::Admin);
        assert!(parse_enum::<Role>("role", Some("king".into())).is_err());
        assert!(parse_enum::<Role>("role", None).is_err());
        Ok(())
    }
}
