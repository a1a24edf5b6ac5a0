//! `chatmq`: the chat server (see `chatmq --help` and the crate's docs).

use std::process::ExitCode;

/// glibc malloc, with large blocks (rumqttd's preallocated per-connection
/// queues) mapped on their own so untouched pages cost nothing: see the
/// `pagealloc` crate.
#[global_allocator]
static ALLOC: pagealloc::PageAlloc = pagealloc::PageAlloc;

fn main() -> ExitCode {
    chatmq::cli::main()
}
