//! The operators' requests (`admin.*`), answered only for the users in
//! `bridge.admin_users` (the admin HTTP API's own account, see
//! `chatmq::admin`). An admin also reads any room and moderates any room
//! as its owner would (`rooms.kick`, `rooms.ban`, `rooms.mute`).

use super::{Chat, Out};
use crate::store::{MemberChange, MemberState, NewEvent, Range, Role, RoomKind};
use crate::wire::{self, required_room, required_user, Code, Refusal};
use schema::request::{Create, List};
use schema::EventBody;
use schema::RawValue;
use serde::{Deserialize, Serialize};

/// `admin.create`: a room, its owner and its members, all joined at once.
/// An unknown field is refused (a typo in an operator's call must not pass).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminCreate {
    room: Option<String>,
    kind: Option<RoomKind>,
    title: Option<String>,
    owner: Option<String>,
    #[serde(default)]
    members: Vec<String>,
    /// The envelope of a request over MQTT 3.1.1 (read elsewhere).
    #[serde(default, rename = "reply")]
    _reply: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "corr")]
    _corr: Option<serde::de::IgnoredAny>,
}

/// `admin.rooms`: a page of every room (`after`: the `next` of the last page).
#[derive(Debug, Default, Deserialize)]
pub(super) struct AdminRooms {
    after: Option<String>,
    limit: Option<u64>,
}

#[derive(Serialize)]
struct RoomRow {
    room: String,
    kind: RoomKind,
}

#[derive(Serialize)]
struct RoomsResult {
    rooms: Vec<RoomRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// `admin.unread`: the `user` whose rooms and unread counts to read.
#[derive(Debug, Default, Deserialize)]
pub(super) struct AdminUser {
    user: Option<String>,
    after: Option<String>,
    limit: Option<u64>,
}

/// What erase reads of a stored event.
#[derive(Deserialize)]
struct Authored {
    #[serde(default)]
    from: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    deleted: bool,
}

/// Most members `admin.create` joins at once.
const CREATE_MAX: usize = 1000;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 8192 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

impl Chat {
    /// Whether `user` is one of `bridge.admin_users`.
    pub(super) fn is_admin(&self, user: &str) -> bool {
        self.admins.iter().any(|a| a == user)
    }

    /// `admin.*`: refused with `forbidden` for anyone but an admin.
    pub(super) async fn admin(
        &self,
        user: &str,
        method: &str,
        payload: &[u8],
        out: &mut Vec<Out>,
    ) -> Result<Box<RawValue>, Refusal> {
        if !self.is_admin(user) {
            return Err(Refusal::new(Code::Forbidden, "admin requests only"));
        }
        match method {
            "admin.create" => self.admin_create(user, wire::params(payload)?, out).await,
            "admin.rooms" => self.admin_rooms(wire::params(payload)?).await,
            "admin.unread" => {
                let p: AdminUser = wire::params(payload)?;
                let target = required_user(p.user)?;
                self.list(
                    &target,
                    List {
                        limit: p.limit,
                        after: p.after,
                    },
                )
                .await
            }
            "admin.erase" => {
                let p: AdminUser = wire::params(payload)?;
                let target = required_user(p.user)?;
                self.erase(user, &target, out).await
            }
            _ => Err(Refusal::bad(format!(
                "unknown method {:?}",
                method.chars().take(64).collect::<String>()
            ))),
        }
    }

    /// `admin.erase`: the user's messages, edits and reactions in every
    /// room they were ever in are deleted (the store keeps only each one's
    /// tombstone), they leave every room, and their blocks are lifted.
    async fn erase(
        &self,
        admin: &str,
        user: &str,
        out: &mut Vec<Out>,
    ) -> Result<Box<RawValue>, Refusal> {
        let rooms = self.store.user_rooms(user).await?;
        let mut redacted = 0u64;
        for m in &rooms {
            let room = m.room.as_str();
            let mut after = 0u64;
            loop {
                let page = self.store.read(room, Range::After(after), 1000).await?;
                let mut deletes = Vec::new();
                for e in &page.events {
                    after = e.seq;
                    let Ok(h) = serde_json::from_slice::<Authored>(&e.json) else {
                        continue;
                    };
                    if h.from != user
                        || h.deleted
                        || !matches!(h.kind.as_str(), "message" | "edit" | "reaction")
                    {
                        continue;
                    }
                    let body = EventBody::Delete {
                        target: e.seq,
                        meta: None,
                    }
                    .to_map()
                    .map_err(|_| Refusal::new(Code::Unavailable, "internal error, retry later"))?;
                    deletes.push(NewEvent {
                        room: room.to_owned(),
                        from: admin.to_owned(),
                        msg_id: format!("$erase:{user}:{}", e.seq),
                        ts: super::now_ms(),
                        body,
                        member: None,
                        redacts: Some(e.seq),
                    });
                }
                for chunk in deletes.chunks(256) {
                    for a in self.store.append_many(chunk.to_vec()).await? {
                        let a = a?;
                        if !a.duplicate {
                            redacted += 1;
                        }
                        out.push(self.event_out(room, &a.event));
                    }
                }
                if !page.has_more || page.events.is_empty() {
                    break;
                }
            }
            if matches!(m.state, MemberState::Joined | MemberState::Invited) {
                let change = MemberChange {
                    user: user.to_owned(),
                    role: m.role,
                    state: MemberState::Left,
                    muted: false,
                };
                self.member_event(room, admin, user, "erase", change, out)
                    .await?;
            }
        }
        let blocks = self
            .store
            .blocked_users(user, super::block::MAX_BLOCKS)
            .await?;
        for b in &blocks {
            self.store.set_blocked(user, b, false).await?;
        }
        wire::result(&serde_json::json!({
            "user": user,
            "rooms": rooms.len(),
            "redacted": redacted,
            "blocks_lifted": blocks.len(),
            "remains": [
                "the tombstone of each deleted event: room, seq, ts, from (the user id), msg_id, type",
                "membership events naming the user (joins, invitations, the final erase)",
                "the user's read and delivered markers (numbers)",
                "blocks of the user by others (their data)",
                "hook records (references to tombstones)"
            ]
        }))
    }

    async fn admin_create(
        &self,
        admin: &str,
        p: AdminCreate,
        out: &mut Vec<Out>,
    ) -> Result<Box<RawValue>, Refusal> {
        let owner = required_user(p.owner)?;
        let room = required_room(p.room)?;
        let kind = p.kind.unwrap_or(RoomKind::Group);
        if kind == RoomKind::Direct {
            return Err(Refusal::bad(
                "direct rooms are made by their users (rooms.create)",
            ));
        }
        let mut members = p.members;
        // the list as sent is bounded (the OpenAPI's maxItems), repeats included
        if members.len() > CREATE_MAX {
            return Err(Refusal::bad(format!(
                "at most {CREATE_MAX} members at once"
            )));
        }
        if !members.iter().all(|m| crate::valid_id(m)) {
            return Err(Refusal::bad("members must be user ids"));
        }
        members.retain(|m| *m != owner);
        members.sort();
        members.dedup();
        let created = self
            .create(
                &owner,
                Create {
                    room: Some(room.clone()),
                    kind: Some(kind),
                    members: None,
                    title: p.title,
                },
                out,
            )
            .await?;
        for m in &members {
            if self.store.member(&room, m).await?.map(|r| r.state) == Some(MemberState::Joined) {
                continue;
            }
            let change = MemberChange {
                user: m.clone(),
                role: Role::Member,
                state: MemberState::Joined,
                muted: false,
            };
            self.member_event(&room, admin, m, "join", change, out)
                .await?;
        }
        Ok(created)
    }

    async fn admin_rooms(&self, p: AdminRooms) -> Result<Box<RawValue>, Refusal> {
        let limit = super::page::page_limit(p.limit, "limit", 100, 1000)?;
        let cursor = match p.after.as_deref() {
            None | Some("") => None,
            Some(a) => Some(unhex(a).ok_or_else(|| Refusal::bad("after must be a page's next"))?),
        };
        let page = self.store.rooms_page(cursor, limit).await?;
        wire::result(&RoomsResult {
            rooms: page
                .rooms
                .into_iter()
                .map(|(room, kind)| RoomRow { room, kind })
                .collect(),
            next: page.next.as_deref().map(hex),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cursors_round_trip_as_hex() {
        let b = vec![0u8, 1, 0xab, 0xff];
        assert_eq!(super::unhex(&super::hex(&b)), Some(b));
        assert_eq!(super::unhex("abc"), None);
        assert_eq!(super::unhex("zz"), None);
    }
}
