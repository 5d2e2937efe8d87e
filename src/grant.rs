//! Grants (docs/spec.md §2): `g1.<base64url JSON>.<base64url keyed-BLAKE3 MAC>`,
//! minted by a tenant's backend. This module parses, authenticates and
//! validates them, and mints them for tools and tests. It holds no state.

use std::borrow::Cow;
use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

use crate::keys::{Key, KeyRing};
use crate::wire::{self, Policy};

const PREFIX: &str = "g1.";
const MAC_B64_LEN: usize = 43;

/// Why a grant was refused; the text is safe to show the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidGrant(pub &'static str);

/// A tenant: its keys (first is the default for grants without `kid`) and
/// the policy used when a grant names none.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub keys: KeyRing,
    pub default_policy: Policy,
}

/// Tenants by id.
pub type Tenants = HashMap<Box<str>, Tenant, ahash::RandomState>;

/// The server's bounds for a grant's `poll`.
#[derive(Clone, Copy, Debug)]
pub struct PollBounds {
    pub default: u32,
    pub min: u32,
    pub max: u32,
}

impl PollBounds {
    /// The bounds a server has when none are configured.
    pub const DEFAULT: PollBounds = PollBounds {
        default: wire::DEFAULT_POLL_SECS,
        min: wire::DEFAULT_MIN_POLL_SECS,
        max: wire::DEFAULT_MAX_POLL_SECS,
    };

    fn clamp(self, poll: Option<i64>) -> u32 {
        match poll {
            None => self.default,
            Some(p) => p.clamp(self.min as i64, self.max as i64) as u32,
        }
    }
}

/// A verified grant: "user `sub` of `tenant` may start a stream under these limits".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub tenant: Box<str>,
    pub sub: Box<str>,
    pub limit: u32,
    pub policy: Policy,
    /// `(group, group_limit)`.
    pub group: Option<(Box<str>, u32)>,
    pub device: Option<Box<str>>,
    pub label: Option<Box<str>>,
    pub content: Option<Box<str>>,
    /// Clamped to the server's bounds.
    pub poll_secs: u32,
}

/// The JSON payload, as a backend writes it. Also what `mint` serialises.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GrantClaims<'a> {
    #[serde(borrow)]
    pub tenant: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub sub: Cow<'a, str>,
    pub limit: i64,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_limit: Option<i64>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Cow<'a, str>>,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll: Option<i64>,
}

impl GrantClaims<'_> {
    /// Mints `g1.<payload>.<mac>` with `secret` (the key named by `kid`, or
    /// the tenant's first key).
    pub fn mint(&self, secret: &[u8; 32]) -> String {
        let json = serde_json::to_vec(self).expect("a struct of strings and integers serialises");
        let mut token = String::with_capacity(PREFIX.len() + json.len() * 4 / 3 + 48);
        token.push_str(PREFIX);
        B64.encode_string(&json, &mut token);
        let mac = blake3::keyed_hash(secret, token.as_bytes());
        token.push('.');
        B64.encode_string(mac.as_bytes(), &mut token);
        token
    }
}

/// Authenticates and validates a grant at `now_ms` (Unix milliseconds).
pub fn verify(token: &str, tenants: &Tenants, bounds: PollBounds, now_ms: u64) -> Result<Grant, InvalidGrant> {
    if token.len() > wire::MAX_GRANT_LEN {
        return Err(InvalidGrant("grant is too long"));
    }
    let (signed, mac) = token.rsplit_once('.').ok_or(InvalidGrant("malformed grant"))?;
    let payload = signed.strip_prefix(PREFIX).ok_or(InvalidGrant("not a g1 grant"))?;
    let mac = decode_mac(mac).ok_or(InvalidGrant("malformed grant signature"))?;
    let json = B64.decode(payload).map_err(|_| InvalidGrant("grant payload is not base64url"))?;
    let claims: GrantClaims<'_> =
        serde_json::from_slice(&json).map_err(|_| InvalidGrant("grant payload is not valid"))?;

    let tenant = tenants.get(&*claims.tenant).ok_or(InvalidGrant("unknown tenant"))?;
    let key: &Key = match &claims.kid {
        Some(kid) => tenant.keys.find(kid).ok_or(InvalidGrant("unknown key id"))?,
        None => tenant.keys.signing(),
    };
    // `Hash == [u8; 32]` compares in constant time.
    if blake3::keyed_hash(&key.secret, signed.as_bytes()) != mac {
        return Err(InvalidGrant("grant signature does not match"));
    }
    validate(claims, tenant, bounds, now_ms)
}

fn decode_mac(b64: &str) -> Option<[u8; 32]> {
    if b64.len() != MAC_B64_LEN {
        return None;
    }
    let mut mac = [0u8; 32];
    match B64.decode_slice(b64, &mut mac) {
        Ok(32) => Some(mac),
        _ => None,
    }
}

fn validate(c: GrantClaims<'_>, tenant: &Tenant, bounds: PollBounds, now_ms: u64) -> Result<Grant, InvalidGrant> {
    if !wire::is_tenant_id(&c.tenant) {
        return Err(InvalidGrant("tenant is not valid"));
    }
    if !wire::is_name(&c.sub, wire::MAX_USER_LEN) {
        return Err(InvalidGrant("sub (the user id) must be 1-128 characters of [A-Za-z0-9._~-]"));
    }
    let limit = bounded_limit(c.limit).ok_or(InvalidGrant("limit must be an integer 1-1000"))?;
    let policy = match c.policy.as_deref() {
        None => tenant.default_policy,
        Some(p) => {
            p.parse().map_err(|_| InvalidGrant("policy must be reject_new, evict_oldest or reject_new_device"))?
        }
    };
    let group = match (c.group, c.group_limit) {
        (None, None) => None,
        (Some(g), Some(gl)) => {
            if !wire::is_name(&g, wire::MAX_GROUP_LEN) {
                return Err(InvalidGrant("group must be 1-64 characters of [A-Za-z0-9._~-]"));
            }
            let gl = bounded_limit(gl).ok_or(InvalidGrant("group_limit must be an integer 1-1000"))?;
            Some((boxed(g), gl))
        }
        (Some(_), None) => return Err(InvalidGrant("group needs group_limit")),
        (None, Some(_)) => return Err(InvalidGrant("group_limit needs group")),
    };
    if let Some(d) = &c.device {
        if !wire::is_device(d) {
            return Err(InvalidGrant("device must be 1-128 printable ASCII characters"));
        }
    } else if policy == Policy::RejectNewDevice {
        return Err(InvalidGrant("policy reject_new_device needs a device"));
    }
    if c.label.as_ref().is_some_and(|l| l.len() > wire::MAX_LABEL_LEN) {
        return Err(InvalidGrant("label is longer than 64 bytes"));
    }
    if c.content.as_ref().is_some_and(|l| l.len() > wire::MAX_CONTENT_LEN) {
        return Err(InvalidGrant("content is longer than 128 bytes"));
    }
    let exp_ms = u64::try_from(c.exp).unwrap_or(0).saturating_mul(1000);
    if now_ms > exp_ms.saturating_add(wire::GRANT_LEEWAY_MS) {
        return Err(InvalidGrant("grant has expired"));
    }
    Ok(Grant {
        tenant: boxed(c.tenant),
        sub: boxed(c.sub),
        limit,
        policy,
        group,
        device: c.device.map(boxed),
        // An empty display text is the same as none: lists show `null`,
        // before and after a session is rebuilt from its token.
        label: c.label.filter(|l| !l.is_empty()).map(boxed),
        content: c.content.filter(|l| !l.is_empty()).map(boxed),
        poll_secs: bounds.clamp(c.poll),
    })
}

fn bounded_limit(v: i64) -> Option<u32> {
    (1..=wire::MAX_LIMIT as i64).contains(&v).then_some(v as u32)
}

fn boxed(s: Cow<'_, str>) -> Box<str> {
    s.into_owned().into_boxed_str()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const NOW_MS: u64 = 1_700_000_000_000;
    pub const SECRET: [u8; 32] = [7u8; 32];

    pub fn tenants() -> Tenants {
        let keys =
            KeyRing::new(vec![Key { kid: "k1".into(), secret: SECRET }, Key { kid: "k0".into(), secret: [9u8; 32] }])
                .unwrap();
        let mut t = Tenants::default();
        t.insert("acme".into(), Tenant { keys, default_policy: Policy::RejectNew });
        t
    }

    pub const BOUNDS: PollBounds = PollBounds { default: 30, min: 1, max: 3600 };

    pub fn claims(sub: &str) -> GrantClaims<'static> {
        GrantClaims {
            tenant: "acme".into(),
            sub: sub.to_owned().into(),
            limit: 2,
            exp: (NOW_MS / 1000 + 60) as i64,
            ..Default::default()
        }
    }

    fn check(c: &GrantClaims<'_>) -> Result<Grant, InvalidGrant> {
        verify(&c.mint(&SECRET), &tenants(), BOUNDS, NOW_MS)
    }

    #[test]
    fn minted_grant_verifies_with_defaults() {
        let g = check(&claims("alice")).unwrap();
        assert_eq!((&*g.tenant, &*g.sub, g.limit), ("acme", "alice", 2));
        assert_eq!(g.policy, Policy::RejectNew);
        assert_eq!(g.poll_secs, 30);
        assert_eq!(g.group, None);
    }

    #[test]
    fn kid_selects_the_key() {
        let mut c = claims("alice");
        c.kid = Some("k0".into());
        assert!(verify(&c.mint(&[9u8; 32]), &tenants(), BOUNDS, NOW_MS).is_ok());
        assert!(verify(&c.mint(&SECRET), &tenants(), BOUNDS, NOW_MS).is_err());
        c.kid = Some("nope".into());
        assert_eq!(check(&c), Err(InvalidGrant("unknown key id")));
    }

    #[test]
    fn tampering_is_detected() {
        let token = claims("alice").mint(&SECRET);
        let forged = claims("mallory").mint(&[1u8; 32]);
        let (_, mac) = token.rsplit_once('.').unwrap();
        let (payload, _) = forged.rsplit_once('.').unwrap();
        let spliced = format!("{payload}.{mac}");
        assert!(verify(&spliced, &tenants(), BOUNDS, NOW_MS).is_err());
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] ^= 0x01;
            if let Ok(t) = String::from_utf8(bytes) {
                assert!(verify(&t, &tenants(), BOUNDS, NOW_MS).is_err(), "flip at {i}");
            }
        }
    }

    #[test]
    fn expiry_has_thirty_seconds_leeway() {
        let mut c = claims("alice");
        c.exp = (NOW_MS / 1000 - 30) as i64;
        assert!(check(&c).is_ok());
        c.exp = (NOW_MS / 1000 - 31) as i64;
        assert_eq!(check(&c), Err(InvalidGrant("grant has expired")));
    }

    #[test]
    fn field_rules() {
        type Edit = Box<dyn Fn(&mut GrantClaims<'static>)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("limit 0", Box::new(|c| c.limit = 0)),
            ("limit 1001", Box::new(|c| c.limit = 1001)),
            ("bad sub", Box::new(|c| c.sub = "a b".into())),
            ("bad policy", Box::new(|c| c.policy = Some("lru".into()))),
            ("group without limit", Box::new(|c| c.group = Some("studio".into()))),
            ("limit without group", Box::new(|c| c.group_limit = Some(1))),
            ("device needed", Box::new(|c| c.policy = Some("reject_new_device".into()))),
            ("long label", Box::new(|c| c.label = Some("x".repeat(65).into()))),
            ("long content", Box::new(|c| c.content = Some("x".repeat(129).into()))),
            ("unknown tenant", Box::new(|c| c.tenant = "other".into())),
        ];
        for (name, edit) in cases {
            let mut c = claims("alice");
            edit(&mut c);
            assert!(check(&c).is_err(), "{name} should be refused");
        }
    }

    #[test]
    fn poll_is_clamped_and_optional_fields_kept() {
        let mut c = claims("alice");
        c.poll = Some(0);
        c.group = Some("studio-a".into());
        c.group_limit = Some(1);
        c.device = Some("tv-1".into());
        c.label = Some("Living room TV".into());
        c.policy = Some("evict_oldest".into());
        let g = check(&c).unwrap();
        assert_eq!(g.poll_secs, 1);
        assert_eq!(g.group, Some(("studio-a".into(), 1)));
        assert_eq!(g.device.as_deref(), Some("tv-1"));
        assert_eq!(g.policy, Policy::EvictOldest);
        c.poll = Some(1_000_000);
        assert_eq!(check(&c).unwrap().poll_secs, 3600);
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        let t = tenants();
        for junk in ["", ".", "g1.", "g1..", "g1.!!!.???", "s1.a.b.c", "g1.e30.AAAA", "\u{1F600}.\u{1F600}"] {
            assert!(verify(junk, &t, BOUNDS, NOW_MS).is_err(), "{junk:?}");
        }
        let body = B64.encode(b"{\"tenant\":\"acme\"}");
        let signed = format!("g1.{body}");
        let mac = B64.encode(blake3::keyed_hash(&SECRET, signed.as_bytes()).as_bytes());
        assert!(verify(&format!("{signed}.{mac}"), &t, BOUNDS, NOW_MS).is_err());
    }
}
