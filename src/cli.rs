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
use crate::grant::{self, GrantClaims, PollBounds, Tenant, Tenants};
use crate::keys::{self, Key, KeyRing};
use crate::wire::Policy;

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
    /// Most streams the user may play at once, 1-1000.
    #[arg(long, default_value_t = 2)]
    pub limit: i64,
    /// reject_new | evict_oldest | reject_new_device (default: the tenant's;
    /// with STREAMCAP_MINT_KEY, checked as if it were reject_new).
    #[arg(long)]
    pub policy: Option<String>,
    /// Concurrency group of this content (e.g. a studio), 1-64 of [A-Za-z0-9._~-]; needs --group-limit.
    #[arg(long, requires = "group_limit")]
    pub group: Option<String>,
    /// Most streams the user may play at once within --group, 1-1000.
    #[arg(long, requires = "group")]
    pub group_limit: Option<i64>,
    /// Device id (with --count: the prefix of numbered devices).
    #[arg(long)]
    pub device: Option<String>,
    /// Text shown for the session in lists, e.g. "Living room TV" (at most 64 bytes).
    #[arg(long)]
    pub label: Option<String>,
    /// What is playing, shown in session lists (at most 128 bytes).
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
    /// The key to sign with, and the tenants as the server would know them,
    /// to check each grant against before it is printed.
    fn signer(&self) -> Result<(Key, Tenants), String> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let in_file = |e: String| format!("config file {}: {e}", path.display());
            let file = config::parse_file(&text).map_err(in_file)?;
            let tenants = config::tenants(&file.tenants).map_err(in_file)?;
            let tenant = tenants
                .get(self.tenant.as_str())
                .ok_or_else(|| format!("tenant {:?} is not in {}", self.tenant, path.display()))?;
            let key = match &self.kid {
                Some(kid) => {
                    tenant.keys.find(kid).ok_or_else(|| format!("tenant {:?} has no key {kid:?}", self.tenant))?
                }
                None => tenant.keys.signing(),
            };
            return Ok((key.clone(), tenants));
        }
        if let Ok(hex) = std::env::var(MINT_KEY_ENV) {
            let key = Key::parse(self.kid.as_deref().unwrap_or("k"), hex.trim())?;
            // The tenant's default policy is not known here; reject_new is the server's default.
            let tenant = Tenant { keys: KeyRing::new(vec![key.clone()])?, default_policy: Policy::RejectNew };
            let mut tenants = Tenants::default();
            tenants.insert(self.tenant.as_str().into(), tenant);
            return Ok((key, tenants));
        }
        if self.tenant != config::DEV_TENANT {
            return Err(format!("no key for tenant {:?}: give --config or {MINT_KEY_ENV}", self.tenant));
        }
        let (_, tenants) = config::dev_keys();
        Ok((tenants[config::DEV_TENANT].keys.signing().clone(), tenants))
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

    /// Writes one grant, or `--count` JSON lines. Each grant is first
    /// verified as the server would verify it (its own code, with the
    /// default poll bounds): one the server would refuse is an error.
    pub fn run(&self, out: &mut impl Write) -> Result<(), String> {
        let (key, tenants) = self.signer()?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let exp = now.saturating_add(self.valid_secs);
        let mint = |user: &str, device: Option<&str>| -> Result<String, String> {
            let grant = self.claims(user, device, exp).mint(&key.secret);
            let now_ms = u64::try_from(now).unwrap_or(0).saturating_mul(1000);
            match grant::verify(&grant, &tenants, PollBounds::DEFAULT, now_ms) {
                Ok(_) => Ok(grant),
                Err(e) => Err(format!("the server would refuse this grant: {}", e.0)),
            }
        };
        let io = |e: std::io::Error| e.to_string();
        let Some(count) = self.count else {
            let grant = mint(&self.user, self.device.as_deref())?;
            return writeln!(out, "{grant}").map_err(io);
        };
        let users = self.users.unwrap_or(count).max(1);
        for i in 0..count {
            let user = format!("{}-{}", self.user, i % users);
            let device = self.device.as_ref().map(|d| format!("{d}-{i}"));
            let grant = mint(&user, device.as_deref())?;
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
