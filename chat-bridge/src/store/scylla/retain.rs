//! Blocking between users, and retention: listing rooms, what retention
//! removed from a room, and removing more (see [`crate::store::Store::expire`]).

use super::read::{one, parse_enum};
use super::{big, bucket_of, corrupt, stmts, unavailable, unbig, Inner};
use crate::store::{Expired, KeyAt, RoomKind, RoomsPage, StoreError};
use futures_util::future::try_join_all;
use scylla::response::{PagingState, PagingStateResponse};
use std::ops::ControlFlow;

pub(super) async fn is_blocked(
    inner: &Inner,
    user: &str,
    target: &str,
) -> Result<bool, StoreError> {
    let row: Option<(String,)> =
        one(inner, &inner.st.block_get, (user, target), "block read").await?;
    Ok(row.is_some())
}

pub(super) async fn set_blocked(
    inner: &Inner,
    user: &str,
    target: &str,
    on: bool,
) -> Result<(), StoreError> {
    let stmt = if on {
        &inner.st.block_put
    } else {
        &inner.st.block_del
    };
    inner
        .session
        .execute_unpaged(stmt, (user, target))
        .await
        .map_err(|e| unavailable("block write", e))?;
    Ok(())
}

pub(super) async fn blocked_users(
    inner: &Inner,
    user: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let limit = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
    let res = inner
        .session
        .execute_unpaged(&inner.st.blocks_list, {
            let v: stmts::BlocksPage = (user, limit);
            v
        })
        .await
        .map_err(|e| unavailable("blocks read", e))?;
    let rows = res
        .into_rows_result()
        .map_err(|e| corrupt("blocks read", e))?;
    let mut out = Vec::new();
    for r in rows
        .rows::<(String,)>()
        .map_err(|e| corrupt("blocks read", e))?
    {
        out.push(r.map_err(|e| corrupt("blocks read", e))?.0);
    }
    Ok(out)
}

/// One page of the rooms table (the driver's page; `limit` is its size at
/// most, set at prepare time), in token order; the cursor is the driver's
/// paging state.
pub(super) async fn rooms_page(
    inner: &Inner,
    cursor: Option<Vec<u8>>,
) -> Result<RoomsPage, StoreError> {
    let state = match cursor {
        Some(c) => PagingState::new_from_raw_bytes(c),
        None => PagingState::start(),
    };
    let (res, more): (_, PagingStateResponse) = inner
        .session
        .execute_single_page(&inner.st.rooms_all, (), state)
        .await
        .map_err(|e| unavailable("rooms scan", e))?;
    let rows = res
        .into_rows_result()
        .map_err(|e| corrupt("rooms scan", e))?;
    let mut page = RoomsPage::default();
    for r in rows
        .rows::<stmts::RoomKindRow>()
        .map_err(|e| corrupt("rooms scan", e))?
    {
        let (room, kind) = r.map_err(|e| corrupt("rooms scan", e))?;
        let kind: RoomKind = parse_enum("room kind", kind)?;
        page.rooms.push((room, kind));
    }
    page.next = match more.into_paging_control_flow() {
        ControlFlow::Break(()) => None,
        ControlFlow::Continue(s) => s.as_bytes_slice().map(|b| b.to_vec()),
    };
    Ok(page)
}

pub(super) async fn expired(inner: &Inner, room: &str) -> Result<Expired, StoreError> {
    let row: Option<stmts::ExpiredRow> =
        one(inner, &inner.st.expired_get, (room,), "retention read").await?;
    let (e, k) = row.unwrap_or((None, None));
    let events_before = e.map(unbig).transpose()?.unwrap_or(1).max(1);
    Ok(Expired {
        events_before,
        keys_before: k.map(unbig).transpose()?.unwrap_or(1).max(events_before),
    })
}

/// [`crate::store::Store::expire`]. Events are deleted below the room's
/// index watermark only (everything from it up stays, the head included:
/// the head search starts there), with one range delete per bucket.
pub(super) async fn expire(
    inner: &Inner,
    room: &str,
    keys: Vec<KeyAt>,
    keys_before: u64,
    events_before: u64,
) -> Result<Expired, StoreError> {
    let cur = expired(inner, room).await?;
    let watermark: Option<(Option<i64>,)> =
        one(inner, &inner.st.index_get, (room,), "room index read").await?;
    let indexed = match watermark {
        Some((Some(w),)) => unbig(w)?,
        _ => 0,
    };
    let events_before = events_before.min(indexed).max(cur.events_before);
    let next = Expired {
        events_before,
        keys_before: keys_before.max(cur.keys_before).max(events_before),
    };
    // a key is forgotten only while it points at the event retention removes
    try_join_all(keys.iter().map(|k| async move {
        let row: Option<(Option<i64>,)> = one(
            inner,
            &inner.st.idem_get,
            (room, k.from.as_str(), k.msg_id.as_str()),
            "idempotency read",
        )
        .await?;
        if let Some((Some(seq),)) = row {
            if unbig(seq)? == k.seq {
                let v: stmts::IdemDel = (room, &k.from, &k.msg_id);
                inner
                    .session
                    .execute_unpaged(&inner.st.idem_del, v)
                    .await
                    .map_err(|e| unavailable("idempotency delete", e))?;
            }
        }
        Ok::<_, StoreError>(())
    }))
    .await?;
    if events_before > cur.events_before {
        let below = big(events_before)?;
        let buckets = bucket_of(cur.events_before)..=bucket_of(events_before);
        try_join_all(buckets.map(|b| async move {
            let v: stmts::EventsDel = (room, big(b)?, below);
            inner
                .session
                .execute_unpaged(&inner.st.events_del, v)
                .await
                .map_err(|e| unavailable("retention delete", e))
        }))
        .await?;
    }
    for (stmt, value, was) in [
        (
            &inner.st.expired_put_events,
            next.events_before,
            cur.events_before,
        ),
        (
            &inner.st.expired_put_keys,
            next.keys_before,
            cur.keys_before,
        ),
    ] {
        if value > was {
            let v = big(value)?;
            let put: stmts::ExpiredPut = (v, v, room);
            inner
                .session
                .execute_unpaged(stmt, put)
                .await
                .map_err(|e| unavailable("retention write", e))?;
        }
    }
    Ok(next)
}
