//! `chatmq-bench`: parse the command line, run the sections, write the results.
//! It builds nothing: it runs `target/release/chatmq` (or `--server-bin`).

use chatmq_bench::history::Prefill;
use chatmq_bench::load::LoadParams;
use chatmq_bench::run::{self, Sections, Settings};
use clap::{Parser, Subcommand};
use rumqttc::QoS;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Benchmark chatmq against its own raw pass-through and Mosquitto")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// The chatmq binary [default: <workspace>/target/release/chatmq]
    #[arg(long, global = true)]
    server_bin: Option<PathBuf>,
    /// Mosquitto binary (skipped with a note when absent)
    #[arg(long, global = true, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
    #[arg(long, global = true)]
    no_mosquitto: bool,
    /// Where latest.json / latest.md go [default: <workspace>/bench/results]
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Small, fast run (about a minute); explicit flags still win
    #[arg(long, global = true)]
    quick: bool,
    /// Measured seconds per load scenario [default: 10, quick 3]
    #[arg(long, global = true)]
    duration: Option<f64>,
    /// Warm-up seconds before measuring [default: 2, quick 1]
    #[arg(long, global = true)]
    warmup: Option<f64>,
    #[arg(long, global = true, default_value_t = 20)]
    publishers: usize,
    #[arg(long, global = true, default_value_t = 40)]
    subscribers: usize,
    #[arg(long, global = true, default_value_t = 10)]
    rooms: usize,
    /// Payload bytes of each publish
    #[arg(long, global = true, default_value_t = 128)]
    payload: usize,
    /// Messages in flight end to end per publisher (closed loop)
    #[arg(long, global = true, default_value_t = 16)]
    window: usize,
    /// QoS of publishes (0 or 1)
    #[arg(long, global = true, default_value_t = 1)]
    qos: u8,
    /// Offered events/s of the fixed-rate chat run
    #[arg(long, global = true, default_value_t = 5000.0)]
    rate: f64,
    /// Store fsync policy: always, never, intervalN (ms)
    #[arg(long, global = true, default_value = "always")]
    fsync: String,
    /// Also run the chat path with this fsync policy (e.g. interval5)
    #[arg(long, global = true)]
    extra_fsync: Option<String>,
    /// Events in the history room [default: 1000000, quick 50000]
    #[arg(long, global = true)]
    history_events: Option<u64>,
    /// Round trips of `history` latest 50 (half as many 1000-event pages) [default: 1000, quick 200]
    #[arg(long, global = true)]
    history_requests: Option<usize>,
    #[arg(long, global = true, default_value_t = 100)]
    catchup_rooms: usize,
    /// Missed events per catch-up room
    #[arg(long, global = true, default_value_t = 100)]
    catchup_per_room: u64,
    /// Idle connections and reconnect-storm clients [default: 10000, quick 1000]
    #[arg(long, global = true)]
    connections: Option<usize>,
    /// Scratch directory for configs, data and logs [default: a temp dir]
    #[arg(long, global = true)]
    work: Option<PathBuf>,
    /// Only these load scenarios, comma-separated: raw, chat, mosquitto,
    /// chat-1room, fixed, fixed-1room, chat-cql, cluster (with --cql) [default: all];
    /// channel (10,000 members: only when named)
    #[arg(long, global = true, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Keep the scratch directory (server logs, configs) after the run
    #[arg(long, global = true)]
    keep_work: bool,
    /// A CQL node (host:port, e.g. `$(tests/cql/start)`): also run the chat
    /// path on the ScyllaDB store, in a fresh keyspace, beside the embedded store
    #[arg(long, global = true)]
    cql: Option<String>,
    /// `channel` scenario: members of the channel (offline but for --channel-online)
    #[arg(long, global = true, default_value_t = 10_000)]
    channel_members: usize,
    /// `channel` scenario: members online, subscribed to the channel
    #[arg(long, global = true, default_value_t = 1000)]
    channel_online: usize,
    /// `channel` scenario: offered messages/s into the channel
    #[arg(long, global = true, default_value_t = 20.0)]
    channel_rate: f64,
    /// With --cql: offered events/s of a fixed-rate chat run on both stores
    #[arg(long, global = true, default_value_t = 1000.0)]
    cql_rate: f64,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    /// Everything: load (raw, chat, mosquitto, fixed rate), history, connections
    All,
    /// Only the pub/sub load scenarios
    Load,
    /// Only history and catch-up
    History,
    /// Only idle connections and the reconnect storm
    Connections,
}

fn workspace() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn main() {
    let cli = Cli::parse();
    let q = cli.quick;
    let pick = |v: Option<f64>, full: f64, quick: f64| v.unwrap_or(if q { quick } else { full });
    let tmp = match cli.work.clone() {
        Some(w) => {
            let _ = std::fs::create_dir_all(&w);
            tempfile::Builder::new()
                .prefix("chatmq-bench-")
                .tempdir_in(w)
        }
        None => tempfile::Builder::new().prefix("chatmq-bench-").tempdir(),
    };
    let tmp = match tmp {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot create a work directory: {e}");
            std::process::exit(1);
        }
    };
    let settings = Settings {
        server_bin: cli
            .server_bin
            .clone()
            .unwrap_or_else(|| workspace().join("target/release/chatmq")),
        mosquitto: (!cli.no_mosquitto).then(|| cli.mosquitto.clone()),
        work: tmp.path().to_path_buf(),
        fsync: cli.fsync.clone(),
        extra_fsync: cli.extra_fsync.clone(),
        load: LoadParams {
            publishers: cli.publishers,
            subscribers: cli.subscribers,
            rooms: cli.rooms,
            payload: cli.payload,
            warmup: Duration::from_secs_f64(pick(cli.warmup, 2.0, 1.0)),
            duration: Duration::from_secs_f64(pick(cli.duration, 10.0, 3.0)),
            window: cli.window,
            qos: if cli.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            rate: None,
            channel_members: None,
        },
        rate: cli.rate,
        prefill: Prefill {
            history_events: cli
                .history_events
                .unwrap_or(if q { 50_000 } else { 1_000_000 }),
            catchup_rooms: cli.catchup_rooms,
            catchup_per_room: cli.catchup_per_room,
            users: cli.connections.unwrap_or(if q { 1000 } else { 10_000 }),
        },
        history_requests: cli.history_requests.unwrap_or(if q { 200 } else { 1000 }),
        only: cli.only.clone(),
        cql: cli.cql.clone().filter(|u| !u.trim().is_empty()),
        cql_rate: cli.cql_rate,
        channel: (cli.channel_members, cli.channel_online, cli.channel_rate),
        command: std::iter::once("chatmq-bench".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let sections = match cli.cmd {
        Cmd::All => Sections {
            load: true,
            history: true,
            connections: true,
        },
        Cmd::Load => Sections {
            load: true,
            history: false,
            connections: false,
        },
        Cmd::History => Sections {
            load: false,
            history: true,
            connections: false,
        },
        Cmd::Connections => Sections {
            load: false,
            history: false,
            connections: true,
        },
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let report = rt.block_on(run::run(&settings, sections));
    let out = cli.out.unwrap_or_else(|| workspace().join("bench/results"));
    let stem = match cli.cmd {
        Cmd::All => "latest",
        Cmd::Load => "load",
        Cmd::History => "history",
        Cmd::Connections => "connections",
    };
    match run::write(&report, &out, stem) {
        Ok((json, md)) => {
            print!("{}", chatmq_bench::summary::markdown(&report));
            eprintln!("wrote {} and {}", json.display(), md.display());
        }
        Err(e) => {
            eprintln!("cannot write results to {}: {e}", out.display());
            std::process::exit(1);
        }
    }
    if cli.keep_work {
        eprintln!("kept {}", tmp.keep().display());
    }
    if !report.errors.is_empty() {
        std::process::exit(1);
    }
}
