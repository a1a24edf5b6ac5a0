//! See `hostile.rs`.
