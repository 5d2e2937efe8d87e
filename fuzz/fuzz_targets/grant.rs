//! `streamcap::grant::verify` (docs/spec.md §2) three ways, chosen by the first byte:
//!
//! - raw: any bytes, as lossy UTF-8, must be refused or accepted without a
//!   panic; an accepted grant must satisfy every field rule.
//! - claims: structured claims minted with the dev tenant key (so the MAC
//!   passes and the validator runs), then perhaps mutated. Unmutated, the
//!   answer must equal an independent oracle written from docs/spec.md §2; any
//!   mutation that changes the text must be refused.
//! - payload: arbitrary bytes as the JSON payload, correctly signed: serde's
//!   parsing behind a valid MAC must never panic, and an accepted grant must
//!   satisfy every field rule.
#![no_main]

use std::borrow::Cow;

use arbitrary::{Result, Unstructured};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use libfuzzer_sys::fuzz_target;
use streamcap::grant::{Grant, GrantClaims, verify};
use streamcap::wire::Policy;
use streamcap_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let tenants = tenants();
    match mode % 3 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(g) = verify(&text, &tenants, BOUNDS, NOW_MS) {
                check_rules(&g);
            }
        }
        1 => {
            let _ = claims_case(&mut Unstructured::new(rest));
        }
        _ => {
            let mut token = String::from("g1.");
            B64.encode_string(rest, &mut token);
            let mac = blake3::keyed_hash(&tenant_secret(), token.as_bytes());
            token.push('.');
            B64.encode_string(mac.as_bytes(), &mut token);
            if let Ok(g) = verify(&token, &tenants, BOUNDS, NOW_MS) {
                check_rules(&g);
            }
        }
    }
});

/// Owned claims, built from `Unstructured`.
#[derive(Debug)]
struct Claims {
    tenant: String,
    kid: Option<String>,
    sub: String,
    limit: i64,
    policy: Option<String>,
    group: Option<String>,
    group_limit: Option<i64>,
    device: Option<String>,
    label: Option<String>,
    content: Option<String>,
    exp: i64,
    poll: Option<i64>,
}

fn opt<T>(u: &mut Unstructured<'_>, f: impl FnOnce(&mut Unstructured<'_>) -> Result<T>) -> Result<Option<T>> {
    Ok(if u.arbitrary()? { Some(f(u)?) } else { None })
}

fn gen_claims(u: &mut Unstructured<'_>) -> Result<Claims> {
    let tenant = if u.ratio(7, 8)? { TENANT.to_owned() } else { name(u, TENANT_CHARS, 64)? };
    let kid = opt(u, |u| Ok(if u.ratio(3, 4)? { "dev".to_owned() } else { name(u, TENANT_CHARS, 16)? }))?;
    let policy = opt(u, |u| {
        Ok(match u.int_in_range(0u8..=4)? {
            0 => "reject_new".to_owned(),
            1 => "evict_oldest".to_owned(),
            2 => "reject_new_device".to_owned(),
            3 => "Reject_New".to_owned(),
            _ => u.arbitrary()?,
        })
    })?;
    let exp_secs = (NOW_MS / 1000) as i64;
    Ok(Claims {
        tenant,
        kid,
        sub: name(u, NAME_CHARS, 128)?,
        limit: bounded(u, 1, 1000)?,
        policy,
        group: opt(u, |u| name(u, NAME_CHARS, 64))?,
        group_limit: opt(u, |u| bounded(u, 1, 1000))?,
        device: opt(u, device)?,
        label: opt(u, |u| display(u, 64))?,
        content: opt(u, |u| display(u, 128))?,
        exp: match u.int_in_range(0u8..=5)? {
            0 => exp_secs - 30,
            1 => exp_secs - 31,
            2 => u.arbitrary()?,
            _ => exp_secs + u.int_in_range(-100..=100_000)?,
        },
        poll: opt(u, |u| bounded(u, 1, 3600))?,
    })
}

enum Mutation {
    None,
    WrongKey,
    Flip { at: usize, to: u8 },
    Truncate(usize),
    Append(char),
}

fn claims_case(u: &mut Unstructured<'_>) -> Result<()> {
    let c = gen_claims(u)?;
    let gc = GrantClaims {
        tenant: Cow::Borrowed(&c.tenant),
        kid: c.kid.as_deref().map(Cow::Borrowed),
        sub: Cow::Borrowed(&c.sub),
        limit: c.limit,
        policy: c.policy.as_deref().map(Cow::Borrowed),
        group: c.group.as_deref().map(Cow::Borrowed),
        group_limit: c.group_limit,
        device: c.device.as_deref().map(Cow::Borrowed),
        label: c.label.as_deref().map(Cow::Borrowed),
        content: c.content.as_deref().map(Cow::Borrowed),
        exp: c.exp,
        poll: c.poll,
    };
    let mutation = match u.int_in_range(0u8..=7)? {
        0 => Mutation::WrongKey,
        1 => Mutation::Flip { at: u.arbitrary()?, to: u.arbitrary()? },
        2 => Mutation::Truncate(u.arbitrary()?),
        3 => Mutation::Append(u.arbitrary()?),
        _ => Mutation::None,
    };
    let secret = match mutation {
        Mutation::WrongKey => [0x5a; 32],
        _ => tenant_secret(),
    };
    let original = gc.mint(&secret);
    let mut token = original.clone();
    match mutation {
        Mutation::None | Mutation::WrongKey => {}
        Mutation::Flip { at, to } => {
            if !token.is_empty() {
                let at = at % token.len();
                let mut bytes = token.clone().into_bytes();
                bytes[at] = to;
                token = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        Mutation::Truncate(n) => token.truncate(n % (token.len() + 1)),
        Mutation::Append(ch) => token.push(ch),
    }
    let got = verify(&token, &tenants(), BOUNDS, NOW_MS);
    if let Ok(g) = &got {
        check_rules(g);
    }
    match mutation {
        Mutation::None => {
            let want = oracle(&c, token.len());
            match (&got, &want) {
                (Ok(g), Some(w)) => assert_eq!(g, w, "accepted grant differs from its claims: {c:?}"),
                (Err(_), None) => {}
                _ => panic!("verify {got:?} but docs/spec.md §2 says {want:?} for {c:?}"),
            }
        }
        Mutation::WrongKey => assert!(got.is_err(), "a grant signed with another key was accepted: {c:?}"),
        _ if token != original => assert!(got.is_err(), "a changed grant was accepted: {token:?} (from {original:?})"),
        _ => {}
    }
    Ok(())
}

/// docs/spec.md §2, written independently of `streamcap::wire`: the grant `c`
/// becomes, or `None` if it must be refused.
fn oracle(c: &Claims, len: usize) -> Option<Grant> {
    if len > 4096 || c.tenant != TENANT {
        return None;
    }
    if c.kid.as_deref().is_some_and(|k| k != "dev") {
        return None;
    }
    if !is_of(&c.sub, NAME_CHARS, 128) || !(1..=1000).contains(&c.limit) {
        return None;
    }
    let policy = match c.policy.as_deref() {
        None => Policy::RejectNew,
        Some("reject_new") => Policy::RejectNew,
        Some("evict_oldest") => Policy::EvictOldest,
        Some("reject_new_device") => Policy::RejectNewDevice,
        Some(_) => return None,
    };
    let group = match (&c.group, c.group_limit) {
        (None, None) => None,
        (Some(g), Some(gl)) if is_of(g, NAME_CHARS, 64) && (1..=1000).contains(&gl) => {
            Some((g.as_str().into(), gl as u32))
        }
        _ => return None,
    };
    match &c.device {
        Some(d) if d.is_empty() || d.len() > 128 || !d.bytes().all(|b| (0x20..=0x7e).contains(&b)) => return None,
        None if policy == Policy::RejectNewDevice => return None,
        _ => {}
    }
    if c.label.as_ref().is_some_and(|l| l.len() > 64) || c.content.as_ref().is_some_and(|l| l.len() > 128) {
        return None;
    }
    if (c.exp as i128) * 1000 + 30_000 < NOW_MS as i128 {
        return None;
    }
    let poll_secs = match c.poll {
        None => BOUNDS.default,
        Some(p) => p.clamp(BOUNDS.min as i64, BOUNDS.max as i64) as u32,
    };
    Some(Grant {
        tenant: c.tenant.as_str().into(),
        sub: c.sub.as_str().into(),
        limit: c.limit as u32,
        policy,
        group,
        device: c.device.as_deref().map(Into::into),
        // An empty display text is the same as none.
        label: c.label.as_deref().filter(|l| !l.is_empty()).map(Into::into),
        content: c.content.as_deref().filter(|l| !l.is_empty()).map(Into::into),
        poll_secs,
    })
}

/// What every accepted grant satisfies, whatever produced it.
fn check_rules(g: &Grant) {
    assert_eq!(&*g.tenant, TENANT);
    assert!(is_of(&g.sub, NAME_CHARS, 128), "sub {:?}", g.sub);
    assert!((1..=1000).contains(&g.limit), "limit {}", g.limit);
    if let Some((name, limit)) = &g.group {
        assert!(is_of(name, NAME_CHARS, 64) && (1..=1000).contains(limit), "group {:?}", g.group);
    }
    if let Some(d) = &g.device {
        assert!(!d.is_empty() && d.len() <= 128 && d.bytes().all(|b| (0x20..=0x7e).contains(&b)), "device {d:?}");
    } else {
        assert_ne!(g.policy, Policy::RejectNewDevice, "reject_new_device without a device");
    }
    assert!(g.label.as_ref().is_none_or(|l| !l.is_empty() && l.len() <= 64), "label {:?}", g.label);
    assert!(g.content.as_ref().is_none_or(|l| !l.is_empty() && l.len() <= 128), "content {:?}", g.content);
    assert!((BOUNDS.min..=BOUNDS.max).contains(&g.poll_secs));
}
