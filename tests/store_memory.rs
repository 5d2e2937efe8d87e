//! The store's memory as the allocator sees it: tables that papaya replaced
//! while the map grew are freed by the sweeper's next pass, not held.
//!
//! This test binary counts live heap blocks of table size through its own
//! global allocator, so it holds this one test alone.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use streamcap::policy::{Admission, Limits};
use streamcap::session::Session;
use streamcap::store::Store;
use streamcap::wire::{Policy, SessionId};

/// Blocks this large are papaya tables here: a user's records and entry
/// are under 200 bytes, and a table of 2^15 slots takes 9 × 2^15.
const BIG: usize = 256 * 1024;

struct CountBig;

static LIVE_BIG: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountBig {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= BIG {
            LIVE_BIG.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= BIG {
            LIVE_BIG.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= BIG {
            LIVE_BIG.fetch_sub(1, Ordering::Relaxed);
        }
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: CountBig = CountBig;

#[test]
fn a_sweep_frees_the_tables_the_map_outgrew() {
    let now = 1_000_000;
    let store = Store::new(1024, [3; 16]);
    // New users only: inserts retire nothing of their own, so every table
    // papaya outgrows waits in this thread's batch of retired objects.
    for i in 0..100_000u64 {
        let user = store.user_key("acme", &format!("user-{i}"));
        let admission = Admission {
            session: Session { id: SessionId(i + 1), started_ms: now, expires_ms: (now + 90_000).into(), info: None },
            limits: Limits { limit: 3, policy: Policy::RejectNew, group: None },
            replace: None,
            unknown_until_ms: now + 95_000,
        };
        store.admit(user, &admission, now).expect("a new user is admitted");
    }
    let before = LIVE_BIG.load(Ordering::Relaxed);
    assert!(before >= 2, "the map grew through tables of 2^15 slots and more: {before} big blocks live");
    let swept = store.sweep(now);
    assert_eq!(swept.live, 100_000);
    assert_eq!(LIVE_BIG.load(Ordering::Relaxed), 1, "only the table in use is left ({before} before the sweep)");
}
