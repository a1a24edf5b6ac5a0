//! # The broker: the MQTT front of the chat server
//!
//! rumqttd 0.20's router does pub/sub, sessions and QoS; everything between
//! the socket and the router is ours (see ARCHITECTURE.md for why). This
//! crate knows nothing of chat storage: a chat service reaches it as an MQTT
//! client, or in the same process through a [`link`].
//!
//! # Layout
//!
//! Modules import each other without cycles (`tests/layers.rs` checks it);
//! only the API modules are `pub`. Unit tests of a module `x` with many
//! live in `x/tests.rs`.
//!
//! | concern | file |
//! |---|---|
//! | start, listeners, accept loops, drain, stop | [`server`] |
//! | one task per client: handshake, CONNECT, login, client-id claim | `connection/mod.rs` |
//! | the authorized session: the socket <-> router loop, ACL on each packet | `connection/session.rs` |
//! | a connection's buffers, framing, writes per protocol level | `connection/conn.rs` |
//! | a trusted in-process service's router link | [`link`] |
//! | the broker's own router link (presence, wills, access and drain hooks) | `internal.rs` |
//! | TLS and JWT key files read again when they change | `reload.rs` |
//! | per-process state every connection shares | `shared.rs` |
//! | rumqttd's router, links to it, its configuration | `router.rs` |
//! | TCP, TLS and WebSocket byte streams, handshakes with a timeout | [`transport`] |
//! | framing in front of rumqttd's v4/v5 codecs | [`codec`] |
//! | a PUBLISH's QoS and RETAIN carried through the router (MQTT 5 delivery rules) | `marks.rs` |
//! | topic rules and the membership view they read; rooms remembered missing | [`acl`], `acl/misses.rs` |
//! | rate limits: connects per address, publishes and room loads per connection | `rate.rs` |
//! | static users, service accounts, JWT; argon2id and the verification cache | [`auth`], `auth/password.rs` |
//! | client id -> user binding, per-user counts, session takeover | [`registry`] |
//! | retain flags stripped in the chat namespace, bounded per user | [`retain`] |
//! | Prometheus meters, rumqttd's warnings as meters | [`metrics`] |
//! | `/metrics`, `/healthz`, `/readyz` | [`http`] |
//! | the `[broker]` settings | [`config`] |
//! | id syntax | [`names`] |

pub mod acl;
pub mod auth;
pub mod codec;
pub mod config;
mod connection;
mod direct;
pub mod http;
mod internal;
pub mod link;
mod marks;
pub mod metrics;
mod names;
mod presence;
mod publisher;
mod rate;
mod registry;
mod reload;
mod retain;
mod router;
pub mod server;
mod shared;
mod transport;

pub use router::router_config;
pub use server::{Broker, Listeners};
