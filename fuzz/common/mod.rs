//! What the fuzz targets share: one configuration of both file shapes (a client table, and
//! envoyproxy/ratelimit domains with nested, wildcard, shared and shadow descriptors), the
//! limiter over a memory store, and a runtime to drive the doors in process.
#![allow(dead_code)]

use std::sync::{Arc, LazyLock};

use ratelimiter::api::AppState;
use ratelimiter::config;
use ratelimiter::limiter::{Limiter, Rules};
use ratelimiter::metrics::Metrics;
use ratelimiter::store::{Backend, Clock, MemoryStore};

pub const SERVICE: &str = r#"
settings:
  default_domain: ratelimiter
  max_cost: 1000
  allow_request_descriptors: [route]
clients:
  unknown_key: small
  tiers:
    small:
      - { name: per-second, limit: 5, window: 1s }
      - { name: per-day, algorithm: fixed_window, limit: 1000, window: 1d }
    sliding:
      - { name: sliding, algorithm: sliding_window, limit: 10, window: 1m }
  keys:
    - { key: k1, tier: small, name: one }
    - { key: k2, tier: sliding }
"#;

pub const EDGE: &str = r#"
domain: edge
descriptors:
  - key: remote_address
    rate_limit: { unit: minute, requests_per_unit: 20 }
  - key: path
    value: /api/*
    share_threshold: true
    rate_limit: { unit: second, requests_per_unit: 3, name: api }
  - key: path
    rate_limit: { unit: hour, requests_per_unit: 100 }
    shadow_mode: true
  - key: user
    descriptors:
      - key: plan
        value: free
        quota_mode: true
        rate_limit: { unit: minute, requests_per_unit: 1, name: free }
      - key: plan
        value: vip
        value_to_metric: true
        rate_limit: { unit: minute, requests_per_unit: 3, name: vip, replaces: [ { name: free } ] }
      - key: plan
        rate_limit: { unlimited: true }
"#;

/// The rules of [`SERVICE`] and [`EDGE`], loaded from files as the service loads them.
pub fn rules() -> Rules {
    let dir = std::env::temp_dir().join(format!("ratelimiter-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    std::fs::write(dir.join("service.yaml"), SERVICE).expect("write");
    std::fs::write(dir.join("edge.yaml"), EDGE).expect("write");
    let loaded = config::load(&dir).expect("the fuzz configuration loads");
    Rules::compile(&loaded).expect("the fuzz configuration compiles")
}

/// The app state every door shares, over a memory store.
pub static STATE: LazyLock<Arc<AppState>> = LazyLock::new(|| {
    let store = Backend::Memory(MemoryStore::new(Clock::system(), 100_000));
    let limiter = Arc::new(Limiter::new(rules(), store, None));
    let metrics = Metrics::new().expect("metrics register");
    Arc::new(AppState::new(limiter, Arc::new(metrics)))
});

/// One runtime for the whole run: a door's future is driven to completion on it.
pub static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
});
