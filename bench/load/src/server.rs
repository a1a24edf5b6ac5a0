//! The servers under test: `chatmq` with a generated config (limits raised
//! for load, users by JWT) and Mosquitto with a generated config; plus the
//! process statistics read from `/proc` (CPU time, RSS, peak RSS).

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The HS256 secret the generated config trusts; tokens are minted with it.
pub const JWT_SECRET: &str = "chatmq-bench-secret";

/// Linux reports /proc CPU times in USER_HZ ticks, 100 on every platform we run.
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime, seconds.
    pub cpu_secs: f64,
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// VmHWM (peak RSS over the process's life), KiB.
    pub hwm_kib: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status` (`pid` None = this process).
pub fn proc_sample(pid: Option<u32>) -> Result<ProcSample> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".into(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).with_context(|| dir.clone())?;
    // fields after the parenthesised command name; utime and stime are fields 14 and 15
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected {dir}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> u64 { f.get(i).and_then(|s| s.parse().ok()).unwrap_or(0) };
    let cpu_secs = (ticks(11) + ticks(12)) as f64 / TICKS_PER_SEC;
    let status = std::fs::read_to_string(format!("{dir}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcSample {
        cpu_secs,
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    })
}

/// Seconds of CPU the whole machine spent busy (all cores; /proc/stat:
/// everything but idle and iowait).
pub fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    total.saturating_sub(idle) as f64 / TICKS_PER_SEC
}

/// A server process the benchmark started; killed on drop.
pub struct Server {
    pub name: String,
    pub port: u16,
    /// `/metrics` (0: none printed).
    pub http_port: u16,
    child: Child,
    log: PathBuf,
}

/// The store's fsync policy, as the config spells it.
pub fn fsync_toml(policy: &str) -> Result<String> {
    Ok(match policy {
        "always" | "never" => format!("\"{policy}\""),
        p => match p.strip_prefix("interval") {
            Some(ms) => format!(
                "{{ intervalms = {} }}",
                ms.trim_start_matches(':').parse::<u64>()?
            ),
            None => bail!("fsync must be always, never or intervalN (ms), got {p:?}"),
        },
    })
}

/// The chatmq config the benchmark runs: loopback listeners, JWT users, the
/// rate limits the load would hit lifted, packet and connection limits as
/// shipped (max_connections 30000: the storm's reconnects overlap the
/// 10,000 leaving), the given fsync policy.
pub fn chatmq_config(fsync: &str) -> Result<String> {
    Ok(format!(
        r#"[broker]
prefix = "chat"
tcp = "127.0.0.1:0"
ws = "127.0.0.1:0"
open_topics = true

[broker.limits]
connect_timeout_ms = 60000
connections_per_user = 100000
max_connections = 30000
connects_per_sec_per_ip = 1000000
publishes_per_sec = 1000000000

[broker.auth]
demo_users = false

[broker.auth.jwt]
hs256_secret = "{JWT_SECRET}"

[server]
http = "127.0.0.1:0"

[bridge]
sends_per_sec = 1000000.0
sends_burst = 1000000.0

[store]
fsync = {}
"#,
        fsync_toml(fsync)?
    ))
}

/// [`chatmq_config`] on the ScyllaDB store: the CQL node `uri`, keyspace
/// `keyspace` (replication factor 1: one test node).
pub fn chatmq_cql_config(uri: &str, keyspace: &str) -> Result<String> {
    Ok(format!(
        "{}backend = \"scylla\"\n\n[store.scylla]\nnodes = \"{uri}\"\nkeyspace = \"{keyspace}\"\n\
         replication = \"{{'class': 'SimpleStrategy', 'replication_factor': 1}}\"\n",
        chatmq_config("always")?
    ))
}

/// Runs `chatmq migrate` with the config text `config_text` (written to
/// `dir/migrate.toml`); fails with its output when it fails.
pub fn chatmq_migrate(bin: &Path, dir: &Path, config_text: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("migrate.toml");
    std::fs::write(&config, config_text)?;
    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .arg("migrate")
        .output()
        .with_context(|| format!("running {} migrate", bin.display()))?;
    if !out.status.success() {
        bail!(
            "chatmq migrate failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `GET /metrics` on `127.0.0.1:port`: the body.
pub fn scrape(port: u16) -> Result<String> {
    use std::io::{Read, Write};
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    c.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned()))
}

/// The value of an unlabelled sample `name` in a Prometheus text body (0 if absent).
pub fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| rest.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

impl Server {
    /// Starts `chatmq` on `dir/data` with [`chatmq_config`]; waits for `ready`.
    pub fn chatmq(bin: &Path, dir: &Path, fsync: &str) -> Result<Server> {
        Self::chatmq_with(bin, dir, &chatmq_config(fsync)?)
    }

    /// Starts `chatmq` on `dir/data` with the config text `config`; waits for `ready`.
    pub fn chatmq_with(bin: &Path, dir: &Path, config_text: &str) -> Result<Server> {
        Self::chatmq_role(bin, dir, config_text, None)
    }

    /// [`Server::chatmq_with`] in a role (`broker`, `bridge`; `None`: the
    /// config's). A bridge has no MQTT port.
    pub fn chatmq_role(
        bin: &Path,
        dir: &Path,
        config_text: &str,
        role: Option<&str>,
    ) -> Result<Server> {
        if !bin.is_file() {
            bail!(
                "{} not found: build it first (`cargo build --release -p chatmq`) or pass --server-bin",
                bin.display()
            );
        }
        let bin = &std::fs::canonicalize(bin)?;
        std::fs::create_dir_all(dir)?;
        let config = dir.join("chatmq.toml");
        std::fs::write(&config, config_text)?;
        let log = dir.join("chatmq.log");
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(role)
            .current_dir(dir)
            .env(
                "CHAT_LOG",
                std::env::var("CHAT_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // drain stdout for the whole life of the process
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut server = Server {
            name: "chatmq".into(),
            port: 0,
            http_port: 0,
            child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.trim() == "ready" => break,
                Ok(line) => {
                    if let Some(addr) = line.trim().strip_prefix("listening tcp ") {
                        server.port = addr.rsplit(':').next().unwrap_or("").parse()?;
                    }
                    if let Some(addr) = line.trim().strip_prefix("listening http ") {
                        server.http_port = addr.rsplit(':').next().unwrap_or("").parse()?;
                    }
                }
                Err(_) => bail!(
                    "chatmq did not print `ready`; log tail:\n{}",
                    server.log_tail()
                ),
            }
        }
        if server.port == 0 && role != Some("bridge") {
            bail!("chatmq printed no `listening tcp` line");
        }
        Ok(server)
    }

    /// Starts Mosquitto on a free loopback port with a generated config
    /// (no persistence, anonymous, queues large enough not to drop under
    /// load, TCP_NODELAY like chatmq's listeners).
    pub fn mosquitto(bin: &Path, dir: &Path) -> Result<Server> {
        std::fs::create_dir_all(dir)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nset_tcp_nodelay true\nallow_anonymous true\npersistence false\n\
                 max_inflight_messages 100\nmax_queued_messages 100000\n\
                 log_dest stderr\nlog_type error\nlog_type warning\n"
            ),
        )?;
        let log = dir.join("mosquitto.log");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut server = Server {
            name: "mosquitto".into(),
            port,
            http_port: 0,
            child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || server.child.try_wait()?.is_some() {
                bail!(
                    "mosquitto did not listen on {port}; log:\n{}",
                    server.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sample(&self) -> Result<ProcSample> {
        proc_sample(Some(self.pid()))
    }

    /// Fails if the process has exited (with the log's tail).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); log tail:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The most frequent WARN/ERROR kinds in the server's log (numbers
    /// blanked), the demo-users warning left out.
    pub fn log_problems(&self) -> Vec<(String, u64)> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let kinds = log.lines().filter_map(|l| {
            let l = strip_ansi(l);
            let at = l.find(" WARN ").or_else(|| l.find(" ERROR "))?;
            let msg = l[at..].trim_start();
            (!msg.contains("demo users")).then(|| crate::message_kind(msg, 140))
        });
        crate::top_kinds(kinds, 4)
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}
