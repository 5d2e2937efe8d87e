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

/// A burst this long is a stall made by the host: whatever ran on that CPU
/// stopped for more than twice the 20 ms a latency window may take.
pub const HOST_STALL_MS: u64 = 50;

/// `/proc/stat` counts in USER_HZ, which the kernel's ABI fixes at 100 per second.
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
    /// Since the sampler's `t0` (0 for samples taken before it).
    at_ns: u64,
    per_cpu: Vec<u64>,
}

/// Steal in one window of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSteal {
    /// All CPUs together, ms.
    pub total_ms: u64,
    /// The most one CPU lost within any [`BURST_SPAN`] of the window, ms.
    pub burst_ms: u64,
}

/// Every CPU's steal, sampled on a thread of its own until [`Sampler::finish`].
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Samples every `every`, with times counted from `t0`; `None` where the
    /// kernel reports no steal (or the thread cannot start).
    pub fn start(t0: Instant, every: Duration) -> Option<Sampler> {
        per_cpu_in(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("steal".into())
            .spawn(move || {
                let mut samples = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    let stat = std::fs::read_to_string("/proc/stat").ok();
                    if let Some(per_cpu) = stat.as_deref().and_then(per_cpu_in) {
                        let at_ns = Instant::now().saturating_duration_since(t0).as_nanos() as u64;
                        samples.push(Sample { at_ns, per_cpu });
                    }
                    std::thread::sleep(every);
                }
                samples
            })
            .ok()?;
        Some(Sampler { stop, thread })
    }

    /// Stops the thread and returns what it saw.
    pub fn finish(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        Samples(self.thread.join().unwrap_or_default())
    }
}

pub struct Samples(Vec<Sample>);

impl Samples {
    /// Steal between the first and the last sample within `[from_ns, to_ns)`;
    /// `None` with fewer than two samples there.
    pub fn window(&self, from_ns: u64, to_ns: u64) -> Option<WindowSteal> {
        let lo = self.0.partition_point(|s| s.at_ns < from_ns);
        let hi = self.0.partition_point(|s| s.at_ns < to_ns);
        let w = self.0.get(lo..hi).filter(|w| w.len() >= 2)?;
        let (first, last) = (&w[0], &w[w.len() - 1]);
        let cpus = first.per_cpu.len().min(last.per_cpu.len());
        let total_ms = (0..cpus).map(|c| last.per_cpu[c].saturating_sub(first.per_cpu[c])).sum();
        let span = BURST_SPAN.as_nanos() as u64;
        let mut burst_ms = 0;
        for c in 0..cpus {
            // The counters only grow: for each start, the farthest sample
            // still within the span holds the most.
            let mut k = 0;
            for j in 0..w.len() {
                k = k.max(j);
                while k + 1 < w.len() && w[k + 1].at_ns - w[j].at_ns <= span {
                    k += 1;
                }
                let lost = w[k].per_cpu.get(c).zip(w[j].per_cpu.get(c)).map_or(0, |(b, a)| b.saturating_sub(*a));
                burst_ms = burst_ms.max(lost);
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
        let w = s.window(0, 1_000_000_001).expect("window");
        assert_eq!(w, WindowSteal { total_ms: 100 + 100, burst_ms: 100 });
        // The first half: only CPU 0's 10 ms slices (at most 20 ms within 150 ms).
        assert_eq!(s.window(0, 500_000_000), Some(WindowSteal { total_ms: 40, burst_ms: 20 }));
        // No samples, or one: nothing to say.
        assert_eq!(s.window(2_000_000_000, 3_000_000_000), None);
        assert_eq!(s.window(0, 1), None);
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
