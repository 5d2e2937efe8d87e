//! Goose load test for streamcap: every goose user is one simulated player.
//!
//! A player mints a grant with the project's own library, starts a session
//! (`POST /v1/users/{user}/sessions`), heartbeats with its latest lease token
//! every `poll_after` seconds, and stops (`DELETE …/sessions/{id}`) when its
//! playback ends or the load test does. Outcomes follow docs/spec.md §4/§6:
//!
//! - `200` on a heartbeat: keep the new token;
//! - `410`: the session is over for good; the player starts a fresh playback
//!   one poll later;
//! - `401`/`403`: an error;
//! - a network error or `5xx`: retry with the same token (once a second)
//!   until the token's `expires_at`, then give the playback up.
//!
//! Scenarios (`--scenarios NAME` or `STREAMCAP_SCENARIO=NAME`): `steady`,
//! `flash` (flash crowd), `overlimit` and `restart`. See README.md for the
//! environment variables and what each scenario counts as success.
//!
//! The binary prints a summary of outcomes (and writes it as JSON to
//! `STREAMCAP_SUMMARY` if set) and exits non-zero when a player saw anything
//! its scenario does not expect, or when no session could be started at all.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use goose::metrics::GooseRequestMetric;
use goose::prelude::*;
use serde_json::{Value, json};
use streamcap::grant::GrantClaims;
use streamcap::keys::Key;

/// The longest a player's idle tick sleeps: goose only notices the end of
/// the run between transactions, so a tick must return often.
const TICK: Duration = Duration::from_millis(250);
/// Pause between retries of a failed request (network error or 5xx).
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Pause before a player whose start was refused (409) tries again, when the
/// grant's poll is longer.
const MAX_START_BACKOFF: Duration = Duration::from_secs(5);

// ---- scenarios and settings ----------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Each player starts once and heartbeats for the whole run.
    Steady,
    /// Like steady, but every player starts within a moment (high increase rate).
    Flash,
    /// Several players share one account with a small limit: 409 on start and
    /// 410 `evicted` / `limit_exceeded` on heartbeat are expected.
    OverLimit,
    /// Players keep going while the server is killed and restarted: network
    /// errors and 5xx are retries, and sessions heal (200 after the restart).
    Restart,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Steady, Mode::Flash, Mode::OverLimit, Mode::Restart];

    /// The goose scenario name; its machine name (lowercase alphanumerics) is
    /// what `--scenarios` matches.
    fn scenario_name(self) -> &'static str {
        match self {
            Mode::Steady => "steady",
            Mode::Flash => "flash",
            Mode::OverLimit => "overlimit",
            Mode::Restart => "restart",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        let s: String = s.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase();
        match s.as_str() {
            "steady" => Some(Mode::Steady),
            "flash" | "flashcrowd" => Some(Mode::Flash),
            "overlimit" => Some(Mode::OverLimit),
            "restart" => Some(Mode::Restart),
            _ => None,
        }
    }

    fn default_limit(self) -> i64 {
        2
    }

    fn default_users_per_account(self) -> usize {
        match self {
            Mode::OverLimit => 3,
            _ => 1,
        }
    }

    fn default_beats(self) -> u64 {
        match self {
            Mode::OverLimit => 3,
            _ => 0,
        }
    }

    fn default_poll(self) -> i64 {
        match self {
            Mode::Restart => 3,
            _ => 5,
        }
    }
}

/// Settings from the environment, read once.
#[derive(Debug)]
struct Settings {
    tenant: String,
    kid: Option<String>,
    secret: [u8; 32],
    prefix: String,
    /// Per mode overrides; `None` takes the mode's default.
    poll: Option<i64>,
    limit: Option<i64>,
    users_per_account: Option<usize>,
    policy: Option<String>,
    beats: Option<u64>,
    grant_valid_secs: i64,
    summary: Option<String>,
    /// Whether network errors and 5xx are expected (a server restart): then
    /// they are retries, not failures. `None` takes the mode's default.
    expect_restart: Option<bool>,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

fn settings() -> &'static Settings {
    SETTINGS.get().expect("settings are read before the load test starts")
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
    match env(name) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| format!("{name}={v:?} is not a valid number")),
    }
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let (tenant, secret_hex) = match (env("STREAMCAP_TENANT"), env("STREAMCAP_MINT_KEY")) {
            (None, None) => (streamcap::config::DEV_TENANT.to_owned(), streamcap::config::DEV_TENANT_KEY.to_owned()),
            (Some(t), Some(k)) => (t, k),
            (Some(_), None) => return Err("STREAMCAP_TENANT needs STREAMCAP_MINT_KEY (the tenant's 64-hex key)".into()),
            (None, Some(_)) => return Err("STREAMCAP_MINT_KEY needs STREAMCAP_TENANT".into()),
        };
        let kid = env("STREAMCAP_MINT_KID");
        let key = Key::parse(kid.as_deref().unwrap_or("mint"), secret_hex.trim())
            .map_err(|e| format!("STREAMCAP_MINT_KEY / STREAMCAP_MINT_KID: {e}"))?;
        let policy = env("STREAMCAP_POLICY");
        if let Some(p) = &policy
            && !["reject_new", "evict_oldest", "reject_new_device"].contains(&p.as_str())
        {
            return Err(format!("STREAMCAP_POLICY={p:?}: expected reject_new, evict_oldest or reject_new_device"));
        }
        let run_id = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let prefix = env("STREAMCAP_USER_PREFIX").unwrap_or_else(|| format!("goose-{run_id:x}"));
        if prefix.is_empty()
            || prefix.len() > 100
            || !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
        {
            return Err(format!("STREAMCAP_USER_PREFIX={prefix:?}: 1-100 characters of [A-Za-z0-9._~-]"));
        }
        let poll = env_parse::<i64>("STREAMCAP_POLL")?;
        let limit = env_parse::<i64>("STREAMCAP_LIMIT")?;
        if limit.is_some_and(|l| !(1..=1000).contains(&l)) {
            return Err("STREAMCAP_LIMIT must be 1-1000".into());
        }
        let users_per_account = env_parse::<usize>("STREAMCAP_USERS_PER_ACCOUNT")?;
        if users_per_account == Some(0) {
            return Err("STREAMCAP_USERS_PER_ACCOUNT must be at least 1".into());
        }
        Ok(Settings {
            tenant,
            kid,
            secret: key.secret,
            prefix,
            poll,
            limit,
            users_per_account,
            policy,
            beats: env_parse("STREAMCAP_BEATS")?,
            grant_valid_secs: env_parse("STREAMCAP_GRANT_VALID_SECS")?.unwrap_or(3600),
            summary: env("STREAMCAP_SUMMARY"),
            expect_restart: match env("STREAMCAP_EXPECT_RESTART").as_deref().map(str::trim) {
                None => None,
                Some("1" | "true" | "yes") => Some(true),
                Some("0" | "false" | "no") => Some(false),
                Some(v) => return Err(format!("STREAMCAP_EXPECT_RESTART={v:?}: expected 1 or 0")),
            },
        })
    }

    fn expect_restart(&self, mode: Mode) -> bool {
        self.expect_restart.unwrap_or(mode == Mode::Restart)
    }

    /// The grant's `poll`: `STREAMCAP_POLL=0` leaves it out (the server's default).
    fn poll(&self, mode: Mode) -> Option<i64> {
        match self.poll {
            Some(0) => None,
            Some(p) => Some(p),
            None => Some(mode.default_poll()),
        }
    }

    fn policy(&self, mode: Mode, account: usize) -> Option<String> {
        match (&self.policy, mode) {
            (Some(p), _) => Some(p.clone()),
            // Over the limit, alternate accounts between the two policies so
            // one run sees both 409s and evictions.
            (None, Mode::OverLimit) => {
                Some(if account.is_multiple_of(2) { "reject_new" } else { "evict_oldest" }.to_owned())
            }
            (None, _) => None,
        }
    }
}

// ---- outcome counters ----------------------------------------------------------------------

/// What players saw, over all users. Printed at the end and written as JSON.
#[derive(Default)]
struct Counters {
    starts_ok: AtomicU64,
    starts_409: AtomicU64,
    starts_evicted_others: AtomicU64,
    heartbeats_ok: AtomicU64,
    /// 200s that ended a run of retries: the session survived the outage (healed).
    heartbeats_recovered: AtomicU64,
    heartbeats_410_evicted: AtomicU64,
    heartbeats_410_limit_exceeded: AtomicU64,
    heartbeats_410_other: AtomicU64,
    stops_ok: AtomicU64,
    /// Network errors and 5xx, each retried.
    retries: AtomicU64,
    /// Playbacks given up because their token expired while retrying.
    lost: AtomicU64,
    /// Anything the scenario does not expect (401, 403, unexpected 409/410, …).
    unexpected: AtomicU64,
}

static COUNTERS: OnceLock<Counters> = OnceLock::new();

fn counters() -> &'static Counters {
    COUNTERS.get_or_init(Counters::default)
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn to_json(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "starts_ok": g(&self.starts_ok),
            "starts_409": g(&self.starts_409),
            "starts_evicted_others": g(&self.starts_evicted_others),
            "heartbeats_ok": g(&self.heartbeats_ok),
            "heartbeats_recovered": g(&self.heartbeats_recovered),
            "heartbeats_410_evicted": g(&self.heartbeats_410_evicted),
            "heartbeats_410_limit_exceeded": g(&self.heartbeats_410_limit_exceeded),
            "heartbeats_410_other": g(&self.heartbeats_410_other),
            "stops_ok": g(&self.stops_ok),
            "retries": g(&self.retries),
            "lost": g(&self.lost),
            "unexpected": g(&self.unexpected),
        })
    }
}

// ---- player state --------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Session {
    id: String,
    token: String,
    poll: Duration,
    /// The token's expiry, Unix seconds.
    expires_at: u64,
    beats: u64,
    /// Failed attempts since the last answer that counted.
    failures: u32,
    next: Instant,
}

#[derive(Clone, Debug)]
struct Player {
    mode: Mode,
    /// The account (`sub`) this player plays under.
    user: String,
    account: usize,
    device: String,
    session: Option<Session>,
    /// When to start the next playback (`session` is `None`).
    next_start: Instant,
    /// Failed start attempts in a row (network errors or 5xx).
    start_failures: u32,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Player {
    fn new(mode: Mode, index: usize) -> Player {
        let s = settings();
        let per = s.users_per_account.unwrap_or_else(|| mode.default_users_per_account());
        let account = index / per;
        Player {
            mode,
            user: format!("{}-{}-{account}", s.prefix, mode.scenario_name()),
            account,
            device: format!("goose-device-{index}"),
            session: None,
            next_start: Instant::now(),
            start_failures: 0,
        }
    }

    fn grant(&self) -> String {
        let s = settings();
        let exp = now_unix() as i64 + s.grant_valid_secs;
        GrantClaims {
            tenant: s.tenant.as_str().into(),
            kid: s.kid.as_deref().map(Into::into),
            sub: self.user.as_str().into(),
            limit: s.limit.unwrap_or_else(|| self.mode.default_limit()),
            policy: s.policy(self.mode, self.account).map(Into::into),
            device: Some(self.device.as_str().into()),
            label: Some("goose player".into()),
            exp,
            poll: s.poll(self.mode),
            ..Default::default()
        }
        .mint(&s.secret)
    }

    fn beats_per_session(&self) -> u64 {
        settings().beats.unwrap_or_else(|| self.mode.default_beats())
    }

    /// The pause before a fresh playback: one poll (bounded), so a player
    /// whose stream was refused or stopped does not hammer the server.
    fn start_backoff(&self) -> Duration {
        let poll = settings().poll(self.mode).unwrap_or(5).max(1) as u64;
        Duration::from_secs(poll).min(MAX_START_BACKOFF)
    }
}

// ---- requests ------------------------------------------------------------------------------

/// What one request came back with.
enum Answer {
    Status(u16, Value),
    /// Network error (connection refused or reset, timeout).
    Network,
}

async fn call(
    user: &mut GooseUser,
    method: GooseMethod,
    path: &str,
    name: &'static str,
    bearer: &str,
) -> Result<(GooseRequestMetric, Answer), Box<TransactionError>> {
    let rb = user.get_request_builder(&method, path)?.bearer_auth(bearer);
    let request = GooseRequest::builder().method(method).path(path).name(name).set_request_builder(rb).build();
    let resp = user.request(request).await?;
    let answer = match resp.response {
        Err(_) => Answer::Network,
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            Answer::Status(status, serde_json::from_str(&body).unwrap_or(Value::Null))
        }
    };
    Ok((resp.request, answer))
}

fn str_field(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

fn describe(status: u16, body: &Value) -> String {
    match str_field(body, "error") {
        Some(e) => format!("{status} {e}"),
        None => format!("{status}"),
    }
}

/// Marks an expected non-2xx answer (or, in the restart scenario, a retried
/// network error) as a success in goose's metrics.
fn expected(user: &mut GooseUser, req: &mut GooseRequestMetric) -> TransactionResult {
    // Goose puts every metric with an error text in its error summary, the
    // correcting update too: clear it so each expected answer is listed once.
    req.error.clear();
    user.set_success(req)
}

/// Marks a request as a failure with `tag` and counts it as unexpected. The
/// player goes on, so the transaction itself returns `Ok`.
fn unexpected(user: &mut GooseUser, req: &mut GooseRequestMetric, tag: &str) -> TransactionResult {
    bump(&counters().unexpected);
    // `set_failure` returns Err (to fail a transaction), which is not wanted here.
    let _ = user.set_failure(tag, req, None, None);
    Ok(())
}

/// A failed attempt that is retried: a success in goose's metrics when a
/// restart is expected (the restart scenario, or `STREAMCAP_EXPECT_RESTART=1`),
/// a failure otherwise.
fn retry(user: &mut GooseUser, req: &mut GooseRequestMetric, mode: Mode, tag: &str) -> TransactionResult {
    bump(&counters().retries);
    if settings().expect_restart(mode) {
        expected(user, req)
    } else {
        if req.success {
            let _ = user.set_failure(tag, req, None, None);
        }
        Ok(())
    }
}

async fn start(user: &mut GooseUser, p: &mut Player) -> TransactionResult {
    let path = format!("/v1/users/{}/sessions", p.user);
    let grant = p.grant();
    let (mut req, answer) = call(user, GooseMethod::Post, &path, "start", &grant).await?;
    let now = Instant::now();
    match answer {
        Answer::Status(201, body) => {
            let (Some(id), Some(token)) = (str_field(&body, "session_id"), str_field(&body, "token")) else {
                p.next_start = now + p.start_backoff();
                return unexpected(user, &mut req, "201 without session_id/token");
            };
            let poll = body.get("poll_after").and_then(Value::as_u64).unwrap_or(30).max(1);
            let expires_at = body.get("expires_at").and_then(Value::as_u64).unwrap_or(0);
            let evicted = body.get("evicted").and_then(Value::as_array).map_or(0, Vec::len);
            bump(&counters().starts_ok);
            counters().starts_evicted_others.fetch_add(evicted as u64, Ordering::Relaxed);
            p.start_failures = 0;
            p.session = Some(Session {
                id,
                token,
                poll: Duration::from_secs(poll),
                expires_at,
                beats: 0,
                failures: 0,
                next: now + Duration::from_secs(poll),
            });
            Ok(())
        }
        Answer::Status(409, body) => {
            bump(&counters().starts_409);
            p.start_failures = 0;
            p.next_start = now + p.start_backoff();
            if p.mode == Mode::OverLimit {
                expected(user, &mut req)
            } else {
                unexpected(user, &mut req, &format!("start: unexpected {}", describe(409, &body)))
            }
        }
        Answer::Status(s, body) if s >= 500 => {
            p.start_failures += 1;
            p.next_start = now + RETRY_EVERY;
            retry(user, &mut req, p.mode, &format!("start: {}", describe(s, &body)))
        }
        Answer::Network => {
            p.start_failures += 1;
            p.next_start = now + RETRY_EVERY;
            retry(user, &mut req, p.mode, "start: network error")
        }
        Answer::Status(s, body) => {
            p.next_start = now + p.start_backoff();
            unexpected(user, &mut req, &format!("start: unexpected {}", describe(s, &body)))
        }
    }
}

async fn heartbeat(user: &mut GooseUser, p: &mut Player) -> TransactionResult {
    let Some(mut s) = p.session.take() else { return Ok(()) };
    let path = format!("/v1/users/{}/sessions/{}/heartbeat", p.user, s.id);
    let (mut req, answer) = call(user, GooseMethod::Post, &path, "heartbeat", &s.token).await?;
    let now = Instant::now();
    match answer {
        Answer::Status(200, body) => {
            let Some(token) = str_field(&body, "token") else {
                p.next_start = now + p.start_backoff();
                return unexpected(user, &mut req, "heartbeat: 200 without token");
            };
            bump(&counters().heartbeats_ok);
            if s.failures > 0 {
                bump(&counters().heartbeats_recovered);
            }
            let poll = body.get("poll_after").and_then(Value::as_u64).unwrap_or(s.poll.as_secs()).max(1);
            s.token = token;
            s.poll = Duration::from_secs(poll);
            s.expires_at = body.get("expires_at").and_then(Value::as_u64).unwrap_or(s.expires_at);
            s.beats += 1;
            s.failures = 0;
            s.next = now + s.poll;
            p.session = Some(s);
            Ok(())
        }
        Answer::Status(410, body) => {
            // Definitive: this playback is over. A fresh one starts a poll later.
            let reason = str_field(&body, "reason").unwrap_or_default();
            let c = counters();
            match reason.as_str() {
                "evicted" => bump(&c.heartbeats_410_evicted),
                "limit_exceeded" => bump(&c.heartbeats_410_limit_exceeded),
                _ => bump(&c.heartbeats_410_other),
            }
            p.next_start = now + p.start_backoff();
            if p.mode == Mode::OverLimit && (reason == "evicted" || reason == "limit_exceeded") {
                expected(user, &mut req)
            } else {
                unexpected(user, &mut req, &format!("heartbeat: unexpected 410 {reason}"))
            }
        }
        Answer::Status(st, body) if st >= 500 => heartbeat_failed(user, p, s, &mut req, &describe(st, &body)),
        Answer::Network => heartbeat_failed(user, p, s, &mut req, "network error"),
        Answer::Status(st, body) => {
            // 401 / 403 / anything else: definitive and wrong.
            p.next_start = now + p.start_backoff();
            unexpected(user, &mut req, &format!("heartbeat: unexpected {}", describe(st, &body)))
        }
    }
}

/// A heartbeat that got no answer that counts: retry with the same token
/// until it expires, then give the playback up.
fn heartbeat_failed(
    user: &mut GooseUser,
    p: &mut Player,
    mut s: Session,
    req: &mut GooseRequestMetric,
    what: &str,
) -> TransactionResult {
    let now = Instant::now();
    let result = retry(user, req, p.mode, &format!("heartbeat: {what}"));
    s.failures += 1;
    if now_unix() >= s.expires_at {
        // The token is dead: the session is gone for the server as well.
        bump(&counters().lost);
        bump(&counters().unexpected);
        eprintln!("player {}: session {} lost: token expired while retrying ({what})", p.user, s.id);
        p.next_start = now;
    } else {
        s.next = now + RETRY_EVERY;
        p.session = Some(s);
    }
    result
}

async fn stop(user: &mut GooseUser, p: &mut Player) -> TransactionResult {
    let Some(s) = p.session.take() else { return Ok(()) };
    let path = format!("/v1/users/{}/sessions/{}", p.user, s.id);
    let (mut req, answer) = call(user, GooseMethod::Delete, &path, "stop", &s.token).await?;
    p.next_start = Instant::now() + p.start_backoff();
    match answer {
        Answer::Status(204, _) => {
            bump(&counters().stops_ok);
            Ok(())
        }
        // One try only: an unanswered stop just lets the session expire.
        Answer::Status(st, body) if st >= 500 => {
            retry(user, &mut req, p.mode, &format!("stop: {}", describe(st, &body)))
        }
        Answer::Network => retry(user, &mut req, p.mode, "stop: network error"),
        Answer::Status(st, body) => unexpected(user, &mut req, &format!("stop: unexpected {}", describe(st, &body))),
    }
}

// ---- transactions --------------------------------------------------------------------------

fn player(user: &GooseUser, mode: Mode) -> Player {
    user.get_session_data::<Player>().cloned().unwrap_or_else(|| Player::new(mode, user.weighted_users_index))
}

/// One step of a player: start, heartbeat or stop when due, else a short sleep.
async fn tick(user: &mut GooseUser, mode: Mode) -> TransactionResult {
    let mut p = player(user, mode);
    let now = Instant::now();
    let result = match &p.session {
        None if now >= p.next_start => start(user, &mut p).await,
        Some(s)
            if now >= s.next && s.failures == 0 && p.beats_per_session() > 0 && s.beats >= p.beats_per_session() =>
        {
            stop(user, &mut p).await
        }
        Some(s) if now >= s.next => heartbeat(user, &mut p).await,
        _ => {
            let due = p.session.as_ref().map_or(p.next_start, |s| s.next);
            tokio::time::sleep(due.saturating_duration_since(now).min(TICK)).await;
            Ok(())
        }
    };
    user.set_session_data(p);
    result
}

/// On stop: end the live session, so the run leaves nothing behind.
async fn finish(user: &mut GooseUser, mode: Mode) -> TransactionResult {
    let mut p = player(user, mode);
    let result = stop(user, &mut p).await;
    user.set_session_data(p);
    result
}

async fn steady_tick(user: &mut GooseUser) -> TransactionResult {
    tick(user, Mode::Steady).await
}
async fn steady_finish(user: &mut GooseUser) -> TransactionResult {
    finish(user, Mode::Steady).await
}
async fn flash_tick(user: &mut GooseUser) -> TransactionResult {
    tick(user, Mode::Flash).await
}
async fn flash_finish(user: &mut GooseUser) -> TransactionResult {
    finish(user, Mode::Flash).await
}
async fn overlimit_tick(user: &mut GooseUser) -> TransactionResult {
    tick(user, Mode::OverLimit).await
}
async fn overlimit_finish(user: &mut GooseUser) -> TransactionResult {
    finish(user, Mode::OverLimit).await
}
async fn restart_tick(user: &mut GooseUser) -> TransactionResult {
    tick(user, Mode::Restart).await
}
async fn restart_finish(user: &mut GooseUser) -> TransactionResult {
    finish(user, Mode::Restart).await
}

fn scenario_for(mode: Mode) -> Scenario {
    let (t, f) = match mode {
        Mode::Steady => (transaction!(steady_tick), transaction!(steady_finish)),
        Mode::Flash => (transaction!(flash_tick), transaction!(flash_finish)),
        Mode::OverLimit => (transaction!(overlimit_tick), transaction!(overlimit_finish)),
        Mode::Restart => (transaction!(restart_tick), transaction!(restart_finish)),
    };
    Scenario::new(mode.scenario_name())
        .register_transaction(t.set_name("tick"))
        .register_transaction(f.set_name("finish").set_on_stop())
}

// ---- main ----------------------------------------------------------------------------------

/// The scenarios named on the command line (`--scenarios a,b` or `--scenarios=a,b`).
fn scenarios_from_args() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let mut found = None;
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix("--scenarios=") {
            found = Some(v.to_owned());
        } else if a == "--scenarios" {
            found = args.get(i + 1).cloned();
        }
    }
    found
}

fn summarize(metrics: &GooseMetrics, modes: &[Mode]) -> Value {
    let mut requests = BTreeMap::new();
    for (name, r) in &metrics.requests {
        let codes: BTreeMap<String, usize> = r.status_code_counts.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        requests.insert(name.clone(), json!({"success": r.success_count, "fail": r.fail_count, "status_codes": codes}));
    }
    let total: usize = metrics.requests.values().map(|r| r.success_count + r.fail_count).sum();
    let failed: usize = metrics.requests.values().map(|r| r.fail_count).sum();
    json!({
        "scenarios": modes.iter().map(|m| m.scenario_name()).collect::<Vec<_>>(),
        "duration_secs": metrics.duration,
        "users": metrics.maximum_users,
        "requests_total": total,
        "requests_failed": failed,
        "requests": requests,
        "players": counters().to_json(),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("streamcap-goose: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<ExitCode, String> {
    let settings = Settings::from_env()?;
    let _ = SETTINGS.set(settings);
    counters();

    // Which scenarios run: --scenarios wins, then STREAMCAP_SCENARIO, else steady.
    let env_scenario = env("STREAMCAP_SCENARIO");
    if let Some(s) = &env_scenario
        && Mode::parse(s).is_none()
    {
        return Err(format!("STREAMCAP_SCENARIO={s:?}: expected steady, flash, overlimit or restart"));
    }
    let selected = scenarios_from_args().or(env_scenario.clone()).unwrap_or_else(|| "steady".into());
    let modes: Vec<Mode> = Mode::ALL
        .into_iter()
        .filter(|m| selected.split(',').any(|s| s.trim().contains('*') || Mode::parse(s) == Some(*m)))
        .collect();

    let mut attack = GooseAttack::initialize().map_err(|e| e.to_string())?;
    for mode in Mode::ALL {
        attack = attack.register_scenario(scenario_for(mode));
    }
    let default_scenario = env_scenario.map(|s| Mode::parse(&s).unwrap_or(Mode::Steady)).unwrap_or(Mode::Steady);
    let mut attack = attack
        .set_default(GooseDefault::Host, "http://127.0.0.1:8080")
        .and_then(|a| a.set_default(GooseDefault::Scenarios, default_scenario.scenario_name()))
        // Starts are part of the story (flash crowd, 409s): keep the ramp-up's metrics.
        .and_then(|a| a.set_default(GooseDefault::NoResetMetrics, true))
        // Transactions are idle ticks and their loop is no "iteration": only the
        // request metrics (start / heartbeat / stop) mean anything.
        .and_then(|a| a.set_default(GooseDefault::NoTransactionMetrics, true))
        .and_then(|a| a.set_default(GooseDefault::NoScenarioMetrics, true))
        // A hung server must not stall a player past its token's expiry.
        .and_then(|a| a.set_default(GooseDefault::Timeout, "5"))
        .map_err(|e| e.to_string())?;
    if modes.contains(&Mode::Flash) {
        // A flash crowd: every user starts within a moment.
        attack = attack.set_default(GooseDefault::IncreaseRate, "1000").map_err(|e| e.to_string())?;
    }

    let metrics = attack.execute().await.map_err(|e| e.to_string())?;
    let summary = summarize(&metrics, &modes);
    println!("streamcap-goose summary: {}", serde_json::to_string_pretty(&summary).unwrap_or_default());
    if let Some(path) = &SETTINGS.get().and_then(|s| s.summary.clone()) {
        std::fs::write(path, serde_json::to_vec_pretty(&summary).unwrap_or_default())
            .map_err(|e| format!("writing {path}: {e}"))?;
    }

    let c = counters();
    let unexpected = c.unexpected.load(Ordering::Relaxed);
    let started = c.starts_ok.load(Ordering::Relaxed);
    if metrics.duration == 0 && metrics.requests.is_empty() {
        // --help-like runs (e.g. --scenarios-list) end here without a load test.
        return Ok(ExitCode::SUCCESS);
    }
    if started == 0 {
        eprintln!(
            "streamcap-goose: FAIL: no session was started (is the server at -H up, and the tenant key right?); \
             {unexpected} unexpected outcome(s)"
        );
        return Ok(ExitCode::FAILURE);
    }
    let failed: usize = metrics.requests.values().map(|r| r.fail_count).sum();
    if unexpected > 0 || failed > 0 {
        eprintln!(
            "streamcap-goose: FAIL: {unexpected} unexpected outcome(s), {failed} failed request(s); \
             see the summary and goose's errors"
        );
        return Ok(ExitCode::FAILURE);
    }
    eprintln!("streamcap-goose: OK");
    Ok(ExitCode::SUCCESS)
}
