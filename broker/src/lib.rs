//! # The broker: the MQTT front of the chat server
//!
//! rumqttd 0.20's router does pub/sub, sessions and QoS; everything between
//! the socket and the router is ours (see ARCHITECTURE.md for why).
//!
//! # Layout
//! - [`settings`]: every section, layered defaults/files/env; [`config`]: the `[broker]` section.
//! - [`server`]: starts the router and the listeners; [`server::Shared`] is the per-process state.
//! - [`transport`]: TCP, TLS and WebSocket byte streams, handshakes with a timeout.
//! - [`connection`]: one task per client: CONNECT, auth, the socket <-> router loop.
//! - [`codec`]: framing in front of rumqttd's v4/v5 codecs.
//! - [`auth`]: static users (argon2id hashes or plain), service accounts, JWT; `reload`: TLS and JWT key files read again when they change.
//! - [`acl`]: the topic rules and the membership view they read.
//! - [`metrics`]: Prometheus meters; [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`local_bridge`]: the all-in-one process's bridge on a router link (no MQTT hop).
//! - [`registry`]: client id -> user binding, per-user counts, session takeover.
//! - [`retain`]: retain flags stripped in the chat namespace, bounded per user on open topics.
//! - [`names`]: id syntax.

pub mod acl;
pub mod auth;
pub mod codec;
pub mod config;
mod connection;
pub mod http;
pub mod local_bridge;
pub mod metrics;
pub mod names;
pub mod registry;
mod reload;
pub mod retain;
pub mod server;
pub mod settings;
pub mod transport;

pub use server::{Broker, Listeners};
