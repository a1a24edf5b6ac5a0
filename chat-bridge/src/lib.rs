//! # The chat bridge: the only writer of room streams
//!
//! # Layout
//!
//! | concern | file |
//! |---|---|
//! | the MQTT client of the broker (split mode), batches, acks after durable | `src/bridge.rs` ([`bridge`]) |
//! | the `[bridge]` limits from the settings | `src/bridge/limits.rs` |
//! | dispatch of sends and requests, reply routing, the payload envelope | `src/chat/mod.rs` ([`chat`]) |
//! | sends: validation, membership, rate limit, append | `src/chat/send.rs` |
//! | the target of an edit, delete or reaction | `src/chat/target.rs` |
//! | `history`, `sync`, `read` / `delivered` markers | `src/chat/read.rs` |
//! | `rooms.list` and `sync`'s `joined` pages | `src/chat/page.rs` |
//! | `rooms.create` | `src/chat/create.rs` |
//! | `rooms.join` / `leave` / `invite` / `kick` / `ban` / `mute` / `role` / `members`, membership events, `hooks/access` | `src/chat/rooms.rs` |
//! | direct rooms (ids, the pair) | `src/chat/direct.rs` |
//! | limits, refusals, reading parameters (errors that name the field), writing replies | `src/wire.rs` ([`wire`]) |
//! | the payload types themselves (requests, replies, events, hooks) | the `schema` crate |
//! | Prometheus meters of the bridge and the store | `src/metrics.rs` ([`metrics`]) |
//! | the [`store::Store`] trait, stored event bytes and tombstones | `src/store/mod.rs`, `src/store/payload.rs` |
//! | the embedded fjall store; ScyllaDB; the conformance suite | `src/store/embedded.rs` + `src/store/embedded/`, `src/store/scylla/`, `src/store/conformance.rs` |
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
