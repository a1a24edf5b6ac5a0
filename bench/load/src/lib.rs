//! # chatmq-bench: how fast, next to the broker alone and to Mosquitto
//!
//! `chatmq-bench all` starts each server itself (a release `chatmq` with a
//! generated config, Debian's `mosquitto` when installed), drives it over
//! loopback MQTT with rumqttc, and writes `bench/results/latest.{json,md}`.
//!
//! # Layout
//! - [`run`]: the settings and the order of the scenarios; one [`report::Report`].
//! - [`server`]: starting `chatmq` / `mosquitto`, CPU and RSS from `/proc`.
//! - [`client`]: one MQTT connection driven inline (connect, subscribe, request).
//! - [`setup`]: the load's users, rooms and memberships (over MQTT).
//! - [`load`]: N publishers / M subscribers, closed loop or fixed rate, raw or chat path.
//! - [`history`]: the pre-filled store, `history` round trips, `sync` catch-up.
//! - [`conns`]: idle connections (RSS per connection) and the reconnect storm.
//! - [`hist`]: the latency histogram; [`report`] / [`summary`]: results, targets, Markdown.

pub mod client;
pub mod conns;
pub mod hist;
pub mod history;
pub mod load;
pub mod report;
pub mod run;
pub mod server;
pub mod setup;
pub mod summary;

use anyhow::Result;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Instant;

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Microseconds on this process's monotonic clock (publisher and subscriber
/// live in the same process, so their timestamps compare).
pub fn now_us() -> u64 {
    instant_us(Instant::now())
}

/// [`now_us`] of a given instant.
pub fn instant_us(t: Instant) -> u64 {
    t.saturating_duration_since(base()).as_micros() as u64
}

/// Runs every future as its own task; all results in order, or the first error.
pub async fn spawn_all<T, F>(futs: impl IntoIterator<Item = F>) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    let tasks: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}
