//! Bugs found by the fuzz targets (`fuzz/README.md`) and the abuse tests
//! (`tests/abuse.rs`), each kept as the smallest input that shows it. A test
//! marked `#[ignore = "bug: …"]` fails today; the fix removes the mark.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use streamcap::config::DEV_SERVER_KEY;
use streamcap::grant::GrantClaims;
use streamcap::keys::{Key, KeyRing};
use streamcap::token::{Lease, LeaseClaims};
use streamcap::wire::{Policy, SessionId};

fn dev_server_key() -> Key {
    Key::parse("dev", DEV_SERVER_KEY).unwrap()
}

fn claims<'a>() -> LeaseClaims<'a> {
    LeaseClaims {
        tenant: "a",
        user: "b",
        session: SessionId(1),
        started_ms: 1,
        expires_ms: 2,
        limit: 1,
        policy: Policy::RejectNew,
        group: None,
        device: None,
        label: None,
        content: None,
        poll_secs: 30,
    }
}

/// Found by `lease_token` (round trip) in its first seconds once renewal
/// re-encoded only the expiry: claims with an empty label were minted with
/// the label flagged present and zero bytes long, which reads back as no
/// label; renewal kept those bytes while a fresh mint of what the token
/// says (no label) spelled another token. Harmless (both say the same), but
/// the same claims must make the same token: `mint` now writes an empty
/// string as absent.
#[test]
fn empty_display_text_mints_the_same_token_as_none() {
    let key = dev_server_key();
    let ring = KeyRing::new(vec![key.clone()]).unwrap();
    let empty = LeaseClaims { label: Some(""), content: Some(""), device: Some(""), ..claims() };
    let token = empty.mint(&key).unwrap();
    assert_eq!(Some(token.clone()), claims().mint(&key));
    let lease = Lease::verify(&token, &ring, 0).unwrap();
    assert_eq!(Some(lease.renew(9, &ring)), LeaseClaims { expires_ms: 9, ..claims() }.mint(&key));
}

/// Found while writing the `lease_token` round-trip property, whose claims
/// were first drawn past the grant's field rules. `LeaseClaims::mint` wrote
/// each string's length as one byte (`s.len() as u8`) and the limits as
/// `u16`, and checked only the total size: a field of 256 or more bytes that
/// still fit the 512-byte budget gave a token that did not verify, and a
/// limit over 65 535 came back as another number. Not reachable through the
/// API (grants cap every field far lower), but `mint` is public. Fixed: it
/// refuses (`None`) what the layout cannot carry; the fuzz target now draws
/// such claims one time in eight and checks the refusal.
#[test]
fn what_mint_signs_verifies_back() {
    let key = dev_server_key();
    let ring = KeyRing::new(vec![key.clone()]).unwrap();
    let device = "d".repeat(256);
    for c in [LeaseClaims { device: Some(&device), ..claims() }, LeaseClaims { limit: 70_000, ..claims() }] {
        if let Some(token) = c.mint(&key) {
            let lease = Lease::verify(&token, &ring, 0)
                .unwrap_or_else(|e| panic!("a token mint returned does not verify ({e:?}): {c:?}"));
            assert_eq!(lease.claims(), c, "the token says something else than what was minted");
        }
    }
}

/// Found by `lease_token` (round trip: an empty label read back as absent).
/// A grant's `label` (or `content`) may be an empty string (docs/spec.md §2: "≤ 64
/// bytes"). The node that started the session listed it as `""`, but the
/// token reads a zero-length string as absent, so once the session was
/// healed on another node or after a restart it was listed as `null`.
/// Fixed: the grant validator drops an empty display text (`grant` checks
/// that against its oracle).
#[test]
fn an_empty_label_looks_the_same_after_healing() {
    let user = unique("empty-label");
    let g = GrantClaims { label: some(""), content: some(""), ..common::claims(&user, 2) }.mint(&dev_secret());
    let (mut session, before) = {
        let first = TestServer::dev();
        let s = first.api.start_ok(&user, &g);
        let listed = first.api.list(&user, &g).expect(200)["sessions"][0].clone();
        (s, listed)
    };
    // All state lost: the next node heals the session from its token.
    let second = TestServer::dev();
    second.api.beat_ok(&mut session);
    let after = second.api.list(&user, &g).expect(200)["sessions"][0].clone();
    assert_eq!(before["session_id"], after["session_id"]);
    assert_eq!(
        (&before["label"], &before["content"]),
        (&after["label"], &after["content"]),
        "before the restart: {before}, after: {after}"
    );
}

/// Found by `tests/abuse.rs` (10 000 slowloris connections against the real
/// binary, which took 10 s to open). The public listener is bound with
/// `tokio::net::TcpListener::bind` (src/cli.rs `serve`), whose accept
/// backlog is 128 (mio's default, as the standard library's). When
/// connections arrive faster than the accept loop takes them (a reconnect
/// storm after a restart or a failover, a flash crowd, a flood), the kernel
/// drops SYNs beyond 128 waiting connections (`ListenOverflows` in
/// `nstat`), and those clients wait 1 s, then 3 s, … to connect. Measured
/// here: a Python client opening 9 000 connections one after another (each
/// `connect` returns as soon as the kernel has queued it) stalled for a
/// second every 150–450 connections, 18 times. Expected: a backlog in the
/// thousands (`tokio::net::TcpSocket` … `listen(4096)`; the kernel caps it at
/// `net.core.somaxconn`, 4096 by default on Linux ≥ 5.4), so a burst of a
/// couple of thousand connections is queued, not dropped. Fixed: both
/// listeners are bound with a backlog of 4096.
#[test]
fn a_burst_of_connections_is_queued_not_dropped() {
    let args = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"].map(String::from);
    let server = Binary::spawn(&args);
    let mut held = Vec::new();
    let mut slowest = (Duration::ZERO, 0);
    for i in 0..2000 {
        let began = Instant::now();
        let stream = TcpStream::connect_timeout(&server.api.addr, Duration::from_secs(10)).expect("connect");
        slowest = slowest.max((began.elapsed(), i));
        held.push(stream);
    }
    assert!(
        slowest.0 < Duration::from_millis(500),
        "connection {} took {:?} to open: its SYN was dropped at the listen backlog",
        slowest.1,
        slowest.0
    );
    // And the server serves them all.
    let user = unique("burst");
    server.api.start_ok(&user, &grant(&user, 1));
}
