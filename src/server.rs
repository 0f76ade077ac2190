//! Runs the HTTP and gRPC servers on listeners the caller bound, until a shutdown future
//! resolves.
//!
//! Taking bound listeners (rather than addresses) lets tests bind `127.0.0.1:0` and run the
//! whole service in-process, and lets `main` fail on a busy port before anything starts.
//! Shutdown is ordered for rolling updates: readiness turns false first (HTTP `/readyz` and
//! gRPC health both say NOT_SERVING), then after `shutdown_delay` the servers stop accepting
//! and in-flight requests finish, bounded by `drain_timeout`.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;

use crate::api::AppState;
use crate::api::ext_authz::ExtAuthzDoor;
use crate::api::grpc::AllowRequestService;
use crate::api::http::router;
use crate::api::ratelimit_service::RateLimitDoor;

pub struct Listeners {
    pub http: TcpListener,
    pub grpc: TcpListener,
}

#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// How long to keep serving after readiness turned false, so load balancers notice.
    pub shutdown_delay: Duration,
    /// How long in-flight requests get to finish once the servers stop accepting.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            shutdown_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(10),
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
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            // An error means the sender is gone, which is a stop too.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let http_addr = listeners.http.local_addr().map_err(ServeError::Http)?;
    let grpc_addr = listeners.grpc.local_addr().map_err(ServeError::Http)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;

    let http = axum::serve(listeners.http, router(state.clone()))
        .with_graceful_shutdown(stopped())
        .into_future();
    let grpc = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .add_service(health_service)
        .add_service(AllowRequestService::server(state.clone()))
        .add_service(RateLimitDoor::server(state.clone()))
        .add_service(ExtAuthzDoor::server(state.clone()))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listeners.grpc), stopped());
    let mut http = tokio::spawn(http);
    let mut grpc = tokio::spawn(grpc);
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
