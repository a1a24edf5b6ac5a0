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
    let e = load(&[PathBuf::from("/nonexistent/chatmq.toml")], env(&[])).expect_err("missing file");
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
