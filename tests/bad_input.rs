//! docs/spec.md §4 "a malformed request never crashes the server, never disturbs
//! another user's sessions": hostile bytes, broken framing, oversized heads
//! and bodies, forged and expired credentials. After each, a victim user's
//! session (started beforehand) must still heartbeat and the server must
//! still answer.

mod common;

use std::time::Duration;

use common::*;
use streamcap::grant::GrantClaims;
use streamcap::keys::{Key, KeyRing};
use streamcap::token::{Lease, LeaseClaims};
use streamcap::wire::{Policy, SessionId};

/// A user playing a stream while others misbehave.
struct Victim {
    api: Client,
    session: Session,
    grant: String,
}

impl Victim {
    fn new(api: Client) -> Victim {
        let user = unique("victim");
        let grant = grant(&user, 1);
        let session = api.start_ok(&user, &grant);
        Victim { api, session, grant }
    }

    #[track_caller]
    fn check(&mut self, after: &str) {
        let r = self.api.heartbeat(&self.session.user, &self.session.id, &self.session.token);
        assert_eq!(r.status, 200, "after {after}: victim heartbeat got {} {}", r.status, r.text());
        self.session.token = r.json()["token"].as_str().unwrap().to_owned();
        let ids = self.api.listed_ids(&self.session.user, &self.grant);
        assert_eq!(ids, vec![self.session.id.clone()], "after {after}: victim's sessions changed");
        // And another user can still start.
        let other = unique("bystander");
        self.api.start_ok(&other, &grant(&other, 1));
    }
}

/// Sends `bytes` on a fresh connection and returns the first response, or
/// `None` if the server closed the connection without one.
fn send_raw(api: Client, bytes: &[u8]) -> Option<Response> {
    let mut c = Conn::open(api.addr);
    // The server may close while we are still writing: that is an answer too.
    let _ = c.send(bytes);
    c.read_response().ok()
}

#[track_caller]
fn expect_status(r: &Option<Response>, allowed: &[u16], what: &str) {
    match r {
        Some(r) => {
            assert!(allowed.contains(&r.status), "{what}: got {} {} (want one of {allowed:?})", r.status, r.text())
        }
        None => panic!("{what}: the connection closed without a response (want one of {allowed:?})"),
    }
}

/// A JSON error body when there is a body at all (hyper's own bodiless
/// 400/431/414 for unparseable heads are accepted).
#[track_caller]
fn json_error_if_any(r: &Option<Response>, code: &str) {
    if let Some(r) = r
        && !r.body.is_empty()
    {
        r.expect_error(r.status, code);
    }
}

#[test]
fn garbage_bytes() {
    let server = TestServer::dev();
    let mut victim = Victim::new(server.api);
    let mut noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    noise[0] = 0xff;
    for junk in [
        noise.as_slice(),
        b"\x00\x00\x00\x00\r\n\r\n",
        b"HELLO\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /v1/users/x/sessions HTTP/1.1\r\nHost: a\r\nBad Header Line\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
    ] {
        let r = send_raw(server.api, junk);
        if let Some(r) = &r {
            assert!((400..500).contains(&r.status), "junk answered {} {}", r.status, r.text());
        }
        victim.check(&format!("junk {:?}", String::from_utf8_lossy(&junk[..junk.len().min(20)])));
    }
}

#[test]
fn bad_content_length_is_400() {
    let server = TestServer::dev();
    let mut victim = Victim::new(server.api);
    let user = unique("framing");
    let g = grant(&user, 5);
    let path = format!("/v1/users/{user}/sessions");
    for value in ["abc", "-1", "1.5", "0x10", "", "99999999999999999999999"] {
        let raw = request_bytes("POST", &path, Some(&g), &[("Content-Length", value)], b"");
        let r = send_raw(server.api, &raw);
        expect_status(&r, &[400], &format!("Content-Length: {value:?}"));
        json_error_if_any(&r, "bad_request");
        victim.check(&format!("Content-Length {value:?}"));
    }
    assert_eq!(server.api.list(&user, &g).expect(200)["active"], 0, "a bad request started a session");
}

/// Sends a start for a fresh user with two `Content-Length` headers and the
/// body bytes; asserts 400, that nothing started and that the victim plays on.
fn duplicated_content_length(first: &str, second: &str, body: &[u8]) {
    let server = TestServer::dev();
    let mut victim = Victim::new(server.api);
    let user = unique("framing");
    let g = grant(&user, 5);
    let path = format!("/v1/users/{user}/sessions");
    let mut raw = request_bytes("POST", &path, Some(&g), &[("Content-Length", first), ("Content-Length", second)], b"");
    raw.extend_from_slice(body);
    let r = send_raw(server.api, &raw);
    expect_status(&r, &[400], &format!("Content-Length: {first} and Content-Length: {second}"));
    json_error_if_any(&r, "bad_request");
    victim.check("duplicated Content-Length");
    assert_eq!(server.api.list(&user, &g).expect(200)["active"], 0, "a bad request started a session");
}

#[test]
fn duplicated_content_length_with_different_values_is_400() {
    duplicated_content_length("2", "5", b"{}");
}

#[test]
fn duplicated_content_length_with_equal_values_is_400() {
    duplicated_content_length("2", "2", b"{}");
}

#[test]
fn duplicated_content_length_zero_is_400() {
    duplicated_content_length("0", "0", b"");
}

#[test]
fn a_content_length_list_is_400() {
    let server = TestServer::dev();
    let mut victim = Victim::new(server.api);
    let user = unique("framing");
    let g = grant(&user, 5);
    let raw =
        request_bytes("POST", &format!("/v1/users/{user}/sessions"), Some(&g), &[("Content-Length", "2, 2")], b"{}");
    expect_status(&send_raw(server.api, &raw), &[400], "Content-Length: 2, 2");
    victim.check("Content-Length: 2, 2");
}

#[test]
fn too_many_headers_is_431() {
    let server = TestServer::dev();
    let mut victim = Victim::new(server.api);
    let user = unique("heads");
    let names: Vec<String> = (0..100).map(|i| format!("X-Extra-{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let raw = request_bytes("POST", &format!("/v1/users/{user}/sessions"), Some(&grant(&user, 1)), &headers, b"");
    let r = send_raw(server.api, &raw);
    victim.check("100 headers");
    expect_status(&r, &[431], "100 headers");
}

#[test]
fn up_to_64_headers_are_fine() {
    let server = TestServer::dev();
    let user = unique("heads");
    let names: Vec<String> = (0..62).map(|i| format!("X-Extra-{i}")).collect();
    // 62 + Host + Authorization = 64.
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let raw = request_bytes("POST", &format!("/v1/users/{user}/sessions"), Some(&grant(&user, 1)), &headers, b"");
    expect_status(&send_raw(server.api, &raw), &[201], "64 headers");
}

#[test]
fn a_40_kb_header_is_431() {
    let server = TestServer::dev();
    let mut victim = Victim::new(server.api);
    let user = unique("heads");
    let big = "x".repeat(40 * 1024);
    let raw =
        request_bytes("POST", &format!("/v1/users/{user}/sessions"), Some(&grant(&user, 1)), &[("X-Big", &big)], b"");
    let r = send_raw(server.api, &raw);
    victim.check("a 40 KB header");
    expect_status(&r, &[431], "a 40 KB header");
}

#[test]
fn a_17_kb_header_is_431() {
    let server = TestServer::dev();
    let mut victim = Victim::new(server.api);
    let user = unique("heads");
    let big = "x".repeat(17 * 1024);
    let raw =
        request_bytes("POST", &format!("/v1/users/{user}/sessions"), Some(&grant(&user, 1)), &[("X-Big", &big)], b"");
    let r = send_raw(server.api, &raw);
    victim.check("a 17 KB header");
    expect_status(&r, &[431], "a 17 KB header");
}

#[test]
fn a_20_kb_target_is_414_or_431() {
    let server = TestServer::dev();
    let mut victim = Victim::new(server.api);
    let user = unique("heads");
    let raw = request_bytes("GET", &format!("/v1/users/{user}/sessions?pad={}", "p".repeat(20 * 1024)), None, &[], b"");
    let r = send_raw(server.api, &raw);
    victim.check("a 20 KB target");
    expect_status(&r, &[414, 431], "a 20 KB target");
}

#[test]
fn headers_just_under_16_kib_work() {
    let server = TestServer::dev();
    let user = unique("heads");
    // Proxies and cookies add a lot: about 14 KB of headers is still a request.
    let medium = "m".repeat(7 * 1024);
    let raw = request_bytes(
        "POST",
        &format!("/v1/users/{user}/sessions"),
        Some(&grant(&user, 1)),
        &[("X-Medium-1", &medium), ("X-Medium-2", &medium)],
        b"",
    );
    expect_status(&send_raw(server.api, &raw), &[201], "14 KB of headers");
}

#[test]
fn a_body_over_16_kib_is_413() {
    let server = TestServer::dev();
    let mut victim = Victim::new(server.api);
    let user = unique("bodies");
    let g = grant(&user, 5);
    let path = format!("/v1/users/{user}/sessions");
    let body = vec![b'{'; 20 * 1024];
    let r =
        send_raw(server.api, &request_bytes("POST", &path, Some(&g), &[("Content-Type", "application/json")], &body));
    expect_status(&r, &[413], "a 20 KB body");
    json_error_if_any(&r, "payload_too_large");
    victim.check("a 20 KB body");
    // A body within the limit is read and ignored.
    let r = send_raw(server.api, &request_bytes("POST", &path, Some(&g), &[], &vec![b' '; 1000]));
    expect_status(&r, &[201], "a 1000-byte body");
    assert_eq!(server.api.list(&user, &g).expect(200)["active"], 1);
}

fn chunked(path: &str, auth: &str, body: &[u8], chunk: usize) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {auth}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for part in body.chunks(chunk) {
        raw.extend(format!("{:x}\r\n", part.len()).bytes());
        raw.extend_from_slice(part);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    raw
}

#[test]
fn chunked_bodies_are_read_or_refused() {
    let server = TestServer::dev();
    let mut victim = Victim::new(server.api);
    let user = unique("chunks");
    let g = grant(&user, 5);
    let path = format!("/v1/users/{user}/sessions");

    // Small: read correctly, answered, and the connection stays in step.
    let mut conn = Conn::open(server.addr());
    let mut raw = chunked(&path, &g, br#"{"hello": "world", "pad": "                    "}"#, 7);
    raw.extend(request_bytes("GET", &path, Some(&g), &[], b""));
    conn.send(&raw).unwrap();
    let first = conn.read_response().unwrap();
    assert!(first.status == 201 || first.status == 411, "small chunked body: {} {}", first.status, first.text());
    if first.status == 201 {
        let listed = conn.read_response().expect("the request after a chunked body").expect(200);
        assert_eq!(listed["active"], 1);
    }
    victim.check("a small chunked body");

    // Large: refused.
    let big = vec![b'a'; 17 * 1024];
    let r = send_raw(server.api, &chunked(&path, &g, &big, 4096));
    expect_status(&r, &[413, 411], "a 17 KiB chunked body");
    victim.check("a 17 KiB chunked body");
    let active = server.api.list(&user, &g).expect(200)["active"].as_u64().unwrap();
    assert!(active <= 1, "the refused chunked request started a session");
}

#[test]
fn tampered_tokens_and_grants_are_401() {
    let server = TestServer::dev();
    let mut victim = Victim::new(server.api);
    let api = server.api;
    let user = unique("forger");
    let g = grant(&user, 1);
    let s = api.start_ok(&user, &g);
    // Flip characters across the token: the kid, the payload, the MAC.
    let positions = [3, 6, s.token.len() / 2, s.token.len() - 23, s.token.len() - 10, s.token.len() - 1];
    for at in positions {
        let forged = flip(&s.token, at);
        if forged == s.token {
            continue;
        }
        api.heartbeat(&user, &s.id, &forged).expect_error(401, "invalid_token");
        api.stop(&user, &s.id, &forged).expect_error(401, "invalid_token");
    }
    api.heartbeat(&user, &s.id, &format!("{}x", s.token)).expect_error(401, "invalid_token");
    api.heartbeat(&user, &s.id, &s.token[..s.token.len() - 1]).expect_error(401, "invalid_token");
    let positions = [3, g.len() / 2, g.len() - 44, g.len() - 1];
    for at in positions {
        let forged = flip(&g, at);
        api.start(&user, &forged).expect_error(401, "invalid_grant");
        api.list(&user, &forged).expect_error(401, "invalid_grant");
    }
    victim.check("tampered credentials");
    // The real ones still work.
    let mut s = s;
    api.beat_ok(&mut s);
}

#[test]
fn a_token_signed_with_a_foreign_key_is_401() {
    let server = TestServer::dev();
    let mut victim = Victim::new(server.api);
    let api = server.api;
    let user = unique("foreign");
    let now_ms = now_secs() as u64 * 1000;
    let id = SessionId(0x0123_4567_89ab_cdef);
    let claims = LeaseClaims {
        tenant: "demo",
        user: &user,
        session: id,
        started_ms: now_ms,
        expires_ms: now_ms + 90_000,
        limit: 1000,
        policy: Policy::EvictOldest,
        group: None,
        device: None,
        label: None,
        content: None,
        poll_secs: 30,
    };
    // Same key id as the dev server key, other secret.
    let foreign = Key::parse("dev", KEY_FOREIGN).unwrap();
    let token = claims.mint(&foreign).unwrap();
    // Sanity: the token is well-formed for its own key.
    assert!(Lease::verify(&token, &KeyRing::new(vec![foreign.clone()]).unwrap(), now_ms).is_ok());
    api.heartbeat(&user, &id.to_string(), &token).expect_error(401, "invalid_token");
    api.stop(&user, &id.to_string(), &token).expect_error(401, "invalid_token");
    // Another key id altogether.
    let other = Key::parse("x9", KEY_FOREIGN).unwrap();
    api.heartbeat(&user, &id.to_string(), &claims.mint(&other).unwrap()).expect_error(401, "invalid_token");
    // A forged grant for the victim.
    let forged = streamcap::grant::GrantClaims { limit: 1000, ..common::claims(&victim.session.user, 1) }
        .mint(&secret(KEY_FOREIGN));
    api.start(&victim.session.user, &forged).expect_error(401, "invalid_grant");
    victim.check("foreign-key credentials");
}

#[test]
fn an_expired_grant_is_401() {
    let server = TestServer::dev();
    let mut victim = Victim::new(server.api);
    let api = server.api;
    let user = unique("late");
    let expired = GrantClaims { exp: now_secs() - 120, ..claims(&user, 1) }.mint(&dev_secret());
    api.start(&user, &expired).expect_error(401, "invalid_grant");
    api.list(&user, &expired).expect_error(401, "invalid_grant");
    let zero = GrantClaims { exp: 0, ..claims(&user, 1) }.mint(&dev_secret());
    api.start(&user, &zero).expect_error(401, "invalid_grant");
    // Within the 30 s clock-skew leeway it is still good.
    let skewed = GrantClaims { exp: now_secs() - 10, ..claims(&user, 1) }.mint(&dev_secret());
    api.start_ok(&user, &skewed);
    victim.check("expired grants");
}

#[test]
fn many_bad_connections_at_once_do_not_disturb_anyone() {
    let server = TestServer::dev();
    let mut victim = Victim::new(server.api);
    let addr = server.addr();
    std::thread::scope(|scope| {
        for i in 0..16 {
            scope.spawn(move || {
                let mut c = Conn::open(addr);
                let junk: &[u8] = match i % 4 {
                    0 => b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
                    1 => b"\xff\xfe\xfd\r\n\r\n",
                    2 => b"POST /v1/users/x/sessions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                    _ => b"POST /v1/users/x/sessions HTTP/1.1\r\nContent-Length: 10\r\n\r\n{",
                };
                let _ = c.send(junk);
                // Hang up without waiting for a response.
                drop(c);
            });
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    victim.check("a burst of bad connections");
}
