//! What one in-memory decision costs: `Limiter::decide` for an API key, end to end through
//! rule lookup, the plan, the memory store and the fold into a `Decision`.
//!
//! Run with `make bench` (or `cargo bench --bench decide`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use ratelimiter::config;
use ratelimiter::limiter::{LimitRequest, Limiter, Rules};
use ratelimiter::store::{Backend, Clock, MemoryStore};

/// The memory store never waits, so its futures finish on the first poll: drive them without
/// a runtime, so the bench measures the limiter and not a scheduler.
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

fn limiter() -> Limiter {
    let rules = Rules::compile(&config::parse_str("bench.yaml", CONFIG).unwrap()).unwrap();
    Limiter::new(
        rules,
        Backend::Memory(MemoryStore::new(Clock::system(), 1_000_000)),
        None,
    )
}

fn bench(c: &mut Criterion) {
    let l = limiter();
    let req = LimitRequest::for_api_key("ratelimiter", "key-1", 1);
    c.bench_function("decide/token_bucket+fixed_window", |b| {
        b.iter(|| ready(l.decide(std::hint::black_box(&req))).unwrap())
    });
    let req = LimitRequest::for_api_key("ratelimiter", "unknown", 1);
    c.bench_function("decide/unknown_key_rejected", |b| {
        b.iter(|| ready(l.decide(std::hint::black_box(&req))).unwrap_err())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
