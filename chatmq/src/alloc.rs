//! The allocator's counters (`pagealloc::stats`) as gauges. The binary
//! installs `pagealloc::PageAlloc` (see `main.rs`); in a process that does
//! not, the gauges stay at zero.

use chat_bridge::metrics::gauge;
use std::time::Duration;

/// Registers the gauges and refreshes them every 5 s.
pub(crate) fn metrics(registry: &prometheus::Registry) {
    let mapped = gauge(
        registry,
        "chatmq_alloc_mapped_blocks",
        "Blocks of 16 KiB or more mapped on their own by the allocator",
    );
    let fallback = gauge(
        registry,
        "chatmq_alloc_fallback_blocks",
        "Large blocks served by glibc because the kernel refused a mapping (vm.max_map_count)",
    );
    let unmap_failed = gauge(
        registry,
        "chatmq_alloc_unmap_failed",
        "Frees whose munmap the kernel refused (pages released, address range kept)",
    );
    tokio::spawn(async move {
        loop {
            let s = pagealloc::stats();
            mapped.set(s.mapped as i64);
            fallback.set(s.fallback as i64);
            unmap_failed.set(s.unmap_failed as i64);
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
}
