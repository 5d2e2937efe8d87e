//! `preload`: creates sessions as fast as the server allows, over
//! keep-alive connections with up to `depth` pipelined starts in flight on
//! each. Users hold 1, 2 and 3 sessions in turn (2 on average, grant limit
//! 3). Optionally writes the sessions' heartbeat targets and grants of fresh
//! users, in the TAB-separated format that `rate` and the wrk scripts read.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use streamcap::grant::GrantClaims;
use streamcap::keys::Key;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::{ReadBuf, write_request};

/// Sessions a connection claims at a time: a multiple of 6, so one user's
/// sessions (1, 2 or 3 of them) sit in one claim and its grant is minted once.
const CLAIM: u64 = 48;
/// Consecutive failed connection attempts before a connection gives up.
const MAX_RECONNECTS: u32 = 5;
/// Token lines are buffered per connection and written in pieces this big.
const FLUSH_BYTES: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct PreloadConfig {
    pub addr: String,
    pub sessions: u64,
    pub conns: usize,
    pub depth: usize,
    pub poll: u32,
    pub limit: i64,
    pub tenant: String,
    pub user_prefix: String,
    pub grant_valid_secs: i64,
    pub tokens_out: Option<PathBuf>,
    pub grants_out: Option<PathBuf>,
    pub grants: u64,
    /// Seconds between progress lines on stderr; 0: none.
    pub progress_secs: f64,
    /// Worker threads; 1 runs everything on the calling thread.
    pub threads: usize,
    /// Most starts per second over all connections; 0: as fast as the server answers.
    pub start_rate: f64,
}

/// Live counters, readable while a preload runs (`grow` samples `created`).
#[derive(Default)]
pub struct Progress {
    pub answered: AtomicU64,
    pub created: AtomicU64,
    pub io_errors: AtomicU64,
    statuses: Mutex<BTreeMap<u16, u64>>,
}

impl Progress {
    fn count_status(&self, status: u16, n: u64) {
        if let Ok(mut s) = self.statuses.lock() {
            *s.entry(status).or_default() += n;
        }
    }
}

#[derive(Debug, Clone)]
pub struct PreloadReport {
    pub requested: u64,
    pub created: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub io_errors: u64,
    pub secs: f64,
    pub grants_written: u64,
}

impl PreloadReport {
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 { self.created as f64 / self.secs } else { 0.0 }
    }

    pub fn non_201(&self) -> u64 {
        self.statuses.iter().filter(|(s, _)| **s != 201).map(|(_, n)| n).sum()
    }

    pub fn print(&self) {
        let statuses: Vec<String> = self.statuses.iter().map(|(s, n)| format!("{s} x {n}")).collect();
        println!(
            "preload: created {} of {} sessions in {:.1} s: {:.0} sessions/s; non-201: {}; i/o errors: {}; statuses: {}",
            self.created,
            self.requested,
            self.secs,
            self.rate(),
            self.non_201(),
            self.io_errors,
            if statuses.is_empty() { "-".to_string() } else { statuses.join(", ") }
        );
        if self.grants_written > 0 {
            println!("preload: wrote {} grants of fresh users", self.grants_written);
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let statuses: serde_json::Map<String, serde_json::Value> =
            self.statuses.iter().map(|(s, n)| (s.to_string(), (*n).into())).collect();
        serde_json::json!({
            "kind": "preload",
            "requested": self.requested,
            "created": self.created,
            "non_201": self.non_201(),
            "io_errors": self.io_errors,
            "statuses": statuses,
            "secs": round3(self.secs),
            "rate": self.rate().round(),
            "grants_written": self.grants_written,
        })
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The user of the `s`-th session: blocks of six sessions over three users
/// holding 1, 2 and 3 of them.
pub fn user_of(s: u64) -> u64 {
    let (block, r) = (s / 6, s % 6);
    3 * block
        + match r {
            0 => 0,
            1 | 2 => 1,
            _ => 2,
        }
}

/// The key grants are signed with: `STREAMCAP_MINT_KEY` (as `streamcap mint`
/// reads it), else the dev tenant's public key.
pub fn mint_key() -> Result<Key, String> {
    match std::env::var("STREAMCAP_MINT_KEY") {
        Ok(hex) => Key::parse("k", hex.trim()),
        Err(_) => Key::parse("dev", streamcap::config::DEV_TENANT_KEY),
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

struct Shared {
    cfg: PreloadConfig,
    secret: [u8; 32],
    exp: i64,
    next: AtomicU64,
    /// Start slots handed out so far (with a `start_rate`).
    slots: AtomicU64,
    t0: Instant,
    progress: Arc<Progress>,
    tokens: Option<Mutex<File>>,
}

impl Shared {
    fn grant(&self, user: &str) -> String {
        GrantClaims {
            tenant: self.cfg.tenant.as_str().into(),
            sub: user.into(),
            limit: self.cfg.limit,
            exp: self.exp,
            poll: Some(i64::from(self.cfg.poll)),
            ..Default::default()
        }
        .mint(&self.secret)
    }

    /// When the `slot`-th start may be sent (with a `start_rate`).
    fn slot_time(&self, slot: u64) -> Instant {
        self.t0 + Duration::from_secs_f64(slot as f64 / self.cfg.start_rate)
    }

    fn write_tokens(&self, lines: &mut Vec<u8>) -> Result<(), String> {
        if let Some(file) = &self.tokens {
            let mut f = file.lock().map_err(|_| "token file lock poisoned")?;
            f.write_all(lines).map_err(|e| format!("cannot write tokens: {e}"))?;
        }
        lines.clear();
        Ok(())
    }
}

/// Runs a preload to completion, counting into `progress`.
pub fn run(cfg: &PreloadConfig, progress: Arc<Progress>) -> Result<PreloadReport, String> {
    let key = mint_key()?;
    let tokens = match &cfg.tokens_out {
        Some(p) => Some(Mutex::new(File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()))?)),
        None => None,
    };
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        secret: key.secret,
        exp: unix_now() + cfg.grant_valid_secs,
        next: AtomicU64::new(0),
        slots: AtomicU64::new(0),
        t0: Instant::now(),
        progress: progress.clone(),
        tokens,
    });
    let runtime = if cfg.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(cfg.threads).enable_all().build()
    }
    .map_err(|e| format!("cannot start the runtime: {e}"))?;

    let started = Instant::now();
    let (result, secs) = runtime.block_on(async {
        let finished = Arc::new(AtomicBool::new(false));
        let ticker = (cfg.progress_secs > 0.0).then(|| {
            tokio::spawn(report_progress(progress.clone(), cfg.sessions, cfg.progress_secs, finished.clone()))
        });
        let tasks: Vec<_> = (0..cfg.conns.max(1)).map(|_| tokio::spawn(connection(shared.clone()))).collect();
        let mut first_error = None;
        for t in tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(e) => first_error = first_error.or(Some(format!("connection task failed: {e}"))),
            }
        }
        let secs = started.elapsed().as_secs_f64();
        finished.store(true, Ordering::Relaxed);
        if let Some(t) = ticker {
            t.abort();
        }
        (first_error.map_or(Ok(()), Err), secs)
    });
    if let Some(file) = &shared.tokens {
        let f = file.lock().map_err(|_| "token file lock poisoned")?;
        f.sync_data().ok();
    }
    result?;

    let grants_written = match &cfg.grants_out {
        Some(path) if cfg.grants > 0 => write_grants(&shared, path)?,
        _ => 0,
    };
    let statuses = progress.statuses.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(PreloadReport {
        requested: cfg.sessions,
        created: progress.created.load(Ordering::Relaxed),
        statuses,
        io_errors: progress.io_errors.load(Ordering::Relaxed),
        secs,
        grants_written,
    })
}

fn write_grants(shared: &Shared, path: &PathBuf) -> Result<u64, String> {
    let file = File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let prefix = &shared.cfg.user_prefix;
    for i in 0..shared.cfg.grants {
        // "f" keeps fresh users apart from the preloaded `{prefix}{n}` ones.
        let user = format!("{prefix}f{i}");
        let grant = shared.grant(&user);
        writeln!(out, "/v1/users/{user}/sessions\tBearer {grant}")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    out.flush().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(shared.cfg.grants)
}

async fn report_progress(progress: Arc<Progress>, total: u64, every: f64, finished: Arc<AtomicBool>) {
    let started = Instant::now();
    let mut last = (0u64, started);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(every));
    tick.tick().await;
    while !finished.load(Ordering::Relaxed) {
        tick.tick().await;
        let now = Instant::now();
        let answered = progress.answered.load(Ordering::Relaxed);
        let created = progress.created.load(Ordering::Relaxed);
        let recent = (answered - last.0) as f64 / now.duration_since(last.1).as_secs_f64();
        let average = created as f64 / started.elapsed().as_secs_f64();
        eprintln!(
            "preload: {created}/{total} created ({:.1}%), {recent:.0}/s now, {average:.0}/s average, non-201 {}, i/o errors {}",
            100.0 * created as f64 / total.max(1) as f64,
            answered - created,
            progress.io_errors.load(Ordering::Relaxed)
        );
        last = (answered, now);
    }
}

/// Claims sessions and starts them over one connection (reconnecting after
/// a failure) until none are left.
async fn connection(shared: Arc<Shared>) -> Result<(), String> {
    let cfg = &shared.cfg;
    let mut claim = 0..0;
    let mut grant: Option<(u64, String)> = None;
    let mut inflight: VecDeque<u64> = VecDeque::with_capacity(cfg.depth);
    let mut wbuf = Vec::with_capacity(cfg.depth * 512);
    let mut rbuf = ReadBuf::with_capacity(1 << 16);
    let mut lines = Vec::new();
    let mut path = String::new();
    let mut auth = String::new();
    let mut failures = 0;
    let mut exhausted = false;
    let paced = cfg.start_rate > 0.0;
    // The start slot this connection holds but may not use yet.
    let mut slot: Option<Instant> = None;
    loop {
        let mut stream = match TcpStream::connect(&cfg.addr).await {
            Ok(s) => s,
            Err(e) => {
                failures += 1;
                if failures > MAX_RECONNECTS {
                    return Err(format!("cannot connect to {}: {e}", cfg.addr));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        rbuf.data.clear();
        rbuf.start = 0;
        let outcome: Result<(), String> = async {
            loop {
                while !exhausted && inflight.len() < cfg.depth {
                    if paced {
                        let at =
                            *slot.get_or_insert_with(|| shared.slot_time(shared.slots.fetch_add(1, Ordering::Relaxed)));
                        if at > Instant::now() {
                            break;
                        }
                    }
                    if claim.is_empty() {
                        let s = shared.next.fetch_add(CLAIM, Ordering::Relaxed);
                        if s >= cfg.sessions {
                            exhausted = true;
                            break;
                        }
                        claim = s..(s + CLAIM).min(cfg.sessions);
                    }
                    let Some(s) = claim.next() else { continue };
                    let user = user_of(s);
                    path.clear();
                    path.push_str("/v1/users/");
                    push_user(&mut path, &cfg.user_prefix, user);
                    let name_end = path.len();
                    path.push_str("/sessions");
                    if grant.as_ref().is_none_or(|(u, _)| *u != user) {
                        grant = Some((user, shared.grant(&path["/v1/users/".len()..name_end])));
                    }
                    auth.clear();
                    auth.push_str("Bearer ");
                    auth.push_str(grant.as_ref().map_or("", |(_, g)| g));
                    write_request(&mut wbuf, "POST", &path, &cfg.addr, &auth);
                    inflight.push_back(user);
                    slot = None;
                }
                if inflight.is_empty() {
                    match slot {
                        Some(at) if !exhausted => {
                            tokio::time::sleep_until(at.into()).await;
                            continue;
                        }
                        _ => return Ok(()),
                    }
                }
                if !wbuf.is_empty() {
                    stream.write_all(&wbuf).await.map_err(|e| format!("write: {e}"))?;
                    wbuf.clear();
                }
                rbuf.compact();
                rbuf.data.reserve(1 << 16);
                let n = stream.read_buf(&mut rbuf.data).await.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("connection closed by the server".into());
                }
                let (mut answered, mut created) = (0, 0);
                while let Some(r) = rbuf.peek().map_err(|e| e.to_string())? {
                    let Some(user) = inflight.pop_front() else {
                        return Err("an answer to no request".into());
                    };
                    answered += 1;
                    if r.status == 201 {
                        created += 1;
                        if shared.tokens.is_some() {
                            let body = r.body.clone().map(|b| &rbuf.pending()[b]).unwrap_or_default();
                            token_line(&mut lines, &cfg.user_prefix, user, body)?;
                        }
                    } else {
                        shared.progress.count_status(r.status, 1);
                    }
                    rbuf.consume(r.len);
                }
                shared.progress.answered.fetch_add(answered, Ordering::Relaxed);
                shared.progress.created.fetch_add(created, Ordering::Relaxed);
                if created > 0 {
                    shared.progress.count_status(201, created);
                }
                if lines.len() >= FLUSH_BYTES {
                    shared.write_tokens(&mut lines)?;
                }
                failures = 0;
            }
        }
        .await;
        match outcome {
            Ok(()) => break,
            Err(e) => {
                // Whatever was in flight is lost; the server may or may not have admitted it.
                let lost = inflight.len() as u64;
                inflight.clear();
                wbuf.clear();
                shared.progress.io_errors.fetch_add(lost, Ordering::Relaxed);
                shared.progress.answered.fetch_add(lost, Ordering::Relaxed);
                failures += 1;
                eprintln!("preload: connection error ({e}); {lost} requests lost; reconnecting");
                if failures > MAX_RECONNECTS {
                    shared.write_tokens(&mut lines)?;
                    return Err(format!("giving up after {failures} connection errors: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    shared.write_tokens(&mut lines)
}

fn push_user(out: &mut String, prefix: &str, user: u64) {
    use std::fmt::Write as _;
    out.push_str(prefix);
    let _ = write!(out, "{user}");
}

/// Appends `"/v1/users/{user}/sessions/{id}/heartbeat<TAB>Bearer {token}\n"`
/// from a start's 201 body.
fn token_line(out: &mut Vec<u8>, prefix: &str, user: u64, body: &[u8]) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("bad 201 body: {e}"))?;
    let (Some(id), Some(token)) = (v["session_id"].as_str(), v["token"].as_str()) else {
        return Err("201 body without session_id and token".into());
    };
    let mut line = String::with_capacity(token.len() + 80);
    line.push_str("/v1/users/");
    push_user(&mut line, prefix, user);
    line.push_str("/sessions/");
    line.push_str(id);
    line.push_str("/heartbeat\tBearer ");
    line.push_str(token);
    line.push('\n');
    out.extend_from_slice(line.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_hold_one_two_and_three_sessions() {
        let users: Vec<u64> = (0..12).map(user_of).collect();
        assert_eq!(users, [0, 1, 1, 2, 2, 2, 3, 4, 4, 5, 5, 5]);
        let distinct = (0..6000).map(user_of).collect::<std::collections::BTreeSet<_>>().len();
        assert_eq!(distinct, 3000, "two sessions per user on average");
    }

    #[test]
    fn token_lines_name_the_heartbeat_route() {
        let mut out = Vec::new();
        token_line(&mut out, "u", 7, br#"{"session_id":"abc","token":"s1.t","poll_after":600}"#).unwrap();
        assert_eq!(out, b"/v1/users/u7/sessions/abc/heartbeat\tBearer s1.t\n");
        assert!(token_line(&mut out, "u", 7, b"{}").is_err());
    }
}
