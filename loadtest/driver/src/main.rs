//! `streamcap-driver`: the measurement tool for streamcap's benchmark
//! (`loadtest/bench.sh`). Five subcommands:
//!
//! - `preload`: create sessions as fast as the server allows (pipelined),
//!   writing heartbeat targets and fresh users' grants for later runs;
//! - `rate`: open-model fixed-rate load with latency measured from each
//!   request's intended send time (coordinated omission corrected);
//! - `grow`: `preload` while `rate` sends heartbeats, reporting the latency
//!   of every 1-second window as the session map grows, optionally beside a
//!   control stream on the operator `/healthz` (which never touches the map);
//! - `jitter`: how late the machine wakes a sleeping thread (a floor under
//!   any latency measured on it);
//! - `upstream`: a licence server that answers at once, for the licence
//!   gate's benchmark (`loadtest/licence-bench.sh`).
//!
//! Layout: [`http`] (client-side HTTP/1.1), [`targets`] (TAB-separated target
//! files), [`preload`], [`rate`], [`jitter`], [`steal`] (the machine's steal
//! time, beside every `rate` window), [`upstream`]; `grow` is `preload` and `rate` run
//! side by side, here.
#![forbid(unsafe_code)]

mod http;
mod jitter;
mod preload;
mod rate;
mod steal;
mod targets;
mod upstream;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::preload::{PreloadConfig, Progress};
use crate::rate::RateConfig;
use crate::targets::Targets;

#[derive(Parser)]
#[command(name = "streamcap-driver", about = "Load driver for streamcap (loopback benchmarks).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create sessions as fast as the server allows (pipelined starts).
    Preload(PreloadArgs),
    /// Open-model fixed-rate load from a targets file; latency from intended send time.
    Rate(RateArgs),
    /// Preload while sending fixed-rate heartbeats; per-second latency windows.
    Grow(GrowArgs),
    /// How late short sleeps wake up on this machine (run it idle, or beside a load).
    Jitter(JitterArgs),
    /// A licence server that answers every request at once (licence gate benchmark).
    Upstream(UpstreamArgs),
}

#[derive(Args, Clone)]
struct UpstreamArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Bytes of every answer's body (a licence is some hundreds of bytes to a few KiB).
    #[arg(long, default_value_t = 1024)]
    answer_bytes: usize,
    /// Stop after this many seconds (default: run until killed).
    #[arg(long)]
    secs: Option<f64>,
}

#[derive(Args, Clone)]
struct JitterArgs {
    /// Seconds to measure.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Each sleep asks for this many microseconds.
    #[arg(long, default_value_t = 200)]
    sleep_us: u64,
    /// Print a JSON summary line at the end.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct PreloadArgs {
    /// Server address (public API).
    #[arg(long)]
    addr: String,
    /// Sessions to create.
    #[arg(long)]
    sessions: u64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 32)]
    conns: usize,
    /// Pipelined starts in flight per connection.
    #[arg(long, default_value_t = 64)]
    depth: usize,
    /// The grants' poll, seconds (token lifetime = ttl_factor x poll; the
    /// server clamps it to --max-poll-secs).
    #[arg(long, default_value_t = 600)]
    poll: u32,
    /// The grants' limit (users hold 1, 2 or 3 sessions).
    #[arg(long, default_value_t = 3)]
    limit: i64,
    /// Tenant of the grants (signed with STREAMCAP_MINT_KEY, else the dev key).
    #[arg(long, default_value = "demo")]
    tenant: String,
    /// Users are named {prefix}{n}; fresh users in --grants-out {prefix}f{n}.
    #[arg(long, default_value = "u")]
    user_prefix: String,
    /// How long the grants stay valid, seconds.
    #[arg(long, default_value_t = 86_400)]
    grant_valid_secs: i64,
    /// Write one heartbeat target per session: "path<TAB>Bearer token".
    #[arg(long)]
    tokens_out: Option<PathBuf>,
    /// Write --grants start targets for fresh users: "path<TAB>Bearer grant".
    #[arg(long, requires = "grants")]
    grants_out: Option<PathBuf>,
    /// How many fresh users' grants to write.
    #[arg(long, default_value_t = 0)]
    grants: u64,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 1.0)]
    progress: f64,
    /// Driver threads (1: one thread; the server needs the other cores).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Most starts per second (0: as fast as the server answers).
    #[arg(long, default_value_t = 0.0)]
    start_rate: f64,
    /// Print a JSON summary line at the end.
    #[arg(long)]
    json: bool,
}

impl PreloadArgs {
    fn config(&self) -> PreloadConfig {
        PreloadConfig {
            addr: self.addr.clone(),
            sessions: self.sessions,
            conns: self.conns,
            depth: self.depth.max(1),
            poll: self.poll,
            limit: self.limit,
            tenant: self.tenant.clone(),
            user_prefix: self.user_prefix.clone(),
            grant_valid_secs: self.grant_valid_secs,
            tokens_out: self.tokens_out.clone(),
            grants_out: self.grants_out.clone(),
            grants: self.grants,
            progress_secs: self.progress,
            threads: self.threads,
            start_rate: self.start_rate,
        }
    }
}

#[derive(Args, Clone)]
struct RateArgs {
    /// Server address (public API).
    #[arg(long)]
    addr: String,
    /// Targets, one a line: "path<TAB>authorization" or "METHOD<TAB>path<TAB>authorization".
    #[arg(long)]
    targets: PathBuf,
    /// Requests per second (intended send times are exactly 1/rate apart).
    #[arg(long)]
    rate: f64,
    /// Measured seconds (after the warmup).
    #[arg(long)]
    duration: f64,
    /// Keep-alive connections; requests are spread round-robin.
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// Seconds at full rate before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Method for lines that name none.
    #[arg(long, default_value = "POST")]
    method: String,
    /// Seconds to wait for outstanding answers after the last send.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Print the p99 and p99.9 of every window.
    #[arg(long)]
    windows: bool,
    /// Length of a latency window, seconds (a soak reports per minute: 60).
    #[arg(long, default_value_t = 1.0)]
    window_secs: f64,
    /// Send each target's newest lease token (from its last `200`), as a
    /// player does, so that a run can outlast the tokens in the file.
    #[arg(long)]
    follow_tokens: bool,
    /// Print a JSON summary line at the end.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct GrowArgs {
    /// Server address (public API).
    #[arg(long)]
    addr: String,
    /// Sessions to create while the heartbeats run.
    #[arg(long)]
    sessions: u64,
    /// Heartbeat targets (from `preload --tokens-out`).
    #[arg(long)]
    beat_targets: PathBuf,
    /// Heartbeats per second.
    #[arg(long)]
    beat_rate: f64,
    /// Connections for the heartbeats.
    #[arg(long, default_value_t = 64)]
    beat_conns: usize,
    /// Preload connections.
    #[arg(long, default_value_t = 32)]
    conns: usize,
    /// Pipelined starts in flight per preload connection.
    #[arg(long, default_value_t = 64)]
    depth: usize,
    /// The new sessions' poll, seconds.
    #[arg(long, default_value_t = 600)]
    poll: u32,
    /// Most starts per second (0: as fast as the server answers, as `preload`).
    #[arg(long, default_value_t = 0.0)]
    start_rate: f64,
    /// Users are named {prefix}{n}.
    #[arg(long, default_value = "g")]
    user_prefix: String,
    /// Seconds of heartbeats before the growth starts (measured).
    #[arg(long, default_value_t = 2.0)]
    lead: f64,
    /// Seconds of heartbeats after the growth ends (measured).
    #[arg(long, default_value_t = 2.0)]
    tail: f64,
    /// Operator address: also send GET /healthz there at --control-rate, a
    /// control on the same connection stack that never touches the map.
    #[arg(long)]
    control_addr: Option<String>,
    /// Control requests per second (with --control-addr).
    #[arg(long, default_value_t = 1000.0)]
    control_rate: f64,
    /// Connections for the control stream.
    #[arg(long, default_value_t = 8)]
    control_conns: usize,
    /// A window whose p99.9 exceeds this many ms is counted as over target.
    #[arg(long, default_value_t = 20.0)]
    threshold_ms: f64,
    /// Seconds between preload progress lines on stderr (0: none).
    #[arg(long, default_value_t = 5.0)]
    progress: f64,
    /// Print every window.
    #[arg(long)]
    windows: bool,
    /// Print a JSON summary line at the end.
    #[arg(long)]
    json: bool,
}

fn main() {
    let result = match Cli::parse().command {
        Command::Preload(a) => preload(&a),
        Command::Rate(a) => rate(&a),
        Command::Grow(a) => grow(&a),
        Command::Jitter(a) => jitter(&a),
        Command::Upstream(a) => match a.secs.map(|s| secs(s, "--secs")).transpose() {
            Ok(d) => upstream::run(&a.listen, a.answer_bytes, d),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        eprintln!("streamcap-driver: {e}");
        std::process::exit(1);
    }
}

fn secs(x: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(x).map_err(|_| format!("{what}: not a number of seconds: {x}"))
}

fn preload(a: &PreloadArgs) -> Result<(), String> {
    let report = preload::run(&a.config(), Arc::new(Progress::default()))?;
    report.print();
    if a.json {
        println!("{}", report.json());
    }
    Ok(())
}

fn rate(a: &RateArgs) -> Result<(), String> {
    let targets = Arc::new(Targets::load(&a.targets.to_string_lossy())?);
    eprintln!("rate: {} targets from {}", targets.len(), a.targets.display());
    let report = rate::run(RateConfig {
        addr: a.addr.clone(),
        targets,
        method: a.method.clone(),
        rate: a.rate,
        duration: Some(secs(a.duration, "--duration")?),
        warmup: secs(a.warmup, "--warmup")?,
        conns: a.conns,
        drain: secs(a.drain, "--drain")?,
        stop: None,
        probe: None,
        window: secs(a.window_secs, "--window-secs")?,
        follow_tokens: a.follow_tokens,
    })?;
    report.print(a.windows);
    if a.json {
        println!("{}", report.json());
    }
    Ok(())
}

fn jitter(a: &JitterArgs) -> Result<(), String> {
    let report = jitter::run(Duration::from_micros(a.sleep_us), secs(a.secs, "--secs")?);
    report.print();
    if a.json {
        println!("{}", report.json());
    }
    Ok(())
}

fn grow(a: &GrowArgs) -> Result<(), String> {
    let targets = Arc::new(Targets::load(&a.beat_targets.to_string_lossy())?);
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let stop_beats = stop.clone();
    let created = progress.clone();
    let beat_cfg = RateConfig {
        addr: a.addr.clone(),
        targets,
        method: "POST".into(),
        rate: a.beat_rate,
        duration: None,
        warmup: Duration::ZERO,
        conns: a.beat_conns,
        drain: Duration::from_secs(5),
        stop: Some(stop),
        probe: Some(Arc::new(move || created.created.load(Ordering::Relaxed))),
        window: Duration::from_secs(1),
        follow_tokens: false,
    };
    // The control: the heartbeats' stream (same stop, windows and drain)
    // aimed at the operator `/healthz`.
    let control_cfg = match &a.control_addr {
        Some(addr) => Some(RateConfig {
            addr: addr.clone(),
            targets: Arc::new(Targets::parse("GET\t/healthz\t-\n".into())?),
            method: "GET".into(),
            rate: a.control_rate,
            conns: a.control_conns,
            probe: None,
            ..beat_cfg.clone()
        }),
        None => None,
    };
    let beats = std::thread::Builder::new()
        .name("beats".into())
        .spawn(move || rate::run(beat_cfg))
        .map_err(|e| format!("cannot start the heartbeat thread: {e}"))?;
    let control = control_cfg
        .map(|cfg| std::thread::Builder::new().name("control".into()).spawn(move || rate::run(cfg)))
        .transpose()
        .map_err(|e| format!("cannot start the control thread: {e}"))?;
    std::thread::sleep(secs(a.lead, "--lead")?);

    let cfg = PreloadConfig {
        addr: a.addr.clone(),
        sessions: a.sessions,
        conns: a.conns,
        depth: a.depth.max(1),
        poll: a.poll,
        limit: 3,
        tenant: "demo".into(),
        user_prefix: a.user_prefix.clone(),
        grant_valid_secs: 86_400,
        tokens_out: None,
        grants_out: None,
        grants: 0,
        progress_secs: a.progress,
        threads: 1,
        start_rate: a.start_rate,
    };
    let grown = preload::run(&cfg, progress.clone());
    std::thread::sleep(secs(a.tail, "--tail")?);
    stop_beats.store(true, Ordering::Relaxed);
    let beat_report = beats.join().map_err(|_| "the heartbeat thread panicked")??;
    let control = match control {
        Some(c) => Some(c.join().map_err(|_| "the control thread panicked")??),
        None => None,
    };
    let grown = grown?;

    grown.print();
    beat_report.print(a.windows);
    let over_ms = |w: &rate::Window| w.p999_us as f64 / 1000.0 > a.threshold_ms;
    let over = beat_report.windows.iter().filter(|w| over_ms(w)).count();
    println!("grow: {} of {} 1-s windows had p99.9 above {} ms", over, beat_report.windows.len(), a.threshold_ms);
    // Slow windows in which the host took a CPU away for a stall's worth.
    let host_burst = |w: &rate::Window| w.steal.is_some_and(|s| s.burst_ms >= steal::HOST_STALL_MS);
    let over_burst = beat_report.windows.iter().filter(|w| over_ms(w) && host_burst(w)).count();
    println!(
        "grow: {over_burst} of those {over} had a CPU lose {} ms or more to the host within {} ms",
        steal::HOST_STALL_MS,
        steal::BURST_SPAN.as_millis()
    );
    // Windows of the two streams line up to within their start times (ms apart).
    let control_json = control.map(|c| {
        println!("control (GET /healthz over {} connections):", c.conns);
        c.print(false);
        let c_over = c.windows.iter().filter(|w| over_ms(w)).count();
        let both = beat_report.windows.iter().zip(&c.windows).filter(|(b, c)| over_ms(b) && over_ms(c)).count();
        let unexplained = beat_report
            .windows
            .iter()
            .enumerate()
            .filter(|(i, b)| over_ms(b) && !host_burst(b) && !c.windows.get(*i).is_some_and(over_ms))
            .count();
        println!(
            "control: {c_over} of {} windows had p99.9 above {} ms; {both} of the {over} heartbeat windows above it had the control above it too; {unexplained} had neither the control above it nor a host burst",
            c.windows.len(),
            a.threshold_ms
        );
        let mut v = c.json();
        v["windows_over_threshold"] = c_over.into();
        v["over_in_both"] = both.into();
        v["over_unexplained"] = unexplained.into();
        v
    });
    if a.json {
        let mut v = beat_report.json();
        v["kind"] = "grow".into();
        v["preload"] = grown.json();
        v["threshold_ms"] = a.threshold_ms.into();
        v["over_with_steal_burst"] = over_burst.into();
        v["windows_over_threshold"] = over.into();
        v["windows_sessions"] = beat_report.windows.iter().map(|w| w.probe).collect::<Vec<_>>().into();
        v["control"] = control_json.unwrap_or(serde_json::Value::Null);
        println!("{v}");
    }
    Ok(())
}
