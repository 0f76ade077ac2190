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
use std::time::Duration;

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

/// Serves until `shutdown` resolves, then drains. Returns once both servers have stopped.
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
    for name in GRPC_SERVICES {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }

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
    state.set_ready(true);
    {
        use crate::store::Store;
        tracing::info!(http = %http_addr, grpc = %grpc_addr, store = state.limiter.store().name(), "listening");
    }

    // Run until asked to stop, or until a server dies on its own.
    let early = tokio::select! {
        () = shutdown => None,
        r = &mut http => Some(r?.map_err(ServeError::Http)),
        r = &mut grpc => Some(r?.map_err(ServeError::Grpc)),
    };
    state.set_ready(false);
    if let Some(result) = early {
        let _ = stop_tx.send(true);
        return result;
    }
    tracing::info!("shutting down: readiness off");
    for name in GRPC_SERVICES {
        health
            .set_service_status(*name, ServingStatus::NotServing)
            .await;
    }
    tokio::time::sleep(options.shutdown_delay).await;
    tracing::info!("draining in-flight requests");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(options.drain_timeout, async {
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
            tracing::warn!(timeout = ?options.drain_timeout, "drain timed out; closing remaining connections");
            http.abort();
            grpc.abort();
        }
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
