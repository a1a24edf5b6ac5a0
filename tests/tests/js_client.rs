//! The JavaScript client (clients/js) and the demo page, tested by Node's
//! test runner against this server: `clients/js/test/client.test.js`
//! (MQTT.js over WebSocket from Node) and `clients/js/test/browser.test.js`
//! (the demo page served by the server's HTTP port, in Debian's Chromium
//! driven by playwright-core). Skipped, saying why, without Node or the
//! client's npm packages; under `CHATMQ_JS_REQUIRED` (set by `.ci/run`)
//! those, and Chromium, must be there and nothing may skip.
//!
//! First `tsc` checks the TypeScript types against `test/types.ts`.
//! `CHATMQ_SCREENSHOT=path` makes the browser test save the demo page's
//! screenshot there (the README's picture).

use std::process::Command;
use tests::{on_path, workspace_root, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_and_demo_page() -> anyhow::Result<()> {
    let required = std::env::var_os("CHATMQ_JS_REQUIRED").is_some();
    let dir = workspace_root().join("clients/js");
    let mqtt_js = dir.join("node_modules/mqtt/dist/mqtt.esm.js");
    let missing = if !on_path("node") {
        Some("node not installed".to_owned())
    } else if !mqtt_js.is_file() || !dir.join("node_modules/playwright-core").is_dir() {
        Some("clients/js/node_modules missing (cd clients/js && npm ci)".to_owned())
    } else if required && !std::path::Path::new("/usr/bin/chromium").exists() {
        Some("/usr/bin/chromium missing (apt install chromium)".to_owned())
    } else {
        None
    };
    if let Some(why) = missing {
        assert!(!required, "CHATMQ_JS_REQUIRED is set but {why}");
        println!("SKIPPED: {why}");
        return Ok(());
    }
    // the TypeScript types describe a real app's use (test/types.ts)
    let tsc = Command::new(dir.join("node_modules/.bin/tsc"))
        .current_dir(&dir)
        .args(["-p", "test"])
        .output()?;
    assert!(
        tsc.status.success(),
        "tsc -p test (the client's types) failed:\n{}{}",
        String::from_utf8_lossy(&tsc.stdout),
        String::from_utf8_lossy(&tsc.stderr)
    );
    let srv = TestServer::builder()
        .toml(&format!(
            "demo_mqtt_js = {:?}\n",
            mqtt_js.display().to_string()
        ))
        .start()
        .await?;
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .args(["--test", "--test-reporter=spec"])
        .args(["test/client.test.js", "test/browser.test.js"])
        .env(
            "CHATMQ_WS_URL",
            format!("ws://127.0.0.1:{}/mqtt", srv.ws_port()),
        )
        .env(
            "CHATMQ_HTTP_URL",
            format!("http://127.0.0.1:{}", srv.http_port()),
        );
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "node --test failed ({}):\n{stdout}\n{stderr}\nserver log:\n{}",
        out.status,
        srv.log_tail()
    );
    let skipped = stdout
        .lines()
        .find_map(|l| {
            l.trim_start_matches(['ℹ', '#', ' '])
                .strip_prefix("skipped ")
        })
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(
        !required || skipped == 0,
        "{skipped} JS tests skipped under CHATMQ_JS_REQUIRED:\n{stdout}"
    );
    Ok(())
}
