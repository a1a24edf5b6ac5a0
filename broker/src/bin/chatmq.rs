//! `chatmq`: the chat server. `chatmq` (or `chatmq all`) runs broker, bridge
//! and embedded store in one process; `chatmq broker` and `chatmq bridge`
//! run them apart; `chatmq generate-config` prints the commented defaults.

use anyhow::Context;
use broker::acl::Access;
use broker::auth::Authenticator;
use broker::config::BrokerConfig;
use broker::{Broker, Listeners};
use chat_bridge::bridge::BridgeConfig;
use chat_bridge::chat::{AccessSink, Chat, SendLimits};
use chat_bridge::store::embedded::{EmbeddedConfig, EmbeddedStore, FsyncPolicy};
use chat_bridge::store::{MemberState, RoomKind, Store};
use clap::{Parser, ValueEnum};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

const DEFAULT_CONFIG: &str = include_str!("../../chatmq.toml");

#[derive(Parser)]
#[command(version, about = "MQTT broker with durable, sequenced chat rooms")]
struct Cli {
    /// Config file (TOML), applied over the built-in defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory of the embedded store.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    #[arg(value_enum, default_value_t = Mode::All)]
    mode: Mode,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    All,
    Broker,
    Bridge,
    GenerateConfig,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Config {
    broker: BrokerConfig,
    bridge: BridgeConfig,
    store: StoreConfig,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct StoreConfig {
    fsync: FsyncPolicy,
}

fn load(cli: &Cli) -> Result<Config, String> {
    let mut b = config::Config::builder().add_source(config::File::from_str(
        DEFAULT_CONFIG,
        config::FileFormat::Toml,
    ));
    if let Some(p) = &cli.config {
        b = b.add_source(config::File::from(p.as_path()).format(config::FileFormat::Toml));
    }
    b = b.add_source(
        config::Environment::with_prefix("CHAT")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true),
    );
    let c = b.build().map_err(|e| e.to_string())?;
    c.try_deserialize().map_err(|e| e.to_string())
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
        print!("{DEFAULT_CONFIG}");
        return;
    }
    let cfg = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            std::process::exit(64);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHAT_LOG")
                .unwrap_or_else(|_| "info,rumqttd=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
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
    if let Err(e) = rt.block_on(run(cli, cfg)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
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

fn open_store(cli: &Cli, cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    std::fs::create_dir_all(&cli.data_dir)
        .with_context(|| format!("data dir {}", cli.data_dir.display()))?;
    let store = EmbeddedStore::open(EmbeddedConfig {
        path: cli.data_dir.join("store"),
        fsync: cfg.store.fsync,
    })
    .map_err(|e| anyhow::anyhow!("store: {e}"))?;
    Ok(Arc::new(store))
}

fn loader(store: Arc<dyn Store>) -> broker::acl::Loader {
    Arc::new(move |room: String| {
        let store = store.clone();
        Box::pin(async move {
            let info = store.room(&room).await.ok()??;
            let mut joined = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = store.members(&room, after.as_deref(), 1000).await.ok()?;
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
            Some((info.kind == RoomKind::Channel, joined))
        })
    })
}

async fn run(cli: Cli, mut cfg: Config) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let access = Arc::new(Access::new());
    // the in-process bridge flips this; a broker alone cannot know its bridge
    let (ready_tx, ready_rx) = watch::channel(cli.mode != Mode::All);
    let mut broker = None;
    if matches!(cli.mode, Mode::All | Mode::Broker) {
        cfg.broker.access_from_hooks = cli.mode == Mode::Broker;
        let mut auth = Authenticator::new(&cfg.broker.auth)
            .map_err(|e| anyhow::anyhow!("broker.auth: {e}"))?;
        if cfg
            .broker
            .auth
            .users
            .get("alice")
            .is_some_and(|p| p == "alice-pw")
        {
            tracing::warn!("demo users from the default config are enabled; configure broker.auth.users for production");
        }
        if cli.mode == Mode::All {
            // the in-process bridge logs in with a fresh random password
            cfg.bridge.password = format!("{:032x}", random_u128());
            let prefix = cfg.broker.prefix.clone();
            auth.add_service(
                &cfg.bridge.username,
                &cfg.bridge.password,
                vec![format!("{prefix}/#")],
            );
        }
        let listeners = Listeners::bind(&cfg.broker).await?;
        let b = Broker::start(
            cfg.broker.clone(),
            auth,
            access.clone(),
            listeners,
            stop_rx.clone(),
            ready_rx,
        )
        .await?;
        let mut names: Vec<_> = b.addrs.iter().collect();
        names.sort();
        for (name, addr) in names {
            println!("listening {name} {addr}");
        }
        if cli.mode == Mode::All {
            let tcp = b
                .addrs
                .get("tcp")
                .context("the all-in-one mode needs broker.tcp for its bridge")?;
            cfg.bridge.broker = format!("127.0.0.1:{}", tcp.port());
        }
        broker = Some(b);
    }
    let mut bridge_task = None;
    let mut store_handle = None;
    if matches!(cli.mode, Mode::All | Mode::Bridge) {
        let store = open_store(&cli, &cfg)?;
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
        let chat = Arc::new(Chat::new(store.clone(), &cfg.broker.prefix, sink, limits));
        ready_tx.send_replace(false);
        let mut bridge_ready = ready_tx.subscribe();
        let prefix = cfg.broker.prefix.clone();
        let bcfg = cfg.bridge.clone();
        let stop = stop_rx.clone();
        bridge_task = Some(tokio::spawn(async move {
            chat_bridge::bridge::run(bcfg, prefix, chat, stop, ready_tx).await
        }));
        tokio::select! {
            r = bridge_ready.wait_for(|r| *r) => { r.map_err(|_| anyhow::anyhow!("bridge stopped"))?; }
            _ = shutdown_signal() => { let _ = stop_tx.send(true); return Ok(()); }
        }
        store_handle = Some(store);
    }
    println!("ready");
    shutdown_signal().await;
    tracing::info!("shutting down");
    if let Some(b) = &broker {
        b.stop_accepting();
    }
    let _ = stop_tx.send(true);
    if let Some(t) = bridge_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(15), t).await;
    }
    if let Some(s) = store_handle {
        s.flush().await.map_err(|e| anyhow::anyhow!("flush: {e}"))?;
    }
    Ok(())
}

fn random_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut out = 0u128;
    for i in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        out = (out << 64) | h.finish() as u128;
    }
    out
}
