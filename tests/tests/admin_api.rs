//! The admin HTTP API (`/admin/v1`, chatmq/src/admin.rs) against a running
//! server: its flows with real MQTT clients on the other side, and its
//! OpenAPI description checked by schemathesis (PyPI), a tool nobody here
//! wrote, which generates requests from the description and checks every
//! answer against it.

use anyhow::Result;
use serde_json::{json, Value};
use std::time::Duration;
use tests::{have, http_request, TestServer};

const TOKEN: &str = "admin-test-token";

async fn admin(srv: &TestServer, method: &str, path: &str, body: Value) -> Result<(u16, Value)> {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (status, text) = http_request(srv.http_port(), method, path, Some(TOKEN), &body).await?;
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_flows() -> Result<()> {
    let srv = TestServer::builder()
        .server_toml(&format!("admin_token = \"{TOKEN}\""))
        .start()
        .await?;
    let port = srv.http_port();
    // no token, a wrong one: 401 with the protocol's code
    for bearer in [None, Some("wrong"), Some("")] {
        let (status, body) = http_request(port, "GET", "/admin/v1/rooms", bearer, "").await?;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("\"unauthorized\""), "{body}");
    }
    let (status, spec) = http_request(port, "GET", "/admin/v1/openapi.json", None, "").await?;
    assert_eq!(status, 200);
    let spec: Value = serde_json::from_str(&spec)?;
    assert_eq!(spec["openapi"], "3.0.3");

    let mut bob = srv.user_v4("bob", "bob-admin").await?;
    let mut carol = srv.user_v4("carol", "carol-admin").await?;
    let mut alice = srv.user_v4("alice", "alice-admin").await?;
    for c in [&mut bob, &mut carol, &mut alice] {
        c.subscribe_own().await?;
    }
    // a room with its members, all joined at once
    let (status, created) = admin(
        &srv,
        "POST",
        "/admin/v1/rooms",
        json!({"room": "adm1", "owner": "alice", "members": ["bob", "carol"], "title": "Ops"}),
    )
    .await?;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["room"]["created_by"], "alice");
    let (status, again) = admin(
        &srv,
        "POST",
        "/admin/v1/rooms",
        json!({"room": "adm1", "owner": "alice"}),
    )
    .await?;
    assert_eq!(
        (status, again["error"]["code"].clone()),
        (409, json!("conflict")),
        "{again}"
    );
    bob.subscribe_ok("chat/rooms/adm1/events").await?;
    alice.subscribe_ok("chat/rooms/adm1/events").await?;
    alice.send("adm1", "a1", "welcome").await?;
    bob.recv_msg("adm1", "alice", "a1").await?;

    // the members list as sent is bounded (maxItems 1000), repeats included
    // (found by schemathesis: 1001 copies of one user were accepted)
    let (status, big) = admin(
        &srv,
        "POST",
        "/admin/v1/rooms",
        json!({"room": "adm-big", "owner": "alice", "members": vec!["bob"; 1001]}),
    )
    .await?;
    assert_eq!(
        (status, big["error"]["code"].clone()),
        (400, json!("bad_request")),
        "{big}"
    );

    let (status, rooms) = admin(&srv, "GET", "/admin/v1/rooms?limit=1000", Value::Null).await?;
    assert_eq!(status, 200, "{rooms}");
    assert!(
        rooms["rooms"]
            .as_array()
            .is_some_and(|a| a.contains(&json!({"room": "adm1", "kind": "group"}))),
        "{rooms}"
    );
    let (status, members) = admin(&srv, "GET", "/admin/v1/rooms/adm1/members", Value::Null).await?;
    assert_eq!(status, 200, "{members}");
    let states: Vec<(String, String)> = members["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    (
                        m["user"].as_str().unwrap_or("").to_owned(),
                        m["state"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    for u in ["alice", "bob", "carol"] {
        assert!(
            states.contains(&(u.to_owned(), "joined".to_owned())),
            "{members}"
        );
    }
    let (status, unread) = admin(&srv, "GET", "/admin/v1/users/bob/unread", Value::Null).await?;
    assert_eq!(status, 200, "{unread}");
    assert_eq!(unread["rooms"][0]["room"], "adm1", "{unread}");
    assert_eq!(unread["rooms"][0]["unread"], 1, "alice's message: {unread}");

    // kick and ban reach the members like a moderator's
    let (status, kicked) = admin(
        &srv,
        "POST",
        "/admin/v1/rooms/adm1/kick",
        json!({"user": "carol"}),
    )
    .await?;
    assert_eq!(status, 200, "{kicked}");
    let notice = carol
        .recv_inbox("the kick", |v| v["type"] == "kick" && v["room"] == "adm1")
        .await?;
    assert_eq!(notice["room"], "adm1");
    let (status, _) = admin(
        &srv,
        "POST",
        "/admin/v1/rooms/adm1/ban",
        json!({"user": "bob"}),
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(
        bob.rpc_err("history", json!({"room": "adm1"})).await?,
        "banned"
    );

    // the history as JSON lines, in order
    let (status, lines) =
        http_request(port, "GET", "/admin/v1/rooms/adm1/export", Some(TOKEN), "").await?;
    assert_eq!(status, 200);
    let events: Vec<Value> = lines
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{lines}");
    assert!(
        events
            .iter()
            .any(|e| e["msg_id"] == "a1" && e["body"] == "welcome"),
        "{lines}"
    );

    // erase alice (GDPR): her message becomes a tombstone, she leaves, clients see it
    bob.clear();
    let (status, erased) = admin(&srv, "DELETE", "/admin/v1/users/alice", Value::Null).await?;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(
        (erased["rooms"].clone(), erased["redacted"].clone()),
        (json!(1), json!(1)),
        "{erased}"
    );
    assert!(
        erased["remains"].as_array().is_some_and(|r| !r.is_empty()),
        "{erased}"
    );
    let (_, lines) =
        http_request(port, "GET", "/admin/v1/rooms/adm1/export", Some(TOKEN), "").await?;
    assert!(
        !lines.contains("welcome"),
        "the body is gone from storage: {lines}"
    );
    let a1 = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["msg_id"] == "a1")
        .unwrap_or_default();
    assert_eq!(a1["deleted"], true, "a tombstone: {a1}");
    let (_, members) = admin(&srv, "GET", "/admin/v1/rooms/adm1/members", Value::Null).await?;
    assert!(
        members["members"].as_array().is_some_and(|a| a
            .iter()
            .any(|m| m["user"] == "alice" && m["state"] == "left")),
        "{members}"
    );
    assert_eq!(
        alice.rpc_err("history", json!({"room": "adm1"})).await?,
        "not_member"
    );
    let (status, again) = admin(&srv, "DELETE", "/admin/v1/users/alice", Value::Null).await?;
    assert_eq!(
        (status, again["redacted"].clone()),
        (200, json!(0)),
        "idempotent: {again}"
    );

    // bad input: clear codes, nothing else
    for (method, path, body, want) in [
        ("POST", "/admin/v1/rooms", "not json", 400),
        (
            "POST",
            "/admin/v1/rooms",
            r#"{"room":"bad room","owner":"alice"}"#,
            400,
        ),
        (
            "POST",
            "/admin/v1/rooms",
            r#"{"room":"dm-x","owner":"alice"}"#,
            400,
        ),
        ("GET", "/admin/v1/rooms/nosuch/members", "", 404),
        (
            "POST",
            "/admin/v1/rooms/nosuch/kick",
            r#"{"user":"bob"}"#,
            404,
        ),
        ("GET", "/admin/v1/rooms?limit=x", "", 400),
        ("GET", "/admin/v1/rooms?after=zz", "", 400),
    ] {
        let (status, text) = http_request(port, method, path, Some(TOKEN), body).await?;
        assert_eq!(status, want, "{method} {path} {body}: {text}");
        let v: Value = serde_json::from_str(&text)?;
        assert!(v["error"]["code"].is_string(), "{text}");
    }
    // the admin account cannot be reached over MQTT
    let e = alice.rpc_err("admin.rooms", json!({})).await?;
    assert_eq!(e, "forbidden");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_conforms_to_its_openapi_description() -> Result<()> {
    if !have("schemathesis") {
        assert!(
            std::env::var_os("CHATMQ_SCHEMATHESIS_REQUIRED").is_none(),
            "CHATMQ_SCHEMATHESIS_REQUIRED is set but schemathesis is not installed"
        );
        println!("SKIPPED: schemathesis (PyPI) is not installed");
        return Ok(());
    }
    let srv = TestServer::builder()
        .server_toml(&format!("admin_token = \"{TOKEN}\""))
        .start()
        .await?;
    let url = format!("http://127.0.0.1:{}/admin/v1/openapi.json", srv.http_port());
    let run = tokio::process::Command::new("schemathesis")
        .args([
            "run",
            &url,
            "--checks",
            "all",
            "--max-examples",
            "25",
            "--header",
        ])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run).await??;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found failures:\n{text}");
    assert!(!srv.log_tail().contains("panicked"), "{}", srv.log_tail());
    Ok(())
}
