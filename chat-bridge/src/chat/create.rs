//! `rooms.create`: one room, its owner and its first members.
//!
//! The room is stored first ([`crate::store::Store::create_room`]), then
//! the owner's join and the members' invitations ride on events. A failure
//! in between leaves a room without its owner; the creator's retry finds it
//! ([`Chat::half_created`]: same creator, same kind, no owner row, empty
//! stream) and completes it instead of answering `conflict`.

use super::{direct_room_id, now_ms, reserved_room_id, Chat, Out, DIRECT_PREFIX};
use crate::store::{MemberChange, MemberState, Role, RoomInfo, RoomKind};
use crate::wire::{self, Code, Refusal};
use schema::request::Create;
use schema::result::Created;
use schema::{AccessHook, RawValue};

impl Chat {
    /// `rooms.create`: `kind` (`group` by default, `direct`, `channel`),
    /// `room` (groups and channels; the server picks one if absent; ids
    /// reserved for direct rooms are refused), `members`, `title`.
    pub(super) async fn create(
        &self,
        user: &str,
        p: Create,
        out: &mut Vec<Out>,
    ) -> Result<Box<RawValue>, Refusal> {
        let kind = p.kind.unwrap_or(RoomKind::Group);
        let mut members = p.members.unwrap_or_default();
        // the list as sent is bounded, repeats included
        if members.len() > 1000 {
            return Err(Refusal::bad("at most 1000 members at creation"));
        }
        if !members.iter().all(|m| crate::valid_id(m)) {
            return Err(Refusal::bad("members must be user ids"));
        }
        members.retain(|m| m != user);
        members.sort();
        members.dedup();
        // nobody who blocks the creator (or whom the creator blocks) is
        // made a member: refused before anything is created
        for chunk in members.chunks(64) {
            futures_util::future::try_join_all(
                chunk.iter().map(|m| self.check_not_blocked(user, m)),
            )
            .await?;
        }
        let title = p.title.map(|t| t.chars().take(256).collect::<String>());
        let id = match kind {
            RoomKind::Direct => {
                let [other] = members.as_slice() else {
                    return Err(Refusal::bad("a direct room needs exactly one other member"));
                };
                direct_room_id(user, other)
            }
            _ => match p.room {
                Some(r) if reserved_room_id(&r) && crate::valid_id(&r) => {
                    return Err(Refusal::bad(format!(
                        "room ids starting with {DIRECT_PREFIX} or dm. are reserved for direct rooms"
                    )))
                }
                Some(r) if crate::valid_id(&r) => r,
                Some(_) => {
                    return Err(Refusal::bad("room must be 1-64 chars of A-Z a-z 0-9 _ . -"))
                }
                None => format!(
                    "g-{:08x}{:08x}",
                    now_ms() as u32,
                    self.counter
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        as u32
                        ^ std::process::id()
                ),
            },
        };
        let info = RoomInfo {
            id: id.clone(),
            kind,
            title,
            created_by: user.into(),
            created_ts: now_ms(),
        };
        let info = if self.store.create_room(info.clone()).await? {
            info
        } else {
            let existing = self
                .store
                .room(&id)
                .await?
                .ok_or_else(|| Refusal::new(Code::Unavailable, "retry"))?;
            if self.half_created(&existing, user, kind).await? {
                // an earlier create stopped between the room and its owner's
                // join: this one completes it
                existing
            } else if let (RoomKind::Direct, [other]) = (kind, members.as_slice()) {
                // a direct room is the same room whoever creates it
                return self.direct_again(user, other, existing, out).await;
            } else {
                return Err(Refusal::new(
                    Code::Conflict,
                    format!("room {id} already exists"),
                ));
            }
        };
        self.populate(&info, user, &members, out).await?;
        wire::result(&Created {
            room: info,
            created: true,
        })
    }

    /// Whether `room` was left half-created by `user`'s own earlier
    /// `rooms.create` of the same kind: the room is stored but nothing
    /// after it (no owner row, an empty stream).
    async fn half_created(
        &self,
        room: &RoomInfo,
        user: &str,
        kind: RoomKind,
    ) -> Result<bool, Refusal> {
        Ok(room.created_by == user
            && room.kind == kind
            && self.store.member(&room.id, user).await?.is_none()
            && self.store.head(&room.id).await? == 0)
    }

    /// What follows a room's creation: a channel is opened, the creator
    /// joins as owner, then each member is invited (a direct room's other
    /// user joins, unless it already has a row).
    async fn populate(
        &self,
        info: &RoomInfo,
        user: &str,
        members: &[String],
        out: &mut Vec<Out>,
    ) -> Result<(), Refusal> {
        let (id, kind) = (&info.id, info.kind);
        if kind == RoomKind::Channel {
            self.sink.open(id, true);
            out.push(self.access_out(&AccessHook::Open {
                room: id.clone(),
                open: true,
            }));
        }
        let owner = MemberChange {
            user: user.into(),
            role: Role::Owner,
            state: MemberState::Joined,
            muted: false,
        };
        self.member_event(id, user, user, "join", owner, out)
            .await?;
        for m in members {
            if kind == RoomKind::Direct {
                // the other user may have come in by their own create meanwhile
                if self.store.member(id, m).await?.is_none() {
                    self.direct_add(id, user, m, out).await?;
                }
                continue;
            }
            self.invite_member(id, user, m, Role::Member, out).await?;
        }
        Ok(())
    }
}
