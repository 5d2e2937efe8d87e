//! Lease tokens (docs/spec.md §3), chosen by the first byte:
//!
//! - raw: any bytes, as lossy UTF-8, into `Lease::verify` with the dev server
//!   keys at an arbitrary time. Nothing may panic; an accepted token renews
//!   and verifies back to the same claims with only the expiry changed.
//! - round trip: structured `LeaseClaims` within the domain the server mints
//!   (the docs/spec.md §2 field rules) → `mint` → `verify` must give back the same
//!   claims (only `content`, then `label`, may be shortened, and only when
//!   the token would otherwise pass 512 bytes) → `renew` → `verify`.
//!   `mint` may refuse only when the identifying fields alone do not fit.
//! - signed payload: arbitrary bytes as a correctly signed payload: the
//!   layout parser behind the MAC must refuse or decode without a panic.
#![no_main]

use arbitrary::{Result, Unstructured};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use libfuzzer_sys::fuzz_target;
use streamcap::keys::{Key, KeyRing};
use streamcap::token::{Lease, LeaseClaims};
use streamcap::wire::{Policy, SessionId};
use streamcap_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            let mut u = Unstructured::new(rest);
            let Ok(now) = now(&mut u) else { return };
            let text = String::from_utf8_lossy(u.take_rest());
            if let Ok(lease) = Lease::verify(&text, &server_ring(), now) {
                renew_round_trip(&lease, &server_ring());
            }
        }
        1 => {
            let _ = round_trip(&mut Unstructured::new(rest));
        }
        _ => {
            let key = server_key();
            let mut token = format!("s1.{}.", key.kid);
            B64.encode_string(rest, &mut token);
            let mac = blake3::keyed_hash(&key.secret, token.as_bytes());
            token.push('.');
            B64.encode_string(mac.as_bytes(), &mut token);
            if let Ok(lease) = Lease::verify(&token, &server_ring(), 0) {
                let c = lease.claims();
                assert!(!c.tenant.is_empty() && !c.user.is_empty(), "{c:?}");
                renew_round_trip(&lease, &server_ring());
            }
        }
    }
});

fn now(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => 0,
        1 => NOW_MS,
        2 => u64::MAX,
        _ => u.arbitrary()?,
    })
}

/// Renewing changes the expiry and nothing else; the old token is unaffected.
fn renew_round_trip(lease: &Lease, ring: &KeyRing) {
    let before = lease.claims();
    let new_exp = before.expires_ms.wrapping_add(90_000);
    let renewed = lease.renew(new_exp, ring);
    assert!(renewed.len() <= 512, "renewed token of {} bytes", renewed.len());
    let again = Lease::verify(&renewed, ring, 0).expect("a renewed token verifies");
    assert_eq!(LeaseClaims { expires_ms: before.expires_ms, ..again.claims() }, before);
    assert_eq!(again.claims().expires_ms, new_exp);
}

/// Owned strings for `LeaseClaims`, which borrows.
struct Owned {
    tenant: String,
    user: String,
    group: Option<(String, u32)>,
    device: Option<String>,
    label: Option<String>,
    content: Option<String>,
}

fn round_trip(u: &mut Unstructured<'_>) -> Result<()> {
    // Mostly what a verified grant can hold (docs/spec.md §2); one time in eight,
    // fields past what the layout carries (strings over 255 bytes, numbers
    // over 65 535), which `mint` must refuse. Kids of 1-16 characters.
    let wide = u.ratio(1, 8)?;
    let (long, big) = if wide { (300, 70_000) } else { (0, 0) };
    let o = Owned {
        tenant: valid_name(u, TENANT_CHARS, 64.max(long))?,
        user: valid_name(u, NAME_CHARS, 128.max(long))?,
        group: if u.arbitrary()? {
            Some((valid_name(u, NAME_CHARS, 64.max(long))?, u.int_in_range(1..=1000.max(big))?))
        } else {
            None
        },
        device: if u.arbitrary()? { Some(valid_device(u, 128.max(long))?) } else { None },
        label: if u.arbitrary()? { Some(display(u, 64.max(long))?) } else { None },
        content: if u.arbitrary()? { Some(display(u, 128.max(long))?) } else { None },
    };
    let claims = LeaseClaims {
        tenant: &o.tenant,
        user: &o.user,
        session: SessionId(u.arbitrary()?),
        started_ms: u.arbitrary()?,
        expires_ms: u.arbitrary()?,
        limit: u.int_in_range(1..=1000.max(big))?,
        policy: *u.choose(&[Policy::RejectNew, Policy::EvictOldest, Policy::RejectNewDevice])?,
        group: o.group.as_ref().map(|(g, l)| (g.as_str(), *l)),
        device: o.device.as_deref(),
        label: o.label.as_deref(),
        content: o.content.as_deref(),
        poll_secs: u.int_in_range(1..=65535.max(big))?,
    };
    let strs = [
        Some(claims.tenant),
        Some(claims.user),
        claims.group.map(|g| g.0),
        claims.device,
        claims.label,
        claims.content,
    ];
    let numbers = [claims.limit, claims.group.map_or(0, |g| g.1), claims.poll_secs];
    let unrepresentable = strs.iter().flatten().any(|s| s.len() > 255) || numbers.iter().any(|n| *n > 65_535);
    let kid = valid_name(u, TENANT_CHARS, 16)?;
    if kid == "zz-other" {
        return Ok(());
    }
    let key = Key { kid: kid.clone().into(), secret: u.arbitrary()? };
    let ring = KeyRing::new(vec![Key { kid: "zz-other".into(), secret: [3; 32] }, key.clone()]).expect("ring");

    // The payload budget: room for the longest kid (see `LeaseClaims::mint`).
    let budget = (512 - 3 - 16 - 2 - 22) * 3 / 4;
    // Empty strings are written as absent.
    let len = |s: Option<&str>| s.filter(|s| !s.is_empty()).map_or(0, |s| 1 + s.len());
    let identifying =
        31 + len(Some(claims.tenant)) + len(Some(claims.user)) + len(claims.group.map(|g| g.0)) + len(claims.device);
    let full = identifying + len(claims.label) + len(claims.content);

    let Some(token) = claims.mint(&key) else {
        assert!(
            unrepresentable || identifying > budget,
            "mint refused claims whose identifying fields fit ({identifying} <= {budget})"
        );
        return Ok(());
    };
    assert!(!unrepresentable, "minted a token for claims the layout cannot carry");
    assert!(identifying <= budget, "minted a token for claims that cannot fit");
    assert!(token.len() <= 512, "token of {} bytes", token.len());
    assert!(token.starts_with(&format!("s1.{kid}.")), "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)), "not URL-safe: {token}");

    let lease = match Lease::verify(&token, &ring, claims.expires_ms.saturating_add(5_000)) {
        Ok(lease) => lease,
        Err(e) => panic!("a freshly minted token does not verify ({e:?}): {token}"),
    };
    let got = lease.claims();
    let same_ids = LeaseClaims { label: claims.label, content: claims.content, ..got };
    assert_eq!(same_ids, claims, "identifying claims changed in the round trip");
    // Display text may only lose a tail. An empty string reads back as
    // absent (grants never carry one: the grant validator drops it).
    let prefix = |had: Option<&str>, got: Option<&str>| had.unwrap_or("").starts_with(got.unwrap_or(""));
    assert!(prefix(claims.label, got.label), "label {:?} -> {:?}", claims.label, got.label);
    assert!(prefix(claims.content, got.content), "content {:?} -> {:?}", claims.content, got.content);
    if full <= budget {
        // Nothing needed shortening: only "" may read back as absent.
        assert_eq!(got.label.unwrap_or(""), claims.label.unwrap_or(""));
        assert_eq!(got.content.unwrap_or(""), claims.content.unwrap_or(""));
    } else if got.label.unwrap_or("") != claims.label.unwrap_or("") {
        // The label is cut only once the content is gone.
        assert_eq!(got.content, None, "label shortened while content remains");
    }
    // Accepted until expiry + 5 s, not a millisecond longer.
    if let Some(late) = claims.expires_ms.checked_add(5_001) {
        assert!(Lease::verify(&token, &ring, late).is_err(), "accepted after expiry + 5 s");
    }
    // Any other key ring refuses it.
    let foreign = KeyRing::new(vec![Key { kid: key.kid.clone(), secret: flip(key.secret) }]).expect("ring");
    assert!(Lease::verify(&token, &foreign, 0).is_err(), "verified with a different secret");

    renew_round_trip(&lease, &ring);
    // Renewal under the newest key, whose id may be longer, spells what a
    // fresh mint with the new expiry would.
    let newest = Key { kid: "k".repeat(u.int_in_range(1..=16)?).into(), secret: [4; 32] };
    if newest.kid == key.kid {
        return Ok(());
    }
    let rotated = KeyRing::new(vec![newest, key.clone()]).expect("ring");
    let new_exp = u.arbitrary()?;
    let fresh = LeaseClaims { expires_ms: new_exp, ..got }.mint(rotated.signing());
    assert_eq!(Some(lease.renew(new_exp, &rotated)), fresh, "renewal differs from a fresh mint");
    Ok(())
}

fn flip(mut s: [u8; 32]) -> [u8; 32] {
    s[0] ^= 1;
    s
}

fn valid_name(u: &mut Unstructured<'_>, charset: &[u8], max: usize) -> Result<String> {
    let n = if u.ratio(1, 8)? { max } else { u.int_in_range(1..=max.min(16))? };
    (0..n).map(|_| Ok(charset[u.choose_index(charset.len())?] as char)).collect()
}

fn valid_device(u: &mut Unstructured<'_>, max: usize) -> Result<String> {
    let n = if u.ratio(1, 8)? { max } else { u.int_in_range(1..=24)? };
    (0..n).map(|_| Ok(u.int_in_range(0x20u8..=0x7e)? as char)).collect()
}
