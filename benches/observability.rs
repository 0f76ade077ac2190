//! What observing a decision costs: the same in-memory decision through `Limiter::decide`
//! alone and through `AppState::decide`, which adds the metrics (decision, latency, in-flight,
//! per-limit counters) and the decision span (off: no OTLP endpoint, as in production
//! without tracing). The difference is the observability's cost per request.
//!
//! Run with `cargo bench --bench observability`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use ratelimiter::api::AppState;
use ratelimiter::config;
use ratelimiter::limiter::{LimitRequest, Limiter, Rules};
use ratelimiter::metrics::{Door, Metrics};
use ratelimiter::store::{Backend, Clock, MemoryStore};
use ratelimiter::telemetry::TraceContext;

/// The memory store never waits: drive its futures without a runtime.
fn ready<T>(f: impl Future<Output = T>) -> T {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the memory store should never wait"),
    }
}

const CONFIG: &str = r#"
clients:
  tiers:
    standard:
      - { name: per-second, limit: 1000000000, window: 1s }
      - { name: per-day, algorithm: fixed_window, limit: 1000000000, window: 1d }
  keys:
    - { key: key-1, tier: standard }
"#;

fn bench(c: &mut Criterion) {
    let rules = Rules::compile(&config::parse_str("bench.yaml", CONFIG).unwrap()).unwrap();
    let store = Backend::Memory(MemoryStore::new(Clock::system(), 1_000_000));
    let limiter = Arc::new(Limiter::new(rules, store, None));
    let state = AppState::new(limiter.clone(), Arc::new(Metrics::new().unwrap()));
    let rules = limiter.rules();
    let req = LimitRequest::for_api_key("ratelimiter", "key-1", 1);
    c.bench_function("observe/limiter_only", |b| {
        b.iter(|| ready(limiter.decide_with(&rules, std::hint::black_box(&req))).unwrap())
    });
    let trace = TraceContext::from_headers(|n| match n {
        "x-request-id" => Some("0f6b1c2e-9d8a-4c3b-8e7f-1a2b3c4d5e6f"),
        "traceparent" => Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        _ => None,
    });
    c.bench_function("observe/app_state_with_metrics_and_ids", |b| {
        b.iter(|| {
            let req = std::hint::black_box(&req);
            ready(state.decide(Door::Http, &rules, req, trace)).unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
