//! Bugs found by the fuzz targets (`fuzz/README.md`), each kept as the
//! smallest input that shows it. A test marked `#[ignore = "bug: …"]` fails
//! today; the fix removes the mark.

mod common;

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

/// Found by `lease_token` (round trip, before its claims were limited to
/// what a grant can hold). `LeaseClaims::mint` writes each string's length
/// as one byte (`s.len() as u8`, src/token.rs `write_payload`) and the limits
/// as `u16`, and checks only the total size: a field of 256 or more bytes
/// that still fits the 512-byte budget gives a token that does not verify,
/// and a limit over 65 535 comes back as another number. Not reachable
/// through the API (grants cap every field far lower), but `mint` is public
/// (SECURITY.md points licence servers at this module): it should refuse
/// (`None`) or shorten what it cannot represent.
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

/// Found by `lease_token` (round trip). A grant's `label` (or `content`)
/// may be an empty string (SPEC §2: "≤ 64 bytes"). The node that starts the
/// session lists it as `""`; the token marks it present (its flag bit is
/// set) but `Lease::claims` reads a zero-length string as absent
/// (src/token.rs `str_at`: "an empty slot means absent"), so once the session
/// is healed on another node or after a restart it is listed as `null`.
/// Either normalise `""` to absent when the grant is validated, or honour
/// the flag bits when reading the token.
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
