//! Writes the seed corpora in `fuzz/seeds/<target>/`: valid grants, lease
//! tokens, configuration files and HTTP requests, signed with the public
//! dev keys and valid until 2100, so the committed seeds keep working.
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use streamcap::config::{DEV_SERVER_KEY, DEV_TENANT_KEY};
use streamcap::grant::GrantClaims;
use streamcap::token::LeaseClaims;
use streamcap::wire::{Policy, SessionId};
use streamcap_fuzz::*;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let grants = grants();
    let tokens = tokens();

    let dir = target_dir(&root, "grant");
    for (i, g) in grants.iter().enumerate() {
        write(&dir, &format!("raw-{i}"), &[&[0u8][..], g.as_bytes()].concat());
        let payload = B64.decode(g.split('.').nth(1).unwrap()).unwrap();
        write(&dir, &format!("payload-{i}"), &[&[2u8][..], &payload].concat());
    }
    for (i, junk) in ["", "g1.", "g1..", "g1.e30.AAAA", "s1.dev.AAAA.BBBB"].iter().enumerate() {
        write(&dir, &format!("junk-{i}"), &[&[0u8][..], junk.as_bytes()].concat());
    }
    write(&dir, "claims-0", &[1u8; 64]);
    write(&dir, "claims-1", &(0..=255u8).collect::<Vec<_>>());

    let dir = target_dir(&root, "lease_token");
    for (i, t) in tokens.iter().enumerate() {
        // Mode 0, `now` choice 0 (= 0), then the token.
        write(&dir, &format!("raw-{i}"), &[&[0u8, 0][..], t.as_bytes()].concat());
        let payload = B64.decode(t.split('.').nth(2).unwrap()).unwrap();
        write(&dir, &format!("payload-{i}"), &[&[2u8][..], &payload].concat());
    }
    write(&dir, "round-trip-0", &[1u8; 96]);
    write(&dir, "round-trip-1", &(0..=255u8).rev().collect::<Vec<_>>());

    let dir = target_dir(&root, "config");
    let example = format!(
        "listen = \"0.0.0.0:8080\"\nadmin_listen = \"127.0.0.1:9090\"\npoll_secs = 30\nmin_poll_secs = 1\n\
         max_poll_secs = 3600\nttl_factor = 3\nmax_sessions = 50000000\nmax_connections = 20000\n\
         idle_timeout_secs = 60\nheader_timeout_secs = 10\ncors_origins = [\"*\"]\nsweep_millis = 1000\n\n\
         [[server_keys]]\nkid = \"s1\"\nsecret = \"{DEV_SERVER_KEY}\"\n\n\
         [[server_keys]]\nkid = \"s0\"\nsecret = \"{}\"\n\n\
         [[tenants]]\nid = \"acme\"\ndefault_policy = \"reject_new\"\nkeys = [{{ kid = \"k1\", secret = \"{DEV_TENANT_KEY}\" }}]\n\n\
         [[tenants]]\nid = \"other_co\"\ndefault_policy = \"evict_oldest\"\n\
         keys = [{{ kid = \"k2\", secret = \"{}\" }}, {{ kid = \"k1\", secret = \"{}\" }}]\n",
        "0".repeat(64),
        "ab".repeat(32),
        "cd".repeat(32),
    );
    write(&dir, "readme", &[b"\x00", example.as_bytes()].concat());
    let minimal = format!(
        "[[server_keys]]\nkid = \"s1\"\nsecret = \"{DEV_SERVER_KEY}\"\n[[tenants]]\nid = \"acme\"\nkeys = [{{ kid = \"k1\", secret = \"{DEV_TENANT_KEY}\" }}]\n"
    );
    write(&dir, "minimal", &[b"\x00", minimal.as_bytes()].concat());
    let region = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/region.example.toml");
    if let Ok(text) = std::fs::read(region) {
        write(&dir, "region-example", &[b"\x00", &text[..]].concat());
    }
    write(&dir, "structured-0", &[1u8; 128]);
    write(&dir, "structured-1", &(0..=255u8).map(|b| b | 1).collect::<Vec<_>>());

    let dir = target_dir(&root, "http_request");
    let user = "fz";
    let (grant, token) = (&grants[0], &tokens[0]);
    let sid = "00000000000000aa";
    let req = |method: &str, path: &str, auth: Option<&str>, extra: &str, body: &str| {
        let mut r = format!("{method} {path} HTTP/1.1\r\nHost: streamcap\r\n");
        if let Some(a) = auth {
            r.push_str(&format!("Authorization: Bearer {a}\r\n"));
        }
        r.push_str(extra);
        if !body.is_empty() {
            r.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        r.push_str("\r\n");
        r.push_str(body);
        r
    };
    let seeds = [
        ("start", req("POST", &format!("/v1/users/{user}/sessions"), Some(grant), "", "")),
        ("start-replace", req("POST", &format!("/v1/users/{user}/sessions?replace={sid}"), Some(grant), "", "")),
        ("heartbeat", req("POST", &format!("/v1/users/{user}/sessions/{sid}/heartbeat"), Some(token), "", "")),
        ("stop-token", req("DELETE", &format!("/v1/users/{user}/sessions/{sid}"), Some(token), "", "")),
        ("kick", req("DELETE", &format!("/v1/users/{user}/sessions/{sid}"), Some(grant), "", "")),
        ("list", req("GET", &format!("/v1/users/{user}/sessions"), Some(grant), "", "")),
        (
            "preflight",
            req(
                "OPTIONS",
                &format!("/v1/users/{user}/sessions"),
                None,
                "Origin: https://player.example\r\nAccess-Control-Request-Method: POST\r\n",
                "",
            ),
        ),
        (
            "body",
            req("POST", &format!("/v1/users/{user}/sessions"), Some(grant), "Content-Type: application/json\r\n", "{}"),
        ),
        (
            "chunked",
            format!(
                "POST /v1/users/{user}/sessions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {grant}\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
            ),
        ),
        ("dup-length", req("POST", "/v1/users/fz/sessions", None, "Content-Length: 0\r\nContent-Length: 0\r\n", "")),
        ("bad-length", req("POST", "/v1/users/fz/sessions", None, "Content-Length: -1\r\n", "")),
        (
            "expect",
            req("POST", "/v1/users/fz/sessions", Some(grant), "Expect: 100-continue\r\nContent-Length: 2\r\n", ""),
        ),
        ("http10", "GET /v1/users/fz/sessions HTTP/1.0\r\n\r\n".to_owned()),
        ("not-found", req("GET", "/", None, "", "")),
        ("method", req("PUT", "/v1/users/fz/sessions", None, "", "")),
        (
            "pipelined",
            [
                req("GET", &format!("/v1/users/{user}/sessions"), Some(grant), "", ""),
                req("POST", &format!("/v1/users/{user}/sessions/{sid}/heartbeat"), Some(token), "", ""),
                req("GET", "/nope", None, "Connection: close\r\n", ""),
            ]
            .concat(),
        ),
        ("junk", "\u{0}\u{1}GET\r\n\r\n".to_owned()),
    ];
    for (name, bytes) in seeds {
        write(&dir, name, bytes.as_bytes());
    }
    let dict = [
        "\"POST\"",
        "\"GET\"",
        "\"DELETE\"",
        "\"OPTIONS\"",
        "\" HTTP/1.1\\x0d\\x0a\"",
        "\"\\x0d\\x0a\"",
        "\"\\x0d\\x0a\\x0d\\x0a\"",
        "\"/v1/users/\"",
        "\"/sessions\"",
        "\"/heartbeat\"",
        "\"?replace=\"",
        "\"Host: \"",
        "\"Authorization: Bearer \"",
        "\"Content-Length: \"",
        "\"Transfer-Encoding: chunked\"",
        "\"Connection: close\"",
        "\"Connection: keep-alive\"",
        "\"Expect: 100-continue\"",
        "\"Origin: \"",
        "\"0\\x0d\\x0a\\x0d\\x0a\"",
        "\"g1.\"",
        "\"s1.dev.\"",
    ];
    let mut text: String = dict.iter().map(|d| format!("{d}\n")).collect();
    text.push_str(&format!("\"{grant}\"\n\"{token}\"\n"));
    std::fs::write(Path::new(env!("CARGO_MANIFEST_DIR")).join("http.dict"), text).unwrap();
    println!("seeds written under {}", root.display());
}

fn target_dir(root: &Path, target: &str) -> PathBuf {
    let d = root.join(target);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// Valid dev-tenant grants for user `fz`, from plain to every field.
fn grants() -> Vec<String> {
    let base = GrantClaims {
        tenant: Cow::Borrowed(TENANT),
        sub: Cow::Borrowed("fz"),
        limit: 2,
        exp: FAR_FUTURE_SECS,
        ..Default::default()
    };
    let full = GrantClaims {
        kid: Some("dev".into()),
        limit: 3,
        policy: Some("reject_new_device".into()),
        group: Some("studio-a".into()),
        group_limit: Some(1),
        device: Some("Living room TV #2".into()),
        label: Some("Living room TV".into()),
        content: Some("Episode 1 – “Pilot”".into()),
        poll: Some(5),
        ..base.clone()
    };
    let evict = GrantClaims { policy: Some("evict_oldest".into()), limit: 1, ..base.clone() };
    let secret = tenant_secret();
    vec![base.mint(&secret), full.mint(&secret), evict.mint(&secret)]
}

/// Lease tokens for user `fz`, session `00000000000000aa`, valid until 2100.
fn tokens() -> Vec<String> {
    let base = LeaseClaims {
        tenant: TENANT,
        user: "fz",
        session: SessionId(0xaa),
        started_ms: NOW_MS,
        expires_ms: FAR_FUTURE_SECS as u64 * 1000,
        limit: 2,
        policy: Policy::RejectNew,
        group: None,
        device: None,
        label: None,
        content: None,
        poll_secs: 30,
    };
    let full = LeaseClaims {
        policy: Policy::RejectNewDevice,
        group: Some(("studio-a", 1)),
        device: Some("Living room TV #2"),
        label: Some("Living room TV"),
        content: Some("Episode 1"),
        ..base
    };
    let key = server_key();
    vec![base.mint(&key).unwrap(), full.mint(&key).unwrap()]
}
