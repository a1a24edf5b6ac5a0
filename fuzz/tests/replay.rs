//! Runs the seed corpus and every saved regression input through the
//! targets' logic, without libFuzzer: `cargo test` in `fuzz/`.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    // the committed files only: seeds (not a local run's corpus) and regressions
    for (dir, seeds_only) in [("corpus", true), ("regressions", false)] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if seeds_only && !name.starts_with("seed-") {
                continue;
            }
            let data = std::fs::read(e.path()).unwrap_or_else(|err| panic!("{name}: {err}"));
            eprintln!("{target}: {name}");
            run(&data);
            n += 1;
        }
    }
    eprintln!("{target}: {n} inputs");
}

#[test]
fn mqtt_framing_corpus() {
    replay("mqtt_framing", chatmq_fuzz::framing::run);
}

#[test]
fn payloads_corpus() {
    replay("payloads", chatmq_fuzz::payloads::run);
}

#[test]
fn authorizer_corpus() {
    replay("authorizer", chatmq_fuzz::authz::run);
}
