//! Sends: validation, membership, rate limit, the target of an edit,
//! delete or reaction (`target.rs`), append.

use super::page::json_len;
use super::target::Target;
use super::{now_ms, Chat, Out, ReplyTo};
use crate::store::{Member, MemberState, NewEvent, RoomInfo, StoredEvent};
use crate::wire::{self, Code, Refusal};
use bytes::Bytes;
use schema::request::{Send, SendKind};
use schema::result::SeqResult;
use schema::{EventBody, Inbox};
use std::collections::HashMap;

/// The room and members a batch of sends to one room has read: sends do not
/// change membership, so each is read once per batch, not once per send.
/// Targets of edits, deletes and reactions are read once per batch too, and
/// a delete accepted earlier in the batch counts as done for the sends after it.
#[derive(Default)]
pub(super) struct SendCache {
    room_id: String,
    pub(super) room: Option<Option<RoomInfo>>,
    pub(super) members: HashMap<String, Option<Member>>,
    /// seq -> the message there (`None`: no message of this room there).
    pub(super) targets: HashMap<u64, Option<Target>>,
    /// Whether a block stands between a direct room's two users.
    blocked: Option<bool>,
    /// The room's slow mode, seconds (0: off).
    slow: Option<u64>,
}

/// The room of a stored event (its JSON's `room`).
fn room_of(ev: &StoredEvent) -> String {
    #[derive(serde::Deserialize)]
    struct R {
        room: String,
    }
    serde_json::from_slice::<R>(&ev.json)
        .map(|r| r.room)
        .unwrap_or_default()
}

/// What a send's answer needs once the store has spoken.
pub(super) struct SendCtx {
    room: String,
    user: String,
    to: ReplyTo,
    msg_id: Option<String>,
}

impl Chat {
    /// First half of a send: parse, route the reply, validate.
    pub(super) async fn prepare_send(
        &self,
        room: &str,
        user: &str,
        payload: &[u8],
        rt: Option<String>,
        corr: Option<Bytes>,
        cache: &mut SendCache,
    ) -> (SendCtx, Result<NewEvent, Refusal>) {
        let parsed = self.parse(payload);
        let env = parsed.as_ref().ok();
        let to = self.reply_to(user, env, rt, corr);
        let msg_id = env.and_then(|e| e.msg_id.clone());
        let result = match parsed {
            Ok(_) => match wire::params::<Send>(payload) {
                Ok(send) => self.prepare(room, user, send, cache).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let ctx = SendCtx {
            room: room.to_owned(),
            user: user.to_owned(),
            to,
            msg_id,
        };
        (ctx, result)
    }

    /// Second half: the event to publish and the reply, or the refusal.
    pub(super) fn finish_send(
        &self,
        ctx: SendCtx,
        result: Result<StoredEvent, Refusal>,
    ) -> Vec<Out> {
        let SendCtx {
            room,
            user,
            to,
            msg_id,
        } = ctx;
        match result {
            Ok(ev) => {
                let mut out = vec![self.event_out(&room, &ev)];
                let reply = wire::result(&SeqResult::new(ev.seq))
                    .map(|r| wire::ok_reply(to.corr_field.as_deref(), &r))
                    .unwrap_or_else(|r| wire::err_reply(to.corr_field.as_deref(), &r));
                out.extend(self.reply(&to, reply));
                out
            }
            Err(r) => {
                tracing::debug!(room, user, code = r.code.as_str(), "send refused");
                self.count_refusal(&r);
                if to.topic.is_some() {
                    self.reply(&to, wire::err_reply(to.corr_field.as_deref(), &r))
                        .into_iter()
                        .collect()
                } else {
                    let notice = Inbox::Error {
                        room,
                        msg_id,
                        code: r.code,
                        message: r.message,
                    };
                    vec![self.inbox_out(&user, &notice)]
                }
            }
        }
    }

    /// Sends to one room, in arrival order: every one is validated, then the
    /// valid ones are appended together (one group commit), then each is answered.
    pub(super) async fn sends(
        &self,
        items: Vec<(String, String, super::Incoming)>,
    ) -> Vec<Vec<Out>> {
        let mut prepared = Vec::with_capacity(items.len());
        let mut cache = SendCache::default();
        for (room, user, inc) in items {
            prepared.push(
                self.prepare_send(
                    &room,
                    &user,
                    &inc.payload,
                    inc.response_topic,
                    inc.corr,
                    &mut cache,
                )
                .await,
            );
        }
        // pre-publish moderation, every send of the batch asked at once
        let prepared = if self.moderator.is_some() {
            futures_util::future::join_all(prepared.into_iter().map(|(ctx, r)| async move {
                match r {
                    Ok(ev) => (ctx, self.moderate_send(ev).await),
                    Err(e) => (ctx, Err(e)),
                }
            }))
            .await
        } else {
            prepared
        };
        // the events move to the store; `prepared` keeps whether each was
        // valid (and, with an idempotency window, a copy for a renewed send)
        let window = self.retention.window().map(|w| w.as_millis() as u64);
        let mut events = Vec::with_capacity(prepared.len());
        let mut copies = Vec::new();
        let prepared: Vec<(SendCtx, Result<(), Refusal>)> = prepared
            .into_iter()
            .map(|(ctx, r)| match r {
                Ok(ev) => {
                    if window.is_some() {
                        copies.push(ev.clone());
                    }
                    events.push(ev);
                    (ctx, Ok(()))
                }
                Err(r) => (ctx, Err(r)),
            })
            .collect();
        // with hooks, each event's record goes just before it, in the same call
        let hooked = self.hooks;
        let events = if hooked {
            let mut both = Vec::with_capacity(events.len() * 2);
            for ev in events {
                both.push(self.hook_record(&ev));
                both.push(ev);
            }
            both
        } else {
            events
        };
        let mut kinds: HashMap<String, Option<crate::store::RoomKind>> = HashMap::new();
        let mut hook_outs = Vec::new();
        let mut appended = match self.store.append_many(events).await {
            Ok(v) if hooked => {
                let mut kept = Vec::with_capacity(v.len() / 2);
                let mut it = v.into_iter();
                while let (Some(h), Some(a)) = (it.next(), it.next()) {
                    if let (Ok(h), Ok(a)) = (&h, &a) {
                        if !a.duplicate && !h.duplicate {
                            let room = room_of(&a.event);
                            if !kinds.contains_key(&room) {
                                let kind = match self.store.room(&room).await {
                                    Ok(i) => i.map(|i| i.kind),
                                    Err(_) => None,
                                };
                                kinds.insert(room.clone(), kind);
                            }
                            let kind = kinds.get(&room).copied().flatten();
                            hook_outs.push(self.hook_out(h.event.seq, &room, kind, &a.event));
                        }
                    }
                    kept.push(a);
                }
                kept.into_iter()
            }
            Ok(v) => v.into_iter(),
            Err(e) => {
                let r = Refusal::from(e);
                return prepared
                    .into_iter()
                    .map(|(ctx, res)| self.finish_send(ctx, res.and(Err(r.clone()))))
                    .collect();
            }
        };
        let mut copies = copies.into_iter();
        let mut out = Vec::with_capacity(prepared.len());
        for (ctx, res) in prepared {
            let res = match res {
                Ok(_) => {
                    let copy = copies.next();
                    match appended.next() {
                        Some(Ok(a)) => match (window, copy) {
                            (Some(w), Some(ev)) if a.duplicate => {
                                self.within_window(a, ev, w).await
                            }
                            _ => Ok(a.event),
                        },
                        Some(Err(e)) => Err(Refusal::from(e)),
                        None => Err(Refusal::new(
                            Code::Unavailable,
                            "storage unavailable, retry later",
                        )),
                    }
                }
                Err(r) => Err(r),
            };
            out.push(self.finish_send(ctx, res));
        }
        // the hooks after the batch's events (appended to its last answer)
        if let Some(last) = out.last_mut() {
            last.extend(hook_outs);
        }
        out
    }

    /// A duplicate send under an idempotency window of `window` ms: the
    /// original event while it is within the window; past it, the key is
    /// forgotten and the send stored as a new event.
    async fn within_window(
        &self,
        dup: crate::store::Appended,
        ev: NewEvent,
        window: u64,
    ) -> Result<StoredEvent, Refusal> {
        if super::retention::ts_of(&dup.event).saturating_add(window) > super::now_ms() {
            return Ok(dup.event);
        }
        let key = crate::store::KeyAt {
            from: ev.from.clone(),
            msg_id: ev.msg_id.clone(),
            seq: dup.event.seq,
        };
        // 0, 0: moves no retention bound, only forgets this key
        self.store.expire(&ev.room, vec![key], 0, 0).await?;
        if !self.hooks {
            return Ok(self.store.append(ev).await?.event);
        }
        // and the old hook record's key, so the new event gets its own record
        let hook = self.hook_record(&ev);
        if let Some(old) = self
            .store
            .lookup(&hook.room, &hook.from, &hook.msg_id)
            .await?
        {
            let key = crate::store::KeyAt {
                from: hook.from.clone(),
                msg_id: hook.msg_id.clone(),
                seq: old.seq,
            };
            self.store.expire(&hook.room, vec![key], 0, 0).await?;
        }
        let mut r = self.store.append_many(vec![hook, ev]).await?.into_iter();
        match (r.next(), r.next()) {
            (_, Some(a)) => Ok(a?.event),
            _ => Err(Refusal::new(Code::Unavailable, "retry later")),
        }
    }

    /// Validates a send and checks membership, mute/ban and rate; the event to append.
    async fn prepare(
        &self,
        room: &str,
        user: &str,
        send: Send,
        cache: &mut SendCache,
    ) -> Result<NewEvent, Refusal> {
        let Send {
            msg_id,
            kind,
            body: text,
            target,
            reply_to,
            emoji,
            remove,
            meta,
        } = send;
        let msg_id = match msg_id {
            Some(m) if wire::valid_msg_id(&m) => m,
            Some(_) => return Err(Refusal::bad("msg_id must be 1-64 printable ASCII chars")),
            None => return Err(Refusal::bad("msg_id is required")),
        };
        let kind = kind.unwrap_or(SendKind::Message);
        if text.as_ref().is_some_and(|t| t.len() > self.sizes.body_max) {
            return Err(Refusal::new(
                Code::TooLarge,
                format!("body exceeds {} bytes", self.sizes.body_max),
            ));
        }
        let required = |v: Option<u64>| v.ok_or_else(|| Refusal::bad("target is required"));
        let no_body = || Refusal::bad("body is required");
        let meta_len = meta.as_ref().map(json_len);
        let event = match kind {
            SendKind::Message => EventBody::Message {
                body: text.ok_or_else(no_body)?,
                reply_to,
                meta,
            },
            SendKind::Edit => {
                let body = text.ok_or_else(no_body)?;
                EventBody::Edit {
                    target: required(target)?,
                    body,
                    meta,
                }
            }
            SendKind::Delete => EventBody::Delete {
                target: required(target)?,
                meta,
            },
            SendKind::Reaction => {
                let target = required(target)?;
                let emoji = emoji
                    .filter(|e| !e.is_empty() && e.len() <= 64)
                    .ok_or_else(|| Refusal::bad("emoji is required (1-64 bytes)"))?;
                EventBody::Reaction {
                    target,
                    emoji,
                    remove,
                    meta,
                }
            }
        };
        if meta_len.is_some_and(|n| n > self.sizes.meta_max) {
            return Err(Refusal::new(
                Code::TooLarge,
                format!("meta exceeds {} bytes", self.sizes.meta_max),
            ));
        }
        let body = event.to_map().map_err(|e| {
            tracing::error!(error = %e, "an event body does not serialize");
            Refusal::new(Code::Unavailable, "internal error, retry later")
        })?;
        if cache.room_id != room {
            *cache = SendCache {
                room_id: room.to_owned(),
                ..SendCache::default()
            };
        }
        // read once per batch, looked at by reference (no copy per send)
        if cache.room.is_none() {
            cache.room = Some(self.store.room(room).await?);
        }
        if !matches!(cache.room, Some(Some(_))) {
            return Err(Refusal::new(
                Code::NotMember,
                format!("you are not a member of {room}"),
            ));
        }
        if !cache.members.contains_key(user) {
            let m = self.store.member(room, user).await?;
            cache.members.insert(user.to_owned(), m);
        }
        let m = cache.members.get(user).and_then(Option::as_ref);
        match m.map(|m| (m.state, m.muted)) {
            Some((MemberState::Joined, false)) => {}
            Some((MemberState::Joined, true)) => {
                return Err(Refusal::new(
                    Code::Muted,
                    format!("you are muted in {room}"),
                ))
            }
            Some((MemberState::Banned, _)) => {
                return Err(Refusal::new(
                    Code::Banned,
                    format!("you are banned from {room}"),
                ))
            }
            _ => {
                return Err(Refusal::new(
                    Code::NotMember,
                    format!("you are not a member of {room}"),
                ))
            }
        }
        if cache.blocked.is_none() {
            let kind = cache.room.as_ref().and_then(Option::as_ref).map(|r| r.kind);
            let blocked = match kind {
                Some(k) => self.direct_blocked(room, k).await?,
                None => false,
            };
            cache.blocked = Some(blocked);
        }
        if cache.blocked == Some(true) {
            return Err(Refusal::new(
                Code::Forbidden,
                "one of you blocks the other: no messages in this direct room",
            ));
        }
        if kind == SendKind::Message && !self.moderates(cache, user) {
            if cache.slow.is_none() {
                cache.slow = match self.last_sends.cached(room) {
                    Some(s) => Some(s),
                    None => {
                        let settings = self.store.room_settings(room).await?;
                        let s = super::slow::slow_secs(settings.as_deref());
                        self.last_sends.remember(room, s);
                        Some(s)
                    }
                };
            }
            let secs = cache.slow.unwrap_or(0);
            if secs > 0 && !self.last_sends.take(room, user, secs) {
                return Err(Refusal::new(
                    Code::RateLimited,
                    format!("slow mode: one message every {secs} s in {room}"),
                ));
            }
        }
        if !self.send_rate.take(user, room) {
            return Err(Refusal::new(
                Code::RateLimited,
                "too many messages, slow down",
            ));
        }
        // only edits, deletes and reactions read a target (after the rate
        // limit: a flood of them is slowed down like any other send)
        let target = match kind {
            SendKind::Edit | SendKind::Delete | SendKind::Reaction => target,
            SendKind::Message => None,
        };
        if let Some(t) = target {
            self.check_target(room, user, kind, t, &msg_id, cache)
                .await?;
        }
        Ok(NewEvent {
            room: room.into(),
            from: user.into(),
            msg_id,
            ts: now_ms(),
            body,
            member: None,
            redacts: target.filter(|_| kind == SendKind::Delete),
        })
    }
}
