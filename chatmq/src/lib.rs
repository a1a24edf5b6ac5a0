//! # chatmq: the chat server, assembled
//!
//! Two libraries that do not know each other, wired together here:
//! [`broker`] (the MQTT front on rumqttd) and [`chat_bridge`] (rooms,
//! sequencing, the stores). This crate holds what a process needs around
//! them: the settings of every section, the role a process plays, the
//! in-process link between broker and bridge, health wiring and the order
//! of a graceful stop.
//!
//! Start the whole server in-process (tests and embedders):
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let settings = chatmq::settings::load(&[], std::env::vars()).map_err(anyhow::Error::msg)?;
//! let listeners = chatmq::Listeners::bind(&settings).await?;
//! chatmq::run(settings, listeners, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! # Layout
//!
//! | concern | file |
//! |---|---|
//! | `run`, `Server::start`/`stop`, listeners, health probes | [`server`] |
//! | every section's settings, layered defaults/files/env; `server.role` | [`settings`] (`chatmq.toml` = the defaults) |
//! | the all-in-one bridge on a broker service link | `in_process.rs` |
//! | opening the store, `migrate`, the broker's room loader | `store.rs` |
//! | the command line and logging | [`cli`] |
//! | the allocator's gauges | `alloc.rs` |

pub mod admin;
mod alloc;
pub mod cli;
pub mod demo;
mod in_process;
pub mod moderation;
pub mod server;
pub mod settings;
mod store;

pub use server::{run, Listeners, Meters, Server};
pub use settings::{Role, Settings};
pub use store::migrate;
