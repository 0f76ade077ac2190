//! A rolling update without loss, through a real Envoy: two replicas sharing a real Redis
//! behind Envoy's ext_authz and rate-limit filters (both failing closed, so any call that
//! does not get an answer is a failed client request), in a cluster that Envoy health-checks
//! over gRPC health. Under steady load, each replica is replaced the way the Helm chart does
//! it (maxSurge 1, maxUnavailable 0): the new process starts and Envoy sees it healthy; then
//! the old one gets SIGTERM, turns NOT_SERVING, keeps serving for `--shutdown-delay` while
//! Envoy's health check takes it out, drains and exits 0. No client request fails and exactly
//! the quota is admitted across the change.
//!
//! Needs Envoy and redis-server: `make setup`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::Service;
use common::envoy::{Envoy, Upstream};
use common::envoy_replicas::{
    envoy_config, finish, replica, replicas_config, steady_load, tally, wait_health,
};
use common::redis::{RedisServer, free_port};

/// The key's quota: a token bucket of a week, one token back every 10 minutes (never
/// within the test).
const QUOTA: usize = 1000;
/// Seconds a replica keeps serving after SIGTERM (the chart's `--shutdown-delay`): several
/// of Envoy's health-check intervals below.
const SHUTDOWN_DELAY: &str = "3";
/// A generous bound for a busy machine; it decides no pass by timing.
const WITHIN: Duration = Duration::from_secs(30);

/// The chart's shutdown settings: serve for the delay after SIGTERM, then drain.
fn shutdown_args() -> [&'static str; 4] {
    ["--shutdown-delay", SHUTDOWN_DELAY, "--drain-timeout", "10"]
}

/// Replaces `old` by a new replica on `new_port`: the new one first, healthy in Envoy's
/// eyes; then SIGTERM to the old one, which must exit 0 after its delay and drain.
async fn replace(
    envoy: &Envoy,
    old: &mut Service,
    old_port: u16,
    config: &std::path::Path,
    redis: &RedisServer,
    new_port: u16,
) -> Service {
    let new = replica(config, redis, new_port, &shutdown_args());
    wait_health(envoy, new_port, true).await;
    old.signal("TERM");
    wait_health(envoy, old_port, false).await;
    let code = old.wait_exit(WITHIN);
    assert_eq!(code, Some(0), "the old replica's exit:\n{}", old.logs());
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_both_replicas_under_load_loses_no_request_and_admits_exactly_the_quota() {
    let redis = RedisServer::start();
    let config = replicas_config("rolling", "roll-key", QUOTA);
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let upstream = Upstream::start();
    let mut a = replica(&config, &redis, ports[0], &shutdown_args());
    let mut b = replica(&config, &redis, ports[1], &shutdown_args());
    let envoy = Envoy::start_config("rolling", &envoy_config(&ports, upstream.port())).await;
    wait_health(&envoy, ports[0], true).await;
    wait_health(&envoy, ports[1], true).await;

    let stop = Arc::new(AtomicBool::new(false));
    let rejected = Arc::new(AtomicUsize::new(0));
    let load = steady_load(
        envoy.url("/"),
        "roll-key",
        4,
        stop.clone(),
        rejected.clone(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let a2 = replace(&envoy, &mut a, ports[0], &config, &redis, ports[2]).await;
    let b2 = replace(&envoy, &mut b, ports[1], &config, &redis, ports[3]).await;
    let rolled_in = started.elapsed();
    // Past the quota (if the roll did not get there), then a little more.
    let start = Instant::now();
    while rejected.load(Ordering::Relaxed) == 0 && start.elapsed() < WITHIN {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = tally(&finish(&stop, load).await);
    let sent: usize = tally.values().sum();
    eprintln!("rolled both replicas in {rolled_in:?}; {sent} requests: {tally:?}");
    let failed: usize = tally
        .iter()
        .filter(|(s, _)| !matches!(s, 200 | 429))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        failed,
        0,
        "failed requests across the roll: {tally:?}\n{}",
        envoy.logs()
    );
    assert!(
        sent > QUOTA,
        "the load never exhausted the quota: {tally:?}"
    );
    assert_eq!(
        tally.get(&200).copied().unwrap_or(0),
        QUOTA,
        "admitted: {tally:?}"
    );
    assert_eq!(upstream.hits(), QUOTA, "reached the upstream");
    // The new replicas served: both answered Checks after the roll (Envoy spread the load).
    for (name, svc) in [("a2", &a2), ("b2", &b2)] {
        let r = reqwest::get(svc.url("/readyz")).await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
    }
}
