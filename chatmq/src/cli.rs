//! The command line: `chatmq [all|broker|bridge|migrate|generate-config|hash-password]`.

use crate::server::{Listeners, Meters, Server};
use crate::settings::{self, Role, Settings};
use broker::metrics::BrokerMetrics;
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

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
    /// What to do; without it, run what `server.role` says (default `all`).
    #[arg(value_enum)]
    mode: Option<Mode>,
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

impl Mode {
    fn role(self) -> Option<Role> {
        match self {
            Mode::All => Some(Role::All),
            Mode::Broker => Some(Role::Broker),
            Mode::Bridge => Some(Role::Bridge),
            _ => None,
        }
    }
}

fn load(cli: &Cli) -> Result<Settings, String> {
    let mut s = settings::load(&cli.config, std::env::vars())?;
    if let Some(d) = &cli.data_dir {
        s.store.data_dir = d.clone();
    }
    if let Some(h) = cli.http {
        s.server.http = Some(h);
    }
    if let Some(role) = cli.mode.and_then(Mode::role) {
        s.server.role = role;
    }
    Ok(s)
}

/// The `chatmq` program. Prints `listening NAME ADDR` for every bound
/// socket, then `ready` once it serves (scripts and the tests wait for it).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.mode {
        Some(Mode::GenerateConfig) => {
            print!("{}", settings::DEFAULT_CONFIG);
            return ExitCode::SUCCESS;
        }
        Some(Mode::HashPassword) => {
            return match hash_password() {
                Ok(phc) => {
                    println!("{phc}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hash-password: {e}");
                    ExitCode::from(64)
                }
            };
        }
        _ => {}
    }
    let cfg = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            return ExitCode::from(64);
        }
    };
    let meters = Meters::new();
    init_logging(&meters.broker);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let migrate = cli.mode == Some(Mode::Migrate);
    match rt.block_on(serve(migrate, cfg, meters)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(migrate: bool, cfg: Settings, meters: Meters) -> anyhow::Result<()> {
    if migrate {
        for line in crate::store::migrate(&cfg).await? {
            println!("{line}");
        }
        return Ok(());
    }
    let listeners = Listeners::bind(&cfg).await?;
    for (name, addr) in listeners.addrs() {
        println!("listening {name} {addr}");
    }
    let server = tokio::select! {
        s = Server::start(cfg, listeners, meters) => s?,
        _ = shutdown_signal() => return Ok(()),
    };
    println!("ready");
    shutdown_signal().await;
    server.stop().await
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
