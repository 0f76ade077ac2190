//! Runs the HTTP and gRPC servers on listeners the caller bound, until a shutdown future
//! resolves.
//!
//! Taking bound listeners (rather than addresses) lets tests bind `127.0.0.1:0` and run the
//! whole service in-process, and lets `main` fail on a busy port before anything starts.
//! Shutdown is ordered for rolling updates: readiness turns false first (HTTP `/readyz` and
//! gRPC health both say NOT_SERVING), then after `shutdown_delay` the servers stop accepting
//! and in-flight requests finish, bounded by `drain_timeout`.
//!
//! Both TCP listeners accept through `tls::Secured` (TLS when `ServeOptions::tls` is set,
//! plaintext otherwise), so the HTTP and the gRPC server share one accept path.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic_health::ServingStatus;
use tower_layer::Layer;

use crate::api::AppState;
use crate::api::ext_authz::ExtAuthzDoor;
use crate::api::grpc::AllowRequestService;
use crate::api::http::{self, router};
use crate::api::ratelimit_service::RateLimitDoor;
use crate::api::response::Refusal;
use crate::listener::{ConnectionLimits, Incoming};
use crate::request_limit::RequestLimitLayer;
use crate::tls::{Alpn, Connection, Secured, ServerTls};

pub struct Listeners {
    pub http: TcpListener,
    pub grpc: TcpListener,
    /// The gRPC services on a Unix socket too (`--grpc-uds`, envoyproxy/ratelimit's
    /// `GRPC_UDS`), the usual way for a sidecar beside Envoy. Local only: no connection cap
    /// or timeouts beyond the request cap.
    #[cfg(unix)]
    pub grpc_uds: Option<tokio::net::UnixListener>,
}

#[derive(Clone)]
pub struct ServeOptions {
    /// How long to keep serving after readiness turned false, so load balancers notice.
    pub shutdown_delay: Duration,
    /// How long in-flight requests get to finish once the servers stop accepting.
    pub drain_timeout: Duration,
    /// What each listener's connections are held to (cap, header-read and idle timeouts).
    pub connections: ConnectionLimits,
    /// Requests one listener serves at once; past it 503 / `RESOURCE_EXHAUSTED`.
    pub max_concurrent_requests: usize,
    /// HTTP/2 keepalive and connection age on the gRPC listener.
    pub grpc: GrpcConnections,
    /// TLS on the HTTP and gRPC listeners (not on the Unix socket); `None`: plaintext.
    pub tls: Option<Arc<ServerTls>>,
}

impl ServeOptions {
    pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 4096;
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            shutdown_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(10),
            connections: ConnectionLimits::default(),
            max_concurrent_requests: Self::DEFAULT_MAX_CONCURRENT_REQUESTS,
            grpc: GrpcConnections::default(),
            tls: None,
        }
    }
}

/// HTTP/2 connection management on the gRPC listener.
#[derive(Clone, Copy, Debug)]
pub struct GrpcConnections {
    /// A PING is sent after this long without frames from the client...
    pub keepalive_interval: Duration,
    /// ...and the connection closed if no answer comes within this.
    pub keepalive_timeout: Duration,
    /// A connection older than this is asked to go away (GOAWAY), so clients such as Envoy
    /// spread over new replicas...
    pub max_connection_age: Duration,
    /// ...and closed this long after that if requests are still running.
    pub max_connection_age_grace: Duration,
}

impl GrpcConnections {
    pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
    pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(3600);
    pub const DEFAULT_MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);
}

impl Default for GrpcConnections {
    fn default() -> Self {
        GrpcConnections {
            keepalive_interval: Self::DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: Self::DEFAULT_KEEPALIVE_TIMEOUT,
            max_connection_age: Self::DEFAULT_MAX_CONNECTION_AGE,
            max_connection_age_grace: Self::DEFAULT_MAX_CONNECTION_AGE_GRACE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("gRPC server failed: {0}")]
    Grpc(tonic::transport::Error),
    #[error("a server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// HTTP/2 streams one client connection may have open at once; more wait in the client.
/// Envoy multiplexes many requests over few connections, so this is generous, but bounded.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// The gRPC service names health is reported for, besides the whole server ("").
const GRPC_SERVICES: &[&str] = &[
    "",
    "ratelimiter.v1.RateLimiter",
    "envoy.service.ratelimit.v3.RateLimitService",
    "envoy.service.auth.v3.Authorization",
];

/// How long start-up waits for the store to warm up (connections open, scripts loaded)
/// before saying ready anyway: a replica whose Redis is down still starts, answers by its
/// failure policy, and `/readyz` applies its per-policy rule.
pub const WARM_UP_WITHIN: Duration = Duration::from_secs(5);
/// How soon a warm-up that is not done yet is tried again.
const WARM_UP_RETRY: Duration = Duration::from_millis(20);

/// Serves until `shutdown` resolves, then drains. Returns once both servers have stopped.
///
/// Readiness (`/readyz`, gRPC health) turns on only once the store has warmed up, or
/// after [`WARM_UP_WITHIN`]; the servers answer requests from the start.
pub async fn run(
    state: Arc<AppState>,
    listeners: Listeners,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let http_addr = listeners.http.local_addr().map_err(ServeError::Http)?;
    let grpc_addr = listeners.grpc.local_addr().map_err(ServeError::Http)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    let (mut http, mut grpc) = spawn_servers(&state, listeners, &options, health_service, stop_rx);
    // A store with nothing to prepare (memory) is ready before the replica says it listens.
    let mut warming = !warmed_up_at_once(&state).await;
    if !warming {
        turn_ready(&state, &health).await;
    }
    {
        use crate::store::Store;
        tracing::info!(http = %http_addr, grpc = %grpc_addr, store = state.limiter.store().name(), "listening");
    }

    // Run until asked to stop, or until a server dies on its own; readiness turns on
    // meanwhile, once the store has warmed up.
    let readiness = become_ready(&state, &health);
    tokio::pin!(readiness, shutdown);
    let early = loop {
        tokio::select! {
            () = &mut readiness, if warming => warming = false,
            () = &mut shutdown => break None,
            r = &mut http => break Some(r?.map_err(ServeError::Http)),
            r = &mut grpc => break Some(r?.map_err(ServeError::Grpc)),
        }
    };
    state.set_ready(false);
    if let Some(result) = early {
        let _ = stop_tx.send(true);
        return result;
    }
    tracing::info!("shutting down: readiness off");
    set_health(&health, ServingStatus::NotServing).await;
    tokio::time::sleep(options.shutdown_delay).await;
    tracing::info!("draining in-flight requests");
    let _ = stop_tx.send(true);
    drain(http, grpc, options.drain_timeout).await
}

/// The gRPC services under the request cap, ready to serve on one listener.
macro_rules! grpc_router {
    ($state:expr, $options:expr, $health:expr) => {
        $options
            .grpc
            .builder()
            .layer(RequestLimitLayer::new(
                $options.max_concurrent_requests,
                grpc_overloaded,
            ))
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .add_service($health)
            .add_service(AllowRequestService::server($state.clone()))
            .add_service(RateLimitDoor::server($state.clone()))
            .add_service(ExtAuthzDoor::server($state.clone()))
    };
}

/// Starts both servers on their listeners, each under its connection and request limits;
/// they stop accepting when `stop` turns true.
fn spawn_servers(
    state: &Arc<AppState>,
    listeners: Listeners,
    options: &ServeOptions,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    stop: watch::Receiver<bool>,
) -> (
    tokio::task::JoinHandle<std::io::Result<()>>,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let header_read_timeout = options.connections.header_read_timeout;
    let http_incoming = Secured::new(
        Incoming::new(listeners.http, options.connections, "http"),
        options.tls.clone(),
        Alpn::Http,
        header_read_timeout,
        "http",
    );
    let http_service = RequestLimitLayer::new(options.max_concurrent_requests, http::overloaded)
        .layer(router(state.clone()));
    let http = serve_http(
        http_incoming,
        http_service,
        header_read_timeout,
        stop.clone(),
    );
    let grpc_limits = options.grpc.limits(options.connections);
    let grpc_incoming = Secured::new(
        Incoming::new(listeners.grpc, grpc_limits, "grpc"),
        options.tls.clone(),
        Alpn::Grpc,
        header_read_timeout,
        "grpc",
    );
    let tcp = grpc_router!(state, options, health_service.clone())
        .serve_with_incoming_shutdown(grpc_incoming, stopped(stop.clone()));
    #[cfg(unix)]
    let grpc = {
        let uds = listeners.grpc_uds.map(|l| {
            grpc_router!(state, options, health_service).serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(l),
                stopped(stop),
            )
        });
        async move {
            match uds {
                Some(uds) => tokio::try_join!(tcp, uds).map(|_| ()),
                None => tcp.await,
            }
        }
    };
    #[cfg(not(unix))]
    let grpc = tcp;
    (tokio::spawn(http), tokio::spawn(grpc))
}

/// Resolves once `stop` turns true (or its sender is gone, which is a stop too).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Waits for both servers to finish their in-flight requests, for at most `within`; then
/// closes what remains.
async fn drain(
    mut http: tokio::task::JoinHandle<std::io::Result<()>>,
    mut grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    within: Duration,
) -> Result<(), ServeError> {
    let drained = tokio::time::timeout(within, async {
        let h = (&mut http).await;
        let g = (&mut grpc).await;
        (h, g)
    })
    .await;
    match drained {
        Ok((h, g)) => {
            h?.map_err(ServeError::Http)?;
            g?.map_err(ServeError::Grpc)?;
            tracing::info!("stopped");
        }
        Err(_) => {
            tracing::warn!(timeout = ?within, "drain timed out; closing remaining connections");
            http.abort();
            grpc.abort();
        }
    }
    Ok(())
}

impl GrpcConnections {
    /// A tonic server builder with these settings.
    fn builder(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(self.keepalive_interval))
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
            .max_connection_age(self.max_connection_age)
        // Not tonic's `max_connection_age_grace`: with it set, tonic 0.14 closes the
        // connection at age + grace without ever sending GOAWAY. The grace is enforced by the
        // listener instead (`limits`).
    }

    /// The gRPC listener's connection limits: `connections`, and closed at age + grace.
    fn limits(&self, connections: ConnectionLimits) -> ConnectionLimits {
        ConnectionLimits {
            close_after: Some(self.max_connection_age + self.max_connection_age_grace),
            ..connections
        }
    }
}

/// The gRPC answer past the concurrent-request cap.
fn grpc_overloaded() -> ::http::Response<tonic::body::Body> {
    Refusal::Overloaded.grpc_status().into_http()
}

/// Serves HTTP/1 and HTTP/2 on `incoming`'s connections until `stop` turns true, then lets
/// each connection finish its requests and returns once all are closed.
async fn serve_http<S>(
    mut incoming: Secured,
    service: S,
    header_read_timeout: Duration,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    S: tower_service::Service<
            ::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let slots = incoming.slots();
    let max_slots = u32::try_from(incoming.max_connections()).unwrap_or(u32::MAX);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let mut stopping = stop.clone();
    loop {
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => break,
            conn = incoming.next() => match conn {
                Some(Ok(io)) => {
                    tokio::spawn(serve_http_connection(io, service.clone(), builder.clone(), stop.clone()));
                }
                Some(Err(never)) => match never {},
                None => break,
            },
        }
    }
    // Stop listening, then wait for every connection to give its slot back.
    drop(incoming);
    let _ = slots.acquire_many(max_slots).await;
    Ok(())
}

async fn serve_http_connection<S>(
    io: Connection,
    service: S,
    builder: auto::Builder<TokioExecutor>,
    mut stop: watch::Receiver<bool>,
) where
    S: tower_service::Service<
            ::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    tokio::select! {
        ended = conn.as_mut() => {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "HTTP connection closed");
            }
            return;
        }
        _ = stop.wait_for(|stop| *stop) => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    for name in GRPC_SERVICES {
        health.set_service_status(*name, status).await;
    }
}

/// Whether the store warms up at the first try, within [`WARM_UP_RETRY`].
async fn warmed_up_at_once(state: &AppState) -> bool {
    use crate::store::Store;
    let attempt = tokio::time::timeout(WARM_UP_RETRY, state.limiter.store().warm_up()).await;
    matches!(attempt, Ok(Ok(())))
}

async fn turn_ready(state: &AppState, health: &tonic_health::server::HealthReporter) {
    state.set_ready(true);
    set_health(health, ServingStatus::Serving).await;
}

/// Warms the store up (see [`WARM_UP_WITHIN`]), then turns readiness on.
async fn become_ready(state: &AppState, health: &tonic_health::server::HealthReporter) {
    use crate::store::Store;
    let started = Instant::now();
    loop {
        let attempt = tokio::time::timeout(WARM_UP_WITHIN, state.limiter.store().warm_up()).await;
        let missing = match attempt {
            Ok(Ok(())) => {
                tracing::info!(took = ?started.elapsed(), "store warmed up; ready");
                break;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("warm-up took over {WARM_UP_WITHIN:?}"),
        };
        if started.elapsed() >= WARM_UP_WITHIN {
            tracing::warn!(
                error = %missing,
                "the store did not warm up in {WARM_UP_WITHIN:?}; ready anyway, the failure policy answers until it can decide"
            );
            break;
        }
        tokio::time::sleep(WARM_UP_RETRY).await;
    }
    turn_ready(state, health).await;
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is called,
/// not when the future is first polled: call it before the service says it listens, so that a
/// signal sent from then on is never met by the default action (which kills the process).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            let (mut term, mut int) = match (term, int) {
                (Ok(term), Ok(int)) => (term, int),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM and SIGINT");
                    return std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = int.recv() => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
        tracing::info!("SIGINT received");
    }
}
