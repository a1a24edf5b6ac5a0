//! The hostile-client suite: a logged-in user, with real MQTT clients
//! (rumqttc, Python paho-mqtt), tries what is not theirs, and every refusal
//! of PROTOCOL.md; each test also checks that the server goes on serving
//! everyone else. One module per concern:
//!
//! - [`session`]: client ids and persistent sessions belong to their user.
//! - [`auth`]: expired tokens, password hashes, reloaded keys and certificates.
//! - [`publish`]: retained messages, typing, misses on unknown rooms.
//! - [`messages`]: edits, deletes and reactions of what is not one's own; event order; limits.
//! - [`rooms`]: direct rooms, half-created rooms, paged replies.
//! - [`refusals`]: every refusal code of PROTOCOL.md, each costing nothing else.

#[path = "hostile/auth.rs"]
mod auth;
#[path = "hostile/messages.rs"]
mod messages;
#[path = "hostile/publish.rs"]
mod publish;
#[path = "hostile/refusals.rs"]
mod refusals;
#[path = "hostile/rooms.rs"]
mod rooms;
#[path = "hostile/session.rs"]
mod session;
