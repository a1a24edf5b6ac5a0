//! The stable error codes of PROTOCOL.md ("Errors and limits") and the
//! `error` object of a refusal.

use serde::{Deserialize, Serialize};

/// The stable error codes of PROTOCOL.md, on the wire as snake_case strings
/// (`"bad_request"`, `"not_member"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
    /// Every code, in PROTOCOL.md's order.
    pub const ALL: [Code; 11] = [
        Code::BadRequest,
        Code::Unauthorized,
        Code::Forbidden,
        Code::NotMember,
        Code::Banned,
        Code::Muted,
        Code::RateLimited,
        Code::TooLarge,
        Code::NotFound,
        Code::Conflict,
        Code::Unavailable,
    ];

    /// The code as it is on the wire (and as a metrics label).
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

/// `{"code":..,"message":..}`: a refusal, in a reply's `error`, in a
/// `sync` entry of a room the user may no longer read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: Code,
    /// Safe to show the client: never internal details.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_their_snake_case_strings() -> Result<(), serde_json::Error> {
        for c in Code::ALL {
            let s = serde_json::to_string(&c)?;
            assert_eq!(s, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<Code>(&s)?, c);
        }
        assert!(serde_json::from_str::<Code>("\"BadRequest\"").is_err());
        Ok(())
    }
}
