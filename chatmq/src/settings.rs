//! The whole server's settings, layered with the `config` crate:
//!
//! 1. the commented defaults compiled into the binary ([`DEFAULT_CONFIG`],
//!    printed by `chatmq generate-config`);
//! 2. each `--config FILE`, in order (e.g. a ConfigMap, then a Secret);
//! 3. environment variables `CHAT__SECTION__KEY` (`__` between levels; names
//!    are case-insensitive, so put case-sensitive map keys such as user ids
//!    in a file);
//! 4. a few command-line flags, applied by the binary.
//!
//! An invalid value is reported with the dotted key it belongs to.

use broker::config::BrokerConfig;
use chat_bridge::bridge::cluster::ClusterConfig;
use chat_bridge::bridge::BridgeConfig;
use chat_bridge::store::embedded::FsyncPolicy;
use chat_bridge::store::scylla::ScyllaConfig;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The defaults, with a comment on every key.
pub const DEFAULT_CONFIG: &str = include_str!("../chatmq.toml");

/// Prefix of the environment variables.
pub const ENV_PREFIX: &str = "CHAT";

/// Every section.
#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub broker: BrokerConfig,
    pub bridge: BridgeConfig,
    pub store: StoreSettings,
    pub server: ServerSettings,
    pub cluster: ClusterConfig,
}

/// What one process runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Broker, bridge and store in one process; the bridge on an in-process
    /// router link.
    #[default]
    All,
    /// The MQTT broker alone; its bridge runs apart and tells it about
    /// memberships through `{prefix}/hooks/access`.
    Broker,
    /// The bridge alone: an MQTT client of `bridge.broker`, and the store.
    Bridge,
}

impl Role {
    pub fn runs_broker(self) -> bool {
        matches!(self, Role::All | Role::Broker)
    }
    pub fn runs_bridge(self) -> bool {
        matches!(self, Role::All | Role::Bridge)
    }
}

/// `[server]`: the process around broker and bridge.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// What this process runs (`chatmq all|broker|bridge` overrides it).
    pub role: Role,
    /// `/metrics`, `/healthz`, `/readyz`. `None` disables the endpoint.
    pub http: Option<SocketAddr>,
    /// Longest time a graceful shutdown (SIGTERM/SIGINT) may take.
    pub grace_period_ms: u64,
    /// The demo chat page on `http` (`/`), for a process that runs a broker.
    pub demo: bool,
    /// MQTT.js's ESM bundle for the demo page; "" looks for
    /// `clients/js/node_modules/mqtt/dist/mqtt.esm.js` under the working
    /// directory, and the page loads it from a CDN when there is none.
    pub demo_mqtt_js: PathBuf,
    /// The admin HTTP API's bearer token (`/admin/v1`, `chatmq all` only);
    /// empty: no admin API. Set it from the environment
    /// (`CHAT__SERVER__ADMIN_TOKEN`), not a file in a repository.
    pub admin_token: String,
    /// The chat account the admin API acts as (added to `bridge.admin_users`).
    /// Its `@` keeps any MQTT user from being it: chat user ids over MQTT
    /// are `A-Z a-z 0-9 _ . -`.
    pub admin_user: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            role: Role::All,
            http: Some(SocketAddr::from(([0, 0, 0, 0], 9090))),
            grace_period_ms: 20_000,
            demo: true,
            demo_mqtt_js: PathBuf::new(),
            admin_token: String::new(),
            admin_user: "admin@chatmq".into(),
        }
    }
}

/// Which store keeps the room streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// fjall on local disk under `data_dir`.
    #[default]
    Embedded,
    /// ScyllaDB (`[store.scylla]`); run `chatmq migrate` first.
    Scylla,
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    pub backend: Backend,
    /// Directory of the embedded store (`--data-dir` overrides it).
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub scylla: ScyllaConfig,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            backend: Backend::Embedded,
            data_dir: PathBuf::from("data"),
            fsync: FsyncPolicy::Always,
            scylla: ScyllaConfig::default(),
        }
    }
}

/// Loads the defaults, then `files` in order, then `env` (pass
/// `std::env::vars()`; tests pass their own).
pub fn load(
    files: &[PathBuf],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, String> {
    let mut b = config::Config::builder().add_source(config::File::from_str(
        DEFAULT_CONFIG,
        config::FileFormat::Toml,
    ));
    for p in files {
        if !p.is_file() {
            return Err(format!("config file {}: not found", p.display()));
        }
        b = b.add_source(config::File::from(p.as_path()).format(config::FileFormat::Toml));
    }
    let vars: HashMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .collect();
    b = b.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(vars)),
    );
    let c = b.build().map_err(|e| e.to_string())?;
    let s = serde_path_to_error::deserialize::<_, Settings>(c).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner().to_string();
        if key.is_empty() || key == "." {
            inner
        } else {
            format!("key `{key}`: {inner}")
        }
    })?;
    check_prefix(&s.broker.prefix)?;
    s.validate()?;
    Ok(s)
}

impl Settings {
    /// Checks values the types alone do not: the bridge's limits, and that
    /// the broker's packet limit lets a payload of the bridge's limit through
    /// (with room for the packet's headers), so an oversize send reaches the
    /// bridge and is answered `too_large` instead of cutting the connection.
    pub fn validate(&self) -> Result<(), String> {
        self.bridge.validate()?;
        self.cluster.validate()?;
        let spread = self.broker.limits.shutdown_spread_ms;
        if spread > 0 && spread >= self.server.grace_period_ms {
            return Err(format!(
                "key `broker.limits.shutdown_spread_ms`: {spread} must be below \
                 server.grace_period_ms ({}), which also covers the drain after it",
                self.server.grace_period_ms
            ));
        }
        let need = self.bridge.payload_max_bytes + chat_bridge::bridge::PACKET_OVERHEAD;
        let have = self.broker.limits.max_packet_bytes;
        if have < need {
            return Err(format!(
                "key `broker.limits.max_packet_bytes`: {have} is below bridge.payload_max_bytes \
                 ({}) + {} bytes of packet headers; raise it to at least {need} or lower \
                 bridge.payload_max_bytes",
                self.bridge.payload_max_bytes,
                chat_bridge::bridge::PACKET_OVERHEAD
            ));
        }
        Ok(())
    }
}

/// The prefix is one topic level of `A-Z a-z 0-9 _ -` (as the Helm chart's
/// schema says): the authorizer tells the chat namespace from the rest by
/// the first level, so with `org/chat` a filter `org/#` would pass as a topic
/// outside the prefix and read every user's inbox (found by the
/// `authorizer` fuzz target). `$`, wildcards and empty levels are refused too.
fn check_prefix(p: &str) -> Result<(), String> {
    if !p.is_empty()
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    {
        Ok(())
    } else {
        Err(format!(
            "key `broker.prefix`: {p:?} must be one topic level of A-Z a-z 0-9 _ -"
        ))
    }
}

#[cfg(test)]
mod tests;
