//! Prometheus meters of the bridge and its store, registered in the
//! process's one registry. No room or user ids in labels: every label value
//! comes from a small fixed set (error codes, method names, store operations).

use crate::store::{
    Appended, MarkerKind, Markers, Member, NewEvent, Page, Range, RoomInfo, Store, StoreError,
    StoredEvent,
};
use async_trait::async_trait;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use std::sync::Arc;
use std::time::Instant;

/// Latency buckets, seconds: 50 µs .. 5 s.
const LATENCY: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];
/// Batch-size buckets, items.
const SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Request methods that get their own label value; anything else is `other`.
pub const METHODS: &[&str] = &[
    "history",
    "sync",
    "rooms.create",
    "rooms.join",
    "rooms.leave",
    "rooms.invite",
    "rooms.kick",
    "rooms.ban",
    "rooms.mute",
    "rooms.role",
    "rooms.list",
    "rooms.members",
    "read",
    "delivered",
    "thread",
    "users.block",
    "users.unblock",
    "users.blocks",
    "rooms.report",
    "hooks.read",
    "rooms.slow",
];

/// The bridge's meters.
pub struct BridgeMetrics {
    /// Messages taken from the broker, by kind (`send`, `request`, `other`).
    pub received: IntCounterVec,
    /// Messages the bridge published (events, replies, inbox notices).
    pub published: IntCounter,
    /// Taken from the broker and not yet acknowledged to it.
    pub backlog: IntGauge,
    /// Messages per batch taken from the broker.
    pub batch_size: Histogram,
    /// 1 while the bridge's MQTT session with the broker is up and subscribed.
    pub connected: IntGauge,
    /// A cluster's bridge: the brokers it knows (resolved from
    /// `[cluster] brokers`); `connected` counts those it is subscribed to.
    pub brokers: IntGauge,
    /// A cluster's bridge: publishes not handed to a broker because its
    /// connection was down or stalled (its clients catch up with `sync`).
    pub broker_publish_dropped: IntCounter,
    /// Refusals answered to clients, by PROTOCOL.md error code.
    pub errors: IntCounterVec,
    /// Request handling time by method (history, sync, rooms.*, markers).
    pub request_seconds: HistogramVec,
    /// Events newly written to the store (duplicates not counted).
    pub events_persisted: IntCounter,
    /// Idempotent retries answered with the stored event.
    pub duplicates: IntCounter,
    /// Time of one store write (an append or a group of appends).
    pub store_write_seconds: Histogram,
    /// Events per store write.
    pub store_write_batch: Histogram,
    /// Time of store reads, by operation.
    pub store_read_seconds: HistogramVec,
    /// Store calls that failed, by operation.
    pub store_errors: IntCounterVec,
    /// Events retention removed.
    pub retention_events: IntCounter,
    /// Idempotency keys the sweep forgot.
    pub retention_keys: IntCounter,
    /// Sends whose moderation verdict did not come in time.
    pub moderation_timeouts: IntCounter,
}

/// Registers `c` in `r` and returns it.
pub fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Registering the same name twice is a programming error caught by the
    // tests; at run time it only costs the duplicate meter its export.
    if let Err(e) = r.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "metric not registered");
    }
    c
}

/// A registered counter with labels.
pub fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
    )
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    reg(
        r,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
            .expect("valid metric definition"),
    )
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    reg(
        r,
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )
        .expect("valid metric definition"),
    )
}

/// A registered counter.
pub fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    reg(
        r,
        IntCounter::new(name, help).expect("valid metric definition"),
    )
}

/// A registered gauge.
pub fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    reg(
        r,
        IntGauge::new(name, help).expect("valid metric definition"),
    )
}

impl BridgeMetrics {
    /// Creates the meters and registers them in `r`.
    pub fn new(r: &Registry) -> Arc<Self> {
        Arc::new(BridgeMetrics {
            received: counter_vec(
                r,
                "chatmq_bridge_received_total",
                "Messages the bridge took from the broker, by kind",
                &["kind"],
            ),
            published: counter(
                r,
                "chatmq_bridge_published_total",
                "Messages the bridge published (events, replies, inbox notices)",
            ),
            backlog: gauge(
                r,
                "chatmq_bridge_backlog",
                "Messages taken from the broker and not yet acknowledged",
            ),
            batch_size: histogram(
                r,
                "chatmq_bridge_batch_size",
                "Messages handled per bridge batch",
                SIZES,
            ),
            connected: gauge(
                r,
                "chatmq_bridge_connected",
                "1 while the bridge is connected and subscribed to the broker (a cluster's bridge: the number of brokers)",
            ),
            brokers: gauge(
                r,
                "chatmq_bridge_brokers",
                "Brokers a cluster's bridge knows (connected ones: chatmq_bridge_connected)",
            ),
            broker_publish_dropped: counter(
                r,
                "chatmq_bridge_broker_publish_dropped_total",
                "Publishes a cluster's bridge could not hand to a broker (down or stalled)",
            ),
            errors: counter_vec(
                r,
                "chatmq_errors_total",
                "Refusals sent to clients, by error code",
                &["code"],
            ),
            request_seconds: histogram_vec(
                r,
                "chatmq_request_seconds",
                "Request handling time by method",
                &["method"],
                LATENCY,
            ),
            events_persisted: counter(
                r,
                "chatmq_events_persisted_total",
                "Events newly written to the store",
            ),
            duplicates: counter(
                r,
                "chatmq_duplicate_sends_total",
                "Retried sends answered with the already stored event",
            ),
            store_write_seconds: histogram(
                r,
                "chatmq_store_write_seconds",
                "Time of one store write (one append or one group of appends)",
                LATENCY,
            ),
            store_write_batch: histogram(
                r,
                "chatmq_store_write_batch_size",
                "Events per store write",
                SIZES,
            ),
            store_read_seconds: histogram_vec(
                r,
                "chatmq_store_read_seconds",
                "Time of store reads by operation",
                &["op"],
                LATENCY,
            ),
            store_errors: counter_vec(
                r,
                "chatmq_store_errors_total",
                "Store calls that failed, by operation",
                &["op"],
            ),
            retention_events: counter(
                r,
                "chatmq_retention_events_removed_total",
                "Events removed by retention ([bridge.retention])",
            ),
            retention_keys: counter(
                r,
                "chatmq_retention_keys_forgotten_total",
                "Idempotency keys forgotten by the retention sweep",
            ),
            moderation_timeouts: counter(
                r,
                "chatmq_moderation_timeouts_total",
                "Sends whose moderation verdict did not come in time",
            ),
        })
    }

    /// Meters registered nowhere: for tests and embedders that do not export.
    pub fn unregistered() -> Arc<Self> {
        Self::new(&Registry::new())
    }

    /// The label value for a request method.
    pub fn method_label(method: &str) -> &'static str {
        METHODS
            .iter()
            .find(|m| **m == method)
            .copied()
            .unwrap_or("other")
    }
}

/// A [`Store`] that times and counts every call of the store it wraps.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    m: Arc<BridgeMetrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, m: Arc<BridgeMetrics>) -> Self {
        MeteredStore { inner, m }
    }

    fn written(&self, started: Instant, n: usize, results: &[&Result<Appended, StoreError>]) {
        self.m
            .store_write_seconds
            .observe(started.elapsed().as_secs_f64());
        self.m.store_write_batch.observe(n as f64);
        for r in results {
            match r {
                Ok(a) if a.duplicate => self.m.duplicates.inc(),
                Ok(_) => self.m.events_persisted.inc(),
                Err(_) => self.m.store_errors.with_label_values(&["append"]).inc(),
            }
        }
    }

    async fn read_op<T>(
        &self,
        op: &str,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let r = f.await;
        self.m
            .store_read_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        if r.is_err() {
            self.m.store_errors.with_label_values(&[op]).inc();
        }
        r
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn append(&self, event: NewEvent) -> Result<Appended, StoreError> {
        let started = Instant::now();
        let r = self.inner.append(event).await;
        self.written(started, 1, &[&r]);
        r
    }

    async fn append_many(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        let started = Instant::now();
        let n = events.len();
        let r = self.inner.append_many(events).await;
        match &r {
            Ok(v) => self.written(started, n, &v.iter().collect::<Vec<_>>()),
            Err(_) => self.m.store_errors.with_label_values(&["append"]).inc(),
        }
        r
    }

    async fn lookup(
        &self,
        room: &str,
        from: &str,
        msg_id: &str,
    ) -> Result<Option<StoredEvent>, StoreError> {
        self.read_op("lookup", self.inner.lookup(room, from, msg_id))
            .await
    }

    async fn head(&self, room: &str) -> Result<u64, StoreError> {
        self.read_op("head", self.inner.head(room)).await
    }

    async fn read(&self, room: &str, range: Range, limit: usize) -> Result<Page, StoreError> {
        self.read_op("read", self.inner.read(room, range, limit))
            .await
    }

    async fn create_room(&self, room: RoomInfo) -> Result<bool, StoreError> {
        self.read_op("create_room", self.inner.create_room(room))
            .await
    }

    async fn room(&self, room: &str) -> Result<Option<RoomInfo>, StoreError> {
        self.read_op("room", self.inner.room(room)).await
    }

    async fn member(&self, room: &str, user: &str) -> Result<Option<Member>, StoreError> {
        self.read_op("member", self.inner.member(room, user)).await
    }

    async fn members(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError> {
        self.read_op("members", self.inner.members(room, after, limit))
            .await
    }

    async fn user_rooms(&self, user: &str) -> Result<Vec<Member>, StoreError> {
        self.read_op("user_rooms", self.inner.user_rooms(user))
            .await
    }

    async fn set_marker(
        &self,
        room: &str,
        user: &str,
        kind: MarkerKind,
        seq: u64,
    ) -> Result<(Markers, bool), StoreError> {
        self.read_op("set_marker", self.inner.set_marker(room, user, kind, seq))
            .await
    }

    async fn markers(&self, room: &str, user: &str) -> Result<Markers, StoreError> {
        self.read_op("markers", self.inner.markers(room, user))
            .await
    }

    async fn room_settings(&self, room: &str) -> Result<Option<String>, StoreError> {
        self.read_op("room_settings", self.inner.room_settings(room))
            .await
    }

    async fn set_room_settings(&self, room: &str, settings: &str) -> Result<(), StoreError> {
        self.read_op(
            "set_room_settings",
            self.inner.set_room_settings(room, settings),
        )
        .await
    }

    async fn is_blocked(&self, user: &str, target: &str) -> Result<bool, StoreError> {
        self.read_op("is_blocked", self.inner.is_blocked(user, target))
            .await
    }

    async fn set_blocked(&self, user: &str, target: &str, on: bool) -> Result<(), StoreError> {
        self.read_op("set_blocked", self.inner.set_blocked(user, target, on))
            .await
    }

    async fn blocked_users(&self, user: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        self.read_op("blocked_users", self.inner.blocked_users(user, limit))
            .await
    }

    async fn rooms_page(
        &self,
        cursor: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<crate::store::RoomsPage, StoreError> {
        self.read_op("rooms_page", self.inner.rooms_page(cursor, limit))
            .await
    }

    async fn expired(&self, room: &str) -> Result<crate::store::Expired, StoreError> {
        self.read_op("expired", self.inner.expired(room)).await
    }

    async fn expire(
        &self,
        room: &str,
        keys: Vec<crate::store::KeyAt>,
        keys_before: u64,
        events_before: u64,
    ) -> Result<crate::store::Expired, StoreError> {
        let f = self.inner.expire(room, keys, keys_before, events_before);
        self.read_op("expire", f).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.read_op("flush", self.inner.flush()).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read_op("ping", self.inner.ping()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_meter_registers_once_and_exports() {
        let r = Registry::new();
        let m = BridgeMetrics::new(&r);
        m.errors.with_label_values(&["not_member"]).inc();
        m.request_seconds
            .with_label_values(&[BridgeMetrics::method_label("history")])
            .observe(0.001);
        m.store_read_seconds
            .with_label_values(&["read"])
            .observe(0.001);
        m.store_errors.with_label_values(&["append"]).inc();
        m.received.with_label_values(&["send"]).inc();
        let names: Vec<String> = r.gather().iter().map(|f| f.name().to_owned()).collect();
        assert_eq!(names.len(), 18, "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("chatmq_")));
        assert_eq!(BridgeMetrics::method_label("rooms.join"), "rooms.join");
        assert_eq!(BridgeMetrics::method_label("x.evil/room-id"), "other");
    }
}
