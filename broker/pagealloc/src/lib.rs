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
//! block comes from glibc instead and its address is remembered in a small
//! table, so that freeing it goes back to glibc.
//!
//! This crate is the project's only `unsafe` code: a `GlobalAlloc` cannot
//! be written without it. Everything else forbids `unsafe`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Blocks of this size or more are mapped on their own.
pub const LARGE: usize = 16 * 1024;

/// Alignments up to this are guaranteed by a fresh mapping (the smallest
/// page size Linux uses).
const MAP_ALIGN: usize = 4096;

/// Capacity of the table of large blocks that had to come from glibc.
const FALLBACK_SLOTS: usize = 4096;

/// The allocator. Install it with
/// `#[global_allocator] static A: pagealloc::PageAlloc = pagealloc::PageAlloc;`.
pub struct PageAlloc;

static FALLBACK: [AtomicUsize; FALLBACK_SLOTS] = [const { AtomicUsize::new(0) }; FALLBACK_SLOTS];
static FALLBACK_LIVE: AtomicUsize = AtomicUsize::new(0);
static MAPPED_LIVE: AtomicUsize = AtomicUsize::new(0);

/// Large blocks currently mapped on their own, and large blocks currently
/// served by glibc because a mapping was refused (for tests and metrics).
pub fn stats() -> (usize, usize) {
    (
        MAPPED_LIVE.load(Ordering::Relaxed),
        FALLBACK_LIVE.load(Ordering::Relaxed),
    )
}

fn is_large(layout: &Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= MAP_ALIGN
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
    unsafe { libc::madvise(p, size, libc::MADV_NOHUGEPAGE) };
    MAPPED_LIVE.fetch_add(1, Ordering::Relaxed);
    p.cast()
}

/// Removes `p` from the fallback table; true when it was there.
fn take_fallback(p: *mut u8) -> bool {
    if FALLBACK_LIVE.load(Ordering::Acquire) == 0 {
        return false;
    }
    let addr = p as usize;
    for slot in &FALLBACK {
        if slot
            .compare_exchange(addr, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            FALLBACK_LIVE.fetch_sub(1, Ordering::AcqRel);
            return true;
        }
    }
    false
}

/// Records a large block served by glibc; false when the table is full.
fn put_fallback(p: *mut u8) -> bool {
    let addr = p as usize;
    for slot in &FALLBACK {
        if slot
            .compare_exchange(0, addr, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            FALLBACK_LIVE.fetch_add(1, Ordering::AcqRel);
            return true;
        }
    }
    false
}

impl PageAlloc {
    /// A large block from glibc, recorded so that `dealloc` returns it there.
    ///
    /// # Safety
    /// `layout` has a non-zero size.
    unsafe fn fallback(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        // SAFETY: the caller's layout is non-zero sized.
        let p = unsafe {
            if zeroed {
                System.alloc_zeroed(layout)
            } else {
                System.alloc(layout)
            }
        };
        if p.is_null() || put_fallback(p) {
            return p;
        }
        // The table is full: report an allocation failure rather than hand
        // out a block that would later be unmapped.
        // SAFETY: `p` came from `System` with this layout just above.
        unsafe { System.dealloc(p, layout) };
        ptr::null_mut()
    }
}

// SAFETY: every block is either a fresh mapping of at least `layout.size()`
// bytes, page aligned (so aligned for any `layout.align() <= MAP_ALIGN`),
// or comes from `System` with the caller's layout; `dealloc` and `realloc`
// tell the two apart by the layout's size class and the fallback table,
// and return each to where it came from.
unsafe impl GlobalAlloc for PageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            let p = map(layout.size());
            if !p.is_null() {
                return p;
            }
            // SAFETY: large layouts are non-zero sized.
            return unsafe { self.fallback(layout, false) };
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            // A fresh anonymous mapping reads as zeros.
            let p = map(layout.size());
            if !p.is_null() {
                return p;
            }
            // SAFETY: large layouts are non-zero sized.
            return unsafe { self.fallback(layout, true) };
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if is_large(&layout) {
            if take_fallback(p) {
                // SAFETY: recorded by `fallback`, which got it from `System`
                // with this layout.
                unsafe { System.dealloc(p, layout) };
                return;
            }
            // SAFETY: a large block not in the table is a mapping made by
            // `map` with this size, which the caller no longer uses.
            unsafe { libc::munmap(p.cast(), layout.size()) };
            MAPPED_LIVE.fetch_sub(1, Ordering::Relaxed);
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
            (true, true) if !take_fallback_peek(p) => {
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

/// True when `p` is in the fallback table (without removing it).
fn take_fallback_peek(p: *mut u8) -> bool {
    if FALLBACK_LIVE.load(Ordering::Acquire) == 0 {
        return false;
    }
    let addr = p as usize;
    FALLBACK.iter().any(|s| s.load(Ordering::Acquire) == addr)
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
            assert_eq!(l as usize % MAP_ALIGN, 0, "a mapping is page aligned");
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
            let pages = size / MAP_ALIGN;
            let mut vec = vec![0u8; pages];
            assert_eq!(libc::mincore(p.cast(), size, vec.as_mut_ptr()), 0);
            assert!(
                vec.iter().all(|v| v & 1 == 0),
                "no page resident before use"
            );
            *p.add(5 * MAP_ALIGN) = 1;
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
        // SAFETY: each block is used within its layout and freed once.
        unsafe {
            let l = layout(LARGE * 4, 8);
            let p = A.fallback(l, false);
            assert!(!p.is_null());
            assert!(take_fallback_peek(p));
            ptr::write_bytes(p, 7, l.size());
            // grows inside glibc's side, then is freed by glibc
            let q = A.realloc(p, l, LARGE * 5);
            assert!(!q.is_null());
            assert!(!take_fallback_peek(p) || p == q);
            assert!((0..l.size()).all(|i| *q.add(i) == 7));
            A.dealloc(q, layout(LARGE * 5, 8));
            assert!(!take_fallback_peek(q));
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
