//! `chatmq migrate`: applies the CQL migrations in `schema/cql/` (compiled in),
//! in order, skipping those recorded in `schema_migrations`. Every statement
//! is idempotent (`IF NOT EXISTS`), so an interrupted run is simply repeated,
//! and two concurrent runs are harmless.

use super::config::ScyllaConfig;
use super::{corrupt, unavailable};
use crate::store::StoreError;
use scylla::client::session::Session;
use scylla::statement::Statement;
use std::collections::HashMap;
use std::time::Duration;

/// Every migration, in order: (version, CQL text). Never edit a released one.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "001_init",
        include_str!("../../../../schema/cql/001_init.cql"),
    ),
    (
        "002_blocks_retention",
        include_str!("../../../../schema/cql/002_blocks_retention.cql"),
    ),
    (
        "003_room_settings",
        include_str!("../../../../schema/cql/003_room_settings.cql"),
    ),
];

/// What `${tablets}` becomes on ScyllaDB versions that know tablets.
const NO_TABLETS: &str = "AND tablets = {'enabled': false}";
/// DDL waits for schema agreement: give it more than a normal request.
const DDL_TIMEOUT: Duration = Duration::from_secs(60);

/// What a [`migrate`] call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The server, as [`detect`] saw it.
    pub server: Server,
    /// The versions applied by this call (empty: the schema was up to date).
    pub applied: Vec<String>,
}

/// Applies the pending migrations to `cfg.keyspace` (creating it with
/// `cfg.replication` if needed).
pub async fn migrate(cfg: &ScyllaConfig) -> Result<Migrated, StoreError> {
    let session = cfg.session().await?;
    let ks = cfg.keyspace.as_str();
    let server = detect(&session).await?;
    tracing::info!(server = server.describe(), "scylla: migrate");
    let applied = applied(&session, ks).await?;
    let mut done = Vec::new();
    for &(version, text) in MIGRATIONS {
        let sum = checksum(text);
        if let Some(stored) = applied.get(version) {
            if *stored != sum {
                tracing::warn!(
                    version,
                    "scylla: an applied migration file was edited since"
                );
            }
            continue;
        }
        for cql in statements(text, ks, &cfg.replication) {
            run_ddl(&session, server, &cql).await?;
        }
        let mut record = Statement::new(format!(
            "INSERT INTO {ks}.schema_migrations (version, checksum, applied_at) \
             VALUES (?, ?, toTimestamp(now()))"
        ));
        record.set_request_timeout(Some(DDL_TIMEOUT));
        session
            .query_unpaged(record, (version, &sum))
            .await
            .map_err(|e| unavailable("recording a migration", e))?;
        tracing::info!(version, keyspace = ks, "scylla: migration applied");
        done.push(version.to_owned());
    }
    Ok(Migrated {
        server,
        applied: done,
    })
}

/// Applied versions and their checksums; empty if the keyspace or the
/// table does not exist yet. Point reads only: one per known migration.
async fn applied(session: &Session, ks: &str) -> Result<HashMap<String, String>, StoreError> {
    let mut out = HashMap::new();
    let table = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables \
             WHERE keyspace_name = ? AND table_name = 'schema_migrations'",
            (ks,),
        )
        .await
        .map_err(|e| unavailable("reading system_schema", e))?
        .into_rows_result()
        .map_err(|e| corrupt("reading system_schema", e))?
        .rows_num();
    if table == 0 {
        return Ok(out);
    }
    let cql = format!("SELECT checksum FROM {ks}.schema_migrations WHERE version = ?");
    for &(version, _) in MIGRATIONS {
        let row = session
            .query_unpaged(cql.as_str(), (version,))
            .await
            .map_err(|e| unavailable("reading schema_migrations", e))?
            .into_rows_result()
            .map_err(|e| corrupt("reading schema_migrations", e))?
            .maybe_first_row::<(Option<String>,)>()
            .map_err(|e| corrupt("reading schema_migrations", e))?;
        if let Some((sum,)) = row {
            out.insert(version.to_owned(), sum.unwrap_or_default());
        }
    }
    Ok(out)
}

/// The CQL server `migrate` talks to, as far as the schema cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// ScyllaDB with tablets (`system_schema.scylla_keyspaces.initial_tablets`
    /// exists): keyspaces are created with `tablets = {'enabled': false}`.
    ScyllaTablets,
    /// ScyllaDB before tablets (`system.scylla_local` exists, no tablets column).
    Scylla,
    /// Any other CQL server (Apache Cassandra): no ScyllaDB-only options.
    Cassandra,
}

impl Server {
    /// What `${tablets}` in a migration becomes on this server.
    pub fn tablets_clause(self) -> &'static str {
        match self {
            Server::ScyllaTablets => NO_TABLETS,
            Server::Scylla | Server::Cassandra => "",
        }
    }

    /// A name for logs and `chatmq migrate`'s output.
    pub fn describe(self) -> &'static str {
        match self {
            Server::ScyllaTablets => {
                "ScyllaDB (tablets known: the keyspace is created without them)"
            }
            Server::Scylla => "ScyllaDB (before tablets)",
            Server::Cassandra => {
                "Apache Cassandra or another CQL server (no ScyllaDB-only options)"
            }
        }
    }
}

/// Tells ScyllaDB (with or without tablets) from other CQL servers by the
/// system tables only ScyllaDB has. A table or column that does not exist is
/// an answer; any other failure is an error (guessing could create a
/// keyspace with tablets, where the LWT path does not work).
pub async fn detect(session: &Session) -> Result<Server, StoreError> {
    if exists(
        session,
        "SELECT initial_tablets FROM system_schema.scylla_keyspaces LIMIT 1",
    )
    .await?
    {
        return Ok(Server::ScyllaTablets);
    }
    if exists(session, "SELECT key FROM system.scylla_local LIMIT 1").await? {
        return Ok(Server::Scylla);
    }
    Ok(Server::Cassandra)
}

/// Whether `cql` (a read of a system table) runs: `false` when the server
/// says the table or column is unknown.
async fn exists(session: &Session, cql: &str) -> Result<bool, StoreError> {
    use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
    let mut s = Statement::new(cql);
    s.set_request_timeout(Some(DDL_TIMEOUT));
    match session.query_unpaged(s, ()).await {
        Ok(_) => Ok(true),
        Err(ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::Invalid | DbError::SyntaxError,
            _,
        ))) => Ok(false),
        Err(e) => Err(unavailable(&format!("probing the server with `{cql}`"), e)),
    }
}

/// Runs one DDL statement, `${tablets}` replaced for `server`.
async fn run_ddl(session: &Session, server: Server, cql: &str) -> Result<(), StoreError> {
    let text = cql.replace("${tablets}", server.tablets_clause());
    let mut s = Statement::new(text.as_str());
    s.set_request_timeout(Some(DDL_TIMEOUT));
    session
        .query_unpaged(s, ())
        .await
        .map(|_| ())
        .map_err(|e| unavailable(&format!("running `{text}`"), e))
}

/// The statements of a migration file, `${keyspace}` and `${replication}`
/// substituted (`${tablets}` is left to [`run_ddl`]): comment lines dropped,
/// split at `;`.
pub(super) fn statements(text: &str, keyspace: &str, replication: &str) -> Vec<String> {
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    body.split(';')
        .map(|s| {
            s.trim()
                .replace("${keyspace}", keyspace)
                .replace("${replication}", replication.trim())
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// FNV-1a 64 of the file text, as hex.
pub(super) fn checksum(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, (version, text)) in MIGRATIONS.iter().enumerate() {
            assert!(
                version.starts_with(&format!("{:03}_", i + 1)),
                "{version} is migration #{}",
                i + 1
            );
            assert!(!text.trim().is_empty());
        }
    }

    #[test]
    fn init_statements() {
        let all = statements(
            MIGRATIONS[0].1,
            "ks_test",
            "{'class': 'SimpleStrategy', 'replication_factor': 1}",
        );
        assert!(
            all[0].starts_with("CREATE KEYSPACE IF NOT EXISTS ks_test"),
            "{}",
            all[0]
        );
        assert!(all[0].contains("'replication_factor': 1}"));
        assert!(all[0].contains("${tablets}"), "left for run_ddl");
        for s in &all {
            assert!(
                !s.contains("${keyspace}") && !s.contains("${replication}"),
                "{s}"
            );
            assert!(!s.contains("--"), "comments dropped: {s}");
            assert!(s.contains("IF NOT EXISTS"), "idempotent: {s}");
        }
        let tables: Vec<&str> = all[1..]
            .iter()
            .filter_map(|s| s.strip_prefix("CREATE TABLE IF NOT EXISTS ks_test."))
            .filter_map(|s| s.split_whitespace().next())
            .collect();
        assert_eq!(
            tables,
            [
                "schema_migrations",
                "rooms",
                "messages",
                "idempotency",
                "room_members",
                "user_rooms",
                "markers",
                "room_index"
            ]
        );
        let later: Vec<String> = MIGRATIONS[1..]
            .iter()
            .flat_map(|(_, text)| statements(text, "ks_test", "{}"))
            .collect();
        assert!(later.iter().all(|s| s.contains("IF NOT EXISTS")));
        assert_eq!(later.len(), 3, "{later:?}");
        let messages = all
            .iter()
            .find(|s| s.contains(".messages ("))
            .map_or("", |s| s);
        assert!(messages.contains("PRIMARY KEY ((room, bucket), seq)"));
        assert!(messages.contains("CLUSTERING ORDER BY (seq DESC)"));
    }

    #[test]
    fn checksum_is_stable() {
        assert_eq!(checksum(""), "cbf29ce484222325");
        assert_eq!(checksum("a"), "af63dc4c8601ec8c");
        assert_ne!(checksum(MIGRATIONS[0].1), checksum("x"));
    }
}
