//! Broker settings, deserialized from the `[broker]` section of the config file.

use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything the broker needs to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Topic prefix of the chat namespace, without the trailing slash.
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
        }
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
    /// Simultaneous connections per user.
    pub connections_per_user: usize,
    /// Total connections.
    pub max_connections: usize,
    /// New connections per second from one source address (burst = 2x).
    pub connects_per_sec_per_ip: u32,
    /// Publishes per second per connection before it is throttled (burst = 2x).
    pub publishes_per_sec: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_bytes: 64 * 1024 + 1024,
            service_max_packet_bytes: 4 << 20,
            connect_timeout_ms: 10_000,
            connections_per_user: 16,
            max_connections: 20_000,
            connects_per_sec_per_ip: 200,
            publishes_per_sec: 200,
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
