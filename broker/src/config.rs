//! Broker settings, deserialized from the `[broker]` section of the config file.

use crate::names::valid_client_id;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything the broker needs to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Topic prefix of the chat namespace: one topic level of `A-Z a-z 0-9 _ -`
    /// (checked by `settings::load`).
    pub prefix: String,
    /// Plain MQTT over TCP (3.1.1 and 5). `None` disables it.
    pub tcp: Option<SocketAddr>,
    /// MQTT over TLS; needs `tls`.
    pub tls_listen: Option<SocketAddr>,
    /// MQTT over WebSocket (path `/mqtt`, 3.1.1 and 5).
    pub ws: Option<SocketAddr>,
    /// MQTT over WebSocket over TLS; needs `tls`.
    pub wss: Option<SocketAddr>,
    /// Certificate and key for the TLS listeners.
    pub tls: Option<TlsFiles>,
    /// How often, in seconds, the TLS certificate and key and the JWT RS256
    /// public key files are read again (Kubernetes rotates mounted secrets
    /// by swapping a symlink). Changed, valid files serve new connections
    /// and new logins; connections already up keep theirs; an invalid file
    /// is logged and the previous one kept. 0: never.
    pub secrets_reload_secs: u64,
    pub auth: AuthConfig,
    pub limits: Limits,
    /// Topics outside `prefix`: `true` lets any logged-in user use them (devices
    /// sharing the connection), `false` refuses them.
    pub open_topics: bool,
    /// Sizes of rumqttd's in-memory logs.
    pub router: RouterSizing,
    /// Learn room membership from the bridge's `{prefix}/hooks/access`
    /// messages (a broker running apart from its bridge). Set by `chatmq broker`.
    pub access_from_hooks: bool,
    /// Client ids kept for an account (id -> account) besides those of
    /// `auth.services`: `chatmq broker` keeps its bridge's `[bridge] client_id`
    /// for `[bridge] username`. Not read from the config file.
    #[serde(skip)]
    pub reserved_client_ids: HashMap<String, String>,
    /// A cluster's partition count (`[cluster] partitions`, docs/cluster.md);
    /// 0: this broker's bridge takes every room and user. Above 0, users'
    /// sends, requests, typing and this broker's presence changes go out on
    /// `{prefix}/part/{p}/...` topics, presence comes back from the bridges.
    /// Set by `chatmq` from `[cluster]`.
    #[serde(skip)]
    pub partitions: u32,
    /// Gives memory freed in bulk back to the system (glibc's
    /// `malloc_trim`), called a second after sessions expire. Set by the
    /// application, which owns the allocator; `None`: never.
    #[serde(skip)]
    pub trim_memory: Option<fn()>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            prefix: "chat".into(),
            tcp: Some(SocketAddr::from(([0, 0, 0, 0], 1883))),
            tls_listen: None,
            ws: Some(SocketAddr::from(([0, 0, 0, 0], 8083))),
            wss: None,
            tls: None,
            secrets_reload_secs: 5,
            auth: AuthConfig::default(),
            limits: Limits::default(),
            open_topics: true,
            router: RouterSizing::default(),
            access_from_hooks: false,
            reserved_client_ids: HashMap::new(),
            partitions: 0,
            trim_memory: None,
        }
    }
}

impl BrokerConfig {
    /// Every client id kept for an account (id -> account): each service
    /// account's own id and `client_ids`, and `reserved_client_ids`. An id
    /// kept for two accounts, or not a valid client id, is an error.
    pub fn client_id_reservations(&self) -> Result<HashMap<String, String>, String> {
        let mut out: HashMap<String, String> = HashMap::new();
        let services = self.auth.services.iter().flat_map(|(name, account)| {
            std::iter::once(name)
                .chain(&account.client_ids)
                .map(move |id| (id, name))
        });
        for (id, owner) in services.chain(&self.reserved_client_ids) {
            if !valid_client_id(id) {
                return Err(format!(
                    "client id {id:?} of {owner:?} is not a valid client id"
                ));
            }
            match out.get(id) {
                Some(other) if other != owner => {
                    return Err(format!(
                        "client id {id:?} is kept for both {other:?} and {owner:?}"
                    ))
                }
                _ => {
                    out.insert(id.clone(), owner.clone());
                }
            }
        }
        Ok(out)
    }
}

/// PEM files for TLS (read again every `secrets_reload_secs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Who may log in.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Static users: user id -> argon2id PHC string (`chatmq hash-password`)
    /// or, warned about at start, the password in plain text.
    pub users: HashMap<String, String>,
    /// Service accounts: user id -> account. They may use the topics their
    /// `allow` filters cover (e.g. `chat/hooks/#`).
    pub services: HashMap<String, ServiceAccount>,
    pub jwt: Option<JwtConfig>,
    /// Adds the demo users alice/alice-pw and bob/bob-pw (unless `users`
    /// names them). On in the compiled-in defaults so the first run works;
    /// turn it off in production (the server warns while it is on).
    pub demo_users: bool,
    /// How long, in seconds, a successful argon2 verification is remembered
    /// (as an HMAC under a key made at start) so that a reconnect does not
    /// pay for argon2 again. 0: never remembered.
    pub password_cache_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            users: HashMap::new(),
            services: HashMap::new(),
            jwt: None,
            demo_users: false,
            password_cache_secs: 600,
        }
    }
}

/// A configured non-human account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccount {
    /// argon2id PHC string or plain text, as for users.
    pub password: String,
    /// Filters this account may publish and subscribe to.
    pub allow: Vec<String>,
    /// Client ids kept for this account, connected or not: nobody else may
    /// connect with them. The account's own id is always kept for it.
    #[serde(default)]
    pub client_ids: Vec<String>,
}

/// JSON Web Tokens passed as the MQTT password (any username, or the same as `sub`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Shared secret for HS256.
    pub hs256_secret: Option<String>,
    /// PEM file with the RSA public key for RS256 (read again every
    /// `secrets_reload_secs`).
    pub rs256_public_key: Option<PathBuf>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`, seconds: a token is accepted until
    /// `exp + leeway_secs`, and its connection is closed then.
    pub leeway_secs: u64,
}

/// Connection-level limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest MQTT packet accepted from a user, bytes (the payload limit plus headers).
    pub max_packet_bytes: usize,
    /// Largest MQTT packet accepted from a service account (the bridge's
    /// history and sync replies carry up to 512 KiB of events).
    pub service_max_packet_bytes: usize,
    /// Time allowed for the TLS/WebSocket handshake and the CONNECT packet.
    pub connect_timeout_ms: u64,
    /// At a graceful shutdown, user connections are closed spread over this
    /// many ms (each at a point given by its client id) instead of all at
    /// once, so that in a cluster they reconnect to the other brokers
    /// gradually. 0: all at once. Keep it below `server.grace_period_ms`.
    pub shutdown_spread_ms: u64,
    /// Simultaneous connections per user.
    pub connections_per_user: usize,
    /// Persistent sessions (3.1.1 `clean_session = false`, 5 Clean Start 0)
    /// a user may keep under distinct client ids, connected or not; one more
    /// is refused (5: 0x97 quota exceeded; 3.1.1: 0x03 server unavailable).
    /// Service accounts are not bounded by it.
    pub persistent_sessions_per_user: usize,
    /// Longest a user's session is kept after its connection ends, seconds:
    /// an MQTT 5 Session Expiry Interval above it is lowered to it (and
    /// CONNACK says so), and a 3.1.1 persistent session (`clean_session =
    /// false`, which has no interval) is kept this long. Service accounts
    /// get the interval they ask for, and their 3.1.1 sessions are kept
    /// until resumed (the bridge's holds its messages while it restarts).
    pub max_session_expiry_secs: u32,
    /// Total connections.
    pub max_connections: usize,
    /// New connections per second from one source address (burst = 2x).
    pub connects_per_sec_per_ip: u32,
    /// Publishes per second per connection before it is throttled (burst = 2x).
    pub publishes_per_sec: u32,
    /// Retained messages one user may hold on open topics (outside the
    /// prefix); 0 turns retained messages off. Retain flags inside the chat
    /// namespace are always stripped.
    pub retained_per_user: usize,
    /// Bytes (topic + payload) of the retained messages one user may hold
    /// on open topics.
    pub retained_bytes_per_user: usize,
    /// Store reads of a room's membership one connection may cause per
    /// second (burst = 2x); beyond it an unknown room counts as unknown.
    pub room_loads_per_sec: u32,
    /// Rooms remembered as not existing, at most.
    pub room_miss_cache: usize,
    /// How long a room is remembered as not existing, ms (its creation
    /// through this process's bridge forgets it at once).
    pub room_miss_ttl_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_bytes: 64 * 1024 + 1024,
            service_max_packet_bytes: 4 << 20,
            connect_timeout_ms: 10_000,
            shutdown_spread_ms: 0,
            connections_per_user: 16,
            persistent_sessions_per_user: 32,
            max_session_expiry_secs: 2 * 24 * 3600,
            max_connections: 20_000,
            connects_per_sec_per_ip: 200,
            publishes_per_sec: 200,
            retained_per_user: 32,
            retained_bytes_per_user: 64 * 1024,
            room_loads_per_sec: 10,
            room_miss_cache: 10_000,
            room_miss_ttl_ms: 5_000,
        }
    }
}

/// rumqttd keeps each filter's messages in an in-memory log of
/// `segment_bytes * segments`. A subscriber that falls further behind than
/// that loses messages (a "cursor jump", logged as an error). The bridge's
/// filters get the larger `bridge_*` sizes: they must hold the bridge's worst lag.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterSizing {
    pub segment_bytes: usize,
    pub segments: usize,
    pub bridge_segment_bytes: usize,
    pub bridge_segments: usize,
    /// Outgoing packets buffered per connection before it is unscheduled.
    pub max_outgoing_packets: u64,
}

impl Default for RouterSizing {
    fn default() -> Self {
        RouterSizing {
            segment_bytes: 4 * 1024 * 1024,
            segments: 4,
            bridge_segment_bytes: 64 * 1024 * 1024,
            bridge_segments: 16,
            max_outgoing_packets: 500,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(client_ids: &[&str]) -> ServiceAccount {
        ServiceAccount {
            password: "pw".into(),
            allow: vec!["chat/hooks/#".into()],
            client_ids: client_ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn reservations_cover_service_ids_and_the_split_bridge() {
        let mut cfg = BrokerConfig::default();
        cfg.auth
            .services
            .insert("pusher".into(), service(&["pusher-1", "pusher:2"]));
        cfg.reserved_client_ids
            .insert("chat-bridge".into(), "chat-bridge".into());
        let r = cfg.client_id_reservations().expect("valid");
        assert_eq!(r.len(), 4);
        for id in ["pusher", "pusher-1", "pusher:2"] {
            assert_eq!(r.get(id).map(String::as_str), Some("pusher"), "{id}");
        }
        assert_eq!(
            r.get("chat-bridge").map(String::as_str),
            Some("chat-bridge")
        );
    }

    #[test]
    fn conflicting_or_invalid_reservations_are_errors() {
        let mut cfg = BrokerConfig::default();
        cfg.auth.services.insert("a".into(), service(&["shared"]));
        cfg.auth.services.insert("b".into(), service(&["shared"]));
        let e = cfg.client_id_reservations().expect_err("kept twice");
        assert!(e.contains("shared"), "{e}");
        let mut cfg = BrokerConfig::default();
        cfg.auth.services.insert("a".into(), service(&["a/b"]));
        assert!(cfg.client_id_reservations().is_err(), "not a client id");
        let mut cfg = BrokerConfig::default();
        cfg.auth.services.insert("a".into(), service(&[]));
        cfg.reserved_client_ids.insert("a".into(), "bridge".into());
        assert!(
            cfg.client_id_reservations().is_err(),
            "the bridge's id may not be another service's"
        );
    }
}
