//! The operators' requests (`admin.*`), answered only for the users in
//! `bridge.admin_users` (the admin HTTP API's own account, see
//! `chatmq::admin`). An admin also reads any room and moderates any room
//! as its owner would (`rooms.kick`, `rooms.ban`, `rooms.mute`).

use super::{Chat, Out};
use crate::store::{MemberChange, MemberState, Role, RoomKind};
use crate::wire::{self, required_room, required_user, Code, Refusal};
use schema::request::{Create, List};
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
            _ => Err(Refusal::bad(format!(
                "unknown method {:?}",
                method.chars().take(64).collect::<String>()
            ))),
        }
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
        if !members.iter().all(|m| crate::valid_id(m)) {
            return Err(Refusal::bad("members must be user ids"));
        }
        members.retain(|m| *m != owner);
        members.sort();
        members.dedup();
        if members.len() > CREATE_MAX {
            return Err(Refusal::bad(format!(
                "at most {CREATE_MAX} members at once"
            )));
        }
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
