//! The gRPC ceiling for the load tests (`k6/side-by-side.sh`): a tonic server that answers
//! every request at once and decides nothing.
//!
//! It serves Envoy's `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` (always
//! `OK`, no per-descriptor statuses) and our `ratelimiter.v1.RateLimiter/AllowRequest`
//! (always allowed), with the same tonic version, runtime and HTTP/2 settings as the
//! service's gRPC listener (`src/server.rs`, `src/listener.rs`, `src/main.rs`): a default
//! multi-threaded tokio runtime, `TCP_NODELAY` on every accepted socket, HTTP/2 keepalive
//! every 30 s with a 10 s timeout, connections aged out after an hour, at most 1,024 streams
//! per connection; tonic's defaults for everything else (flow-control windows included).
//! What the service adds on top of that (its connection guard and request cap, the
//! decision itself) is what a comparison with this server measures.
//!
//!     cargo run --release --example noop_server -- [--grpc-addr 127.0.0.1:0]
//!
//! prints one line `listening <addr>` on stdout once it accepts connections, then serves
//! until it is killed.

use std::io::Write;
use std::net::SocketAddr;

use clap::Parser;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use ratelimiter::api::grpc::pb::rate_limiter_server::{RateLimiter, RateLimiterServer};
use ratelimiter::api::grpc::pb::{AllowRequestRequest, AllowRequestResponse};
use ratelimiter::server::GrpcConnections;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// The service's HTTP/2 stream cap per connection (`MAX_STREAMS_PER_CONNECTION` in
/// `src/server.rs`).
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

#[derive(Parser, Debug)]
#[command(about = "A gRPC server that allows everything: the ceiling of the load tests")]
struct Cli {
    /// Where the gRPC services listen (port 0: any free port; the line on stdout says which).
    #[arg(long, default_value = "127.0.0.1:0")]
    grpc_addr: SocketAddr,
}

/// Answers every call at once, without looking at it.
struct Noop;

#[tonic::async_trait]
impl RateLimitService for Noop {
    async fn should_rate_limit(
        &self,
        _request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        Ok(Response::new(RateLimitResponse {
            overall_code: Code::Ok.into(),
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl RateLimiter for Noop {
    async fn allow_request(
        &self,
        _request: Request<AllowRequestRequest>,
    ) -> Result<Response<AllowRequestResponse>, Status> {
        Ok(Response::new(AllowRequestResponse {
            allowed: true,
            ..Default::default()
        }))
    }
}

/// Binds, says where, and serves until the process is killed.
async fn serve(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening {bound}")?;
        stdout.flush()?;
    }
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(GrpcConnections::DEFAULT_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(GrpcConnections::DEFAULT_KEEPALIVE_TIMEOUT))
        .max_connection_age(GrpcConnections::DEFAULT_MAX_CONNECTION_AGE)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .add_service(RateLimitServiceServer::new(Noop))
        .add_service(RateLimiterServer::new(Noop))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(cli.grpc_addr)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("noop_server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
