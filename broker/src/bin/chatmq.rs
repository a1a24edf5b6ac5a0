//! `chatmq`: the chat server. `chatmq` (or `chatmq all`) runs broker, bridge
//! and embedded store in one process; `chatmq broker` and `chatmq bridge`
//! run them apart; `chatmq generate-config` prints the commented defaults;
//! `chatmq hash-password` turns a password on stdin into an argon2id hash
//! for `broker.auth.users` and service accounts.

use anyhow::Context;
use broker::acl::Access;
use broker::auth::Authenticator;
use broker::http::Health;
use broker::metrics::BrokerMetrics;
use broker::settings::{self, Backend, Settings};
use broker::{Broker, Listeners};
use chat_bridge::chat::{AccessSink, Chat, SendLimits};
use chat_bridge::metrics::{BridgeMetrics, MeteredStore};
use chat_bridge::store::embedded::{EmbeddedConfig, EmbeddedStore};
use chat_bridge::store::scylla::ScyllaStore;
use chat_bridge::store::{MemberState, RoomKind, Store};
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// glibc malloc, with large blocks (rumqttd's preallocated per-connection
/// queues) mapped on their own so untouched pages cost nothing: see the
/// `pagealloc` crate.
#[global_allocator]
static ALLOC: pagealloc::PageAlloc = pagealloc::PageAlloc;

#[derive(Parser)]
#[command(version, about = "MQTT broker with durable, sequenced chat rooms")]
struct Cli {
    /// Config file (TOML) applied over the built-in defaults; repeat it to
    /// layer several files, later ones winning (e.g. a ConfigMap, then a Secret).
    #[arg(long)]
    config: Vec<PathBuf>,
    /// Data directory of the embedded store (overrides store.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of /metrics, /healthz and /readyz (overrides server.http).
    #[arg(long)]
    http: Option<SocketAddr>,
    #[arg(value_enum, default_value_t = Mode::All)]
    mode: Mode,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Broker, bridge and store in one process.
    All,
    /// The MQTT broker alone; its bridge runs apart (`chatmq bridge`).
    Broker,
    /// The bridge alone, connecting to `bridge.broker`.
    Bridge,
    /// Applies pending schema migrations of the configured store, then exits.
    Migrate,
    /// Prints the commented default configuration.
    GenerateConfig,
    /// Reads a password from stdin (one line) and prints its argon2id hash
    /// (a PHC string) for `broker.auth.users` or a service account.
    HashPassword,
}

fn load(cli: &Cli) -> Result<Settings, String> {
    let mut s = settings::load(&cli.config, std::env::vars())?;
    if let Some(d) = &cli.data_dir {
        s.store.data_dir = d.clone();
    }
    if let Some(h) = cli.http {
        s.server.http = Some(h);
    }
    Ok(s)
}

struct Sink(Arc<Access>);

impl AccessSink for Sink {
    fn member(&self, room: &str, user: &str, joined: bool) {
        self.0.set_member(room, user, joined);
    }
    fn open(&self, room: &str, open: bool) {
        self.0.set_open(room, open);
    }
}

/// A sink for a bridge running apart: the broker learns through hooks.
struct NoSink;
impl AccessSink for NoSink {
    fn member(&self, _: &str, _: &str, _: bool) {}
    fn open(&self, _: &str, _: bool) {}
}

fn main() {
    let cli = Cli::parse();
    if cli.mode == Mode::GenerateConfig {
        print!("{}", settings::DEFAULT_CONFIG);
        return;
    }
    if cli.mode == Mode::HashPassword {
        match hash_password() {
            Ok(phc) => println!("{phc}"),
            Err(e) => {
                eprintln!("hash-password: {e}");
                std::process::exit(64);
            }
        }
        return;
    }
    let cfg = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            std::process::exit(64);
        }
    };
    let registry = prometheus::Registry::new();
    let broker_metrics = BrokerMetrics::new(&registry);
    init_logging(&broker_metrics);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            std::process::exit(70);
        }
    };
    if let Err(e) = rt.block_on(run(cli, cfg, registry, broker_metrics)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// `chatmq hash-password`: one line of stdin (without its line ending) as
/// an argon2id PHC string.
fn hash_password() -> Result<String, String> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("password (the input is shown; pipe it in to avoid that), then Enter:");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading stdin: {e}"))?;
    let pw = line.strip_suffix('\n').unwrap_or(&line);
    let pw = pw.strip_suffix('\r').unwrap_or(pw);
    if pw.is_empty() {
        return Err("empty password on stdin".into());
    }
    broker::auth::hash_password(pw)
}

/// Logs to stderr filtered by `CHAT_LOG` (default `info,rumqttd=warn`); the
/// metrics tap sees rumqttd's warnings whatever that filter says.
fn init_logging(metrics: &Arc<BrokerMetrics>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHAT_LOG")
        .unwrap_or_else(|_| "info,rumqttd=warn".into());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let tap = metrics
        .rumqttd_tap()
        .with_filter(tracing_subscriber::filter::LevelFilter::WARN);
    tracing_subscriber::registry().with(fmt).with(tap).init();
}

async fn shutdown_signal() {
    let term = async {
        #[cfg(unix)]
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
            return;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn open_store(
    cfg: &Settings,
    metrics: &Arc<BridgeMetrics>,
) -> anyhow::Result<Arc<dyn Store>> {
    let inner: Arc<dyn Store> = match cfg.store.backend {
        Backend::Scylla => Arc::new(
            ScyllaStore::connect(&cfg.store.scylla)
                .await
                .map_err(|e| anyhow::anyhow!("store.scylla: {e}"))?,
        ),
        Backend::Embedded => {
            let dir = &cfg.store.data_dir;
            std::fs::create_dir_all(dir).with_context(|| format!("data dir {}", dir.display()))?;
            Arc::new(
                EmbeddedStore::open(EmbeddedConfig {
                    path: dir.join("store"),
                    fsync: cfg.store.fsync,
                })
                .map_err(|e| anyhow::anyhow!("store: {e}"))?,
            )
        }
    };
    Ok(Arc::new(MeteredStore::new(inner, metrics.clone())))
}

async fn migrate(cfg: &Settings) -> anyhow::Result<()> {
    match cfg.store.backend {
        Backend::Embedded => {
            println!("store.backend = \"embedded\": nothing to migrate");
            Ok(())
        }
        Backend::Scylla => {
            let applied = chat_bridge::store::scylla::migrate(&cfg.store.scylla)
                .await
                .map_err(|e| anyhow::anyhow!("store.scylla: {e}"))?;
            if applied.is_empty() {
                println!("keyspace {}: up to date", cfg.store.scylla.keyspace);
            }
            for v in applied {
                println!("keyspace {}: applied {v}", cfg.store.scylla.keyspace);
            }
            Ok(())
        }
    }
}

fn loader(store: Arc<dyn Store>) -> broker::acl::Loader {
    Arc::new(move |room: String| {
        let store = store.clone();
        Box::pin(async move {
            let Some(info) = store.room(&room).await.map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let mut joined = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = store
                    .members(&room, after.as_deref(), 1000)
                    .await
                    .map_err(|e| e.to_string())?;
                let n = page.len();
                after = page.last().map(|m| m.user.clone());
                joined.extend(
                    page.into_iter()
                        .filter(|m| m.state == MemberState::Joined)
                        .map(|m| m.user),
                );
                if n < 1000 {
                    break;
                }
            }
            Ok(Some((info.kind == RoomKind::Channel, joined)))
        })
    })
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// The allocator's counters (`pagealloc::stats`) as gauges, every 5 s.
fn allocator_metrics(registry: &prometheus::Registry) {
    use chat_bridge::metrics::gauge;
    let mapped = gauge(
        registry,
        "chatmq_alloc_mapped_blocks",
        "Blocks of 16 KiB or more mapped on their own by the allocator",
    );
    let fallback = gauge(
        registry,
        "chatmq_alloc_fallback_blocks",
        "Large blocks served by glibc because the kernel refused a mapping (vm.max_map_count)",
    );
    let unmap_failed = gauge(
        registry,
        "chatmq_alloc_unmap_failed",
        "Frees whose munmap the kernel refused (pages released, address range kept)",
    );
    tokio::spawn(async move {
        loop {
            let s = pagealloc::stats();
            mapped.set(s.mapped as i64);
            fallback.set(s.fallback as i64);
            unmap_failed.set(s.unmap_failed as i64);
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
}

async fn run(
    cli: Cli,
    mut cfg: Settings,
    registry: prometheus::Registry,
    broker_metrics: Arc<BrokerMetrics>,
) -> anyhow::Result<()> {
    if cli.mode == Mode::Migrate {
        return migrate(&cfg).await;
    }
    let bridge_metrics = BridgeMetrics::new(&registry);
    allocator_metrics(&registry);
    let health = Health::new();
    // users_stop cuts users off (the broker's shutdown); bridge_stop stops the bridge
    let (users_stop, users_stop_rx) = watch::channel(false);
    let (bridge_stop, bridge_stop_rx) = watch::channel(false);
    let (http_stop, http_stop_rx) = watch::channel(false);
    if let Some(addr) = cfg.server.http {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("server.http: listen on {addr}"))?;
        println!("listening http {}", l.local_addr()?);
        tokio::spawn(broker::http::serve(
            l,
            registry.clone(),
            health.clone(),
            http_stop_rx,
        ));
    }
    let access = Arc::new(Access::new());
    // the in-process bridge flips this; a broker alone cannot know its bridge
    let (ready_tx, ready_rx) = watch::channel(cli.mode != Mode::All);
    let mut broker = None;
    if matches!(cli.mode, Mode::All | Mode::Broker) {
        cfg.broker.access_from_hooks = cli.mode == Mode::Broker;
        if cli.mode == Mode::Broker && !cfg.bridge.client_id.is_empty() {
            // the bridge runs apart: nobody else may take its client id (and
            // the session the broker keeps for it) while it is away
            cfg.broker
                .reserved_client_ids
                .insert(cfg.bridge.client_id.clone(), cfg.bridge.username.clone());
        }
        let mut demo = Vec::new();
        if cfg.broker.auth.demo_users {
            tracing::warn!("demo users alice/alice-pw and bob/bob-pw are enabled; set broker.auth.demo_users = false in production");
            for (u, p) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
                if !cfg.broker.auth.users.contains_key(u) {
                    cfg.broker.auth.users.insert(u.to_owned(), p.to_owned());
                    demo.push(u);
                }
            }
        }
        let auth = Authenticator::new(&cfg.broker.auth)
            .map_err(|e| anyhow::anyhow!("broker.auth: {e}"))?;
        let plain: Vec<&str> = auth
            .plain_text_accounts()
            .into_iter()
            .filter(|a| !demo.contains(a))
            .collect();
        if !plain.is_empty() {
            tracing::warn!(
                accounts = %plain.join(","),
                "passwords configured in plain text; store argon2id hashes instead (`chatmq hash-password`)"
            );
        }
        let listeners = Listeners::bind(&cfg.broker).await?;
        let b = Broker::start(
            cfg.broker.clone(),
            auth,
            access.clone(),
            listeners,
            users_stop_rx,
            ready_rx,
            broker_metrics.clone(),
        )
        .await?;
        let mut names: Vec<_> = b.addrs.iter().collect();
        names.sort();
        for (name, addr) in names {
            println!("listening {name} {addr}");
        }
        broker = Some(b);
    }
    let mut bridge_task = None;
    let mut store_handle = None;
    if matches!(cli.mode, Mode::All | Mode::Bridge) {
        let store = open_store(&cfg, &bridge_metrics).await?;
        let sink: Arc<dyn AccessSink> = if cli.mode == Mode::All {
            access.set_loader(loader(store.clone()));
            Arc::new(Sink(access.clone()))
        } else {
            Arc::new(NoSink)
        };
        let limits = SendLimits {
            per_sec: cfg.bridge.sends_per_sec,
            burst: cfg.bridge.sends_burst,
        };
        let chat = Arc::new(
            Chat::new(store.clone(), &cfg.broker.prefix, sink, limits)
                .with_limits(cfg.bridge.limits())
                .with_metrics(bridge_metrics.clone()),
        );
        ready_tx.send_replace(false);
        let mut bridge_ready = ready_tx.subscribe();
        let ready_probe = ready_tx.subscribe();
        health.add(
            "bridge",
            Arc::new(move || {
                let up = *ready_probe.borrow();
                Box::pin(async move {
                    if up {
                        Ok(())
                    } else {
                        Err("not connected and subscribed to the broker".into())
                    }
                })
            }),
        );
        let probe_store = store.clone();
        health.add(
            "store",
            Arc::new(move || {
                let s = probe_store.clone();
                Box::pin(async move { s.ping().await.map_err(|e| e.to_string()) })
            }),
        );
        let prefix = cfg.broker.prefix.clone();
        let bcfg = cfg.bridge.clone();
        bridge_task = Some(match &broker {
            // in one process the bridge gets a router link, not an MQTT client
            Some(b) => {
                let shared = b.shared.clone();
                tokio::spawn(async move {
                    broker::local_bridge::run(shared, bcfg.batch, chat, bridge_stop_rx, ready_tx)
                        .await
                })
            }
            None => tokio::spawn(async move {
                chat_bridge::bridge::run(bcfg, prefix, chat, bridge_stop_rx, ready_tx).await
            }),
        });
        tokio::select! {
            r = bridge_ready.wait_for(|r| *r) => { r.map_err(|_| anyhow::anyhow!("bridge stopped"))?; }
            _ = shutdown_signal() => { let _ = bridge_stop.send(true); return Ok(()); }
        }
        store_handle = Some(store);
    }
    println!("ready");
    shutdown_signal().await;
    let deadline = Instant::now() + Duration::from_millis(cfg.server.grace_period_ms);
    tracing::info!(grace_ms = cfg.server.grace_period_ms, "shutting down");
    health.set_draining();
    if let Some(b) = &broker {
        // no new connections; users cut off; the bridge stores what they sent
        b.stop_accepting();
        let _ = users_stop.send(true);
        if b.drain(remaining(deadline)).await {
            tracing::info!("drained: every accepted publish reached the bridge");
        } else {
            tracing::warn!("grace period over before the bridge confirmed the drain");
        }
    }
    let _ = bridge_stop.send(true);
    if let Some(t) = bridge_task {
        if tokio::time::timeout(remaining(deadline), t).await.is_err() {
            tracing::warn!("grace period over before the bridge stopped");
        }
    }
    if let Some(s) = store_handle {
        s.flush().await.map_err(|e| anyhow::anyhow!("flush: {e}"))?;
    }
    let _ = http_stop.send(true);
    drop(broker);
    tracing::info!("stopped");
    Ok(())
}
