//! `configure` and `trim`, alone in their own test binary: mimalloc's
//! options must be set before other threads use it.

use std::alloc::{GlobalAlloc, Layout};

#[test]
fn configure_sets_the_servers_options_unless_the_environment_says_otherwise() {
    pagealloc::configure();
    match std::env::var("MIMALLOC_PURGE_DELAY") {
        Ok(v) => assert_eq!(
            pagealloc::purge_delay().to_string(),
            v.trim(),
            "the operator's value stands"
        ),
        Err(_) => assert_eq!(
            pagealloc::purge_delay(),
            i64::from(pagealloc::PURGE_DELAY_MS),
            "freed pages go back after 10 ms, not mimalloc's 1 s"
        ),
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        assert_eq!(pagealloc::allow_thp(), 0, "mimalloc asks for no huge pages");
        #[cfg(target_os = "linux")]
        assert!(
            pagealloc::thp_disabled(),
            "and the kernel gives this process none"
        );
    }

    // trim after many small blocks come and go: it returns and the
    // allocator still works.
    let a = pagealloc::PageAlloc;
    let l = Layout::from_size_align(64, 8).expect("layout");
    // SAFETY: each block is used within its layout and freed once.
    unsafe {
        let blocks: Vec<*mut u8> = (0..10_000).map(|_| a.alloc(l)).collect();
        assert!(blocks.iter().all(|p| !p.is_null()));
        for p in blocks {
            a.dealloc(p, l);
        }
    }
    pagealloc::trim();
    // SAFETY: as above.
    unsafe {
        let p = a.alloc(l);
        assert!(!p.is_null());
        *p = 7;
        assert_eq!(*p, 7);
        a.dealloc(p, l);
    }
}
