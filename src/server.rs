//! Sockets: the public and operator listeners (one connection stack for
//! both), the connection cap and graceful shutdown; it starts the store's
//! sweeper ([`crate::sweeper`]) and stops it on shutdown. hyper parses
//! HTTP/1.1 with its own limits on header count and head size; what it lacks
//! per connection (separate idle and head timeouts, repeated
//! `Content-Length` detection) lives in [`crate::conn`].

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

use crate::config::Config;
use crate::conn::{Phase, TimedIo};
use crate::http::{Api, Edge, RepeatedContentLength, serve_admin, serve_api};
use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::sweeper::FreedHook;
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
        let sweeper = api.limiter.spawn_sweeper(self.sweep_interval, self.freed.clone(), stop_rx.clone());
        let admin_task = tokio::spawn(accept(admin, Listener::Admin, api.clone(), stop_rx.clone()));
        let public_task = tokio::spawn(accept(public, Listener::Public, api.clone(), stop_rx));
        shutdown.await;
        let _ = stop_tx.send(true);
        let _ = tokio::join!(public_task, admin_task, sweeper);
    }
}

fn publish_bounds(metrics: &Metrics, config: &Config) {
    metrics.bounds(config.core.max_sessions, config.max_connections);
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
                m.connection_refused();
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

/// Counts an open connection for as long as it lives.
struct ConnGuard {
    open: Arc<AtomicU64>,
    metrics: Option<Arc<Metrics>>,
}

impl ConnGuard {
    fn new(open: Arc<AtomicU64>, metrics: Option<Arc<Metrics>>) -> ConnGuard {
        open.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &metrics {
            m.connection_opened();
        }
        ConnGuard { open, metrics }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.connection_closed();
        }
    }
}
