//! `rate`: an open-model, fixed-rate load generator. Request `k` is
//! *intended* at `t0 + k / rate`, whatever happened to earlier requests, and
//! goes to connection `k mod conns` with target `k mod targets`.
//!
//! A pacer thread (plain OS thread, sleeping with the kernel's fine-grained
//! timers, not tokio's 1 ms wheel) writes each request when it is due,
//! pipelined: it never waits for earlier answers. Reader tasks on a
//! single-threaded tokio runtime cut the answers out of each connection and
//! match them FIFO to what was sent. Latency runs from the **intended** send
//! time to the answer, so a server stall is charged to every request that
//! should have been sent during it (no coordinated omission); the time from
//! the actual write and the generator's own lag are reported beside it.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Write};
use std::net::TcpStream as StdStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::http::{ReadBuf, write_request};
use crate::preload::round3;
use crate::steal::{BURST_SPAN, Sampler, WindowSteal};
use crate::targets::Targets;

/// Histogram bounds: 1 µs to 60 s (longer answers are clamped).
const HIST_MAX_US: u64 = 60_000_000;

#[derive(Clone)]
pub struct RateConfig {
    pub addr: String,
    pub targets: Arc<Targets>,
    pub method: String,
    pub rate: f64,
    /// Measured duration; `None`: until `stop` is set.
    pub duration: Option<Duration>,
    /// Sent at the full rate before measuring; not recorded.
    pub warmup: Duration,
    pub conns: usize,
    /// How long to wait for outstanding answers after the last send.
    pub drain: Duration,
    pub stop: Option<Arc<AtomicBool>>,
    /// Sampled as each window opens (`grow`: sessions created).
    pub probe: Option<Probe>,
    /// Length of the latency windows (1 s; `soak` uses a minute).
    pub window: Duration,
    /// Present each target's newest token, as a player would: a `200` that
    /// carries a `token` replaces the `Authorization` of the target it
    /// answered. Lets a run outlast the targets' own token lifetime.
    pub follow_tokens: bool,
}

/// Per target, the `Authorization` value of its newest token, once one came back.
type Followed = Vec<Mutex<Option<Box<str>>>>;

/// The lease token in a JSON answer (`"token":"…"`; tokens need no escaping).
fn token_in(body: &[u8]) -> Option<&str> {
    const KEY: &[u8] = br#""token":""#;
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = body[at..].iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&body[at..at + len]).ok()
}

/// A number sampled at the start of each window, reported beside it.
pub type Probe = Arc<dyn Fn() -> u64 + Send + Sync>;

/// What was written and when, awaiting its answer.
#[derive(Clone, Copy)]
struct Sent {
    intended_ns: u64,
    sent_ns: u64,
    measured: bool,
    /// Index of the target line.
    target: usize,
}

/// One connection as the pacer and its reader share it.
#[derive(Default)]
struct ConnState {
    /// Non-blocking write side (a dup of the reader's socket); `None` while
    /// the connection is down.
    writer: Option<StdStream>,
    /// Bytes not yet accepted by the socket.
    pending: Vec<u8>,
    fifo: VecDeque<Sent>,
}

impl ConnState {
    /// Writes what the socket takes now; a hard error takes the writer down
    /// (the reader sees the failure and fails what was in flight).
    fn flush(&mut self) {
        while !self.pending.is_empty() {
            let Some(w) = self.writer.as_mut() else { return };
            match w.write(&self.pending) {
                Ok(0) => {
                    self.writer = None;
                    return;
                }
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.writer = None;
                    return;
                }
            }
        }
    }
}

/// One window (`RateConfig::window`) of intended send times.
#[derive(Debug, Clone)]
pub struct Window {
    pub count: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// The generator's worst send lag in this window: a bad window with a
    /// large lag says more about the load generator (or the machine) than the server.
    pub lag_max_us: u64,
    pub probe: Option<u64>,
    /// The machine's steal time in this window (see [`crate::steal`]).
    pub steal: Option<WindowSteal>,
}

struct Stats {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    lag: Histogram<u64>,
    windows: Vec<Histogram<u64>>,
    windows_lag_max: Vec<u64>,
    statuses: BTreeMap<u16, u64>,
    answered: u64,
    io_errors: u64,
    protocol_errors: u64,
    warmup_ns: u64,
    window_ns: u64,
}

impl Stats {
    fn new(warmup_ns: u64, window_ns: u64) -> Stats {
        Stats {
            latency: hist(3),
            service: hist(3),
            lag: hist(3),
            windows: Vec::new(),
            windows_lag_max: Vec::new(),
            statuses: BTreeMap::new(),
            answered: 0,
            io_errors: 0,
            protocol_errors: 0,
            warmup_ns,
            window_ns: window_ns.max(1),
        }
    }

    fn record(&mut self, s: Sent, now_ns: u64, status: u16) {
        if !s.measured {
            return;
        }
        let us = |ns: u64| (ns / 1000).max(1);
        let latency = us(now_ns.saturating_sub(s.intended_ns));
        self.latency.saturating_record(latency);
        self.service.saturating_record(us(now_ns.saturating_sub(s.sent_ns)));
        let lag = us(s.sent_ns.saturating_sub(s.intended_ns));
        self.lag.saturating_record(lag);
        let w = ((s.intended_ns - self.warmup_ns) / self.window_ns) as usize;
        while self.windows.len() <= w {
            self.windows.push(hist(2));
            self.windows_lag_max.push(0);
        }
        self.windows[w].saturating_record(latency);
        self.windows_lag_max[w] = self.windows_lag_max[w].max(lag);
        *self.statuses.entry(status).or_default() += 1;
        self.answered += 1;
    }
}

fn hist(sigfig: u8) -> Histogram<u64> {
    // Valid bounds: cannot fail.
    Histogram::new_with_bounds(1, HIST_MAX_US, sigfig).expect("histogram bounds")
}

#[derive(Debug, Clone)]
pub struct RateReport {
    pub rate: f64,
    pub conns: usize,
    pub warmup_secs: f64,
    pub measured_secs: f64,
    pub sent: u64,
    pub answered: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub io_errors: u64,
    pub unanswered: u64,
    pub not_sent: u64,
    pub protocol_errors: u64,
    pub latency: Histogram<u64>,
    pub service: Histogram<u64>,
    pub lag: Histogram<u64>,
    pub windows: Vec<Window>,
    pub window_secs: f64,
    /// The machine's steal time over the measured span, all CPUs together.
    pub steal_ms: Option<u64>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl RateReport {
    pub fn non_2xx(&self) -> u64 {
        self.statuses.iter().filter(|(s, _)| !(200..300).contains(*s)).map(|(_, n)| n).sum()
    }

    pub fn errors(&self) -> u64 {
        self.non_2xx() + self.io_errors + self.unanswered + self.not_sent + self.protocol_errors
    }

    /// The window with the highest p99.9, and its index.
    pub fn worst_window(&self) -> Option<(usize, &Window)> {
        self.windows.iter().enumerate().filter(|(_, w)| w.count > 0).max_by_key(|(_, w)| w.p999_us)
    }

    fn pct(h: &Histogram<u64>, q: f64) -> f64 {
        if h.is_empty() { 0.0 } else { ms(h.value_at_quantile(q)) }
    }

    pub fn print(&self, windows: bool) {
        let secs = self.measured_secs.max(1e-9);
        println!(
            "rate: {}/s for {:.1} s (+{:.1} s warmup) over {} connections",
            self.rate, self.measured_secs, self.warmup_secs, self.conns
        );
        println!(
            "  sent {} ({:.1}/s), answered {} ({:.1}/s)",
            self.sent,
            self.sent as f64 / secs,
            self.answered,
            self.answered as f64 / secs
        );
        let statuses: Vec<String> = self.statuses.iter().map(|(s, n)| format!("{s} x {n}")).collect();
        println!("  statuses: {}", if statuses.is_empty() { "-".into() } else { statuses.join(", ") });
        println!(
            "  errors: {} (non-2xx {}, i/o {}, unanswered {}, not sent {}, protocol {})",
            self.errors(),
            self.non_2xx(),
            self.io_errors,
            self.unanswered,
            self.not_sent,
            self.protocol_errors
        );
        let line = |name: &str, h: &Histogram<u64>| {
            println!(
                "  {name:<38} p50 {:>8.3}  p90 {:>8.3}  p99 {:>8.3}  p99.9 {:>8.3}  max {:>8.3}",
                Self::pct(h, 0.5),
                Self::pct(h, 0.9),
                Self::pct(h, 0.99),
                Self::pct(h, 0.999),
                if h.is_empty() { 0.0 } else { ms(h.max()) }
            )
        };
        line("latency from intended send (ms):", &self.latency);
        line("service time from actual write (ms):", &self.service);
        line("generator send lag (ms):", &self.lag);
        if windows {
            for (i, w) in self.windows.iter().enumerate() {
                let probe = w.probe.map(|p| format!("  sessions {p}")).unwrap_or_default();
                let steal = w
                    .steal
                    .map(|s| format!("  steal {:>5} ms (one CPU {:>4} ms)", s.total_ms, s.burst_ms))
                    .unwrap_or_default();
                println!(
                    "  window {i:>4}: answers {:>7}  p99 {:>8.3} ms  p99.9 {:>8.3} ms  max {:>8.3} ms  send lag max {:>8.3} ms{steal}{probe}",
                    w.count,
                    ms(w.p99_us),
                    ms(w.p999_us),
                    ms(w.max_us),
                    ms(w.lag_max_us)
                );
            }
        }
        if let Some((i, w)) = self.worst_window() {
            println!(
                "  {}-s windows: {}; worst p99.9 {:.3} ms in window {i} ({} answers, max {:.3} ms, send lag max {:.3} ms{}{})",
                self.window_secs,
                self.windows.len(),
                ms(w.p999_us),
                w.count,
                ms(w.max_us),
                ms(w.lag_max_us),
                w.steal
                    .map(|s| format!(
                        ", steal {} ms, one CPU {} ms within {} ms",
                        s.total_ms,
                        s.burst_ms,
                        BURST_SPAN.as_millis()
                    ))
                    .unwrap_or_default(),
                w.probe.map(|p| format!(", {p} sessions")).unwrap_or_default()
            );
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let statuses: serde_json::Map<String, serde_json::Value> =
            self.statuses.iter().map(|(s, n)| (s.to_string(), (*n).into())).collect();
        let secs = self.measured_secs.max(1e-9);
        let worst = self.worst_window();
        let h = &self.latency;
        serde_json::json!({
            "kind": "rate",
            "rate": self.rate,
            "conns": self.conns,
            "measured_secs": round3(self.measured_secs),
            "sent": self.sent,
            "answered": self.answered,
            "achieved_rps": (self.answered as f64 / secs).round(),
            "statuses": statuses,
            "errors": self.errors(),
            "non_2xx": self.non_2xx(),
            "io_errors": self.io_errors,
            "unanswered": self.unanswered,
            "not_sent": self.not_sent,
            "protocol_errors": self.protocol_errors,
            "p50_ms": Self::pct(h, 0.5),
            "p90_ms": Self::pct(h, 0.9),
            "p99_ms": Self::pct(h, 0.99),
            "p999_ms": Self::pct(h, 0.999),
            "max_ms": if h.is_empty() { 0.0 } else { ms(h.max()) },
            "service_p99_ms": Self::pct(&self.service, 0.99),
            "send_lag_p99_ms": Self::pct(&self.lag, 0.99),
            "send_lag_max_ms": if self.lag.is_empty() { 0.0 } else { ms(self.lag.max()) },
            "windows": self.windows.len(),
            "window_secs": self.window_secs,
            "window_p99_ms": self.windows.iter().map(|w| ms(w.p99_us)).collect::<Vec<_>>(),
            "window_answers": self.windows.iter().map(|w| w.count).collect::<Vec<_>>(),
            "worst_window": worst.map(|(i, _)| i),
            "worst_window_p999_ms": worst.map_or(0.0, |(_, w)| ms(w.p999_us)),
            "worst_window_sessions": worst.and_then(|(_, w)| w.probe),
            "worst_window_send_lag_max_ms": worst.map_or(0.0, |(_, w)| ms(w.lag_max_us)),
            "worst_window_steal_ms": worst.and_then(|(_, w)| w.steal).map(|s| s.total_ms),
            "steal_ms": self.steal_ms,
            "windows_steal_ms": self.windows.iter().map(|w| w.steal.map(|s| s.total_ms)).collect::<Vec<_>>(),
            "windows_steal_burst_ms": self.windows.iter().map(|w| w.steal.map(|s| s.burst_ms)).collect::<Vec<_>>(),
            "steal_burst_span_ms": BURST_SPAN.as_millis() as u64,
            "windows_p999_ms": self.windows.iter().map(|w| ms(w.p999_us)).collect::<Vec<_>>(),
        })
    }
}

/// Runs a fixed-rate load to completion on the calling thread (plus the pacer thread).
pub fn run(cfg: RateConfig) -> Result<RateReport, String> {
    if !(cfg.rate > 0.0 && cfg.rate.is_finite()) {
        return Err("--rate must be positive".into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(drive(cfg))
}

async fn open(addr: &str) -> io::Result<(StdStream, TcpStream)> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    // tokio hands the socket back non-blocking; the dup shares that mode,
    // so the pacer's writes never block.
    let std = s.into_std()?;
    let writer = std.try_clone()?;
    Ok((writer, TcpStream::from_std(std)?))
}

struct Shared {
    conns: Vec<Mutex<ConnState>>,
    stats: Mutex<Stats>,
    /// With `follow_tokens`: one slot per target.
    followed: Option<Followed>,
    t0: Instant,
    finished: AtomicBool,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }
}

struct Paced {
    sent: u64,
    not_sent: u64,
    end_ns: u64,
    probes: Vec<u64>,
}

async fn drive(cfg: RateConfig) -> Result<RateReport, String> {
    let conns = cfg.conns.max(1);
    let mut states = Vec::with_capacity(conns);
    let mut readers = Vec::with_capacity(conns);
    for _ in 0..conns {
        let (w, r) = open(&cfg.addr).await.map_err(|e| format!("cannot connect to {}: {e}", cfg.addr))?;
        states.push(Mutex::new(ConnState { writer: Some(w), ..Default::default() }));
        readers.push(r);
    }
    let warmup_ns = cfg.warmup.as_nanos() as u64;
    // A short lead so that every reader is waiting before the first send.
    let t0 = Instant::now() + Duration::from_millis(20);
    let sampler = Sampler::start(t0, Duration::from_millis(10));
    let followed = cfg.follow_tokens.then(|| (0..cfg.targets.len()).map(|_| Mutex::new(None)).collect());
    let shared = Arc::new(Shared {
        conns: states,
        followed,
        stats: Mutex::new(Stats::new(warmup_ns, cfg.window.as_nanos() as u64)),
        t0,
        finished: false.into(),
    });

    let tasks: Vec<_> = readers
        .into_iter()
        .enumerate()
        .map(|(i, r)| tokio::spawn(read_loop(i, r, shared.clone(), cfg.addr.clone())))
        .collect();

    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let pacer = {
        let (cfg, shared) = (cfg.clone(), shared.clone());
        std::thread::Builder::new()
            .name("pacer".into())
            .spawn(move || {
                let paced = pace(&cfg, &shared);
                let _ = done_tx.send(());
                paced
            })
            .map_err(|e| format!("cannot start the pacer: {e}"))?
    };
    let _ = done_rx.await;
    let paced = pacer.join().map_err(|_| "the pacer panicked")?;

    // Wait for what is still in flight, at most `drain`.
    let deadline = Instant::now() + cfg.drain;
    loop {
        let outstanding: usize = shared.conns.iter().map(|c| c.lock().map_or(0, |s| s.fifo.len())).sum();
        if outstanding == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shared.finished.store(true, Ordering::Relaxed);
    for t in &tasks {
        t.abort();
    }
    let mut unanswered = 0;
    for c in &shared.conns {
        if let Ok(mut s) = c.lock() {
            unanswered += s.fifo.iter().filter(|x| x.measured).count() as u64;
            s.fifo.clear();
            s.writer = None;
        }
    }
    let stats = std::mem::replace(&mut *shared.stats.lock().map_err(|_| "stats lock poisoned")?, Stats::new(0, 1));
    let steal = sampler.map(Sampler::finish);
    let window_ns = (cfg.window.as_nanos() as u64).max(1);
    let windows = stats
        .windows
        .iter()
        .enumerate()
        .map(|(i, h)| Window {
            count: h.len(),
            p99_us: if h.is_empty() { 0 } else { h.value_at_quantile(0.99) },
            p999_us: if h.is_empty() { 0 } else { h.value_at_quantile(0.999) },
            max_us: if h.is_empty() { 0 } else { h.max() },
            lag_max_us: stats.windows_lag_max.get(i).copied().unwrap_or(0),
            probe: paced.probes.get(i).copied(),
            steal: steal
                .as_ref()
                .and_then(|s| s.window(warmup_ns + i as u64 * window_ns, warmup_ns + (i as u64 + 1) * window_ns)),
        })
        .collect();
    Ok(RateReport {
        rate: cfg.rate,
        conns,
        warmup_secs: cfg.warmup.as_secs_f64(),
        measured_secs: paced.end_ns.saturating_sub(warmup_ns) as f64 / 1e9,
        sent: paced.sent,
        answered: stats.answered,
        statuses: stats.statuses,
        io_errors: stats.io_errors,
        unanswered,
        not_sent: paced.not_sent,
        protocol_errors: stats.protocol_errors,
        latency: stats.latency,
        service: stats.service,
        lag: stats.lag,
        windows,
        window_secs: cfg.window.as_secs_f64(),
        steal_ms: steal.as_ref().and_then(|s| s.total(warmup_ns, paced.end_ns)),
    })
}

/// The pacer: writes request `k` at `t0 + k / rate`, round-robin over the
/// connections, until the duration ends or `stop` is set.
fn pace(cfg: &RateConfig, shared: &Shared) -> Paced {
    let per_ns = 1e9 / cfg.rate;
    let intended = |k: u64| (k as f64 * per_ns) as u64;
    let warmup_ns = cfg.warmup.as_nanos() as u64;
    let window_ns = (cfg.window.as_nanos() as u64).max(1);
    let end_ns = cfg.duration.map(|d| warmup_ns + d.as_nanos() as u64);
    let n = shared.conns.len() as u64;
    let mut paced = Paced { sent: 0, not_sent: 0, end_ns: warmup_ns, probes: Vec::new() };
    let mut k = 0u64;
    let host = cfg.addr.as_str();
    'run: loop {
        let now = shared.now_ns();
        if cfg.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            paced.end_ns = now.max(warmup_ns);
            break;
        }
        if let Some(probe) = &cfg.probe
            && now >= warmup_ns
        {
            let w = ((now - warmup_ns) / window_ns) as usize;
            while paced.probes.len() <= w {
                paced.probes.push(probe());
            }
        }
        loop {
            let due = intended(k);
            if end_ns.is_some_and(|end| due >= end) {
                paced.end_ns = end_ns.unwrap_or(due);
                break 'run;
            }
            if due > now {
                break;
            }
            let measured = due >= warmup_ns;
            let target = k as usize % cfg.targets.len();
            let t = cfg.targets.get(target, &cfg.method);
            let newest = shared.followed.as_ref().and_then(|f| f[target].lock().ok()?.clone());
            let auth = newest.as_deref().unwrap_or(t.auth);
            if let Ok(mut c) = shared.conns[(k % n) as usize].lock() {
                if c.writer.is_some() {
                    write_request(&mut c.pending, t.method, t.path, host, auth);
                    c.fifo.push_back(Sent { intended_ns: due, sent_ns: shared.now_ns(), measured, target });
                    c.flush();
                    if measured {
                        paced.sent += 1;
                    }
                } else if measured {
                    paced.not_sent += 1;
                }
            }
            k += 1;
        }
        let next = intended(k);
        let now = shared.now_ns();
        if next > now {
            // Short sleeps so an external stop is seen promptly.
            std::thread::sleep(Duration::from_nanos((next - now).min(50_000_000)));
        }
    }
    // Push out anything the sockets did not take yet, within the drain time.
    let deadline = Instant::now() + cfg.drain;
    loop {
        let mut left = false;
        for c in &shared.conns {
            if let Ok(mut c) = c.lock() {
                c.flush();
                left |= !c.pending.is_empty() && c.writer.is_some();
            }
        }
        if !left || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    paced
}

/// Reads one connection's answers, matching them to the FIFO of what was
/// sent; after a failure, fails what was in flight and reconnects.
async fn read_loop(i: usize, mut stream: TcpStream, shared: Arc<Shared>, addr: String) {
    let mut rbuf = ReadBuf::with_capacity(1 << 16);
    let mut statuses: Vec<u16> = Vec::with_capacity(256);
    // With `follow_tokens`: (answer index, new Authorization value).
    let mut tokens: Vec<(usize, Box<str>)> = Vec::new();
    loop {
        let failure: String = loop {
            rbuf.compact();
            rbuf.data.reserve(1 << 16);
            match stream.read_buf(&mut rbuf.data).await {
                Ok(0) => break "closed by the server".into(),
                Err(e) => break e.to_string(),
                Ok(_) => {}
            }
            let now = shared.now_ns();
            statuses.clear();
            tokens.clear();
            let parse_error = loop {
                match rbuf.peek() {
                    Ok(Some(r)) => {
                        if shared.followed.is_some()
                            && r.status == 200
                            && let Some(token) = r.body.clone().and_then(|b| token_in(&rbuf.pending()[b]))
                        {
                            tokens.push((statuses.len(), format!("Bearer {token}").into()));
                        }
                        statuses.push(r.status);
                        rbuf.consume(r.len);
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(e.to_string()),
                }
            };
            if !statuses.is_empty() {
                let sent: Vec<Sent> = match shared.conns[i].lock() {
                    Ok(mut c) => {
                        let k = statuses.len().min(c.fifo.len());
                        c.fifo.drain(..k).collect()
                    }
                    Err(_) => Vec::new(),
                };
                if let Some(followed) = &shared.followed {
                    for (j, auth) in tokens.drain(..) {
                        if let Some(s) = sent.get(j)
                            && let Ok(mut slot) = followed[s.target].lock()
                        {
                            *slot = Some(auth);
                        }
                    }
                }
                if let Ok(mut st) = shared.stats.lock() {
                    for (s, status) in sent.iter().zip(&statuses) {
                        st.record(*s, now, *status);
                    }
                    st.protocol_errors += (statuses.len() - sent.len()) as u64;
                }
            }
            if let Some(e) = parse_error {
                break e;
            }
        };
        if shared.finished.load(Ordering::Relaxed) {
            return;
        }
        // Everything in flight on this connection is lost.
        let lost = match shared.conns[i].lock() {
            Ok(mut c) => {
                c.writer = None;
                c.pending.clear();
                let lost = c.fifo.iter().filter(|s| s.measured).count() as u64;
                c.fifo.clear();
                lost
            }
            Err(_) => 0,
        };
        if let Ok(mut st) = shared.stats.lock() {
            st.io_errors += lost;
        }
        eprintln!("rate: connection {i}: {failure}; {lost} requests lost; reconnecting");
        rbuf = ReadBuf::with_capacity(1 << 16);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if shared.finished.load(Ordering::Relaxed) {
                return;
            }
            if let Ok((w, r)) = open(&addr).await {
                if let Ok(mut c) = shared.conns[i].lock() {
                    c.writer = Some(w);
                }
                stream = r;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// A one-connection server that answers every request with `200`, but
    /// stops answering for `stall` after the `stall_after`-th request.
    fn stalling_server(stall_after: usize, stall: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let (mut seen, mut buf, mut pending) = (0usize, [0u8; 65536], Vec::new());
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    pending.drain(..end + 4);
                    seen += 1;
                    if seen == stall_after {
                        std::thread::sleep(stall);
                    }
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").is_err() {
                        return;
                    }
                }
            }
        });
        addr
    }

    fn config(addr: String, rate: f64, secs: f64) -> RateConfig {
        RateConfig {
            addr,
            targets: Arc::new(Targets::parse("/x\tBearer t\n".into()).unwrap()),
            method: "POST".into(),
            rate,
            duration: Some(Duration::from_secs_f64(secs)),
            warmup: Duration::ZERO,
            conns: 1,
            drain: Duration::from_secs(5),
            stop: None,
            probe: None,
            window: Duration::from_secs(1),
            follow_tokens: false,
        }
    }

    #[test]
    fn finds_the_token_in_an_answer() {
        let body = br#"{"session_id":"00000000000000ff","token":"s1.dev.AAAA.BBBB","poll_after":30}"#;
        assert_eq!(token_in(body), Some("s1.dev.AAAA.BBBB"));
        assert_eq!(token_in(br#"{"error":"x"}"#), None);
        assert_eq!(token_in(br#"{"token":"unterminated"#), None);
    }

    #[test]
    fn a_stall_is_charged_to_every_request_due_during_it() {
        // 1000/s for 1 s; the server stalls 300 ms after the 200th request.
        let report = run(config(stalling_server(200, Duration::from_millis(300)), 1000.0, 1.0)).unwrap();
        assert_eq!(report.sent, 1000);
        assert_eq!(report.answered, 1000);
        assert_eq!(report.statuses.get(&200), Some(&1000));
        assert_eq!(report.errors(), 0);
        // ~300 requests were due during the stall and waited for its end: a
        // closed-loop client would have recorded one slow answer, not 30%.
        let p90 = report.latency.value_at_quantile(0.9);
        assert!(p90 >= 50_000, "p90 {p90} µs should show the stall");
        assert!(report.latency.max() >= 250_000, "max {} µs", report.latency.max());
        assert!(report.latency.max() < 1_000_000, "max {} µs", report.latency.max());
        // The generator itself kept its schedule (writes do not wait for answers).
        assert!(report.lag.value_at_quantile(0.5) < 20_000, "lag p50 {}", report.lag.value_at_quantile(0.5));
        assert_eq!(report.windows.len(), 1);
    }

    #[test]
    fn an_unreachable_server_is_an_error() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        assert!(run(config(addr, 100.0, 0.1)).is_err());
    }
}
