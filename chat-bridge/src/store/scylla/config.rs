//! `[store.scylla]`: connection settings, and the session built from them.

use super::tls;
use crate::store::StoreError;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::{Consistency, SerialConsistency};
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// The replication `migrate` gives a new keyspace unless configured otherwise.
pub const DEFAULT_REPLICATION: &str =
    "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}";

/// Configuration of the ScyllaDB store (`[store.scylla]`). Every field has a
/// default; in TOML:
///
/// ```toml
/// nodes = ["10.0.0.1:9042", "10.0.0.2:9042"]   # or "10.0.0.1:9042,10.0.0.2:9042"
/// keyspace = "chatmq"
/// local_dc = "dc1"
/// username = "chatmq"
/// password = "..."
/// tls_ca = "/etc/chatmq/scylla-ca.pem"
/// replication = "{'class': 'NetworkTopologyStrategy', 'dc1': 3}"
/// request_timeout_ms = 5000
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`; the driver discovers the rest of the
    /// cluster from them. A comma-separated string is accepted too (handy in
    /// an environment variable).
    #[serde(deserialize_with = "nodes_de")]
    pub nodes: Vec<String>,
    /// Keyspace of every table: `[a-z][a-z0-9_]{0,47}`.
    pub keyspace: String,
    /// The local datacenter: requests go to its nodes only (token-aware
    /// within it). Empty: every node counts as local.
    pub local_dc: String,
    /// Username for password authentication; empty: no authentication.
    pub username: String,
    pub password: String,
    /// PEM file of the CA that signed the nodes' certificates; empty: plain TCP.
    pub tls_ca: String,
    /// With TLS, the name the nodes' certificates must carry. Empty: each
    /// node's IP address (the certificate then needs IP SANs).
    pub tls_server_name: String,
    /// CQL replication map `migrate` gives the keyspace when it creates it.
    pub replication: String,
    /// Client-side timeout of one request (including the driver's retries).
    #[serde(deserialize_with = "u64_de")]
    pub request_timeout_ms: u64,
    /// Timeout of opening one connection.
    #[serde(deserialize_with = "u64_de")]
    pub connect_timeout_ms: u64,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        Self {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "chatmq".into(),
            local_dc: String::new(),
            username: String::new(),
            password: String::new(),
            tls_ca: String::new(),
            tls_server_name: String::new(),
            replication: DEFAULT_REPLICATION.into(),
            request_timeout_ms: 5000,
            connect_timeout_ms: 5000,
        }
    }
}

impl std::fmt::Debug for ScyllaConfig {
    /// Like the derived one, with the password hidden.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaConfig")
            .field("nodes", &self.nodes)
            .field("keyspace", &self.keyspace)
            .field("local_dc", &self.local_dc)
            .field("username", &self.username)
            .field(
                "password",
                &if self.password.is_empty() { "" } else { "***" },
            )
            .field("tls_ca", &self.tls_ca)
            .field("tls_server_name", &self.tls_server_name)
            .field("replication", &self.replication)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .finish()
    }
}

/// A list of strings, or one comma-separated string.
pub(crate) fn nodes_de<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Nodes {
        List(Vec<String>),
        Csv(String),
    }
    let list = match Nodes::deserialize(d)? {
        Nodes::List(l) => l,
        Nodes::Csv(s) => s.split(',').map(str::to_owned).collect(),
    };
    Ok(list
        .into_iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect())
}

/// A number, or a string holding one (environment variables are strings).
pub(crate) fn u64_de<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        N(u64),
        S(String),
    }
    match Num::deserialize(d)? {
        Num::N(n) => Ok(n),
        Num::S(s) => s.trim().parse().map_err(serde::de::Error::custom),
    }
}

fn invalid(what: String) -> StoreError {
    StoreError::Conflict(format!("[store.scylla] {what}"))
}

impl ScyllaConfig {
    /// Checks what the server cannot check for us before it is too late: the
    /// keyspace name and replication map are pasted into CQL text.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.nodes.is_empty() {
            return Err(invalid("nodes: at least one host:port is needed".into()));
        }
        if !valid_keyspace(&self.keyspace) {
            return Err(invalid(format!(
                "keyspace {:?}: must match [a-z][a-z0-9_]{{0,47}}",
                self.keyspace
            )));
        }
        let r = self.replication.trim();
        if !(r.starts_with('{') && r.ends_with('}')) || r.contains(';') {
            return Err(invalid(format!(
                "replication {:?}: must be a CQL map such as {DEFAULT_REPLICATION}",
                self.replication
            )));
        }
        if self.request_timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return Err(invalid("timeouts must be > 0 ms".into()));
        }
        Ok(())
    }

    /// Opens a session: token- and shard-aware routing (the driver's default
    /// policy, restricted to `local_dc` when set), LOCAL_QUORUM, LOCAL_SERIAL
    /// for lightweight transactions, the request timeout, TLS and
    /// authentication when configured. The store and `migrate` use it; so
    /// can tools (the ScyllaDB tests drop their keyspaces through it).
    pub async fn session(&self) -> Result<Session, StoreError> {
        self.validate()?;
        let mut policy = DefaultPolicy::builder().token_aware(true);
        if !self.local_dc.is_empty() {
            policy = policy
                .prefer_datacenter(self.local_dc.clone())
                .permit_dc_failover(false);
        }
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::LocalQuorum)
            .serial_consistency(Some(SerialConsistency::LocalSerial))
            .request_timeout(Some(Duration::from_millis(self.request_timeout_ms)))
            .load_balancing_policy(policy.build())
            .build();
        let mut b = SessionBuilder::new()
            .known_nodes(&self.nodes)
            .connection_timeout(Duration::from_millis(self.connect_timeout_ms))
            .default_execution_profile_handle(profile.into_handle());
        if !self.username.is_empty() {
            b = b.user(&self.username, &self.password);
        }
        if !self.tls_ca.is_empty() {
            let tls = tls::client_config(self.tls_ca.as_ref(), &self.tls_server_name)?;
            b = b.tls_context(Some(tls));
        }
        b.build().await.map_err(|e| {
            StoreError::Unavailable(format!("connecting to ScyllaDB {:?}: {e}", self.nodes))
        })
    }
}

/// `[a-z][a-z0-9_]{0,47}`: a keyspace name CQL takes unquoted, as is.
pub(super) fn valid_keyspace(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_lowercase())
        && s.len() <= 48
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}
