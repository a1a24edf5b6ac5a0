//! What a run measured ([`Report`]), written as JSON and as the Markdown
//! table the README shows, with each target and its gap.

use crate::hist::Histogram;
use serde::Serialize;

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    /// From a histogram of microseconds.
    pub fn of(h: &Histogram) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.count(),
            p50_ms: ms(h.quantile(0.50)),
            p99_ms: ms(h.quantile(0.99)),
            p999_ms: ms(h.quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// One pub/sub load run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub name: String,
    pub publishers: usize,
    pub subscribers: usize,
    pub rooms: usize,
    pub payload_bytes: usize,
    /// End-to-end window per publisher (closed loop), if any.
    pub window: Option<usize>,
    /// Offered msgs/s (fixed rate), if any.
    pub offered_per_s: Option<f64>,
    pub seconds: f64,
    pub published_per_s: f64,
    pub delivered_per_s: f64,
    /// Subscribers per room: deliveries per publish.
    pub fanout: f64,
    pub latency: Latency,
    /// Server CPU over the measured window, % of one core.
    pub server_cpu_pct: f64,
    /// Server VmHWM at the end of the window.
    pub server_peak_rss_mib: f64,
    /// The load generator's own CPU, % of one core.
    pub bench_cpu_pct: f64,
    /// CPU used by everything else on the machine meanwhile (other users'
    /// builds...), % of one core: the noise in this measurement.
    pub other_cpu_pct: f64,
    pub sent: u64,
    /// Sent but not seen by the room's first subscriber by the end of the
    /// drain (15 s after the window): lost, or still queued.
    pub undelivered: u64,
    /// Times a publisher's window stayed empty for 2 s (lost or stuck messages).
    pub stalls: u64,
    pub errors: Vec<String>,
    /// The server log's most frequent WARN/ERROR kinds during the run.
    pub server_log: Vec<(String, u64)>,
}

/// Request round trips over MQTT.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub room_events: u64,
    pub prefill_seconds: f64,
    pub latest50: Latency,
    pub page1000: Latency,
    /// Average reply size of a 1000-event page, bytes.
    pub page1000_bytes: usize,
    pub catchup: Catchup,
}

/// `sync` of missed events across rooms by one client.
#[derive(Debug, Clone, Serialize)]
pub struct Catchup {
    pub rooms: usize,
    pub missed_events: u64,
    pub received_events: u64,
    /// Requests it took (one `sync`, then `history` pages for rooms with more).
    pub requests: usize,
    pub wall_ms: f64,
}

/// Idle connections and the reconnect storm.
#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    pub target: usize,
    pub connected: usize,
    pub connect_seconds: f64,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    pub rss_per_conn_kib: f64,
    pub storm: Storm,
    /// The same clients connecting at once to Mosquitto with the same
    /// subscriptions (no `sync`: Mosquitto has no chat), if it ran.
    pub mosquitto_storm: Option<MosquittoStorm>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MosquittoStorm {
    pub clients: usize,
    pub subscribed: usize,
    /// From the first connect to the last SUBACK.
    pub all_subscribed_seconds: f64,
    pub errors: u64,
    /// chatmq's storm rate (clients caught up per second) over Mosquitto's
    /// (clients subscribed per second).
    pub chatmq_rate_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Storm {
    pub clients: usize,
    pub caught_up: usize,
    /// Events sent to the rooms while everyone was away.
    pub missed_per_client: u64,
    /// From the first reconnect to the last client's complete `sync` reply.
    pub all_caught_up_seconds: f64,
    /// Per-client time to caught up (connect + subscribe + sync), ms.
    pub per_client: Latency,
    pub attempts: u64,
    pub errors: u64,
    pub error_kinds: Vec<(String, u64)>,
    pub server_peak_rss_mib: f64,
    /// The server log's most frequent WARN/ERROR kinds (history, idle, storm).
    pub server_log: Vec<(String, u64)>,
}

/// The machine the run was on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub ram_gib: f64,
    pub kernel: String,
    pub nofile_limit: u64,
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

impl Machine {
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_default();
        let ram_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            ram_gib: ram_kib / 1024.0 / 1024.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            nofile_limit: rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |l| l.0),
        }
    }
}

/// Everything one `all` run produced; absent sections were skipped.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub started_unix: u64,
    pub machine: Machine,
    /// /proc/loadavg (1, 5, 15 min) when the run started and ended.
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub fsync: String,
    pub load: Vec<LoadResult>,
    /// Chat path at a fixed offered rate (the configured rooms, then one room).
    pub fixed_rate: Vec<LoadResult>,
    pub history: Option<History>,
    pub connections: Option<Connections>,
    pub notes: Vec<String>,
    /// Scenarios that failed, with why.
    pub errors: Vec<String>,
    pub targets: Vec<Target>,
}

/// One of the product's performance targets.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    pub goal: String,
    pub measured: String,
    pub met: Option<bool>,
    pub gap: String,
}
