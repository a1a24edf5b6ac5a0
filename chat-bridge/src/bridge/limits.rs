//! The `[bridge]` limits: from the settings to [`wire::Limits`], and their
//! validation at startup (an error names the key).

use super::BridgeConfig;
use crate::wire;

/// Highest `payload_max_bytes`: a stored event is at most about its payload,
/// and every event must fit one `history` reply ([`wire::REPLY_EVENTS_MAX`]).
pub const PAYLOAD_MAX_LIMIT: usize = 256 * 1024;
/// Bytes of an MQTT PUBLISH besides its payload that the broker's packet
/// limit must leave room for (fixed header, topic, packet id, MQTT 5
/// properties such as the response topic).
pub const PACKET_OVERHEAD: usize = 1024;

impl BridgeConfig {
    /// The size and page limits these settings give.
    pub fn limits(&self) -> wire::Limits {
        wire::Limits {
            payload_max: self.payload_max_bytes,
            body_max: self.body_max_bytes,
            meta_max: self.meta_max_bytes,
            history_default: self.history_limit_default,
            history_max: self.history_limit_max,
        }
    }

    /// Checks every limit; the error names the key (`bridge.<key>`).
    pub fn validate(&self) -> Result<(), String> {
        fn within<T: PartialOrd + std::fmt::Display>(
            key: &str,
            v: T,
            lo: T,
            hi: T,
            why: &str,
        ) -> Result<(), String> {
            if v >= lo && v <= hi {
                Ok(())
            } else {
                Err(format!(
                    "key `bridge.{key}`: {v} is not within {lo}..={hi}{why}"
                ))
            }
        }
        let payload = self.payload_max_bytes;
        within("batch", self.batch, 1, 65_536, "")?;
        within("sends_per_sec", self.sends_per_sec, 0.001, 1e6, "")?;
        within("sends_burst", self.sends_burst, 1.0, 1e6, "")?;
        within(
            "payload_max_bytes",
            payload,
            256,
            PAYLOAD_MAX_LIMIT,
            " (every event must fit one history reply)",
        )?;
        within(
            "body_max_bytes",
            self.body_max_bytes,
            1,
            payload,
            " (at most bridge.payload_max_bytes)",
        )?;
        within(
            "meta_max_bytes",
            self.meta_max_bytes,
            0,
            payload,
            " (at most bridge.payload_max_bytes)",
        )?;
        within(
            "history_limit_max",
            self.history_limit_max,
            1,
            crate::store::PAGE_MAX,
            " (the store's largest page)",
        )?;
        within(
            "history_limit_default",
            self.history_limit_default,
            1,
            self.history_limit_max,
            " (at most bridge.history_limit_max)",
        )
    }
}
