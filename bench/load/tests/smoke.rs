//! The harness must not rot: a tiny `chatmq-bench all` against a debug
//! `chatmq` (one room, a few hundred messages, 20 connections) must fill
//! every section of the JSON with real deliveries and round trips.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::process::Command;

#[test]
fn tiny_run_fills_every_section() {
    let server = tests::chatmq_bin().unwrap();
    let out = tempfile::tempdir().unwrap();
    let args = [
        "all",
        "--duration",
        "1",
        "--warmup",
        "0.5",
        "--publishers",
        "2",
        "--subscribers",
        "2",
        "--rooms",
        "1",
        "--window",
        "4",
        "--rate",
        "100",
        "--history-events",
        "2000",
        "--history-requests",
        "5",
        "--catchup-rooms",
        "3",
        "--catchup-per-room",
        "10",
        "--connections",
        "20",
    ];
    let run = Command::new(env!("CARGO_BIN_EXE_chatmq-bench"))
        .args(args)
        .arg("--server-bin")
        .arg(&server)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "bench failed:\n{stdout}\n{stderr}");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("latest.json")).unwrap())
            .unwrap();
    let md = std::fs::read_to_string(out.path().join("latest.md")).unwrap();

    let names: Vec<&str> = r["load"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    for want in [
        "raw pass-through, chatmq",
        "chat path, chatmq",
        "chat path, chatmq, all in 1 room",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let fixed = r["fixed_rate"].as_array().unwrap();
    assert_eq!(fixed.len(), 2, "{r}");
    for l in r["load"].as_array().unwrap().iter().chain(fixed) {
        assert!(
            l["delivered_per_s"].as_f64().unwrap() > 0.0,
            "no deliveries: {l}"
        );
        assert!(
            l["latency"]["p99_ms"].as_f64().unwrap() > 0.0,
            "no latency: {l}"
        );
        assert!(
            l["server_peak_rss_mib"].as_f64().unwrap() > 0.0,
            "no RSS: {l}"
        );
        assert!(md.contains(l["name"].as_str().unwrap()), "{md}");
    }
    let h = &r["history"];
    assert_eq!(h["latest50"]["count"], 5, "{h}");
    assert_eq!(h["page1000"]["count"], 3, "{h}");
    assert_eq!(h["catchup"]["received_events"], 30, "{h}");
    let c = &r["connections"];
    assert_eq!(c["connected"], 20, "{c}");
    // 20 connections are within the allocator's noise: RSS may even shrink
    // (the figure is clamped at 0), so only its presence is checked here.
    assert!(
        c["rss_per_conn_kib"].as_f64().is_some_and(|v| v >= 0.0),
        "{c}"
    );
    assert!(c["storm"]["caught_up"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(r["targets"].as_array().unwrap().len(), 7);
    assert!(md.contains("| target | goal |"), "{md}");
}
