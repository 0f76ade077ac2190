//! Redis round trips per decision under load, counted by Redis itself, not by the code under
//! test: a round trip is one read of a client's socket by the server (`INFO stats`
//! `total_reads_processed`: a pipeline sent in one write is read at once), a decision is
//! one script call (`INFO commandstats`, `evalsha`). With 256 requests in flight the batch
//! workers must pipeline: at most 0.25 round trips per decision (without batching it is
//! 1 or more). On a Redis Cluster, where decisions are not pipelined, a decision is one
//! script call and nothing else: no `PING` to every master when a pooled connection is taken
//! again (one was sent per master per decision before). `cargo test --test redis_round_trips
//! -- --nocapture` prints the figures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::redis::{RedisCluster, RedisServer};
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
async fn under_load_a_round_trip_carries_four_decisions_or_more() {
    const REQUESTS: usize = 2000;
    const IN_FLIGHT: usize = 256;
    let redis = RedisServer::start();
    let svc = service_on("redis-round-trips", &redis.url(), 8);
    let client = http_client(IN_FLIGHT);
    // Redis's own counts, taken over the storm only (the service's start-up is not in it).
    let reads_before = reads_processed(&redis);
    let scripts_before = redis.command_calls("evalsha");
    let pings_before = redis.command_calls("ping");
    let mut admitted = 0;
    for status in storm(&svc, &client, REQUESTS, IN_FLIGHT).await {
        match status {
            200 => admitted += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(admitted, REQUESTS.min(4 * 1000));
    // Each `INFO`/`commandstats` read below is one more read of the test's own connection:
    // counted against the service, which only makes the bound harder to meet.
    let scripts = redis.command_calls("evalsha") - scripts_before;
    let trips = reads_processed(&redis) - reads_before;
    let pings = redis.command_calls("ping") - pings_before;
    let after = metrics(&client, &svc.url("/metrics")).await;
    let cached = counter(&after, "ratelimiter_redis_cached_rejections_total");
    let per_decision = trips as f64 / scripts as f64;
    println!(
        "{REQUESTS} requests, {IN_FLIGHT} in flight, pool of 8: Redis ran {scripts} decide \
         scripts in {trips} reads ({per_decision:.3} per decision), {pings} PING; \
         {cached} answered by the over-limit cache"
    );
    assert_eq!(
        scripts as usize, REQUESTS,
        "every request was decided by Redis"
    );
    assert!(
        per_decision <= 0.25,
        "{trips} round trips for {scripts} decisions: not pipelined"
    );
    // Batch workers keep their connections: no check-out PING per batch (a pool's recycle
    // check), so Redis sees nothing but the pipelines.
    assert_eq!(pings, 0, "PINGs during the storm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_cluster_a_decision_is_one_script_call_and_no_ping() {
    const REQUESTS: usize = 1000;
    const IN_FLIGHT: usize = 32;
    const POOL: u64 = 8;
    const MASTERS: u64 = 3;
    let cluster = RedisCluster::start(MASTERS as usize);
    let svc = service_on("redis-round-trips-cluster", &cluster.url(), POOL);
    let client = http_client(IN_FLIGHT);
    let pings = || -> u64 {
        cluster
            .nodes()
            .iter()
            .map(|n| n.command_calls("ping"))
            .sum()
    };
    let (scripts_before, pings_before) = (cluster.script_calls(), pings());
    for status in storm(&svc, &client, REQUESTS, IN_FLIGHT).await {
        assert_eq!(status, 200, "every request is within its quota");
    }
    let scripts = cluster.script_calls() - scripts_before;
    let pings = pings() - pings_before;
    println!("Cluster: {REQUESTS} requests, {scripts} decide scripts, {pings} PINGs");
    assert_eq!(scripts as usize, REQUESTS, "one script call per decision");
    // A pooled connection idle for a second or more (since the start, or through a stall of
    // a slow machine) is checked with a PING to each master before reuse: typically once per
    // connection here (POOL * MASTERS PINGs), never one per decision (3,000 before).
    assert!(
        pings <= 4 * POOL * MASTERS,
        "{pings} PINGs for {REQUESTS} decisions"
    );
}

/// The service on Redis at `url`, with a pool of `pool` connections and a time limit no
/// storm on a slow machine reaches.
fn service_on(name: &str, url: &str, pool: u64) -> Service {
    let dir = config_dir(name, &[("service.yaml", CONFIG)]);
    let pool = pool.to_string();
    let args = [
        "--redis-url",
        url,
        "--redis-timeout-ms",
        "2000",
        "--redis-pool-size",
        &pool,
    ];
    Service::start(&dir, &args)
}

fn http_client(in_flight: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(in_flight)
        .build()
        .unwrap()
}

/// `requests` `POST /check`s over the four keys in turn, `in_flight` at a time: the statuses.
async fn storm(
    svc: &Service,
    client: &reqwest::Client,
    requests: usize,
    in_flight: usize,
) -> Vec<u16> {
    let gate = Arc::new(Semaphore::new(in_flight));
    let mut tasks = Vec::new();
    for i in 0..requests {
        let (client, gate, url) = (client.clone(), gate.clone(), svc.url("/check"));
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire_owned().await.unwrap();
            post_status(&client, url, ["k1", "k2", "k3", "k4"][i % 4]).await
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses
}

/// `total_reads_processed` of `INFO stats`: how many times the server read a client socket.
fn reads_processed(redis: &RedisServer) -> u64 {
    redis
        .info("stats")
        .lines()
        .find_map(|l| l.strip_prefix("total_reads_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_reads_processed in INFO stats")
}
