//! The one background sweeper (docs/spec.md §7): a task the store starts
//! ([`Store::spawn_sweeper`]) that drops what has expired, keeps the
//! gauges current and stops on shutdown. It paces itself to a small share
//! of one core, hurries through a mass expiry, and decides when to ask the
//! allocator to give freed memory back ([`FreedHook`]). Each pass is
//! [`Store::sweep_paced`]; nothing here touches a record.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::{Store, Swept};

/// Called on the sweeper's thread after a pass that dropped many records.
pub type FreedHook = Arc<dyn Fn() + Send + Sync>;

/// A sweep pass that drops at least this many records (and an eighth of
/// what it keeps) calls the [`FreedHook`].
const FREED_HOOK_AFTER: usize = 4096;

/// The sweeper: every `every`, or less often when the map is so large that
/// its passes would otherwise take more than about 2% of one core. A pass
/// sleeps briefly between chunks of users so that it never holds a core for
/// long: on a busy two-core machine a 50 ms burst shows in request latency.
/// While it waits out a long budget it still looks every `every`: once
/// every session held has expired (a mass expiry, the end of a load test),
/// the pass that clears them runs at once, once per such moment.
pub(crate) async fn run(
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    every: Duration,
    freed: Option<FreedHook>,
    mut stop: watch::Receiver<bool>,
) {
    const PAUSE: Duration = Duration::from_micros(100);
    let mut next = Instant::now();
    let mut cleared_for = None;
    let mut freeing = Freeing::default();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(next.min(Instant::now() + every)) => {
                if Instant::now() < next {
                    let expired = store.all_sessions_expired(now_ms());
                    if expired.is_none() || expired == cleared_for {
                        continue;
                    }
                    cleared_for = expired;
                }
                let (store, pass_metrics, freed, mut state) = (store.clone(), metrics.clone(), freed.clone(), freeing);
                // A sweep walks the whole map: keep it off the request workers.
                let pass = tokio::task::spawn_blocking(move || {
                    let began = std::time::Instant::now();
                    let mut paused = Duration::ZERO;
                    let swept = store.sweep_paced(now_ms(), &mut || {
                        std::thread::sleep(PAUSE);
                        paused += PAUSE;
                    });
                    pass_metrics.swept(&swept);
                    let busy = began.elapsed().saturating_sub(paused);
                    let (hook_now, hurry) = state.after(&swept);
                    if hook_now && let Some(hook) = freed {
                        hook();
                    }
                    (busy, hurry, state)
                })
                .await;
                let budget = match pass {
                    Ok((busy, hurry, state)) => {
                        freeing = state;
                        // While a mass expiry is being cleared, the next pass
                        // comes at once rather than after its CPU budget.
                        if hurry { Duration::ZERO } else { busy * 49 }
                    }
                    Err(e) if e.is_panic() => {
                        // What the pass did before it panicked stays done; the
                        // next one starts from the state before it.
                        metrics.sweeper_panicked();
                        tracing::error!(error = %e, "a sweep pass panicked; the sweeper carries on");
                        Duration::ZERO
                    }
                    // Cancelled: the runtime is shutting down.
                    Err(_) => break,
                };
                next = Instant::now() + every.max(budget);
            }
        }
    }
}

/// When the sweeper calls the [`FreedHook`]: once the records dropped since
/// its last call (expired sessions, ended tombstones) reach
/// `FREED_HOOK_AFTER` and an eighth of those still held, and once more on
/// the pass after, when what that pass retired (papaya's batches) has been
/// freed too; and on the pass that lets go of an emptied map, whose table
/// is freed only then (after the last sessions expired, often minutes after
/// the last mass drop).
#[derive(Clone, Copy, Default)]
struct Freeing {
    records: usize,
    dropped: usize,
    trailing: bool,
}

impl Freeing {
    /// Takes in a pass: whether to call the hook now, and whether this pass
    /// alone dropped many records (a mass expiry is under way).
    fn after(&mut self, swept: &Swept) -> (bool, bool) {
        let dropped = swept.expired.max(self.records.saturating_sub(swept.records));
        let many = |n: usize| n >= FREED_HOOK_AFTER.max(swept.records / 8);
        self.records = swept.records;
        self.dropped += dropped;
        let trailing = std::mem::take(&mut self.trailing);
        if many(self.dropped) {
            self.dropped = 0;
            self.trailing = true;
            return (true, many(dropped));
        }
        (trailing || swept.released_map, many(dropped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Admission, Limits};
    use crate::session::Session;
    use crate::wire::{Policy, SessionId};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Puts `n` users with one session each that expired a second ago.
    fn expired_sessions(store: &Store, from: u64, n: u64) {
        let now = now_ms();
        for i in from..from + n {
            let a = Admission {
                session: Session {
                    id: SessionId(i),
                    started_ms: now - 10_000,
                    expires_ms: (now - 1000).into(),
                    info: None,
                },
                limits: Limits { limit: 1, policy: Policy::RejectNew, group: None },
                replace: None,
                unknown_until_ms: now,
            };
            store.admit(store.user_key("acme", &i.to_string()), &a, now - 10_000).unwrap();
        }
    }

    fn panics_counted(metrics: &Arc<Metrics>) -> Option<u64> {
        let text = metrics.render(crate::metrics::Format::OpenMetrics);
        text.lines().find_map(|l| l.strip_prefix("streamcap_sweeper_panics_total ")?.parse().ok())
    }

    /// Waits up to 10 s for `done`.
    async fn until(mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..1000 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_pass_is_counted_and_the_sweeper_carries_on() {
        let store = Arc::new(Store::new(16, [1; 16]));
        let metrics = Arc::new(Metrics::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        // The hook runs inside the pass: its first call panics.
        let hook: FreedHook = Arc::new(move || {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("the first freed hook fails");
            }
        });
        let n = FREED_HOOK_AFTER as u64 + 100;
        expired_sessions(&store, 0, n);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = store.spawn_sweeper(metrics.clone(), Duration::from_millis(10), Some(hook), stop_rx);

        assert!(until(|| panics_counted(&metrics) == Some(1)).await, "the panic was not counted");
        assert_eq!(store.records(), 0, "the pass swept before its hook panicked");
        // A later mass expiry is swept, and its hook called, by the same task.
        expired_sessions(&store, n, n);
        assert!(until(|| store.records() == 0 && calls.load(Ordering::SeqCst) >= 2).await, "the sweeper stopped");
        assert_eq!(panics_counted(&metrics), Some(1));
        assert!(!task.is_finished());
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    fn pass(records: usize, expired: usize) -> Swept {
        Swept { records, expired, ..Swept::default() }
    }

    #[test]
    fn the_freed_hook_runs_after_many_drops_and_on_the_pass_after() {
        let mut f = Freeing::default();
        assert!(!f.after(&pass(100_000, 0)).0, "growing");
        assert!(!f.after(&pass(97_000, 3_000)).0);
        // 6,000 dropped in all: over 4,096 and over an eighth of 94,000.
        assert!(!f.after(&pass(94_000, 3_000)).0, "6,000 < 94,000 / 8");
        assert!(f.after(&pass(80_000, 14_000)).0, "20,000 >= 80,000 / 8");
        assert!(f.after(&pass(80_000, 0)).0, "the trailing pass");
        assert!(!f.after(&pass(80_000, 0)).0);
        // A big drop on a trailing pass starts its own round.
        assert!(f.after(&pass(60_000, 20_000)).0);
        assert!(f.after(&pass(0, 60_000)).0, "trailing, and a round of its own");
        assert!(f.after(&pass(0, 0)).0, "its trailing pass");
        assert!(!f.after(&pass(0, 0)).0);
        // Expired sessions count even when starts keep the total level.
        assert!(!f.after(&pass(80_000, 5_000)).0);
        assert!(f.after(&pass(80_000, 5_000)).0);
        // A pass that drops many records on its own hurries the next one.
        let mut f = Freeing::default();
        assert_eq!(f.after(&pass(10_000_000, 0)), (false, false));
        assert_eq!(f.after(&pass(5_000_000, 5_000_000)), (true, true));
        assert_eq!(f.after(&pass(4_900_000, 100_000)), (true, false), "trailing, no hurry");
        assert_eq!(f.after(&pass(0, 4_900_000)), (true, true));
        // Letting go of an emptied map frees its table: collect then too.
        let mut f = Freeing::default();
        assert_eq!(f.after(&pass(0, 0)), (false, false));
        assert_eq!(f.after(&Swept { released_map: true, ..pass(0, 0) }), (true, false));
        assert_eq!(f.after(&pass(0, 0)), (false, false));
    }
}
