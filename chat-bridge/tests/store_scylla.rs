//! The conformance suite against ScyllaDB, plus ScyllaDB-only tests
//! (migrate twice, two stores sequencing one room), when `SCYLLA_URI` is set
//! (`host:port`, or a comma list; optional `SCYLLA_USERNAME`,
//! `SCYLLA_PASSWORD`, `SCYLLA_TLS_CA`). Each test migrates a fresh keyspace
//! and drops it afterwards. Without `SCYLLA_URI` each of them prints a
//! `SKIPPED:` line and passes, unless `CHATMQ_CQL_REQUIRED` is set (as in CI),
//! where it fails. The config tests need no cluster.
//!
//! ```sh
//! export SCYLLA_URI=$(tests/cql/start)    # a local Apache Cassandra node
//! cargo test -p chat-bridge --test store_scylla
//! tests/cql/stop
//! ```

use chat_bridge::store::scylla::{migrate, ScyllaConfig, ScyllaStore, Server, DEFAULT_REPLICATION};
use chat_bridge::store::{conformance, NewEvent, Range, Store, PAGE_MAX};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The cluster from the environment, or `None` (and a SKIPPED line).
fn cluster() -> Option<ScyllaConfig> {
    let Some(uri) = std::env::var("SCYLLA_URI")
        .ok()
        .filter(|u| !u.trim().is_empty())
    else {
        // CI starts a node (tests/cql/start) and sets CHATMQ_CQL_REQUIRED:
        // there a missing node is a failure, never a silent skip.
        assert!(
            std::env::var_os("CHATMQ_CQL_REQUIRED").is_none(),
            "CHATMQ_CQL_REQUIRED is set but SCYLLA_URI is not: the CQL node did not start"
        );
        println!("SKIPPED: SCYLLA_URI not set (see docs/scylla.md \"Test it\")");
        return None;
    };
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    Some(ScyllaConfig {
        nodes: uri.split(',').map(|n| n.trim().to_owned()).collect(),
        username: env("SCYLLA_USERNAME"),
        password: env("SCYLLA_PASSWORD"),
        tls_ca: env("SCYLLA_TLS_CA"),
        // One test node: replication factor 1.
        replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
        // LWTs on a busy single developer-mode node can be slow.
        request_timeout_ms: 20_000,
        ..ScyllaConfig::default()
    })
}

/// A keyspace name unique to this process and call.
fn fresh_keyspace() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!(
        "chatmq_test_{t:x}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn drop_keyspace(cfg: &ScyllaConfig) {
    let dropped = match cfg.session().await {
        Ok(s) => s
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", cfg.keyspace), ())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = dropped {
        eprintln!("could not drop test keyspace {}: {e}", cfg.keyspace);
    }
}

/// Runs `f` with a fresh migrated keyspace (dropped afterwards, also when
/// `f` panics); skipped without `SCYLLA_URI`.
async fn with_keyspace<F, Fut>(f: F)
where
    F: FnOnce(ScyllaConfig) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(mut cfg) = cluster() else { return };
    cfg.keyspace = fresh_keyspace();
    let applied = migrate(&cfg)
        .await
        .expect("migrate a fresh keyspace")
        .applied;
    assert_eq!(
        applied,
        ["001_init", "002_blocks_retention", "003_room_settings"],
        "a fresh keyspace gets every migration"
    );
    let outcome = tokio::spawn(f(cfg.clone())).await;
    drop_keyspace(&cfg).await;
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("test task: {e}");
    }
}

async fn connect(cfg: &ScyllaConfig) -> Arc<dyn Store> {
    Arc::new(ScyllaStore::connect(cfg).await.expect("connect"))
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            with_keyspace(|cfg| async move {
                conformance::$name(connect(&cfg).await).await;
            })
            .await;
        }
    )*};
}

chat_bridge::for_each_conformance_check!(conformance_tests);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_twice_is_a_no_op() {
    with_keyspace(|cfg| async move {
        let again = migrate(&cfg).await.expect("second migrate");
        assert!(again.applied.is_empty(), "nothing left to apply: {again:?}");
        // tests/cql/start runs Apache Cassandra and says so in CQL_SERVER: no
        // ScyllaDB-only option may be detected (and applied) there.
        if std::env::var("CQL_SERVER").as_deref() == Ok("cassandra") {
            assert_eq!(again.server, Server::Cassandra, "{again:?}");
        }
        let store = connect(&cfg).await;
        assert_eq!(store.head("r").await.expect("head"), 0);
    })
    .await;
}

fn event(room: &str, from: &str, msg_id: &str) -> NewEvent {
    let mut body = serde_json::Map::new();
    body.insert("type".into(), "message".into());
    NewEvent {
        room: room.into(),
        from: from.into(),
        msg_id: msg_id.into(),
        ts: 1,
        body,
        member: None,
        redacts: None,
    }
}

/// Two stores (two bridges that both think they own the room) append to one
/// room at once: the LWT insert gives each seq to exactly one event, and each
/// event (retries included) has exactly one seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_never_fork_a_room() {
    with_keyspace(|cfg| async move {
        const EACH: usize = 150;
        let stores = [connect(&cfg).await, connect(&cfg).await];
        let mut tasks = Vec::new();
        for (b, store) in stores.iter().enumerate() {
            for t in 0..3 {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    let mut seqs = Vec::new();
                    for i in 0..EACH / 3 {
                        let e = || event("shared", &format!("b{b}t{t}"), &format!("m{i}"));
                        // Under contention an append may give up (Unavailable);
                        // the bridge retries with the same msg_id, as here.
                        let mut tries = 0;
                        let a = loop {
                            match store.append(e()).await {
                                Ok(a) => break a,
                                Err(err) if tries < 5 => {
                                    tries += 1;
                                    eprintln!("retrying after: {err}");
                                }
                                Err(err) => panic!("append: {err}"),
                            }
                        };
                        seqs.push(a.event.seq);
                    }
                    seqs
                }));
            }
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all.sort_unstable();
        let n = 2 * EACH as u64;
        assert_eq!(
            all,
            (1..=n).collect::<Vec<_>>(),
            "no gap, no seq given twice"
        );
        let page = stores[0]
            .read("shared", Range::After(0), PAGE_MAX)
            .await
            .expect("read");
        assert_eq!(page.head, n);
        assert_eq!(page.events.len() as u64, n);
    })
    .await;
}

#[test]
fn config_defaults() {
    let cfg: ScyllaConfig = serde_json::from_str("{}").expect("empty config");
    assert_eq!(cfg, ScyllaConfig::default());
    assert_eq!(cfg.nodes, ["127.0.0.1:9042"]);
    assert_eq!(cfg.keyspace, "chatmq");
    assert_eq!(cfg.replication, DEFAULT_REPLICATION);
    assert_eq!(cfg.request_timeout_ms, 5000);
    assert!(cfg.local_dc.is_empty() && cfg.username.is_empty() && cfg.tls_ca.is_empty());
    assert!(cfg.validate().is_ok());
}

#[test]
fn config_parses_every_key() {
    let cfg: ScyllaConfig = serde_json::from_str(
        r#"{"nodes":["a:9042","b:9042"],"keyspace":"chat_prod","local_dc":"dc1",
            "username":"u","password":"secret","tls_ca":"/ca.pem","tls_server_name":"scylla.local",
            "replication":"{'class': 'NetworkTopologyStrategy', 'dc1': 3}",
            "request_timeout_ms":2500,"connect_timeout_ms":1000}"#,
    )
    .expect("full config");
    assert_eq!(cfg.nodes, ["a:9042", "b:9042"]);
    assert_eq!(
        (cfg.keyspace.as_str(), cfg.local_dc.as_str()),
        ("chat_prod", "dc1")
    );
    assert_eq!(
        (cfg.request_timeout_ms, cfg.connect_timeout_ms),
        (2500, 1000)
    );
    assert!(cfg.validate().is_ok());
    assert!(
        !format!("{cfg:?}").contains("secret"),
        "Debug hides the password"
    );
}

#[test]
fn config_from_environment_strings() {
    // Environment variables arrive as strings: a comma list and a number.
    let cfg: ScyllaConfig =
        serde_json::from_str(r#"{"nodes":" a:9042, b:9042 ,","request_timeout_ms":"750"}"#)
            .expect("string forms");
    assert_eq!(cfg.nodes, ["a:9042", "b:9042"]);
    assert_eq!(cfg.request_timeout_ms, 750);
}

#[test]
fn config_rejects_bad_values() {
    assert!(
        serde_json::from_str::<ScyllaConfig>(r#"{"node":["a"]}"#).is_err(),
        "unknown key"
    );
    for bad in [
        r#"{"keyspace":"Chat"}"#,
        r#"{"keyspace":"1chat"}"#,
        r#"{"keyspace":"chat; DROP"}"#,
        r#"{"keyspace":""}"#,
        r#"{"nodes":[]}"#,
        r#"{"replication":"SimpleStrategy"}"#,
        r#"{"replication":"{'class': 'SimpleStrategy'}; DROP KEYSPACE x"}"#,
        r#"{"request_timeout_ms":0}"#,
    ] {
        let cfg: ScyllaConfig = serde_json::from_str(bad).expect(bad);
        assert!(cfg.validate().is_err(), "{bad} must not validate");
    }
}
