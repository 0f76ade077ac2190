//! Redis round trips per decision, read from the service's own `/metrics` after a storm.
//! `cargo test --test redis_round_trips -- --nocapture` prints the figures quoted in the
//! closing notes; the assertion is the hot-path rule: never more than one round trip per
//! decision (pipelining makes it fewer under load).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::redis::RedisServer;
use common::{Service, config_dir, counter, metrics, post_status};
use tokio::sync::Semaphore;

const CONFIG: &str = r#"
clients:
  tiers:
    t: [ { name: per-day, limit: 1000, window: 1d } ]
  keys:
    - { key: k1, tier: t }
    - { key: k2, tier: t }
    - { key: k3, tier: t }
    - { key: k4, tier: t }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_most_one_round_trip_per_decision() {
    const REQUESTS: usize = 2000;
    const IN_FLIGHT: usize = 256;
    let redis = RedisServer::start();
    let dir = config_dir("redis-round-trips", &[("service.yaml", CONFIG)]);
    let svc = Service::start(
        &dir,
        &[
            "--redis-url",
            &redis.url(),
            "--redis-timeout-ms",
            "2000",
            "--redis-pool-size",
            "8",
        ],
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .unwrap();
    let before = metrics(&client, &svc.url("/metrics")).await;
    let trips_before = counter(&before, "ratelimiter_redis_round_trips_total");
    // Redis's own count of the commands it ran, to catch round trips the service does not
    // count itself (a connection pool's check-out PING, say).
    let pings_before = redis.command_calls("ping");
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = Vec::new();
    for i in 0..REQUESTS {
        let (client, gate, url) = (client.clone(), gate.clone(), svc.url("/check"));
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire_owned().await.unwrap();
            let key = ["k1", "k2", "k3", "k4"][i % 4];
            post_status(&client, url, key).await
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => admitted += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(admitted, REQUESTS.min(4 * 1000));
    let after = metrics(&client, &svc.url("/metrics")).await;
    let decisions = counter(&after, "ratelimiter_redis_decisions_total");
    let trips = counter(&after, "ratelimiter_redis_round_trips_total") - trips_before;
    let cached = counter(&after, "ratelimiter_redis_cached_rejections_total");
    println!(
        "{REQUESTS} requests, {IN_FLIGHT} in flight, pool of 8: {decisions} decisions sent to Redis, \
         {trips} round trips ({:.3} per decision), {cached} answered by the over-limit cache",
        trips as f64 / decisions as f64
    );
    assert_eq!(
        decisions as usize, REQUESTS,
        "every request was decided by Redis"
    );
    assert!(
        trips <= decisions,
        "{trips} round trips for {decisions} decisions"
    );
    let pings = redis.command_calls("ping") - pings_before;
    println!("Redis ran {pings} PING during the storm");
    // Batch workers keep their connections: no check-out PING per batch (a pool's recycle
    // check), so Redis sees nothing but the pipelines.
    assert_eq!(pings, 0, "PINGs during the storm");
}
