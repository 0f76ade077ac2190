//! The accept path with TLS: [`Secured`] takes a listener's [`Incoming`] connections (each
//! already holding a connection slot and guarded by the listener's timeouts) and, when TLS
//! is on, runs each one's handshake in its own task, yielding the connections whose
//! handshake succeeded. Handshakes run side by side, so a slow or silent client never holds
//! up the others; each must finish within the header-read timeout, and holds its slot while
//! it runs, so the connection cap counts clients that are still handshaking.
//!
//! A failed or timed-out handshake is counted in `ratelimiter_tls_events_total` and logged
//! at debug (a port scanner or a plaintext client must not flood the log); the connection
//! is closed and its slot freed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;

use super::{Alpn, ServerTls};
use crate::listener::{Guarded, Incoming};
use crate::metrics::TlsEvent;

/// One accepted connection: plaintext, or TLS once its handshake is done.
pub enum Connection {
    Plain(Guarded),
    Tls(Box<TlsStream<Guarded>>),
}

/// TLS settings of one listener.
struct ListenerTls {
    tls: Arc<ServerTls>,
    alpn: Alpn,
    handshake_within: Duration,
}

/// A listener's connections, through the TLS handshake when TLS is on; a `Stream` for tonic
/// and for the HTTP accept loop. It never yields an error.
pub struct Secured {
    incoming: Incoming,
    tls: Option<ListenerTls>,
    handshakes: JoinSet<Option<TlsStream<Guarded>>>,
    name: &'static str,
}

impl Secured {
    /// `incoming` through `tls` (if any), each handshake bounded by `handshake_within`.
    pub fn new(
        incoming: Incoming,
        tls: Option<Arc<ServerTls>>,
        alpn: Alpn,
        handshake_within: Duration,
        name: &'static str,
    ) -> Self {
        Secured {
            incoming,
            tls: tls.map(|tls| ListenerTls {
                tls,
                alpn,
                handshake_within,
            }),
            handshakes: JoinSet::new(),
            name,
        }
    }

    /// The connection slots: every open (or handshaking) connection holds one.
    pub fn slots(&self) -> Arc<Semaphore> {
        self.incoming.slots()
    }

    /// The cap on this listener's open connections.
    pub fn max_connections(&self) -> usize {
        self.incoming.max_connections()
    }
}

/// Runs one TLS handshake, bounded by `within`; `None` (counted, logged) when it fails.
async fn handshake(
    io: Guarded,
    tls: Arc<ServerTls>,
    alpn: Alpn,
    within: Duration,
    listener: &'static str,
) -> Option<TlsStream<Guarded>> {
    let peer = io.peer_addr().ok();
    let acceptor = TlsAcceptor::from(tls.config(alpn));
    match tokio::time::timeout(within, acceptor.accept(io)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tls.count(TlsEvent::HandshakeFailure);
            tracing::debug!(listener, ?peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tls.count(TlsEvent::HandshakeTimeout);
            tracing::debug!(
                listener,
                ?peer,
                "TLS handshake not done within the header-read timeout"
            );
            None
        }
    }
}

impl Stream for Secured {
    type Item = Result<Connection, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(tls) = &this.tls else {
            return Pin::new(&mut this.incoming)
                .poll_next(cx)
                .map(|next| next.map(|conn| conn.map(Connection::Plain)));
        };
        // Start a handshake for every connection accepted by now.
        loop {
            match Pin::new(&mut this.incoming).poll_next(cx) {
                Poll::Ready(Some(Ok(io))) => {
                    let task = handshake(
                        io,
                        tls.tls.clone(),
                        tls.alpn,
                        tls.handshake_within,
                        this.name,
                    );
                    this.handshakes.spawn(task);
                }
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => break,
            }
        }
        // Hand over the first connection whose handshake is done.
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(stream)))) => {
                    return Poll::Ready(Some(Ok(Connection::Tls(Box::new(stream)))));
                }
                // Failed (counted by the task), or the task was cancelled.
                Poll::Ready(Some(_)) => continue,
                // No handshake running: the accept above wakes this task.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Connection::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Connection::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(io) => Pin::new(io).poll_flush(cx),
            Connection::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Connection::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Connection::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(io) => io.is_write_vectored(),
            Connection::Tls(io) => io.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Connection::Plain(io) => io.connect_info(),
            Connection::Tls(io) => io.get_ref().0.connect_info(),
        }
    }
}
