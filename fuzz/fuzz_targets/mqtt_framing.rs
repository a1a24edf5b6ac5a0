//! cargo-fuzz target `mqtt_framing`: see `chatmq_fuzz::framing` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chatmq_fuzz::framing::run(data));
