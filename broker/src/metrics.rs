//! Prometheus meters of the broker, registered in the process's one
//! registry, and the tap that turns rumqttd's own log events into meters.
//!
//! rumqttd 0.20 pushes its meters and alerts only from a timer that its own
//! `Broker::start` runs; we drive its `Router` directly, and the event that
//! asks the router for them is not public. So the router's meters are
//! counted at our layer instead (connections, subscriptions, publishes in and
//! out), and its warnings are read from its tracing events: a "read cursor
//! jumped" warning is a subscriber losing messages, counted in
//! `chatmq_rumqttd_cursor_jumps_total` and logged again at ERROR.
//!
//! No room or user ids in labels: every label value comes from a fixed set.

use prometheus::core::Collector;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::Arc;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Registers a meter made from a fixed name and help text; a bad definition
/// is a bug the metrics test catches. A name registered twice only loses
/// that meter's export.
fn meter<C: Collector + Clone + 'static>(r: &Registry, made: prometheus::Result<C>) -> C {
    let c = made.expect("fixed metric definition");
    if let Err(e) = r.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "broker metric not registered");
    }
    c
}

/// A registered counter.
fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    meter(r, IntCounter::new(name, help))
}

/// A registered counter with labels.
fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    meter(r, IntCounterVec::new(Opts::new(name, help), labels))
}

/// A registered gauge.
fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    meter(r, IntGauge::new(name, help))
}

/// The broker's meters.
pub struct BrokerMetrics {
    /// Connections past CONNACK, now.
    pub connections: IntGauge,
    /// Connections with a router link of their own (a chat client's
    /// connection has none: `crate::publisher`).
    pub router_links: IntGauge,
    /// Persistent sessions kept, connected or not.
    pub sessions_kept: IntGauge,
    /// Persistent sessions dropped when their Session Expiry Interval ran out.
    pub sessions_expired: IntCounter,
    /// Sockets accepted, by listener (`tcp`, `tls`, `ws`, `wss`).
    pub opened: IntCounterVec,
    /// Connections refused before or at CONNECT, by reason.
    pub refused: IntCounterVec,
    /// Failed logins, by reason (`bad_credentials`, `expired`, ...).
    pub auth_failures: IntCounterVec,
    /// Connections closed because their credential (a JWT) expired.
    pub credentials_expired: IntCounter,
    /// TLS certificate or JWT key files read again after a change, by
    /// `what` (`tls`, `jwt`) and `result` (`ok`, `refused`).
    pub secret_reloads: IntCounterVec,
    /// Refused PUBLISH/SUBSCRIBE/delivery/will, by action and ACL rule.
    pub acl_denials: IntCounterVec,
    /// PUBLISH packets accepted from clients, and their payload bytes.
    pub publishes_in: IntCounter,
    pub bytes_in: IntCounter,
    /// PUBLISH packets delivered to clients, and their payload bytes.
    pub publishes_out: IntCounter,
    pub bytes_out: IntCounter,
    /// Subscription filters granted.
    pub subscriptions: IntCounter,
    /// Reply-topic and inbox publishes handed to sessions without the
    /// router (`broker::direct`), and those dropped because a session's
    /// queue was full.
    pub direct_deliveries: IntCounter,
    pub direct_dropped: IntCounter,
    /// Users' publishes over `limits.publishes_per_sec` that waited for
    /// their turn (the connection unread meanwhile).
    pub publishes_slowed: IntCounter,
    /// rumqttd cursor jumps: a subscriber fell behind its log and lost messages.
    pub cursor_jumps: IntCounter,
    /// rumqttd log events at WARN or ERROR, by level.
    pub rumqttd_events: IntCounterVec,
    /// Retain flags stripped from users' publishes in the chat namespace.
    pub retain_stripped: IntCounter,
    /// Retained publishes on open topics refused: the user's bound.
    pub retained_refused: IntCounter,
    /// Retained messages users hold on open topics, now.
    pub retained_messages: IntGauge,
    /// Store reads of a room's access a client's packet caused, by result
    /// (`found`, `missing`, `failed`).
    pub room_loads: IntCounterVec,
    /// Rooms named by a client that were answered from the cache of missing rooms.
    pub room_misses_cached: IntCounter,
    /// Store reads not made: the connection's load budget was spent.
    pub room_loads_throttled: IntCounter,
}

impl BrokerMetrics {
    /// Creates the meters and registers them in `r`.
    pub fn new(r: &Registry) -> Arc<Self> {
        let m = Arc::new(BrokerMetrics {
            connections: gauge(r, "chatmq_connections", "Connections past CONNACK"),
            router_links: gauge(
                r,
                "chatmq_router_links",
                "Connections with a router link of their own",
            ),
            sessions_kept: gauge(
                r,
                "chatmq_sessions_kept",
                "Persistent sessions kept, connected or not",
            ),
            sessions_expired: counter(
                r,
                "chatmq_sessions_expired_total",
                "Persistent sessions dropped when their Session Expiry Interval ran out",
            ),
            opened: counter_vec(
                r,
                "chatmq_connections_opened_total",
                "Sockets accepted, by listener",
                &["listener"],
            ),
            refused: counter_vec(
                r,
                "chatmq_connections_refused_total",
                "Connections refused before or at CONNECT, by reason",
                &["reason"],
            ),
            auth_failures: counter_vec(
                r,
                "chatmq_auth_failures_total",
                "Failed logins, by reason",
                &["reason"],
            ),
            credentials_expired: counter(
                r,
                "chatmq_credentials_expired_total",
                "Connections closed because their JWT expired",
            ),
            secret_reloads: counter_vec(
                r,
                "chatmq_secret_reloads_total",
                "Changed TLS certificate or JWT key files, by what and whether they were taken",
                &["what", "result"],
            ),
            acl_denials: counter_vec(
                r,
                "chatmq_acl_denials_total",
                "Refused publishes, subscriptions, deliveries and wills, by ACL rule",
                &["action", "rule"],
            ),
            publishes_in: counter(
                r,
                "chatmq_publishes_in_total",
                "PUBLISH packets accepted from clients",
            ),
            bytes_in: counter(
                r,
                "chatmq_publish_bytes_in_total",
                "Payload bytes of PUBLISH packets accepted from clients",
            ),
            publishes_out: counter(
                r,
                "chatmq_publishes_out_total",
                "PUBLISH packets delivered to clients",
            ),
            bytes_out: counter(
                r,
                "chatmq_publish_bytes_out_total",
                "Payload bytes of PUBLISH packets delivered to clients",
            ),
            direct_deliveries: counter(
                r,
                "chatmq_direct_deliveries_total",
                "Reply-topic and inbox publishes handed to sessions by the broker (not through router filters)",
            ),
            direct_dropped: counter(
                r,
                "chatmq_direct_dropped_total",
                "Reply-topic and inbox publishes dropped because the session's queue was full",
            ),
            publishes_slowed: counter(
                r,
                "chatmq_publishes_slowed_total",
                "Users' publishes over limits.publishes_per_sec that waited for their turn",
            ),
            subscriptions: counter(
                r,
                "chatmq_subscriptions_total",
                "Subscription filters granted",
            ),
            cursor_jumps: counter(
                r,
                "chatmq_rumqttd_cursor_jumps_total",
                "rumqttd read-cursor jumps: a subscriber lost messages",
            ),
            rumqttd_events: counter_vec(
                r,
                "chatmq_rumqttd_log_events_total",
                "rumqttd warnings and errors, by level",
                &["level"],
            ),
            retain_stripped: counter(
                r,
                "chatmq_retain_stripped_total",
                "Retain flags stripped from users' publishes in the chat namespace",
            ),
            retained_refused: counter(
                r,
                "chatmq_retained_refused_total",
                "Retained publishes on open topics refused by the per-user bound",
            ),
            retained_messages: gauge(
                r,
                "chatmq_retained_messages",
                "Retained messages users hold on open topics",
            ),
            room_loads: counter_vec(
                r,
                "chatmq_room_loads_total",
                "Store reads of a room's members caused by clients naming the room, by result",
                &["result"],
            ),
            room_misses_cached: counter(
                r,
                "chatmq_room_misses_cached_total",
                "Rooms named by clients answered from the cache of missing rooms",
            ),
            room_loads_throttled: counter(
                r,
                "chatmq_room_loads_throttled_total",
                "Store reads refused by a connection's load budget (the room counted as unknown)",
            ),
        });
        for result in ["found", "missing", "failed"] {
            m.room_loads.with_label_values(&[result]);
        }
        m
    }

    /// Meters registered nowhere: for tests and embedders that do not export.
    pub fn unregistered() -> Arc<Self> {
        Self::new(&Registry::new())
    }

    /// A tracing layer feeding `cursor_jumps` and `rumqttd_events` from
    /// rumqttd's log events. Add it to the subscriber with no filter of its
    /// own other than rumqttd's target at WARN.
    pub fn rumqttd_tap(self: &Arc<Self>) -> RumqttdTap {
        RumqttdTap { m: self.clone() }
    }
}

/// See [`BrokerMetrics::rumqttd_tap`].
pub struct RumqttdTap {
    m: Arc<BrokerMetrics>,
}

/// Finds rumqttd's cursor-jump warning among an event's fields.
#[derive(Default)]
struct JumpFinder {
    jump: bool,
    text: String,
}

impl Visit for JumpFinder {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.check(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.check(field, &format!("{value:?}"));
    }
}

impl JumpFinder {
    fn check(&mut self, field: &Field, value: &str) {
        if field.name() == "request_cursor" || value.contains("cursor start jumped") {
            self.jump = true;
        }
        if matches!(field.name(), "error" | "message") && self.text.len() < 512 {
            self.text.push_str(value);
        }
    }
}

impl<S: Subscriber> Layer<S> for RumqttdTap {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !meta.target().starts_with("rumqttd") {
            return;
        }
        let level = *meta.level();
        if level > tracing::Level::WARN {
            return;
        }
        let label = if level == tracing::Level::ERROR {
            "error"
        } else {
            "warn"
        };
        self.m.rumqttd_events.with_label_values(&[label]).inc();
        let mut f = JumpFinder::default();
        event.record(&mut f);
        if f.jump {
            self.m.cursor_jumps.inc();
            tracing::error!(target: "chatmq::alert", detail = %f.text, "rumqttd cursor jump: a subscriber lost messages");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn every_meter_registers_once() {
        let r = Registry::new();
        let m = BrokerMetrics::new(&r);
        m.opened.with_label_values(&["tcp"]).inc();
        m.refused.with_label_values(&["bad_credentials"]).inc();
        m.auth_failures
            .with_label_values(&["bad_credentials"])
            .inc();
        m.acl_denials
            .with_label_values(&["publish", "not_member"])
            .inc();
        m.rumqttd_events.with_label_values(&["warn"]).inc();
        m.room_loads.with_label_values(&["missing"]).inc();
        m.secret_reloads.with_label_values(&["tls", "ok"]).inc();
        let names: Vec<String> = r.gather().iter().map(|f| f.name().to_owned()).collect();
        assert_eq!(names.len(), 26, "{names:?}");
    }

    #[test]
    fn the_tap_counts_rumqttd_cursor_jumps_only() {
        let m = BrokerMetrics::unregistered();
        let sub = tracing_subscriber::registry().with(m.rumqttd_tap());
        tracing::subscriber::with_default(sub, || {
            // the shape of rumqttd 0.20's warning (router/routing.rs)
            tracing::warn!(target: "rumqttd::router::routing", request_cursor = ?(0u64, 5u64), start_cursor = ?(1u64, 0u64), error = "Read cursor start jumped from (0, 5) to (1, 0) on chat/rooms/+/send/+");
            tracing::warn!(target: "rumqttd::router::routing", "some other warning");
            tracing::error!(target: "rumqttd::router::routing", "an error");
            tracing::info!(target: "rumqttd::router::routing", "info is not counted");
            tracing::warn!(target: "chatmq", request_cursor = 1, "not rumqttd");
        });
        assert_eq!(m.cursor_jumps.get(), 1);
        assert_eq!(m.rumqttd_events.with_label_values(&["warn"]).get(), 2);
        assert_eq!(m.rumqttd_events.with_label_values(&["error"]).get(), 1);
    }
}
