//! The chat service's side of the wire contract: limits, refusals, and
//! reading and writing the payloads typed in `schema` (replies, request
//! parameters with errors that name the field).

use schema::{ErrorBody, RawValue, Reply};
use serde::{Deserialize, Serialize};

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

/// The stable error codes of PROTOCOL.md (typed in `schema`).
pub use schema::Code;

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

/// Serializes a request's `result`; it goes into its reply as it is.
pub fn result<T: Serialize>(v: &T) -> Result<Box<RawValue>, Refusal> {
    serde_json::value::to_raw_value(v).map_err(|e| {
        tracing::error!(error = %e, "a result does not serialize");
        Refusal::new(Code::Unavailable, "internal error, retry later")
    })
}

/// `{"corr":..,"ok":true,"result":..}`, `corr` as the request wrote it.
pub fn ok_reply(corr: Option<&RawValue>, result: &RawValue) -> Vec<u8> {
    // a raw value and a corr that parsed as one: serializing cannot fail
    serde_json::to_vec(&Reply::ok(corr, result)).unwrap_or_default()
}

/// `{"corr":..,"ok":false,"error":{"code":..,"message":..}}`
pub fn err_reply(corr: Option<&RawValue>, r: &Refusal) -> Vec<u8> {
    let error = ErrorBody {
        code: r.code,
        message: r.message.clone(),
    };
    // strings and a corr that parsed as one: serializing cannot fail
    serde_json::to_vec(&Reply::<()>::err(corr, error)).unwrap_or_default()
}

/// Reads a request's or a send's parameters. A field of the wrong type is a
/// `bad_request` that names it: `limit: invalid type: string "x", expected
/// u64`. The payload is a JSON object already (its envelope was read).
pub fn params<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, Refusal> {
    let de = &mut serde_json::Deserializer::from_slice(payload);
    serde_path_to_error::deserialize(de).map_err(|e| Refusal::bad(field_error(&e)))
}

/// `path: what is wrong`, without serde_json's position suffix, the path
/// cut at 128 bytes (a `sync` room id is the client's).
fn field_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let inner = e.inner();
    let text = inner.to_string();
    let position = format!(" at line {} column {}", inner.line(), inner.column());
    let what = text.strip_suffix(&position).unwrap_or(&text);
    let mut path = e.path().to_string();
    if path == "." {
        return what.to_owned();
    }
    if path.len() > 128 {
        let mut cut = 128;
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        path.truncate(cut);
        path.push_str("...");
    }
    format!("{path}: {what}")
}

/// A required room id.
pub fn required_room(room: Option<String>) -> Result<String, Refusal> {
    match room {
        Some(r) if crate::valid_id(&r) => Ok(r),
        Some(_) => Err(Refusal::bad("room must be 1-64 chars of A-Z a-z 0-9 _ . -")),
        None => Err(Refusal::bad("room is required")),
    }
}

/// The required target `user` of a room request.
pub fn required_user(user: Option<String>) -> Result<String, Refusal> {
    match user {
        Some(u) if crate::valid_id(&u) => Ok(u),
        _ => Err(Refusal::bad("user is required (a user id)")),
    }
}

/// A msg_id: 1-64 printable ASCII chars.
pub fn valid_msg_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}
