//! The machine's steal time. In a virtual machine a CPU of the guest that
//! has work can still be kept off the physical core while the hypervisor
//! runs something else; Linux counts that time as `steal` in `/proc/stat`.
//! To the guest the thread on that CPU is still running, so its own
//! scheduler statistics (`perf sched`) cannot show such a gap; only this
//! counter does.
//!
//! [`Sampler`] reads every CPU's counter every few milliseconds on its own
//! thread, so that each latency window of a `rate` run can be set beside the
//! steal in it: the total, and the most one CPU lost within any
//! [`BURST_SPAN`] (a CPU gone for 100 ms stalls whatever ran on it for
//! that long, even if the window's total looks modest).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The span within which a CPU's lost time counts as one burst.
pub const BURST_SPAN: Duration = Duration::from_millis(150);

/// A burst this long (lost within one [`BURST_SPAN`], in one piece or in
/// several) is more than twice the 20 ms p99.9 a latency window may have:
/// a slow window that coincides with one is put down to the host.
pub const HOST_STALL_MS: u64 = 50;

/// `/proc/stat` counts in USER_HZ, 100 per second on x86 and ARM.
const MS_PER_TICK: u64 = 10;

/// Steal of all CPUs together since boot, ms; `None` where `/proc/stat` is
/// missing or has no steal column (not Linux, a kernel before 2.6.11).
pub fn total_ms() -> Option<u64> {
    total_in(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The steal column (the 8th number) of a `cpu…` line, ms.
fn steal_of(line: &str) -> Option<u64> {
    let ticks: u64 = line.split_ascii_whitespace().nth(8)?.parse().ok()?;
    Some(ticks * MS_PER_TICK)
}

fn total_in(stat: &str) -> Option<u64> {
    steal_of(stat.lines().find(|l| l.starts_with("cpu "))?)
}

/// Each CPU's steal (the `cpuN` lines), ms.
fn per_cpu_in(stat: &str) -> Option<Vec<u64>> {
    let cpus: Option<Vec<u64>> = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(steal_of)
        .collect();
    cpus.filter(|c| !c.is_empty())
}

struct Sample {
    /// Since the sampler's `t0` (none is taken before it).
    at_ns: u64,
    per_cpu: Vec<u64>,
}

/// Steal in one window of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSteal {
    /// All CPUs together, ms.
    pub total_ms: u64,
    /// The most one CPU lost within any [`BURST_SPAN`] that overlaps the
    /// window, ms (a gap between samples longer than the span counts whole).
    pub burst_ms: u64,
}

/// Every CPU's steal, sampled on a thread of its own until [`Sampler::finish`]
/// (or until dropped).
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl Sampler {
    /// Samples every `every` from `t0` on (times are counted from it); `None`
    /// where the kernel reports no steal (or the thread cannot start).
    pub fn start(t0: Instant, every: Duration) -> Option<Sampler> {
        per_cpu_in(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("steal".into())
            .spawn(move || {
                let mut samples = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    if let Some(since) = Instant::now().checked_duration_since(t0)
                        && let Some(per_cpu) =
                            std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(per_cpu_in)
                    {
                        samples.push(Sample { at_ns: since.as_nanos() as u64, per_cpu });
                    }
                    std::thread::sleep(every);
                }
                samples
            })
            .ok()?;
        Some(Sampler { stop, thread: Some(thread) })
    }

    /// Stops the thread and returns what it saw.
    pub fn finish(mut self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        Samples(self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default())
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub struct Samples(Vec<Sample>);

impl Samples {
    /// The index of the first sample at or after `ns` (the last one if none is).
    fn at(&self, ns: u64) -> usize {
        self.0.partition_point(|s| s.at_ns < ns).min(self.0.len().saturating_sub(1))
    }

    /// The samples from index `a` to `b`, if every one lists the same CPUs
    /// (a CPU going offline or online shifts the per-CPU columns).
    fn span(&self, a: usize, b: usize) -> Option<&[Sample]> {
        let w = self.0.get(a..=b)?;
        let cpus = w.first()?.per_cpu.len();
        w.iter().all(|s| s.per_cpu.len() == cpus).then_some(w)
    }

    /// All CPUs' steal from `from_ns` to `to_ns`, ms, measured between the
    /// first samples at or after each (so that consecutive ranges add up);
    /// `None` without a sample inside the range.
    pub fn total(&self, from_ns: u64, to_ns: u64) -> Option<u64> {
        let a = self.0.partition_point(|s| s.at_ns < from_ns);
        if self.0.get(a)?.at_ns >= to_ns {
            return None;
        }
        let w = self.span(a, self.at(to_ns))?;
        let (first, last) = (&w[0], &w[w.len() - 1]);
        Some(first.per_cpu.iter().zip(&last.per_cpu).map(|(x, y)| y.saturating_sub(*x)).sum())
    }

    /// Steal in the window `[from_ns, to_ns)`: see [`WindowSteal`].
    pub fn window(&self, from_ns: u64, to_ns: u64) -> Option<WindowSteal> {
        let total_ms = self.total(from_ns, to_ns)?;
        let span = BURST_SPAN.as_nanos() as u64;
        // A burst may straddle either edge of the window: look one span beyond.
        let a = self.0.partition_point(|s| s.at_ns < from_ns.saturating_sub(span)).saturating_sub(1);
        let b = self.at(to_ns.saturating_add(span));
        let w = self.span(a, b)?;
        let mut burst_ms = 0;
        for c in 0..w[0].per_cpu.len() {
            // The counters only grow: for each start, the farthest sample
            // within the span holds the most; the next sample is always
            // taken, so a gap longer than the span counts whole.
            let mut k = 0;
            for j in 0..w.len() - 1 {
                k = k.max(j + 1);
                while k + 1 < w.len() && w[k + 1].at_ns - w[j].at_ns <= span {
                    k += 1;
                }
                burst_ms = burst_ms.max(w[k].per_cpu[c].saturating_sub(w[j].per_cpu[c]));
            }
        }
        Some(WindowSteal { total_ms, burst_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  2671243 665576 1442449 3131041 37595 0 696781 275078 0 0\n\
                        cpu0 1278602 336222 711003 1639166 10535 0 349682 135448 0 0\n\
                        cpu1 1392641 329353 731446 1491874 27059 0 347098 139630 0 0\n\
                        intr 1 2 3\n";

    #[test]
    fn steal_is_the_eighth_number_of_a_cpu_line() {
        assert_eq!(total_in(STAT), Some(2_750_780));
        assert_eq!(per_cpu_in(STAT), Some(vec![1_354_480, 1_396_300]));
        // Kernels before 2.6.11 have no steal column.
        assert_eq!(total_in("cpu  1 2 3 4 5 6 7\n"), None);
        assert_eq!(per_cpu_in("cpu  1 2 3 4 5 6 7 8\ncpu0 1 2 3 4 5 6 7\n"), None);
        assert_eq!(total_in("intr 1 2 3\n"), None);
        assert_eq!(per_cpu_in("cpu  1 2 3 4 5 6 7 8\n"), None);
    }

    fn samples(per_10ms: &[(u64, u64)]) -> Samples {
        Samples(
            per_10ms
                .iter()
                .enumerate()
                .map(|(i, &(a, b))| Sample { at_ns: i as u64 * 10_000_000, per_cpu: vec![a, b] })
                .collect(),
        )
    }

    #[test]
    fn a_window_has_its_total_and_its_worst_burst_on_one_cpu() {
        // 1 s of samples: CPU 0 loses 10 ms every 100 ms, CPU 1 loses
        // 100 ms in one go between 500 and 600 ms.
        let s = samples(
            &(0..=100u64)
                .map(|i| {
                    (
                        i / 10 * 10,
                        if i < 50 {
                            0
                        } else if i < 60 {
                            (i - 50) * 10
                        } else {
                            100
                        },
                    )
                })
                .collect::<Vec<_>>(),
        );
        assert_eq!(s.window(0, 1_000_000_001), Some(WindowSteal { total_ms: 100 + 100, burst_ms: 100 }));
        // The first 300 ms: only CPU 0's 10 ms slices (at most 20 ms within 150 ms).
        assert_eq!(s.window(0, 300_000_000), Some(WindowSteal { total_ms: 30, burst_ms: 20 }));
        // A burst that starts right after a window still counts for it: its
        // last requests waited through it.
        assert_eq!(s.window(0, 500_000_000), Some(WindowSteal { total_ms: 50, burst_ms: 100 }));
        // Consecutive windows add up to the whole.
        let parts: u64 = (0..10).map(|w| s.total(w * 100_000_000, (w + 1) * 100_000_000).expect("part")).sum();
        assert_eq!(Some(parts), s.total(0, 1_000_000_000));
        // No sample inside: nothing to say.
        assert_eq!(s.window(2_000_000_000, 3_000_000_000), None);
        assert_eq!(s.window(1_000_001, 2_000_000), None);
    }

    #[test]
    fn a_gap_in_the_samples_counts_whole() {
        // The sampler itself was held off from 100 to 310 ms while CPU 0 lost 200 ms.
        let mut v: Vec<Sample> = (0..=10u64).map(|i| Sample { at_ns: i * 10_000_000, per_cpu: vec![0, 0] }).collect();
        v.extend((31..=100u64).map(|i| Sample { at_ns: i * 10_000_000, per_cpu: vec![200, 0] }));
        let s = Samples(v);
        assert_eq!(s.window(0, 1_000_000_000), Some(WindowSteal { total_ms: 200, burst_ms: 200 }));
    }

    #[test]
    fn a_cpu_coming_or_going_voids_the_window() {
        let s = Samples(vec![
            Sample { at_ns: 0, per_cpu: vec![5, 7] },
            Sample { at_ns: 10_000_000, per_cpu: vec![5, 7, 0] },
        ]);
        assert_eq!(s.window(0, 1_000_000_000), None);
    }

    #[test]
    fn the_sampler_runs_until_finished() {
        let Some(sampler) = Sampler::start(Instant::now(), Duration::from_millis(2)) else {
            return; // no steal column on this kernel
        };
        std::thread::sleep(Duration::from_millis(30));
        let s = sampler.finish();
        assert!(s.0.len() >= 2, "{} samples", s.0.len());
        assert!(s.0.windows(2).all(|p| p[0].at_ns <= p[1].at_ns));
        assert!(s.window(0, u64::MAX).is_some());
    }
}
