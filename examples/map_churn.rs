//! The store under the soak's load, without HTTP and in simulated time, to
//! see how its memory behaves over hours in a minute or two: players that
//! heartbeat on their poll, plus a stream of short sessions of other users
//! that expire and are swept, so user entries keep being inserted and
//! removed. Prints at each simulated minute the process RSS and the bytes
//! the program holds (counted at the global allocator).
//!
//! ```text
//! cargo run --release --example map_churn -- [PLAYERS] [MINUTES] [CHURN/s] [HEARTBEATS/s]
//! ```
//!
//! Defaults: 300,000 players, 120 minutes, 200 starts/s of sessions that
//! live 15 s over 6,000 users, 10,000 heartbeats/s (a 30 s poll), a sweep
//! every 3 s. One thread does everything, so the figures show the map and
//! the allocator, not thread placement.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

use mimalloc::MiMalloc;
use streamcap::policy::{Admission, Beat, BeatOutcome, Limits};
use streamcap::session::Session;
use streamcap::store::Store;
use streamcap::wire::{Policy, SessionId};

/// mimalloc, counting the bytes the program holds: RSS above this is the
/// allocator's (free memory it keeps, fragmentation), not the program's.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size, Ordering::Relaxed);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn held_mib() -> f64 {
    HELD.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
}

const LIMITS: Limits<'static> = Limits { limit: 3, policy: Policy::RejectNew, group: None };
const PLAYER_TTL_MS: u64 = 90_000;
const CHURN_TTL_MS: u64 = 15_000;
const CHURN_USERS: usize = 6_000;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next());
    kib.and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN) / 1024.0
}

fn arg(n: usize, default: u64) -> u64 {
    std::env::args().nth(n).map_or(default, |a| a.parse().unwrap_or_else(|_| panic!("argument {n}: not a number: {a}")))
}

fn main() {
    let (players, minutes, churn_rate, beat_rate) = (arg(1, 300_000), arg(2, 120), arg(3, 200), arg(4, 10_000));
    let store = Store::new(1024, [9; 16]);
    let key = |user: &str| store.user_key("acme", user);
    let admit = |user: &str, id: u64, now: u64, ttl: u64| {
        let session = Session { id: SessionId(id), started_ms: now, expires_ms: (now + ttl).into(), info: None };
        let a = Admission { session, limits: LIMITS, replace: None, unknown_until_ms: now + ttl };
        store.admit(key(user), &a, now).is_ok()
    };
    let player_keys: Vec<_> = (0..players).map(|i| key(&format!("player-{i}"))).collect();

    let t0 = 1_800_000_000_000u64;
    println!("baseline: RSS {:.1} MiB", rss_mib());
    for i in 0..players {
        assert!(admit(&format!("player-{i}"), i, t0, PLAYER_TTL_MS), "player {i} refused");
    }
    println!("{players} players: RSS {:.1} MiB, held {:.1} MiB", rss_mib(), held_mib());

    let (mut next_id, mut churned, mut beat) = (players, 0u64, 0u64);
    for sec in 1..=minutes * 60 {
        let now = t0 + sec * 1000;
        for _ in 0..churn_rate {
            next_id += 1;
            admit(&format!("churn-{}", churned % CHURN_USERS as u64), next_id, now, CHURN_TTL_MS);
            churned += 1;
        }
        for _ in 0..beat_rate {
            let i = (beat % players) as usize;
            beat += 1;
            let rebuild = || unreachable!("players are never lost");
            let b = Beat {
                id: SessionId(i as u64),
                rebuild: &rebuild,
                limits: LIMITS,
                token_expires_ms: now + PLAYER_TTL_MS,
                renew_to_ms: now + PLAYER_TTL_MS,
                carried: Vec::new(),
            };
            assert!(matches!(store.heartbeat(player_keys[i], &b, now), BeatOutcome::Renewed { .. }));
        }
        if sec % 3 == 0 {
            store.sweep_paced(now, &mut || {});
        }
        if sec % 60 == 0 {
            println!(
                "minute {}: RSS {:.1} MiB, held {:.1} MiB, {} records",
                sec / 60,
                rss_mib(),
                held_mib(),
                store.records()
            );
        }
    }
}
