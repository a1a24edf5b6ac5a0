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
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            role: Role::All,
            http: Some(SocketAddr::from(([0, 0, 0, 0], 9090))),
            grace_period_ms: 20_000,
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
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_match_the_types_defaults() {
        let s = load(&[], env(&[])).expect("defaults load");
        assert_eq!(s.broker.prefix, "chat");
        assert_eq!(s.server.http, ServerSettings::default().http);
        assert_eq!(s.server.grace_period_ms, 20_000);
        assert_eq!(s.server.role, Role::All);
        assert_eq!(s.store.backend, Backend::Embedded);
        assert_eq!(s.store.fsync, FsyncPolicy::Always);
        assert_eq!(s.bridge.batch, 512);
        let (b, d) = (&s.broker, BrokerConfig::default());
        assert_eq!(b.secrets_reload_secs, d.secrets_reload_secs);
        assert_eq!(b.auth.password_cache_secs, d.auth.password_cache_secs);
    }

    /// The environment variable names are part of the operator interface
    /// (Helm chart, docs): this pins them.
    #[test]
    fn env_variable_names_are_pinned() {
        let s = load(
            &[],
            env(&[
                ("CHAT__BROKER__PREFIX", "talk"),
                ("CHAT__BROKER__TCP", "127.0.0.1:1999"),
                ("CHAT__BROKER__LIMITS__MAX_CONNECTIONS", "7"),
                ("CHAT__BROKER__LIMITS__PUBLISHES_PER_SEC", "9"),
                ("CHAT__BROKER__AUTH__JWT__HS256_SECRET", "s3cret"),
                ("CHAT__BRIDGE__BROKER", "broker.svc:1883"),
                ("CHAT__BRIDGE__PASSWORD", "bridge-pw"),
                ("CHAT__BRIDGE__SENDS_PER_SEC", "2.5"),
                ("CHAT__SERVER__HTTP", "127.0.0.1:9999"),
                ("CHAT__SERVER__GRACE_PERIOD_MS", "1234"),
                ("CHAT__STORE__BACKEND", "embedded"),
                ("CHAT__STORE__DATA_DIR", "/var/lib/chatmq"),
                ("CHAT__STORE__FSYNC", "never"),
                ("CHAT__STORE__SCYLLA__NODES", "10.0.0.1:9042,10.0.0.2:9042"),
                ("CHAT__STORE__SCYLLA__KEYSPACE", "chat_prod"),
                ("CHAT__STORE__SCYLLA__LOCAL_DC", "dc1"),
                ("CHAT__STORE__SCYLLA__PASSWORD", "scylla-pw"),
                ("CHAT__STORE__SCYLLA__REQUEST_TIMEOUT_MS", "2500"),
                ("OTHER__BROKER__PREFIX", "ignored"),
            ]),
        )
        .expect("env applies");
        assert_eq!(s.broker.prefix, "talk");
        assert_eq!(s.broker.tcp, Some("127.0.0.1:1999".parse().expect("addr")));
        assert_eq!(s.broker.limits.max_connections, 7);
        assert_eq!(s.broker.limits.publishes_per_sec, 9);
        assert_eq!(
            s.broker.auth.jwt.and_then(|j| j.hs256_secret).as_deref(),
            Some("s3cret")
        );
        assert_eq!(s.bridge.broker, "broker.svc:1883");
        assert_eq!(s.bridge.password, "bridge-pw");
        assert_eq!(s.bridge.sends_per_sec, 2.5);
        assert_eq!(s.server.http, Some("127.0.0.1:9999".parse().expect("addr")));
        assert_eq!(s.server.grace_period_ms, 1234);
        assert_eq!(s.store.data_dir, PathBuf::from("/var/lib/chatmq"));
        assert_eq!(s.store.fsync, FsyncPolicy::Never);
        assert_eq!(s.store.scylla.nodes, ["10.0.0.1:9042", "10.0.0.2:9042"]);
        assert_eq!(s.store.scylla.keyspace, "chat_prod");
        assert_eq!(s.store.scylla.local_dc, "dc1");
        assert_eq!(s.store.scylla.password, "scylla-pw");
        assert_eq!(s.store.scylla.request_timeout_ms, 2500);
        let s = load(&[], env(&[("CHAT__STORE__BACKEND", "scylla")])).expect("scylla");
        assert_eq!(s.store.backend, Backend::Scylla);
    }

    #[test]
    fn bridge_limits_load_and_bad_values_name_their_key() {
        let s = load(&[], env(&[])).expect("defaults");
        assert_eq!(
            s.bridge.limits(),
            chat_bridge::wire::Limits::default(),
            "the defaults are PROTOCOL.md's"
        );
        let s = load(
            &[],
            env(&[
                ("CHAT__BRIDGE__BODY_MAX_BYTES", "100"),
                ("CHAT__BRIDGE__META_MAX_BYTES", "50"),
                ("CHAT__BRIDGE__PAYLOAD_MAX_BYTES", "4096"),
                ("CHAT__BRIDGE__HISTORY_LIMIT_DEFAULT", "20"),
                ("CHAT__BRIDGE__HISTORY_LIMIT_MAX", "200"),
            ]),
        )
        .expect("small limits load");
        let l = s.bridge.limits();
        assert_eq!((l.body_max, l.meta_max, l.payload_max), (100, 50, 4096));
        assert_eq!((l.history_default, l.history_max), (20, 200));
        for (key, value) in [
            ("BODY_MAX_BYTES", "0"),
            ("BODY_MAX_BYTES", "70000"),
            ("META_MAX_BYTES", "70000"),
            ("PAYLOAD_MAX_BYTES", "100"),
            ("PAYLOAD_MAX_BYTES", "1048576"),
            ("HISTORY_LIMIT_MAX", "0"),
            ("HISTORY_LIMIT_MAX", "5000"),
            ("HISTORY_LIMIT_DEFAULT", "1001"),
            ("BATCH", "0"),
            ("SENDS_BURST", "0.5"),
            ("SENDS_PER_SEC", "NaN"),
        ] {
            let var = format!("CHAT__BRIDGE__{key}");
            let err = load(&[], env(&[(var.as_str(), value)]))
                .err()
                .unwrap_or_else(|| panic!("{var}={value} must be refused"));
            let want = format!("`bridge.{}`", key.to_lowercase());
            assert!(err.contains(&want), "{var}={value}: {err}");
        }
        // the broker's packet limit follows the payload limit
        let err = load(&[], env(&[("CHAT__BRIDGE__PAYLOAD_MAX_BYTES", "131072")]))
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("`broker.limits.max_packet_bytes`") && err.contains("132096"),
            "{err}"
        );
        load(
            &[],
            env(&[
                ("CHAT__BRIDGE__PAYLOAD_MAX_BYTES", "131072"),
                ("CHAT__BROKER__LIMITS__MAX_PACKET_BYTES", "132096"),
            ]),
        )
        .expect("raised together");
        let err = load(
            &[],
            env(&[("CHAT__BROKER__LIMITS__MAX_PACKET_BYTES", "4096")]),
        )
        .err()
        .unwrap_or_default();
        assert!(err.contains("`broker.limits.max_packet_bytes`"), "{err}");
    }

    #[test]
    fn files_apply_in_order_then_env() {
        let dir = tempfile::TempDir::new().expect("tmp");
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        std::fs::write(&a, "[broker]\nprefix = \"a\"\n[bridge]\nbatch = 10\n").expect("write");
        std::fs::write(
            &b,
            "[broker]\nprefix = \"b\"\n[broker.auth.users]\nZoe = \"pw\"\n",
        )
        .expect("write");
        let s = load(&[a.clone(), b.clone()], env(&[])).expect("load");
        assert_eq!(s.broker.prefix, "b", "the later file wins");
        assert_eq!(s.bridge.batch, 10, "the earlier file still applies");
        assert!(
            s.broker.auth.users.contains_key("Zoe"),
            "file keys keep their case"
        );
        let s = load(&[a, b], env(&[("CHAT__BROKER__PREFIX", "e")])).expect("load");
        assert_eq!(s.broker.prefix, "e", "env wins over files");
    }

    #[test]
    fn the_shipped_example_configs_load() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let s = load(&[root.join("examples/scylla/chatmq.toml")], env(&[]))
            .expect("examples/scylla/chatmq.toml loads");
        assert_eq!(s.store.backend, Backend::Scylla);
        assert_eq!(s.store.scylla.nodes, ["scylla:9042"]);
    }

    #[test]
    fn invalid_values_name_their_key() {
        let e = load(
            &[],
            env(&[("CHAT__BROKER__LIMITS__MAX_CONNECTIONS", "many")]),
        )
        .expect_err("not a number");
        assert!(e.contains("broker.limits.max_connections"), "{e}");
        let e = load(&[], env(&[("CHAT__SERVER__HTTP", "nowhere")])).expect_err("not an address");
        assert!(e.contains("server.http"), "{e}");
        let e = load(&[], env(&[("CHAT__STORE__BACKEND", "mysql")])).expect_err("no such backend");
        assert!(e.contains("store.backend"), "{e}");
        let e = load(&[], env(&[("CHAT__BROKER__LIMITZ__X", "1")])).expect_err("unknown key");
        assert!(e.contains("limitz"), "{e}");
        let e =
            load(&[PathBuf::from("/nonexistent/chatmq.toml")], env(&[])).expect_err("missing file");
        assert!(e.contains("/nonexistent/chatmq.toml"), "{e}");
    }

    /// Found by the `authorizer` fuzz target: with a two-level prefix the
    /// authorizer accepts `org/#` as a filter outside the chat namespace.
    #[test]
    fn prefix_is_one_topic_level() {
        for bad in ["org/chat", "chat/", "/chat", "", "+", "#", "$chat", "ch at"] {
            let e = load(&[], env(&[("CHAT__BROKER__PREFIX", bad)]))
                .expect_err(&format!("prefix {bad:?} must be refused"));
            assert!(e.contains("broker.prefix"), "{e}");
        }
        for good in ["chat", "talk", "my_chat-2"] {
            let s = load(&[], env(&[("CHAT__BROKER__PREFIX", good)])).expect("a valid prefix");
            assert_eq!(s.broker.prefix, good);
        }
    }

    /// The hashes shown in the generated config are real: "change-me", for a
    /// user's login and a service account's.
    #[tokio::test]
    async fn the_generated_configs_hashes_are_change_me() {
        use broker::auth::{Authenticator, Principal};
        use broker::config::{AuthConfig, ServiceAccount};
        let hashes: Vec<&str> = DEFAULT_CONFIG
            .lines()
            .filter_map(|l| l.split_once("\"$argon2id$"))
            .map(|(_, rest)| rest.trim_end_matches('"'))
            .collect();
        assert_eq!(hashes.len(), 2, "a user's and a service's");
        for h in hashes {
            let phc = format!("$argon2id${h}");
            let mut cfg = AuthConfig::default();
            cfg.users.insert("carol".into(), phc.clone());
            cfg.services.insert(
                "svc".into(),
                ServiceAccount {
                    password: phc,
                    allow: vec!["chat/#".into()],
                    client_ids: Vec::new(),
                },
            );
            let a = Authenticator::new(&cfg).expect("the hashes parse");
            let carol = a
                .authenticate("carol", "change-me")
                .await
                .map(|l| l.principal);
            assert_eq!(carol, Ok(Principal::User("carol".into())));
            let svc = a
                .authenticate("svc", "change-me")
                .await
                .map(|l| l.principal);
            assert!(matches!(svc, Ok(Principal::Service { .. })), "{svc:?}");
            let wrong = a.authenticate("carol", "change-it").await;
            assert!(wrong.is_err(), "a wrong password is refused");
            assert!(a.plain_text_accounts().is_empty());
        }
    }
}
