//! `chatmq`'s global allocator: the system allocator (glibc malloc) for
//! everything, except blocks of [`LARGE`] bytes or more, which get an
//! anonymous mapping of their own.
//!
//! Why: rumqttd sizes each connection's queues for their maximum up front
//! (an incoming queue of 200 packets, an outgoing queue of 200
//! notifications, two ack logs of 100, a link cache of 100, and a
//! 1024-entry segment for every new filter: ~200 KB of capacity per
//! connection plus ~240 KB per reply topic), and its public API cannot size
//! them. glibc writes a chunk header at the start of every block and the
//! next chunk's header at its end, so each of those untouched queues costs
//! one or two resident pages: ~50 KiB per idle connection (see
//! `bench/results/profile.md`, finding 6). A mapping of its own has no
//! header: a page becomes resident only when something is written to it,
//! and all of them go back to the kernel when the block is freed.
//!
//! Small blocks, which are nearly all of the hot path's, stay with glibc.
//! rumqttd swaps its large queues between connections instead of
//! reallocating them, so large blocks are made at connect and subscribe
//! time, not per message.
//!
//! If the kernel refuses a mapping (`vm.max_map_count`, or memory), the
//! block comes from glibc instead, placed [`FALLBACK_OFFSET`] bytes into a
//! page-aligned glibc block: a mapping always starts on a page boundary and
//! a fallback block never does, so `dealloc` tells them apart by address
//! alone, with no table to fill up.
//!
//! This crate is the project's only `unsafe` code: a `GlobalAlloc` cannot
//! be written without it. Everything else forbids `unsafe`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Blocks of this size or more are mapped on their own.
pub const LARGE: usize = 16 * 1024;

/// The page size this relies on: mappings start on a multiple of it.
const PAGE: usize = 4096;

/// Where a fallback block starts inside its page-aligned glibc block: never
/// on a page boundary, and aligned for any alignment the large path takes.
const FALLBACK_OFFSET: usize = PAGE / 2;

/// The allocator. Install it with
/// `#[global_allocator] static A: pagealloc::PageAlloc = pagealloc::PageAlloc;`.
pub struct PageAlloc;

static MAPPED_LIVE: AtomicUsize = AtomicUsize::new(0);
static FALLBACK_LIVE: AtomicUsize = AtomicUsize::new(0);
static UNMAP_FAILED: AtomicUsize = AtomicUsize::new(0);

/// Counters for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Large blocks currently mapped on their own.
    pub mapped: usize,
    /// Large blocks currently in glibc because a mapping was refused.
    pub fallback: usize,
    /// Frees whose `munmap` the kernel refused (the pages were released
    /// with `madvise` instead; the address range stays reserved).
    pub unmap_failed: usize,
}

/// Hands the free memory at the top and inside glibc's heaps back to the
/// system (`malloc_trim(0)`): glibc keeps what small blocks freed, so the
/// memory of many sessions ending together would otherwise stay resident.
pub fn trim() {
    // SAFETY: malloc_trim takes no pointers; glibc locks its arenas itself.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn stats() -> Stats {
    Stats {
        mapped: MAPPED_LIVE.load(Ordering::Relaxed),
        fallback: FALLBACK_LIVE.load(Ordering::Relaxed),
        unmap_failed: UNMAP_FAILED.load(Ordering::Relaxed),
    }
}

/// Blocks that take the large path: big enough, and aligned at most to
/// [`FALLBACK_OFFSET`] (larger alignments stay with glibc).
fn is_large(layout: &Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= FALLBACK_OFFSET
}

/// Whether a large block is a mapping (page aligned) or a fallback.
fn is_mapping(p: *mut u8) -> bool {
    (p as usize).is_multiple_of(PAGE)
}

/// The glibc layout behind a fallback block of `layout`.
fn fallback_layout(layout: &Layout) -> Option<Layout> {
    Layout::from_size_align(layout.size().checked_add(FALLBACK_OFFSET)?, PAGE).ok()
}

fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address the kernel picks
    // has no preconditions; failure is reported as MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return ptr::null_mut();
    }
    // Transparent huge pages would make a sparse block resident 2 MiB at a
    // time where the system enables them for every mapping. Advice only:
    // its failure changes nothing.
    // SAFETY: `p` is the start of a mapping of `size` bytes made above.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::madvise(p, size, libc::MADV_NOHUGEPAGE)
    };
    MAPPED_LIVE.fetch_add(1, Ordering::Relaxed);
    p.cast()
}

fn unmap(p: *mut u8, size: usize) {
    // SAFETY: `p` is a mapping of `size` bytes made by `map`, no longer used.
    if unsafe { libc::munmap(p.cast(), size) } != 0 {
        // Unmapping part of a merged mapping splits it, which the kernel
        // refuses at `vm.max_map_count`: give the pages back at least.
        UNMAP_FAILED.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same range; the memory is not used any more.
        unsafe { libc::madvise(p.cast(), size, libc::MADV_DONTNEED) };
    }
    MAPPED_LIVE.fetch_sub(1, Ordering::Relaxed);
}

impl PageAlloc {
    /// A large block from glibc, when the kernel refused a mapping.
    ///
    /// # Safety
    /// `layout` is large (see [`is_large`]).
    unsafe fn fallback(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        let Some(outer) = fallback_layout(&layout) else {
            return ptr::null_mut();
        };
        // SAFETY: `outer` is non-zero sized.
        let base = unsafe {
            if zeroed {
                System.alloc_zeroed(outer)
            } else {
                System.alloc(outer)
            }
        };
        if base.is_null() {
            return base;
        }
        FALLBACK_LIVE.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `outer` is `FALLBACK_OFFSET` longer than the block.
        unsafe { base.add(FALLBACK_OFFSET) }
    }

    /// A large block: a mapping of its own (which reads as zeros), or a
    /// fallback when the kernel refuses one.
    ///
    /// # Safety
    /// `layout` is large (see [`is_large`]).
    unsafe fn alloc_large(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        let p = map(layout.size());
        if !p.is_null() {
            return p;
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { self.fallback(layout, zeroed) }
    }

    /// Frees a large block, mapping or fallback.
    ///
    /// # Safety
    /// `p` was returned by this allocator for the large `layout`.
    unsafe fn free_large(&self, p: *mut u8, layout: Layout) {
        if is_mapping(p) {
            unmap(p, layout.size());
            return;
        }
        if let Some(outer) = fallback_layout(&layout) {
            FALLBACK_LIVE.fetch_sub(1, Ordering::Relaxed);
            // SAFETY: `fallback` returned `base + FALLBACK_OFFSET` for a
            // glibc block of `outer`.
            unsafe { System.dealloc(p.sub(FALLBACK_OFFSET), outer) };
        }
    }
}

// SAFETY: a small block comes from `System` with the caller's layout. A
// large block is a fresh mapping of at least `layout.size()` bytes (page
// aligned, so aligned for any large layout), or a fallback inside a glibc
// block (aligned to `FALLBACK_OFFSET`, which bounds a large layout's
// alignment). `dealloc` and `realloc` tell small from large by the layout,
// and mapping from fallback by the address, and return each where it came
// from.
unsafe impl GlobalAlloc for PageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            // SAFETY: the layout is large.
            return unsafe { self.alloc_large(layout, false) };
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            // SAFETY: the layout is large.
            return unsafe { self.alloc_large(layout, true) };
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if is_large(&layout) {
            // SAFETY: a large block of this allocator with this layout.
            unsafe { self.free_large(p, layout) };
            return;
        }
        // SAFETY: small blocks all come from `System` with this layout.
        unsafe { System.dealloc(p, layout) }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to
        // `layout.align()`, does not overflow, and `layout.align()` is valid.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (is_large(&layout), is_large(&new)) {
            // SAFETY: small blocks come from `System` with this layout.
            (false, false) => unsafe { System.realloc(p, layout, new_size) },
            #[cfg(target_os = "linux")]
            (true, true) if is_mapping(p) => {
                // Both mapped: let the kernel move or grow the pages.
                // SAFETY: `p` is a mapping of `layout.size()` bytes made by
                // `map`; on success the old range is no longer ours.
                let q = unsafe {
                    libc::mremap(p.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE)
                };
                if q != libc::MAP_FAILED {
                    return q.cast();
                }
                // SAFETY: the caller's contract, passed on.
                unsafe { self.move_to(p, layout, new) }
            }
            // SAFETY: the caller's contract, passed on.
            _ => unsafe { self.move_to(p, layout, new) },
        }
    }
}

impl PageAlloc {
    /// Realloc by copy, for a block changing sides (glibc <-> mapping).
    ///
    /// # Safety
    /// As for `GlobalAlloc::realloc`, with `new` the new layout.
    unsafe fn move_to(&self, p: *mut u8, old: Layout, new: Layout) -> *mut u8 {
        // SAFETY: `new` is non-zero sized (the caller's contract).
        let q = unsafe { self.alloc(new) };
        if !q.is_null() {
            // SAFETY: both blocks are live, distinct and at least this long.
            unsafe {
                ptr::copy_nonoverlapping(p, q, old.size().min(new.size()));
                self.dealloc(p, old);
            }
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The tests call the allocator directly; the test binary itself keeps
    // the default allocator.
    const A: PageAlloc = PageAlloc;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).expect("valid layout")
    }

    #[test]
    fn small_blocks_come_from_glibc_and_large_ones_are_mapped() {
        let small = layout(LARGE - 1, 8);
        let large = layout(LARGE, 8);
        // SAFETY: each block is used within its layout and freed once.
        unsafe {
            let s = A.alloc(small);
            assert!(!s.is_null());
            let l = A.alloc(large);
            assert!(!l.is_null());
            assert_eq!(l as usize % PAGE, 0, "a mapping is page aligned");
            ptr::write_bytes(l, 0xAB, LARGE);
            ptr::write_bytes(s, 0xCD, LARGE - 1);
            assert_eq!(*l.add(LARGE - 1), 0xAB);
            A.dealloc(l, large);
            A.dealloc(s, small);
        }
    }

    #[test]
    fn an_untouched_large_block_is_not_resident() {
        let size = 64 * LARGE; // 1 MiB
        let l = layout(size, 16);
        // SAFETY: each block is used within its layout and freed once.
        unsafe {
            let p = A.alloc(l);
            assert!(!p.is_null());
            let pages = size / PAGE;
            let mut vec = vec![0u8; pages];
            assert_eq!(libc::mincore(p.cast(), size, vec.as_mut_ptr()), 0);
            assert!(
                vec.iter().all(|v| v & 1 == 0),
                "no page resident before use"
            );
            *p.add(5 * PAGE) = 1;
            assert_eq!(libc::mincore(p.cast(), size, vec.as_mut_ptr()), 0);
            let resident: Vec<usize> = (0..pages).filter(|i| vec[*i] & 1 == 1).collect();
            assert_eq!(resident, vec![5], "only the written page is resident");
            A.dealloc(p, l);
        }
    }

    #[test]
    fn zeroed_and_realloc_keep_contents_across_both_sides() {
        // SAFETY: each block is used within its layout and freed once.
        unsafe {
            let l = layout(LARGE * 2, 64);
            let p = A.alloc_zeroed(l);
            assert!(!p.is_null());
            assert!((0..l.size()).all(|i| *p.add(i) == 0));
            for i in 0..l.size() {
                *p.add(i) = (i % 251) as u8;
            }
            // mapped -> mapped (mremap)
            let p = A.realloc(p, l, LARGE * 8);
            assert!(!p.is_null());
            assert!((0..l.size()).all(|i| *p.add(i) == (i % 251) as u8));
            // mapped -> glibc
            let l8 = layout(LARGE * 8, 64);
            let p = A.realloc(p, l8, 100);
            assert!(!p.is_null());
            assert!((0..100).all(|i| *p.add(i) == (i % 251) as u8));
            // glibc -> mapped
            let l100 = layout(100, 64);
            let p = A.realloc(p, l100, LARGE * 3);
            assert!(!p.is_null());
            assert!((0..100).all(|i| *p.add(i) == (i % 251) as u8));
            A.dealloc(p, layout(LARGE * 3, 64));
        }
    }

    #[test]
    fn a_refused_mapping_falls_back_to_glibc_and_is_freed_there() {
        let l = layout(LARGE * 4, 64);
        // SAFETY: each block is used within its layout and freed once.
        unsafe {
            let p = A.fallback(l, false);
            assert!(!p.is_null());
            assert!(!is_mapping(p), "a fallback block is never page aligned");
            assert_eq!(p as usize % l.align(), 0, "and aligned as asked");
            ptr::write_bytes(p, 7, l.size());
            // moves to a mapping when it grows, contents kept
            let q = A.realloc(p, l, LARGE * 5);
            assert!(!q.is_null());
            assert!((0..l.size()).all(|i| *q.add(i) == 7));
            A.dealloc(q, layout(LARGE * 5, 64));
            // freed straight from a fallback too
            let z = A.fallback(l, true);
            assert!(!z.is_null() && !is_mapping(z));
            assert!((0..l.size()).all(|i| *z.add(i) == 0));
            A.dealloc(z, l);
        }
    }

    #[test]
    fn many_fallbacks_at_once_need_no_table() {
        // more than any fixed table would hold
        let l = layout(LARGE, 8);
        // SAFETY: each block is used within its layout and freed once.
        unsafe {
            let blocks: Vec<*mut u8> = (0..10_000).map(|_| A.fallback(l, false)).collect();
            assert!(blocks.iter().all(|p| !p.is_null() && !is_mapping(*p)));
            for p in blocks {
                A.dealloc(p, l);
            }
        }
    }

    #[test]
    fn large_alignments_stay_with_glibc() {
        let l = layout(LARGE, 2 * 1024 * 1024);
        // SAFETY: each block is used within its layout and freed once.
        unsafe {
            let p = A.alloc(l);
            assert!(!p.is_null());
            assert_eq!(p as usize % l.align(), 0);
            A.dealloc(p, l);
        }
    }
}
