//! `rooms.report`: a member reports a message; the room's owners and
//! admins get an inbox notice, and with event hooks a moderation service
//! gets it on `{prefix}/hooks/reports`.

use super::{Chat, Out};
use crate::store::{MemberState, Role};
use crate::wire::{self, required_room, Code, Refusal};
use schema::{Inbox, RawValue};
use serde::Deserialize;
use serde_json::json;

/// Members read to find a room's moderators.
const MODERATOR_SCAN: usize = 10_000;

/// `rooms.report`: the `room`, the message's `seq`, an optional `reason`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Report {
    room: Option<String>,
    seq: Option<u64>,
    reason: Option<String>,
}

impl Chat {
    pub(super) async fn report(
        &self,
        user: &str,
        p: Report,
        out: &mut Vec<Out>,
    ) -> Result<Box<RawValue>, Refusal> {
        let room = required_room(p.room)?;
        let seq = p.seq.ok_or_else(|| Refusal::bad("seq is required"))?;
        let reason = p.reason.map(|r| r.chars().take(500).collect::<String>());
        self.readable_room(user, &room).await?;
        let Some(target) = self.read_target(&room, seq).await?.filter(|t| !t.deleted) else {
            return Err(Refusal::new(
                Code::NotFound,
                format!("no message {seq} in {room}"),
            ));
        };
        // reports share the sender's rate: a flood of them is slowed down
        if !self.send_rate.take(user, &room) {
            return Err(Refusal::new(
                Code::RateLimited,
                "too many reports, slow down",
            ));
        }
        let notice = Inbox::Report {
            room: room.clone(),
            seq,
            author: target.from.clone(),
            by: user.to_owned(),
            reason: reason.clone(),
        };
        let mut moderators = 0u64;
        let mut after: Option<String> = None;
        let mut scanned = 0;
        while scanned < MODERATOR_SCAN {
            let page = self.store.members(&room, after.as_deref(), 1000).await?;
            scanned += page.len();
            for m in &page {
                if m.state == MemberState::Joined && matches!(m.role, Role::Owner | Role::Admin) {
                    moderators += 1;
                    out.push(self.inbox_out(&m.user, &notice));
                }
            }
            match page.last() {
                Some(m) if page.len() == 1000 => after = Some(m.user.clone()),
                _ => break,
            }
        }
        if self.hooks {
            let payload = json!({"room": room, "seq": seq, "author": target.from, "by": user, "reason": reason});
            out.push(Out {
                topic: format!("{}/hooks/reports", self.prefix),
                payload: payload.to_string().into_bytes().into(),
                corr: None,
                seq: None,
            });
        }
        wire::result(&json!({"reported": true, "moderators": moderators}))
    }
}
