//! docs/spec.md §6 healing and §3/§8 keys with the real binary: sessions survive a
//! SIGKILL and restart because the tokens carry them; the §6 example end to
//! end; server key rotation across restarts; tenant key rotation; SIGTERM
//! finishes in-flight requests and exits 0.

mod common;

use std::time::Duration;

use common::*;
use streamcap::grant::GrantClaims;

fn tick() {
    std::thread::sleep(Duration::from_millis(5));
}

/// Config with server key s1 and tenant acme (key k1), and its directory.
fn s1_config(name: &str) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new(name);
    let path = dir.path("streamcap.toml");
    write_config(&path, &[("s1", KEY_S1)], &[("k1", KEY_K1)], "");
    (dir, path)
}

fn acme_grant(user: &str, limit: i64) -> String {
    acme_claims(user, limit).mint(&secret(KEY_K1))
}

#[test]
fn sessions_survive_sigkill_and_restart() {
    let (_dir, config) = s1_config("heal");
    let port = free_port();
    let args = Binary::args(&config, port);
    let mut first = Binary::spawn(&args);
    let api = first.api;
    let user = unique("viewer");
    let g = acme_grant(&user, 3);
    let mut sessions = Vec::new();
    for i in 0..3 {
        let gi = GrantClaims { label: some(&format!("screen {i}")), ..acme_claims(&user, 3) }.mint(&secret(KEY_K1));
        sessions.push(api.start_ok(&user, &gi));
        tick();
    }
    let before = api.list(&user, &g).expect(200);
    // Another user on the same node.
    let other = unique("other");
    let mut o = api.start_ok(&other, &acme_grant(&other, 1));
    api.beat_ok(&mut o);

    first.kill();
    assert!(Conn::try_open(api.addr).is_err(), "the killed server still accepts connections");

    let second = Binary::spawn(&args);
    assert_eq!(second.api.addr, api.addr, "restarted on the same port");
    assert_eq!(api.list(&user, &g).expect(200)["active"], 0, "state survived a SIGKILL?");
    for s in &mut sessions {
        api.beat_ok(s);
    }
    api.beat_ok(&mut o);
    let after = api.list(&user, &g).expect(200);
    assert_eq!(after["active"], 3);
    // Rebuilt with their identity, original start times and labels, oldest first.
    assert_eq!(after["sessions"].as_array().unwrap().len(), 3);
    for (b, a) in before["sessions"].as_array().unwrap().iter().zip(after["sessions"].as_array().unwrap()) {
        for field in ["session_id", "started_at", "label", "device", "content", "group"] {
            assert_eq!(a[field], b[field], "{field} differs after healing: {a} vs {b}");
        }
    }
    // The rebuilt sessions count: the account is full again.
    api.start(&user, &g).expect_error(409, "limit_reached");
    let m = metrics_text(second.admin);
    assert_eq!(metric(&m, "streamcap_heartbeats_healed_total"), Some(4.0), "{m}");
    // Renewed tokens work on the new process as usual.
    for s in &mut sessions {
        api.beat_ok(s);
    }
    assert_eq!(metric(&metrics_text(second.admin), "streamcap_heartbeats_healed_total"), Some(4.0));
}

/// docs/spec.md §6: limit 5, reject_new. Streams 1–5 play; all state is lost;
/// stream 6 starts; 1–4 heartbeat and are rebuilt; 5 heartbeats: 6 is the
/// latest-started and is stopped; 6's next heartbeat gets 410.
#[test]
fn spec_section_6_example_after_total_loss_of_state() {
    let (_dir, config) = s1_config("spec6");
    let port = free_port();
    let args = Binary::args(&config, port);
    let mut node = Binary::spawn(&args);
    let api = node.api;
    let user = unique("family");
    let g = GrantClaims { policy: some("reject_new"), ..acme_claims(&user, 5) }.mint(&secret(KEY_K1));
    let mut streams: Vec<Session> = (0..5)
        .map(|_| {
            let s = api.start_ok(&user, &g);
            tick();
            s
        })
        .collect();
    api.start(&user, &g).expect_error(409, "limit_reached");

    node.kill();
    let _node = Binary::spawn(&args);

    let body = api.start(&user, &g).expect(201);
    assert_eq!(body["active"], 1, "nothing is known after the loss");
    let mut sixth = Session {
        user: user.clone(),
        id: body["session_id"].as_str().unwrap().into(),
        token: body["token"].as_str().unwrap().into(),
    };
    for s in streams.iter_mut().take(4) {
        api.beat_ok(s);
    }
    // 5 of 5 live now (1-4 and 6): stream 5 comes back and wins over 6.
    api.beat_ok(&mut streams[4]);
    let stopped = api.beat_stopped(&sixth, "limit_exceeded");
    assert_eq!(stopped["by"], serde_json::Value::Null);
    // Everybody else keeps playing.
    for s in &mut streams {
        api.beat_ok(s);
    }
    let want: Vec<String> = streams.iter().map(|s| s.id.clone()).collect();
    assert_eq!(api.listed_ids(&user, &g), want);
    // Definitive for 6, even with its original token.
    sixth.token = body["token"].as_str().unwrap().into();
    api.beat_stopped(&sixth, "limit_exceeded");
}

#[test]
fn server_key_rotation_across_restarts() {
    let dir = TempDir::new("rotate");
    let only_s1 = dir.path("s1.toml");
    let both = dir.path("s2-s1.toml");
    let only_s2 = dir.path("s2.toml");
    write_config(&only_s1, &[("s1", KEY_S1)], &[("k1", KEY_K1)], "");
    write_config(&both, &[("s2", KEY_S2), ("s1", KEY_S1)], &[("k1", KEY_K1)], "");
    write_config(&only_s2, &[("s2", KEY_S2)], &[("k1", KEY_K1)], "");
    let user = unique("rotating");
    let g = acme_grant(&user, 2);

    let mut node = Binary::spawn(&Binary::args(&only_s1, 0));
    let s1_session = node.api.start_ok(&user, &g);
    assert!(s1_session.token.starts_with("s1.s1."), "{}", s1_session.token);
    node.kill();

    // s2 signs, s1 still verifies.
    let mut node = Binary::spawn(&Binary::args(&both, 0));
    let mut renewed = s1_session.clone();
    node.api.beat_ok(&mut renewed);
    assert!(renewed.token.starts_with("s1.s2."), "renewed with the newest key: {}", renewed.token);
    let fresh = node.api.start_ok(&user, &g);
    assert!(fresh.token.starts_with("s1.s2."), "{}", fresh.token);
    node.kill();

    // s1 retired: its tokens are refused, s2's are accepted (and heal).
    let node = Binary::spawn(&Binary::args(&only_s2, 0));
    node.api.heartbeat(&user, &s1_session.id, &s1_session.token).expect_error(401, "invalid_token");
    let mut renewed2 = renewed.clone();
    node.api.beat_ok(&mut renewed2);
    assert!(renewed2.token.starts_with("s1.s2."));
    let mut fresh = fresh;
    node.api.beat_ok(&mut fresh);
    assert_eq!(node.api.list(&user, &g).expect(200)["active"], 2);
}

#[test]
fn tenant_key_rotation_accepts_a_grant_naming_the_second_key() {
    let dir = TempDir::new("tenant-keys");
    let path = dir.path("streamcap.toml");
    write_config(&path, &[("s1", KEY_S1)], &[("k1", KEY_K1), ("k2", KEY_K2)], "");
    let server = TestServer::start(file_config(&path));
    let api = server.api;
    let user = unique("tenant");
    let with_kid = |kid: Option<&str>, key: &str| {
        GrantClaims { kid: kid.map(|k| k.to_owned().into()), ..acme_claims(&user, 5) }.mint(&secret(key))
    };
    let mut s = api.start_ok(&user, &with_kid(Some("k2"), KEY_K2));
    assert!(s.token.starts_with("s1.s1."), "{}", s.token);
    api.beat_ok(&mut s);
    api.start_ok(&user, &with_kid(None, KEY_K1));
    api.start_ok(&user, &with_kid(Some("k1"), KEY_K1));
    api.start(&user, &with_kid(Some("k2"), KEY_K1)).expect_error(401, "invalid_grant");
    api.start(&user, &with_kid(None, KEY_K2)).expect_error(401, "invalid_grant");
    api.start(&user, &with_kid(Some("k3"), KEY_K2)).expect_error(401, "invalid_grant");
    // The dev tenant and dev keys are not accepted outside dev mode.
    api.start(&user, &grant(&user, 5)).expect_error(401, "invalid_grant");
    api.list(&user, &with_kid(Some("k2"), KEY_K2)).expect(200);
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_0() {
    let mut node =
        Binary::spawn(&["--listen".into(), "127.0.0.1:0".into(), "--admin-listen".into(), "127.0.0.1:0".into()]);
    let api = node.api;
    let user = unique("leaving");
    let g = grant(&user, 2);
    assert!(node.log().contains("DEV MODE"), "no dev-mode warning:\n{}", node.log());
    // An idle keep-alive connection must not hold up the exit.
    let mut idle = Conn::open(api.addr);
    idle.call("GET", &format!("/v1/users/{user}/sessions"), Some(&g)).expect(200);
    // A start whose body is still arriving.
    let mut in_flight = Conn::open(api.addr);
    let head = request_bytes("POST", &format!("/v1/users/{user}/sessions"), Some(&g), &[("Content-Length", "2")], b"");
    in_flight.send(&head).unwrap();
    in_flight.send(b"{").unwrap();
    std::thread::sleep(Duration::from_millis(300));

    node.signal("TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(node.child.try_wait().unwrap().is_none(), "exited with a request in flight");
    // No new connections are served while draining.
    if let Ok(mut late) = Conn::try_open(api.addr) {
        let _ = late.send(&request_bytes("GET", "/v1/users/x/sessions", Some(&g), &[], b""));
        let r = late.read_response();
        assert!(r.is_err(), "a connection opened after SIGTERM was served: {:?}", r.map(|r| r.status));
    }
    in_flight.send(b"}").unwrap();
    let r = in_flight.read_response().expect("the in-flight request was answered");
    let body = r.expect(201);
    assert!(body["token"].as_str().is_some());

    let status = node
        .wait_exit(Duration::from_secs(8))
        .unwrap_or_else(|| panic!("still running 8 s after SIGTERM:\n{}", node.log()));
    assert_eq!(status.code(), Some(0), "exit status {status:?}; log:\n{}", node.log());
    assert!(idle.wait_closed(Duration::from_secs(1)).is_some(), "the idle connection was left open");
}

/// After a restart, stopping, kicking or replacing a session this node never
/// saw leaves a tombstone: the old token gets 410, not a rebuild.
#[test]
fn stops_of_sessions_unknown_after_a_restart_are_remembered() {
    let (_dir, config) = s1_config("tombstones");
    let port = free_port();
    let args = Binary::args(&config, port);
    let mut node = Binary::spawn(&args);
    let api = node.api;
    let user = unique("forgetful");
    let g = acme_grant(&user, 5);
    let ended = api.start_ok(&user, &g);
    let kicked = api.start_ok(&user, &g);
    let replaced = api.start_ok(&user, &g);
    let mut kept = api.start_ok(&user, &g);
    node.kill();
    let _node = Binary::spawn(&args);

    assert_eq!(api.stop(&user, &ended.id, &ended.token).status, 204);
    let kicker = GrantClaims { label: some("Phone"), ..acme_claims(&user, 5) }.mint(&secret(KEY_K1));
    assert_eq!(api.stop(&user, &kicked.id, &kicker).status, 204);
    let body = api.start_replacing(&user, &g, &replaced.id).expect(201);

    api.beat_stopped(&ended, "ended");
    assert_eq!(api.beat_stopped(&kicked, "kicked")["by"]["label"], "Phone");
    assert_eq!(api.beat_stopped(&replaced, "replaced")["by"]["session_id"], body["session_id"]);
    api.beat_ok(&mut kept);
    assert_eq!(api.list(&user, &g).expect(200)["active"], 2);
}

/// §6 under evict_oldest: after a loss of state, re-validation stops the
/// oldest-started sessions.
#[test]
fn healing_under_evict_oldest_stops_the_oldest() {
    let (_dir, config) = s1_config("heal-evict");
    let port = free_port();
    let args = Binary::args(&config, port);
    let mut node = Binary::spawn(&args);
    let api = node.api;
    let user = unique("evicting");
    let g = GrantClaims { policy: some("evict_oldest"), ..acme_claims(&user, 2) }.mint(&secret(KEY_K1));
    let mut a = api.start_ok(&user, &g);
    tick();
    let mut b = api.start_ok(&user, &g);
    tick();
    node.kill();
    let _node = Binary::spawn(&args);

    let mut c = api.start_ok(&user, &g);
    api.beat_ok(&mut a); // a and c: 2 of 2
    api.beat_ok(&mut b); // a, b and c: the oldest, a, loses
    api.beat_stopped(&a, "limit_exceeded");
    api.beat_ok(&mut b);
    api.beat_ok(&mut c);
    assert_eq!(api.listed_ids(&user, &g), vec![b.id.clone(), c.id.clone()]);
}

/// §9: nodes that share keys accept each other's tokens; a user moved to
/// another node is rebuilt there at its next heartbeat.
#[test]
fn another_node_with_the_same_keys_accepts_the_tokens() {
    let dir = TempDir::new("cluster");
    let path = dir.path("streamcap.toml");
    write_config(&path, &[("s1", KEY_S1)], &[("k1", KEY_K1)], "");
    let east = TestServer::start(file_config(&path));
    let west = TestServer::start(file_config(&path));
    let user = unique("mover");
    let g = acme_grant(&user, 2);
    let mut a = east.api.start_ok(&user, &g);
    let mut b = east.api.start_ok(&user, &g);
    west.api.beat_ok(&mut a);
    west.api.beat_ok(&mut b);
    assert_eq!(west.api.list(&user, &g).expect(200)["active"], 2);
    west.api.start(&user, &g).expect_error(409, "limit_reached");
    assert_eq!(metric(&west.metrics(), "streamcap_heartbeats_healed_total"), Some(2.0));
    // A node with other keys does not.
    let other = TempDir::new("cluster-other");
    let other_path = other.path("streamcap.toml");
    write_config(&other_path, &[("s1", KEY_S2)], &[("k1", KEY_K1)], "");
    let stranger = TestServer::start(file_config(&other_path));
    stranger.api.heartbeat(&user, &a.id, &a.token).expect_error(401, "invalid_token");
}

/// docs/spec.md §4 sign out everywhere on a node that does not hold the user's
/// sessions yet (the user just moved there): they are not rebuilt from
/// their tokens but answered `410 kicked`; a session started since is.
#[test]
fn a_sign_out_also_stops_sessions_the_node_does_not_hold() {
    let dir = TempDir::new("signout-moved");
    let path = dir.path("streamcap.toml");
    write_config(&path, &[("s1", KEY_S1)], &[("k1", KEY_K1)], "");
    let east = TestServer::start(file_config(&path));
    let west = TestServer::start(file_config(&path));
    let user = unique("mover");
    let g = acme_grant(&user, 3);
    let older: Vec<Session> = (0..2).map(|_| east.api.start_ok(&user, &g)).collect();
    let mut held = west.api.start_ok(&user, &g);
    west.api.beat_ok(&mut held);
    tick();

    let signer = GrantClaims { label: some("Account settings"), ..acme_claims(&user, 3) }.mint(&secret(KEY_K1));
    let r = west.api.call("DELETE", &format!("/v1/users/{user}/sessions"), Some(&signer));
    assert_eq!(r.expect(200), serde_json::json!({"stopped": 1}), "the one session the node holds");
    for s in older.iter().chain([&held]) {
        let body = west.api.beat_stopped(s, "kicked");
        assert_eq!(body["by"]["label"], "Account settings", "{body}");
        assert_eq!(body["by"]["session_id"], serde_json::Value::Null, "{body}");
    }
    assert!(west.api.listed_ids(&user, &g).is_empty());

    // Started since the sign-out: on another node, then moved here.
    tick();
    let mut newer = east.api.start_ok(&user, &g);
    west.api.beat_ok(&mut newer);
    assert_eq!(west.api.listed_ids(&user, &g), [newer.id.clone()]);
    assert_eq!(metric(&west.metrics(), "streamcap_heartbeats_healed_total"), Some(1.0));
    let m = west.metrics();
    assert_eq!(metric(&m, r#"streamcap_heartbeats_stopped_total{reason="kicked"}"#), Some(3.0), "{m}");
}
