//! Room events: what the chat service stores and publishes on
//! `{prefix}/rooms/{room}/events` and serves in `history` and `sync`
//! (PROTOCOL.md, "Sending").
//!
//! The stored bytes are `{"room","seq","ts","from","msg_id", ...body}`: the
//! envelope in that order, then the [`EventBody`] fields in name order (the
//! store writes them; `chat_bridge::store`'s `event_json`). A deleted
//! message's stored bytes become its tombstone: the envelope, its `type`
//! and `"deleted":true`, nothing else ([`EventHead`] reads any of them).

use crate::request::is_false;
use crate::room::Role;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The part of an event its sender chose (the server adds the envelope),
/// by `type`. `meta` is the sender's opaque object, on any kind of send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EventBody {
    Message {
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        meta: Option<Map<String, Value>>,
    },
    Edit {
        target: u64,
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        meta: Option<Map<String, Value>>,
    },
    Delete {
        target: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        meta: Option<Map<String, Value>>,
    },
    Reaction {
        target: u64,
        emoji: String,
        #[serde(default, skip_serializing_if = "is_false")]
        remove: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        meta: Option<Map<String, Value>>,
    },
    /// A membership change: `action` is `join`, `leave`, `invite`, `kick`,
    /// `ban`, `unban`, `mute`, `unmute` or `role`; `user` the member it
    /// changed, `role` their role after it.
    Member {
        action: String,
        user: String,
        role: Role,
    },
}

impl EventBody {
    /// The body as the JSON object the store appends to the envelope (its
    /// fields in name order).
    pub fn to_map(&self) -> Result<Map<String, Value>, serde_json::Error> {
        match serde_json::to_value(self)? {
            Value::Object(m) => Ok(m),
            _ => Err(serde::ser::Error::custom("an event body is an object")),
        }
    }
}

/// A live room event, envelope and body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub room: String,
    pub seq: u64,
    /// Server time, ms since the Unix epoch.
    pub ts: u64,
    /// The sender (the actor of a membership event).
    pub from: String,
    pub msg_id: String,
    #[serde(flatten)]
    pub body: EventBody,
}

/// What every stored event has, a tombstone included: the envelope, the
/// `type`, and whether it was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventHead {
    pub room: String,
    pub seq: u64,
    pub ts: u64,
    pub from: String,
    pub msg_id: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_bodies_are_in_name_order() -> Result<(), serde_json::Error> {
        let mut meta = Map::new();
        meta.insert("lang".into(), "en".into());
        let bodies = [
            EventBody::Message {
                body: "hi".into(),
                reply_to: Some(41),
                meta: Some(meta.clone()),
            },
            EventBody::Edit {
                target: 3,
                body: "hey".into(),
                meta: None,
            },
            EventBody::Delete {
                target: 3,
                meta: None,
            },
            EventBody::Reaction {
                target: 3,
                emoji: "+1".into(),
                remove: true,
                meta: Some(meta),
            },
            EventBody::Member {
                action: "join".into(),
                user: "bob".into(),
                role: Role::Member,
            },
        ];
        for body in bodies {
            let ev = Event {
                room: "r1".into(),
                seq: 42,
                ts: 1,
                from: "alice".into(),
                msg_id: "m1".into(),
                body,
            };
            let s = serde_json::to_string(&ev)?;
            assert_eq!(serde_json::from_str::<Event>(&s)?, ev, "{s}");
            let head: EventHead = serde_json::from_str(&s)?;
            assert_eq!((head.seq, head.deleted), (42, false));
            let keys: Vec<String> = ev.body.to_map()?.keys().cloned().collect();
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted);
        }
        let m = EventBody::Message {
            body: "hi".into(),
            reply_to: None,
            meta: None,
        };
        assert_eq!(
            serde_json::to_string(&m.to_map()?)?,
            r#"{"body":"hi","type":"message"}"#
        );
        let tomb: EventHead = serde_json::from_str(
            r#"{"room":"r","seq":3,"ts":7,"from":"u","msg_id":"m","type":"message","deleted":true}"#,
        )?;
        assert!(tomb.deleted && tomb.kind.as_deref() == Some("message"));
        Ok(())
    }
}
