//! Wire types and limits (PROTOCOL.md): error codes, replies, request fields.

use serde_json::{json, Map, Value};

/// Default of the largest request or send payload, bytes.
pub const PAYLOAD_MAX: usize = 64 * 1024;
/// Default of the largest message `body`, bytes.
pub const BODY_MAX: usize = 16 * 1024;
/// Default of the largest `meta` object, serialized bytes.
pub const META_MAX: usize = 4 * 1024;
/// Default `history` page size when none is given.
pub const LIMIT_DEFAULT: usize = 50;
/// Default of the largest `history` page.
pub const LIMIT_MAX: usize = 1000;

/// The size and page limits of PROTOCOL.md ("Errors and limits"), set from
/// the `[bridge]` configuration; the defaults are the constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request or send payload, bytes (`too_large` beyond).
    pub payload_max: usize,
    /// Largest message `body`, bytes (`too_large` beyond).
    pub body_max: usize,
    /// Largest `meta` object, serialized bytes (`too_large` beyond).
    pub meta_max: usize,
    /// `history` page (and `sync` `limit_per_room`) when none is given.
    pub history_default: usize,
    /// Largest `history` page (and `sync` `limit_per_room`).
    pub history_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            payload_max: PAYLOAD_MAX,
            body_max: BODY_MAX,
            meta_max: META_MAX,
            history_default: LIMIT_DEFAULT,
            history_max: LIMIT_MAX,
        }
    }
}
/// Most bytes of events in one `history` or `sync` reply: a page is cut
/// short (with `has_more: true`) rather than exceed it, so every reply fits
/// the bridge's and the clients' packet limits. The client pages on.
pub const REPLY_EVENTS_MAX: usize = 512 * 1024;

/// The stable error codes of PROTOCOL.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotMember,
    Banned,
    Muted,
    RateLimited,
    TooLarge,
    NotFound,
    Conflict,
    Unavailable,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotMember => "not_member",
            Code::Banned => "banned",
            Code::Muted => "muted",
            Code::RateLimited => "rate_limited",
            Code::TooLarge => "too_large",
            Code::NotFound => "not_found",
            Code::Conflict => "conflict",
            Code::Unavailable => "unavailable",
        }
    }
}

/// A refusal: code plus a message safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub message: String,
}

impl Refusal {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
    pub fn bad(message: impl Into<String>) -> Self {
        Refusal::new(Code::BadRequest, message)
    }
}

impl From<crate::store::StoreError> for Refusal {
    fn from(e: crate::store::StoreError) -> Self {
        // internal details stay in the log
        tracing::error!(error = %e, "store error");
        Refusal::new(Code::Unavailable, "storage unavailable, retry later")
    }
}

/// `{"corr":..,"ok":true,"result":..}`
pub fn ok_reply(corr: Option<&Value>, result: Value) -> Vec<u8> {
    let mut m = Map::new();
    if let Some(c) = corr {
        m.insert("corr".into(), c.clone());
    }
    m.insert("ok".into(), Value::Bool(true));
    m.insert("result".into(), result);
    Value::Object(m).to_string().into_bytes()
}

/// `{"corr":..,"ok":false,"error":{"code":..,"message":..}}`
pub fn err_reply(corr: Option<&Value>, r: &Refusal) -> Vec<u8> {
    let mut m = Map::new();
    if let Some(c) = corr {
        m.insert("corr".into(), c.clone());
    }
    m.insert("ok".into(), Value::Bool(false));
    m.insert(
        "error".into(),
        json!({"code": r.code.as_str(), "message": r.message}),
    );
    Value::Object(m).to_string().into_bytes()
}

/// Reads an optional string field.
pub fn opt_str<'a>(o: &'a Map<String, Value>, k: &str) -> Result<Option<&'a str>, Refusal> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Refusal::bad(format!("{k} must be a string"))),
    }
}

/// Reads an optional unsigned integer field.
pub fn opt_u64(o: &Map<String, Value>, k: &str) -> Result<Option<u64>, Refusal> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| Refusal::bad(format!("{k} must be an unsigned integer"))),
    }
}

/// Reads a required room id.
pub fn room_field(o: &Map<String, Value>) -> Result<String, Refusal> {
    match opt_str(o, "room")? {
        Some(r) if crate::valid_id(r) => Ok(r.to_owned()),
        Some(_) => Err(Refusal::bad("room must be 1-64 chars of A-Z a-z 0-9 _ . -")),
        None => Err(Refusal::bad("room is required")),
    }
}

/// Reads the required target `user` of a room request.
pub fn user_field(o: &Map<String, Value>) -> Result<String, Refusal> {
    match opt_str(o, "user")? {
        Some(u) if crate::valid_id(u) => Ok(u.to_owned()),
        _ => Err(Refusal::bad("user is required (a user id)")),
    }
}

/// A msg_id: 1-64 printable ASCII chars.
pub fn valid_msg_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}
