//! What rumqttd 0.20 itself keeps resident per connection, with nothing of
//! chatmq's in the process but its allocator and router configuration.
//!
//! Builds N router links the way `chatmq` does for N idle users: each link
//! subscribes at QoS 1 to R of 100 shared filters (its rooms' events; R = 5
//! by default) in one SUBSCRIBE, and its SUBACK is read, as our session
//! task reads it. (A user's reply topic and inbox are not router filters:
//! `broker::direct`.) Then prints the process's
//! resident memory per link. `chatmq-bench connections` measures the whole
//! server the same way; the difference between the two is chatmq's own
//! per-connection cost.
//!
//! ```sh
//! cargo run --release --example link_memory -- 10000 5
//! ```

use rumqttd::local::LinkBuilder;
use rumqttd::protocol::{Filter, Packet, QoS, RetainForwardRule, Subscribe};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: pagealloc::PageAlloc = pagealloc::PageAlloc;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<(), String> {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a.parse().map_err(|e| format!("links: {e}"))?,
        None => 10_000,
    };
    let rooms: usize = match std::env::args().nth(2) {
        Some(a) => a.parse().map_err(|e| format!("rooms per link: {e}"))?,
        None => 5,
    };
    let settings = chatmq::settings::load(&[], std::iter::empty())?;
    let mut cfg = settings.broker;
    cfg.limits.max_connections = cfg.limits.max_connections.max(n + 16);
    let router_tx = rumqttd::Router::new(0, broker::router_config(&cfg)).spawn();
    std::thread::sleep(Duration::from_millis(200));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| e.to_string())?;
    let before = rss_kib();
    let t0 = Instant::now();
    let mut links = Vec::with_capacity(n);
    for i in 0..n {
        let (mut tx, mut rx, _) = LinkBuilder::new(&format!("user-{i}"), router_tx.clone())
            .clean_session(true)
            .build()
            .map_err(|e| format!("link {i}: {e}"))?;
        // one SUBSCRIBE with its rooms at QoS 1, as a user's session sends
        let filter = |path: String| Filter {
            path,
            qos: QoS::AtLeastOnce,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::Never,
        };
        let sub = Subscribe {
            pkid: 1,
            filters: (0..rooms)
                .map(|k| {
                    filter(format!(
                        "{}/rooms/room-{}/events",
                        cfg.prefix,
                        (i + k) % 100
                    ))
                })
                .collect(),
        };
        rt.block_on(tx.send(Packet::Subscribe(sub, None)))
            .map_err(|e| format!("subscribe {i}: {e}"))?;
        // its SUBACK, read as our session task reads it
        match rx.recv_deadline(Instant::now() + Duration::from_secs(10)) {
            Ok(Some(rumqttd::Notification::DeviceAck(_))) => {}
            other => return Err(format!("link {i}: no SUBACK: {other:?}")),
        }
        links.push((tx, rx));
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_kib();
    println!(
        "rumqttd alone: {n} links with {rooms} room filters each in {:.1} s, RSS {} -> {} KiB: {:.1} KiB per link",
        t0.elapsed().as_secs_f64(),
        before,
        after,
        after.saturating_sub(before) as f64 / n as f64
    );
    drop(links);
    Ok(())
}
