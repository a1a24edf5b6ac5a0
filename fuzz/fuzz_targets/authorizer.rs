//! cargo-fuzz target `authorizer`: see `chatmq_fuzz::authz` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chatmq_fuzz::authz::run(data));
