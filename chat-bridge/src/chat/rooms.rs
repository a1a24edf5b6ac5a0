//! Rooms and membership: `rooms.*` requests and membership events.

use super::{in_direct_pair, now_ms, Chat, Out};
use crate::store::{MemberChange, MemberState, NewEvent, Role, RoomKind};
use crate::wire::{self, required_room, required_user, Code, Refusal};
use schema::request::{Members, Moderate, RoomParam};
use schema::result::{MemberEntry, MembersResult, SeqResult};
use schema::{AccessHook, EventBody, Inbox, RawValue};

impl Chat {
    pub(super) async fn member_event(
        &self,
        room: &str,
        actor: &str,
        target: &str,
        action: &str,
        change: MemberChange,
        out: &mut Vec<Out>,
    ) -> Result<u64, Refusal> {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = EventBody::Member {
            action: action.to_owned(),
            user: target.to_owned(),
            role: change.role,
        }
        .to_map()
        .map_err(|e| {
            tracing::error!(error = %e, "a member event does not serialize");
            Refusal::new(Code::Unavailable, "internal error, retry later")
        })?;
        let joined = change.state == MemberState::Joined;
        let ev = NewEvent {
            room: room.into(),
            from: actor.into(),
            msg_id: format!("${action}:{target}:{}:{n}", now_ms()),
            ts: now_ms(),
            body,
            member: Some(change),
            redacts: None,
        };
        let a = if self.hooks {
            let hook = self.hook_record(&ev);
            let mut r = self.store.append_many(vec![hook, ev]).await?.into_iter();
            let (h, a) = (r.next(), r.next());
            let a = match a {
                Some(a) => a?,
                None => return Err(Refusal::new(Code::Unavailable, "retry later")),
            };
            if let Some(Ok(h)) = h.filter(|_| !a.duplicate) {
                let kind = self.store.room(room).await?.map(|i| i.kind);
                out.push(self.hook_out(h.event.seq, room, kind, &a.event));
            }
            a
        } else {
            self.store.append(ev).await?
        };
        self.sink.member(room, target, joined);
        out.push(self.event_out(room, &a.event));
        out.push(self.access_out(&AccessHook::Member {
            room: room.to_owned(),
            user: target.to_owned(),
            joined,
        }));
        Ok(a.event.seq)
    }

    pub(super) async fn join(
        &self,
        user: &str,
        p: RoomParam,
        out: &mut Vec<Out>,
    ) -> Result<Box<RawValue>, Refusal> {
        let room = required_room(p.room)?;
        let info = self
            .store
            .room(&room)
            .await?
            .ok_or_else(|| Refusal::new(Code::NotFound, format!("no room {room}")))?;
        let m = self.store.member(&room, user).await?;
        let role = m.as_ref().map(|m| m.role).unwrap_or(Role::Member);
        match (m.as_ref().map(|m| m.state), info.kind) {
            (Some(MemberState::Joined), _) => {
                return wire::result(&SeqResult::already(m.map(|m| m.since).unwrap_or(0)))
            }
            (Some(MemberState::Banned), _) => {
                return Err(Refusal::new(
                    Code::Banned,
                    format!("you are banned from {room}"),
                ))
            }
            // either of a direct room's two users comes back at will; to
            // anyone else it answers as a room that does not exist
            (_, RoomKind::Direct) if in_direct_pair(&info, user) => {
                return self
                    .own_change(&room, user, "join", Role::Owner, MemberState::Joined, out)
                    .await
            }
            (_, RoomKind::Direct) => {
                return Err(Refusal::new(Code::NotFound, format!("no room {room}")))
            }
            (Some(MemberState::Invited), _) | (_, RoomKind::Channel) => {}
            _ => {
                return Err(Refusal::new(
                    Code::Forbidden,
                    format!("{room} needs an invitation"),
                ))
            }
        }
        self.own_change(&room, user, "join", role, MemberState::Joined, out)
            .await
    }

    /// A user's own join or leave, as an event; the reply's result.
    async fn own_change(
        &self,
        room: &str,
        user: &str,
        action: &str,
        role: Role,
        state: MemberState,
        out: &mut Vec<Out>,
    ) -> Result<Box<RawValue>, Refusal> {
        let change = MemberChange {
            user: user.into(),
            role,
            state,
            muted: false,
        };
        let seq = self
            .member_event(room, user, user, action, change, out)
            .await?;
        wire::result(&SeqResult::new(seq))
    }

    pub(super) async fn leave(
        &self,
        user: &str,
        p: RoomParam,
        out: &mut Vec<Out>,
    ) -> Result<Box<RawValue>, Refusal> {
        let room = required_room(p.room)?;
        let m = self.store.member(&room, user).await?;
        match m.as_ref().map(|m| m.state) {
            Some(MemberState::Joined | MemberState::Invited) => {}
            _ => {
                return Err(Refusal::new(
                    Code::NotMember,
                    format!("you are not a member of {room}"),
                ))
            }
        }
        let role = m.map(|m| m.role).unwrap_or(Role::Member);
        self.own_change(&room, user, "leave", role, MemberState::Left, out)
            .await
    }

    pub(super) async fn invite(
        &self,
        user: &str,
        p: Moderate,
        out: &mut Vec<Out>,
    ) -> Result<Box<RawValue>, Refusal> {
        let room = required_room(p.room)?;
        let target = required_user(p.user)?;
        let (info, m) = self.readable_room(user, &room).await?;
        if m.as_ref().map(|m| m.state) != Some(MemberState::Joined) {
            return Err(Refusal::new(
                Code::NotMember,
                format!("you are not a member of {room}"),
            ));
        }
        if info.kind == RoomKind::Direct {
            return Err(Refusal::new(
                Code::Forbidden,
                "a direct room has exactly two members",
            ));
        }
        match self
            .store
            .member(&room, &target)
            .await?
            .map(|m| (m.state, m.since))
        {
            Some((MemberState::Banned, _)) => {
                return Err(Refusal::new(
                    Code::Banned,
                    format!("{target} is banned from {room}"),
                ))
            }
            Some((MemberState::Joined | MemberState::Invited, since)) => {
                return wire::result(&SeqResult::already(since))
            }
            _ => {}
        }
        let seq = self
            .invite_member(&room, user, &target, Role::Member, out)
            .await?;
        wire::result(&SeqResult::new(seq))
    }

    /// `actor` invites `target` to `room` with `role`: the membership event
    /// and an `invited` notice in the target's inbox.
    pub(super) async fn invite_member(
        &self,
        room: &str,
        actor: &str,
        target: &str,
        role: Role,
        out: &mut Vec<Out>,
    ) -> Result<u64, Refusal> {
        self.check_not_blocked(actor, target).await?;
        let change = MemberChange {
            user: target.to_owned(),
            role,
            state: MemberState::Invited,
            muted: false,
        };
        let seq = self
            .member_event(room, actor, target, "invite", change, out)
            .await?;
        out.push(self.inbox_out(
            target,
            &Inbox::Invited {
                room: room.to_owned(),
                by: actor.to_owned(),
            },
        ));
        Ok(seq)
    }

    pub(super) async fn members(&self, user: &str, p: Members) -> Result<Box<RawValue>, Refusal> {
        let room = required_room(p.room)?;
        self.readable_room(user, &room).await?;
        let limit = p.limit.unwrap_or(100).clamp(1, 1000) as usize;
        let rows = self
            .store
            .members(&room, p.after.as_deref(), limit + 1)
            .await?;
        let has_more = rows.len() > limit;
        let mut members = Vec::new();
        for m in rows.into_iter().take(limit) {
            let marks = self.store.markers(&room, &m.user).await?;
            members.push(MemberEntry {
                user: m.user,
                role: m.role,
                state: m.state,
                muted: m.muted,
                read: marks.read,
                delivered: marks.delivered,
            });
        }
        wire::result(&MembersResult { members, has_more })
    }

    /// `rooms.kick`, `rooms.ban` (`"remove": true` lifts it), `rooms.mute`
    /// (`"remove": true` unmutes) and `rooms.role` (`"role": "admin"|"member"`).
    /// Owners and admins moderate; only an owner changes roles or acts on an admin.
    pub(super) async fn moderate(
        &self,
        actor: &str,
        action: &str,
        p: Moderate,
        out: &mut Vec<Out>,
    ) -> Result<Box<RawValue>, Refusal> {
        let room = required_room(p.room)?;
        let target = required_user(p.user)?;
        if target == actor {
            return Err(Refusal::bad("you cannot moderate yourself"));
        }
        let remove = p.remove;
        let me = self.store.member(&room, actor).await?;
        let my_role = match me.as_ref().map(|m| (m.state, m.role)) {
            // an admin moderates any room that exists, as its owner
            _ if self.is_admin(actor) => {
                if self.store.room(&room).await?.is_none() {
                    return Err(Refusal::new(Code::NotFound, format!("no room {room}")));
                }
                Role::Owner
            }
            Some((MemberState::Joined, r)) => r,
            _ => {
                return Err(Refusal::new(
                    Code::NotMember,
                    format!("you are not a member of {room}"),
                ))
            }
        };
        let them = self.store.member(&room, &target).await?;
        let their_role = them.as_ref().map(|m| m.role).unwrap_or(Role::Member);
        let allowed = matches!(
            (my_role, their_role, action),
            (Role::Owner, _, _) | (Role::Admin, Role::Member, "kick" | "ban" | "mute")
        );
        if !allowed {
            return Err(Refusal::new(
                Code::Forbidden,
                format!("you may not {action} {target} in {room}"),
            ));
        }
        let (state, muted, role) = match (action, them.as_ref().map(|m| m.state)) {
            ("kick", Some(MemberState::Joined | MemberState::Invited)) => {
                (MemberState::Left, false, their_role)
            }
            ("ban", _) if remove => (MemberState::Left, false, their_role),
            ("ban", _) => (MemberState::Banned, false, their_role),
            ("mute", Some(MemberState::Joined)) => (MemberState::Joined, !remove, their_role),
            ("role", Some(MemberState::Joined)) => {
                let role = match p.role.as_deref() {
                    Some("admin") => Role::Admin,
                    Some("member") => Role::Member,
                    _ => return Err(Refusal::bad("role must be admin or member")),
                };
                (
                    MemberState::Joined,
                    them.as_ref().is_some_and(|m| m.muted),
                    role,
                )
            }
            _ => {
                return Err(Refusal::new(
                    Code::NotMember,
                    format!("{target} is not a member of {room}"),
                ))
            }
        };
        let label = match (action, remove) {
            ("ban", true) => "unban",
            ("mute", true) => "unmute",
            (a, _) => a,
        };
        let change = MemberChange {
            user: target.clone(),
            role,
            state,
            muted,
        };
        let seq = self
            .member_event(&room, actor, &target, label, change, out)
            .await?;
        if state != MemberState::Joined {
            let (room, by) = (room, actor.to_owned());
            let notice = match label {
                "kick" => Some(Inbox::Kick { room, by }),
                "ban" => Some(Inbox::Ban { room, by }),
                "unban" => Some(Inbox::Unban { room, by }),
                _ => None,
            };
            out.extend(notice.map(|n| self.inbox_out(&target, &n)));
        }
        wire::result(&SeqResult::new(seq))
    }
}
