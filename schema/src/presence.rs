//! `{prefix}/presence/{user}`: retained, published by the broker when a
//! user's first connection comes up and their last one goes (producer:
//! `broker`'s shared state); read by clients who share a room with the user.

use serde::{Deserialize, Serialize};

/// `{"online":bool,"ts":ms}`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub online: bool,
    /// Server time of the change, ms since the Unix epoch.
    pub ts: u64,
}

impl Presence {
    /// The payload to publish.
    pub fn to_vec(&self) -> Vec<u8> {
        // a boolean and a number: serializing cannot fail
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() -> Result<(), serde_json::Error> {
        let p = Presence {
            online: true,
            ts: 1_732_370_000_123,
        };
        let bytes = p.to_vec();
        assert_eq!(bytes, br#"{"online":true,"ts":1732370000123}"#);
        assert_eq!(serde_json::from_slice::<Presence>(&bytes)?, p);
        Ok(())
    }
}
