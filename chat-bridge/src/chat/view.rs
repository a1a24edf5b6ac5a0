//! The readable view (issue 16): what a chat UI shows, folded by the
//! server instead of every client. `history` with `"view": "readable"`
//! returns the page's messages (and membership events) with
//!
//! - the latest `body` of an edited message and `"edited": true`;
//! - a deleted message as its tombstone (`"deleted": true`, no body: the
//!   store already holds only that);
//! - `"reactions": [{"emoji", "count", "mine"}]`, added up over reactions
//!   and their removals;
//! - `"replies": n`, the messages whose `reply_to` is it;
//!
//! and no edit, reaction or delete events of their own. The fold reads the
//! page and up to [`FOLD_SCAN`] events after it; `folded_to` says how far
//! (the head when it saw everything). `sync` takes the same `view` for each
//! room's events. `thread` returns a message and its replies, folded the
//! same way.

use super::{raw_event, Chat};
use crate::store::{Range, StoredEvent};
use crate::wire::{self, required_room, Code, Refusal};
use schema::RawValue;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Events after a page that the fold reads for edits, reactions, deletes and
/// replies of the page's messages.
pub(super) const FOLD_SCAN: usize = 2000;

/// Events after the root a `thread` reads for its replies.
const THREAD_SCAN: usize = 10_000;

/// Folds `later` (ascending, after or overlapping `shown`) into the
/// messages of `shown`; returns what a reader shows: the messages and
/// membership events of `shown`, in order.
pub(super) fn fold(shown: &[StoredEvent], later: &[StoredEvent], user: &str) -> Vec<Value> {
    let mut out: Vec<Map<String, Value>> = Vec::new();
    let mut at: HashMap<u64, usize> = HashMap::new();
    for e in shown {
        let Some(Value::Object(v)) = raw_event(e).and_then(|r| serde_json::from_str(r.get()).ok())
        else {
            continue;
        };
        match v.get("type").and_then(Value::as_str).unwrap_or("message") {
            "edit" | "reaction" | "delete" => {}
            _ => {
                at.insert(e.seq, out.len());
                out.push(v);
            }
        }
    }
    // emoji -> users, per message
    let mut reactions: HashMap<u64, BTreeMap<String, BTreeSet<String>>> = HashMap::new();
    let mut replies: HashMap<u64, u64> = HashMap::new();
    let mut seen = BTreeSet::new();
    for e in shown.iter().chain(later) {
        if !seen.insert(e.seq) {
            continue;
        }
        let Ok(Value::Object(v)) = serde_json::from_slice::<Value>(&e.json) else {
            continue;
        };
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("message");
        let from = v.get("from").and_then(Value::as_str).unwrap_or("");
        let target = v.get("target").and_then(Value::as_u64);
        match (kind, target.and_then(|t| at.get(&t).map(|i| (t, *i)))) {
            ("edit", Some((_, i))) => {
                let m = &mut out[i];
                if m.get("deleted") != Some(&Value::Bool(true)) {
                    if let Some(body) = v.get("body") {
                        m.insert("body".into(), body.clone());
                    }
                    m.insert("edited".into(), Value::Bool(true));
                }
            }
            ("delete", Some((_, i))) => {
                let m = &mut out[i];
                m.remove("body");
                m.remove("meta");
                m.insert("deleted".into(), Value::Bool(true));
            }
            ("reaction", Some((t, _))) => {
                let Some(emoji) = v.get("emoji").and_then(Value::as_str) else {
                    continue;
                };
                let users = reactions
                    .entry(t)
                    .or_default()
                    .entry(emoji.to_owned())
                    .or_default();
                if v.get("remove") == Some(&Value::Bool(true)) {
                    users.remove(from);
                } else {
                    users.insert(from.to_owned());
                }
            }
            ("message", _) => {
                if let Some(r) = v.get("reply_to").and_then(Value::as_u64) {
                    if at.contains_key(&r) {
                        *replies.entry(r).or_default() += 1;
                    }
                }
            }
            _ => {}
        }
    }
    for (seq, i) in at {
        let m = &mut out[i];
        if m.get("deleted") == Some(&Value::Bool(true)) {
            continue;
        }
        if let Some(r) = reactions.get(&seq) {
            let list: Vec<Value> = r
                .iter()
                .filter(|(_, users)| !users.is_empty())
                .map(|(emoji, users)| {
                    json!({"emoji": emoji, "count": users.len(), "mine": users.contains(user)})
                })
                .collect();
            if !list.is_empty() {
                m.insert("reactions".into(), Value::Array(list));
            }
        }
        if let Some(n) = replies.get(&seq) {
            m.insert("replies".into(), json!(n));
        }
    }
    out.into_iter().map(Value::Object).collect()
}

impl Chat {
    /// `shown` (a page of `room`, ascending) as the readable view, folding
    /// up to [`FOLD_SCAN`] events after it: for `sync`'s readable view.
    pub(super) async fn readable_events(
        &self,
        room: &str,
        user: &str,
        shown: &[StoredEvent],
        head: u64,
    ) -> Result<Vec<Box<RawValue>>, Refusal> {
        let last = shown.last().map_or(0, |e| e.seq);
        let later = if last > 0 && last < head {
            self.store
                .read(room, Range::After(last), FOLD_SCAN)
                .await?
                .events
        } else {
            Vec::new()
        };
        Ok(fold(shown, &later, user)
            .iter()
            .filter_map(|v| serde_json::value::to_raw_value(v).ok())
            .collect())
    }

    /// `history` with `"view": "readable"` (see the module).
    pub(super) async fn readable_history(
        &self,
        room: String,
        range: Range,
        limit: usize,
        user: &str,
    ) -> Result<Box<RawValue>, Refusal> {
        let page = self.store.read(&room, range, limit).await?;
        // the reply stays within the packet limit, as a plain page does
        let mut budget = wire::REPLY_EVENTS_MAX;
        let (shown, cut) = super::read::fit(&page.events, range, &mut budget);
        let last = shown.last().map_or(0, |e| e.seq);
        let later = if last > 0 && last < page.head {
            self.store
                .read(&room, Range::After(last), FOLD_SCAN)
                .await?
        } else {
            crate::store::Page {
                events: Vec::new(),
                head: page.head,
                has_more: false,
            }
        };
        let folded_to = match later.events.last() {
            Some(e) if later.has_more => e.seq,
            _ => page.head,
        };
        let events = fold(shown, &later.events, user);
        wire::result(&json!({
            "room": room,
            "events": events,
            "head": page.head,
            "has_more": page.has_more || cut,
            "folded_to": folded_to,
        }))
    }

    /// `thread`: `room`, `seq` (the root message), `limit` replies after
    /// `after` (a reply's seq): the root and its replies, readable.
    pub(super) async fn thread(
        &self,
        user: &str,
        p: schema::request::Thread,
    ) -> Result<Box<RawValue>, Refusal> {
        let room = required_room(p.room)?;
        let root = p
            .seq
            .filter(|s| *s > 0)
            .ok_or_else(|| Refusal::bad("seq is required (the thread's first message)"))?;
        let limit = self.page_limit(p.limit, "limit")?;
        let after = p.after.unwrap_or(root).max(root);
        self.readable_room(user, &room).await?;
        let first = self
            .store
            .read(&room, Range::After(root - root.min(1)), 1)
            .await?;
        let Some(root_ev) = first.events.first().filter(|e| e.seq == root) else {
            return Err(Refusal::new(
                Code::NotFound,
                format!("no message {root} in {room}"),
            ));
        };
        let is_message = serde_json::from_slice::<Value>(&root_ev.json)
            .ok()
            .and_then(|v| {
                v.get("type")
                    .and_then(Value::as_str)
                    .map(|t| t == "message")
            })
            .unwrap_or(false);
        if !is_message {
            return Err(Refusal::new(
                Code::NotFound,
                format!("no message {root} in {room}"),
            ));
        }
        // scan after the root for its replies (and what changes them)
        let mut scanned = Vec::new();
        let mut cursor = after;
        let mut has_more = false;
        let mut found = 0;
        while scanned.len() < THREAD_SCAN {
            let page = self.store.read(&room, Range::After(cursor), 1000).await?;
            let Some(last) = page.events.last() else {
                break;
            };
            cursor = last.seq;
            for e in page.events {
                let is_reply = serde_json::from_slice::<Value>(&e.json)
                    .ok()
                    .and_then(|v| v.get("reply_to").and_then(Value::as_u64))
                    == Some(root);
                if is_reply {
                    if found == limit {
                        has_more = true;
                        break;
                    }
                    found += 1;
                }
                scanned.push(e);
            }
            if has_more || !page.has_more {
                break;
            }
        }
        if scanned.len() >= THREAD_SCAN {
            has_more = true;
        }
        let replies_only: Vec<StoredEvent> = scanned
            .iter()
            .filter(|e| {
                serde_json::from_slice::<Value>(&e.json)
                    .ok()
                    .and_then(|v| v.get("reply_to").and_then(Value::as_u64))
                    == Some(root)
            })
            .cloned()
            .collect();
        let root_view = fold(std::slice::from_ref(root_ev), &scanned, user);
        let replies = fold(&replies_only, &scanned, user);
        wire::result(&json!({
            "room": room,
            "root": root_view.into_iter().next(),
            "replies": replies,
            "has_more": has_more,
            "scanned_to": cursor.max(after),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, v: Value) -> StoredEvent {
        let mut v = v;
        v["seq"] = json!(seq);
        v["room"] = json!("r");
        StoredEvent {
            seq,
            json: bytes::Bytes::from(v.to_string()),
        }
    }

    #[test]
    fn edits_deletes_reactions_and_replies_fold_into_the_messages() {
        let shown = [
            ev(
                1,
                json!({"from": "alice", "type": "member", "action": "join", "user": "alice"}),
            ),
            ev(2, json!({"from": "alice", "type": "message", "body": "hi"})),
            ev(3, json!({"from": "bob", "type": "message", "body": "hey"})),
            ev(
                4,
                json!({"from": "alice", "type": "edit", "target": 2, "body": "hi all"}),
            ),
        ];
        let later = [
            ev(
                5,
                json!({"from": "bob", "type": "reaction", "target": 2, "emoji": "👍"}),
            ),
            ev(
                6,
                json!({"from": "alice", "type": "reaction", "target": 2, "emoji": "👍"}),
            ),
            ev(
                7,
                json!({"from": "carol", "type": "reaction", "target": 2, "emoji": "🎉"}),
            ),
            ev(
                8,
                json!({"from": "carol", "type": "reaction", "target": 2, "emoji": "🎉", "remove": true}),
            ),
            ev(
                9,
                json!({"from": "bob", "type": "message", "body": "re", "reply_to": 2}),
            ),
            ev(
                10,
                json!({"from": "bob", "type": "delete", "target": 3, "deleted": false}),
            ),
            ev(
                11,
                json!({"from": "bob", "type": "edit", "target": 3, "body": "too late"}),
            ),
        ];
        let v = fold(&shown, &later, "alice");
        assert_eq!(v.len(), 3, "the member event and two messages: {v:?}");
        assert_eq!(v[1]["body"], "hi all");
        assert_eq!(v[1]["edited"], true);
        assert_eq!(
            v[1]["reactions"],
            json!([{"emoji": "👍", "count": 2, "mine": true}])
        );
        assert_eq!(v[1]["replies"], 1);
        assert_eq!(v[2]["deleted"], true);
        assert!(v[2].get("body").is_none(), "a tombstone: {}", v[2]);
        assert!(v[2].get("edited").is_none(), "no edit after the delete");
        let bob = fold(&shown, &later, "bob");
        assert_eq!(bob[1]["reactions"][0]["mine"], true);
        let carol = fold(&shown, &later, "carol");
        assert_eq!(carol[1]["reactions"][0]["mine"], false);
    }
}
