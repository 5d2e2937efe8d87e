//! `streamcap serve`: the process around a [`Server`]. Builds the runtime,
//! binds the listeners, says when the open-files limit is too low for
//! `max_connections`, shows the dev-mode banner, runs until SIGTERM or
//! SIGINT and reloads the configuration on SIGHUP. The command line itself
//! is [`crate::cli`].

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cli::ServeArgs;
use crate::config::{self, Config, Overrides};
use crate::grant::GrantClaims;
use crate::keys::Key;
use crate::server::Server;

/// `streamcap serve`: builds the runtime, binds, runs until SIGTERM or
/// SIGINT, reloads the configuration on SIGHUP.
///
/// `release(force)` asks the allocator to return the calling thread's free
/// memory to the system. After a sweep drops many sessions it runs on the
/// sweeper's thread, then once on each worker thread as it next goes idle:
/// an allocator like mimalloc keeps pages freed by another thread until
/// their owner collects them, and an idle worker never would.
pub fn serve(args: &ServeArgs, release: fn(bool)) -> Result<(), String> {
    args.log.init();
    let env_keys = std::env::var(config::SERVER_KEYS_ENV).ok();
    let config = Config::load(&args.settings, env_keys.as_deref())?;
    let freed = Arc::new(AtomicU64::new(0));
    let seen_by_workers = freed.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(move || {
            thread_local!(static SEEN: Cell<u64> = const { Cell::new(0) });
            let now = seen_by_workers.load(Ordering::Relaxed);
            if SEEN.replace(now) != now {
                release(true);
            }
        })
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let public = listen(config.listen)?;
        let admin = listen(config.admin_listen)?;
        let addr = public.local_addr().map_err(|e| e.to_string())?;
        let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(config = %config.summary(), "effective configuration");
        check_open_files_limit(config.max_connections, config.dev_mode);
        if config.dev_mode {
            tracing::warn!("DEV MODE: tenant \"demo\" and the server key use fixed, publicly known secrets");
            eprintln!("{}", dev_banner(addr));
        }
        // tokio's default: a worker per CPU.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let server = Server::new(&config).map_err(|e| e.to_string())?.on_bulk_free(move || {
            release(true);
            freed.fetch_add(1, Ordering::Relaxed);
            // Idle workers run the park hook only once woken: give each a task.
            for _ in 0..workers {
                tokio::spawn(tokio::task::yield_now());
            }
        });
        let server = Arc::new(server);
        tokio::spawn(reload_on_hangup(server.clone(), args.settings.clone(), env_keys, config));
        tracing::info!("listening on {addr}, operator endpoints on {admin_addr}");
        server.serve(public, admin, shutdown_signal()).await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Pending connections the kernel queues for `accept` (it caps this at
/// `net.core.somaxconn`). The default of 128 drops SYNs in a reconnect storm
/// after a failover or a restart, and those clients wait a second or more.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
    let fail = |e: std::io::Error| format!("cannot listen on {addr}: {e}");
    let socket = socket.map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(addr).map_err(fail)?;
    socket.listen(LISTEN_BACKLOG).map_err(fail)
}

/// Descriptors beyond one per connection: the listeners, the runtime's and
/// the logger's, and connections being refused with 503 at the cap, each of
/// which holds one for a moment.
const SPARE_DESCRIPTORS: u64 = 64;

/// Each connection holds a file descriptor, and past the open-files limit
/// new connections fail at `accept` instead of getting a 503. `main` has
/// already raised the soft limit to the hard one; if that still cannot hold
/// `max_connections`, say so and what to do. A configured server warns; a
/// dev server keeps the production default of `max_connections`, which only
/// a load test approaches, so there it is an info line.
fn check_open_files_limit(max_connections: usize, dev_mode: bool) {
    let Some((soft, hard)) = open_files_limits() else { return };
    let need = max_connections as u64 + SPARE_DESCRIPTORS;
    if soft >= need {
        return;
    }
    let advice = format!(
        "the open-files limit ({soft}, hard limit {hard}) is below max_connections + {SPARE_DESCRIPTORS} ({need}): \
         past about {} connections new ones fail instead of getting 503. Raise it to at least {need}: \
         `ulimit -n {need}` in the shell that starts streamcap, LimitNOFILE={need} in its systemd unit, \
         or --ulimit nofile={need} for a container; or lower max_connections",
        soft.saturating_sub(SPARE_DESCRIPTORS)
    );
    if dev_mode {
        tracing::info!(open_files_limit = soft, max_connections, "{advice}");
    } else {
        tracing::warn!(open_files_limit = soft, max_connections, "{advice}");
    }
}

/// This process's open-files limits, soft and hard, from `/proc/self/limits`
/// (`None` where there is no such file).
fn open_files_limits() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut values = line.split_whitespace().skip(3).map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
    Some((values.next()?, values.next()?))
}

/// SIGHUP: load the configuration again and put it in force; a
/// configuration that does not load is refused and the old one stays.
async fn reload_on_hangup(server: Arc<Server>, overrides: Overrides, env_keys: Option<String>, mut current: Config) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else { return };
    while hangups.recv().await.is_some() {
        match Config::load(&overrides, env_keys.as_deref()) {
            Ok(next) => {
                if (next.listen, next.admin_listen, next.sweep_interval)
                    != (current.listen, current.admin_listen, current.sweep_interval)
                {
                    tracing::warn!("listen, admin_listen and sweep_millis changes take effect at the next restart");
                }
                server.reload(&next);
                server.metrics().reloaded(true);
                tracing::info!(config = %next.summary(), "configuration reloaded");
                current = next;
            }
            Err(e) => {
                server.metrics().reloaded(false);
                tracing::error!(error = %e, "configuration reload refused; the previous one stays in force");
            }
        }
    }
}

fn dev_banner(addr: SocketAddr) -> String {
    let port = addr.port();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let claims = GrantClaims {
        tenant: config::DEV_TENANT.into(),
        sub: "alice".into(),
        limit: 2,
        exp: now + 24 * 3600,
        ..Default::default()
    };
    let key = Key::parse("dev", config::DEV_TENANT_KEY).expect("the dev tenant key is valid").secret;
    let grant = claims.mint(&key);
    format!(
        "\n!!! DEV MODE: no configuration was given. Tenant \"{}\" and the server key use\n\
         !!! FIXED, PUBLICLY KNOWN secrets: anyone can mint grants. Never expose this\n\
         !!! server. For real use, write a TOML file with one [[server_keys]] and one\n\
         !!! [[tenants]] and start with --config FILE: see {}.\n\n\
         Try it (a grant for user alice, limit 2, valid 24 h):\n\n  \
         curl -s -X POST http://127.0.0.1:{port}/v1/users/alice/sessions \\\n    \
         -H 'Authorization: Bearer {grant}'\n\n\
         More grants: streamcap mint --user bob --limit 3\n",
        config::DEV_TENANT,
        config::PRODUCTION_RECIPE,
    )
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down: no new connections, finishing requests in flight");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_banner_says_what_a_real_configuration_is() {
        let banner = dev_banner("127.0.0.1:18080".parse().unwrap());
        assert!(banner.contains("one [[server_keys]] and one\n!!! [[tenants]]"), "{banner}");
        assert!(banner.contains("--config FILE"), "{banner}");
        assert!(banner.contains(config::PRODUCTION_RECIPE), "{banner}");
        assert!(!banner.contains(config::SERVER_KEYS_ENV), "{banner}");
        assert!(banner.contains("http://127.0.0.1:18080/v1/users/alice/sessions"), "{banner}");
    }
}
