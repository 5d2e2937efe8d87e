//! `jitter`: how late this machine wakes a sleeping thread. One thread asks
//! the kernel for a short sleep again and again and records how much longer
//! than asked each one took. A request/answer over loopback needs several
//! such wake-ups (the generator's sender, a server worker, the generator's
//! reader), so this overshoot is a floor under any latency measured here,
//! whatever the server does. The machine's steal time over the run (see
//! [`crate::steal`]) is reported beside it.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::preload::round3;

pub struct JitterReport {
    pub asked: Duration,
    pub secs: f64,
    /// Overshoot of each sleep, microseconds.
    pub late: Histogram<u64>,
    /// Steal time during the run, all CPUs together.
    pub steal_ms: Option<u64>,
}

/// Sleeps for `asked` repeatedly for `secs` seconds.
pub fn run(asked: Duration, secs: Duration) -> JitterReport {
    // 1 µs to 10 s: valid bounds, cannot fail.
    let mut late = Histogram::new_with_bounds(1, 10_000_000, 3).expect("histogram bounds");
    let steal0 = crate::steal::total_ms();
    let t0 = Instant::now();
    while t0.elapsed() < secs {
        let before = Instant::now();
        std::thread::sleep(asked);
        let over = before.elapsed().saturating_sub(asked);
        late.saturating_record((over.as_micros() as u64).max(1));
    }
    let steal_ms = steal0.zip(crate::steal::total_ms()).map(|(a, b)| b.saturating_sub(a));
    JitterReport { asked, secs: t0.elapsed().as_secs_f64(), late, steal_ms }
}

impl JitterReport {
    fn ms(&self, q: f64) -> f64 {
        self.late.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn print(&self) {
        println!(
            "jitter: {} sleeps of {} µs in {:.1} s; overshoot p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms; steal {}",
            self.late.len(),
            self.asked.as_micros(),
            self.secs,
            self.ms(0.5),
            self.ms(0.99),
            self.ms(0.999),
            self.late.max() as f64 / 1000.0,
            self.steal_ms.map_or("unknown".into(), |s| format!("{s} ms"))
        );
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "jitter",
            "asked_us": self.asked.as_micros() as u64,
            "secs": round3(self.secs),
            "sleeps": self.late.len(),
            "p50_ms": self.ms(0.5),
            "p99_ms": self.ms(0.99),
            "p999_ms": self.ms(0.999),
            "max_ms": self.late.max() as f64 / 1000.0,
            "steal_ms": self.steal_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sleep_is_recorded() {
        let r = run(Duration::from_micros(200), Duration::from_millis(50));
        // A sleep never returns early, so each took at least 200 µs: at most 250 fit.
        assert!((1..=250).contains(&r.late.len()), "{} sleeps", r.late.len());
        assert!(r.json()["p50_ms"].as_f64().is_some());
    }
}
