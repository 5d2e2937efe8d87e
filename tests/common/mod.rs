//! Shared helpers for the integration tests: a real server in this process
//! (or the real binary in a child process), a small HTTP/1.1 client over a
//! plain `TcpStream` that can also send raw bytes, pipeline and watch a
//! connection close, and grant minting with the dev or a test tenant key.
//!
//! Every test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::borrow::Cow;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use streamcap::config::{Config, DEV_TENANT, DEV_TENANT_KEY, Overrides};
use streamcap::grant::GrantClaims;
use streamcap::keys::Key;

/// How long any single read may block before a test fails instead of hanging.
pub const READ_TIMEOUT: Duration = Duration::from_secs(15);

// ---- time and names -------------------------------------------------------------

pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A name unique within this test process, for users and temp dirs.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Polls `check` until it returns `Some` or `within` passes.
pub fn eventually<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = check() {
            return Some(t);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- grants -----------------------------------------------------------------------

/// The dev tenant's secret (dev mode accepts grants signed with it).
pub fn dev_secret() -> [u8; 32] {
    Key::parse("dev", DEV_TENANT_KEY).unwrap().secret
}

/// Claims for `user` of the dev tenant with `limit`, valid for five minutes.
pub fn claims(user: &str, limit: i64) -> GrantClaims<'static> {
    GrantClaims {
        tenant: DEV_TENANT.into(),
        sub: Cow::Owned(user.to_owned()),
        limit,
        exp: now_secs() + 300,
        ..Default::default()
    }
}

/// A dev-tenant grant for `user` with `limit` and the tenant's default policy.
pub fn grant(user: &str, limit: i64) -> String {
    claims(user, limit).mint(&dev_secret())
}

/// A dev-tenant grant with a policy.
pub fn grant_with(user: &str, limit: i64, policy: &str) -> String {
    GrantClaims { policy: Some(policy.to_owned().into()), ..claims(user, limit) }.mint(&dev_secret())
}

/// `Some(s)` as the grant fields want it.
pub fn some(s: &str) -> Option<Cow<'static, str>> {
    Some(Cow::Owned(s.to_owned()))
}

/// Flips one character of `s` at `at` to another URL-safe character.
pub fn flip(s: &str, at: usize) -> String {
    let mut b = s.as_bytes().to_vec();
    b[at] = if b[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

// ---- responses and connections ---------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("status {} body is not JSON ({e}): {:?}", self.status, self.text()))
    }

    /// Asserts the status and returns the JSON body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text());
        if self.body.is_empty() { Value::Null } else { self.json() }
    }

    /// Asserts a docs/spec.md §4 error: the status, a JSON content type and
    /// `{"error": code, "message": "<text>"}`. Returns the body.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text());
        let ct = self.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("application/json"), "error content-type {ct:?}");
        let body = self.json();
        assert_eq!(body["error"], code, "error body {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "error without message: {body}");
        body
    }
}

/// Builds one request. `auth` becomes `Authorization: Bearer …`; a body
/// gets a `Content-Length`.
pub fn request_bytes(method: &str, path: &str, auth: Option<&str>, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: streamcap.test\r\n");
    if let Some(a) = auth {
        head.push_str(&format!("Authorization: Bearer {a}\r\n"));
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// One client connection: raw writes, response parsing, keep-alive.
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    #[track_caller]
    pub fn open(addr: SocketAddr) -> Conn {
        Conn::try_open(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    pub fn try_open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_write_timeout(Some(READ_TIMEOUT))?;
        let _ = stream.set_nodelay(true);
        Ok(Conn { stream, buf: Vec::new() })
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    fn need(&mut self, n: usize) -> io::Result<()> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-body"));
            }
        }
        Ok(())
    }

    fn take_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-line"));
            }
        }
    }

    /// Reads one response (skipping `1xx`); an error if the server closed
    /// the connection before a whole response arrived.
    pub fn read_response(&mut self) -> io::Result<Response> {
        loop {
            let head_end = loop {
                if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i;
                }
                if self.fill()? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("connection closed before a response head ({} bytes)", self.buf.len()),
                    ));
                }
            };
            let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
            self.buf.drain(..head_end + 4);
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let status: u16 = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {status_line:?}"))
            })?;
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            if (100..200).contains(&status) {
                continue;
            }
            let mut res = Response { status, headers, body: Vec::new() };
            if status == 204 || status == 304 {
                return Ok(res);
            }
            if res.header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
                loop {
                    let size_line = self.take_line()?;
                    let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
                    if size == 0 {
                        while !self.take_line()?.is_empty() {}
                        break;
                    }
                    self.need(size + 2)?;
                    res.body.extend_from_slice(&self.buf[..size]);
                    self.buf.drain(..size + 2);
                }
            } else if let Some(len) = res.header("content-length") {
                let len: usize =
                    len.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
                self.need(len)?;
                res.body = self.buf.drain(..len).collect();
            } else {
                // Delimited by the end of the connection.
                while self.fill()? > 0 {}
                res.body = std::mem::take(&mut self.buf);
            }
            return Ok(res);
        }
    }

    /// Sends one request and reads its answer.
    #[track_caller]
    pub fn call(&mut self, method: &str, path: &str, auth: Option<&str>) -> Response {
        self.send(&request_bytes(method, path, auth, &[], b"")).expect("send");
        self.read_response().expect("read response")
    }

    /// Waits until the server closes the connection (end of stream or a
    /// reset), discarding anything it sends meanwhile. Returns how long that
    /// took, or `None` if it was still open after `within`.
    pub fn wait_closed(&mut self, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut chunk = [0u8; 4096];
        loop {
            let left = within.checked_sub(start.elapsed())?;
            self.stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).ok()?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Some(start.elapsed()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if start.elapsed() >= within {
                        return None;
                    }
                }
                Err(_) => return Some(start.elapsed()),
            }
        }
    }

    /// Whatever arrived and was not consumed as a response.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }
}

// ---- the API, one connection per call ----------------------------------------------

/// A started session as a player holds it.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub id: String,
    pub token: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub addr: SocketAddr,
}

impl Client {
    #[track_caller]
    pub fn call(&self, method: &str, path: &str, auth: Option<&str>) -> Response {
        Conn::open(self.addr).call(method, path, auth)
    }

    /// Sends `bytes` on a fresh connection and reads one response.
    pub fn raw(&self, bytes: &[u8]) -> io::Result<Response> {
        let mut c = Conn::try_open(self.addr)?;
        c.send(bytes)?;
        c.read_response()
    }

    #[track_caller]
    pub fn start(&self, user: &str, grant: &str) -> Response {
        self.call("POST", &format!("/v1/users/{user}/sessions"), Some(grant))
    }

    #[track_caller]
    pub fn start_replacing(&self, user: &str, grant: &str, replace: &str) -> Response {
        self.call("POST", &format!("/v1/users/{user}/sessions?replace={replace}"), Some(grant))
    }

    #[track_caller]
    pub fn heartbeat(&self, user: &str, id: &str, token: &str) -> Response {
        self.call("POST", &format!("/v1/users/{user}/sessions/{id}/heartbeat"), Some(token))
    }

    #[track_caller]
    pub fn stop(&self, user: &str, id: &str, credential: &str) -> Response {
        self.call("DELETE", &format!("/v1/users/{user}/sessions/{id}"), Some(credential))
    }

    #[track_caller]
    pub fn list(&self, user: &str, grant: &str) -> Response {
        self.call("GET", &format!("/v1/users/{user}/sessions"), Some(grant))
    }

    /// Starts a session and asserts `201`.
    #[track_caller]
    pub fn start_ok(&self, user: &str, grant: &str) -> Session {
        let body = self.start(user, grant).expect(201);
        Session {
            user: user.to_owned(),
            id: body["session_id"].as_str().expect("session_id").to_owned(),
            token: body["token"].as_str().expect("token").to_owned(),
        }
    }

    /// Heartbeats, asserts `200` and keeps the new token.
    #[track_caller]
    pub fn beat_ok(&self, s: &mut Session) -> Value {
        let body = self.heartbeat(&s.user, &s.id, &s.token).expect(200);
        assert_eq!(body["session_id"], s.id.as_str());
        s.token = body["token"].as_str().expect("token").to_owned();
        body
    }

    /// Heartbeats and asserts `410 session_stopped` with `reason`; returns the body.
    #[track_caller]
    pub fn beat_stopped(&self, s: &Session, reason: &str) -> Value {
        let body = self.heartbeat(&s.user, &s.id, &s.token).expect_error(410, "session_stopped");
        assert_eq!(body["reason"], reason, "410 body {body}");
        assert!(body.get("by").is_some(), "410 without a `by` field: {body}");
        body
    }

    /// Session ids of the user's live sessions, in the order listed.
    #[track_caller]
    pub fn listed_ids(&self, user: &str, grant: &str) -> Vec<String> {
        let body = self.list(user, grant).expect(200);
        body["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .map(|s| s["session_id"].as_str().unwrap().into())
            .collect()
    }
}

// ---- metrics ------------------------------------------------------------------------

/// `/metrics` from an operator address.
pub fn metrics_text(admin: SocketAddr) -> String {
    let r = Client { addr: admin }.call("GET", "/metrics", None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// The value of one series (`name` or `name{labels}` exactly as rendered).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

// ---- the server in this process ----------------------------------------------------------

/// Dev mode, as `streamcap serve` with no configuration.
pub fn dev_config() -> Config {
    Config::load(&Overrides::default(), None).expect("dev config")
}

/// A config from a TOML file (not dev mode).
pub fn file_config(path: &Path) -> Config {
    Config::load(&Overrides { config: Some(path.to_owned()), ..Default::default() }, None).expect("config file")
}

/// `streamcap::server::run` on its own runtime, on loopback ports; stopped on drop.
pub struct TestServer {
    pub api: Client,
    pub admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    pub fn dev() -> TestServer {
        TestServer::start(dev_config())
    }

    pub fn start(config: Config) -> TestServer {
        TestServer::start_server(config, None)
    }

    /// A server whose sweeper calls `hook` after passes that drop many records.
    pub fn with_bulk_free_hook(config: Config, hook: impl Fn() + Send + Sync + 'static) -> TestServer {
        TestServer::start_server(config, Some(Box::new(hook)))
    }

    #[allow(clippy::type_complexity)]
    fn start_server(config: Config, hook: Option<Box<dyn Fn() + Send + Sync>>) -> TestServer {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let (public, admin) = runtime.block_on(async {
            let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind public");
            let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
            (public, admin)
        });
        let addr = public.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            let mut server = streamcap::server::Server::new(&config).expect("server");
            if let Some(hook) = hook {
                server = server.on_bulk_free(hook);
            }
            server.serve(public, admin, shutdown).await;
        });
        TestServer { api: Client { addr }, admin: admin_addr, stop: Some(tx), runtime: Some(runtime) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.api.addr
    }

    pub fn metrics(&self) -> String {
        metrics_text(self.admin)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

// ---- keys and config files ------------------------------------------------------------

/// Fixed test keys: 64 lowercase hex characters each.
pub const KEY_S1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
pub const KEY_S2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
pub const KEY_K1: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
pub const KEY_K2: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
pub const KEY_FOREIGN: &str = "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f";

pub fn secret(hex: &str) -> [u8; 32] {
    Key::parse("k", hex).unwrap().secret
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique(&format!("streamcap-test-{name}")));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a docs/spec.md §8 config file: `server_keys` as (kid, hex) with the first
/// signing, one tenant `acme` with `tenant_keys`, plus `extra` top-level lines.
pub fn write_config(path: &Path, server_keys: &[(&str, &str)], tenant_keys: &[(&str, &str)], extra: &str) {
    let mut text = format!("{extra}\n");
    for (kid, hex) in server_keys {
        text.push_str(&format!("[[server_keys]]\nkid = \"{kid}\"\nsecret = \"{hex}\"\n\n"));
    }
    let keys: Vec<String> =
        tenant_keys.iter().map(|(kid, hex)| format!("{{ kid = \"{kid}\", secret = \"{hex}\" }}")).collect();
    text.push_str(&format!(
        "[[tenants]]\nid = \"acme\"\ndefault_policy = \"reject_new\"\nkeys = [{}]\n",
        keys.join(", ")
    ));
    std::fs::write(path, text).unwrap();
}

/// Claims for `user` of tenant `acme`.
pub fn acme_claims(user: &str, limit: i64) -> GrantClaims<'static> {
    GrantClaims { tenant: "acme".into(), ..claims(user, limit) }
}

// ---- the real binary -------------------------------------------------------------------

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `streamcap` in a child process; killed on drop.
pub struct Binary {
    pub child: Child,
    pub api: Client,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl Binary {
    /// Runs `streamcap serve <args>` with no `STREAMCAP_*` variables and waits
    /// for its "listening on" line. Retries a few times if it exits first
    /// (a port still held by a killed predecessor).
    pub fn spawn(args: &[String]) -> Binary {
        Binary::spawn_with_env(args, &[])
    }

    /// [`Binary::spawn`] with `env` set, and `MIMALLOC_ALLOW_THP` only if
    /// `env` sets it.
    pub fn spawn_with_env(args: &[String], env: &[(&str, &str)]) -> Binary {
        let mut last_log = String::new();
        for _ in 0..20 {
            match Binary::try_spawn(args, env) {
                Ok(b) => return b,
                Err(log) => {
                    last_log = log;
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }
        panic!("streamcap did not start with {args:?}; its log:\n{last_log}");
    }

    fn try_spawn(args: &[String], env: &[(&str, &str)]) -> Result<Binary, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamcap"));
        cmd.arg("serve").args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("STREAMCAP_") || k == "MIMALLOC_ALLOW_THP" {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().expect("spawn streamcap");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(rest) = line.split_once("listening on ").map(|(_, rest)| rest)
                    && let Some((a, b)) = rest.split_once(", operator endpoints on ")
                    && let (Ok(a), Ok(b)) = (a.trim().parse::<SocketAddr>(), b.trim().parse::<SocketAddr>())
                {
                    let _ = tx.send((a, b));
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((addr, admin)) => Ok(Binary { child, api: Client { addr }, admin, log }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(log.lock().unwrap().clone())
            }
        }
    }

    /// Arguments for a server with a config file on `port` (0: any).
    pub fn args(config: &Path, port: u16) -> Vec<String> {
        vec![
            "--config".into(),
            config.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
        ]
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: all state is lost at once.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().expect("run kill");
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
