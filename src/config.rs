//! Configuration (docs/spec.md §8): a TOML file, `STREAMCAP_*` environment
//! variables and command-line flags, in rising precedence (clap resolves a
//! flag over its variable; this module lays both over the file). With no
//! configuration at all the server runs in dev mode on fixed, public keys.
//! Each plain setting is declared once, in the `settings!` table below,
//! which yields its file field, flag, variable, default, check and summary
//! entry. Validation happens here, once, with errors that name the bad
//! setting; secrets never appear in errors, `--help` or [`Config::summary`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::grant::{PollBounds, Tenant, Tenants};
use crate::keys::{Key, KeyRing};
use crate::limiter::Settings;
use crate::upstream::{LicenceFile, LicenceSettings};
use crate::wire::{self, Policy};

/// The dev tenant's id.
pub const DEV_TENANT: &str = "demo";
/// The dev tenant's key, publicly known: dev mode is for laptops only.
pub const DEV_TENANT_KEY: &str = "64656d6f2d74656e616e742d6b65792d6e6f742d612d7365637265742d212121";
/// The dev server key, publicly known.
pub const DEV_SERVER_KEY: &str = "64656d6f2d7365727665722d6b65792d6e6f742d612d7365637265742d212121";
/// Environment variable with the server keys, `kid:hex[,kid:hex…]`, first signs.
pub const SERVER_KEYS_ENV: &str = "STREAMCAP_SERVER_KEYS";
/// Where the way from dev mode to a real configuration is written down.
pub const PRODUCTION_RECIPE: &str = "docs/operating.md, \"From dev mode to production in 5 minutes\"";
/// The least a real configuration holds, for the error that asks for one.
pub const MINIMAL_CONFIG: &str = "A minimal real configuration is a TOML file with one [[server_keys]] and \
one [[tenants]], each secret from `streamcap keygen`:

    [[server_keys]]
    kid = \"s1\"
    secret = \"<64 hex characters>\"

    [[tenants]]
    id = \"acme\"
    keys = [{ kid = \"k1\", secret = \"<64 hex characters>\" }]

Run it with `streamcap serve --config streamcap.toml`; mint grants with \
`streamcap mint --config streamcap.toml --tenant acme`.";

/// Declares every plain setting once: its name (the TOML key, and the
/// `--flag` with `_` as `-`), its type, default, environment variable, help
/// text and per-setting check. From it come the file's fields
/// ([`FileConfig`]), the flags and variables ([`Overrides`]), the resolved
/// [`Values`] (flag or variable over file over default) with their checks,
/// and the summary line. Keys and tenants, which hold secrets, are not here.
macro_rules! settings {
    ($(
        $name:ident: $ty:ty = $default:expr, env $env:literal, $help:literal, check $check:expr
        $(, arg($($arg:tt)*))?;
    )*) => {
        /// The file's shape. Every field is optional; unknown fields are errors so
        /// that a typo does not silently fall back to a default.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FileConfig {
            $(pub $name: Option<$ty>,)*
            #[serde(default)]
            pub server_keys: Vec<KeyEntry>,
            #[serde(default)]
            pub tenants: Vec<TenantEntry>,
        }

        /// Settings given on the command line or in the environment; they win over the file.
        #[derive(Debug, Default, Clone, clap::Args)]
        pub struct Overrides {
            /// TOML configuration file.
            #[arg(long, env = "STREAMCAP_CONFIG")]
            pub config: Option<PathBuf>,
            $(
                #[arg(long, env = $env, help = help_line($help, &$default) $(, $($arg)*)?)]
                pub $name: Option<$ty>,
            )*
        }

        /// Every plain setting in force: a flag or variable over the file over
        /// the default.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Values {
            $(pub $name: $ty,)*
        }

        impl Values {
            fn resolve(o: &Overrides, f: &FileConfig) -> Values {
                Values { $($name: o.$name.clone().or_else(|| f.$name.clone()).unwrap_or_else(|| $default),)* }
            }

            /// Each setting's own check, in declaration order.
            fn check_each(&self) -> Result<(), String> {
                $($check(stringify!($name), &self.$name)?;)*
                Ok(())
            }

            /// `name=value` for every setting, space-separated.
            fn summary(&self) -> String {
                let parts: [String; [$(stringify!($name)),*].len()] =
                    [$(format!("{}={}", stringify!($name), Shown::shown(&self.$name))),*];
                parts.join(" ")
            }
        }
    };
}

settings! {
    listen: String = wire::DEFAULT_LISTEN.to_owned(), env "STREAMCAP_LISTEN",
        "Public API address (in dev mode, with no --config or STREAMCAP_SERVER_KEYS: 127.0.0.1:8080)",
        check address;
    admin_listen: String = wire::DEFAULT_ADMIN_LISTEN.to_owned(), env "STREAMCAP_ADMIN_LISTEN",
        "Operator endpoints (/healthz, /metrics)", check address;
    poll_secs: u32 = wire::DEFAULT_POLL_SECS, env "STREAMCAP_POLL_SECS",
        "Default heartbeat interval, seconds", check any;
    min_poll_secs: u32 = wire::DEFAULT_MIN_POLL_SECS, env "STREAMCAP_MIN_POLL_SECS",
        "Lower bound for a grant's poll", check any;
    max_poll_secs: u32 = wire::DEFAULT_MAX_POLL_SECS, env "STREAMCAP_MAX_POLL_SECS",
        "Upper bound for a grant's poll", check any;
    ttl_factor: u32 = wire::DEFAULT_TTL_FACTOR, env "STREAMCAP_TTL_FACTOR",
        "Token lifetime in polls", check within(1, 100);
    max_sessions: u64 = wire::DEFAULT_MAX_SESSIONS, env "STREAMCAP_MAX_SESSIONS",
        "Session records held before starts get 503", check positive;
    max_connections: usize = wire::DEFAULT_MAX_CONNECTIONS, env "STREAMCAP_MAX_CONNECTIONS",
        "Open connections before new ones get 503", check positive;
    idle_timeout_secs: u64 = wire::DEFAULT_IDLE_TIMEOUT_SECS, env "STREAMCAP_IDLE_TIMEOUT_SECS",
        "Close a connection silent this long, seconds", check positive;
    header_timeout_secs: u64 = wire::DEFAULT_HEADER_TIMEOUT_SECS, env "STREAMCAP_HEADER_TIMEOUT_SECS",
        "Close a connection that takes longer to send a request head, seconds", check positive;
    cors_origins: Vec<String> = vec!["*".to_owned()], env "STREAMCAP_CORS_ORIGINS",
        "Allowed browser origins, comma-separated", check any, arg(value_delimiter = ',');
    sweep_millis: u64 = wire::DEFAULT_SWEEP_MILLIS, env "STREAMCAP_SWEEP_MILLIS",
        "Interval of the expiry sweep, milliseconds", check positive;
    licence_connect_timeout_ms: u64 = wire::DEFAULT_LICENCE_CONNECT_TIMEOUT_MS,
        env "STREAMCAP_LICENCE_CONNECT_TIMEOUT_MS",
        "Connect timeout to a licence upstream, milliseconds", check positive;
    licence_timeout_ms: u64 = wire::DEFAULT_LICENCE_TIMEOUT_MS, env "STREAMCAP_LICENCE_TIMEOUT_MS",
        "Whole exchange with a licence upstream, milliseconds", check positive;
}

/// How a setting's value reads in `--help` and in the summary: as it would
/// be written on the command line.
trait Shown {
    fn shown(&self) -> String;
}

impl Shown for String {
    fn shown(&self) -> String {
        self.clone()
    }
}

impl Shown for Vec<String> {
    fn shown(&self) -> String {
        self.join(",")
    }
}

macro_rules! shown_by_display {
    ($($t:ty),*) => {$(
        impl Shown for $t {
            fn shown(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
shown_by_display!(u32, u64, usize);

/// A flag's help: what it sets and its default.
fn help_line(help: &str, default: &impl Shown) -> String {
    format!("{help} [default: {}]", default.shown())
}

fn any<T>(_: &str, _: &T) -> Result<(), String> {
    Ok(())
}

fn address(name: &str, v: &String) -> Result<(), String> {
    v.parse::<SocketAddr>().map(drop).map_err(|_| format!("{name} {v:?} is not an address like 0.0.0.0:8080"))
}

fn positive<T: Default + PartialEq>(name: &str, v: &T) -> Result<(), String> {
    if *v == T::default() { Err(format!("{name} must be at least 1")) } else { Ok(()) }
}

fn within(lo: u32, hi: u32) -> impl Fn(&str, &u32) -> Result<(), String> {
    move |name, v| if (lo..=hi).contains(v) { Ok(()) } else { Err(format!("{name} must be {lo}-{hi}, not {v}")) }
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
    /// The licence gate's upstreams, one table per DRM system (docs/spec.md §10).
    pub licence: Option<LicenceFile>,
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
    /// The licence gate: timeouts and every tenant's upstreams.
    pub licence: LicenceSettings,
    pub dev_mode: bool,
    /// The settings as resolved, before conversion: what [`Config::summary`] shows.
    pub values: Values,
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
        let mut v = Values::resolve(o, &f);
        // Dev mode runs on public keys: it stays on this machine unless told otherwise.
        if dev_mode && o.listen.is_none() && f.listen.is_none() {
            v.listen = wire::DEV_LISTEN.to_owned();
        }
        v.check_each()?;
        let poll = PollBounds { default: v.poll_secs, min: v.min_poll_secs, max: v.max_poll_secs };
        if !(1 <= poll.min && poll.min <= poll.default && poll.default <= poll.max && poll.max <= u16::MAX as u32) {
            return Err(format!(
                "poll bounds must satisfy 1 <= min_poll_secs ({}) <= poll_secs ({}) <= max_poll_secs ({}) <= 65535",
                poll.min, poll.default, poll.max
            ));
        }
        let address = |a: &str| a.parse::<SocketAddr>().expect("checked by `address`");

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
        let mut licence = LicenceSettings {
            connect_timeout: Duration::from_millis(v.licence_connect_timeout_ms),
            timeout: Duration::from_millis(v.licence_timeout_ms),
            ..Default::default()
        };
        if !dev_mode {
            for t in &f.tenants {
                if let Some(tables) = &t.licence {
                    licence.add_tenant(&t.id, tables)?;
                }
            }
        }
        Ok(Config {
            listen: address(&v.listen),
            admin_listen: address(&v.admin_listen),
            core: Settings { poll, ttl_factor: v.ttl_factor, max_sessions: v.max_sessions, server_keys, tenants },
            max_connections: v.max_connections,
            idle_timeout: Duration::from_secs(v.idle_timeout_secs),
            header_timeout: Duration::from_secs(v.header_timeout_secs),
            cors_origins: v.cors_origins.clone(),
            sweep_interval: Duration::from_millis(v.sweep_millis),
            licence,
            dev_mode,
            values: v,
        })
    }

    /// The effective configuration, without secrets: every setting as
    /// `name=value`, then the server keys' and tenants' ids and the licence
    /// tables as `tenant/system` (no URL, no header).
    pub fn summary(&self) -> String {
        let c = &self.core;
        let mut tenants: Vec<&str> = c.tenants.keys().map(|t| &**t).collect();
        tenants.sort_unstable();
        format!(
            "{} server_keys={:?} tenants={:?} licence={:?}",
            self.values.summary(),
            c.server_keys.kids().collect::<Vec<_>>(),
            tenants,
            self.licence.names()
        )
    }
}

/// Parses the file. A syntax or type error names its line, column and key
/// but does not quote the line, which may hold a secret.
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| located(text, &e))
}

/// `line L, column C, key K: what is wrong`, from the error's byte span.
fn located(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    let Some(start) = e.span().map(|s| s.start.min(text.len())).filter(|s| text.is_char_boundary(*s)) else {
        return message.to_owned();
    };
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_no = text[..line_start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let mut out = format!("line {line_no}, column {column}");
    let table = text[..line_start].lines().rev().find_map(table_header);
    let header = table_header(line);
    let key = match (header, key_of(line)) {
        (Some(name), _) => Some(name.to_owned()),
        (None, Some(key)) => Some(table.map_or_else(|| key.to_owned(), |t| format!("{t}.{key}"))),
        (None, None) => table.map(str::to_owned),
    };
    if let Some(key) = &key {
        out.push_str(&format!(", key {key}"));
    }
    out.push_str(": ");
    out.push_str(message);
    // `[tenants]` declares one table where a list of them is wanted.
    if let Some(name) = header
        && message.starts_with("invalid type: map, expected a sequence")
        && !line.trim_start().starts_with("[[")
    {
        out.push_str(&format!(" (write [[{name}]]: each entry of the list is a [[{name}]] table)"));
    }
    out
}

/// `tenants` for a `[tenants]` or `[[tenants]]` line.
fn table_header(line: &str) -> Option<&str> {
    let line = line.split('#').next()?.trim();
    let name = line
        .strip_prefix("[[")
        .and_then(|l| l.strip_suffix("]]"))
        .or_else(|| line.strip_prefix('[').and_then(|l| l.strip_suffix(']')))?;
    Some(name.trim())
}

/// `listen` for a `listen = …` line; `None` where the line holds no bare key.
fn key_of(line: &str) -> Option<&str> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
        .then_some(key)
}

fn parse_key_list(list: &str) -> Result<Vec<Key>, String> {
    list.split(',')
        .map(|entry| {
            let (kid, secret) = entry.trim().split_once(':').ok_or("expected kid:secret[,kid:secret...]")?;
            Key::parse(kid, secret)
        })
        .collect()
}

/// The `[[tenants]]` of a file, validated; also what `mint` checks its grants against.
pub(crate) fn tenants(entries: &[TenantEntry]) -> Result<Tenants, String> {
    if entries.is_empty() {
        return Err(format!(
            "no [[tenants]] configured: nobody could start a session. Tenants are declared only in the \
             configuration file; {SERVER_KEYS_ENV} sets the server keys and nothing else.\n{MINIMAL_CONFIG}\n\
             See {PRODUCTION_RECIPE}."
        ));
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
        assert_eq!(c.core.poll.default, 30);
    }

    #[test]
    fn dev_mode_listens_on_loopback_unless_told_otherwise() {
        let c = Config::load(&Overrides::default(), None).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(c.summary().starts_with("listen=127.0.0.1:8080 "), "{}", c.summary());
        let o = Overrides { listen: Some("0.0.0.0:18080".into()), ..Default::default() };
        assert_eq!(Config::load(&o, None).unwrap().listen.to_string(), "0.0.0.0:18080");
        // A configured server keeps the documented default.
        let c = Config::build(file(&full()), &Overrides::default(), None, false).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        let c =
            Config::build(file(&format!("listen = \"10.0.0.1:80\"\n{}", full())), &Overrides::default(), None, false);
        assert_eq!(c.unwrap().listen.to_string(), "10.0.0.1:80");
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
    fn syntax_errors_name_line_column_and_key() {
        let err = parse_file("poll_secs = 20\nlisten = 127.0.0.1:18080\n").unwrap_err();
        assert!(err.starts_with("line 2, column 15, key listen: invalid float"), "{err}");
        let err = parse_file(&full().replace("[[tenants]]", "[tenants]")).unwrap_err();
        assert!(err.starts_with("line 5, column 1, key tenants: invalid type: map"), "{err}");
        assert!(err.contains("write [[tenants]]"), "{err}");
        // A bad value inside a table names the table too, and never quotes the line.
        let err = parse_file(&full().replace("id = \"acme\"", "id = 7")).unwrap_err();
        assert!(err.starts_with("line 6, column 6, key tenants.id: "), "{err}");
        let err = parse_file(&full().replace(&format!("\"{KEY_A}\""), &KEY_A[..40])).unwrap_err();
        assert!(err.starts_with("line 4, column 10, key server_keys.secret: "), "{err}");
        assert!(!err.contains(&KEY_A[..16]), "{err}");
    }

    #[test]
    fn server_keys_alone_are_refused_with_a_minimal_configuration_that_works() {
        let err = Config::load(&Overrides::default(), Some(&format!("s1:{KEY_A}"))).unwrap_err();
        assert!(err.starts_with("no [[tenants]] configured"), "{err}");
        assert!(err.contains("one [[server_keys]] and one [[tenants]]"), "{err}");
        assert!(err.contains("docs/operating.md, \"From dev mode to production in 5 minutes\""), "{err}");
        // The example in the message, with real keys, is a configuration the server runs with.
        let example: String = err
            .lines()
            .filter_map(|l| l.strip_prefix("    "))
            .map(|l| format!("{}\n", l.replace("<64 hex characters>", KEY_A)))
            .collect();
        let c = Config::build(file(&example), &Overrides::default(), None, false).unwrap();
        assert!(c.core.tenants.contains_key("acme"));
        assert!(!c.dev_mode);
    }

    #[test]
    fn summary_names_no_secret() {
        let c = Config::build(file(&full()), &Overrides::default(), None, false).unwrap();
        let s = c.summary();
        assert!(s.contains("acme") && s.contains(r#"server_keys=["s1"]"#), "{s}");
        assert!(!s.contains(KEY_A));
    }

    #[test]
    fn every_setting_reads_from_the_file_and_shows_in_the_summary() {
        let settings = "listen = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:2\"\npoll_secs = 7\nmin_poll_secs = 2\n\
                        max_poll_secs = 9\nttl_factor = 4\nmax_sessions = 5\nmax_connections = 6\n\
                        idle_timeout_secs = 8\nheader_timeout_secs = 3\ncors_origins = [\"https://a\", \"https://b\"]\n\
                        sweep_millis = 11\nlicence_connect_timeout_ms = 12\nlicence_timeout_ms = 13\n";
        let table = "[tenants.licence.clearkey]\nupstream = \"http://127.0.0.1:3/ck\"\n";
        let c = Config::build(
            file(&format!("{settings}{}{table}", full().replace("poll_secs = 20\n", ""))),
            &Overrides::default(),
            None,
            false,
        )
        .unwrap();
        let want = "listen=127.0.0.1:1 admin_listen=127.0.0.1:2 poll_secs=7 min_poll_secs=2 max_poll_secs=9 \
                    ttl_factor=4 max_sessions=5 max_connections=6 idle_timeout_secs=8 header_timeout_secs=3 \
                    cors_origins=https://a,https://b sweep_millis=11 licence_connect_timeout_ms=12 \
                    licence_timeout_ms=13 server_keys=[\"s1\"] tenants=[\"acme\"] licence=[\"acme/clearkey\"]";
        assert_eq!(c.summary(), want);
        assert_eq!((c.listen.port(), c.admin_listen.port()), (1, 2));
        assert_eq!((c.core.poll.default, c.core.poll.min, c.core.poll.max, c.core.ttl_factor), (7, 2, 9, 4));
        assert_eq!((c.core.max_sessions, c.max_connections), (5, 6));
        assert_eq!((c.idle_timeout.as_secs(), c.header_timeout.as_secs(), c.sweep_interval.as_millis()), (8, 3, 11));
        assert_eq!(c.cors_origins, ["https://a", "https://b"]);
        assert_eq!((c.licence.connect_timeout.as_millis(), c.licence.timeout.as_millis()), (12, 13));
    }

    #[test]
    fn licence_tables_are_validated_without_quoting_their_secrets() {
        let with = |table: &str| format!("{}{table}", full());
        let c = Config::build(
            file(&with(
                "[tenants.licence.playready]\nupstream = \"https://drm.example/pr?key=s3cret\"\n\
                        pass_headers = [\"SOAPAction\"]\nheaders = { X-Auth = \"s3cret-{user}\" }\n",
            )),
            &Overrides::default(),
            None,
            false,
        )
        .unwrap();
        assert_eq!(c.licence.names(), ["acme/playready"]);
        assert_eq!(c.licence.timeout.as_millis(), 8000, "the default");
        let s = format!("{} {:?}", c.summary(), c);
        assert!(!s.contains("s3cret"), "{s}");
        let bad = |table: &str| Config::build(file(&with(table)), &Overrides::default(), None, false).unwrap_err();
        let err = bad("[tenants.licence.widevine]\nupstream = \"ftp://x/?key=s3cret\"\n");
        assert!(err.contains("acme") && err.contains("widevine") && !err.contains("s3cret"), "{err}");
        let err = bad("[tenants.licence.widevine]\nupstream = \"http://x/\"\nheaders = { X-A = \"s3cret{x}\" }\n");
        assert!(err.contains("X-A") && !err.contains("s3cret"), "{err}");
        assert!(parse_file(&with("[tenants.licence.primetime]\nupstream = \"http://x/\"\n")).is_err());
        // Dev mode has no licence upstreams.
        assert!(Config::load(&Overrides::default(), None).unwrap().licence.upstreams.is_empty());
    }
}
