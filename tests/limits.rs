//! Bounds that need time or many connections: atomic admission under
//! parallel starts, expiry (docs/spec.md §7), the head and idle timeouts and the
//! connection cap (docs/spec.md §4 "Limits every connection gets").

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use streamcap::grant::GrantClaims;

#[test]
fn parallel_starts_never_take_more_than_the_limit() {
    let server = TestServer::dev();
    let addr = server.addr();
    for round in 0..20 {
        let user = unique("rush");
        let g = grant(&user, 2);
        let barrier = Barrier::new(40);
        let statuses: Vec<(u16, String)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..40)
                .map(|_| {
                    let (g, user, barrier) = (&g, &user, &barrier);
                    scope.spawn(move || {
                        let mut c = Conn::open(addr);
                        let raw = request_bytes("POST", &format!("/v1/users/{user}/sessions"), Some(g), &[], b"");
                        barrier.wait();
                        c.send(&raw).unwrap();
                        let r = c.read_response().unwrap();
                        let code = if r.body.is_empty() {
                            String::new()
                        } else {
                            r.json()["error"].as_str().unwrap_or("").into()
                        };
                        (r.status, code)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let admitted = statuses.iter().filter(|(s, _)| *s == 201).count();
        let refused = statuses.iter().filter(|(s, code)| *s == 409 && code == "limit_reached").count();
        assert_eq!((admitted, refused), (2, 38), "round {round}: {statuses:?}");
        let listed = server.api.list(&user, &g).expect(200);
        assert_eq!(listed["active"], 2, "round {round}");
    }
}

#[test]
fn parallel_starts_under_evict_oldest_keep_the_limit() {
    let server = TestServer::dev();
    let addr = server.addr();
    let user = unique("evict-rush");
    let g = grant_with(&user, 3, "evict_oldest");
    let barrier = Barrier::new(30);
    let started: Vec<Session> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..30)
            .map(|_| {
                let (g, user, barrier) = (&g, &user, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    Client { addr }.start_ok(user, g)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let api = server.api;
    let live: Vec<&Session> =
        started.iter().filter(|s| api.heartbeat(&s.user, &s.id, &s.token).status == 200).collect();
    assert_eq!(live.len(), 3, "exactly the limit survives");
    assert_eq!(api.list(&user, &g).expect(200)["active"], 3);
}

#[test]
fn an_unrenewed_session_expires_and_frees_its_slot() {
    let mut config = dev_config();
    config.sweep_interval = Duration::from_millis(200);
    let server = TestServer::start(config);
    let api = server.api;
    let user = unique("sleepy");
    let swept_user = unique("forgotten");
    let g = GrantClaims { poll: Some(1), ..claims(&user, 1) }.mint(&dev_secret());
    let body = api.start(&user, &g).expect(201);
    assert_eq!(body["poll_after"], 1);
    let t0 = Instant::now();
    // Another user who is never touched again: only the sweeper sees it go.
    let g2 = GrantClaims { poll: Some(1), ..claims(&swept_user, 1) }.mint(&dev_secret());
    api.start_ok(&swept_user, &g2);
    api.start(&user, &g).expect_error(409, "limit_reached");
    let m = server.metrics();
    assert_eq!(metric(&m, "streamcap_expiries_total"), Some(0.0), "{m}");

    std::thread::sleep(Duration::from_millis(3100).saturating_sub(t0.elapsed()));
    api.start_ok(&user, &g);

    // Two sessions expired: each counted once.
    let seen = eventually(Duration::from_secs(5), || {
        let m = server.metrics();
        (metric(&m, "streamcap_expiries_total")? >= 2.0).then_some(m)
    });
    let m = seen.unwrap_or_else(|| panic!("expiries never reached 2:\n{}", server.metrics()));
    std::thread::sleep(Duration::from_millis(500));
    let m2 = server.metrics();
    assert_eq!(metric(&m2, "streamcap_expiries_total"), Some(2.0), "counted twice?\nbefore:\n{m}\nafter:\n{m2}");
    // The gauges refreshed by the sweeper show one live session (the new one).
    assert_eq!(metric(&m2, "streamcap_live_sessions"), Some(1.0), "{m2}");
    assert_eq!(api.list(&swept_user, &g2).expect(200)["active"], 0);
}

#[test]
fn a_mass_expiry_runs_the_bulk_free_hook_on_that_pass_and_the_next() {
    let mut config = dev_config();
    config.sweep_interval = Duration::from_millis(200);
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let server = TestServer::with_bulk_free_hook(config, move || {
        counted.fetch_add(1, Ordering::SeqCst);
    });
    let prefix = unique("bulk");
    let mut conn = Conn::open(server.addr());
    // 4,200 sessions over 1,400 users: enough records for the hook, too few
    // users for the emptied map to be swapped out (which calls it once more).
    for i in 0..1400 {
        let user = format!("{prefix}-{i}");
        let g = GrantClaims { poll: Some(1), ..claims(&user, 3) }.mint(&dev_secret());
        for _ in 0..3 {
            conn.call("POST", &format!("/v1/users/{user}/sessions"), Some(&g)).expect(201);
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing was dropped yet");
    let two = eventually(Duration::from_secs(10), || (calls.load(Ordering::SeqCst) >= 2).then_some(()));
    assert!(two.is_some(), "hook calls after 4,200 sessions expired: {}", calls.load(Ordering::SeqCst));
    // Then quiet: nothing more is dropped.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// ---- timeouts ---------------------------------------------------------------------

fn timed_config(header_secs: u64, idle_secs: u64) -> streamcap::config::Config {
    let mut config = dev_config();
    config.header_timeout = Duration::from_secs(header_secs);
    config.idle_timeout = Duration::from_secs(idle_secs);
    config
}

#[test]
fn a_stalled_request_head_is_closed() {
    let server = TestServer::start(timed_config(1, 30));
    let mut conn = Conn::open(server.addr());
    conn.send(b"POST /v1/users/slow/sessions HTTP/1.1\r\nHost: a\r\n").unwrap();
    let closed = conn.wait_closed(Duration::from_secs(6));
    let took = closed.expect("a stalled head kept its connection for 6 s with header_timeout 1 s");
    assert!(took >= Duration::from_millis(700), "closed after {took:?}, before the header timeout");
    // A slowloris that trickles a byte at a time gets no more time.
    let mut conn = Conn::open(server.addr());
    let head = b"POST /v1/users/slow/sessions HTTP/1.1\r\nHost: a\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let start = Instant::now();
    let mut closed = false;
    for b in head.iter() {
        if conn.send(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if start.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    if !closed {
        closed = conn.wait_closed(Duration::from_secs(3)).is_some();
    }
    assert!(closed, "a trickled head was still open after {:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(6), "a trickled head lived {:?}", start.elapsed());
    // The server still answers.
    let user = unique("after");
    server.api.start_ok(&user, &grant(&user, 1));
}

#[test]
fn a_silent_connection_is_closed_after_idle_timeout() {
    let server = TestServer::start(timed_config(30, 2));
    let mut silent = Conn::open(server.addr());
    let took =
        silent.wait_closed(Duration::from_secs(8)).expect("a silent connection stayed open 8 s with idle_timeout 2 s");
    assert!(took >= Duration::from_millis(1500), "closed after {took:?}, before the idle timeout");
    let user = unique("after");
    server.api.start_ok(&user, &grant(&user, 1));
}

#[test]
fn the_admin_listener_has_the_same_timeouts() {
    let server = TestServer::start(timed_config(1, 2));
    let admin = server.admin;
    let opened = Instant::now();
    let mut silent = Conn::open(admin);
    let mut stalled = Conn::open(admin);
    stalled.send(b"GET /healthz HTTP/1.1\r\nHost: a\r\n").unwrap();
    let took = stalled.wait_closed(Duration::from_secs(6)).expect("a stalled head on the admin port stayed open 6 s");
    assert!(took >= Duration::from_millis(700), "closed after {took:?}, before the header timeout");
    silent.wait_closed(Duration::from_secs(8)).expect("a silent admin connection stayed open 8 s more");
    let took = opened.elapsed();
    assert!(took >= Duration::from_millis(1500), "closed after {took:?}, before the idle timeout");
    let mut conn = Conn::open(admin);
    conn.call("GET", "/healthz", None).expect(200);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let server = TestServer::start(timed_config(30, 2));
    let user = unique("idle");
    let g = grant(&user, 3);
    let path = format!("/v1/users/{user}/sessions");
    let mut conn = Conn::open(server.addr());
    conn.call("GET", &path, Some(&g)).expect(200);
    // Quiet for 1 s: still open.
    std::thread::sleep(Duration::from_secs(1));
    conn.call("GET", &path, Some(&g)).expect(200);
    // Quiet for longer than idle_timeout: closed.
    let took = conn
        .wait_closed(Duration::from_secs(8))
        .expect("a keep-alive connection idle after a request stayed open 8 s with idle_timeout 2 s");
    assert!(took >= Duration::from_millis(1500), "closed after {took:?}, before the idle timeout");
    let rest = String::from_utf8_lossy(conn.leftover()).into_owned();
    assert!(rest.is_empty() || rest.starts_with("HTTP/1.1 408"), "unexpected bytes before the close: {rest:?}");
    server.api.start_ok(&user, &g);
}

#[test]
fn a_stalled_second_request_head_on_a_keep_alive_connection_is_closed() {
    let server = TestServer::start(timed_config(1, 30));
    let user = unique("stall2");
    let g = grant(&user, 3);
    let mut conn = Conn::open(server.addr());
    conn.call("GET", &format!("/v1/users/{user}/sessions"), Some(&g)).expect(200);
    conn.send(b"GET /v1/users/x/sessions HTTP/1.1\r\nHost: a\r\n").unwrap();
    let took = conn.wait_closed(Duration::from_secs(6)).expect("a stalled second head kept its connection for 6 s");
    assert!(took >= Duration::from_millis(700), "closed after {took:?}, before the header timeout");
}

#[test]
fn connections_beyond_max_connections_get_503_and_the_server_recovers() {
    let mut config = dev_config();
    config.max_connections = 5;
    let server = TestServer::start(config);
    let user = unique("crowd");
    let g = grant(&user, 100);
    let path = format!("/v1/users/{user}/sessions");
    let mut held: Vec<Conn> = (0..5).map(|_| Conn::open(server.addr())).collect();
    for c in &mut held {
        c.call("GET", &path, Some(&g)).expect(200);
    }
    for i in 0..10 {
        let mut extra = Conn::open(server.addr());
        let _ = extra.send(&request_bytes("GET", &path, Some(&g), &[], b""));
        let r =
            extra.read_response().unwrap_or_else(|e| panic!("connection {} over the cap: no response ({e})", 6 + i));
        r.expect_error(503, "over_capacity");
        assert!(r.header("retry-after").is_some(), "503 without Retry-After: {:?}", r.headers);
        assert!(extra.wait_closed(Duration::from_secs(3)).is_some(), "the refused connection was kept open");
    }
    // The held connections still work, and the operator port is separate.
    for c in &mut held {
        c.call("GET", &path, Some(&g)).expect(200);
    }
    let health = Client { addr: server.admin }.call("GET", "/healthz", None);
    assert_eq!(health.status, 200);
    drop(held);
    // Once they are gone, new connections are served again.
    let recovered = eventually(Duration::from_secs(5), || {
        let r = Client { addr: server.addr() }.raw(&request_bytes("POST", &path, Some(&g), &[], b"")).ok()?;
        (r.status == 201).then_some(r)
    });
    assert!(recovered.is_some(), "still refusing connections after the others closed");
    let m = server.metrics();
    assert!(metric(&m, "streamcap_connections_refused_total").is_some_and(|v| v >= 10.0), "{m}");
}
