//! Mint a streamcap grant (docs/spec.md §2) from a Rust backend with the streamcap
//! library's own `GrantClaims::mint`, so the format is exactly the server's.
//!
//! ```sh
//! STREAMCAP_TENANT_KEY=<64 hex> cargo run -q -- --tenant acme --user alice --limit 2 \
//!     [--kid k1] [--policy reject_new] [--group studio --group-limit 1] \
//!     [--device tv-1] [--label "Living room TV"] [--content "ep 1"] [--poll 30] [--valid-secs 300]
//! ```
//!
//! The key comes from `--key-hex` or, better, `STREAMCAP_TENANT_KEY`.
//! (A backend that does not want the whole server crate as a dependency can
//! do the same in ten lines with `blake3`, `base64` and `serde_json`:
//! `"g1." + b64url(json)`, then `"." + b64url(blake3::keyed_hash(&key, signed))`.)

use std::borrow::Cow;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use streamcap::grant::GrantClaims;
use streamcap::keys::Key;

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(grant) => {
            println!("{grant}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mint: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> Result<String, String> {
    let mut opts = std::collections::HashMap::new();
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let name = flag.strip_prefix("--").ok_or_else(|| format!("unexpected argument {flag}"))?.to_owned();
        let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
        opts.insert(name, value);
    }
    let get = |k: &str| opts.get(k).map(|s| Cow::Owned(s.clone()));
    let int = |k: &str| -> Result<Option<i64>, String> {
        opts.get(k).map(|s| s.parse::<i64>().map_err(|_| format!("--{k} must be an integer"))).transpose()
    };

    let key_hex = opts
        .get("key-hex")
        .cloned()
        .or_else(|| std::env::var("STREAMCAP_TENANT_KEY").ok())
        .ok_or("no key: pass --key-hex or set STREAMCAP_TENANT_KEY")?;
    let key = Key::parse("k", &key_hex)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs() as i64;

    let claims = GrantClaims {
        tenant: get("tenant").ok_or("--tenant is required")?,
        kid: get("kid"),
        sub: get("user").ok_or("--user is required")?,
        limit: int("limit")?.ok_or("--limit is required")?,
        policy: get("policy"),
        group: get("group"),
        group_limit: int("group-limit")?,
        device: get("device"),
        label: get("label"),
        content: get("content"),
        exp: now + int("valid-secs")?.unwrap_or(300),
        poll: int("poll")?,
    };
    if claims.group.is_some() != claims.group_limit.is_some() {
        return Err("--group and --group-limit go together".into());
    }
    Ok(claims.mint(&key.secret))
}
