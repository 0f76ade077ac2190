//! `ratelimiter`: an exact, fast rate-limiting service for Envoy, Istio and plain HTTP/gRPC
//! clients.
//!
//! The layers point one way: `api` (front doors) → `limiter` (the one decision engine) →
//! `algorithm` (pure functions) and `store` (where counters live). `config` loads files;
//! `server` runs the front doors; `app` wires it all from command-line options; `reload`
//! swaps a new configuration in on SIGHUP or when the files change.

// Decisions are deeply nested futures (door → instrumented decision → store → Redis).
#![recursion_limit = "256"]

pub mod algorithm;
pub mod api;
pub mod app;
pub mod config;
pub mod limiter;
pub mod listener;
pub mod metrics;
pub mod reload;
pub mod request_limit;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upstream_env;
