//! Sockets and connections: the public and operator listeners, the
//! connection cap, the idle and request-head timeouts, graceful shutdown and
//! the one background sweeper. hyper parses HTTP/1.1 with its own limits on
//! header count and head size; the timeouts hyper lacks (its header timer
//! also runs while a keep-alive connection is idle) live in [`TimedIo`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::config::Config;
use crate::http::{Api, Cors, now_ms, serve_admin, serve_api};
use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::wire;

/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Body of the answer to a connection over `max_connections`.
const OVER_CAPACITY: &str = r#"{"error":"over_capacity","message":"too many connections: retry later"}"#;

/// Runs the server on bound listeners until `shutdown` resolves, then stops
/// accepting, finishes in-flight requests (up to 10 s) and returns.
pub async fn run(
    config: Config,
    public: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let limiter = Limiter::new(config.core.clone(), metrics).map_err(io::Error::other)?;
    let api = Arc::new(Api { limiter, cors: Cors::new(&config.cors_origins), body_timeout: config.header_timeout });
    let (stop_tx, stop_rx) = watch::channel(false);

    let sweeper = tokio::spawn(sweep_loop(api.clone(), config.sweep_interval, stop_rx.clone()));
    let admin_task = tokio::spawn(accept_admin(admin, api.clone(), config.header_timeout, stop_rx.clone()));
    let public_task = tokio::spawn(accept_public(public, api, config, stop_rx));

    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = tokio::join!(public_task, admin_task, sweeper);
    Ok(())
}

fn http1_builder(header_timeout: Option<Duration>) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .max_headers(wire::MAX_HEADERS)
        .max_header_size(wire::MAX_HEAD_BYTES)
        .max_buf_size(wire::MAX_HEAD_BYTES + wire::MAX_BODY_BYTES)
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .pipeline_flush(true);
    b
}

async fn accept_public(listener: TcpListener, api: Arc<Api>, config: Config, mut stop: watch::Receiver<bool>) {
    // Our own TimedIo enforces both the idle and the head timeout.
    let builder = http1_builder(None);
    let graceful = GracefulShutdown::new();
    let open = Arc::new(AtomicU64::new(0));
    loop {
        let stream = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    eprintln!("streamcap: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let metrics = api.limiter.metrics().clone();
        if open.load(Ordering::Relaxed) >= config.max_connections as u64 {
            metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(refuse(stream));
            continue;
        }
        let _ = stream.set_nodelay(true);
        let guard = ConnGuard::new(open.clone(), metrics);
        let phase = Arc::new(Phase::default());
        let io = TimedIo::new(stream, phase.clone(), config.idle_timeout, config.header_timeout);
        let api = api.clone();
        let service = service_fn(move |req| {
            phase.busy.store(true, Ordering::Relaxed);
            let (api, phase) = (api.clone(), phase.clone());
            async move {
                let reply = serve_api(api, req).await;
                phase.done.fetch_add(1, Ordering::Relaxed);
                phase.busy.store(false, Ordering::Relaxed);
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

async fn accept_admin(listener: TcpListener, api: Arc<Api>, header_timeout: Duration, mut stop: watch::Receiver<bool>) {
    let builder = http1_builder(Some(header_timeout));
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let api = api.clone();
        let service = service_fn(move |req| {
            let api = api.clone();
            async move { Ok::<_, std::convert::Infallible>(serve_admin(api, req).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(conn);
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
}

async fn sweep_loop(api: Arc<Api>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                let api = api.clone();
                // A sweep walks the whole map: keep it off the request workers.
                let _ = tokio::task::spawn_blocking(move || api.limiter.sweep(now_ms())).await;
            }
        }
    }
}

/// Counts an open connection for as long as it lives.
struct ConnGuard {
    open: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl ConnGuard {
    fn new(open: Arc<AtomicU64>, metrics: Arc<Metrics>) -> ConnGuard {
        open.fetch_add(1, Ordering::Relaxed);
        metrics.connections_open.fetch_add(1, Ordering::Relaxed);
        ConnGuard { open, metrics }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a connection is in its request cycle, shared by the service
/// (which knows when a request starts and ends) and [`TimedIo`].
#[derive(Default)]
struct Phase {
    /// A request is being served: no read deadline applies.
    busy: AtomicBool,
    /// Requests answered so far; a change restarts the idle clock.
    done: AtomicU64,
}

/// A TCP stream that fails reads once the connection has been idle for
/// `idle` or has spent `head` receiving one request head, and fails writes
/// stalled for `idle` (a peer that never reads). hyper then closes it.
struct TimedIo {
    io: TcpStream,
    phase: Arc<Phase>,
    idle: Duration,
    head: Duration,
    seen_done: u64,
    idle_deadline: Instant,
    head_deadline: Option<Instant>,
    read_timer: Pin<Box<Sleep>>,
    write_deadline: Option<Instant>,
    write_timer: Pin<Box<Sleep>>,
}

impl TimedIo {
    fn new(io: TcpStream, phase: Arc<Phase>, idle: Duration, head: Duration) -> TimedIo {
        let now = Instant::now();
        TimedIo {
            io,
            phase,
            idle,
            head,
            seen_done: 0,
            idle_deadline: now + idle,
            head_deadline: None,
            read_timer: Box::pin(tokio::time::sleep_until(now + idle)),
            write_deadline: None,
            write_timer: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    fn timed_out(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, format!("{what} timeout"))
    }
}

/// Reports whether `deadline` has passed, keeping `timer` armed for it.
/// Deadlines mostly move later (each request pushes the idle deadline out),
/// so the timer is re-armed only when one moves earlier or when it fires
/// early: a request costs no timer-wheel work.
fn expired(timer: &mut Pin<Box<Sleep>>, deadline: Instant, cx: &mut Context<'_>) -> bool {
    if deadline < timer.deadline() {
        timer.as_mut().reset(deadline);
    }
    if timer.as_mut().poll(cx).is_pending() {
        return false;
    }
    if Instant::now() >= deadline {
        return true;
    }
    timer.as_mut().reset(deadline);
    timer.as_mut().poll(cx).is_ready()
}

impl AsyncRead for TimedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let busy = this.phase.busy.load(Ordering::Relaxed);
        let done = this.phase.done.load(Ordering::Relaxed);
        if done != this.seen_done {
            this.seen_done = done;
            this.head_deadline = None;
            this.idle_deadline = Instant::now() + this.idle;
        }
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before && !busy && this.head_deadline.is_none() {
                    this.head_deadline = Some(Instant::now() + this.head);
                }
                Poll::Ready(result)
            }
            Poll::Pending if busy => Poll::Pending,
            Poll::Pending => {
                let (deadline, what) = match this.head_deadline {
                    Some(d) => (d, "request head"),
                    None => (this.idle_deadline, "idle"),
                };
                if expired(&mut this.read_timer, deadline, cx) {
                    return Poll::Ready(Err(Self::timed_out(what)));
                }
                Poll::Pending
            }
        }
    }
}

impl TimedIo {
    fn stall<T>(&mut self, polled: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.write_deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let deadline = *self.write_deadline.get_or_insert_with(|| Instant::now() + self.idle);
                if expired(&mut self.write_timer, deadline, cx) {
                    return Poll::Ready(Err(Self::timed_out("write")));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.stall(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.stall(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.stall(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.io).poll_shutdown(cx))?;
        Poll::Ready(Ok(()))
    }
}
