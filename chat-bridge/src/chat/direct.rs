//! Direct rooms: their ids, who the two users of one are, and coming back
//! to one.
//!
//! A direct room's id is `dm-` and 40 hex digits of a SHA-256 over the two
//! user ids, sorted, each prefixed with its length: one id per pair whoever
//! asks, no two pairs share one (the length prefixes make the hashed bytes
//! unambiguous; `.` in user ids cannot shift the boundary), and no group or
//! channel can take one, because ids starting with `dm-` or `dm.` (in any
//! case) are reserved ([`reserved_room_id`]).
//!
//! Rooms made by earlier versions under `dm.{a}.{b}` (or `dm-` and 32 hex
//! digits for long pairs) stay what they are: their members keep reading
//! and sending, but they are not direct rooms of the new kind (no
//! [`in_direct_pair`]), so nobody joins them again; `rooms.create` direct
//! for the pair makes the new room.

use super::{Chat, Out};
use crate::store::{MemberChange, MemberState, Role, RoomInfo, RoomKind};
use crate::wire::{self, Code, Refusal};
use schema::result::Created;
use schema::RawValue;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// The prefix of every direct room id.
pub const DIRECT_PREFIX: &str = "dm-";
/// Hex digits of the hash in a direct room id (160 bits).
const DIRECT_HEX: usize = 40;

/// The id of the direct room between two users: the same whoever asks, and
/// no other pair's (see the module doc).
pub fn direct_room_id(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    let mut h = Sha256::new();
    h.update(b"chatmq direct room v1\0");
    for id in [x, y] {
        h.update((id.len() as u64).to_be_bytes());
        h.update(id.as_bytes());
    }
    let digest = h.finalize();
    let mut s = String::with_capacity(DIRECT_PREFIX.len() + DIRECT_HEX);
    s.push_str(DIRECT_PREFIX);
    for b in digest.iter().take(DIRECT_HEX / 2) {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Whether `id` is reserved for direct rooms: it starts with `dm-` (today's
/// direct ids) or `dm.` (those of earlier versions), in any case. A group or
/// channel cannot be created under such an id.
pub fn reserved_room_id(id: &str) -> bool {
    id.get(..3)
        .is_some_and(|p| p.eq_ignore_ascii_case("dm-") || p.eq_ignore_ascii_case("dm."))
}

/// Whether `id` has the shape of a direct id made by [`direct_room_id`].
fn direct_shape(id: &str) -> bool {
    id.strip_prefix(DIRECT_PREFIX).is_some_and(|h| {
        h.len() == DIRECT_HEX && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Whether `user` is one of the two users of the direct room `info`: its
/// creator, or the user whose pair with the creator has this id. Only
/// direct rooms with today's ids qualify; a room of another kind, or one of
/// the ids of earlier versions, has no pair.
pub fn in_direct_pair(info: &RoomInfo, user: &str) -> bool {
    info.kind == RoomKind::Direct
        && direct_shape(&info.id)
        && (info.created_by == user || info.id == direct_room_id(&info.created_by, user))
}

impl Chat {
    /// `rooms.create` direct when the pair's room exists already: the caller
    /// gets it (`created: false`), joined again if they had left; the other
    /// user is joined too if creation never got to them (no row at all). A
    /// room under the id that is not the pair's is a `conflict` and tells
    /// nothing about itself.
    pub(super) async fn direct_again(
        &self,
        user: &str,
        other: &str,
        existing: RoomInfo,
        out: &mut Vec<Out>,
    ) -> Result<Box<RawValue>, Refusal> {
        let id = existing.id.clone();
        if !in_direct_pair(&existing, user) || !in_direct_pair(&existing, other) {
            return Err(Refusal::new(
                Code::Conflict,
                format!("room {id} already exists"),
            ));
        }
        match self.store.member(&id, user).await?.map(|m| m.state) {
            Some(MemberState::Joined) => {}
            Some(MemberState::Banned) => {
                return Err(Refusal::new(
                    Code::Banned,
                    format!("you are banned from {id}"),
                ))
            }
            _ => {
                self.direct_join(&id, user, user, out).await?;
            }
        }
        if self.store.member(&id, other).await?.is_none() {
            self.direct_add(&id, user, other, out).await?;
        }
        wire::result(&Created {
            room: existing,
            created: false,
        })
    }

    /// The other user of a new direct room: joined at once, or invited
    /// (with an inbox notice) when direct rooms need acceptance.
    pub(super) async fn direct_add(
        &self,
        room: &str,
        actor: &str,
        target: &str,
        out: &mut Vec<Out>,
    ) -> Result<u64, Refusal> {
        self.check_not_blocked(actor, target).await?;
        if !self.direct_acceptance {
            return self.direct_join(room, actor, target, out).await;
        }
        self.invite_member(room, actor, target, Role::Owner, out)
            .await
    }

    /// `target` joins the direct room `room` as one of its two owners.
    pub(super) async fn direct_join(
        &self,
        room: &str,
        actor: &str,
        target: &str,
        out: &mut Vec<Out>,
    ) -> Result<u64, Refusal> {
        let change = MemberChange {
            user: target.into(),
            role: Role::Owner,
            state: MemberState::Joined,
            muted: false,
        };
        self.member_event(room, actor, target, "join", change, out)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, by: &str) -> RoomInfo {
        RoomInfo {
            id: id.into(),
            kind: RoomKind::Direct,
            title: None,
            created_by: by.into(),
            created_ts: 0,
        }
    }

    #[test]
    fn one_id_per_pair_and_no_shifted_boundary() {
        let ab = direct_room_id("alice", "bob");
        assert_eq!(ab, direct_room_id("bob", "alice"));
        assert!(direct_shape(&ab) && crate::valid_id(&ab), "{ab}");
        assert_eq!(ab.len(), 43);
        // "a.b"+"c" and "a"+"b.c" were one id; so were "ann"+"bo.b" and "ann.bo"+"b"
        assert_ne!(direct_room_id("a.b", "c"), direct_room_id("a", "b.c"));
        assert_ne!(direct_room_id("ann", "bo.b"), direct_room_id("ann.bo", "b"));
        assert_ne!(direct_room_id("ab", "c"), direct_room_id("a", "bc"));
        // long ids are hashed like short ones
        let long = "x".repeat(64);
        assert!(direct_shape(&direct_room_id(&long, &long[1..])));
    }

    #[test]
    fn direct_prefixes_are_reserved() {
        for id in ["dm-x", "DM-x", "dM.alice.bob", "dm.alice.bob", "dm-"] {
            assert!(reserved_room_id(id), "{id}");
        }
        for id in ["d", "dm", "dmx", "dm_x", "adm-x", "g-dm-x", "é"] {
            assert!(!reserved_room_id(id), "{id}");
        }
        assert!(reserved_room_id(&direct_room_id("alice", "bob")));
    }

    #[test]
    fn only_the_two_users_are_the_pair() {
        let id = direct_room_id("alice", "bob");
        let room = info(&id, "alice");
        assert!(in_direct_pair(&room, "alice") && in_direct_pair(&room, "bob"));
        assert!(!in_direct_pair(&room, "carol"));
        // a room of another kind under such an id has no pair
        let group = RoomInfo {
            kind: RoomKind::Group,
            ..room.clone()
        };
        assert!(!in_direct_pair(&group, "alice") && !in_direct_pair(&group, "bob"));
        // the ids of earlier versions have no pair either
        let old = info("dm.alice.bob", "alice");
        assert!(!in_direct_pair(&old, "bob") && !in_direct_pair(&old, "alice"));
        // a creator that is not one of the pair makes nobody the pair's other
        let odd = info(&id, "carol");
        assert!(!in_direct_pair(&odd, "bob") && !in_direct_pair(&odd, "alice"));
    }
}
