//! A DRM licence server can verify lease tokens offline, holding only the
//! server keys: the library's `Lease::verify` is all it needs. A stopped
//! session's last token stops verifying at its expiry, so licences tied to
//! it cannot be renewed past that.

mod common;

use common::*;
use streamcap::config::DEV_SERVER_KEY;
use streamcap::keys::{Key, KeyRing};
use streamcap::token::Lease;

#[test]
fn a_licence_server_verifies_tokens_with_the_server_key_alone() {
    let server = TestServer::dev();
    let user = unique("licensed");
    let session = server.api.start_ok(&user, &grant(&user, 2));

    // The licence server: no connection to streamcap, only its keys.
    let keys = KeyRing::new(vec![Key::parse("dev", DEV_SERVER_KEY).unwrap()]).unwrap();
    let now_ms = now_secs() as u64 * 1000;
    let lease = Lease::verify(&session.token, &keys, now_ms).expect("a fresh token verifies offline");
    let claims = lease.claims();
    assert_eq!((claims.tenant, claims.user), ("demo", user.as_str()));
    assert_eq!(claims.session.to_string(), session.id);
    assert!(claims.expires_ms > now_ms);

    // It refuses what streamcap did not sign, and the token once expired.
    let other = KeyRing::new(vec![Key::parse("dev", &"ab".repeat(32)).unwrap()]).unwrap();
    assert!(Lease::verify(&session.token, &other, now_ms).is_err());
    assert!(Lease::verify(&flip(&session.token, 12), &keys, now_ms).is_err());
    assert!(Lease::verify(&session.token, &keys, claims.expires_ms + 5_001).is_err());
}
