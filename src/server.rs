//! Sockets: the public and operator listeners (one connection stack for
//! both), the connection cap, graceful shutdown and the one background
//! sweeper. hyper parses HTTP/1.1 with its
//! own limits on header count and head size; what it lacks per connection
//! (separate idle and head timeouts, repeated `Content-Length` detection)
//! lives in [`crate::conn`].

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Config;
use crate::conn::{Phase, TimedIo};
use crate::http::{Api, Edge, RepeatedContentLength, now_ms, serve_admin, serve_api};
use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::store::Swept;
use crate::wire;

/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Body of the answer to a connection over `max_connections`.
const OVER_CAPACITY: &str = r#"{"error":"over_capacity","message":"too many connections: retry later"}"#;

/// A running service's state: the core, the adapter's settings and the
/// sweep interval. Built once; [`Server::reload`] swaps settings in place.
pub struct Server {
    api: Arc<Api>,
    sweep_interval: Duration,
    freed: Option<FreedHook>,
}

/// Called on the sweeper's thread after a pass that dropped many records.
pub type FreedHook = Arc<dyn Fn() + Send + Sync>;

/// A sweep pass that drops at least this many records (and an eighth of
/// what it keeps) calls the [`FreedHook`].
const FREED_HOOK_AFTER: usize = 4096;

impl Server {
    pub fn new(config: &Config) -> io::Result<Server> {
        let metrics = Arc::new(Metrics::default());
        publish_bounds(&metrics, config);
        let limiter = Limiter::new(config.core.clone(), metrics).map_err(io::Error::other)?;
        let api = Arc::new(Api { limiter, edge: ArcSwap::from_pointee(Edge::new(config)) });
        Ok(Server { api, sweep_interval: config.sweep_interval, freed: None })
    }

    /// Runs `hook` after every sweep pass that dropped many records, e.g.
    /// to have the allocator return the freed memory to the system (the
    /// binary does; the library itself has no allocator to tell).
    pub fn on_bulk_free(mut self, hook: impl Fn() + Send + Sync + 'static) -> Server {
        self.freed = Some(Arc::new(hook));
        self
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        self.api.limiter.metrics()
    }

    /// Puts a new configuration in force without dropping a session or a
    /// connection: keys, tenants, bounds, limits, timeouts and CORS. The
    /// listen addresses and the sweep interval keep their startup values.
    pub fn reload(&self, config: &Config) {
        self.api.limiter.reload(config.core.clone());
        self.api.edge.store(Arc::new(Edge::new(config)));
        publish_bounds(self.metrics(), config);
    }

    /// Serves on bound listeners until `shutdown` resolves, then stops
    /// accepting, finishes in-flight requests (up to 10 s) and returns.
    pub async fn serve(&self, public: TcpListener, admin: TcpListener, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let api = &self.api;
        let sweeper = tokio::spawn(sweep_loop(api.clone(), self.sweep_interval, self.freed.clone(), stop_rx.clone()));
        let admin_task = tokio::spawn(accept(admin, Listener::Admin, api.clone(), stop_rx.clone()));
        let public_task = tokio::spawn(accept(public, Listener::Public, api.clone(), stop_rx));
        shutdown.await;
        let _ = stop_tx.send(true);
        let _ = tokio::join!(public_task, admin_task, sweeper);
    }
}

fn publish_bounds(metrics: &Metrics, config: &Config) {
    metrics.max_sessions.store(config.core.max_sessions, Ordering::Relaxed);
    metrics.max_connections.store(config.max_connections as u64, Ordering::Relaxed);
}

/// Runs a server for `config` on bound listeners until `shutdown` resolves.
pub async fn run(
    config: Config,
    public: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    Server::new(&config)?.serve(public, admin, shutdown).await;
    Ok(())
}

fn http1_builder() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .max_headers(wire::MAX_HEADERS)
        .max_header_size(wire::MAX_HEAD_BYTES)
        .max_buf_size(wire::MAX_HEAD_BYTES + wire::MAX_BODY_BYTES)
        .header_read_timeout(None)
        .keep_alive(true);
    b
}

/// Which listener a connection came in on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listener {
    Public,
    Admin,
}

/// Accepts connections until `stop`, then drains them (up to 10 s). Both
/// listeners share the connection handling: the same timeouts and head
/// checks ([`TimedIo`]) and each its own `max_connections` cap; only
/// public connections count in the connection metrics.
async fn accept(listener: TcpListener, which: Listener, api: Arc<Api>, mut stop: watch::Receiver<bool>) {
    // Our own TimedIo enforces both the idle and the head timeout.
    let builder = http1_builder();
    let graceful = GracefulShutdown::new();
    let open = Arc::new(AtomicU64::new(0));
    let metrics = (which == Listener::Public).then(|| api.limiter.metrics().clone());
    loop {
        let stream = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let edge = api.edge.load();
        if open.load(Ordering::Relaxed) >= edge.max_connections as u64 {
            if let Some(m) = &metrics {
                m.connections_refused.fetch_add(1, Ordering::Relaxed);
            }
            tokio::spawn(refuse(stream));
            continue;
        }
        let _ = stream.set_nodelay(true);
        let guard = ConnGuard::new(open.clone(), metrics.clone());
        let phase = Arc::new(Phase::new());
        let io = TimedIo::new(stream, phase.clone(), edge.idle_timeout, edge.header_timeout);
        let api = api.clone();
        let service = service_fn(move |mut req| {
            if phase.begin() {
                req.extensions_mut().insert(RepeatedContentLength);
            }
            let (api, phase) = (api.clone(), phase.clone());
            async move {
                let reply = match which {
                    Listener::Public => serve_api(api, req).await,
                    Listener::Admin => serve_admin(api, req).await,
                };
                phase.end();
                Ok::<_, std::convert::Infallible>(reply)
            }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(guard);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
}

async fn refuse(mut stream: TcpStream) {
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{OVER_CAPACITY}",
        OVER_CAPACITY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// The sweeper: every `every`, or less often when the map is so large that
/// its passes would otherwise take more than about 2% of one core. A pass
/// sleeps briefly between chunks of users so that it never holds a core for
/// long: on a busy two-core machine a 50 ms burst shows in request latency.
/// While it waits out a long budget it still looks every `every`: once
/// every session held has expired (a mass expiry, the end of a load test),
/// the pass that clears them runs at once, once per such moment.
async fn sweep_loop(api: Arc<Api>, every: Duration, freed: Option<FreedHook>, mut stop: watch::Receiver<bool>) {
    const PAUSE: Duration = Duration::from_micros(100);
    let mut next = Instant::now();
    let mut cleared_for = None;
    let mut freeing = Freeing::default();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(next.min(Instant::now() + every)) => {
                if Instant::now() < next {
                    let expired = api.limiter.all_sessions_expired(now_ms());
                    if expired.is_none() || expired == cleared_for {
                        continue;
                    }
                    cleared_for = expired;
                }
                let (api, freed, mut state) = (api.clone(), freed.clone(), freeing);
                // A sweep walks the whole map: keep it off the request workers.
                let outcome = tokio::task::spawn_blocking(move || {
                    let began = std::time::Instant::now();
                    let mut paused = Duration::ZERO;
                    let swept = api.limiter.sweep_paced(now_ms(), &mut || {
                        std::thread::sleep(PAUSE);
                        paused += PAUSE;
                    });
                    let busy = began.elapsed().saturating_sub(paused);
                    let (hook_now, hurry) = state.after(&swept);
                    if hook_now && let Some(hook) = freed {
                        hook();
                    }
                    (busy, hurry, state)
                })
                .await
                .unwrap_or_default();
                let (busy, hurry);
                (busy, hurry, freeing) = outcome;
                // While a mass expiry is being cleared, the next pass comes at
                // once rather than after its CPU budget.
                next = Instant::now() + if hurry { every } else { every.max(busy * 49) };
            }
        }
    }
}

/// When the sweeper calls the [`FreedHook`]: once the records dropped since
/// its last call (expired sessions, ended tombstones) reach
/// `FREED_HOOK_AFTER` and an eighth of those still held, and once more on
/// the pass after, when what that pass retired (papaya's batches) has been
/// freed too; and on the pass that lets go of an emptied map, whose table
/// is freed only then (after the last sessions expired, often minutes after
/// the last mass drop).
#[derive(Clone, Copy, Default)]
struct Freeing {
    records: usize,
    dropped: usize,
    trailing: bool,
}

impl Freeing {
    /// Takes in a pass: whether to call the hook now, and whether this pass
    /// alone dropped many records (a mass expiry is under way).
    fn after(&mut self, swept: &Swept) -> (bool, bool) {
        let dropped = swept.expired.max(self.records.saturating_sub(swept.records));
        let many = |n: usize| n >= FREED_HOOK_AFTER.max(swept.records / 8);
        self.records = swept.records;
        self.dropped += dropped;
        let trailing = std::mem::take(&mut self.trailing);
        if many(self.dropped) {
            self.dropped = 0;
            self.trailing = true;
            return (true, many(dropped));
        }
        (trailing || swept.released_map, many(dropped))
    }
}

/// Counts an open connection for as long as it lives.
struct ConnGuard {
    open: Arc<AtomicU64>,
    metrics: Option<Arc<Metrics>>,
}

impl ConnGuard {
    fn new(open: Arc<AtomicU64>, metrics: Option<Arc<Metrics>>) -> ConnGuard {
        open.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &metrics {
            m.connections_open.fetch_add(1, Ordering::Relaxed);
        }
        ConnGuard { open, metrics }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.connections_open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(records: usize, expired: usize) -> Swept {
        Swept { records, expired, ..Swept::default() }
    }

    #[test]
    fn the_freed_hook_runs_after_many_drops_and_on_the_pass_after() {
        let mut f = Freeing::default();
        assert!(!f.after(&pass(100_000, 0)).0, "growing");
        assert!(!f.after(&pass(97_000, 3_000)).0);
        // 6,000 dropped in all: over 4,096 and over an eighth of 94,000.
        assert!(!f.after(&pass(94_000, 3_000)).0, "6,000 < 94,000 / 8");
        assert!(f.after(&pass(80_000, 14_000)).0, "20,000 >= 80,000 / 8");
        assert!(f.after(&pass(80_000, 0)).0, "the trailing pass");
        assert!(!f.after(&pass(80_000, 0)).0);
        // A big drop on a trailing pass starts its own round.
        assert!(f.after(&pass(60_000, 20_000)).0);
        assert!(f.after(&pass(0, 60_000)).0, "trailing, and a round of its own");
        assert!(f.after(&pass(0, 0)).0, "its trailing pass");
        assert!(!f.after(&pass(0, 0)).0);
        // Expired sessions count even when starts keep the total level.
        assert!(!f.after(&pass(80_000, 5_000)).0);
        assert!(f.after(&pass(80_000, 5_000)).0);
        // A pass that drops many records on its own hurries the next one.
        let mut f = Freeing::default();
        assert_eq!(f.after(&pass(10_000_000, 0)), (false, false));
        assert_eq!(f.after(&pass(5_000_000, 5_000_000)), (true, true));
        assert_eq!(f.after(&pass(4_900_000, 100_000)), (true, false), "trailing, no hurry");
        assert_eq!(f.after(&pass(0, 4_900_000)), (true, true));
        // Letting go of an emptied map frees its table: collect then too.
        let mut f = Freeing::default();
        assert_eq!(f.after(&pass(0, 0)), (false, false));
        assert_eq!(f.after(&Swept { released_map: true, ..pass(0, 0) }), (true, false));
        assert_eq!(f.after(&pass(0, 0)), (false, false));
    }
}
