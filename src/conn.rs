//! One public connection's guards, below hyper: the idle timeout, the
//! request-head timeout, a bound on stalled writes, and detection of
//! repeated `Content-Length` lines. hyper's own header timer also runs while
//! a keep-alive connection is idle, and hyper merges equal repeated
//! `Content-Length` headers before the service could see them, so both are
//! done here on the raw byte stream. Nothing here parses HTTP beyond
//! finding header lines.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Where a connection is in its request cycle, shared by the service (which
/// knows when a request starts and ends) and [`TimedIo`].
pub struct Phase {
    epoch: Instant,
    /// A request is being served: no read deadline applies.
    busy: AtomicBool,
    /// Requests answered so far; a change starts a new idle period.
    done: AtomicU64,
    /// When the last answer was ready, in ms since `epoch`.
    idle_since_ms: AtomicU64,
    /// The head being served repeated `Content-Length`.
    repeated_length: AtomicBool,
}

impl Phase {
    pub fn new() -> Phase {
        Phase {
            epoch: Instant::now(),
            busy: AtomicBool::new(false),
            done: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            repeated_length: AtomicBool::new(false),
        }
    }

    /// A request head was parsed; returns whether it repeated `Content-Length`.
    pub fn begin(&self) -> bool {
        self.busy.store(true, Ordering::Relaxed);
        self.repeated_length.swap(false, Ordering::Relaxed)
    }

    /// The answer is ready: the connection is idle from now on.
    pub fn end(&self) {
        self.idle_since_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.busy.store(false, Ordering::Relaxed);
        // Release: whoever sees the new count also sees `idle_since_ms`.
        self.done.fetch_add(1, Ordering::Release);
    }
}

impl Default for Phase {
    fn default() -> Phase {
        Phase::new()
    }
}

/// A TCP stream that fails reads once the connection has been idle for
/// `idle` or has spent `head` receiving one request head, and fails writes
/// stalled for `idle` (a peer that never reads). hyper then closes it.
pub struct TimedIo {
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
    scan: HeadScan,
}

impl TimedIo {
    pub fn new(io: TcpStream, phase: Arc<Phase>, idle: Duration, head: Duration) -> TimedIo {
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
            scan: HeadScan::default(),
        }
    }

    fn timed_out(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, format!("{what} timeout"))
    }

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
        let busy = this.phase.busy.load(Ordering::Relaxed);
        let done = this.phase.done.load(Ordering::Acquire);
        if done != this.seen_done {
            this.seen_done = done;
            this.head_deadline = None;
            let since = Duration::from_millis(this.phase.idle_since_ms.load(Ordering::Relaxed));
            this.idle_deadline = this.phase.epoch + since + this.idle;
            this.scan = HeadScan::default();
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                let fresh = &buf.filled()[before..];
                if !fresh.is_empty() && !busy {
                    if this.head_deadline.is_none() {
                        this.head_deadline = Some(Instant::now() + this.head);
                    }
                    if this.scan.feed(fresh) {
                        this.phase.repeated_length.store(true, Ordering::Relaxed);
                    }
                }
                Poll::Ready(result)
            }
            Poll::Pending if busy => {
                // hyper may not read again once the answer is out: keep a
                // timer armed so the idle deadline is checked after it.
                expired(&mut this.read_timer, Instant::now() + this.idle, cx);
                Poll::Pending
            }
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

/// Counts `Content-Length:` lines in a request head as its bytes arrive,
/// until the blank line that ends it. Heads that arrive while an earlier
/// request is being served (pipelining) are not scanned; hyper still
/// handles them, merging equal repeated lengths and refusing unequal ones.
/// Works a line at a time (`memchr` finds the line ends), not a byte at a time.
#[derive(Debug)]
struct HeadScan {
    /// Still inside the head.
    active: bool,
    /// The current line holds nothing but CR so far.
    blank: bool,
    /// Bytes of the header name matched so far; `None` once the line cannot match.
    matched: Option<usize>,
    lengths: u8,
}

impl Default for HeadScan {
    fn default() -> HeadScan {
        HeadScan { active: true, blank: true, matched: Some(0), lengths: 0 }
    }
}

const CONTENT_LENGTH: &[u8] = b"content-length:";

impl HeadScan {
    /// Feeds bytes; returns true once a head with two or more lengths ends.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while self.active && !bytes.is_empty() {
            match memchr::memchr(b'\n', bytes) {
                None => {
                    self.line_part(bytes);
                    return false;
                }
                Some(end) => {
                    self.line_part(&bytes[..end]);
                    bytes = &bytes[end + 1..];
                    if self.blank {
                        self.active = false;
                        return self.lengths >= 2;
                    }
                    (self.blank, self.matched) = (true, Some(0));
                }
            }
        }
        false
    }

    /// Takes the next piece of the current line (without its `\n`).
    fn line_part(&mut self, part: &[u8]) {
        self.blank = self.blank && part.iter().all(|&b| b == b'\r');
        if let Some(done) = self.matched {
            let want = &CONTENT_LENGTH[done..];
            let n = want.len().min(part.len());
            self.matched = if !part[..n].eq_ignore_ascii_case(&want[..n]) {
                None
            } else if n == want.len() {
                self.lengths = self.lengths.saturating_add(1);
                None
            } else {
                Some(done + n)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> bool {
        let mut s = HeadScan::default();
        chunks.iter().any(|c| s.feed(c))
    }

    #[test]
    fn finds_repeated_lengths_across_reads() {
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\ncontent-length: 0\r\n\r\n";
        assert!(scan(&[head]));
        let (a, b) = head.split_at(40);
        assert!(scan(&[a, b]));
        assert!(scan(&head.chunks(1).collect::<Vec<_>>()));
    }

    #[test]
    fn ignores_single_lengths_and_lookalikes() {
        assert!(!scan(&[b"POST / HTTP/1.1\r\nContent-Length: 0\r\nX-Content-Length: 0\r\n\r\n"]));
        assert!(!scan(&[b"GET /content-length: HTTP/1.1\r\nContent-Length: 0\r\n\r\n"]));
        // After the head ends, body bytes are not scanned.
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nContent-Length: 34\r\n\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n"
        ]));
    }
}
