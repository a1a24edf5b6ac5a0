//! # The chat bridge: the only writer of room streams
//!
//! # Layout
//! - [`bridge`]: the MQTT client of the broker; batches, groups by room, acks after durable.
//! - [`chat`]: sends and requests (`history`, `sync`, `rooms.*`, markers) -> messages to publish.
//! - [`wire`]: error codes, reply shapes, limits.
//! - [`metrics`]: Prometheus meters of the bridge and the store.
//! - [`store`]: the [`store::Store`] trait, the embedded fjall store, the conformance suite.
//!
//! The path of one message: a client publishes to `chat/rooms/r1/send/alice`;
//! the broker checks alice may publish there and hands it to the router; the
//! bridge's session receives it ([`bridge`]), [`chat::Chat::handle`] validates it,
//! checks membership and rate, and calls [`store::Store::append`], which gives it
//! the next `seq` in a group commit; the bridge publishes the stored event on
//! `chat/rooms/r1/events`, then acks the send to the broker.

pub mod bridge;
pub mod chat;
pub mod metrics;
pub mod store;
pub mod wire;

/// A user id or room id: 1-64 chars of `A-Z a-z 0-9 _ . -`.
pub fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}
