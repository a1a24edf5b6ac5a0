//! cargo-fuzz target `payloads`: see `chatmq_fuzz::payloads` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chatmq_fuzz::payloads::run(data));
