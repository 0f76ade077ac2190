//! Limits on every accepted connection, the same for the HTTP and the gRPC listener.
//!
//! [`Incoming`] accepts connections up to a cap per listener; past it a new connection is
//! accepted and closed at once (so it never holds a file descriptor, and the backlog keeps
//! draining). Each accepted connection is a [`Guarded`] stream that closes itself when
//!
//! - the peer has not sent [`HANDSHAKE_BYTES`] within the header-read timeout (a silent
//!   connection, or one that trickles the first bytes of a request or of the HTTP/2
//!   preface), or
//! - nothing was read or written for the idle timeout, or
//! - it is older than its listener's `close_after` (the gRPC listener's connection age plus
//!   its grace: tonic sends GOAWAY at the age, this closes what is still open after the grace).
//!
//! The HTTP/1 header-read timeout proper (headers of every request complete within it) is
//! hyper's; HTTP/2 keepalive and connection age are the servers' (see `server.rs`).
//! Accept errors (e.g. `EMFILE` when the process is out of file descriptors) are retried
//! after [`ACCEPT_BACKOFF`] instead of spinning.
//!
//! With TLS on, `tls::accept::Secured` runs each accepted connection's handshake on top of
//! its `Guarded` stream: the handshake holds the connection's slot and is bounded by the
//! header-read timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;

/// Bytes a new connection must send within the header-read timeout: the length of the
/// HTTP/2 preface, shorter than any HTTP/1 request head.
pub const HANDSHAKE_BYTES: usize = 24;
/// How long the accept loop waits after an accept error before it tries again.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);
/// At most one warning per this interval about refused connections or accept errors.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What every connection on one listener is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time a new connection gets to send its first [`HANDSHAKE_BYTES`]; for HTTP/1, also
    /// the time each request's head must arrive within.
    pub header_read_timeout: Duration,
    /// A connection on which nothing was read or written for this long is closed.
    pub idle_timeout: Duration,
    /// A connection this old is closed, whatever it is doing; `None`: no age limit.
    pub close_after: Option<Duration>,
}

impl ConnectionLimits {
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

    /// These limits with the connection cap lowered, if need be, so that two listeners at
    /// their cap plus `reserve` other descriptors fit in `fd_limit` (the process's soft
    /// `RLIMIT_NOFILE`). Returns the limits and whether the cap was lowered.
    pub fn fitted_to(self, fd_limit: Option<u64>, reserve: u64) -> (Self, bool) {
        let Some(limit) = fd_limit else {
            return (self, false);
        };
        let room = usize::try_from(limit.saturating_sub(reserve) / 2).unwrap_or(usize::MAX);
        let cap = room.max(1);
        if self.max_connections <= cap {
            return (self, false);
        }
        let fitted = ConnectionLimits {
            max_connections: cap,
            ..self
        };
        (fitted, true)
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            close_after: None,
        }
    }
}

/// The soft limit on open file descriptors, from `/proc/self/limits` (Linux); `None`
/// elsewhere or when it is unlimited.
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A listener's accepted connections, capped and each [`Guarded`]; a `Stream` for tonic and
/// for the HTTP accept loop. It never yields an error: accept errors are logged and retried.
pub struct Incoming {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
    backoff: Option<Pin<Box<Sleep>>>,
    /// Connections closed at the cap (or accept errors) since the last warning.
    refused: u64,
    warned_at: Option<Instant>,
    name: &'static str,
}

impl Incoming {
    /// Accepts on `listener` (called `name` in logs) under `limits`.
    pub fn new(listener: TcpListener, limits: ConnectionLimits, name: &'static str) -> Self {
        Incoming {
            listener,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            backoff: None,
            refused: 0,
            warned_at: None,
            name,
        }
    }

    /// The connection slots: every open connection holds one until it closes.
    pub fn slots(&self) -> Arc<Semaphore> {
        self.slots.clone()
    }

    /// The cap on this listener's open connections.
    pub fn max_connections(&self) -> usize {
        self.limits.max_connections
    }

    /// Logs refusals at most once per [`WARN_EVERY`], with how many there were.
    fn refuse(&mut self, why: &str) {
        self.refused += 1;
        let now = Instant::now();
        if self.warned_at.is_some_and(|at| now - at < WARN_EVERY) {
            return;
        }
        tracing::warn!(
            listener = self.name,
            refused = self.refused,
            max_connections = self.limits.max_connections,
            "{why}"
        );
        self.refused = 0;
        self.warned_at = Some(now);
    }
}

impl Stream for Incoming {
    type Item = Result<Guarded, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(backoff) = &mut this.backoff {
                ready!(backoff.as_mut().poll(cx));
                this.backoff = None;
            }
            match ready!(this.listener.poll_accept(cx)) {
                Err(e) => {
                    this.refuse(&format!("cannot accept a connection: {e}; retrying"));
                    this.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
                Ok((stream, _peer)) => match this.slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let _ = stream.set_nodelay(true);
                        return Poll::Ready(Some(Ok(Guarded::new(stream, slot, this.limits))));
                    }
                    // Dropping the stream closes it.
                    Err(_) => this.refuse("connection cap reached; closing new connections"),
                },
            }
        }
    }
}

/// One accepted connection, closed (an I/O error to its server) when it stays silent past
/// the header-read timeout or idle past the idle timeout; it holds a connection slot.
pub struct Guarded {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Fires at the handshake deadline first, then (lazily re-armed) at idle deadlines.
    timer: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    closes_at: Option<Instant>,
    received: usize,
    last_activity: Instant,
}

impl Guarded {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, limits: ConnectionLimits) -> Self {
        let now = Instant::now();
        let closes_at = limits.close_after.map(|age| now + age);
        let handshake_by = now + limits.header_read_timeout;
        let first = closes_at.map_or(handshake_by, |at| at.min(handshake_by));
        Guarded {
            stream,
            _slot: slot,
            timer: Box::pin(tokio::time::sleep_until(first)),
            idle_timeout: limits.idle_timeout,
            closes_at,
            received: 0,
            last_activity: now,
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.stream.peer_addr()
    }

    fn handshaking(&self) -> bool {
        self.received < HANDSHAKE_BYTES
    }

    /// What a write returned, with bytes written counted as activity; a write that cannot go
    /// on waits on the deadlines (a peer that does not read is idle too).
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.last_activity = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_deadline(cx),
        }
    }

    /// Called while the stream has nothing to do: an error once a deadline has passed,
    /// otherwise `Pending` with the timer armed.
    fn poll_deadline<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let now = Instant::now();
            if self.closes_at.is_some_and(|at| now >= at) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection past its maximum age and grace",
                )));
            }
            // Still handshaking when the timer fires, and not for the age: the handshake
            // deadline (the timer's first deadline is the earlier of the two).
            if self.handshaking() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within the header-read timeout",
                )));
            }
            let idle_until = self.last_activity + self.idle_timeout;
            if now >= idle_until {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle past the idle timeout",
                )));
            }
            let next = self.closes_at.map_or(idle_until, |at| at.min(idle_until));
            self.timer.as_mut().reset(next);
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if read > 0 {
                    this.received = this.received.saturating_add(read);
                    this.last_activity = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.after_write(cx, polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_cap_fits_two_listeners_in_the_descriptor_limit() {
        let limits = ConnectionLimits::default();
        assert_eq!(limits.fitted_to(None, 64), (limits, false));
        assert_eq!(limits.fitted_to(Some(1 << 20), 64), (limits, false));
        let (fitted, lowered) = limits.fitted_to(Some(256), 64);
        assert!(lowered);
        assert_eq!(fitted.max_connections, 96);
        assert_eq!(limits.fitted_to(Some(10), 64).0.max_connections, 1);
    }

    /// Nagle's algorithm held small answers back (a gRPC p99 of 2.5–4.4 ms against the no-op
    /// server's 0.9 ms at 10k/s): every accepted connection has `TCP_NODELAY`.
    #[tokio::test]
    async fn accepted_connections_send_without_delay() {
        use tokio_stream::StreamExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Incoming::new(listener, ConnectionLimits::default(), "test");
        let _client = TcpStream::connect(addr).await.unwrap();
        let Some(Ok(accepted)) = incoming.next().await else {
            panic!("nothing accepted")
        };
        assert!(accepted.stream.nodelay().unwrap());
    }
}
