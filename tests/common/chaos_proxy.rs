//! A TCP proxy between the service and a real `redis-server` that injects network faults:
//! a delay before every chunk it forwards (either direction), or a blackhole — connections
//! stay open (new ones are accepted too) and nothing is forwarded — until healed. Bytes held
//! during a blackhole are delivered after the heal, in order, as TCP would after its
//! retransmissions; a connection the service closed meanwhile is closed upstream too.
//! Runs on the test's tokio runtime; stops accepting when dropped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// How often a blackholed relay looks whether it was healed.
const HEAL_POLL: Duration = Duration::from_millis(5);

/// The faults in force, shared by every relay.
#[derive(Default)]
struct Faults {
    delay_ms: AtomicU64,
    blackhole: AtomicBool,
    /// Chunks forwarded so far (both directions): proof that traffic went through.
    chunks: AtomicU64,
}

/// A running proxy to `127.0.0.1:upstream`.
pub struct ChaosProxy {
    port: u16,
    faults: Arc<Faults>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: u16) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Faults::default());
        let shared = faults.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let faults = shared.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        splice(client, server, faults).await;
                    }
                });
            }
        });
        ChaosProxy {
            port,
            faults,
            acceptor,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}`: the URL to give the service.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Waits `delay` before forwarding each chunk from now on (zero: none).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap();
        self.faults.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Stops forwarding anything, connections kept open.
    pub fn blackhole(&self) {
        self.faults.blackhole.store(true, Ordering::SeqCst);
    }

    /// Ends every fault: no delay, no blackhole.
    pub fn heal(&self) {
        self.faults.delay_ms.store(0, Ordering::SeqCst);
        self.faults.blackhole.store(false, Ordering::SeqCst);
    }

    /// Chunks forwarded so far, both directions.
    pub fn chunks(&self) -> u64 {
        self.faults.chunks.load(Ordering::SeqCst)
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// Relays both directions until either side closes; then closes both.
async fn splice(client: TcpStream, server: TcpStream, faults: Arc<Faults>) {
    let (client_rx, client_tx) = client.into_split();
    let (server_rx, server_tx) = server.into_split();
    let mut up = tokio::spawn(relay(client_rx, server_tx, faults.clone()));
    let mut down = tokio::spawn(relay(server_rx, client_tx, faults));
    tokio::select! {
        _ = &mut up => down.abort(),
        _ = &mut down => up.abort(),
    }
}

/// Copies chunks from `from` to `to`, each after the delay in force and never while
/// blackholed.
async fn relay(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, faults: Arc<Faults>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = faults.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        while faults.blackhole.load(Ordering::SeqCst) {
            tokio::time::sleep(HEAL_POLL).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        faults.chunks.fetch_add(1, Ordering::Relaxed);
    }
}
