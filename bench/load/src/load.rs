//! The pub/sub load: N publishers and M subscribers spread over R rooms,
//! QoS 1. The same load runs over the raw path (a plain topic per room) and
//! the chat path (`chat/rooms/{room}/send/{user}` in, `.../events` out).
//!
//! Two modes:
//! * **closed loop** (`rate: None`), the throughput ceiling: each publisher
//!   keeps at most `window` messages in flight end to end; a permit comes
//!   back when the room's first subscriber receives the message. Queues stay
//!   bounded, so the latency is that of a saturated but stable pipeline.
//! * **fixed rate**: publishers send on a schedule totalling `rate` msgs/s;
//!   latency is measured from the *scheduled* time (no coordinated omission).
//!
//! Every payload is `{"msg_id":"<n>","body":"<publisher>:<µs>:xxx…"}`, padded
//! to the payload size; the chat event carries the same `body`, so one parser
//! reads the send timestamp on both paths.

use crate::client::{ConnOpts, Target};
use crate::hist::Histogram;
use crate::report::{Latency, LoadResult};
use crate::server::{machine_busy_secs, proc_sample, ProcSample};
use crate::{now_us, setup};
use anyhow::{bail, Result};
use bytes::Bytes;
use rumqttc::QoS;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::{sleep_until, Instant};

/// Which topics the load uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// `bench/rooms/{room}`: outside the chat prefix, pure broker routing.
    Raw,
    /// The chat send and events topics: bridge, sequencing, durable store.
    Chat,
}

/// The shape of the load.
#[derive(Debug, Clone)]
pub struct LoadParams {
    pub publishers: usize,
    pub subscribers: usize,
    pub rooms: usize,
    pub payload: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// End-to-end in-flight messages per publisher (closed loop).
    pub window: usize,
    pub qos: QoS,
    /// Offered msgs/s over all publishers; `None` = closed loop.
    pub rate: Option<f64>,
    /// On the chat path with one room: make it a channel with this many
    /// more members (joined over MQTT, then offline); `None`: a group.
    pub channel_members: Option<usize>,
}

// phase 0 (the default) is the warm-up
const MEASURE: u8 = 1;
const DONE: u8 = 2;

/// Counters shared by every task of one run.
#[derive(Default)]
struct Shared {
    phase: AtomicU8,
    stop: AtomicBool,
    sent: AtomicU64,
    sent_in_window: AtomicU64,
    delivered: AtomicU64,
    delivered_in_window: AtomicU64,
    /// Deliveries to each room's first subscriber (the one that returns permits).
    tracked: AtomicU64,
    stalls: AtomicU64,
}

/// Room of publisher / subscriber `i`.
fn room_of(i: usize, rooms: usize) -> usize {
    i % rooms
}

fn topics(path: Path, room: usize, user: &str) -> (String, String) {
    match path {
        Path::Raw => (
            format!("bench/rooms/r{room}"),
            format!("bench/rooms/r{room}"),
        ),
        Path::Chat => (
            format!("chat/rooms/r{room}/send/{user}"),
            format!("chat/rooms/r{room}/events"),
        ),
    }
}

/// `{"msg_id":"<n>","body":"<publisher>:<ts>:xxx…"}`, at least `size` bytes.
pub fn payload(publisher: usize, n: u64, ts_us: u64, size: usize) -> Bytes {
    let mut s = format!("{{\"msg_id\":\"{n}\",\"body\":\"{publisher}:{ts_us}:");
    let pad = size.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    Bytes::from(s)
}

/// (publisher, send timestamp µs) from a raw payload or a chat event.
pub fn parse_body(p: &[u8]) -> Option<(usize, u64)> {
    const KEY: &[u8] = b"\"body\":\"";
    let at = p.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let body = &p[at..];
    let mut it = body.splitn(3, |b| *b == b':');
    let publisher = std::str::from_utf8(it.next()?).ok()?.parse().ok()?;
    let ts = std::str::from_utf8(it.next()?).ok()?.parse().ok()?;
    it.next()?;
    Some((publisher, ts))
}

/// CPU counters at one instant: server, this process, the whole machine.
struct Sample {
    server: ProcSample,
    bench: ProcSample,
    machine: f64,
    at: Instant,
}

impl Sample {
    /// `servers`: every process of the server (a cluster's brokers and
    /// bridges), summed.
    fn take(servers: &[u32]) -> Result<Sample> {
        let mut server = ProcSample::default();
        for pid in servers {
            let s = proc_sample(Some(*pid))?;
            server.cpu_secs += s.cpu_secs;
            server.rss_kib += s.rss_kib;
            server.hwm_kib += s.hwm_kib;
        }
        Ok(Sample {
            server,
            bench: proc_sample(None)?,
            machine: machine_busy_secs(),
            at: Instant::now(),
        })
    }
}

/// Runs one load against `target` and returns what it measured. The
/// `servers` processes are sampled for CPU and peak RSS (summed).
pub async fn run(
    name: &str,
    target: &Target,
    servers: &[u32],
    path: Path,
    p: &LoadParams,
) -> Result<LoadResult> {
    if p.rooms == 0 || p.publishers < p.rooms || p.subscribers < p.rooms {
        bail!("need publishers >= rooms >= 1 and subscribers >= rooms");
    }
    let opts = ConnOpts {
        inflight: (p.window.max(1) as u16).max(10),
        channel: 16,
        ..Default::default()
    };
    let (pubs, subs) = setup::users(target, path == Path::Chat, p, opts).await?;
    let shared = Arc::new(Shared::default());
    let permits: Arc<Vec<Semaphore>> = Arc::new(
        (0..p.publishers)
            .map(|_| Semaphore::new(p.window))
            .collect(),
    );
    let closed_loop = p.rate.is_none();

    // subscribers
    let mut readers = Vec::new();
    let mut hists = Vec::new();
    for (i, c) in subs.into_iter().enumerate() {
        let tracker = i < p.rooms; // subscriber i < rooms is room i's first
        let hist = Arc::new(Mutex::new(Histogram::new()));
        hists.push(hist.clone());
        let (sh, permits) = (shared.clone(), permits.clone());
        let (client, task) = c.spawn_reader(move |_, payload| {
            let Some((publisher, ts)) = parse_body(payload) else {
                return;
            };
            let now = now_us();
            sh.delivered.fetch_add(1, Ordering::Relaxed);
            if sh.phase.load(Ordering::Relaxed) == MEASURE {
                sh.delivered_in_window.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut h) = hist.lock() {
                    h.record(now.saturating_sub(ts));
                }
            }
            if tracker {
                sh.tracked.fetch_add(1, Ordering::Relaxed);
                if closed_loop {
                    if let Some(s) = permits.get(publisher) {
                        s.add_permits(1);
                    }
                }
            }
        });
        readers.push((client, task));
    }

    // publishers
    let per_pub_rate = p.rate.map(|r| r / p.publishers as f64);
    let mut writers = Vec::new();
    for (i, c) in pubs.into_iter().enumerate() {
        let (topic, _) = topics(path, room_of(i, p.rooms), &c.user);
        let (client, reader) = c.spawn_reader(|_, _| {});
        let (sh, permits, pp) = (shared.clone(), permits.clone(), p.clone());
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut n = 0u64;
            while !sh.stop.load(Ordering::Relaxed) {
                let ts = match per_pub_rate {
                    Some(r) => {
                        let due = start + Duration::from_secs_f64(n as f64 / r);
                        sleep_until(due).await;
                        crate::instant_us(due.into_std())
                    }
                    None => {
                        match tokio::time::timeout(Duration::from_secs(2), permits[i].acquire())
                            .await
                        {
                            Ok(Ok(permit)) => permit.forget(),
                            Ok(Err(_)) => break,
                            Err(_) => {
                                // a message was lost or is stuck: count it, refill
                                sh.stalls.fetch_add(1, Ordering::Relaxed);
                                permits[i].add_permits(pp.window);
                                continue;
                            }
                        }
                        now_us()
                    }
                };
                let body = payload(i, n, ts, pp.payload);
                if client
                    .publish_bytes(topic.as_str(), pp.qos, false, body)
                    .await
                    .is_err()
                {
                    break;
                }
                n += 1;
                sh.sent.fetch_add(1, Ordering::Relaxed);
                if sh.phase.load(Ordering::Relaxed) == MEASURE {
                    sh.sent_in_window.fetch_add(1, Ordering::Relaxed);
                }
            }
            (client, reader)
        });
        writers.push(task);
    }

    tokio::time::sleep(p.warmup).await;
    let w0 = Sample::take(servers)?;
    shared.phase.store(MEASURE, Ordering::Relaxed);
    tokio::time::sleep(p.duration).await;
    shared.phase.store(DONE, Ordering::Relaxed);
    let w1 = Sample::take(servers)?;
    shared.stop.store(true, Ordering::Relaxed);
    let mut pub_handles = Vec::new();
    for w in writers {
        pub_handles.push(w.await?);
    }

    // drain: wait until the trackers saw everything sent (or give up)
    let deadline = Instant::now() + Duration::from_secs(15);
    let fanout = p.subscribers as f64 / p.rooms as f64;
    while shared.tracked.load(Ordering::Relaxed) < shared.sent.load(Ordering::Relaxed)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut errors = Vec::new();
    for (client, task) in pub_handles.into_iter().chain(readers) {
        let _ = client.try_disconnect();
        if task.is_finished() {
            if let Ok(Err(e)) = task.await {
                errors.push(e.to_string());
            }
        } else {
            task.abort();
        }
    }
    let mut hist = Histogram::new();
    for h in hists {
        if let Ok(h) = h.lock() {
            hist.merge(&h);
        }
    }
    let secs = (w1.at - w0.at).as_secs_f64();
    let server_cpu = w1.server.cpu_secs - w0.server.cpu_secs;
    let bench_cpu = w1.bench.cpu_secs - w0.bench.cpu_secs;
    let sent = shared.sent.load(Ordering::Relaxed);
    let tracked = shared.tracked.load(Ordering::Relaxed);
    Ok(LoadResult {
        name: name.into(),
        publishers: p.publishers,
        subscribers: p.subscribers,
        rooms: p.rooms,
        payload_bytes: p.payload,
        window: closed_loop.then_some(p.window),
        offered_per_s: p.rate,
        seconds: secs,
        published_per_s: shared.sent_in_window.load(Ordering::Relaxed) as f64 / secs,
        delivered_per_s: shared.delivered_in_window.load(Ordering::Relaxed) as f64 / secs,
        fanout,
        latency: Latency::of(&hist),
        server_cpu_pct: 100.0 * server_cpu / secs,
        server_peak_rss_mib: w1.server.hwm_kib as f64 / 1024.0,
        bench_cpu_pct: 100.0 * bench_cpu / secs,
        other_cpu_pct: 100.0 * (w1.machine - w0.machine - server_cpu - bench_cpu).max(0.0) / secs,
        sent,
        undelivered: sent.saturating_sub(tracked),
        stalls: shared.stalls.load(Ordering::Relaxed),
        errors,
        server_log: Vec::new(),
    })
}
