//! Configuration (docs/spec.md §8): a TOML file, `STREAMCAP_*` environment
//! variables and command-line flags, in rising precedence (clap resolves a
//! flag over its variable; this module lays both over the file). With no
//! configuration at all the server runs in dev mode on fixed, public keys.
//! Validation happens here, once, with errors that name the bad setting;
//! secrets never appear in errors or in [`Config::summary`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::grant::{PollBounds, Tenant, Tenants};
use crate::keys::{Key, KeyRing};
use crate::limiter::Settings;
use crate::wire::{self, Policy};

/// The dev tenant's id.
pub const DEV_TENANT: &str = "demo";
/// The dev tenant's key, publicly known: dev mode is for laptops only.
pub const DEV_TENANT_KEY: &str = "64656d6f2d74656e616e742d6b65792d6e6f742d612d7365637265742d212121";
/// The dev server key, publicly known.
pub const DEV_SERVER_KEY: &str = "64656d6f2d7365727665722d6b65792d6e6f742d612d7365637265742d212121";
/// Environment variable with the server keys, `kid:hex[,kid:hex…]`, first signs.
pub const SERVER_KEYS_ENV: &str = "STREAMCAP_SERVER_KEYS";

/// The file's shape. Every field is optional; unknown fields are errors so
/// that a typo does not silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub poll_secs: Option<u32>,
    pub min_poll_secs: Option<u32>,
    pub max_poll_secs: Option<u32>,
    pub ttl_factor: Option<u32>,
    pub max_sessions: Option<u64>,
    pub max_connections: Option<usize>,
    pub idle_timeout_secs: Option<u64>,
    pub header_timeout_secs: Option<u64>,
    pub cors_origins: Option<Vec<String>>,
    pub sweep_millis: Option<u64>,
    #[serde(default)]
    pub server_keys: Vec<KeyEntry>,
    #[serde(default)]
    pub tenants: Vec<TenantEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub kid: String,
    pub secret: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantEntry {
    pub id: String,
    pub default_policy: Option<String>,
    pub keys: Vec<KeyEntry>,
}

/// Settings given on the command line or in the environment; they win over the file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// TOML configuration file.
    #[arg(long, env = "STREAMCAP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Public API address [default: 0.0.0.0:8080].
    #[arg(long, env = "STREAMCAP_LISTEN")]
    pub listen: Option<String>,
    /// Operator endpoints (/healthz, /metrics) [default: 127.0.0.1:9090].
    #[arg(long, env = "STREAMCAP_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Default heartbeat interval, seconds [default: 30].
    #[arg(long, env = "STREAMCAP_POLL_SECS")]
    pub poll_secs: Option<u32>,
    /// Lower bound for a grant's poll [default: 1].
    #[arg(long, env = "STREAMCAP_MIN_POLL_SECS")]
    pub min_poll_secs: Option<u32>,
    /// Upper bound for a grant's poll [default: 3600].
    #[arg(long, env = "STREAMCAP_MAX_POLL_SECS")]
    pub max_poll_secs: Option<u32>,
    /// Token lifetime in polls [default: 3].
    #[arg(long, env = "STREAMCAP_TTL_FACTOR")]
    pub ttl_factor: Option<u32>,
    /// Session records held before starts get 503 [default: 50000000].
    #[arg(long, env = "STREAMCAP_MAX_SESSIONS")]
    pub max_sessions: Option<u64>,
    /// Open connections before new ones get 503 [default: 20000].
    #[arg(long, env = "STREAMCAP_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Close a connection silent this long, seconds [default: 60].
    #[arg(long, env = "STREAMCAP_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Close a connection that takes longer to send a request head, seconds [default: 10].
    #[arg(long, env = "STREAMCAP_HEADER_TIMEOUT_SECS")]
    pub header_timeout_secs: Option<u64>,
    /// Allowed browser origins, comma-separated [default: *].
    #[arg(long, env = "STREAMCAP_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Option<Vec<String>>,
    /// Interval of the expiry sweep, milliseconds [default: 1000].
    #[arg(long, env = "STREAMCAP_SWEEP_MILLIS")]
    pub sweep_millis: Option<u64>,
}

/// The effective, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub core: Settings,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub cors_origins: Vec<String>,
    pub sweep_interval: Duration,
    pub dev_mode: bool,
}

impl Config {
    /// Loads the file named in `o` (if any), then applies the environment's
    /// server keys and the overrides. `server_keys_env` is the value of
    /// `STREAMCAP_SERVER_KEYS`, passed in so tests need not touch the process environment.
    pub fn load(o: &Overrides, server_keys_env: Option<&str>) -> Result<Config, String> {
        let file = match &o.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
                parse_file(&text).map_err(|e| format!("config file {}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let dev_mode = o.config.is_none() && server_keys_env.is_none();
        Config::build(file, o, server_keys_env, dev_mode)
    }

    fn build(f: FileConfig, o: &Overrides, server_keys_env: Option<&str>, dev_mode: bool) -> Result<Config, String> {
        let addr = |name: &str, v: Option<&String>, default: &str| -> Result<SocketAddr, String> {
            let v = v.map_or(default, |s| s.as_str());
            v.parse().map_err(|_| format!("{name} {v:?} is not an address like 0.0.0.0:8080"))
        };
        let listen = addr("listen", o.listen.as_ref().or(f.listen.as_ref()), wire::DEFAULT_LISTEN)?;
        let admin_listen =
            addr("admin_listen", o.admin_listen.as_ref().or(f.admin_listen.as_ref()), wire::DEFAULT_ADMIN_LISTEN)?;
        let poll = PollBounds {
            default: o.poll_secs.or(f.poll_secs).unwrap_or(wire::DEFAULT_POLL_SECS),
            min: o.min_poll_secs.or(f.min_poll_secs).unwrap_or(wire::DEFAULT_MIN_POLL_SECS),
            max: o.max_poll_secs.or(f.max_poll_secs).unwrap_or(wire::DEFAULT_MAX_POLL_SECS),
        };
        if !(1 <= poll.min && poll.min <= poll.default && poll.default <= poll.max && poll.max <= u16::MAX as u32) {
            return Err(format!(
                "poll bounds must satisfy 1 <= min_poll_secs ({}) <= poll_secs ({}) <= max_poll_secs ({}) <= 65535",
                poll.min, poll.default, poll.max
            ));
        }
        let ttl_factor = o.ttl_factor.or(f.ttl_factor).unwrap_or(wire::DEFAULT_TTL_FACTOR);
        if !(1..=100).contains(&ttl_factor) {
            return Err(format!("ttl_factor must be 1-100, not {ttl_factor}"));
        }
        let positive = |name: &str, v: u64| if v == 0 { Err(format!("{name} must be at least 1")) } else { Ok(v) };
        let max_sessions =
            positive("max_sessions", o.max_sessions.or(f.max_sessions).unwrap_or(wire::DEFAULT_MAX_SESSIONS))?;
        let max_connections = positive(
            "max_connections",
            o.max_connections.or(f.max_connections).unwrap_or(wire::DEFAULT_MAX_CONNECTIONS) as u64,
        )? as usize;
        let idle = positive(
            "idle_timeout_secs",
            o.idle_timeout_secs.or(f.idle_timeout_secs).unwrap_or(wire::DEFAULT_IDLE_TIMEOUT_SECS),
        )?;
        let header = positive(
            "header_timeout_secs",
            o.header_timeout_secs.or(f.header_timeout_secs).unwrap_or(wire::DEFAULT_HEADER_TIMEOUT_SECS),
        )?;
        let sweep = positive("sweep_millis", o.sweep_millis.or(f.sweep_millis).unwrap_or(wire::DEFAULT_SWEEP_MILLIS))?;
        let cors_origins = o.cors_origins.clone().or(f.cors_origins).unwrap_or_else(|| vec!["*".into()]);

        let (server_keys, tenants) = if dev_mode {
            dev_keys()
        } else {
            let server_keys = match server_keys_env {
                Some(env) => parse_key_list(env).map_err(|e| format!("{SERVER_KEYS_ENV}: {e}"))?,
                None => f.server_keys.iter().map(|k| Key::parse(&k.kid, &k.secret)).collect::<Result<_, _>>()?,
            };
            let server_keys = KeyRing::new(server_keys).map_err(|e| format!("server_keys: {e}"))?;
            (server_keys, tenants(&f.tenants)?)
        };
        Ok(Config {
            listen,
            admin_listen,
            core: Settings { poll, ttl_factor, max_sessions, server_keys, tenants },
            max_connections,
            idle_timeout: Duration::from_secs(idle),
            header_timeout: Duration::from_secs(header),
            cors_origins,
            sweep_interval: Duration::from_millis(sweep),
            dev_mode,
        })
    }

    /// The effective configuration, without secrets, one setting a line.
    pub fn summary(&self) -> String {
        let c = &self.core;
        let mut tenants: Vec<&str> = c.tenants.keys().map(|t| &**t).collect();
        tenants.sort_unstable();
        format!(
            "listen={} admin_listen={} poll_secs={} min_poll_secs={} max_poll_secs={} ttl_factor={} \
             max_sessions={} max_connections={} idle_timeout_secs={} header_timeout_secs={} \
             cors_origins={:?} sweep_millis={} server_keys={:?} tenants={:?}",
            self.listen,
            self.admin_listen,
            c.poll.default,
            c.poll.min,
            c.poll.max,
            c.ttl_factor,
            c.max_sessions,
            self.max_connections,
            self.idle_timeout.as_secs(),
            self.header_timeout.as_secs(),
            self.cors_origins,
            self.sweep_interval.as_millis(),
            c.server_keys.kids().collect::<Vec<_>>(),
            tenants,
        )
    }
}

pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| e.message().to_owned())
}

fn parse_key_list(list: &str) -> Result<Vec<Key>, String> {
    list.split(',')
        .map(|entry| {
            let (kid, secret) = entry.trim().split_once(':').ok_or("expected kid:secret[,kid:secret...]")?;
            Key::parse(kid, secret)
        })
        .collect()
}

fn tenants(entries: &[TenantEntry]) -> Result<Tenants, String> {
    if entries.is_empty() {
        return Err("no [[tenants]] configured: nobody could start a session".into());
    }
    let mut out = Tenants::default();
    for t in entries {
        if !wire::is_tenant_id(&t.id) {
            return Err(format!("tenant id {:?} must be 1-64 characters of [A-Za-z0-9_-]", t.id));
        }
        let keys = t.keys.iter().map(|k| Key::parse(&k.kid, &k.secret)).collect::<Result<_, _>>()?;
        let keys = KeyRing::new(keys).map_err(|e| format!("tenant {:?}: {e}", t.id))?;
        let default_policy = match &t.default_policy {
            Some(p) => p.parse().map_err(|e| format!("tenant {:?}: {e}", t.id))?,
            None => Policy::RejectNew,
        };
        if out.insert(t.id.as_str().into(), Tenant { keys, default_policy }).is_some() {
            return Err(format!("tenant {:?} is configured twice", t.id));
        }
    }
    Ok(out)
}

/// The fixed, public keys of dev mode.
pub fn dev_keys() -> (KeyRing, Tenants) {
    let server = Key::parse("dev", DEV_SERVER_KEY).expect("the dev server key is valid");
    let tenant = Key::parse("dev", DEV_TENANT_KEY).expect("the dev tenant key is valid");
    let mut tenants = Tenants::default();
    let keys = KeyRing::new(vec![tenant]).expect("one key");
    tenants.insert(DEV_TENANT.into(), Tenant { keys, default_policy: Policy::RejectNew });
    (KeyRing::new(vec![server]).expect("one key"), tenants)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "0101010101010101010101010101010101010101010101010101010101010101";

    fn file(text: &str) -> FileConfig {
        parse_file(text).unwrap()
    }

    fn full() -> String {
        format!(
            "poll_secs = 20\n[[server_keys]]\nkid = \"s1\"\nsecret = \"{KEY_A}\"\n\
             [[tenants]]\nid = \"acme\"\ndefault_policy = \"evict_oldest\"\nkeys = [{{ kid = \"k1\", secret = \"{KEY_A}\" }}]\n"
        )
    }

    #[test]
    fn no_configuration_is_dev_mode() {
        let c = Config::load(&Overrides::default(), None).unwrap();
        assert!(c.dev_mode);
        assert!(c.core.tenants.contains_key(DEV_TENANT));
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.core.poll.default, 30);
    }

    #[test]
    fn flags_win_over_file() {
        let o = Overrides { poll_secs: Some(10), listen: Some("127.0.0.1:1".into()), ..Default::default() };
        let c = Config::build(file(&full()), &o, None, false).unwrap();
        assert_eq!(c.core.poll.default, 10);
        assert_eq!(c.listen.to_string(), "127.0.0.1:1");
        let c = Config::build(file(&full()), &Overrides::default(), None, false).unwrap();
        assert_eq!(c.core.poll.default, 20);
        assert_eq!(c.core.tenants["acme"].default_policy, Policy::EvictOldest);
    }

    #[test]
    fn env_server_keys_replace_the_file_keys() {
        let env = format!("s9:{KEY_A}, s8:{KEY_A}");
        let c = Config::build(file(&full()), &Overrides::default(), Some(&env), false).unwrap();
        assert_eq!(&*c.core.server_keys.signing().kid, "s9");
        assert!(Config::build(file(&full()), &Overrides::default(), Some("s9"), false).is_err());
    }

    #[test]
    fn bad_configs_are_refused_with_the_setting_named() {
        assert!(parse_file("pol_secs = 3").unwrap_err().contains("pol_secs"));
        assert!(parse_file("poll_secs = \"x\"").is_err());
        let bad = |text: &str| Config::build(file(text), &Overrides::default(), None, false).unwrap_err();
        assert!(bad(&full().replace("poll_secs = 20", "poll_secs = 0")).contains("poll"));
        assert!(bad(&full().replace("poll_secs = 20", "ttl_factor = 0")).contains("ttl_factor"));
        assert!(bad(&full().replace("poll_secs = 20", "listen = \"nowhere\"")).contains("listen"));
        assert!(bad(&full().replace("evict_oldest", "lru")).contains("lru"));
        let no_tenants = full().split("[[tenants]]").next().unwrap().to_owned();
        assert!(bad(&no_tenants).contains("tenants"));
        let short = full().replacen(KEY_A, "0101", 1);
        let err = bad(&short);
        assert!(err.contains("64") && !err.contains("0101"), "{err}");
    }

    #[test]
    fn summary_names_no_secret() {
        let c = Config::build(file(&full()), &Overrides::default(), None, false).unwrap();
        let s = c.summary();
        assert!(s.contains("acme") && s.contains(r#"server_keys=["s1"]"#), "{s}");
        assert!(!s.contains(KEY_A));
    }
}
