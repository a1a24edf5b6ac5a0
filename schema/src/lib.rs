//! # The wire contract, typed once
//!
//! One serde type per payload of PROTOCOL.md (topics, payloads, errors,
//! limits), shared by whoever produces it and whoever consumes it: the chat
//! service (`chat-bridge`), the broker (`broker`), tests and clients. Only
//! serde and serde_json: no runtime, no MQTT, no storage.
//!
//! # Layout
//!
//! | concern | file |
//! |---|---|
//! | error codes (`bad_request`, ...), the `error` object | `src/code.rs` ([`Code`], [`ErrorBody`]) |
//! | reply envelope `{"corr","ok","result"/"error"}` | `src/reply.rs` ([`Reply`]) |
//! | request and send parameters, the `reply`/`corr` envelope, typing | `src/request.rs` ([`request`]) |
//! | results of each request (`history`, `sync`, `rooms.*`, markers) | `src/result.rs` ([`result`]) |
//! | room events (stored, published, served) | `src/event.rs` ([`Event`], [`EventBody`], [`EventHead`]) |
//! | room kinds, roles, member states, room info | `src/room.rs` |
//! | `{prefix}/hooks/access` | `src/hook.rs` ([`AccessHook`]) |
//! | `{prefix}/presence/{user}` | `src/presence.rs` ([`Presence`]) |
//! | inbox notices, receipts | `src/notice.rs` ([`Inbox`], [`Receipt`]) |
//! | a cluster's internal topics, partitions | `src/cluster.rs` ([`cluster`]) |
//! | ScyllaDB migrations (CQL, compiled into `chatmq migrate`) | `cql/*.cql` |
//!
//! Who produces and consumes each is in `docs/architecture.md`, "The wire
//! contract is typed once".

pub mod cluster;
mod code;
mod event;
mod hook;
mod notice;
mod presence;
mod reply;
pub mod request;
pub mod result;
mod room;

pub use code::{Code, ErrorBody};
pub use event::{Event, EventBody, EventHead};
pub use hook::AccessHook;
pub use notice::{Inbox, Receipt};
pub use presence::Presence;
pub use reply::Reply;
pub use room::{MemberState, Role, RoomInfo, RoomKind};
/// Re-exported: a request's `corr` and stored events are carried as it.
pub use serde_json::value::RawValue;
