//! The target of an edit, delete or reaction, checked while a send is prepared.
//!
//! Who may act on a target message: anyone who may send reacts; only its
//! author edits; its author, and the owners and admins of a group or channel,
//! delete it (a direct room has no moderators). The target must be a
//! `message` of the room (not a membership event, an edit, a delete or a
//! reaction), at or below the head, and not deleted; otherwise `not_found`.
//! Only these sends read their target: a plain message costs nothing more.

use super::send::SendCache;
use super::Chat;
use crate::store::{Range, Role, RoomKind};
use crate::wire::{Code, Refusal};
use schema::request::SendKind;
use schema::EventHead;
use std::collections::hash_map::Entry;

/// A message that an edit, delete or reaction names.
pub(super) struct Target {
    /// Its author.
    pub(super) from: String,
    /// Deleted, in the store or by a delete earlier in this batch.
    pub(super) deleted: bool,
    /// The `(user, msg_id)` of the delete earlier in this batch, if any.
    deleted_by: Option<(String, String)>,
}

impl Chat {
    /// Whether `user` may act (`kind`) on the message at `seq`; a delete
    /// that may is remembered for the rest of the batch.
    pub(super) async fn check_target(
        &self,
        room: &str,
        user: &str,
        kind: SendKind,
        seq: u64,
        msg_id: &str,
        cache: &mut SendCache,
    ) -> Result<(), Refusal> {
        let not_found = || Refusal::new(Code::NotFound, format!("no message {seq} in {room}"));
        if let Entry::Vacant(slot) = cache.targets.entry(seq) {
            slot.insert(self.read_target(room, seq).await?);
        }
        let Some(t) = cache.targets.get(&seq).and_then(Option::as_ref) else {
            return Err(not_found());
        };
        if t.deleted {
            // A retry of a send that was stored (before the delete, or the
            // delete itself) is no new act: the store answers it with its
            // original seq. Anything else names a message that is gone.
            let in_batch = t
                .deleted_by
                .as_ref()
                .is_some_and(|(u, m)| u == user && m == msg_id);
            if in_batch || self.store.lookup(room, user, msg_id).await?.is_some() {
                return Ok(());
            }
            return Err(not_found());
        }
        let own = t.from == user;
        let allowed = match kind {
            SendKind::Edit => own,
            SendKind::Delete => own || self.moderates(cache, user),
            SendKind::Message | SendKind::Reaction => true,
        };
        if !allowed {
            let what = if kind == SendKind::Edit {
                "only its author may edit a message".to_owned()
            } else {
                format!("you may not delete message {seq} in {room}")
            };
            return Err(Refusal::new(Code::Forbidden, what));
        }
        if kind == SendKind::Delete {
            if let Some(Some(t)) = cache.targets.get_mut(&seq) {
                t.deleted = true;
                t.deleted_by = Some((user.to_owned(), msg_id.to_owned()));
            }
        }
        Ok(())
    }

    /// The message at `seq` in `room`, if there is one (a `message` event:
    /// not a membership event, edit, delete or reaction).
    pub(super) async fn read_target(
        &self,
        room: &str,
        seq: u64,
    ) -> Result<Option<Target>, Refusal> {
        let Some(before) = seq.checked_sub(1) else {
            return Ok(None);
        };
        let page = self.store.read(room, Range::After(before), 1).await?;
        let Some(ev) = page.events.first().filter(|e| e.seq == seq) else {
            return Ok(None);
        };
        // the envelope, `type` and `deleted` decide (a tombstone has no more)
        let head: EventHead = match serde_json::from_slice(&ev.json) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(room, seq, error = %e, "stored event does not decode");
                return Ok(None);
            }
        };
        if head.kind.as_deref() != Some("message") {
            return Ok(None);
        }
        Ok(Some(Target {
            from: head.from,
            deleted: head.deleted,
            deleted_by: None,
        }))
    }

    /// Whether `user` moderates the batch's room: an owner or admin of a
    /// group or channel.
    pub(super) fn moderates(&self, cache: &SendCache, user: &str) -> bool {
        let moderated = matches!(&cache.room, Some(Some(r)) if r.kind != RoomKind::Direct);
        let role = cache
            .members
            .get(user)
            .and_then(Option::as_ref)
            .map(|m| m.role);
        moderated && matches!(role, Some(Role::Owner | Role::Admin))
    }
}
