//! Reading: `history`, `sync`, and read/delivered markers.

use super::{can_read, now_ms, page, raw_event, raw_events, Chat, Out};
use crate::store::{MarkerKind, Member, MemberState, Range, RoomInfo};
use crate::wire::{self, required_room, Code, Refusal};
use schema::request::{History, Marker, Sync};
use schema::result::{HistoryResult, MarkerResult, SyncResult, SyncRoom};
use schema::{ErrorBody, RawValue, Receipt};
use std::collections::BTreeMap;

/// Bytes kept for each named room's entry in a `sync` result besides its
/// events: its key, `head`, `has_more`, `unread`, or its refusal (under 200
/// bytes with a 64-char room id; checked by a test).
const ENTRY_RESERVE: usize = 256;

impl Chat {
    pub(super) async fn readable_room(
        &self,
        user: &str,
        room: &str,
    ) -> Result<(RoomInfo, Option<Member>), Refusal> {
        let not_member =
            || Refusal::new(Code::NotMember, format!("you are not a member of {room}"));
        let info = self.store.room(room).await?.ok_or_else(not_member)?;
        let m = self.store.member(room, user).await?;
        if self.is_admin(user) {
            return Ok((info, m));
        }
        if m.as_ref().is_some_and(|m| m.state == MemberState::Banned) {
            return Err(Refusal::new(
                Code::Banned,
                format!("you are banned from {room}"),
            ));
        }
        if !can_read(m.as_ref(), &info) {
            return Err(not_member());
        }
        Ok((info, m))
    }

    /// A page size field: the configured default when absent, else 1..=max.
    pub(super) fn page_limit(&self, value: Option<u64>, field: &str) -> Result<usize, Refusal> {
        let max = self.sizes.history_max;
        match value {
            None => Ok(self.sizes.history_default),
            Some(l) if l >= 1 && l <= max as u64 => Ok(l as usize),
            Some(_) => Err(Refusal::bad(format!("{field} must be 1..{max}"))),
        }
    }

    pub(super) async fn history(&self, user: &str, p: History) -> Result<Box<RawValue>, Refusal> {
        let room = required_room(p.room)?;
        let limit = self.page_limit(p.limit, "limit")?;
        let range = match (p.before, p.after) {
            (Some(_), Some(_)) => return Err(Refusal::bad("give before or after, not both")),
            (Some(b), None) => Range::Before(b),
            (None, Some(a)) => Range::After(a),
            (None, None) => Range::Latest,
        };
        self.readable_room(user, &room).await?;
        match p.view.as_deref() {
            None | Some("events") => {}
            Some("readable") => {
                return self.readable_history(room, range, limit, user).await;
            }
            Some(_) => return Err(Refusal::bad("view must be \"events\" or \"readable\"")),
        }
        let (page, truncated) = self.retained_read(&room, range, limit).await?;
        let mut budget = wire::REPLY_EVENTS_MAX;
        let (events, cut) = fit(&page.events, range, &mut budget);
        let has_more = page.has_more || cut;
        // the stored bytes go into the reply as they are
        wire::result(&HistoryResult {
            room,
            events: raw_events(events),
            head: page.head,
            has_more,
            truncated: truncated && (matches!(range, Range::After(_)) || !has_more),
        })
    }

    /// A page of `room`'s stream as retention left it, and whether it is
    /// `truncated`: for `after` a cursor whose next events are gone (the
    /// page starts at the first one kept), else a page that reaches the
    /// first event kept while older ones existed (`has_more` is then false).
    pub(super) async fn retained_read(
        &self,
        room: &str,
        range: Range,
        limit: usize,
    ) -> Result<(crate::store::Page, bool), Refusal> {
        if !self.retention.any() {
            return Ok((self.store.read(room, range, limit).await?, false));
        }
        let floor = self.store.expired(room).await?.events_before;
        if floor <= 1 {
            return Ok((self.store.read(room, range, limit).await?, false));
        }
        if let Range::After(a) = range {
            if a.saturating_add(1) < floor {
                let page = self
                    .store
                    .read(room, Range::After(floor - 1), limit)
                    .await?;
                return Ok((page, true));
            }
            return Ok((self.store.read(room, range, limit).await?, false));
        }
        let mut page = self.store.read(room, range, limit).await?;
        let reaches = page.events.first().is_none_or(|e| e.seq <= floor);
        if reaches {
            page.has_more = false;
        }
        Ok((page, reaches))
    }

    /// `sync`: per named room (`rooms`: `{room: cursor}`) the events after
    /// the cursor, `head`, `has_more`, `unread` (or `left` with the
    /// refusal); plus a page of the rooms the user is in or invited to that
    /// the request did not name (`joined`, paged by `joined_limit` and
    /// `joined_after`, with `joined_has_more` and `joined_next`). The whole
    /// result stays within [`page::REPLY_MAX`] bytes.
    pub(super) async fn sync(&self, user: &str, p: Sync) -> Result<Box<RawValue>, Refusal> {
        let result = self.sync_within(user, p, page::REPLY_MAX).await?;
        wire::result(&result)
    }

    /// [`Chat::sync`] with a result of at most `max` bytes.
    pub(super) async fn sync_within(
        &self,
        user: &str,
        p: Sync,
        max: usize,
    ) -> Result<SyncResult<Box<RawValue>>, Refusal> {
        let readable = match p.view.as_deref() {
            None | Some("events") => false,
            Some("readable") => true,
            Some(_) => return Err(Refusal::bad("view must be \"events\" or \"readable\"")),
        };
        // each cursor is an unsigned integer: `wire::params` saw to it
        let cursors = p.rooms.unwrap_or_default();
        if cursors.len() > 1000 {
            return Err(Refusal::bad("at most 1000 rooms per sync"));
        }
        let limit = self.page_limit(p.limit_per_room, "limit_per_room")?;
        let joined_limit = page::page_limit(
            p.joined_limit,
            "joined_limit",
            page::JOINED_DEFAULT,
            page::JOINED_MAX,
        )?;
        let joined_after = page::room_cursor(p.joined_after, "joined_after")?;
        let mut named = Vec::with_capacity(cursors.len());
        for (room, &cursor) in &cursors {
            if !crate::valid_id(room) {
                return Err(Refusal::bad("invalid room id in rooms"));
            }
            named.push((room, cursor));
        }
        // every named room's entry gets its frame; the joined page comes
        // next, and the named rooms' events fill what is left
        let mut used = page::FRAME_RESERVE + named.len() * ENTRY_RESERVE;
        let (joined, joined_more) = self
            .joined_page(
                user,
                &cursors,
                joined_after.as_deref(),
                joined_limit,
                &mut used,
                max,
            )
            .await?;
        let mut rooms = BTreeMap::new();
        for (room, cursor) in named {
            let entry = match self.readable_room(user, room).await {
                Ok((_, m)) => {
                    let range = Range::After(cursor);
                    let (page, truncated) = self.retained_read(room, range, limit).await?;
                    let mut budget = max.saturating_sub(used);
                    let (events, cut) = fit(&page.events, range, &mut budget);
                    let read = match m {
                        Some(_) => self.store.markers(room, user).await?.read,
                        None => 0,
                    };
                    let from = read.max(cursor);
                    let unread = self.unread(room, user, from, page.head).await?;
                    let events = if readable {
                        self.readable_events(room, user, events, page.head).await?
                    } else {
                        // the stored bytes as they are (a copy, not a parse)
                        events
                            .iter()
                            .filter_map(raw_event)
                            .map(ToOwned::to_owned)
                            .collect()
                    };
                    SyncRoom::Page {
                        events,
                        head: page.head,
                        has_more: page.has_more || cut,
                        unread,
                        truncated,
                    }
                }
                Err(r) if r.code == Code::Unavailable => return Err(r),
                Err(r) => SyncRoom::Left {
                    left: true,
                    error: ErrorBody {
                        code: r.code,
                        message: r.message,
                    },
                },
            };
            // `"room":` and a comma besides the entry
            used = used - ENTRY_RESERVE + page::json_len(&entry) + room.len() + 4;
            rooms.insert(room.clone(), entry);
        }
        let joined_next = page::next_room(&joined, joined_more, |j| &j.room);
        Ok(SyncResult {
            rooms,
            joined,
            joined_has_more: joined_more,
            joined_next,
        })
    }

    /// Moves a read or delivered marker forward.
    pub(super) async fn marker(
        &self,
        user: &str,
        p: Marker,
        kind: MarkerKind,
        out: &mut Vec<Out>,
    ) -> Result<Box<RawValue>, Refusal> {
        let room = required_room(p.room)?;
        let seq = p.seq.ok_or_else(|| Refusal::bad("seq is required"))?;
        let (_, m) = self.readable_room(user, &room).await?;
        if m.map(|m| m.state) != Some(MemberState::Joined) {
            return Err(Refusal::new(
                Code::NotMember,
                format!("you are not a member of {room}"),
            ));
        }
        let head = self.store.head(&room).await?;
        let (marks, moved) = self
            .store
            .set_marker(&room, user, kind, seq.min(head))
            .await?;
        if moved {
            let receipt = Receipt {
                room: room.clone(),
                user: user.to_owned(),
                read: marks.read,
                delivered: marks.delivered,
                ts: now_ms(),
            };
            out.push(Out {
                topic: format!("{}/rooms/{room}/receipts", self.prefix),
                payload: serde_json::to_vec(&receipt).unwrap_or_default().into(),
                corr: None,
                seq: None,
            });
        }
        wire::result(&MarkerResult {
            read: marks.read,
            delivered: marks.delivered,
            moved,
        })
    }
}

/// The part of an ascending page that fits `budget` bytes, taken from the
/// end the reader continues from (the oldest for `after`, the newest
/// otherwise), so paging on from it never skips an event; whether it was
/// cut. The budget shrinks by what was taken.
pub(super) fn fit<'a>(
    events: &'a [crate::store::StoredEvent],
    range: Range,
    budget: &mut usize,
) -> (&'a [crate::store::StoredEvent], bool) {
    let mut used = 0;
    let mut n = 0;
    let sizes: Box<dyn Iterator<Item = usize>> = match range {
        Range::After(_) => Box::new(events.iter().map(|e| e.json.len() + 1)),
        _ => Box::new(events.iter().rev().map(|e| e.json.len() + 1)),
    };
    for size in sizes {
        if used + size > *budget {
            break;
        }
        used += size;
        n += 1;
    }
    *budget -= used;
    let cut = n < events.len();
    let kept = match range {
        Range::After(_) => &events[..n],
        _ => &events[events.len() - n..],
    };
    (kept, cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredEvent;

    fn ev(seq: u64, len: usize) -> StoredEvent {
        StoredEvent {
            seq,
            json: vec![b'x'; len].into(),
        }
    }

    #[test]
    fn a_named_rooms_frame_fits_its_reserve() {
        let room = "r".repeat(64);
        let mut entries: Vec<SyncRoom<Box<RawValue>>> = vec![SyncRoom::Page {
            events: Vec::new(),
            head: u64::MAX,
            has_more: true,
            unread: u64::MAX,
            truncated: true,
        }];
        for message in [
            format!("you are not a member of {room}"),
            format!("you are banned from {room}"),
        ] {
            let error = ErrorBody {
                code: Code::NotMember,
                message,
            };
            entries.push(SyncRoom::Left { left: true, error });
        }
        for e in entries {
            let size = page::json_len(&e) + room.len() + 4;
            assert!(size <= ENTRY_RESERVE, "{size}: {e:?}");
        }
    }

    #[test]
    fn fit_cuts_at_the_far_end_and_spends_the_budget() {
        let page: Vec<StoredEvent> = (1..=5).map(|s| ev(s, 99)).collect();
        let mut budget = 1000;
        let (all, cut) = fit(&page, Range::After(0), &mut budget);
        assert_eq!((all.len(), cut, budget), (5, false, 500));
        let mut budget = 250;
        let (kept, cut) = fit(&page, Range::After(0), &mut budget);
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(cut);
        assert_eq!(budget, 50);
        let mut budget = 250;
        let (kept, cut) = fit(&page, Range::Latest, &mut budget);
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
        assert!(cut);
        let mut budget = 10;
        let (kept, cut) = fit(&page, Range::Before(6), &mut budget);
        assert!(kept.is_empty() && cut);
    }
}
