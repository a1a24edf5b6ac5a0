//! Event hooks (`bridge.hooks`): every stored event, for a team's own
//! services (push notifications, search, moderation feeds).
//!
//! * **Durable.** Each event's hook record is appended to the store's
//!   stream [`HOOKS_ROOM`] in the same `append_many` as the event (one group
//!   commit on the embedded store), just before it. The record names the
//!   event by its idempotency key, so it needs no seq yet, a retried send
//!   adds no second record, and a record whose event never got stored is
//!   skipped when read. The stream's gap-free `hook_seq` is a consumer's
//!   cursor, kept by the consumer like any client's.
//! * **Live.** After each batch, every new record goes out on
//!   `{prefix}/hooks/events` (QoS 1; only service accounts may subscribe):
//!   `{"hook_seq", "room", "kind", "event"}`.
//! * **Catch-up, enriched.** `hooks.read {"after", "limit"}` (for the
//!   accounts in `bridge.hook_users` and admins) returns the records after
//!   a cursor with their events and, for messages, the room's members who
//!   are offline now (`offline`, up to 1,000 members; the sender never)
//!   with their unread counts (`unread`, for the first 100): what a push
//!   service needs for the notification and the badge.

use super::{Chat, Out};
use crate::store::{NewEvent, Range, RoomKind, StoredEvent};
use crate::wire::{self, Code, Refusal};
use schema::RawValue;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The stream of hook records. Not a valid room id: no client can name it.
pub const HOOKS_ROOM: &str = "@hooks";
/// Members beyond which a message's hook lists no offline members.
const OFFLINE_MAX: usize = 1000;
/// How long a record may wait for its event before it counts as never stored.
const PENDING_MS: u64 = 10_000;
/// Offline members whose unread counts a hook carries.
const UNREAD_MAX: usize = 100;

/// A hook record as stored: which event (by its idempotency key), under `of`.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    room: String,
    from: String,
    msg_id: String,
}

#[derive(Debug, Deserialize)]
struct Stored {
    of: Record,
}

/// `hooks.read`: records after `after` (a `hook_seq`), at most `limit`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct HooksRead {
    after: Option<u64>,
    limit: Option<u64>,
}

impl Chat {
    /// The hook record of `ev`, to append just before it.
    pub(super) fn hook_record(&self, ev: &NewEvent) -> NewEvent {
        // under `of`: the envelope's own room, from and msg_id are the stream's
        let mut body = serde_json::Map::new();
        body.insert("type".into(), "hook".into());
        body.insert(
            "of".into(),
            json!({"room": ev.room, "from": ev.from, "msg_id": ev.msg_id}),
        );
        NewEvent {
            room: HOOKS_ROOM.into(),
            from: "@bridge".into(),
            // room and sender ids have no '/', so the key is unambiguous
            msg_id: format!("{}/{}/{}", ev.room, ev.from, ev.msg_id),
            ts: ev.ts,
            body,
            member: None,
            redacts: None,
        }
    }

    /// The live hook of a new event: `{prefix}/hooks/events`.
    pub(super) fn hook_out(
        &self,
        hook_seq: u64,
        room: &str,
        kind: Option<RoomKind>,
        ev: &StoredEvent,
    ) -> Out {
        let event: Value = serde_json::from_slice(&ev.json).unwrap_or(Value::Null);
        let payload = json!({"hook_seq": hook_seq, "room": room, "kind": kind, "event": event});
        Out {
            topic: format!("{}/hooks/events", self.prefix),
            payload: payload.to_string().into_bytes().into(),
            corr: None,
            seq: None,
        }
    }

    /// `hooks.read`: for hook accounts and admins.
    pub(super) async fn hooks_read(
        &self,
        user: &str,
        p: HooksRead,
    ) -> Result<Box<RawValue>, Refusal> {
        if !self.hook_users.iter().any(|u| u == user) && !self.is_admin(user) {
            return Err(Refusal::new(Code::Forbidden, "hook accounts only"));
        }
        let limit = super::page::page_limit(p.limit, "limit", 100, 500)?;
        let page = self
            .store
            .read(HOOKS_ROOM, Range::After(p.after.unwrap_or(0)), limit)
            .await?;
        let mut records = Vec::with_capacity(page.events.len());
        let mut kinds: BTreeMap<String, Option<RoomKind>> = BTreeMap::new();
        let mut has_more = page.has_more;
        let now = super::now_ms();
        for rec in &page.events {
            let Ok(Stored { of: r }) = serde_json::from_slice::<Stored>(&rec.json) else {
                continue;
            };
            let Some(ev) = self.store.lookup(&r.room, &r.from, &r.msg_id).await? else {
                // its event may still be on its way (ScyllaDB writes the two
                // apart): the page stops here, to be read again; a record
                // whose event never got stored is skipped once it is old
                if super::retention::ts_of(rec) + PENDING_MS > now {
                    has_more = true;
                    break;
                }
                continue;
            };
            if !kinds.contains_key(&r.room) {
                let kind = self.store.room(&r.room).await?.map(|i| i.kind);
                kinds.insert(r.room.clone(), kind);
            }
            let kind = kinds.get(&r.room).copied().flatten();
            let event: Value = serde_json::from_slice(&ev.json).unwrap_or(Value::Null);
            let mut out =
                json!({"hook_seq": rec.seq, "room": r.room, "kind": kind, "event": event});
            if event["type"] == "message" && event["deleted"] != true {
                self.add_offline(&r.room, &r.from, &mut out).await?;
            }
            records.push(out);
        }
        // `head` tells a consumer how far the stream was read when nothing more
        // is there (records that were skipped included)
        let head = if has_more {
            records
                .last()
                .and_then(|r| r["hook_seq"].as_u64())
                .unwrap_or(p.after.unwrap_or(0))
        } else {
            page.head
        };
        wire::result(&json!({"records": records, "head": head, "has_more": has_more}))
    }

    /// `offline` and `unread` of a message's hook (see the module doc).
    async fn add_offline(&self, room: &str, sender: &str, out: &mut Value) -> Result<(), Refusal> {
        let members = self.store.members(room, None, OFFLINE_MAX + 1).await?;
        if members.len() > OFFLINE_MAX {
            out["offline_omitted"] = json!(true);
            return Ok(());
        }
        let head = self.store.head(room).await?;
        let mut offline = Vec::new();
        let mut unread = serde_json::Map::new();
        for m in members {
            if m.state != crate::store::MemberState::Joined
                || m.user == sender
                || self.is_online(&m.user)
            {
                continue;
            }
            if offline.len() < UNREAD_MAX {
                let read = self.store.markers(room, &m.user).await?.read;
                let n = self.unread(room, &m.user, read, head).await?;
                unread.insert(m.user.clone(), json!(n));
            }
            offline.push(m.user);
        }
        out["offline"] = json!(offline);
        out["unread"] = Value::Object(unread);
        Ok(())
    }

    /// Whether `user` has a connection now, as far as this process knows
    /// (without an oracle, a bridge run apart: never, so every member is
    /// listed).
    fn is_online(&self, user: &str) -> bool {
        self.online.as_ref().is_some_and(|f| f(user))
    }
}
