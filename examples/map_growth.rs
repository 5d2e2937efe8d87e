//! The store alone while it grows: is a heartbeat ever held up by the map
//! growing under it? One thread admits sessions from 0 to N as fast as it
//! can (users hold 1, 2 or 3 sessions, 2 on average, as in
//! `loadtest/bench.sh`), through every one of papaya's table resizes; a
//! second thread meanwhile renews random sessions already in the map, timing
//! each renewal. No HTTP, no network stack, no load generator: what is left
//! is the map's own cost while it grows, and the machine's scheduling.
//!
//! ```text
//! cargo run --release --example map_growth -- [SESSIONS] [STEP]
//! ```
//!
//! Defaults: 10,000,000 sessions, a line per 500,000. Each line gives the
//! renewals timed while the map grew through that step (p50, p99, p99.9,
//! max) and the slowest admission in it; the last lines, the whole run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;
use mimalloc::MiMalloc;
use streamcap::policy::{Admission, Beat, BeatOutcome, Limits};
use streamcap::session::Session;
use streamcap::store::{Store, UserKey};
use streamcap::wire::{Policy, SessionId};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

const LIMITS: Limits<'static> = Limits { limit: 3, policy: Policy::RejectNew, group: None };
const NOW: u64 = 1_800_000_000_000;
const TTL: u64 = 90_000;
/// Operations slower than this are listed with the map's size at the time.
const SLOW_NS: u64 = 1_000_000;
const SLOW_KEPT: usize = 100;

/// User `u` holds `u % 3 + 1` sessions.
fn sessions_of(u: u64) -> u64 {
    u % 3 + 1
}

/// The id of user `u`'s first session: every earlier user's sessions come first.
fn first_id(u: u64) -> u64 {
    6 * (u / 3) + [0, 1, 3][(u % 3) as usize]
}

fn arg(n: usize, default: u64) -> u64 {
    std::env::args().nth(n).map_or(default, |a| a.parse().unwrap_or_else(|_| panic!("argument {n}: not a number: {a}")))
}

/// Nanoseconds, 1 ns to 10 s.
fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid histogram bounds")
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn line(label: &str, renewals: &Histogram<u64>, slowest_admit_ns: u64) {
    println!(
        "{label:>22}  renewals {:>9}  p50 {:>7.4}  p99 {:>7.4}  p99.9 {:>7.3}  max {:>7.3}  slowest admit {:>7.3}",
        renewals.len(),
        ms(renewals.value_at_quantile(0.5)),
        ms(renewals.value_at_quantile(0.99)),
        ms(renewals.value_at_quantile(0.999)),
        ms(renewals.max()),
        ms(slowest_admit_ns),
    );
}

fn main() {
    let (sessions, step) = (arg(1, 10_000_000), arg(2, 500_000).max(1));
    // Users until `sessions` is reached (the last one may hold fewer).
    let users = (0..).find(|&u| first_id(u) >= sessions).unwrap_or(0);
    // The server's store, as `Limiter` builds it.
    let store = Arc::new(Store::new(1024, [3; 16]));
    let keys: Arc<Vec<UserKey>> = Arc::new((0..users).map(|u| store.user_key("acme", &format!("user-{u}"))).collect());
    println!("{sessions} sessions over {users} users, ms per operation; one line per {step} sessions grown");

    // Users whose sessions are all in the map, and sessions admitted so far.
    let ready = Arc::new(AtomicU64::new(0));
    let grown = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let windows = sessions.div_ceil(step).max(1) as usize;

    let beater = {
        let (store, keys, ready, grown, done) =
            (store.clone(), keys.clone(), ready.clone(), grown.clone(), done.clone());
        std::thread::spawn(move || {
            let mut per_window: Vec<Histogram<u64>> = (0..windows).map(|_| hist()).collect();
            let mut slow = Vec::new();
            let mut rng = 0x9e37_79b9_7f4a_7c15u64;
            let mut n = 0u64;
            while !done.load(Ordering::Acquire) {
                let ready = ready.load(Ordering::Acquire);
                if ready == 0 {
                    std::hint::spin_loop();
                    continue;
                }
                // xorshift64: a different user each time, spread over the map.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let u = rng % ready;
                n += 1;
                let rebuild = || unreachable!("no session is ever lost here");
                let b = Beat {
                    id: SessionId(first_id(u)),
                    rebuild: &rebuild,
                    limits: LIMITS,
                    token_expires_ms: NOW + TTL,
                    renew_to_ms: NOW + TTL + n % 1000,
                    carried: Vec::new(),
                };
                let at = grown.load(Ordering::Relaxed);
                let w = (at / step) as usize;
                let t = Instant::now();
                let beaten = store.heartbeat(keys[u as usize], &b, NOW);
                let ns = t.elapsed().as_nanos() as u64;
                assert!(matches!(beaten, BeatOutcome::Renewed { .. }), "user {u}: {beaten:?}");
                per_window[w.min(windows - 1)].saturating_record(ns.max(1));
                if ns > SLOW_NS && slow.len() < SLOW_KEPT {
                    slow.push((at, ns));
                }
            }
            (per_window, slow)
        })
    };

    let mut slowest_admit = vec![0u64; windows];
    let mut slow_admits = Vec::new();
    let mut admits = hist();
    let t0 = Instant::now();
    let mut id = 0u64;
    for u in 0..users {
        for _ in 0..sessions_of(u).min(sessions - id) {
            let a = Admission {
                session: Session { id: SessionId(id), started_ms: NOW, expires_ms: (NOW + TTL).into(), info: None },
                limits: LIMITS,
                replace: None,
                unknown_until_ms: NOW + TTL,
            };
            let t = Instant::now();
            let admitted = store.admit(keys[u as usize], &a, NOW);
            let ns = t.elapsed().as_nanos() as u64;
            assert!(admitted.is_ok(), "user {u}, session {id}: {admitted:?}");
            admits.saturating_record(ns.max(1));
            let w = ((id / step) as usize).min(windows - 1);
            slowest_admit[w] = slowest_admit[w].max(ns);
            if ns > SLOW_NS && slow_admits.len() < SLOW_KEPT {
                slow_admits.push((id, ns));
            }
            id += 1;
            grown.store(id, Ordering::Relaxed);
        }
        ready.store(u + 1, Ordering::Release);
    }
    let secs = t0.elapsed().as_secs_f64();
    done.store(true, Ordering::Release);
    let (per_window, slow_renewals) = beater.join().expect("the renewing thread panicked");

    let mut all = hist();
    for (w, h) in per_window.iter().enumerate().filter(|(_, h)| !h.is_empty()) {
        let from = w as u64 * step;
        line(&format!("{from}..{}", (from + step).min(sessions)), h, slowest_admit[w]);
        all.add(h).expect("same bounds");
    }
    line("all", &all, admits.max());
    println!(
        "{id} sessions admitted in {secs:.1} s ({:.0}/s; admission p99 {:.4} ms, p99.9 {:.3} ms); {} renewals meanwhile ({:.0}/s); {} records",
        id as f64 / secs,
        ms(admits.value_at_quantile(0.99)),
        ms(admits.value_at_quantile(0.999)),
        all.len(),
        all.len() as f64 / secs,
        store.records()
    );
    // Where the slow ones happened: a stall of the map would recur at the
    // same sizes from run to run (papaya's resizes), one of the machine would not.
    for (what, slow) in [("renewals", &slow_renewals), ("admissions", &slow_admits)] {
        let at: Vec<String> = slow.iter().map(|(at, ns)| format!("{:.2}M: {:.1}", *at as f64 / 1e6, ms(*ns))).collect();
        println!(
            "{what} over {} ms (sessions when it happened: ms): {}",
            ms(SLOW_NS),
            if at.is_empty() { "none".into() } else { at.join(", ") }
        );
    }
}
