//! Test fixture for end-to-end tests: spawns the `chatmq` binary with a
//! temporary config and data directory, and offers MQTT 3.1.1 / 5 clients
//! (rumqttc) with helpers for sends, requests and waiting for messages.
//!
//! Every wait has a timeout and fails with a message saying what was awaited.
//!
//! # Layout
//!
//! | concern | where |
//! |---|---|
//! | the binary under test (`CARGO_BIN_EXE_chatmq`) | [`chatmq_bin`] |
//! | a server with its own config and data dir; restart, kill, logs | [`TestServer`], [`TestServerBuilder`] |
//! | MQTT 3.1.1 / 5 clients and their waits (send, rpc, recv) | [`Client`], [`client_v4`], [`client_v5`] |
//! | HTTP probes and metrics | [`http_get`], [`metric`] |
//! | paho-mqtt scripts (Python) | [`python`], [`paho_available`] |
//! | test CAs, server certificates, RSA keys; a TLS front for plain clients | [`pki`] |
//! | the test files themselves | `tests/tests/*.rs` (the `chatmq` package's integration tests) |

#![allow(clippy::unwrap_used)]

pub mod pki;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Default wait for anything the server should do promptly.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long to watch for something that must *not* happen.
pub const QUIET: Duration = Duration::from_secs(2);
/// How long the server may take to print `ready`.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Users configured by default: name -> password `pw-{name}`.
pub const USERS: &[&str] = &["alice", "bob", "carol", "dave", "eve", "mallory"];

/// Password of a default user.
pub fn pw(user: &str) -> String {
    format!("pw-{user}")
}

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent dir")
        .to_path_buf()
}

/// The `chatmq` binary under test. Cargo builds it for the `chatmq`
/// package's integration tests (tests/tests/*.rs) and passes its path in
/// `CARGO_BIN_EXE_chatmq`; other packages' tests (the benchmark's smoke
/// test) find it beside their own executable, where `cargo test
/// --workspace` has built it.
pub fn chatmq_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CARGO_BIN_EXE_chatmq") {
        return Ok(PathBuf::from(p));
    }
    // the test executable lives in <target>/<profile>/deps/
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("chatmq"))
        .ok_or_else(|| anyhow!("no target directory above {}", exe.display()))?;
    if !bin.is_file() {
        return Err(anyhow!(
            "{} is not built: run the tests with `cargo test --workspace` (or `cargo build -p chatmq` first)",
            bin.display()
        ));
    }
    Ok(bin)
}

/// Builder for a [`TestServer`].
pub struct TestServerBuilder {
    users: Vec<(String, String)>,
    extra_broker: String,
    extra_jwt: String,
    extra: String,
    extra_store: String,
    extra_server: String,
    mode: String,
    grace_ms: u64,
}

impl Default for TestServerBuilder {
    fn default() -> Self {
        TestServerBuilder {
            users: USERS.iter().map(|u| (u.to_string(), pw(u))).collect(),
            extra_broker: String::new(),
            extra_jwt: String::new(),
            extra: String::new(),
            extra_store: String::new(),
            extra_server: String::new(),
            mode: "all".into(),
            grace_ms: 10_000,
        }
    }
}

impl TestServerBuilder {
    /// Adds a user with a password.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.into(), password.into()));
        self
    }
    /// Raw TOML lines appended inside `[broker]` (before its sub-tables).
    pub fn broker_toml(mut self, toml: &str) -> Self {
        self.extra_broker.push_str(toml);
        self.extra_broker.push('\n');
        self
    }
    /// Raw TOML lines appended inside `[broker.auth.jwt]` (whose
    /// `hs256_secret` is `test-secret`).
    pub fn jwt_toml(mut self, toml: &str) -> Self {
        self.extra_jwt.push_str(toml);
        self.extra_jwt.push('\n');
        self
    }
    /// Raw TOML appended at the end of the file (whole sections).
    pub fn toml(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }
    /// Raw TOML lines appended inside `[store]` (before its sub-tables).
    /// Keys appended to the `[server]` table.
    pub fn server_toml(mut self, toml: &str) -> Self {
        self.extra_server.push_str(toml);
        self.extra_server.push('\n');
        self
    }

    pub fn store_toml(mut self, toml: &str) -> Self {
        self.extra_store.push_str(toml);
        self.extra_store.push('\n');
        self
    }
    /// The ScyllaDB store on the CQL node `uri`, keyspace `keyspace`
    /// (migrated first with [`migrate_cql`]).
    pub fn cql_store(self, uri: &str, keyspace: &str) -> Self {
        self.store_toml("backend = \"scylla\"")
            .toml(&cql_store_toml(uri, keyspace))
    }
    /// `server.grace_period_ms` (10 s by default).
    pub fn grace_period_ms(mut self, ms: u64) -> Self {
        self.grace_ms = ms;
        self
    }
    /// Run mode (`all` by default).
    pub fn mode(mut self, mode: &str) -> Self {
        self.mode = mode.into();
        self
    }

    fn config(&self) -> String {
        let mut s = String::new();
        s.push_str("[broker]\nprefix = \"chat\"\ntcp = \"127.0.0.1:0\"\nws = \"127.0.0.1:0\"\n");
        s.push_str(&self.extra_broker);
        s.push_str("\n[broker.auth]\ndemo_users = false\n[broker.auth.users]\n");
        for (u, p) in &self.users {
            s.push_str(&format!("{u} = \"{p}\"\n"));
        }
        s.push_str("\n[broker.auth.jwt]\nhs256_secret = \"test-secret\"\n");
        s.push_str(&self.extra_jwt);
        s.push_str(
            "\n[broker.auth.services.ext-bridge]\npassword = \"pw-svc\"\nallow = [\"chat/#\"]\n",
        );
        s.push_str("\n[store]\nfsync = \"always\"\n");
        s.push_str(&self.extra_store);
        s.push_str(&format!(
            "\n[server]\nhttp = \"127.0.0.1:0\"\ngrace_period_ms = {}\n",
            self.grace_ms
        ));
        s.push_str(&self.extra_server);
        s.push_str(&self.extra);
        s
    }

    /// Writes the config, spawns the server, waits for `ready`.
    pub async fn start(self) -> Result<TestServer> {
        let bin = chatmq_bin()?;
        let dir = tempfile::Builder::new().prefix("chatmq-test-").tempdir()?;
        let config_path = dir.path().join("chat.toml");
        std::fs::write(&config_path, self.config())?;
        let data_dir = dir.path().join("data");
        let mut server = TestServer {
            bin,
            dir,
            config_path,
            data_dir,
            mode: self.mode,
            child: None,
            ports: Ports::default(),
            generation: 0,
        };
        server.spawn().await?;
        Ok(server)
    }
}

/// Whether a command is on the PATH (tests of third-party clients skip,
/// saying so, without it).
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The CQL node to test the ScyllaDB store against: `SCYLLA_URI`
/// (`host:port`, as printed by `tests/cql/start`). `None` (with a SKIPPED
/// line) without it, unless `CHATMQ_CQL_REQUIRED` is set (as `.ci/run` does):
/// then a missing node fails the test instead of skipping it.
pub fn cql_node() -> Option<String> {
    match std::env::var("SCYLLA_URI") {
        Ok(u) if !u.trim().is_empty() => Some(u.trim().to_owned()),
        _ => {
            assert!(
                std::env::var_os("CHATMQ_CQL_REQUIRED").is_none(),
                "CHATMQ_CQL_REQUIRED is set but SCYLLA_URI is not: the CQL node did not start"
            );
            println!("SKIPPED: SCYLLA_URI not set (export SCYLLA_URI=$(tests/cql/start))");
            None
        }
    }
}

/// The store a test suite written once runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// The embedded store in the server's data dir (the default).
    Embedded,
    /// The ScyllaDB store on the CQL node of [`cql_node`], a fresh keyspace
    /// migrated per server.
    Cql,
}

impl Store {
    /// A server builder on this store; `None` when the test must skip (no
    /// CQL node, see [`cql_node`]).
    pub fn builder(self) -> Result<Option<TestServerBuilder>> {
        match self {
            Store::Embedded => Ok(Some(TestServer::builder())),
            Store::Cql => {
                let Some(uri) = cql_node() else {
                    return Ok(None);
                };
                let ks = fresh_keyspace("suite");
                migrate_cql(&uri, &ks)?;
                Ok(Some(TestServer::builder().cql_store(&uri, &ks)))
            }
        }
    }
}

/// A keyspace name no other test (or run) uses.
pub fn fresh_keyspace(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!(
        "chatmq_e2e_{tag}_{t:x}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `[store.scylla]` for one test node (replication factor 1, long timeouts:
/// the node shares the machine with the tests).
pub fn cql_store_toml(uri: &str, keyspace: &str) -> String {
    format!(
        "[store.scylla]\nnodes = \"{uri}\"\nkeyspace = \"{keyspace}\"\n\
         replication = \"{{'class': 'SimpleStrategy', 'replication_factor': 1}}\"\n\
         request_timeout_ms = 20000\n"
    )
}

/// Runs `chatmq migrate` for `keyspace` on the CQL node `uri`; its stdout.
pub fn migrate_cql(uri: &str, keyspace: &str) -> Result<String> {
    let dir = tempfile::Builder::new()
        .prefix("chatmq-migrate-")
        .tempdir()?;
    let cfg = dir.path().join("migrate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\nbackend = \"scylla\"\n{}",
            cql_store_toml(uri, keyspace)
        ),
    )?;
    let out = Command::new(chatmq_bin()?)
        .arg("--config")
        .arg(&cfg)
        .arg("migrate")
        .output()
        .context("running chatmq migrate")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "chatmq migrate exited {}: {stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// Ports printed by the server on startup.
#[derive(Debug, Default, Clone)]
pub struct Ports {
    pub tcp: Option<u16>,
    pub ws: Option<u16>,
    pub tls: Option<u16>,
    pub wss: Option<u16>,
    pub http: Option<u16>,
}

/// A running `chatmq` process with its own config and data directory.
pub struct TestServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    data_dir: PathBuf,
    mode: String,
    child: Option<Child>,
    ports: Ports,
    generation: u32,
}

impl TestServer {
    /// A builder with the default users.
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder::default()
    }

    /// Starts a server with the default configuration.
    pub async fn start() -> Result<TestServer> {
        Self::builder().start().await
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("server-{}.log", self.generation))
    }

    /// The last lines of the server's stderr (for failure messages).
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        let from = lines.len().saturating_sub(40);
        lines[from..].join("\n")
    }

    async fn spawn(&mut self) -> Result<()> {
        self.generation += 1;
        let log = std::fs::File::create(self.log_path())?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg(&self.mode)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std_mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Keep draining stdout for the process's whole life so it never blocks.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let mut ports = Ports::default();
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.kill();
                bail!(
                    "chatmq did not print `ready` within {START_TIMEOUT:?}; stdout so far: {seen:?}\nstderr tail:\n{}",
                    self.log_tail()
                );
            }
            let rx_ref = &rx;
            let got = tokio::task::block_in_place(|| {
                rx_ref.recv_timeout(left.min(Duration::from_millis(500)))
            });
            match got {
                Ok(line) => {
                    seen.push(line.clone());
                    let line = line.trim();
                    if line == "ready" {
                        break;
                    }
                    if let Some(rest) = line.strip_prefix("listening ") {
                        let mut it = rest.split_whitespace();
                        let kind = it.next().unwrap_or("");
                        let addr = it.next().unwrap_or("");
                        let port: u16 = addr
                            .rsplit(':')
                            .next()
                            .and_then(|p| p.parse().ok())
                            .ok_or_else(|| anyhow!("bad listening line: {line:?}"))?;
                        match kind {
                            "tcp" => ports.tcp = Some(port),
                            "ws" => ports.ws = Some(port),
                            "tls" => ports.tls = Some(port),
                            "wss" => ports.wss = Some(port),
                            "http" => ports.http = Some(port),
                            _ => {}
                        }
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = self
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten())
                    {
                        self.child = None;
                        bail!(
                            "chatmq exited with {status} before `ready`; stdout: {seen:?}\nstderr tail:\n{}",
                            self.log_tail()
                        );
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    self.child = None;
                    bail!(
                        "chatmq closed stdout before `ready` (exit {status:?}); stdout: {seen:?}\nstderr tail:\n{}",
                        self.log_tail()
                    );
                }
            }
        }
        self.ports = ports;
        Ok(())
    }

    /// MQTT TCP port.
    pub fn tcp_port(&self) -> u16 {
        self.ports
            .tcp
            .expect("server printed no `listening tcp` line")
    }
    /// MQTT-over-WebSocket port (path `/mqtt`).
    pub fn ws_port(&self) -> u16 {
        self.ports
            .ws
            .expect("server printed no `listening ws` line")
    }
    /// Port of `/metrics`, `/healthz`, `/readyz`.
    pub fn http_port(&self) -> u16 {
        self.ports
            .http
            .expect("server printed no `listening http` line")
    }
    /// GET on the server's HTTP endpoint: (status code, body).
    pub async fn http_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.http_port(), path).await
    }
    /// All ports.
    pub fn ports(&self) -> &Ports {
        &self.ports
    }
    /// The store's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    /// The config file in use.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL the server and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM (a graceful shutdown); see [`TestServer::wait_exit`].
    pub fn terminate(&mut self) -> Result<()> {
        let pid = self.child.as_ref().context("server not running")?.id();
        let st = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .context("running kill")?;
        if !st.success() {
            bail!("kill -TERM {pid} failed: {st}");
        }
        Ok(())
    }

    /// Waits for the process to exit; its status. Fails after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut().context("server not running")?;
            if let Some(st) = c.try_wait()? {
                self.child = None;
                return Ok(st);
            }
            if Instant::now() >= deadline {
                bail!(
                    "server still running after {timeout:?}\nstderr tail:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the server again (after an exit) on the same config and data dir.
    pub async fn start_again(&mut self) -> Result<()> {
        self.kill();
        self.spawn().await
    }

    /// Kill (SIGKILL) and start again on the same config and data dir.
    /// Ports may change.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn().await
    }

    /// Connects an MQTT 3.1.1 client as a default user (password `pw-{user}`)
    /// and subscribes it to its reply topic and inbox.
    pub async fn user_v4(&self, user: &str, client_id: &str) -> Result<Client> {
        let mut c = client_v4(self.tcp_port(), user, &pw(user), client_id).await?;
        c.subscribe_own().await?;
        Ok(c)
    }

    /// Same as [`user_v4`](Self::user_v4) with MQTT 5.
    pub async fn user_v5(&self, user: &str, client_id: &str) -> Result<Client> {
        let mut c = client_v5(self.tcp_port(), user, &pw(user), client_id).await?;
        c.subscribe_own().await?;
        Ok(c)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A publish received by a client.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Bytes,
    /// MQTT 5 correlation data, if any.
    pub correlation: Option<Bytes>,
    /// MQTT 5 user properties.
    pub user_properties: Vec<(String, String)>,
}

impl Msg {
    /// The payload parsed as JSON (`Value::Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }
}

/// Control events from the connection task.
#[derive(Debug)]
enum Ctl {
    ConnAck,
    /// One flag per filter: granted or refused.
    SubAck(Vec<bool>),
    /// The event loop ended with this error.
    Closed(String),
}

enum Handle {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

static CORR: AtomicU64 = AtomicU64::new(1);

/// An MQTT client with its incoming publishes buffered.
pub struct Client {
    handle: Handle,
    pub user: String,
    pub client_id: String,
    rx: mpsc::UnboundedReceiver<Msg>,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    pending: VecDeque<Msg>,
    closed: Option<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects an MQTT 3.1.1 client; fails if the broker refuses the CONNECT.
pub async fn client_v4(port: u16, user: &str, password: &str, client_id: &str) -> Result<Client> {
    let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_credentials(user, password);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(4 << 20, 4 << 20);
    opts.set_clean_session(true);
    client_v4_with(opts, user).await
}

/// Connects an MQTT 3.1.1 client with options of the caller's (TLS, a
/// will...) acting as `user`; fails if the broker refuses the CONNECT.
pub async fn client_v4_with(opts: rumqttc::MqttOptions, user: &str) -> Result<Client> {
    let client_id = opts.client_id();
    let client_id = client_id.as_str();
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ctx, ctl) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        use rumqttc::{Event, Packet, SubscribeReasonCode};
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Msg {
                        topic: p.topic.clone(),
                        payload: p.payload.clone(),
                        correlation: None,
                        user_properties: Vec::new(),
                    });
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = ctx.send(Ctl::ConnAck);
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    let flags = s
                        .return_codes
                        .iter()
                        .map(|c| matches!(c, SubscribeReasonCode::Success(_)))
                        .collect();
                    let _ = ctx.send(Ctl::SubAck(flags));
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = ctx.send(Ctl::Closed(format!("{e:?}")));
                    break;
                }
            }
        }
    });
    finish_connect(Handle::V4(client), user, client_id, rx, ctl, task).await
}

/// Connects an MQTT 5 client; fails if the broker refuses the CONNECT.
pub async fn client_v5(port: u16, user: &str, password: &str, client_id: &str) -> Result<Client> {
    let mut opts = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_credentials(user, password);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(Some(4 << 20));
    opts.set_clean_start(true);
    let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ctx, ctl) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
        use rumqttc::v5::Event;
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let (correlation, user_properties) = match &p.properties {
                        Some(pr) => (pr.correlation_data.clone(), pr.user_properties.clone()),
                        None => (None, Vec::new()),
                    };
                    let _ = tx.send(Msg {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.clone(),
                        correlation,
                        user_properties,
                    });
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = ctx.send(Ctl::ConnAck);
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    let flags = s
                        .return_codes
                        .iter()
                        .map(|c| matches!(c, SubscribeReasonCode::Success(_)))
                        .collect();
                    let _ = ctx.send(Ctl::SubAck(flags));
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = ctx.send(Ctl::Closed(format!("{e:?}")));
                    break;
                }
            }
        }
    });
    finish_connect(Handle::V5(client), user, client_id, rx, ctl, task).await
}

async fn finish_connect(
    handle: Handle,
    user: &str,
    client_id: &str,
    rx: mpsc::UnboundedReceiver<Msg>,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    task: tokio::task::JoinHandle<()>,
) -> Result<Client> {
    let first = tokio::time::timeout(TIMEOUT, ctl.recv()).await;
    match first {
        Ok(Some(Ctl::ConnAck)) => Ok(Client {
            handle,
            user: user.into(),
            client_id: client_id.into(),
            rx,
            ctl,
            pending: VecDeque::new(),
            closed: None,
            task,
        }),
        Ok(Some(Ctl::Closed(e))) => {
            task.abort();
            Err(anyhow!("CONNECT of {user}/{client_id:?} failed: {e}"))
        }
        Ok(other) => {
            task.abort();
            Err(anyhow!(
                "CONNECT of {user}/{client_id:?}: unexpected {other:?}"
            ))
        }
        Err(_) => {
            task.abort();
            Err(anyhow!(
                "CONNECT of {user}/{client_id:?}: no ConnAck within {TIMEOUT:?}"
            ))
        }
    }
}

impl Client {
    /// `chat/users/{user}/replies/{client_id}`.
    pub fn reply_topic(&self) -> String {
        format!("chat/users/{}/replies/{}", self.user, self.client_id)
    }
    /// `chat/users/{user}/inbox`.
    pub fn inbox_topic(&self) -> String {
        format!("chat/users/{}/inbox", self.user)
    }

    /// Subscribes to the own reply topic and inbox; fails if refused.
    pub async fn subscribe_own(&mut self) -> Result<()> {
        let reply = self.reply_topic();
        let inbox = self.inbox_topic();
        self.subscribe_ok(&reply).await?;
        self.subscribe_ok(&inbox).await?;
        Ok(())
    }

    /// Sends an UNSUBSCRIBE (not waiting for its UNSUBACK: the server handles
    /// a connection's packets in order, so what this client sends next is
    /// handled after it).
    pub async fn unsubscribe(&mut self, filter: &str) -> Result<()> {
        match &self.handle {
            Handle::V4(c) => c.unsubscribe(filter).await?,
            Handle::V5(c) => c.unsubscribe(filter).await?,
        }
        Ok(())
    }

    /// Subscribes (QoS 1); `Ok(true)` if granted, `Ok(false)` if the SubAck
    /// refused it, `Err` if no SubAck came or the connection closed.
    pub async fn subscribe(&mut self, filter: &str) -> Result<bool> {
        match &self.handle {
            Handle::V4(c) => c.subscribe(filter, rumqttc::QoS::AtLeastOnce).await?,
            Handle::V5(c) => {
                c.subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                    .await?
            }
        }
        loop {
            match tokio::time::timeout(TIMEOUT, self.ctl.recv()).await {
                Ok(Some(Ctl::SubAck(flags))) => return Ok(flags.first().copied().unwrap_or(false)),
                Ok(Some(Ctl::ConnAck)) => continue,
                Ok(Some(Ctl::Closed(e))) => {
                    self.closed = Some(e.clone());
                    bail!(
                        "connection of {} closed while subscribing to {filter:?}: {e}",
                        self.client_id
                    )
                }
                Ok(None) => bail!(
                    "connection task of {} ended while subscribing to {filter:?}",
                    self.client_id
                ),
                Err(_) => bail!(
                    "no SubAck for {filter:?} within {TIMEOUT:?} ({})",
                    self.client_id
                ),
            }
        }
    }

    /// Subscribes and fails unless granted.
    pub async fn subscribe_ok(&mut self, filter: &str) -> Result<()> {
        if !self.subscribe(filter).await? {
            bail!("SUBSCRIBE {filter:?} by {} was refused", self.client_id);
        }
        Ok(())
    }

    /// Whether the connection has been seen to close (checks pending control events).
    pub fn is_closed(&mut self) -> Option<String> {
        while let Ok(c) = self.ctl.try_recv() {
            if let Ctl::Closed(e) = c {
                self.closed = Some(e);
            }
        }
        if self.closed.is_none() && self.task.is_finished() {
            self.closed = Some("connection task finished".into());
        }
        self.closed.clone()
    }

    /// Publishes a raw payload (QoS 1).
    pub async fn publish_raw(&self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<()> {
        let payload: Vec<u8> = payload.into();
        match &self.handle {
            Handle::V4(c) => {
                c.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                    .await?
            }
            Handle::V5(c) => {
                c.publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await?
            }
        }
        Ok(())
    }

    /// Publishes JSON (QoS 1).
    pub async fn publish_json(&self, topic: &str, v: &Value) -> Result<()> {
        self.publish_raw(topic, serde_json::to_vec(v)?).await
    }

    /// MQTT 5 only: publish with properties.
    pub async fn publish_v5(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        props: rumqttc::v5::mqttbytes::v5::PublishProperties,
    ) -> Result<()> {
        let payload: Vec<u8> = payload.into();
        match &self.handle {
            Handle::V5(c) => {
                c.publish_with_properties(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                    props,
                )
                .await?
            }
            Handle::V4(_) => bail!("publish_v5 on an MQTT 3.1.1 client"),
        }
        Ok(())
    }

    /// Sends a chat message `{"msg_id","body"}` to `room` as this user.
    pub async fn send(&self, room: &str, msg_id: &str, body: &str) -> Result<()> {
        let topic = format!("chat/rooms/{room}/send/{}", self.user);
        self.publish_json(&topic, &json!({"msg_id": msg_id, "body": body}))
            .await
    }

    /// Waits for a publish matching `pred`; non-matching ones are kept for later calls.
    pub async fn recv_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Msg) -> bool,
    ) -> Result<Msg> {
        if let Some(i) = self.pending.iter().position(&mut pred) {
            return Ok(self.pending.remove(i).expect("index valid"));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => {
                    if pred(&m) {
                        return Ok(m);
                    }
                    self.pending.push_back(m);
                }
                Ok(None) => {
                    let closed = self.is_closed();
                    bail!(
                        "{}: connection ended while waiting for {what} (closed: {closed:?}); unmatched: {}",
                        self.client_id,
                        self.pending_summary()
                    )
                }
                Err(_) => bail!(
                    "{}: timed out after {timeout:?} waiting for {what}; unmatched messages: {}",
                    self.client_id,
                    self.pending_summary()
                ),
            }
        }
    }

    /// Asserts nothing matching `pred` arrives within `wait`.
    pub async fn expect_none(
        &mut self,
        what: &str,
        wait: Duration,
        pred: impl FnMut(&Msg) -> bool,
    ) -> Result<()> {
        match self.recv_until(what, wait, pred).await {
            Ok(m) => bail!(
                "{}: expected no {what}, but got {} {}",
                self.client_id,
                m.topic,
                String::from_utf8_lossy(&m.payload)
            ),
            Err(_) => Ok(()),
        }
    }

    fn pending_summary(&self) -> String {
        let v: Vec<String> = self
            .pending
            .iter()
            .rev()
            .take(10)
            .map(|m| {
                let p = String::from_utf8_lossy(&m.payload);
                let p: String = p.chars().take(300).collect();
                format!("[{} {}]", m.topic, p)
            })
            .collect();
        format!(
            "{} buffered, newest first: {}",
            self.pending.len(),
            v.join(" ")
        )
    }

    /// Drops everything buffered so far.
    pub fn clear(&mut self) {
        self.pending.clear();
        while self.rx.try_recv().is_ok() {}
    }

    /// Waits for an event on `chat/rooms/{room}/events` matching `pred`.
    pub async fn recv_event(
        &mut self,
        room: &str,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        let topic = format!("chat/rooms/{room}/events");
        let m = self
            .recv_until(&format!("event on {topic}"), TIMEOUT, |m| {
                m.topic == topic && pred(&m.json())
            })
            .await?;
        Ok(m.json())
    }

    /// Waits for the echo of `msg_id` from `from` in `room`.
    pub async fn recv_msg(&mut self, room: &str, from: &str, msg_id: &str) -> Result<Value> {
        let topic = format!("chat/rooms/{room}/events");
        let m = self
            .recv_until(
                &format!("echo of {from}/{msg_id} on {topic}"),
                TIMEOUT,
                |m| {
                    let v = m.json();
                    m.topic == topic && v["msg_id"] == msg_id && v["from"] == from
                },
            )
            .await?;
        Ok(m.json())
    }

    /// Waits for an inbox message matching `pred`.
    pub async fn recv_inbox(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        let topic = self.inbox_topic();
        let m = self
            .recv_until(what, TIMEOUT, |m| m.topic == topic && pred(&m.json()))
            .await?;
        Ok(m.json())
    }

    /// Sends a request with payload `reply`/`corr` fields and returns the whole
    /// reply (`{"corr","ok",...}`).
    pub async fn rpc_raw(&mut self, method: &str, params: Value) -> Result<Value> {
        let corr = format!("c{}", CORR.fetch_add(1, Ordering::Relaxed));
        let mut req = match params {
            Value::Object(m) => m,
            Value::Null => serde_json::Map::new(),
            other => bail!("rpc params must be an object, got {other}"),
        };
        let reply = self.reply_topic();
        req.insert("reply".into(), Value::String(reply.clone()));
        req.insert("corr".into(), Value::String(corr.clone()));
        let topic = format!("chat/rpc/{}/{method}", self.user);
        self.publish_json(&topic, &Value::Object(req)).await?;
        let m = self
            .recv_until(
                &format!("reply to {method} (corr {corr}) on {reply}"),
                TIMEOUT,
                |m| m.topic == reply && m.json()["corr"] == corr.as_str(),
            )
            .await?;
        Ok(m.json())
    }

    /// Sends a request and returns its `result`; fails if the reply is not ok.
    pub async fn rpc(&mut self, method: &str, params: Value) -> Result<Value> {
        let r = self.rpc_raw(method, params.clone()).await?;
        if r["ok"] != true {
            bail!("{method} {params} by {} failed: {r}", self.user);
        }
        Ok(r["result"].clone())
    }

    /// Sends a request that must fail and returns the error `code`.
    pub async fn rpc_err(&mut self, method: &str, params: Value) -> Result<String> {
        let r = self.rpc_raw(method, params.clone()).await?;
        if r["ok"] != false {
            bail!(
                "{method} {params} by {} should have failed, got {r}",
                self.user
            );
        }
        r["error"]["code"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("error reply without error.code: {r}"))
    }

    /// MQTT 5 request using the response topic and correlation data
    /// properties; the payload has no `reply`/`corr`. Returns the reply message.
    pub async fn rpc_v5(&mut self, method: &str, payload: impl Into<Vec<u8>>) -> Result<Msg> {
        let corr = format!("v5-{}", CORR.fetch_add(1, Ordering::Relaxed));
        let reply = self.reply_topic();
        let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
            response_topic: Some(reply.clone()),
            correlation_data: Some(Bytes::from(corr.clone().into_bytes())),
            ..Default::default()
        };
        let topic = format!("chat/rpc/{}/{method}", self.user);
        self.publish_v5(&topic, payload, props).await?;
        let want = Bytes::from(corr.clone().into_bytes());
        self.recv_until(
            &format!("v5 reply to {method} (correlation {corr}) on {reply}"),
            TIMEOUT,
            |m| m.topic == reply && m.correlation.as_ref() == Some(&want),
        )
        .await
    }

    /// Head seq of a room via `history`.
    pub async fn head(&mut self, room: &str) -> Result<u64> {
        let r = self
            .rpc("history", json!({"room": room, "limit": 1}))
            .await?;
        r["head"]
            .as_u64()
            .ok_or_else(|| anyhow!("history without numeric head: {r}"))
    }

    /// Disconnects cleanly.
    pub async fn disconnect(&self) {
        let _ = match &self.handle {
            Handle::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Handle::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}

/// `seq` of an event as u64 (panics with the event if absent).
/// A plain HTTP/1.1 GET on 127.0.0.1: (status code, body).
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    http_request(port, "GET", path, None, "").await
}

/// One HTTP/1.1 request (`Connection: close`), with a bearer token if any
/// and a JSON body if not empty: (status, body).
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(("127.0.0.1", port)))
        .await
        .context("http connect timeout")??;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out))
        .await
        .context("http read timeout")??;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP head in {text:?}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// The value of a Prometheus sample `name{labels}` (labels as printed, or
/// empty) in a `/metrics` body; 0 when absent.
pub fn metric(body: &str, name_and_labels: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name_and_labels).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

pub fn seq_of(v: &Value) -> u64 {
    v["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("event without numeric seq: {v}"))
}

/// Creates a group room `room` by `owner` with `members` invited, and has
/// each member join. The clients must be connected users.
pub async fn group_room(
    owner: &mut Client,
    room: &str,
    members: &mut [&mut Client],
) -> Result<Value> {
    let names: Vec<String> = members.iter().map(|c| c.user.clone()).collect();
    let r = owner
        .rpc(
            "rooms.create",
            json!({"room": room, "kind": "group", "members": names, "title": room}),
        )
        .await?;
    for m in members.iter_mut() {
        m.rpc("rooms.join", json!({"room": room})).await?;
    }
    Ok(r)
}

/// Waits until `cond` returns true, polling every 50 ms.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $timeout:expr, $($msg:tt)+) => {{
        let deadline = ::std::time::Instant::now() + $timeout;
        loop {
            if $cond { break; }
            if ::std::time::Instant::now() > deadline {
                panic!("condition not met within {:?}: {}", $timeout, format!($($msg)+));
            }
            ::tokio::time::sleep(::std::time::Duration::from_millis(50)).await;
        }
    }};
}

/// Whether a program is on PATH.
pub fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// Runs `python3 -c script args...` with a timeout; returns (status ok, stdout, stderr).
pub async fn python(
    script: &str,
    args: &[String],
    timeout: Duration,
) -> Result<(bool, String, String)> {
    let child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawning python3")?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("python3 script did not finish within {timeout:?}"))??;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Whether a paho-mqtt test can run: `false` (and a SKIPPED line) when
/// paho-mqtt is not importable, a failure instead where CI requires it
/// (`CHATMQ_PAHO_REQUIRED`, set by `.ci/run`).
pub async fn paho_or_skip() -> bool {
    match paho_available().await {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var_os("CHATMQ_PAHO_REQUIRED").is_none(),
                "CHATMQ_PAHO_REQUIRED is set but paho-mqtt is not importable: {why}"
            );
            println!("SKIPPED: python paho-mqtt not importable: {why}");
            false
        }
    }
}

/// Whether `import paho.mqtt.client` works; `Err(reason)` if not.
pub async fn paho_available() -> std::result::Result<(), String> {
    match python("import paho.mqtt.client", &[], Duration::from_secs(20)).await {
        Ok((true, _, _)) => Ok(()),
        Ok((false, _, err)) => Err(err.lines().last().unwrap_or("import failed").to_string()),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// A paho-mqtt (MQTT 3.1.1 over WebSocket, path /mqtt) script: connects,
/// subscribes to argv[6], then publishes argv[8] to argv[7] once the SubAck
/// arrives, and prints the first message received on the subscription as
/// one JSON line `{"topic":..,"payload":..}`.
/// argv: host port user password client_id sub_topic pub_topic pub_payload timeout_secs
pub const PAHO_WS_SCRIPT: &str = r#"
import sys, json, time
import paho.mqtt.client as mqtt
host, port, user, pw, cid, sub, pub, payload, tmo = sys.argv[1:10]
port = int(port); tmo = float(tmo)
state = {"connected": None, "msg": None, "subacked": False}
try:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, transport="websockets", protocol=mqtt.MQTTv311)
except AttributeError:
    c = mqtt.Client(client_id=cid, transport="websockets", protocol=mqtt.MQTTv311)
c.ws_set_options(path="/mqtt")
c.username_pw_set(user, pw)
def on_connect(client, userdata, flags, rc, *rest):
    state["connected"] = str(rc)
    client.subscribe(sub, qos=1)
def on_subscribe(client, userdata, mid, granted, *rest):
    state["subacked"] = str(granted)
    if pub:
        client.publish(pub, payload, qos=1)
def on_message(client, userdata, msg):
    if state["msg"] is None:
        state["msg"] = {"topic": msg.topic, "payload": msg.payload.decode("utf-8", "replace")}
c.on_connect = on_connect
c.on_subscribe = on_subscribe
c.on_message = on_message
deadline = time.time() + tmo
c.connect(host, port, keepalive=30)
c.loop_start()
while time.time() < deadline and state["msg"] is None:
    time.sleep(0.05)
c.loop_stop()
print(json.dumps({"connected": state["connected"], "subacked": state["subacked"], "msg": state["msg"]}))
sys.exit(0 if state["msg"] is not None else 3)
"#;

/// Publishes a stream of sends to `room` as `user` on `port` (rumqttc, QoS 1,
/// up to 10 unacknowledged, msg_ids `{user}-0`, `{user}-1`, ...) until `stop`
/// is set, then waits up to [`TIMEOUT`] for the last acknowledgements.
/// Returns the msg_ids the broker acknowledged (PUBACK): what the server
/// promised to keep. A lost connection ends the stream early.
pub async fn send_stream(
    port: u16,
    user: &str,
    room: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<std::collections::BTreeSet<String>> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
    let n = CORR.fetch_add(1, Ordering::Relaxed);
    let mut opts = MqttOptions::new(format!("{user}-stream-{n}"), "127.0.0.1", port);
    opts.set_credentials(user, pw(user));
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut el) = AsyncClient::new(opts, 100);
    let topic = format!("chat/rooms/{room}/send/{user}");
    let mut sent: std::collections::HashMap<u16, String> = std::collections::HashMap::new();
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut acked = std::collections::BTreeSet::new();
    let (mut next, mut in_flight) = (0u32, 0usize);
    let mut drain_until: Option<Instant> = None;
    loop {
        if drain_until.is_none() && stop.load(Ordering::Relaxed) {
            drain_until = Some(Instant::now() + TIMEOUT);
        }
        match drain_until {
            Some(t) if in_flight == 0 || Instant::now() > t => return Ok(acked),
            Some(_) => {}
            None => {
                while in_flight < 10 {
                    let id = format!("{user}-{next}");
                    next += 1;
                    let body = json!({"msg_id": id, "body": "stream"}).to_string();
                    client
                        .publish(topic.clone(), QoS::AtLeastOnce, false, body)
                        .await?;
                    queue.push_back(id);
                    in_flight += 1;
                }
            }
        }
        let polled = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
        match polled {
            Err(_) => {}
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                if let Some(id) = queue.pop_front() {
                    sent.insert(pkid, id);
                }
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(a)))) => {
                if let Some(id) = sent.remove(&a.pkid) {
                    acked.insert(id);
                    in_flight -= 1;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Ok(acked),
        }
    }
}

/// Reads a room's whole history (`after` pages) as `reader`, asserting it is
/// gap-free from 1 to the head and holds each msg_id once; returns msg_id ->
/// seq of the messages, and the head.
pub async fn read_whole_room(
    reader: &mut Client,
    room: &str,
) -> Result<(std::collections::HashMap<String, u64>, u64)> {
    let mut stored = std::collections::HashMap::new();
    let mut after = 0u64;
    loop {
        let page = reader
            .rpc(
                "history",
                json!({"room": room, "after": after, "limit": 1000}),
            )
            .await?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            let seq = seq_of(e);
            if seq != after + 1 {
                bail!("gap in {room}: seq {seq} after {after}");
            }
            after = seq;
            if e["type"] == "message" {
                if let Some(id) = e["msg_id"].as_str() {
                    if let Some(first) = stored.insert(id.to_owned(), seq) {
                        bail!("{id} stored twice in {room}: at {first} and {seq}");
                    }
                }
            }
        }
        if events.is_empty() || page["has_more"] != json!(true) {
            let head = page["head"].as_u64().unwrap_or(0);
            if after != head {
                bail!("history of {room} stops at {after}, head is {head}");
            }
            return Ok((stored, head));
        }
    }
}
