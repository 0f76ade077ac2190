//! `ratelimiter`: an exact, fast rate-limiting service for Envoy, Istio and plain HTTP/gRPC
//! clients.
//!
//! The layers point one way: `api` (front doors) → `limiter` (the one decision engine) →
//! `algorithm` (pure functions) and `store` (where counters live). `config` loads files;
//! `server` runs the front doors; `app` wires it all from command-line options.

// Decisions are deeply nested futures (door → instrumented decision → store → Redis).
#![recursion_limit = "256"]

pub mod algorithm;
pub mod api;
pub mod app;
pub mod config;
pub mod limiter;
pub mod metrics;
pub mod server;
pub mod store;
pub mod telemetry;
