//! Arbitrary bytes into a live connection, in the spirit of hyper's
//! `fuzz_request`: the real server (`streamcap::server::run`, dev mode) runs
//! in this process on a current-thread tokio runtime built once; each input
//! is written to a fresh loopback connection, which is then half-closed, and
//! the answer is read until the server closes (2 s at most). hyper closes a
//! connection that reads EOF before its answer is written (its `half_close`
//! is off), so a complete request may go unanswered: only what is answered
//! is checked.
//!
//! Checked for every input: the server accepts the connection, anything it
//! answers is HTTP/1.x, and never `500`. Every 128 inputs, a victim user's
//! session (started once, before any input) must still heartbeat `200`,
//! be the only session listed for that user, and `/healthz` must answer.
//! A panic anywhere in the server (any tokio task) aborts the process
//! through libfuzzer-sys's panic hook, so libFuzzer reports it as a crash.
#![no_main]

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use streamcap::config::{Config, DEV_TENANT, Overrides};
use streamcap::grant::GrantClaims;
use streamcap_fuzz::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one input may wait for the server to answer and close.
const READ_WINDOW: Duration = Duration::from_secs(2);
/// The victim is checked every this many inputs.
const VICTIM_EVERY: u64 = 128;
const VICTIM: &str = "fz-victim";

struct Harness {
    api: SocketAddr,
    admin: SocketAddr,
    victim: Mutex<Victim>,
    inputs: AtomicU64,
    stats: Mutex<Stats>,
}

struct Victim {
    grant: String,
    id: String,
    token: String,
}

#[derive(Default)]
struct Stats {
    statuses: std::collections::BTreeMap<u16, u64>,
    silent: u64,
    slow: u64,
}

/// One current-thread runtime: the server runs only while an input (or a
/// victim check) is being exchanged, on the fuzzing thread, so what it does
/// is attributed to that input.
fn harness_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"))
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = harness_runtime();
        let mut config: Config = Config::load(&Overrides::default(), None).expect("dev config");
        config.header_timeout = Duration::from_secs(1);
        config.idle_timeout = Duration::from_secs(2);
        let (public, admin) = runtime.block_on(async {
            (
                tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind"),
                tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind"),
            )
        });
        let (api, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
        runtime.spawn(async move {
            streamcap::server::run(config, public, admin, std::future::pending()).await.expect("server");
        });
        let grant = GrantClaims {
            tenant: Cow::Borrowed(DEV_TENANT),
            sub: Cow::Borrowed(VICTIM),
            limit: 1,
            exp: FAR_FUTURE_SECS,
            poll: Some(3600),
            ..Default::default()
        }
        .mint(&tenant_secret());
        let (status, body) = call(api, "POST", &format!("/v1/users/{VICTIM}/sessions"), &grant);
        assert_eq!(status, 201, "victim start: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let victim = Victim {
            grant,
            id: body["session_id"].as_str().expect("session_id").to_owned(),
            token: body["token"].as_str().expect("token").to_owned(),
        };
        Harness {
            api,
            admin: admin_addr,
            victim: Mutex::new(victim),
            inputs: AtomicU64::new(0),
            stats: Mutex::new(Stats::default()),
        }
    })
}

/// Writes `bytes`, half-closes if asked, reads until the server closes or
/// `window` passes. `None` if the window passed with the connection still open.
fn exchange(addr: SocketAddr, bytes: &[u8], half_close: bool, window: Duration) -> Option<Vec<u8>> {
    // The server's tasks run on this thread while `block_on` waits here.
    harness_runtime().block_on(async {
        let mut s =
            TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("the server no longer accepts connections: {e}"));
        let _ = s.set_nodelay(true);
        let mut out = Vec::new();
        let talk = async {
            // The server may answer and close before it has read everything: fine.
            let _ = s.write_all(bytes).await;
            if half_close {
                let _ = s.shutdown().await;
            }
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return, // closed, or reset
                    Ok(n) if out.len() < (1 << 20) => out.extend_from_slice(&chunk[..n]),
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(window, talk).await.ok()?;
        Some(out)
    })
}

/// One request on its own connection (`Connection: close`, and no
/// half-close: hyper drops a request whose connection reads EOF before the
/// answer is written); (status, body).
fn call(addr: SocketAddr, method: &str, path: &str, bearer: &str) -> (u16, String) {
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: fz\r\nAuthorization: Bearer {bearer}\r\nConnection: close\r\n\r\n");
    let out =
        exchange(addr, req.as_bytes(), false, Duration::from_secs(10)).expect("an ordinary request was not answered");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = status_of(&out).unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

fn status_of(out: &[u8]) -> Option<u16> {
    let rest = out.strip_prefix(b"HTTP/1.1 ").or_else(|| out.strip_prefix(b"HTTP/1.0 "))?;
    std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()
}

impl Harness {
    fn check_victim(&self) {
        let mut v = self.victim.lock().unwrap();
        let (status, body) =
            call(self.api, "POST", &format!("/v1/users/{VICTIM}/sessions/{}/heartbeat", v.id), &v.token);
        assert_eq!(status, 200, "the victim's heartbeat failed: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        v.token = body["token"].as_str().expect("token").to_owned();
        let (status, body) = call(self.api, "GET", &format!("/v1/users/{VICTIM}/sessions"), &v.grant);
        assert_eq!(status, 200, "the victim's list failed: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let ids: Vec<&str> =
            body["sessions"].as_array().expect("sessions").iter().filter_map(|s| s["session_id"].as_str()).collect();
        assert_eq!(ids, [v.id.as_str()], "the victim's sessions changed");
        let (status, _) = call(self.admin, "GET", "/healthz", "");
        assert_eq!(status, 200, "/healthz");
    }
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let began = Instant::now();
    let answer = exchange(h.api, data, true, READ_WINDOW);
    {
        let mut stats = h.stats.lock().unwrap();
        if began.elapsed() > Duration::from_millis(500) {
            stats.slow += 1;
        }
        match &answer {
            None => stats.silent += 1,
            Some(out) if !out.is_empty() => {
                let status = status_of(out)
                    .unwrap_or_else(|| panic!("the answer is not HTTP/1.x: {:?}", String::from_utf8_lossy(out)));
                assert!(status != 500, "500 for {:?}", String::from_utf8_lossy(data));
                *stats.statuses.entry(status).or_default() += 1;
            }
            Some(_) => {}
        }
    }
    let n = h.inputs.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_multiple_of(VICTIM_EVERY) {
        h.check_victim();
    }
    if n.is_multiple_of(50_000) {
        let stats = h.stats.lock().unwrap();
        eprintln!(
            "http_request: {n} inputs; first statuses {:?}; still open after {READ_WINDOW:?}: {}; slower than 500 ms: {}",
            stats.statuses, stats.silent, stats.slow
        );
    }
});
