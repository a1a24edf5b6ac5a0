//! Connections: N idle authenticated clients (each subscribed to its reply
//! topic, its inbox and its 5 rooms' events) to measure server memory per
//! connection; then all of
//! them go away, their rooms move on, and they come back at once, each
//! with a `sync` from its cursor (the reconnect storm).

use crate::client::{Conn, ConnOpts, Target};
use crate::hist::Histogram;
use crate::history::{catchup_room, conn_user, user_rooms, Filled, Prefill, CATCHER};
use crate::report::{Connections, Latency, MosquittoStorm, Storm};
use crate::server::Server;
use crate::spawn_all;
use anyhow::{bail, Result};
use rumqttc::AsyncClient;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const OPTS: ConnOpts = ConnOpts {
    inflight: 10,
    channel: 8,
    connect_timeout: Duration::from_secs(30),
};

/// The client id suffix of every connection user: the storm's clients are
/// the idle ones coming back, and a client that reconnects keeps its client
/// id (as MQTT clients do, and must to resume a session), so its reply topic
/// is the one it had. Fresh ids would make every reconnect a new reply
/// topic and a new rumqttd filter, which costs the router a scan of every
/// topic it knows (see bench/results/profile.md, section 5).
const DEVICE: &str = "phone";

/// Events published per catch-up room while the clients are away.
pub const MISSED_PER_ROOM: u64 = 10;

async fn connect_user(target: &Target, i: usize, rooms: usize, suffix: &str) -> Result<Conn> {
    let user = conn_user(i);
    let mut c = Conn::login(target, &user, &format!("{user}-{suffix}"), OPTS).await?;
    // as an app does: its reply topic, its inbox and its rooms' events
    let mut filters = vec![c.reply_topic(), format!("chat/users/{user}/inbox")];
    filters.extend(
        user_rooms(i, rooms)
            .into_iter()
            .map(|r| format!("chat/rooms/{}/events", catchup_room(r))),
    );
    c.subscribe(&filters).await?;
    Ok(c)
}

type Idle = (AsyncClient, JoinHandle<Result<()>>);

async fn disconnect_all(conns: Vec<Idle>) {
    for (c, _) in &conns {
        let _ = c.try_disconnect();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (_, t) in conns {
        t.abort();
    }
}

/// The catch-up client sends `per_room` messages to every room while the
/// connection users are away; returns when each send is acknowledged.
async fn advance_rooms(target: &Target, filled: &Filled, per_room: u64) -> Result<()> {
    let mut c = Conn::login(target, CATCHER, "catcher-sender", ConnOpts::default()).await?;
    c.subscribe(&[c.reply_topic()]).await?;
    for (room, _) in &filled.rooms {
        for n in 0..per_room {
            let r = c
                .request_on(
                    &format!("chat/rooms/{room}/send/{CATCHER}"),
                    json!({"msg_id": format!("away-{n}"), "body": "while you were away"}),
                    Duration::from_secs(30),
                )
                .await?;
            if r["ok"] != true {
                bail!("send to {room} failed: {r}");
            }
        }
    }
    Ok(())
}

/// For memory profiling: with `CHATMQ_BENCH_SMAPS=DIR`, the server's
/// `/proc/<pid>/smaps` is copied to `DIR/smaps-{tag}` before the idle
/// connections and while they are connected.
fn keep_smaps(server: &Server, tag: &str) {
    if let Some(dir) = std::env::var_os("CHATMQ_BENCH_SMAPS") {
        let to = std::path::Path::new(&dir).join(format!("smaps-{tag}"));
        if let Err(e) = std::fs::copy(format!("/proc/{}/smaps", server.pid()), &to) {
            eprintln!("could not keep smaps in {}: {e}", to.display());
        }
    }
}

/// Idle connections, then the reconnect storm.
pub async fn run(
    target: &Target,
    server: &mut Server,
    p: &Prefill,
    filled: &Filled,
    mosquitto: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<Connections> {
    let n = p.users;
    let rooms = p.catchup_rooms;
    let rss0 = server.sample()?.rss_kib;
    keep_smaps(server, "before");
    let t0 = Instant::now();
    // setup, not measured: bounded concurrency
    let gate = Arc::new(Semaphore::new(256));
    let idle: Vec<Idle> = spawn_all((0..n).map(|i| {
        let (target, gate) = (target.clone(), gate.clone());
        async move {
            let _permit = gate.acquire().await?;
            Ok(connect_user(&target, i, rooms, DEVICE)
                .await?
                .spawn_reader(|_, _| {}))
        }
    }))
    .await?;
    let connect_seconds = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.check_alive()?;
    let rss1 = server.sample()?.rss_kib;
    keep_smaps(server, "idle");
    let connected = idle.iter().filter(|(_, t)| !t.is_finished()).count();
    disconnect_all(idle).await;

    advance_rooms(target, filled, MISSED_PER_ROOM).await?;
    let storm = storm(target, p, filled).await?;
    let storm = Storm {
        server_peak_rss_mib: server.sample()?.hwm_kib as f64 / 1024.0,
        server_log: server.log_problems(),
        ..storm
    };
    let mosquitto_storm = match mosquitto {
        Some((bin, dir)) if bin.is_file() => {
            let m = mosquitto_storm(bin, dir, n, rooms).await?;
            let chatmq_rate = storm.caught_up as f64 / storm.all_caught_up_seconds.max(1e-9);
            let mosq_rate = m.subscribed as f64 / m.all_subscribed_seconds.max(1e-9);
            Some(MosquittoStorm {
                chatmq_rate_ratio: chatmq_rate / mosq_rate.max(1e-9),
                ..m
            })
        }
        _ => None,
    };
    Ok(Connections {
        mosquitto_storm,
        target: n,
        connected,
        connect_seconds,
        rss_before_mib: rss0 as f64 / 1024.0,
        rss_after_mib: rss1 as f64 / 1024.0,
        rss_per_conn_kib: rss1.saturating_sub(rss0) as f64 / connected.max(1) as f64,
        storm,
    })
}

/// One client of the storm: connect, subscribe, `sync` from its cursor; the
/// reply must hold exactly the missed events. Up to 3 attempts.
async fn come_back(
    target: Target,
    i: usize,
    rooms: usize,
    cursor: u64,
    errors: &mut Vec<String>,
) -> Option<(Conn, Duration)> {
    let start = Instant::now();
    let room = catchup_room(i % rooms);
    for attempt in 0..3u64 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
        }
        let res = async {
            let mut c = connect_user(&target, i, rooms, DEVICE).await?;
            let params = json!({"rooms": {room.as_str(): cursor}, "limit_per_room": 100});
            let r = c.request("sync", params, Duration::from_secs(30)).await?;
            let got = r["result"]["rooms"][room.as_str()]["events"]
                .as_array()
                .map_or(0, Vec::len) as u64;
            if r["ok"] != true || got != MISSED_PER_ROOM {
                bail!(
                    "sync answered {got} events: {}",
                    r.to_string().chars().take(200).collect::<String>()
                );
            }
            Ok(c)
        }
        .await;
        match res {
            Ok(c) => return Some((c, start.elapsed())),
            Err(e) => errors.push(e.to_string()),
        }
    }
    None
}

async fn storm(target: &Target, p: &Prefill, filled: &Filled) -> Result<Storm> {
    let n = p.users;
    let rooms = p.catchup_rooms;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let target = target.clone();
            let cursor = filled.rooms[i % rooms].1;
            tokio::spawn(async move {
                let mut errors = Vec::new();
                let back = come_back(target, i, rooms, cursor, &mut errors).await;
                (back, errors)
            })
        })
        .collect();
    let mut per_client = Histogram::new();
    let mut last = Duration::ZERO;
    let mut kinds = Vec::new();
    let (mut errors, mut attempts, mut back) = (0, 0, Vec::new());
    for t in tasks {
        let (conn, errs) = t.await?;
        attempts += errs.len() as u64 + u64::from(conn.is_some());
        errors += errs.len() as u64;
        // without the client id
        kinds.extend(
            errs.iter().map(|e| {
                crate::message_kind(e.split_once(": ").map_or(e.as_str(), |(_, r)| r), 100)
            }),
        );
        if let Some((c, took)) = conn {
            per_client.record(took.as_micros() as u64);
            last = last.max(took);
            back.push(c);
        }
    }
    let caught_up = back.len();
    drop(back);
    Ok(Storm {
        clients: n,
        caught_up,
        missed_per_client: MISSED_PER_ROOM,
        all_caught_up_seconds: last.as_secs_f64(),
        per_client: Latency::of(&per_client),
        attempts,
        errors,
        error_kinds: crate::top_kinds(kinds, 5),
        server_peak_rss_mib: 0.0,
        server_log: Vec::new(),
    })
}

/// `n` clients connect at once to a fresh Mosquitto, each subscribing to
/// the same filters as a chatmq storm client (reply topic, inbox, its 5
/// rooms' events); the time until the last SUBACK.
async fn mosquitto_storm(
    bin: &std::path::Path,
    dir: &std::path::Path,
    n: usize,
    rooms: usize,
) -> Result<MosquittoStorm> {
    let server = Server::mosquitto(bin, dir)?;
    let target = Target::anonymous(server.port);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let target = target.clone();
            tokio::spawn(async move {
                for attempt in 0..3u64 {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
                    }
                    if let Ok(c) = connect_user(&target, i, rooms, DEVICE).await {
                        return Some(c);
                    }
                }
                None
            })
        })
        .collect();
    let (mut subscribed, mut last, mut conns) = (0, Duration::ZERO, Vec::new());
    for t in tasks {
        if let Some(c) = t.await? {
            subscribed += 1;
            last = last.max(t0.elapsed());
            conns.push(c);
        }
    }
    drop(conns);
    drop(server);
    Ok(MosquittoStorm {
        clients: n,
        subscribed,
        all_subscribed_seconds: last.as_secs_f64(),
        errors: (n - subscribed) as u64,
        chatmq_rate_ratio: 0.0,
    })
}
