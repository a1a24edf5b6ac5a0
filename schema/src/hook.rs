//! `{prefix}/hooks/access`: a membership or channel change, published by
//! the chat service (producer: `chat_bridge::chat`) and applied by a broker
//! run apart from it (consumer: `broker`'s internal link), whose topic
//! authorizer needs room membership.

use serde::{Deserialize, Serialize};

/// `{"room":..,"user":..,"joined":bool}` or `{"room":..,"open":bool}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AccessHook {
    /// `user` joined `room` (`joined: true`) or no longer reads it.
    Member {
        room: String,
        user: String,
        joined: bool,
    },
    /// `room` became (or stopped being) an open channel anyone may read.
    Open { room: String, open: bool },
}

impl AccessHook {
    /// The payload to publish.
    pub fn to_vec(&self) -> Vec<u8> {
        // strings and booleans only: serializing cannot fail
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The room it is about.
    pub fn room(&self) -> &str {
        match self {
            AccessHook::Member { room, .. } | AccessHook::Open { room, .. } => room,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_round_trip() -> Result<(), serde_json::Error> {
        for (hook, json) in [
            (
                AccessHook::Member {
                    room: "r1".into(),
                    user: "bob".into(),
                    joined: true,
                },
                r#"{"room":"r1","user":"bob","joined":true}"#,
            ),
            (
                AccessHook::Open {
                    room: "r1".into(),
                    open: true,
                },
                r#"{"room":"r1","open":true}"#,
            ),
        ] {
            assert_eq!(String::from_utf8_lossy(&hook.to_vec()), json);
            assert_eq!(serde_json::from_str::<AccessHook>(json)?, hook);
            assert_eq!(hook.room(), "r1");
        }
        // what earlier versions published (keys in name order) still reads
        let old: AccessHook = serde_json::from_str(r#"{"joined":false,"room":"r","user":"u"}"#)?;
        assert!(matches!(old, AccessHook::Member { joined: false, .. }));
        for bad in [
            r#"{"room":"r1"}"#,
            r#"{"room":"r1","user":"bob"}"#,
            r#"{"room":5,"open":true}"#,
            r#"{"room":"r1","open":"yes"}"#,
            "[]",
        ] {
            assert!(serde_json::from_str::<AccessHook>(bad).is_err(), "{bad}");
        }
        Ok(())
    }
}
