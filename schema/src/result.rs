//! The `result` of each request's reply (PROTOCOL.md's table of methods).
//!
//! Results that carry room events are generic over the event type `E`: the
//! chat service fills them with the stored bytes as they are
//! (`&serde_json::value::RawValue`, never parsed again), a client reads
//! them as [`crate::Event`] or `serde_json::Value`.

use crate::code::ErrorBody;
use crate::request::is_false;
use crate::room::{MemberState, Role, RoomInfo, RoomKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A send's result (`{"seq":N}`), and that of a membership request:
/// the membership event's `seq`, with `"already":true` when nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqResult {
    pub seq: u64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub already: bool,
}

impl SeqResult {
    pub fn new(seq: u64) -> Self {
        SeqResult {
            seq,
            already: false,
        }
    }
    /// Nothing changed; `seq` is the event that made it so.
    pub fn already(seq: u64) -> Self {
        SeqResult { seq, already: true }
    }
}

/// `rooms.create`: the room, and whether this request created it (a
/// direct room that existed answers `false`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub room: RoomInfo,
    pub created: bool,
}

/// `history`: `events` ascending by seq, the room's `head`, `has_more`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryResult<E> {
    pub room: String,
    pub events: Vec<E>,
    pub head: u64,
    pub has_more: bool,
    /// Retention removed the events before these: there is nothing older
    /// to page back to, though the stream did not start here.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
}

/// `sync`: per named room its [`SyncRoom`]; a page of the rooms the user is
/// in or invited to that the request did not name (`joined`), with
/// `joined_has_more` and, when there is more, `joined_next` (the
/// `joined_after` of the next page).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncResult<E> {
    pub rooms: BTreeMap<String, SyncRoom<E>>,
    pub joined: Vec<JoinedEntry>,
    pub joined_has_more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_next: Option<String>,
}

/// A named room in a `sync` result: the events after the cursor, or why
/// the user may no longer read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SyncRoom<E> {
    Page {
        events: Vec<E>,
        head: u64,
        has_more: bool,
        unread: u64,
        /// Retention removed events after the cursor: `events` starts
        /// later than the cursor's next seq, and what lies between is gone.
        #[serde(default, skip_serializing_if = "is_false")]
        truncated: bool,
    },
    /// `{"left":true,"error":{..}}`
    Left { left: bool, error: ErrorBody },
}

/// A room of `sync`'s `joined` page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinedEntry {
    pub room: String,
    pub state: MemberState,
    pub head: u64,
}

/// `rooms.list`: a page of the user's rooms in id order, `has_more`, and
/// `next` (the `after` of the next page) when there is more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListResult<E> {
    pub rooms: Vec<ListEntry<E>>,
    pub has_more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A room of `rooms.list`. `kind` and `title` are `null` for a room that is
/// gone, `last` (the latest event) for a room the user may not read yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListEntry<E> {
    pub room: String,
    pub kind: Option<RoomKind>,
    pub title: Option<String>,
    pub state: MemberState,
    pub role: Role,
    pub head: u64,
    pub read: u64,
    pub unread: u64,
    pub last: Option<E>,
}

/// `rooms.members`: a page of members in user id order, `has_more`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersResult {
    pub members: Vec<MemberEntry>,
    pub has_more: bool,
}

/// A member of `rooms.members`, with their markers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    pub user: String,
    pub role: Role,
    pub state: MemberState,
    pub muted: bool,
    pub read: u64,
    pub delivered: u64,
}

/// `read` / `delivered`: both markers after the request, and whether it
/// moved one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerResult {
    pub read: u64,
    pub delivered: u64,
    pub moved: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::Code;
    use crate::event::Event;
    use serde_json::value::RawValue;

    const EV: &str =
        r#"{"room":"r1","seq":1,"ts":5,"from":"alice","msg_id":"m1","type":"message","body":"hi"}"#;

    #[test]
    fn results_with_raw_events_read_back_as_events() -> Result<(), serde_json::Error> {
        let raw: &RawValue = serde_json::from_str(EV)?;
        let h = HistoryResult {
            room: "r1".into(),
            events: vec![raw],
            head: 1,
            has_more: false,
            truncated: false,
        };
        let s = serde_json::to_string(&h)?;
        assert!(!s.contains("truncated"), "only said when true: {s}");
        // the stored bytes, as they are
        assert!(s.contains(EV), "{s}");
        let back: HistoryResult<Event> = serde_json::from_str(&s)?;
        assert_eq!(back.events[0].seq, 1);

        let mut rooms = BTreeMap::new();
        rooms.insert(
            "r1".to_owned(),
            SyncRoom::Page {
                events: vec![raw],
                head: 1,
                has_more: false,
                unread: 1,
                truncated: true,
            },
        );
        rooms.insert(
            "r2".to_owned(),
            SyncRoom::Left {
                left: true,
                error: ErrorBody {
                    code: Code::NotMember,
                    message: "you are not a member of r2".into(),
                },
            },
        );
        let sync = SyncResult {
            rooms,
            joined: vec![JoinedEntry {
                room: "r3".into(),
                state: MemberState::Invited,
                head: 9,
            }],
            joined_has_more: true,
            joined_next: Some("r3".into()),
        };
        let s = serde_json::to_string(&sync)?;
        assert!(s.contains(EV), "{s}");
        let back: SyncResult<Event> = serde_json::from_str(&s)?;
        assert_eq!(back.rooms.len(), 2);
        assert!(matches!(
            back.rooms.get("r2"),
            Some(SyncRoom::Left { left: true, .. })
        ));
        assert_eq!(back.joined, sync.joined);

        let list = ListResult {
            rooms: vec![ListEntry {
                room: "r1".into(),
                kind: Some(RoomKind::Group),
                title: None,
                state: MemberState::Joined,
                role: Role::Owner,
                head: 1,
                read: 0,
                unread: 1,
                last: Some(raw),
            }],
            has_more: false,
            next: None,
        };
        let s = serde_json::to_string(&list)?;
        assert!(s.contains(r#""title":null"#) && s.contains(EV), "{s}");
        let back: ListResult<Event> = serde_json::from_str(&s)?;
        assert_eq!(back.rooms[0].last.as_ref().map(|e| e.seq), Some(1));
        Ok(())
    }

    #[test]
    fn plain_results_round_trip() -> Result<(), serde_json::Error> {
        fn again<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(
            v: T,
        ) -> Result<(), serde_json::Error> {
            let s = serde_json::to_string(&v)?;
            assert_eq!(serde_json::from_str::<T>(&s)?, v, "{s}");
            Ok(())
        }
        assert_eq!(serde_json::to_string(&SeqResult::new(3))?, r#"{"seq":3}"#);
        again(SeqResult::already(3))?;
        again(Created {
            room: RoomInfo {
                id: "r1".into(),
                kind: RoomKind::Channel,
                title: Some("t".into()),
                created_by: "alice".into(),
                created_ts: 1,
            },
            created: true,
        })?;
        again(MembersResult {
            members: vec![MemberEntry {
                user: "bob".into(),
                role: Role::Admin,
                state: MemberState::Joined,
                muted: true,
                read: 2,
                delivered: 3,
            }],
            has_more: true,
        })?;
        again(MarkerResult {
            read: 1,
            delivered: 2,
            moved: true,
        })
    }
}

/// `users.block`, `users.unblock`: the other user and whether the caller
/// blocks them now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockResult {
    pub user: String,
    pub blocked: bool,
}

/// `users.blocks`: the users the caller blocks, in id order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlocksResult {
    pub users: Vec<String>,
}
