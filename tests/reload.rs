//! SIGHUP reloads the configuration, keys included, without dropping a
//! session; a configuration that does not load is refused and the old one
//! stays in force.

mod common;

use std::time::Duration;

use common::*;
use streamcap::grant::GrantClaims;

const KEY_S1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const KEY_S2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const KEY_K1: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const KEY_K2: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn grant_signed(user: &str, kid: &str, key: &str) -> String {
    GrantClaims { kid: some(kid), ..acme_claims(user, 3) }.mint(&secret(key))
}

/// Retries `check` for a few seconds: a signal is handled asynchronously.
fn soon(what: &str, mut check: impl FnMut() -> bool) {
    assert!(eventually(Duration::from_secs(5), || check().then_some(())).is_some(), "{what}");
}

#[test]
fn sighup_puts_new_keys_in_force_and_keeps_sessions() {
    let dir = TempDir::new("reload");
    let config = dir.path("streamcap.toml");
    write_config(&config, &[("s1", KEY_S1)], &[("k1", KEY_K1)], "");
    let node = Binary::spawn(&Binary::args(&config, 0));
    let user = unique("reloaded");
    let mut session = node.api.start_ok(&user, &grant_signed(&user, "k1", KEY_K1));
    node.api.start(&user, &grant_signed(&user, "k2", KEY_K2)).expect_error(401, "invalid_grant");

    // Add a tenant key and rotate the server key: s2 signs, s1 still verifies.
    write_config(&config, &[("s2", KEY_S2), ("s1", KEY_S1)], &[("k1", KEY_K1), ("k2", KEY_K2)], "");
    node.signal("HUP");
    soon("the new tenant key is accepted after SIGHUP", || {
        node.api.start(&user, &grant_signed(&user, "k2", KEY_K2)).status == 201
    });
    node.api.beat_ok(&mut session);
    assert!(session.token.starts_with("s1.s2."), "renewed with the new signing key: {}", session.token);
    assert_eq!(node.api.list(&user, &grant_signed(&user, "k1", KEY_K1)).expect(200)["active"], 2);

    // A broken file is refused; the configuration in force stays.
    std::fs::write(&config, "poll_secs = \"thirty\"\n").unwrap();
    node.signal("HUP");
    soon("the refusal is logged", || node.log().contains("reload refused"));
    node.api.beat_ok(&mut session);
    let third = node.api.start_ok(&user, &grant_signed(&user, "k2", KEY_K2));
    assert!(third.token.starts_with("s1.s2."));
    assert!(!node.log().contains(KEY_K2) && !node.log().contains(KEY_S2), "secrets must never be logged");
}
