//! The Helm chart (helm/chatmq), checked by tests/helm/check_chart.py: Helm's
//! own engine (PyPI helm-python-sdk) lints and renders it with the default
//! values and every helm/chatmq/ci/*.yaml variant, kubernetes-validate checks
//! each manifest against Kubernetes' schemas, the script asserts what the
//! templates produce, and the chatmq binary must accept each rendered
//! config. Skipped with a `SKIPPED:` line when the Python packages are
//! missing (.ci/run installs them).

use std::process::Command;
use tests::{chatmq_bin, on_path, workspace_root};

/// The script's exit status for "packages not importable".
const SKIP_STATUS: i32 = 77;

#[test]
fn helm_chart_lints_renders_and_validates() {
    if !on_path("python3") {
        println!("SKIPPED: python3 not installed");
        return;
    }
    let script = workspace_root().join("tests/helm/check_chart.py");
    let chatmq = chatmq_bin().expect("the chatmq binary");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--chatmq")
        .arg(&chatmq)
        .output()
        .expect("spawning python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(SKIP_STATUS) {
        println!("{}", stdout.trim());
        return;
    }
    assert!(
        out.status.success(),
        "{} failed ({}):\n{stdout}\n{stderr}",
        script.display(),
        out.status
    );
    print!("{stdout}");
}
