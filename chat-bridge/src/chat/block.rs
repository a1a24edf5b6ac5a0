//! Blocking: `users.block`, `users.unblock`, `users.blocks`, and the checks
//! that keep a blocked user away from the blocker.
//!
//! A block has a direction: `alice` blocks `bob`. While it stands, bob
//! cannot open a direct room with alice, invite her to a room (nor make her
//! a member at a room's creation), and neither of them can send in their
//! direct room; alice, who blocks, is told to unblock first when she tries
//! the same. Rooms both were in already are not changed: in a group each
//! still reads the other (what a group is for); leaving is alice's choice.

use super::Chat;
use crate::store::RoomKind;
use crate::wire::{self, required_user, Code, Refusal};
use schema::request::UserParam;
use schema::result::{BlockResult, BlocksResult};
use schema::RawValue;

/// Most users one user may block.
pub(super) const MAX_BLOCKS: usize = 1000;

impl Chat {
    /// `users.block` (`on`) and `users.unblock`: idempotent.
    pub(super) async fn block(
        &self,
        user: &str,
        p: UserParam,
        on: bool,
    ) -> Result<Box<RawValue>, Refusal> {
        let target = required_user(p.user)?;
        if target == user {
            return Err(Refusal::bad("you cannot block yourself"));
        }
        if on
            && !self.store.is_blocked(user, &target).await?
            && self.store.blocked_users(user, MAX_BLOCKS).await?.len() >= MAX_BLOCKS
        {
            return Err(Refusal::new(
                Code::TooLarge,
                format!("you block {MAX_BLOCKS} users already: unblock one first"),
            ));
        }
        self.store.set_blocked(user, &target, on).await?;
        wire::result(&BlockResult {
            user: target,
            blocked: on,
        })
    }

    /// `users.blocks`: whom the caller blocks.
    pub(super) async fn blocks(&self, user: &str) -> Result<Box<RawValue>, Refusal> {
        let users = self.store.blocked_users(user, MAX_BLOCKS).await?;
        wire::result(&BlocksResult { users })
    }

    /// Refuses when either of `actor` and `target` blocks the other: what
    /// guards an invitation and a new direct room.
    pub(super) async fn check_not_blocked(&self, actor: &str, target: &str) -> Result<(), Refusal> {
        if actor == target {
            return Ok(());
        }
        if self.store.is_blocked(target, actor).await? {
            return Err(Refusal::new(
                Code::Forbidden,
                format!("{target} does not accept invitations or messages from you"),
            ));
        }
        if self.store.is_blocked(actor, target).await? {
            return Err(Refusal::new(
                Code::Forbidden,
                format!("you block {target}: unblock them first"),
            ));
        }
        Ok(())
    }

    /// Whether a block stands between the two users of the direct room
    /// `room` (`false` for any other kind): read once per batch of sends.
    pub(super) async fn direct_blocked(&self, room: &str, kind: RoomKind) -> Result<bool, Refusal> {
        if kind != RoomKind::Direct {
            return Ok(false);
        }
        let pair = self.store.members(room, None, 2).await?;
        let [a, b] = pair.as_slice() else {
            return Ok(false);
        };
        Ok(self.store.is_blocked(&a.user, &b.user).await?
            || self.store.is_blocked(&b.user, &a.user).await?)
    }
}
