//! docs/spec.md §4 over real HTTP against the real server in this process (dev
//! mode): every endpoint, every status and error body, session views,
//! CORS, browser-sized requests, pipelining and the operator endpoints.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use streamcap::grant::GrantClaims;

fn is_session_id(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

fn ids(sessions: &Value) -> Vec<&str> {
    sessions.as_array().expect("sessions array").iter().map(|s| s["session_id"].as_str().unwrap()).collect()
}

#[test]
fn start_returns_201_with_every_field() {
    let server = TestServer::dev();
    let api = server.api;
    let user = unique("alice");
    let before = now_secs() as u64;
    let r = api.start(&user, &grant(&user, 2));
    assert!(r.header("content-type").unwrap_or_default().starts_with("application/json"));
    let body = r.expect(201);
    assert!(is_session_id(&body["session_id"]), "{body}");
    let token = body["token"].as_str().unwrap();
    assert!(token.starts_with("s1."), "{token}");
    assert!(token.len() <= 512);
    assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)), "not URL-safe: {token}");
    assert_eq!(body["poll_after"], 30);
    let expires = body["expires_at"].as_u64().unwrap();
    assert!((before + 89..=now_secs() as u64 + 91).contains(&expires), "expires_at {expires} is not now + 90 s");
    assert_eq!(body["active"], 1);
    assert_eq!(body["limit"], 2);
    assert_eq!(body["evicted"], serde_json::json!([]));
    let second = api.start(&user, &grant(&user, 2)).expect(201);
    assert_eq!(second["active"], 2);
    assert_ne!(second["session_id"], body["session_id"]);
}

#[test]
fn a_grants_poll_sets_poll_after_and_expiry() {
    let server = TestServer::dev();
    let user = unique("poller");
    let g = GrantClaims { poll: Some(10), ..claims(&user, 1) }.mint(&dev_secret());
    let body = server.api.start(&user, &g).expect(201);
    assert_eq!(body["poll_after"], 10);
    let expires = body["expires_at"].as_i64().unwrap();
    assert!((now_secs() + 28..=now_secs() + 31).contains(&expires), "ttl is 3 x poll: {expires}");
    // Clamped to the server's bounds (min 1).
    let user = unique("poller");
    let g = GrantClaims { poll: Some(0), ..claims(&user, 1) }.mint(&dev_secret());
    assert_eq!(server.api.start(&user, &g).expect(201)["poll_after"], 1);
}

#[test]
fn start_over_the_limit_is_409_with_the_sessions_to_stop() {
    let server = TestServer::dev();
    let api = server.api;
    let user = unique("bob");
    let g = GrantClaims { label: some("Kitchen"), device: some("tv-1"), ..claims(&user, 2) }.mint(&dev_secret());
    let a = api.start_ok(&user, &g);
    std::thread::sleep(Duration::from_millis(5));
    let b = api.start_ok(&user, &grant(&user, 2));
    let body = api.start(&user, &grant(&user, 2)).expect_error(409, "limit_reached");
    assert_eq!(body["limit"], 2);
    assert_eq!(body["active"], 2);
    assert_eq!(ids(&body["sessions"]), vec![a.id.as_str(), b.id.as_str()], "oldest first");
    let view = &body["sessions"][0];
    for field in ["session_id", "started_at", "expires_at", "device", "label", "content", "group"] {
        assert!(view.get(field).is_some(), "session view lacks {field}: {view}");
    }
    assert_eq!(view["label"], "Kitchen");
    assert_eq!(view["device"], "tv-1");
    assert_eq!(view["content"], Value::Null);
    assert_eq!(view["group"], Value::Null);
    assert!(view["started_at"].as_i64().unwrap() <= now_secs());
    // Nothing changed: both still heartbeat.
    let (mut a, mut b) = (a, b);
    api.beat_ok(&mut a);
    api.beat_ok(&mut b);
    // A smaller limit in a newer grant binds at once.
    api.start(&user, &grant(&user, 1)).expect_error(409, "limit_reached");
}

#[test]
fn group_limits() {
    let server = TestServer::dev();
    let api = server.api;
    let user = unique("grouper");
    let in_group =
        |group: &str| GrantClaims { group: some(group), group_limit: Some(1), ..claims(&user, 3) }.mint(&dev_secret());
    let first = api.start_ok(&user, &in_group("studio-a"));
    let body = api.start(&user, &in_group("studio-a")).expect_error(409, "group_limit_reached");
    assert_eq!(body["limit"], 1);
    assert_eq!(body["active"], 1);
    assert_eq!(ids(&body["sessions"]), vec![first.id.as_str()]);
    assert_eq!(body["sessions"][0]["group"], "studio-a");
    // Another group and no group at all are not bound by studio-a's limit.
    api.start_ok(&user, &in_group("studio-b"));
    api.start_ok(&user, &grant(&user, 3));
    // Now the user limit (3) binds, whatever the group.
    let body = api.start(&user, &in_group("studio-c")).expect_error(409, "limit_reached");
    assert_eq!(body["limit"], 3);
    assert_eq!(body["active"], 3);
    assert_eq!(body["sessions"].as_array().unwrap().len(), 3);
}

#[test]
fn bad_and_missing_grants_are_401_and_another_users_grant_is_403() {
    let server = TestServer::dev();
    let api = server.api;
    let user = unique("carol");
    api.call("POST", &format!("/v1/users/{user}/sessions"), None).expect_error(401, "invalid_grant");
    api.start(&user, "not-a-grant").expect_error(401, "invalid_grant");
    api.call("POST", &format!("/v1/users/{user}/sessions"), Some("")).expect_error(401, "invalid_grant");
    let foreign = claims(&user, 1).mint(&secret(KEY_FOREIGN));
    api.start(&user, &foreign).expect_error(401, "invalid_grant");
    let other = GrantClaims { tenant: "nope".into(), ..claims(&user, 1) }.mint(&dev_secret());
    api.start(&user, &other).expect_error(401, "invalid_grant");
    for bad in [
        GrantClaims { limit: 0, ..claims(&user, 1) },
        GrantClaims { limit: 1001, ..claims(&user, 1) },
        GrantClaims { policy: some("lru"), ..claims(&user, 1) },
        GrantClaims { policy: some("reject_new_device"), ..claims(&user, 1) },
        GrantClaims { group: some("g"), ..claims(&user, 1) },
        GrantClaims { label: some(&"x".repeat(65)), ..claims(&user, 1) },
    ] {
        api.start(&user, &bad.mint(&dev_secret())).expect_error(401, "invalid_grant");
    }
    // A valid grant for mallory, used on carol's path.
    api.start(&user, &grant(&unique("mallory"), 1)).expect_error(403, "forbidden");
    api.list(&user, &grant(&unique("mallory"), 1)).expect_error(403, "forbidden");
    // None of it created a session.
    assert_eq!(api.list(&user, &grant(&user, 1)).expect(200)["active"], 0);
}

#[test]
fn heartbeat_renews_and_any_unexpired_token_is_accepted() {
    let server = TestServer::dev();
    let api = server.api;
    let user = unique("dave");
    let mut s = api.start_ok(&user, &grant(&user, 1));
    let first = s.token.clone();
    std::thread::sleep(Duration::from_millis(20));
    let body = api.beat_ok(&mut s);
    assert!(s.token.starts_with("s1.") && s.token.len() <= 512);
    assert_eq!(body["poll_after"], 30);
    assert!(body["expires_at"].as_i64().unwrap() >= now_secs() + 89);
    for field in ["session_id", "token", "poll_after", "expires_at"] {
        assert!(body.get(field).is_some(), "heartbeat body lacks {field}: {body}");
    }
    // A player whose response was lost retries with the token it has.
    let mut old = Session { token: first, ..s.clone() };
    api.beat_ok(&mut old);
    api.beat_ok(&mut s);
    // Still one session.
    assert_eq!(api.list(&user, &grant(&user, 1)).expect(200)["active"], 1);
}

#[test]
fn heartbeat_with_bad_tokens_is_401_and_with_someone_elses_is_403() {
    let server = TestServer::dev();
    let api = server.api;
    let alice = unique("alice");
    let bob = unique("bob");
    let a1 = api.start_ok(&alice, &grant(&alice, 2));
    let a2 = api.start_ok(&alice, &grant(&alice, 2));
    let b = api.start_ok(&bob, &grant(&bob, 2));
    api.heartbeat(&alice, &a1.id, "s1.garbage").expect_error(401, "invalid_token");
    api.heartbeat(&alice, &a1.id, "").expect_error(401, "invalid_token");
    api.call("POST", &format!("/v1/users/{alice}/sessions/{}/heartbeat", a1.id), None)
        .expect_error(401, "invalid_token");
    // A grant is not a lease token.
    api.heartbeat(&alice, &a1.id, &grant(&alice, 2)).expect_error(401, "invalid_token");
    // Bob's token on alice's path, a2's token on a1's path.
    api.heartbeat(&alice, &b.id, &b.token).expect_error(403, "forbidden");
    api.heartbeat(&alice, &a1.id, &a2.token).expect_error(403, "forbidden");
    api.stop(&alice, &a1.id, &a2.token).expect_error(403, "forbidden");
    api.stop(&alice, &a1.id, &grant(&bob, 2)).expect_error(403, "forbidden");
    // Nothing was disturbed.
    let (mut a1, mut a2, mut b) = (a1, a2, b);
    api.beat_ok(&mut a1);
    api.beat_ok(&mut a2);
    api.beat_ok(&mut b);
}

#[test]
fn stop_with_own_token_ends_the_session_and_frees_the_slot() {
    let server = TestServer::dev();
    let api = server.api;
    let user = unique("erin");
    let s = api.start_ok(&user, &grant(&user, 1));
    let r = api.stop(&user, &s.id, &s.token);
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    let body = api.beat_stopped(&s, "ended");
    assert_eq!(body["by"], Value::Null);
    // The slot is free at once.
    let next = api.start_ok(&user, &grant(&user, 1));
    assert_eq!(api.listed_ids(&user, &grant(&user, 1)), vec![next.id.clone()]);
    // Idempotent: again, and with the old token after the session stopped.
    assert_eq!(api.stop(&user, &s.id, &s.token).status, 204);
    // Still ended, not rebuilt.
    api.beat_stopped(&s, "ended");
    // An unknown session.
    assert_eq!(api.stop(&user, "0123456789abcdef", &grant(&user, 1)).status, 204);
    // A bad credential is not a stop.
    api.stop(&user, &next.id, "nonsense").expect_error(401, "invalid_token");
    let mut next = next;
    api.beat_ok(&mut next);
}

#[test]
fn kick_with_a_grant_reports_the_kicker() {
    let server = TestServer::dev();
    let api = server.api;
    let user = unique("frank");
    let s = api.start_ok(&user, &grant(&user, 1));
    let kicker =
        GrantClaims { label: some("Living room TV"), device: some("tv-9"), content: some("ep-2"), ..claims(&user, 1) }
            .mint(&dev_secret());
    assert_eq!(api.stop(&user, &s.id, &kicker).status, 204);
    let body = api.beat_stopped(&s, "kicked");
    let by = &body["by"];
    assert_eq!(by["session_id"], Value::Null, "{body}");
    assert_eq!(by["label"], "Living room TV");
    assert_eq!(by["device"], "tv-9");
    assert_eq!(by["content"], "ep-2");
    assert!(by["started_at"].as_i64().is_some_and(|t| (now_secs() - 5..=now_secs()).contains(&t)), "{by}");
    // The kicker can play now; the kick is idempotent.
    api.start_ok(&user, &kicker);
    assert_eq!(api.stop(&user, &s.id, &kicker).status, 204);
    api.beat_stopped(&s, "kicked");
}

#[test]
fn sign_out_everywhere_stops_every_live_session_of_the_user() {
    let server = TestServer::dev();
    let api = server.api;
    let user = unique("gina");
    let other = unique("hank");
    let g = grant(&user, 5);
    let mut sessions: Vec<Session> = (0..3).map(|_| api.start_ok(&user, &g)).collect();
    // One already ended with its own token: it keeps its reason.
    let ended = sessions.pop().unwrap();
    assert_eq!(api.stop(&user, &ended.id, &ended.token).status, 204);
    sessions.push(api.start_ok(&user, &g));
    let mut bystander = api.start_ok(&other, &grant(&other, 5));

    let signer =
        GrantClaims { label: some("Account settings"), device: some("web-1"), ..claims(&user, 5) }.mint(&dev_secret());
    let path = format!("/v1/users/{user}/sessions");
    let r = api.call("DELETE", &path, Some(&signer));
    assert!(r.header("content-type").unwrap_or_default().starts_with("application/json"));
    assert_eq!(r.expect(200), serde_json::json!({"stopped": 3}));
    for s in &sessions {
        let body = api.beat_stopped(s, "kicked");
        let by = &body["by"];
        assert_eq!((&by["session_id"], &by["expires_at"]), (&Value::Null, &Value::Null), "{body}");
        assert_eq!((&by["label"], &by["device"]), (&Value::from("Account settings"), &Value::from("web-1")));
        assert!(by["started_at"].as_i64().is_some_and(|t| (now_secs() - 5..=now_secs()).contains(&t)), "{by}");
    }
    api.beat_stopped(&ended, "ended");
    assert!(api.listed_ids(&user, &g).is_empty());
    api.beat_ok(&mut bystander);
    assert_eq!(api.listed_ids(&other, &grant(&other, 5)), [bystander.id.clone()], "other users are untouched");

    // Idempotent: nothing left to stop.
    assert_eq!(api.call("DELETE", &path, Some(&signer)).expect(200), serde_json::json!({"stopped": 0}));
    for s in &sessions {
        api.beat_stopped(s, "kicked");
    }
    // The slots are free at once; a later sign-out stops only what started since.
    let mut fresh = api.start_ok(&user, &grant(&user, 1));
    api.beat_ok(&mut fresh);
    assert_eq!(api.call("DELETE", &path, Some(&g)).expect(200), serde_json::json!({"stopped": 1}));
    api.beat_stopped(&fresh, "kicked");

    let m = server.metrics();
    assert_eq!(metric(&m, r#"streamcap_sessions_stopped_total{reason="kicked"}"#), Some(4.0), "{m}");
    assert_eq!(metric(&m, r#"streamcap_http_requests_total{route="sign_out",status="200"}"#), Some(3.0), "{m}");
}

#[test]
fn sign_out_needs_a_grant_for_the_user() {
    let server = TestServer::dev();
    let api = server.api;
    let user = unique("ivan");
    let mut s = api.start_ok(&user, &grant(&user, 2));
    let path = format!("/v1/users/{user}/sessions");
    api.call("DELETE", &path, Some(&s.token)).expect_error(401, "invalid_grant");
    api.call("DELETE", &path, None).expect_error(401, "invalid_grant");
    api.call("DELETE", &path, Some(&flip(&grant(&user, 2), 10))).expect_error(401, "invalid_grant");
    api.call("DELETE", &path, Some(&grant("someone-else", 2))).expect_error(403, "forbidden");
    api.call("DELETE", "/v1/users/b%20d/sessions", Some(&grant(&user, 2))).expect_error(400, "bad_request");
    api.beat_ok(&mut s);
    let r = api.call("PUT", &path, Some(&grant(&user, 2)));
    r.expect_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, POST, DELETE, OPTIONS"));
}

#[test]
fn replace_stops_the_named_session_in_the_same_step() {
    let server = TestServer::dev();
    let api = server.api;
    let user = unique("gina");
    let g = grant(&user, 1);
    let old = api.start_ok(&user, &g);
    let body = api.start_replacing(&user, &g, &old.id).expect(201);
    let new_id = body["session_id"].as_str().unwrap();
    assert_eq!(body["active"], 1);
    assert_eq!(body["evicted"], serde_json::json!([]));
    let stopped = api.beat_stopped(&old, "replaced");
    assert_eq!(stopped["by"]["session_id"], new_id, "{stopped}");
    assert_eq!(api.listed_ids(&user, &g), vec![new_id.to_owned()]);
    // A malformed replace id is a 400.
    api.start_replacing(&user, &g, "zz").expect_error(400, "bad_request");
}

#[test]
fn list_shows_live_sessions_oldest_first() {
    let server = TestServer::dev();
    let api = server.api;
    let user = unique("hank");
    let g = grant(&user, 5);
    assert_eq!(api.list(&user, &g).expect(200), serde_json::json!({"limit": 5, "active": 0, "sessions": []}));
    let mut started = Vec::new();
    for i in 0..4 {
        let gi = GrantClaims { label: some(&format!("screen {i}")), content: some("movie"), ..claims(&user, 5) }
            .mint(&dev_secret());
        started.push(api.start_ok(&user, &gi));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(api.stop(&user, &started[1].id, &started[1].token).status, 204);
    let body = api.list(&user, &g).expect(200);
    assert_eq!(body["limit"], 5);
    assert_eq!(body["active"], 3);
    let want: Vec<&str> = [0, 2, 3].iter().map(|i| started[*i].id.as_str()).collect();
    assert_eq!(ids(&body["sessions"]), want);
    assert_eq!(body["sessions"][1]["label"], "screen 2");
    assert_eq!(body["sessions"][1]["content"], "movie");
    let starts: Vec<i64> =
        body["sessions"].as_array().unwrap().iter().map(|s| s["started_at"].as_i64().unwrap()).collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
    // Another user sees nothing of it.
    let other = unique("ida");
    assert_eq!(api.list(&other, &grant(&other, 5)).expect(200)["active"], 0);
    // Listing needs a grant.
    api.list(&user, &started[0].token).expect_error(401, "invalid_grant");
}

/// Long display fields are shortened inside the token, never refused.
/// (At docs/spec.md §2's maxima for sub, group and device together no 512-byte
/// token can hold them; see the test report.)
#[test]
fn long_display_fields_still_give_a_token_within_512_bytes() {
    let server = TestServer::dev();
    let user = "u".repeat(64);
    let g = GrantClaims {
        group: some(&"g".repeat(32)),
        group_limit: Some(1),
        device: some(&"d".repeat(64)),
        label: some(&"\u{e9}".repeat(32)),
        content: some(&"c".repeat(128)),
        ..claims(&user, 1)
    }
    .mint(&dev_secret());
    let mut s = server.api.start_ok(&user, &g);
    assert!(s.token.len() <= 512, "token is {} bytes", s.token.len());
    server.api.beat_ok(&mut s);
    assert!(s.token.len() <= 512);
    let list = server.api.list(&user, &g).expect(200);
    assert_eq!(list["sessions"][0]["label"], "\u{e9}".repeat(32));
    assert_eq!(list["sessions"][0]["device"], "d".repeat(64));
}

#[test]
fn unknown_paths_wrong_methods_and_bad_paths() {
    let server = TestServer::dev();
    let api = server.api;
    let user = unique("ivan");
    let g = grant(&user, 1);
    for path in
        ["/", "/v1", "/v1/users/x", "/v1/users/x/session", "/v1/users/x/sessions/0123456789abcdef/beat", "/favicon.ico"]
    {
        api.call("GET", path, Some(&g)).expect_error(404, "not_found");
    }
    let sid = "0123456789abcdef";
    for (method, path) in [
        ("PUT", format!("/v1/users/{user}/sessions")),
        ("PATCH", format!("/v1/users/{user}/sessions")),
        ("DELETE", "/v1/openapi.yaml".to_string()),
        ("GET", format!("/v1/users/{user}/sessions/{sid}")),
        ("POST", format!("/v1/users/{user}/sessions/{sid}")),
        ("GET", format!("/v1/users/{user}/sessions/{sid}/heartbeat")),
        ("PATCH", format!("/v1/users/{user}/sessions/{sid}/heartbeat")),
    ] {
        api.call(method, &path, Some(&g)).expect_error(405, "method_not_allowed");
    }
    // Unparseable path parts.
    api.heartbeat(&user, "not-hex", "s1.x").expect_error(400, "bad_request");
    api.heartbeat(&user, "0123456789ABCDEF", "s1.x").expect_error(400, "bad_request");
    api.call("POST", "/v1/users/a%20b/sessions", Some(&g)).expect_error(400, "bad_request");
    // The server still answers.
    api.start_ok(&user, &g);
}

#[test]
fn over_capacity_is_503_and_existing_sessions_keep_playing() {
    let mut config = dev_config();
    config.core.max_sessions = 3;
    let server = TestServer::start(config);
    let api = server.api;
    let mut held = Vec::new();
    for _ in 0..3 {
        let user = unique("cap");
        held.push(api.start_ok(&user, &grant(&user, 5)));
    }
    let user = unique("cap");
    let r = api.start(&user, &grant(&user, 5));
    r.expect_error(503, "over_capacity");
    let retry = r.header("retry-after").expect("Retry-After on 503");
    assert!(retry.parse::<u64>().is_ok_and(|s| s > 0), "Retry-After {retry:?}");
    for s in &mut held {
        api.beat_ok(s);
    }
    let m = server.metrics();
    assert_eq!(metric(&m, r#"streamcap_starts_rejected_total{reason="over_capacity"}"#), Some(1.0), "{m}");
}

// ---- browsers ------------------------------------------------------------------------

#[test]
fn a_browser_sized_request_works_and_carries_cors() {
    let server = TestServer::dev();
    let user = unique("web");
    let g = grant(&user, 2);
    let cookie = format!("session={}; prefs={}; _ga=GA1.2.{}", "c".repeat(300), "p".repeat(200), now_secs());
    let auth = format!("Bearer {g}");
    let headers: Vec<(&str, &str)> = vec![
        ("Host", "api.streamcap.example"),
        ("Connection", "keep-alive"),
        ("Content-Type", "application/json"),
        ("Origin", "https://player.example.com"),
        ("Referer", "https://player.example.com/watch/episode-42?autoplay=1"),
        (
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
        ),
        ("Accept", "application/json, text/plain, */*"),
        ("Accept-Encoding", "gzip, deflate, br, zstd"),
        ("Accept-Language", "en-GB,en;q=0.9,de;q=0.8"),
        ("Authorization", &auth),
        ("Cookie", &cookie),
        ("Sec-Fetch-Dest", "empty"),
        ("Sec-Fetch-Mode", "cors"),
        ("Sec-Fetch-Site", "cross-site"),
        ("Sec-Ch-Ua", "\"Chromium\";v=\"126\", \"Not.A/Brand\";v=\"24\""),
        ("Sec-Ch-Ua-Mobile", "?0"),
        ("Sec-Ch-Ua-Platform", "\"Linux\""),
        ("Cache-Control", "no-cache"),
        ("Pragma", "no-cache"),
        ("DNT", "1"),
        ("X-Forwarded-For", "203.0.113.7, 198.51.100.23, 10.0.0.4"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "api.streamcap.example"),
        ("X-Request-Id", "4c1f0e0e-8a0a-4f4e-9d55-3f0b5b0c2a11"),
        ("Via", "1.1 cdn-edge-17 (squid/5.7)"),
        ("Priority", "u=1, i"),
        ("Content-Length", "0"),
    ];
    let mut raw = format!("POST /v1/users/{user}/sessions HTTP/1.1\r\n");
    for (n, v) in &headers {
        raw.push_str(&format!("{n}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    let mut conn = Conn::open(server.addr());
    conn.send(raw.as_bytes()).unwrap();
    let r = conn.read_response().unwrap();
    let body = r.expect(201);
    assert!(r.header("access-control-allow-origin").is_some(), "no CORS header: {:?}", r.headers);
    // Exposes only Retry-After (a 503's), and no credentials mode.
    assert_eq!(r.header("access-control-expose-headers"), Some("Retry-After"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    // Same connection, same headers, a heartbeat.
    let token = body["token"].as_str().unwrap();
    let id = body["session_id"].as_str().unwrap();
    let raw = raw
        .replace(
            &format!("POST /v1/users/{user}/sessions "),
            &format!("POST /v1/users/{user}/sessions/{id}/heartbeat "),
        )
        .replace(&g, token);
    conn.send(raw.as_bytes()).unwrap();
    let r = conn.read_response().unwrap();
    r.expect(200);
    assert!(r.header("access-control-allow-origin").is_some());
}

#[test]
fn errors_also_carry_cors_so_browsers_can_read_them() {
    let server = TestServer::dev();
    let user = unique("web");
    let mut conn = Conn::open(server.addr());
    conn.send(&request_bytes(
        "POST",
        &format!("/v1/users/{user}/sessions"),
        Some("bad"),
        &[("Origin", "https://x.example")],
        b"",
    ))
    .unwrap();
    let r = conn.read_response().unwrap();
    r.expect_error(401, "invalid_grant");
    assert!(r.header("access-control-allow-origin").is_some(), "{:?}", r.headers);
}

#[test]
fn cors_preflight() {
    let server = TestServer::dev();
    let user = unique("web");
    let mut conn = Conn::open(server.addr());
    let headers = [
        ("Origin", "https://player.example.com"),
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "authorization, content-type"),
    ];
    for path in [format!("/v1/users/{user}/sessions"), format!("/v1/users/{user}/sessions/0123456789abcdef/heartbeat")]
    {
        conn.send(&request_bytes("OPTIONS", &path, None, &headers, b"")).unwrap();
        let r = conn.read_response().unwrap();
        assert_eq!(r.status, 204, "{}", r.text());
        let methods = r.header("access-control-allow-methods").expect("allow-methods").to_ascii_uppercase();
        for m in ["GET", "POST", "DELETE"] {
            assert!(methods.split(',').any(|x| x.trim() == m), "allow-methods {methods:?} lacks {m}");
        }
        let allowed = r.header("access-control-allow-headers").expect("allow-headers").to_ascii_lowercase();
        for h in ["authorization", "content-type"] {
            assert!(allowed.split(',').any(|x| x.trim() == h), "allow-headers {allowed:?} lacks {h}");
        }
        assert!(r.header("access-control-allow-origin").is_some());
    }
}

#[test]
fn cors_only_for_configured_origins() {
    let mut config = dev_config();
    config.cors_origins = vec!["https://good.example".into()];
    let server = TestServer::start(config);
    let user = unique("web");
    let path = format!("/v1/users/{user}/sessions");
    let g = grant(&user, 5);
    let r = server.api.raw(&request_bytes("GET", &path, Some(&g), &[("Origin", "https://good.example")], b"")).unwrap();
    r.expect(200);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://good.example"));
    let r = server.api.raw(&request_bytes("GET", &path, Some(&g), &[("Origin", "https://evil.example")], b"")).unwrap();
    r.expect(200);
    assert_eq!(r.header("access-control-allow-origin"), None, "{:?}", r.headers);
}

#[test]
fn the_exposure_list_goes_to_browsers_only() {
    // With the default `cors_origins = ["*"]`: every answer may be read by
    // any page, and a request naming its origin (a browser) is told which
    // headers beyond the safelisted ones it may read; a TV or an app is not.
    let server = TestServer::start(dev_config());
    let user = unique("any");
    let g = grant(&user, 5);
    let path = format!("/v1/users/{user}/sessions");
    let r = server.api.raw(&request_bytes("POST", &path, Some(&g), &[], b"")).unwrap();
    r.expect(201);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-expose-headers"), None, "{:?}", r.headers);
    let r = server.api.raw(&request_bytes("POST", &path, Some(&g), &[("Origin", "https://tv.example")], b"")).unwrap();
    r.expect(201);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-expose-headers"), Some("Retry-After"));
}

#[test]
fn a_cross_origin_503_lets_the_page_read_retry_after() {
    let mut config = dev_config();
    config.core.max_sessions = 1;
    config.cors_origins = vec!["https://good.example".into()];
    let server = TestServer::start(config);
    let user = unique("web");
    let g = grant(&user, 5);
    let path = format!("/v1/users/{user}/sessions");
    let from =
        |origin: &str| server.api.raw(&request_bytes("POST", &path, Some(&g), &[("Origin", origin)], b"")).unwrap();
    from("https://good.example").expect(201);
    let r = from("https://good.example");
    r.expect_error(503, "over_capacity");
    assert!(r.header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s > 0)), "{:?}", r.headers);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://good.example"));
    // One Access-Control-Expose-Headers, naming Retry-After.
    let exposed: Vec<&str> =
        r.headers.iter().filter(|(n, _)| n == "access-control-expose-headers").map(|(_, v)| v.as_str()).collect();
    assert_eq!(exposed, ["Retry-After"], "{:?}", r.headers);
    // An origin that may not read the answer is told nothing more.
    let r = from("https://evil.example");
    r.expect_error(503, "over_capacity");
    assert_eq!(r.header("access-control-allow-origin"), None, "{:?}", r.headers);
    assert_eq!(r.header("access-control-expose-headers"), None, "{:?}", r.headers);
}

#[test]
fn the_openapi_document_is_served_without_credentials_and_cacheable() {
    let server = TestServer::dev();
    let file = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml")).unwrap();
    let mut conn = Conn::open(server.addr());
    conn.send(&request_bytes("GET", "/v1/openapi.yaml", None, &[("Origin", "https://docs.example")], b"")).unwrap();
    let r = conn.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, file, "the document as the repository has it");
    assert_eq!(r.header("content-type"), Some("application/yaml"));
    assert!(r.header("cache-control").is_some_and(|c| c.contains("max-age=")), "{:?}", r.headers);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let etag = r.header("etag").expect("an ETag").to_owned();

    // Revalidation on the same connection: 304 without a body, then the
    // connection still serves the API.
    conn.send(&request_bytes("GET", "/v1/openapi.yaml", None, &[("If-None-Match", &etag)], b"")).unwrap();
    let r = conn.read_response().unwrap();
    assert_eq!(r.status, 304, "{}", r.text());
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let user = unique("reader");
    conn.send(&request_bytes("GET", &format!("/v1/users/{user}/sessions"), Some(&grant(&user, 1)), &[], b"")).unwrap();
    conn.read_response().unwrap().expect(200);
    let r = server.api.raw(&request_bytes("GET", "/v1/openapi.yaml", None, &[("If-None-Match", "\"old\"")], b""));
    assert_eq!(r.unwrap().body, file, "a stale copy gets the document");

    // A credential, even a bad one, changes nothing; other methods are 405.
    assert_eq!(server.api.call("GET", "/v1/openapi.yaml?x=1", Some("junk")).body, file);
    let r = server.api.call("POST", "/v1/openapi.yaml", None);
    r.expect_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, OPTIONS"));
    assert_eq!(server.api.call("OPTIONS", "/v1/openapi.yaml", None).status, 204);
    server.api.call("GET", "/v1/openapi.json", None).expect_error(404, "not_found");
}

// ---- connections -------------------------------------------------------------------------

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::dev();
    let user = unique("pipe");
    let g = grant(&user, 3);
    let mut bytes = request_bytes("POST", &format!("/v1/users/{user}/sessions"), Some(&g), &[], b"");
    bytes.extend(request_bytes("GET", &format!("/v1/users/{user}/sessions"), Some(&g), &[], b""));
    bytes.extend(request_bytes("GET", "/nowhere", None, &[], b""));
    bytes.extend(request_bytes("POST", &format!("/v1/users/{user}/sessions"), Some(&g), &[], b""));
    let mut conn = Conn::open(server.addr());
    conn.send(&bytes).unwrap();
    let first = conn.read_response().unwrap().expect(201);
    let listed = conn.read_response().unwrap().expect(200);
    assert_eq!(listed["active"], 1);
    assert_eq!(listed["sessions"][0]["session_id"], first["session_id"]);
    conn.read_response().unwrap().expect_error(404, "not_found");
    assert_eq!(conn.read_response().unwrap().expect(201)["active"], 2);
    // The connection is still usable.
    assert_eq!(conn.call("GET", &format!("/v1/users/{user}/sessions"), Some(&g)).expect(200)["active"], 2);
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = TestServer::dev();
    let user = unique("keep");
    let mut conn = Conn::open(server.addr());
    let body = conn.call("POST", &format!("/v1/users/{user}/sessions"), Some(&grant(&user, 1))).expect(201);
    let id = body["session_id"].as_str().unwrap().to_owned();
    let mut token = body["token"].as_str().unwrap().to_owned();
    for _ in 0..20 {
        let b = conn.call("POST", &format!("/v1/users/{user}/sessions/{id}/heartbeat"), Some(&token)).expect(200);
        token = b["token"].as_str().unwrap().to_owned();
    }
    let r = conn.call("DELETE", &format!("/v1/users/{user}/sessions/{id}"), Some(&token));
    assert_eq!(r.status, 204);
}

// ---- operator endpoints ----------------------------------------------------------------------

#[test]
fn healthz_and_metrics() {
    let server = TestServer::dev();
    let admin = Client { addr: server.admin };
    let r = admin.call("GET", "/healthz", None);
    assert_eq!(r.expect(200), serde_json::json!({"status": "ok"}));

    let api = server.api;
    let user = unique("metered");
    let mut s = api.start_ok(&user, &grant(&user, 1));
    api.start(&user, &grant(&user, 1)).expect_error(409, "limit_reached");
    api.beat_ok(&mut s);
    api.heartbeat(&user, &s.id, "junk").expect_error(401, "invalid_token");
    api.call("GET", "/nope", None).expect_error(404, "not_found");

    let r = admin.call("GET", "/metrics", None);
    assert_eq!(r.status, 200);
    // Prometheus reads both its classic text format and OpenMetrics text.
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain") || ct.starts_with("application/openmetrics-text"), "{:?}", r.headers);
    let m = r.text();
    assert_eq!(metric(&m, "streamcap_starts_admitted_total"), Some(1.0), "{m}");
    assert_eq!(metric(&m, r#"streamcap_starts_rejected_total{reason="limit_reached"}"#), Some(1.0), "{m}");
    assert_eq!(metric(&m, "streamcap_heartbeats_ok_total"), Some(1.0), "{m}");
    assert_eq!(metric(&m, r#"streamcap_http_requests_total{route="start",status="201"}"#), Some(1.0), "{m}");
    assert_eq!(metric(&m, r#"streamcap_http_requests_total{route="start",status="409"}"#), Some(1.0), "{m}");
    assert_eq!(metric(&m, r#"streamcap_http_requests_total{route="heartbeat",status="200"}"#), Some(1.0), "{m}");
    assert_eq!(metric(&m, r#"streamcap_http_requests_total{route="heartbeat",status="401"}"#), Some(1.0), "{m}");
    assert!(metric(&m, "process_resident_memory_bytes").is_some_and(|v| v > 1_000_000.0), "{m}");
    for name in ["streamcap_live_sessions", "streamcap_users", "streamcap_expiries_total"] {
        assert!(metric(&m, name).is_some(), "{name} missing:\n{m}");
    }
    assert!(m.contains("streamcap_heartbeats_healed_total"), "{m}");
    assert!(m.contains(r#"streamcap_heartbeats_stopped_total{reason="evicted"}"#), "{m}");

    admin.call("GET", "/other", None).expect_error(404, "not_found");
    admin.call("POST", "/healthz", None).expect_error(405, "method_not_allowed");
    // The operator endpoints are not on the public port.
    api.call("GET", "/metrics", None).expect_error(404, "not_found");
}
