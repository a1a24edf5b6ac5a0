//! The settings of a run and the order of its scenarios. Every scenario gets
//! a fresh server (so peak RSS is its own) in its own directory under `work`.

use crate::client::Target;
use crate::history::{self, Prefill};
use crate::load::{self, LoadParams, Path as LoadPath};
use crate::report::{loadavg, Machine, Report};
use crate::server::{Server, JWT_SECRET};
use crate::{conns, summary};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Which parts to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sections {
    pub load: bool,
    pub history: bool,
    pub connections: bool,
}

/// Everything a run needs, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server_bin: PathBuf,
    /// `None`: skip Mosquitto.
    pub mosquitto: Option<PathBuf>,
    pub work: PathBuf,
    pub fsync: String,
    /// Run the chat path once more with this fsync policy (e.g. `interval5`).
    pub extra_fsync: Option<String>,
    pub load: LoadParams,
    /// Offered events/s of the fixed-rate chat run.
    pub rate: f64,
    pub prefill: Prefill,
    pub history_requests: usize,
    /// Run only these load scenarios (raw, chat, mosquitto, chat-1room,
    /// fixed, fixed-1room); `None` = all.
    pub only: Option<Vec<String>>,
    /// A CQL node (`host:port`): also run the chat path on the ScyllaDB store.
    pub cql: Option<String>,
    /// Offered events/s of the fixed-rate run on both stores (with `cql`).
    pub cql_rate: f64,
    /// The `channel` scenario: (members, online, offered msgs/s).
    pub channel: (usize, usize, f64),
    pub command: String,
}

/// Runs the chosen sections; a failed scenario is recorded in `notes` (and
/// makes `errors` non-empty) and the others still run.
pub async fn run(s: &Settings, sections: Sections) -> Report {
    crate::now_us(); // start the clock before anything is timestamped
    let nofile = raise_nofile();
    let mut r = Report {
        command: s.command.clone(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        machine: Machine::detect(),
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
        fsync: s.fsync.clone(),
        load: Vec::new(),
        fixed_rate: Vec::new(),
        history: None,
        connections: None,
        notes: Vec::new(),
        errors: Vec::new(),
        targets: Vec::new(),
    };
    if sections.connections && (nofile as usize) < s.prefill.users + 512 {
        r.notes.push(format!(
            "RLIMIT_NOFILE is {nofile}: too low for {} connections plus their reconnects",
            s.prefill.users
        ));
    }
    if sections.load {
        load_scenarios(s, &mut r).await;
    }
    if sections.history || sections.connections {
        if let Err(e) = stored_scenarios(s, sections, &mut r).await {
            r.errors.push(format!("history/connections: {e:#}"));
        }
    }
    r.loadavg_end = loadavg();
    r.targets = summary::targets(&r);
    r.notes.extend(summary::generator_notes(&r));
    r.notes.extend(summary::log_notes(&r));
    r
}

/// Raises the soft fd limit to the hard one (children inherit it).
fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

async fn chatmq_load(
    s: &Settings,
    dir: &str,
    name: &str,
    fsync: &str,
    path: LoadPath,
    p: &LoadParams,
) -> Result<crate::report::LoadResult> {
    let mut server = Server::chatmq(&s.server_bin, &s.work.join(dir), fsync)?;
    let target = Target::chatmq(server.port, JWT_SECRET)?;
    let mut res = load::run(name, &target, &[server.pid()], path, p).await?;
    server.check_alive()?;
    res.server_log = server.log_problems();
    Ok(res)
}

/// The chat path on the ScyllaDB store: a fresh keyspace on the CQL node
/// `uri`, migrated with `chatmq migrate`, then the same load as [`summary::CHAT`].
async fn chatmq_cql_load(
    s: &Settings,
    uri: &str,
    p: &LoadParams,
) -> Result<crate::report::LoadResult> {
    let keyspace = format!(
        "chatmq_bench_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let dir = s.work.join(&keyspace);
    let config = crate::server::chatmq_cql_config(uri, &keyspace)?;
    crate::server::chatmq_migrate(&s.server_bin, &dir, &config)?;
    let mut server = Server::chatmq_with(&s.server_bin, &dir, &config)?;
    let target = Target::chatmq(server.port, JWT_SECRET)?;
    let mut res = load::run(
        summary::CHAT_CQL,
        &target,
        &[server.pid()],
        LoadPath::Chat,
        p,
    )
    .await?;
    server.check_alive()?;
    res.server_log = server.log_problems();
    Ok(res)
}

/// A channel of `members` members, `online` of them subscribed, at a fixed
/// offered rate, beside a channel of just the `online` members at the same
/// rate, in one run: what a message costs in a large channel (server CPU
/// per message, latency to every online member) against a small room.
async fn channel_scenarios(s: &Settings, r: &mut Report) {
    let (members, online, rate) = s.channel;
    let base = LoadParams {
        rooms: 1,
        publishers: s.load.publishers.clamp(1, 10),
        subscribers: online.max(1),
        rate: Some(rate),
        channel_members: Some(0),
        ..s.load.clone()
    };
    let runs = [
        (
            summary::channel_name(members, online, rate),
            LoadParams {
                channel_members: Some(members),
                ..base.clone()
            },
        ),
        (summary::channel_online_name(online, rate), base),
    ];
    for (i, (name, p)) in runs.into_iter().enumerate() {
        let dir = format!("channel-{i}");
        match chatmq_load(s, &dir, &name, &s.fsync, LoadPath::Chat, &p).await {
            Ok(l) => r.fixed_rate.push(l),
            Err(e) => r.errors.push(format!("{name}: {e:#}")),
        }
    }
}

/// Partitions of the benchmark's clusters.
const CLUSTER_PARTITIONS: u32 = 16;

/// The chat path on a cluster (docs/cluster.md): `brokers` broker processes
/// and `bridges` bridge processes on the CQL node `uri`, a fresh keyspace;
/// the load's connections go round-robin over the brokers. Returns the
/// result and the bridges' mean store write time, ms.
async fn cluster_load(
    s: &Settings,
    uri: &str,
    brokers: usize,
    bridges: u32,
    p: &LoadParams,
) -> Result<(crate::report::LoadResult, f64)> {
    let keyspace = format!(
        "chatmq_bench_cluster_{brokers}x{bridges}_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let dir = s.work.join(&keyspace);
    let base = crate::server::chatmq_cql_config(uri, &keyspace)?;
    crate::server::chatmq_migrate(&s.server_bin, &dir, &base)?;
    let base = base.replacen(
        "[bridge]\n",
        "[bridge]\nclient_id = \"bench-bridge\"\nusername = \"bench-bridge\"\npassword = \"bench-bridge-pw\"\n",
        1,
    ) + "\n[broker.auth.services.bench-bridge]\npassword = \"bench-bridge-pw\"\nallow = [\"chat/#\"]\n";
    let cluster = format!("\n[cluster]\npartitions = {CLUSTER_PARTITIONS}\nbridges = {bridges}\n");
    let mut servers = Vec::new();
    let mut ports = Vec::new();
    for i in 0..brokers {
        let srv = Server::chatmq_role(
            &s.server_bin,
            &dir.join(format!("broker-{i}")),
            &format!("{base}{cluster}"),
            Some("broker"),
        )?;
        ports.push(srv.port);
        servers.push(srv);
    }
    let list: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    for k in 0..bridges {
        let srv = Server::chatmq_role(
            &s.server_bin,
            &dir.join(format!("bridge-{k}")),
            &format!(
                "{base}{cluster}bridge_ordinal = {k}\nbrokers = [{}]\n",
                list.join(", ")
            ),
            Some("bridge"),
        )?;
        servers.push(srv);
    }
    let mut target = Target::chatmq(ports[0], JWT_SECRET)?;
    target.more_ports = ports[1..].to_vec();
    let pids: Vec<u32> = servers.iter().map(Server::pid).collect();
    let name = summary::cluster_name(brokers, bridges);
    let mut res = load::run(&name, &target, &pids, LoadPath::Chat, p).await?;
    let (mut sum, mut count) = (0.0, 0.0);
    for srv in &mut servers {
        srv.check_alive()?;
        res.server_log.extend(srv.log_problems());
        if srv.port == 0 {
            let m = crate::server::scrape(srv.http_port)?;
            sum += crate::server::metric(&m, "chatmq_store_write_seconds_sum");
            count += crate::server::metric(&m, "chatmq_store_write_seconds_count");
        }
    }
    let store_ms = if count > 0.0 {
        1000.0 * sum / count
    } else {
        0.0
    };
    Ok((res, store_ms))
}

/// 1 broker + 1 bridge, then 2 + 2, in one run: the ratio, and where the
/// latency goes.
async fn cluster_scenarios(s: &Settings, uri: &str, r: &mut Report) {
    let mut got = Vec::new();
    for (brokers, bridges) in [(1, 1), (2, 2)] {
        match cluster_load(s, uri, brokers, bridges, &s.load).await {
            Ok((l, store_ms)) => {
                got.push((l.delivered_per_s, l.latency.mean_ms, store_ms));
                r.load.push(l);
            }
            Err(e) => r.errors.push(format!(
                "{}: {e:#}",
                summary::cluster_name(brokers, bridges)
            )),
        }
    }
    if let [(d1, m1, s1), (d2, m2, s2)] = got[..] {
        r.notes.push(format!(
            "Cluster on the CQL node: 2 brokers + 2 bridges delivered {d2:.0}/s, 1 + 1 {d1:.0}/s: \
             ratio {:.2}x on this machine's 2 cores (every process and the CQL node share them). \
             Where the mean latency goes: 1 + 1: {m1:.1} ms end to end, of which {s1:.1} ms a \
             store write (mean per write, bridges' chatmq_store_write_seconds) and {:.1} ms the \
             MQTT hops and queues (client -> broker -> bridge, bridge -> broker -> client); \
             2 + 2: {m2:.1} ms, store {s2:.1} ms, hops and queues {:.1} ms.",
            d2 / d1.max(1.0),
            (m1 - s1).max(0.0),
            (m2 - s2).max(0.0)
        ));
    }
}

async fn load_scenarios(s: &Settings, r: &mut Report) {
    let mut record = |name: &str, res: Result<crate::report::LoadResult>| match res {
        Ok(l) => r.load.push(l),
        Err(e) => r.errors.push(format!("{name}: {e:#}")),
    };
    let want = |key: &str| s.only.as_ref().is_none_or(|o| o.iter().any(|k| k == key));
    if want("raw") {
        let res = chatmq_load(s, "raw", summary::RAW, &s.fsync, LoadPath::Raw, &s.load).await;
        record(summary::RAW, res);
    }
    if want("chat") {
        let res = chatmq_load(s, "chat", summary::CHAT, &s.fsync, LoadPath::Chat, &s.load).await;
        record(summary::CHAT, res);
    }
    match &s.cql {
        Some(uri) if want("chat") || want("chat-cql") => {
            let res = chatmq_cql_load(s, uri, &s.load).await;
            record(summary::CHAT_CQL, res);
        }
        Some(_) => {}
        None => {
            if want("chat-cql") {
                r.notes
                    .push("chat path on the ScyllaDB store skipped: no --cql node".into());
            }
        }
    }
    match &s.mosquitto {
        _ if !want("mosquitto") => {}
        Some(bin) if bin.is_file() => {
            let res = async {
                let server = Server::mosquitto(bin, &s.work.join("mosquitto"))?;
                let target = Target::anonymous(server.port);
                load::run(
                    summary::MOSQUITTO,
                    &target,
                    &[server.pid()],
                    LoadPath::Raw,
                    &s.load,
                )
                .await
            }
            .await;
            record(summary::MOSQUITTO, res);
        }
        Some(bin) => r.notes.push(format!(
            "Mosquitto skipped: {} not found (Debian package `mosquitto`).",
            bin.display()
        )),
        None => r.notes.push("Mosquitto skipped (--no-mosquitto).".into()),
    }
    if let Some(f) = s.extra_fsync.as_ref().filter(|_| want("chat")) {
        let name = format!("{}, fsync {f}", summary::CHAT);
        let res = chatmq_load(s, "chat-extra", &name, f, LoadPath::Chat, &s.load).await;
        record(&name, res);
    }
    // The same publishers and fan-out in ONE room: a single group per bridge
    // batch, so the bridge's acks stay in order (see the notes).
    let one_room = LoadParams {
        rooms: 1,
        subscribers: (s.load.subscribers / s.load.rooms.max(1)).max(1),
        ..s.load.clone()
    };
    if want("chat-1room") {
        let res = chatmq_load(
            s,
            "chat-1room",
            summary::CHAT_ONE_ROOM,
            &s.fsync,
            LoadPath::Chat,
            &one_room,
        )
        .await;
        record(summary::CHAT_ONE_ROOM, res);
    }
    for (dir, base) in [("fixed", &s.load), ("fixed-1room", &one_room)] {
        if !want(dir) {
            continue;
        }
        let p = LoadParams {
            rate: Some(s.rate),
            ..base.clone()
        };
        let name = summary::fixed_name(s.rate, p.rooms);
        match chatmq_load(s, dir, &name, &s.fsync, LoadPath::Chat, &p).await {
            Ok(l) => r.fixed_rate.push(l),
            Err(e) => r.errors.push(format!("{name}: {e:#}")),
        }
    }
    // heavy (10,000 connections to set up): only when named
    if s.only
        .as_ref()
        .is_some_and(|o| o.iter().any(|k| k == "channel"))
    {
        channel_scenarios(s, r).await;
    }
    match &s.cql {
        Some(uri) if want("cluster") => cluster_scenarios(s, uri, r).await,
        Some(_) => {}
        None => {
            if s.only.is_some() && want("cluster") {
                r.notes.push("cluster skipped: no --cql node".into());
            }
        }
    }
    if let Some(uri) = s.cql.as_ref().filter(|_| want("chat") || want("chat-cql")) {
        // Both stores at the same offered rate, one the CQL node sustains:
        // latency without the closed loop's queueing.
        let p = LoadParams {
            rate: Some(s.cql_rate),
            ..s.load.clone()
        };
        let name = summary::fixed_name(s.cql_rate, p.rooms);
        match chatmq_load(s, "fixed-cql-embedded", &name, &s.fsync, LoadPath::Chat, &p).await {
            Ok(l) => r.fixed_rate.push(l),
            Err(e) => r.errors.push(format!("{name}: {e:#}")),
        }
        let name = format!("{name}, ScyllaDB store");
        match chatmq_cql_load(s, uri, &p).await {
            Ok(mut l) => {
                l.name = name;
                r.fixed_rate.push(l);
            }
            Err(e) => r.errors.push(format!("{name}: {e:#}")),
        }
    }
}

async fn stored_scenarios(s: &Settings, sections: Sections, r: &mut Report) -> Result<()> {
    let dir = s.work.join("stored");
    let filled = history::prefill(&dir.join("data"), &s.prefill)
        .await
        .context("pre-filling the store")?;
    let mut server = Server::chatmq(&s.server_bin, &dir, &s.fsync)?;
    let target = Target::chatmq(server.port, JWT_SECRET)?;
    if sections.history {
        match history::run(&target, &s.prefill, &filled, s.history_requests).await {
            Ok(h) => r.history = Some(h),
            Err(e) => r.errors.push(format!("history: {e:#}")),
        }
    }
    if sections.connections {
        let mosq_dir = s.work.join("mosquitto-storm");
        let mosquitto = s.mosquitto.as_deref().map(|b| (b, mosq_dir.as_path()));
        match conns::run(&target, &mut server, &s.prefill, &filled, mosquitto).await {
            Ok(c) => r.connections = Some(c),
            Err(e) => r.errors.push(format!("connections: {e:#}")),
        }
    }
    server.check_alive()
}

/// Writes `<out>/<stem>.json` and `<out>/<stem>.md`.
pub fn write(r: &Report, out: &Path, stem: &str) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out)?;
    let json = out.join(format!("{stem}.json"));
    let md = out.join(format!("{stem}.md"));
    std::fs::write(&json, serde_json::to_string_pretty(r)? + "\n")?;
    std::fs::write(&md, summary::markdown(r))?;
    Ok((json, md))
}
