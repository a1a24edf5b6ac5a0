//! What a client publishes: a send on `{prefix}/rooms/{room}/send/{user}`
//! and the parameters of each request on `{prefix}/rpc/{user}/{method}`
//! (PROTOCOL.md, "Sending" and "Requests and replies").
//!
//! A payload is read twice: first its [`Envelope`] (where the reply goes,
//! the `corr` to echo, a send's `msg_id`), which never fails on a field of
//! the wrong type, so that a refusal still reaches the client; then the
//! method's parameters, where a field of the wrong type is a `bad_request`
//! naming the field. Every field is optional here (`null` counts as absent);
//! the service says which are required and checks ids and limits. Unknown
//! fields are ignored. Serialized (by a client), an absent field is `null`.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// The routing part of a request or send payload, read before its
/// parameters. Only a JSON object has one.
#[derive(Debug, Default)]
pub struct Envelope<'a> {
    /// `reply`: the 3.1.1 reply topic; a value that is not a string counts
    /// as none.
    pub reply: Option<String>,
    /// `corr`: any JSON value, echoed in the reply exactly as written
    /// (`null` included).
    pub corr: Option<&'a RawValue>,
    /// A send's `msg_id` if it is a string, valid or not: an error sent to
    /// the inbox names it.
    pub msg_id: Option<String>,
}

/// The envelope's field names; every other key is skipped unread.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum EnvelopeField {
    Reply,
    Corr,
    MsgId,
    #[serde(other)]
    Other,
}

/// A string, or any other JSON value (which counts as none).
struct MaybeString(Option<String>);

impl<'de> Deserialize<'de> for MaybeString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(Probe { keep_str: true })? {
            Seen::Str(s) => Ok(MaybeString(Some(s))),
            _ => Ok(MaybeString(None)),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Envelope<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EnvelopeVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for EnvelopeVisitor<'a> {
            type Value = Envelope<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Envelope<'a>, M::Error> {
                let mut env = Envelope::default();
                // a repeated key: the last one counts
                while let Some(k) = m.next_key::<EnvelopeField>()? {
                    match k {
                        EnvelopeField::Reply => env.reply = m.next_value::<MaybeString>()?.0,
                        EnvelopeField::Corr => env.corr = Some(m.next_value::<&'de RawValue>()?),
                        EnvelopeField::MsgId => env.msg_id = m.next_value::<MaybeString>()?.0,
                        // read in full, so the envelope accepts exactly
                        // the objects `serde_json::Value` accepts
                        EnvelopeField::Other => {
                            m.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(env)
            }
        }
        d.deserialize_map(EnvelopeVisitor(std::marker::PhantomData))
    }
}

/// What a JSON value read in full was, as far as the envelope and `remove`
/// care.
enum Seen {
    Bool(bool),
    Str(String),
    Other,
}

/// Reads any JSON value in full, as `serde_json::Value` would (numbers in
/// range, strings well escaped, nesting within the limit), keeping only
/// what it was; a string only when `keep_str`.
struct Probe {
    keep_str: bool,
}

/// Any JSON value, read in full and dropped.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Probe { keep_str: false }).map(|_| Skip)
    }
}

impl<'de> Visitor<'de> for Probe {
    type Value = Seen;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Seen, E> {
        Ok(Seen::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Seen, E> {
        Ok(Seen::Other)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Seen, E> {
        Ok(Seen::Other)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Seen, E> {
        Ok(Seen::Other)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Seen, E> {
        Ok(match self.keep_str {
            true => Seen::Str(v.to_owned()),
            false => Seen::Other,
        })
    }
    fn visit_unit<E: de::Error>(self) -> Result<Seen, E> {
        Ok(Seen::Other)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Seen, A::Error> {
        while a.next_element::<Skip>()?.is_some() {}
        Ok(Seen::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Seen, A::Error> {
        while a.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Seen::Other)
    }
}

/// Reads a boolean that is `true` only when the field is the JSON `true`;
/// any other value (or none) is `false`. Used for `remove`, which has
/// always been read that way.
fn only_true<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(matches!(
        d.deserialize_any(Probe { keep_str: false })?,
        Seen::Bool(true)
    ))
}

/// The kind of a send (`type`; `message` when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendKind {
    Message,
    Edit,
    Delete,
    Reaction,
}

impl SendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SendKind::Message => "message",
            SendKind::Edit => "edit",
            SendKind::Delete => "delete",
            SendKind::Reaction => "reaction",
        }
    }
}

/// A send: `{"msg_id":..,"type":..,"body":..,"reply_to":..,"target":..,
/// "emoji":..,"remove":..,"meta":{..}}`. `reply` and `corr` are in its
/// [`Envelope`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Send {
    pub msg_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<SendKind>,
    pub body: Option<String>,
    /// The seq of the message an edit, delete or reaction acts on.
    pub target: Option<u64>,
    /// A message's answer to an earlier seq.
    pub reply_to: Option<u64>,
    pub emoji: Option<String>,
    /// A reaction taken back.
    #[serde(
        default,
        deserialize_with = "only_true",
        skip_serializing_if = "is_false"
    )]
    pub remove: bool,
    /// Opaque to the server, size-limited.
    pub meta: Option<Map<String, Value>>,
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

/// `history`: `room`, at most one of `before` / `after`, `limit`, and
/// `view` (`"readable"`: messages with edits, deletes, reactions and reply
/// counts folded in; absent: the stored events).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub room: Option<String>,
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
}

/// `thread`: `room`, `seq` (the thread's first message), `after` (a
/// reply's seq, for the next page), `limit` replies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thread {
    pub room: Option<String>,
    pub seq: Option<u64>,
    pub after: Option<u64>,
    pub limit: Option<u64>,
}

/// `sync`: `rooms` (`{room: last_seen_seq}`), `limit_per_room`, and the
/// paging of the rooms it did not name (`joined_limit`, `joined_after`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sync {
    pub rooms: Option<BTreeMap<String, u64>>,
    pub limit_per_room: Option<u64>,
    pub joined_limit: Option<u64>,
    pub joined_after: Option<String>,
    /// `"readable"`: each room's events as `history`'s readable view (not
    /// for cursors: folded events leave gaps in `seq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
}

/// `rooms.create`: `room` (groups and channels; the server picks one when
/// absent), `kind` (`group` when absent), `members`, `title`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Create {
    pub room: Option<String>,
    pub kind: Option<crate::RoomKind>,
    pub members: Option<Vec<String>>,
    pub title: Option<String>,
}

/// `rooms.join`, `rooms.leave`: the `room`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomParam {
    pub room: Option<String>,
}

/// `rooms.invite`, `rooms.kick`, `rooms.ban`, `rooms.mute`, `rooms.role`:
/// the `room`, the target `user`; `remove` lifts a ban or a mute; `role`
/// (`admin` or `member`) is `rooms.role`'s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moderate {
    pub room: Option<String>,
    pub user: Option<String>,
    #[serde(
        default,
        deserialize_with = "only_true",
        skip_serializing_if = "is_false"
    )]
    pub remove: bool,
    pub role: Option<String>,
}

/// `rooms.list`: `limit` rooms after the room id `after`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct List {
    pub limit: Option<u64>,
    pub after: Option<String>,
}

/// `rooms.members`: the `room`, `limit` members after the user id `after`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    pub room: Option<String>,
    pub limit: Option<u64>,
    pub after: Option<String>,
}

/// `users.block`, `users.unblock`: the other `user`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserParam {
    pub user: Option<String>,
}

/// `read`, `delivered`: the `room` and the `seq` the marker moves to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub room: Option<String>,
    pub seq: Option<u64>,
}

/// `{"typing":true}` / `false` on `{prefix}/rooms/{room}/typing/{user}`:
/// published by clients to clients, never read by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Typing {
    pub typing: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_never_fails_on_a_field_and_keeps_corr_as_written(
    ) -> Result<(), serde_json::Error> {
        let e: Envelope = serde_json::from_str(
            r#"{"room":5,"corr":{ "a" : [1.10, null] },"reply":7,"msg_id":"m 1","x":{"y":[]}}"#,
        )?;
        assert_eq!(e.corr.map(RawValue::get), Some(r#"{ "a" : [1.10, null] }"#));
        assert_eq!((e.reply, e.msg_id.as_deref()), (None, Some("m 1")));
        let e: Envelope = serde_json::from_str(r#"{"corr":null,"reply":"t","reply":"u"}"#)?;
        assert_eq!(e.corr.map(RawValue::get), Some("null"));
        assert_eq!(e.reply.as_deref(), Some("u"));
        for not_an_object in ["[1,2]", "\"s\"", "3", "null"] {
            assert!(serde_json::from_str::<Envelope>(not_an_object).is_err());
        }
        // what `Value` refuses anywhere, the envelope refuses too
        for bad in [
            r#"{"x":1e999}"#,
            r#"{"x":[{"y":-1e999}]}"#,
            r#"{"x":"\ud800"}"#,
            r#"{"reply":["\ud800"]}"#,
        ] {
            assert!(serde_json::from_str::<Value>(bad).is_err(), "{bad}");
            assert!(serde_json::from_str::<Envelope>(bad).is_err(), "{bad}");
        }
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(serde_json::from_str::<Value>(&deep).is_err());
        assert!(serde_json::from_str::<Envelope>(&deep).is_err());
        Ok(())
    }

    #[test]
    fn requests_round_trip() -> Result<(), serde_json::Error> {
        fn again<T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug>(
            v: T,
        ) -> Result<(), serde_json::Error> {
            let s = serde_json::to_string(&v)?;
            assert_eq!(serde_json::from_str::<T>(&s)?, v, "{s}");
            Ok(())
        }
        let mut meta = Map::new();
        meta.insert("lang".into(), "en".into());
        again(Send {
            msg_id: Some("m1".into()),
            kind: Some(SendKind::Reaction),
            body: Some("hi".into()),
            target: Some(4),
            reply_to: Some(3),
            emoji: Some("+1".into()),
            remove: true,
            meta: Some(meta),
        })?;
        again(Send::default())?;
        again(History {
            room: Some("r1".into()),
            before: Some(100),
            after: None,
            limit: Some(50),
            view: Some("readable".into()),
        })?;
        again(Thread {
            room: Some("r1".into()),
            seq: Some(4),
            after: Some(9),
            limit: Some(20),
        })?;
        again(Sync {
            rooms: Some([("r1".to_owned(), 7)].into()),
            limit_per_room: Some(10),
            joined_limit: Some(5),
            joined_after: Some("r0".into()),
            view: None,
        })?;
        again(Create {
            room: Some("r1".into()),
            kind: Some(crate::RoomKind::Channel),
            members: Some(vec!["bob".into()]),
            title: Some("t".into()),
        })?;
        again(RoomParam {
            room: Some("r1".into()),
        })?;
        again(Moderate {
            room: Some("r1".into()),
            user: Some("bob".into()),
            remove: true,
            role: Some("admin".into()),
        })?;
        again(List {
            limit: Some(5),
            after: Some("r1".into()),
        })?;
        again(Members {
            room: Some("r1".into()),
            limit: Some(5),
            after: Some("bob".into()),
        })?;
        again(Marker {
            room: Some("r1".into()),
            seq: Some(3),
        })?;
        again(Typing { typing: true })
    }

    #[test]
    fn null_is_absent_and_remove_is_only_true() -> Result<(), serde_json::Error> {
        let s: Send = serde_json::from_str(r#"{"msg_id":null,"type":null,"remove":"yes"}"#)?;
        assert_eq!(s, Send::default());
        for (json, remove) in [
            (r#"{"remove":true}"#, true),
            (r#"{"remove":false}"#, false),
            (r#"{"remove":1}"#, false),
            (r#"{"remove":{"a":[true]}}"#, false),
            (r#"{"remove":[true]}"#, false),
        ] {
            assert_eq!(
                serde_json::from_str::<Moderate>(json)?.remove,
                remove,
                "{json}"
            );
        }
        // a known field of the wrong type is refused; an unknown one is not
        assert!(serde_json::from_str::<History>(r#"{"limit":"x"}"#).is_err());
        assert!(serde_json::from_str::<History>(r#"{"limit":-1}"#).is_err());
        assert!(serde_json::from_str::<History>(r#"{"limit":1.0}"#).is_err());
        assert!(serde_json::from_str::<History>(r#"{"lim":"x"}"#).is_ok());
        assert!(serde_json::from_str::<Send>(r#"{"type":"poke"}"#).is_err());
        Ok(())
    }
}
