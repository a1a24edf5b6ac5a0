//! The logic of chatmq's cargo-fuzz targets, as a library so the targets
//! stay one line and the seed corpus and regression inputs run as plain
//! tests (`cargo test` in this directory). See docs/fuzzing.md.

pub mod authz;
pub mod framing;
pub mod memstore;
pub mod payloads;
