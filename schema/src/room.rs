//! Rooms and memberships as they appear on the wire: in `rooms.create`'s
//! result, `rooms.list`, `rooms.members`, `sync`'s `joined` and membership
//! events. The chat service's stores keep the same types (re-exported by
//! `chat_bridge::store`), so stored and sent forms cannot drift apart.

use serde::{Deserialize, Serialize};

/// The kind of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomKind {
    /// Exactly two members; the id is derived from the two user ids.
    Direct,
    /// Members only; joins by invitation.
    Group,
    /// Anyone may join and read.
    Channel,
}

/// A room's durable description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    pub id: String,
    pub kind: RoomKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub created_by: String,
    pub created_ts: u64,
}

/// A member's role in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

/// Where a user stands with a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Invited, not yet joined: may join, may not read or send.
    Invited,
    /// A member: reads and sends.
    Joined,
    /// Left or kicked: no access; may be invited again.
    Left,
    /// Banned: no access until unbanned.
    Banned,
}
