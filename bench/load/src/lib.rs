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
use std::collections::HashMap;
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

/// `s` with each run of digits as one `#` and `{…}` span fields dropped, at most `max`
/// chars: messages that differ only in ids and numbers become one kind.
pub fn message_kind(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut depth = 0u32;
    for c in s.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            c if c.is_ascii_digit() => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            c => out.push(c),
        }
        if out.len() >= max {
            break;
        }
    }
    out
}

/// How often each kind occurs, most frequent first, at most `top` kinds.
pub fn top_kinds(kinds: impl IntoIterator<Item = String>, top: usize) -> Vec<(String, u64)> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for k in kinds {
        *counts.entry(k).or_default() += 1;
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(top);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_ignore_numbers_and_span_fields() {
        let k = |s| message_kind(s, 80);
        assert_eq!(
            k("ack{pkid=4}: out of order ack 4"),
            k("ack{pkid=17}: out of order ack 17")
        );
        let top = top_kinds(["a 1", "b", "a 2"].map(|s| message_kind(s, 80)), 5);
        assert_eq!(top, vec![("a #".to_string(), 2), ("b".to_string(), 1)]);
    }
}
