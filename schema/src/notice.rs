//! What the chat service publishes besides events and replies: notices on
//! `{prefix}/users/{user}/inbox` and marker changes on
//! `{prefix}/rooms/{room}/receipts`.

use crate::code::Code;
use serde::{Deserialize, Serialize};

/// A message in a user's inbox, by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Inbox {
    /// A refused send that had no reply topic; `msg_id` as the send gave
    /// it (`null` when it had none).
    Error {
        room: String,
        msg_id: Option<String>,
        code: Code,
        message: String,
    },
    /// `by` invited the user to `room`.
    Invited { room: String, by: String },
    /// `by` removed the user from `room`.
    Kick { room: String, by: String },
    /// `by` banned the user from `room`.
    Ban { room: String, by: String },
    /// `by` lifted the user's ban from `room`.
    Unban { room: String, by: String },
    /// To a room's owners and admins: `by` reported the message `seq` of
    /// `room`, written by `author`, for `reason` (if given).
    Report {
        room: String,
        seq: u64,
        author: String,
        by: String,
        reason: Option<String>,
    },
}

/// `{"room","user","read","delivered","ts"}`: a member's markers after one
/// of them moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub room: String,
    pub user: String,
    pub read: u64,
    pub delivered: u64,
    pub ts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() -> Result<(), serde_json::Error> {
        let notices = [
            Inbox::Error {
                room: "r1".into(),
                msg_id: None,
                code: Code::NotMember,
                message: "you are not a member of r1".into(),
            },
            Inbox::Invited {
                room: "r1".into(),
                by: "alice".into(),
            },
            Inbox::Kick {
                room: "r1".into(),
                by: "alice".into(),
            },
            Inbox::Ban {
                room: "r1".into(),
                by: "alice".into(),
            },
            Inbox::Unban {
                room: "r1".into(),
                by: "alice".into(),
            },
            Inbox::Report {
                room: "r1".into(),
                seq: 7,
                author: "mallory".into(),
                by: "bob".into(),
                reason: Some("spam".into()),
            },
        ];
        for n in notices {
            let s = serde_json::to_string(&n)?;
            assert_eq!(serde_json::from_str::<Inbox>(&s)?, n, "{s}");
        }
        let e = serde_json::to_string(&Inbox::Error {
            room: "r1".into(),
            msg_id: None,
            code: Code::Muted,
            message: "m".into(),
        })?;
        assert_eq!(
            e,
            r#"{"type":"error","room":"r1","msg_id":null,"code":"muted","message":"m"}"#
        );
        let r = Receipt {
            room: "r1".into(),
            user: "bob".into(),
            read: 3,
            delivered: 4,
            ts: 5,
        };
        let s = serde_json::to_string(&r)?;
        assert_eq!(serde_json::from_str::<Receipt>(&s)?, r);
        Ok(())
    }
}
