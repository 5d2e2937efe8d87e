//! The command line: the clap types of `serve` (the default), `mint` and
//! `keygen`, and the `mint` and `keygen` commands; `serve` itself starts in
//! [`crate::app`]. Secrets are read from the configuration file or the
//! environment, never from flags, so they stay out of `ps` and shell
//! history.

use std::io::Write;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Overrides};
use crate::grant::GrantClaims;
use crate::keys::{self, Key};

#[derive(Debug, Parser)]
#[command(name = "streamcap", version, about = "Caps how many streams one account plays at once.")]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default). With no configuration: dev mode, on 127.0.0.1:8080.
    Serve(ServeArgs),
    /// Mint grants for operators, demos and load tests.
    Mint(MintArgs),
    /// Print a new random key (64 hex characters).
    Keygen,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub settings: Overrides,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Least severe events logged: error, warn, info, debug or trace.
    #[arg(long, env = "STREAMCAP_LOG_LEVEL", default_value = "info")]
    pub log_level: tracing::Level,
    /// One line per event, as text or as JSON objects.
    #[arg(long, env = "STREAMCAP_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogArgs {
    /// Installs the process-wide logger: one line per event on stderr.
    pub fn init(&self) {
        use std::io::IsTerminal;
        let builder = tracing_subscriber::fmt()
            .with_max_level(self.log_level)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false);
        let _ = match self.log_format {
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
            LogFormat::Text => builder.try_init(),
        };
    }
}

#[derive(Debug, Clone, Args)]
pub struct MintArgs {
    /// Take the tenant's key from this TOML file (otherwise STREAMCAP_MINT_KEY, else the dev key).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Tenant id.
    #[arg(long, default_value = config::DEV_TENANT)]
    pub tenant: String,
    /// Key id to sign with (default: the tenant's first key).
    #[arg(long)]
    pub kid: Option<String>,
    /// The user (with --count: the prefix of numbered users).
    #[arg(long, default_value = "alice")]
    pub user: String,
    #[arg(long, default_value_t = 2)]
    pub limit: i64,
    /// reject_new | evict_oldest | reject_new_device (default: the tenant's).
    #[arg(long)]
    pub policy: Option<String>,
    #[arg(long, requires = "group_limit")]
    pub group: Option<String>,
    #[arg(long, requires = "group")]
    pub group_limit: Option<i64>,
    /// Device id (with --count: the prefix of numbered devices).
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long)]
    pub label: Option<String>,
    #[arg(long)]
    pub content: Option<String>,
    /// Heartbeat interval for these sessions, seconds.
    #[arg(long)]
    pub poll: Option<i64>,
    /// How long the grant stays valid, seconds.
    #[arg(long, default_value_t = 3600)]
    pub valid_secs: i64,
    /// Mint this many grants as JSON lines `{"user", "device", "grant"}`.
    #[arg(long)]
    pub count: Option<u64>,
    /// With --count: spread the grants over this many users (default: one each).
    #[arg(long)]
    pub users: Option<u64>,
}

/// Environment variable with the key `mint` signs with when no --config is given.
pub const MINT_KEY_ENV: &str = "STREAMCAP_MINT_KEY";

impl MintArgs {
    fn key(&self) -> Result<Key, String> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let file = config::parse_file(&text)?;
            let tenant = file
                .tenants
                .iter()
                .find(|t| t.id == self.tenant)
                .ok_or_else(|| format!("tenant {:?} is not in {}", self.tenant, path.display()))?;
            let entry = match &self.kid {
                Some(kid) => tenant.keys.iter().find(|k| &k.kid == kid),
                None => tenant.keys.first(),
            }
            .ok_or("no such key for this tenant")?;
            return Key::parse(&entry.kid, &entry.secret);
        }
        if let Ok(hex) = std::env::var(MINT_KEY_ENV) {
            return Key::parse(self.kid.as_deref().unwrap_or("k"), hex.trim());
        }
        if self.tenant != config::DEV_TENANT {
            return Err(format!("no key for tenant {:?}: give --config or {MINT_KEY_ENV}", self.tenant));
        }
        Key::parse("dev", config::DEV_TENANT_KEY)
    }

    fn claims<'a>(&'a self, user: &'a str, device: Option<&'a str>, exp: i64) -> GrantClaims<'a> {
        GrantClaims {
            tenant: self.tenant.as_str().into(),
            kid: self.kid.as_deref().map(Into::into),
            sub: user.into(),
            limit: self.limit,
            policy: self.policy.as_deref().map(Into::into),
            group: self.group.as_deref().map(Into::into),
            group_limit: self.group_limit,
            device: device.map(Into::into),
            label: self.label.as_deref().map(Into::into),
            content: self.content.as_deref().map(Into::into),
            exp,
            poll: self.poll,
        }
    }

    /// Writes one grant, or `--count` JSON lines.
    pub fn run(&self, out: &mut impl Write) -> Result<(), String> {
        let key = self.key()?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let exp = now + self.valid_secs;
        let io = |e: std::io::Error| e.to_string();
        let Some(count) = self.count else {
            let grant = self.claims(&self.user, self.device.as_deref(), exp).mint(&key.secret);
            return writeln!(out, "{grant}").map_err(io);
        };
        let users = self.users.unwrap_or(count).max(1);
        for i in 0..count {
            let user = format!("{}-{}", self.user, i % users);
            let device = self.device.as_ref().map(|d| format!("{d}-{i}"));
            let grant = self.claims(&user, device.as_deref(), exp).mint(&key.secret);
            let line = serde_json::json!({"user": user, "device": device, "grant": grant});
            writeln!(out, "{line}").map_err(io)?;
        }
        Ok(())
    }
}

/// `streamcap keygen`.
pub fn keygen(out: &mut impl Write) -> Result<(), String> {
    let secret = keys::generate().map_err(|e| format!("no randomness: {e}"))?;
    writeln!(out, "{}", keys::to_hex(&secret)).map_err(|e| e.to_string())
}
