//! The configuration file (docs/spec.md §8), chosen by the
//! first byte:
//!
//! - raw: any text into `config::parse_file`; what parses is written to a
//!   file and loaded with `Config::load` exactly as `streamcap serve
//!   --config FILE` does.
//! - structured: a TOML file built from settings that are usually valid and
//!   sometimes not; `Config::load` must accept it exactly when an oracle of
//!   the documented rules says so, and carry every setting through.
//!
//! Either way nothing may panic, an accepted configuration is internally
//! consistent, and neither an error nor the startup summary may contain a
//! secret (SECURITY.md "Secrets are never logged or echoed").
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use streamcap::config::{Config, Overrides, parse_file};
use streamcap::token::LeaseClaims;
use streamcap::wire::{Policy, SessionId};
use streamcap_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        let text = String::from_utf8_lossy(rest);
        if parse_file(&text).is_ok() {
            let secrets = secrets_in(&text);
            let loaded = load(&text);
            check(&text, &secrets, &loaded);
        }
    } else {
        let _ = structured(&mut Unstructured::new(rest));
    }
});

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("streamcap-fuzz-config-{}.toml", std::process::id())))
}

fn load(text: &str) -> std::result::Result<Config, String> {
    std::fs::write(path(), text).expect("write the config file");
    Config::load(&Overrides { config: Some(path().clone()), ..Default::default() }, None)
}

/// Every string value of a `secret` key, found with the `toml` crate itself.
fn secrets_in(text: &str) -> Vec<String> {
    fn walk(v: &toml::Value, key: Option<&str>, out: &mut Vec<String>) {
        match v {
            toml::Value::String(s) if key == Some("secret") => out.push(s.clone()),
            toml::Value::Array(a) => a.iter().for_each(|v| walk(v, key, out)),
            toml::Value::Table(t) => t.iter().for_each(|(k, v)| walk(v, Some(k), out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(table) = text.parse::<toml::Table>() {
        walk(&toml::Value::Table(table), None, &mut out);
    }
    out
}

/// The properties that hold for any input.
fn check(text: &str, secrets: &[String], loaded: &std::result::Result<Config, String>) {
    // A secret may be echoed only if the same text also appears as something
    // other than a secret (then it is not the secret being echoed); short
    // strings are ignored, they appear everywhere by chance.
    let leaks = |out: &str| {
        secrets.iter().find(|s| s.len() >= 16 && text.matches(s.as_str()).count() == 1 && out.contains(s.as_str()))
    };
    match loaded {
        Err(e) => assert!(leaks(e).is_none(), "an error echoes a secret: {e}"),
        Ok(c) => {
            assert!(!c.dev_mode, "a config file gave dev mode");
            let summary = c.summary();
            assert!(leaks(&summary).is_none(), "the summary shows a secret: {summary}");
            assert!(!format!("{c:?}").contains(&hex(&c.core.server_keys.signing().secret)), "Debug shows a secret");
            let p = c.core.poll;
            assert!(1 <= p.min && p.min <= p.default && p.default <= p.max && p.max <= 65535, "{p:?}");
            assert!((1..=100).contains(&c.core.ttl_factor));
            assert!(c.core.max_sessions >= 1 && c.max_connections >= 1);
            assert!(!c.idle_timeout.is_zero() && !c.header_timeout.is_zero() && !c.sweep_interval.is_zero());
            assert!(!c.core.tenants.is_empty());
            for (id, t) in &c.core.tenants {
                assert!(is_of(id, TENANT_CHARS, 64), "tenant id {id:?}");
                assert!(t.keys.kids().all(|k| is_of(k, TENANT_CHARS, 16)));
            }
            // The longest token this configuration can mint still fits.
            let key = c.core.server_keys.signing();
            let claims = LeaseClaims {
                tenant: &"t".repeat(64),
                user: &"u".repeat(128),
                session: SessionId(1),
                started_ms: 1,
                expires_ms: u64::MAX,
                limit: 1000,
                policy: Policy::RejectNewDevice,
                group: None,
                device: Some(&"d".repeat(100)),
                label: Some(&"l".repeat(64)),
                content: Some(&"c".repeat(128)),
                poll_secs: p.max,
            };
            let token = claims.mint(key).expect("long but valid claims fit in a token");
            assert!(token.len() <= 512);
        }
    }
}

fn hex(secret: &[u8; 32]) -> String {
    secret.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- structured files and their oracle ------------------------------------------

struct KeyEntry {
    kid: String,
    secret: String,
}

struct TenantEntry {
    id: String,
    policy: Option<String>,
    keys: Vec<KeyEntry>,
}

#[derive(Default)]
struct File {
    listen: Option<String>,
    admin_listen: Option<String>,
    poll: Option<i64>,
    min_poll: Option<i64>,
    max_poll: Option<i64>,
    ttl_factor: Option<i64>,
    max_sessions: Option<i64>,
    max_connections: Option<i64>,
    idle: Option<i64>,
    header: Option<i64>,
    sweep: Option<i64>,
    cors: Option<Vec<String>>,
    unknown: Option<String>,
    server_keys: Vec<KeyEntry>,
    tenants: Vec<TenantEntry>,
}

fn num(u: &mut Unstructured<'_>, lo: i64, hi: i64) -> Result<Option<i64>> {
    if u.ratio(1, 2)? {
        return Ok(None);
    }
    Ok(Some(match u.int_in_range(0u8..=9)? {
        0 => -1,
        1 => 0,
        2 => u32::MAX as i64 + 1,
        3 => hi + 1,
        4 => lo,
        5 => hi,
        _ => u.int_in_range(lo..=hi)?,
    }))
}

fn secret(u: &mut Unstructured<'_>) -> Result<String> {
    let valid: String = (0..64).map(|_| Ok(b"0123456789abcdef"[u.choose_index(16)?] as char)).collect::<Result<_>>()?;
    Ok(match u.int_in_range(0u8..=11)? {
        0 => valid.to_uppercase(),
        1 => valid[..63].to_owned(),
        2 => format!("{valid}0"),
        3 => format!("{}g", &valid[..63]),
        4 => u.arbitrary()?,
        _ => valid,
    })
}

fn key_entries(u: &mut Unstructured<'_>) -> Result<Vec<KeyEntry>> {
    let n = u.int_in_range(0..=3)?;
    (0..n)
        .map(|_| {
            let kid = if u.ratio(1, 2)? { format!("k{}", u.int_in_range(0..=3)?) } else { name(u, TENANT_CHARS, 16)? };
            Ok(KeyEntry { kid, secret: secret(u)? })
        })
        .collect()
}

fn addr(u: &mut Unstructured<'_>) -> Result<Option<String>> {
    if u.ratio(1, 2)? {
        return Ok(None);
    }
    Ok(Some(match u.int_in_range(0u8..=5)? {
        0 => "127.0.0.1:0".into(),
        1 => "[::1]:8080".into(),
        2 => "0.0.0.0:65535".into(),
        3 => "localhost:8080".into(),
        4 => "127.0.0.1:65536".into(),
        _ => u.arbitrary()?,
    }))
}

fn gen_file(u: &mut Unstructured<'_>) -> Result<File> {
    let mut f = File {
        listen: addr(u)?,
        admin_listen: addr(u)?,
        poll: num(u, 1, 100)?,
        min_poll: num(u, 1, 10)?,
        max_poll: num(u, 30, 65535)?,
        ttl_factor: num(u, 1, 100)?,
        max_sessions: num(u, 1, 1 << 40)?,
        max_connections: num(u, 1, 1 << 20)?,
        idle: num(u, 1, 3600)?,
        header: num(u, 1, 3600)?,
        sweep: num(u, 1, 60_000)?,
        cors: if u.ratio(1, 3)? { Some(u.arbitrary()?) } else { None },
        // An unknown key; a known one would only repeat or retype a setting.
        unknown: if u.ratio(1, 16)? {
            Some(u.arbitrary::<String>()?).filter(|k| !KNOWN.contains(&k.as_str()))
        } else {
            None
        },
        server_keys: key_entries(u)?,
        tenants: Vec::new(),
    };
    let n = u.int_in_range(0..=3)?;
    for _ in 0..n {
        let id = if u.ratio(1, 2)? { format!("t{}", u.int_in_range(0..=2)?) } else { name(u, TENANT_CHARS, 64)? };
        let policy = match u.int_in_range(0u8..=4)? {
            0 => None,
            1 => Some("evict_oldest".into()),
            2 => Some("reject_new_device".into()),
            3 => Some("reject_new".into()),
            _ => Some(u.arbitrary()?),
        };
        f.tenants.push(TenantEntry { id, policy, keys: key_entries(u)? });
    }
    Ok(f)
}

/// A TOML basic string.
fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML key: bare when it can be, else quoted.
fn key(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        s.into()
    } else {
        q(s)
    }
}

fn render(f: &File) -> String {
    let mut t = String::new();
    let mut line = |k: &str, v: String| t.push_str(&format!("{k} = {v}\n"));
    if let Some(v) = &f.listen {
        line("listen", q(v));
    }
    if let Some(v) = &f.admin_listen {
        line("admin_listen", q(v));
    }
    for (k, v) in [
        ("poll_secs", f.poll),
        ("min_poll_secs", f.min_poll),
        ("max_poll_secs", f.max_poll),
        ("ttl_factor", f.ttl_factor),
        ("max_sessions", f.max_sessions),
        ("max_connections", f.max_connections),
        ("idle_timeout_secs", f.idle),
        ("header_timeout_secs", f.header),
        ("sweep_millis", f.sweep),
    ] {
        if let Some(v) = v {
            line(k, v.to_string());
        }
    }
    if let Some(c) = &f.cors {
        line("cors_origins", format!("[{}]", c.iter().map(|o| q(o)).collect::<Vec<_>>().join(", ")));
    }
    if let Some(u) = &f.unknown {
        line(&key(u), "1".into());
    }
    for k in &f.server_keys {
        t.push_str(&format!("\n[[server_keys]]\nkid = {}\nsecret = {}\n", q(&k.kid), q(&k.secret)));
    }
    for tn in &f.tenants {
        t.push_str(&format!("\n[[tenants]]\nid = {}\n", q(&tn.id)));
        if let Some(p) = &tn.policy {
            t.push_str(&format!("default_policy = {}\n", q(p)));
        }
        let keys: Vec<String> =
            tn.keys.iter().map(|k| format!("{{ kid = {}, secret = {} }}", q(&k.kid), q(&k.secret))).collect();
        t.push_str(&format!("keys = [{}]\n", keys.join(", ")));
    }
    t
}

const KNOWN: &[&str] = &[
    "listen",
    "admin_listen",
    "poll_secs",
    "min_poll_secs",
    "max_poll_secs",
    "ttl_factor",
    "max_sessions",
    "max_connections",
    "idle_timeout_secs",
    "header_timeout_secs",
    "cors_origins",
    "sweep_millis",
    "server_keys",
    "tenants",
];

fn ring_ok(keys: &[KeyEntry]) -> bool {
    let unique = keys.iter().enumerate().all(|(i, k)| keys[..i].iter().all(|o| o.kid != k.kid));
    !keys.is_empty()
        && unique
        && keys.iter().all(|k| {
            is_of(&k.kid, TENANT_CHARS, 16)
                && k.secret.len() == 64
                && k.secret.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// Whether docs/spec.md §8's rules accept `f`.
fn oracle(f: &File) -> bool {
    if f.unknown.is_some() {
        return false;
    }
    let fits = |v: Option<i64>, max: i64| v.is_none_or(|v| (0..=max).contains(&v));
    let u32s = [f.poll, f.min_poll, f.max_poll, f.ttl_factor];
    if !u32s.iter().all(|v| fits(*v, u32::MAX as i64)) {
        return false;
    }
    let u64s = [f.max_sessions, f.max_connections, f.idle, f.header, f.sweep];
    if !u64s.iter().all(|v| fits(*v, i64::MAX)) {
        return false;
    }
    let is_addr = |a: &Option<String>| a.as_deref().is_none_or(|a| a.parse::<std::net::SocketAddr>().is_ok());
    if !is_addr(&f.listen) || !is_addr(&f.admin_listen) {
        return false;
    }
    let (min, default, max) = (f.min_poll.unwrap_or(1), f.poll.unwrap_or(30), f.max_poll.unwrap_or(3600));
    if !(1 <= min && min <= default && default <= max && max <= 65535) {
        return false;
    }
    if !(1..=100).contains(&f.ttl_factor.unwrap_or(3)) {
        return false;
    }
    if [f.max_sessions, f.max_connections, f.idle, f.header, f.sweep].contains(&Some(0)) {
        return false;
    }
    if !ring_ok(&f.server_keys) || f.tenants.is_empty() {
        return false;
    }
    f.tenants.iter().enumerate().all(|(i, t)| {
        is_of(&t.id, TENANT_CHARS, 64)
            && f.tenants[..i].iter().all(|o| o.id != t.id)
            && ring_ok(&t.keys)
            && t.policy.as_deref().is_none_or(|p| ["reject_new", "evict_oldest", "reject_new_device"].contains(&p))
    })
}

fn structured(u: &mut Unstructured<'_>) -> Result<()> {
    let f = gen_file(u)?;
    let text = render(&f);
    let loaded = load(&text);
    let mut secrets: Vec<String> = f.server_keys.iter().map(|k| k.secret.clone()).collect();
    secrets.extend(f.tenants.iter().flat_map(|t| t.keys.iter().map(|k| k.secret.clone())));
    check(&text, &secrets, &loaded);
    let want = oracle(&f);
    match &loaded {
        Ok(c) => {
            assert!(want, "accepted a file the rules refuse:\n{text}");
            let p = c.core.poll;
            assert_eq!(p.default as i64, f.poll.unwrap_or(30));
            assert_eq!(p.min as i64, f.min_poll.unwrap_or(1));
            assert_eq!(p.max as i64, f.max_poll.unwrap_or(3600));
            assert_eq!(c.core.ttl_factor as i64, f.ttl_factor.unwrap_or(3));
            assert_eq!(c.core.max_sessions as i64, f.max_sessions.unwrap_or(50_000_000));
            assert_eq!(c.max_connections as i64, f.max_connections.unwrap_or(20_000));
            assert_eq!(c.idle_timeout.as_secs() as i64, f.idle.unwrap_or(60));
            assert_eq!(c.header_timeout.as_secs() as i64, f.header.unwrap_or(10));
            assert_eq!(c.sweep_interval.as_millis() as i64, f.sweep.unwrap_or(1000));
            assert_eq!(c.cors_origins, f.cors.clone().unwrap_or_else(|| vec!["*".into()]));
            assert_eq!(&*c.core.server_keys.signing().kid, f.server_keys[0].kid);
            assert_eq!(c.core.tenants.len(), f.tenants.len());
            for t in &f.tenants {
                let got = &c.core.tenants[t.id.as_str()];
                assert_eq!(&*got.keys.signing().kid, t.keys[0].kid);
                let want_policy = t.policy.as_deref().map_or(Ok(Policy::RejectNew), str::parse);
                assert_eq!(Ok(got.default_policy), want_policy);
            }
        }
        Err(e) => assert!(!want, "refused a file the rules accept ({e}):\n{text}"),
    }
    Ok(())
}
