//! Paged lists of a user's rooms: `rooms.list` and the `joined` part of
//! `sync`.
//!
//! Both walk the user's membership rows in room id order, skip rooms the
//! user has left or is banned from without reading anything of them, and
//! stop at `limit` entries or before the result would exceed
//! [`REPLY_MAX`] bytes, whichever comes first; `has_more` then says so and
//! `next` is the cursor (`after`) for the following page.

use super::{can_read, raw_event, Chat};
use crate::store::{Member, MemberState, Range};
use crate::wire::{self, Refusal};
use schema::request::List;
use schema::result::{JoinedEntry, ListEntry, ListResult};
use schema::RawValue;
use serde::Serialize;
use std::collections::BTreeMap;

/// Most bytes of a `rooms.list` or `sync` result (serialized JSON): a page
/// ends before an entry that would pass it. With the reply's envelope
/// (`corr` is at most a request payload) it stays well inside the bridge's
/// and the service account's packet limits.
pub(super) const REPLY_MAX: usize = wire::REPLY_EVENTS_MAX;
/// Bytes kept for a result's own frame (braces, `has_more`, `next`, ...).
pub(super) const FRAME_RESERVE: usize = 256;
/// `rooms.list` page size when none is given, and the largest.
pub(super) const LIST_DEFAULT: usize = 100;
pub(super) const LIST_MAX: usize = 500;
/// `sync` `joined` page size when none is given, and the largest.
pub(super) const JOINED_DEFAULT: usize = 1000;
pub(super) const JOINED_MAX: usize = 1000;

/// Counts bytes written.
struct Count(usize);

impl std::io::Write for Count {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The length of `v` serialized, without building the bytes.
pub(super) fn json_len<T: Serialize + ?Sized>(v: &T) -> usize {
    let mut c = Count(0);
    // the wire types always serialize, and Count never fails
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// A page size `k`: `default` when absent, refused outside 1..=`max`.
pub(super) fn page_limit(
    value: Option<u64>,
    k: &str,
    default: usize,
    max: usize,
) -> Result<usize, Refusal> {
    match value {
        None => Ok(default),
        Some(l) if (1..=max as u64).contains(&l) => Ok(l as usize),
        Some(_) => Err(Refusal::bad(format!("{k} must be 1..{max}"))),
    }
}

/// An optional room id cursor `k` (a page starts after it).
pub(super) fn room_cursor(value: Option<String>, k: &str) -> Result<Option<String>, Refusal> {
    match value {
        None => Ok(None),
        Some(r) if crate::valid_id(&r) => Ok(Some(r)),
        Some(_) => Err(Refusal::bad(format!("{k} must be a room id"))),
    }
}

/// The rows of rooms the user is in or invited to, after `after`, in room
/// id order (the store's order).
fn active_after(rows: Vec<Member>, after: Option<&str>) -> impl Iterator<Item = Member> + '_ {
    rows.into_iter().filter(move |m| {
        matches!(m.state, MemberState::Joined | MemberState::Invited)
            && after.is_none_or(|a| m.room.as_str() > a)
    })
}

/// Adds `entry` (costing `size` bytes) to a page that has `used` bytes of
/// `max`, unless it would not fit.
fn take<T>(page: &mut Vec<T>, entry: T, size: usize, used: &mut usize, max: usize) -> bool {
    if used.saturating_add(size) > max {
        return false;
    }
    *used += size;
    page.push(entry);
    true
}

impl Chat {
    /// `rooms.list`: `limit` (1..=500, default 100) rooms after the room id
    /// `after`, each with `kind`, `title`, `state`, `role`, `head`, `read`,
    /// `unread` and the `last` event (none for an invitation to a room the
    /// user may not read yet); `has_more`, and `next` (the `after`
    /// of the next page) when there is more.
    pub(super) async fn list(&self, user: &str, p: List) -> Result<Box<RawValue>, Refusal> {
        let limit = page_limit(p.limit, "limit", LIST_DEFAULT, LIST_MAX)?;
        let after = room_cursor(p.after, "after")?;
        let page = self
            .list_page(user, after.as_deref(), limit, REPLY_MAX)
            .await?;
        wire::result(&page)
    }

    /// One `rooms.list` page of at most `max` bytes.
    pub(super) async fn list_page(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
        max: usize,
    ) -> Result<ListResult<Box<RawValue>>, Refusal> {
        let rows = self.store.user_rooms(user).await?;
        let mut rooms = Vec::new();
        let mut used = FRAME_RESERVE;
        let mut has_more = false;
        for m in active_after(rows, after) {
            if rooms.len() == limit {
                has_more = true;
                break;
            }
            let info = self.store.room(&m.room).await?;
            // an invitation shows the room, not what is said in it
            let (head, last) = if info.as_ref().is_some_and(|i| can_read(Some(&m), i)) {
                let page = self.store.read(&m.room, Range::Latest, 1).await?;
                // the stored bytes as they are (a copy, not a parse)
                let last = page
                    .events
                    .last()
                    .and_then(raw_event)
                    .map(ToOwned::to_owned);
                (page.head, last)
            } else {
                (self.store.head(&m.room).await?, None)
            };
            let marks = self.store.markers(&m.room, user).await?;
            let unread = if info.as_ref().is_some_and(|i| can_read(Some(&m), i)) {
                self.unread(&m.room, user, marks.read, head).await?
            } else {
                0
            };
            let mut entry = ListEntry {
                room: m.room,
                kind: info.as_ref().map(|i| i.kind),
                title: info.and_then(|i| i.title),
                state: m.state,
                role: m.role,
                head,
                read: marks.read,
                unread,
                last,
            };
            let size = json_len(&entry) + 1;
            if rooms.is_empty() && used + size > max {
                // a page makes progress: an entry too large for one goes
                // without its last event (the rest is a few hundred bytes)
                entry.last = None;
                used += json_len(&entry) + 1;
                rooms.push(entry);
            } else if !take(&mut rooms, entry, size, &mut used, max) {
                has_more = true;
                break;
            }
        }
        let next = next_room(&rooms, has_more, |r| &r.room);
        Ok(ListResult {
            rooms,
            has_more,
            next,
        })
    }

    /// The `joined` part of `sync`: rooms the user is in or invited to that
    /// the request did not name, after `after`, at most `limit`, each
    /// `{room, state, head}`, while `used` stays within `max`. The entries
    /// and whether there are more.
    pub(super) async fn joined_page(
        &self,
        user: &str,
        named: &BTreeMap<String, u64>,
        after: Option<&str>,
        limit: usize,
        used: &mut usize,
        max: usize,
    ) -> Result<(Vec<JoinedEntry>, bool), Refusal> {
        let rows = self.store.user_rooms(user).await?;
        let mut joined = Vec::new();
        for m in active_after(rows, after).filter(|m| !named.contains_key(&m.room)) {
            if joined.len() == limit {
                return Ok((joined, true));
            }
            let head = self.store.head(&m.room).await?;
            let entry = JoinedEntry {
                room: m.room,
                state: m.state,
                head,
            };
            let size = json_len(&entry) + 1;
            if !take(&mut joined, entry, size, used, max) {
                return Ok((joined, true));
            }
        }
        Ok((joined, false))
    }
}

/// The cursor of the page after `page` (its last entry's room) when there
/// is more.
pub(super) fn next_room<T>(
    page: &[T],
    has_more: bool,
    room: impl Fn(&T) -> &String,
) -> Option<String> {
    page.last().filter(|_| has_more).map(|e| room(e).clone())
}
