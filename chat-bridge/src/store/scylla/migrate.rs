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
pub const MIGRATIONS: &[(&str, &str)] = &[(
    "001_init",
    include_str!("../../../../schema/cql/001_init.cql"),
)];

/// What `${tablets}` becomes on ScyllaDB versions that know tablets.
const NO_TABLETS: &str = "AND tablets = {'enabled': false}";
/// DDL waits for schema agreement: give it more than a normal request.
const DDL_TIMEOUT: Duration = Duration::from_secs(60);

/// Applies the pending migrations to `cfg.keyspace` (creating it with
/// `cfg.replication` if needed); returns the versions applied by this call
/// (empty when the schema was up to date).
pub async fn migrate(cfg: &ScyllaConfig) -> Result<Vec<String>, StoreError> {
    let session = cfg.session().await?;
    let ks = cfg.keyspace.as_str();
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
            run_ddl(&session, &cql).await?;
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
    Ok(done)
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

/// Runs one DDL statement. `${tablets}` is first tried as [`NO_TABLETS`];
/// a server that does not know the option (before tablets existed) gets
/// the statement without it.
async fn run_ddl(session: &Session, cql: &str) -> Result<(), StoreError> {
    let exec = |text: String| async move {
        let mut s = Statement::new(text);
        s.set_request_timeout(Some(DDL_TIMEOUT));
        session.query_unpaged(s, ()).await.map(|_| ())
    };
    if !cql.contains("${tablets}") {
        return exec(cql.to_owned())
            .await
            .map_err(|e| unavailable(&format!("running `{cql}`"), e));
    }
    match exec(cql.replace("${tablets}", NO_TABLETS)).await {
        Ok(()) => Ok(()),
        Err(e) if e.to_string().to_ascii_lowercase().contains("tablets") => {
            tracing::info!(error = %e, "scylla: no tablets option on this server; creating the keyspace without it");
            exec(cql.replace("${tablets}", ""))
                .await
                .map_err(|e| unavailable(&format!("running `{cql}`"), e))
        }
        Err(e) => Err(unavailable(&format!("running `{cql}`"), e)),
    }
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
