//! Chaos at the edge (issue 13, point 2): one of two service replicas SIGKILLed — no
//! SIGTERM, no drain — behind a real Envoy under steady load. The replicas share a real
//! Redis; Envoy runs ext_authz then the rate-limit filter, both failing closed
//! (`failure_mode_allow: false`, `failure_mode_deny: true`), and health-checks the replicas
//! over gRPC health every 200 ms (`tests/common/envoy_replicas.rs`, the rolling update's
//! harness). Both filters' `grpc_service` retry a call that never reached a replica
//! (`connect-failure,refused-stream`, on another host) and nothing else: a call the killed
//! replica may have run is not retried, since it may have been charged.
//!
//! **What may be lost, and what is asserted:**
//! - client requests whose call was on the killed replica when it died fail (Envoy answers
//!   5xx: the filters fail closed): at most one per client, so at most [`CLIENTS`] — the
//!   concurrency. Calls sent to the dead replica before Envoy's health check ejects it are
//!   refused and retried on the survivor, so every failed request was unanswered at the kill
//!   or sent before Envoy was seen to eject the replica, and none fails after. (Without the
//!   retry policy those refused calls fail too — 12 failures instead of 2 in one run — and
//!   with it but Envoy's default `max_retries` of 3 a retry can overflow and fail.)
//! - the quota is never exceeded: the clients see at most [`QUOTA`] admissions (200s), and at
//!   least `QUOTA - failed`, because a failed request may have been charged by Redis before
//!   its replica died (charged, never answered: under-admission, never over).
//!
//! Needs Envoy and redis-server: `make setup`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::envoy::{Envoy, Upstream};
use common::envoy_replicas::{
    RETRY_REFUSED, envoy_config_retrying, finish, replica, replicas_config, steady_load, tally,
    wait_health,
};
use common::redis::{RedisServer, free_port, wall_us};

/// The key's quota: a token bucket of a week (one token back every ~17 minutes, never within
/// the test).
const QUOTA: usize = 600;
/// Clients sending through Envoy, one request at a time each.
const CLIENTS: usize = 4;
/// A generous bound for a busy machine; it decides no pass by timing.
const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_fails_only_its_requests_in_flight_and_never_over_admits() {
    let started = Instant::now();
    let redis = RedisServer::start();
    let config = replicas_config("chaos-kill", "chaos-key", QUOTA);
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let upstream = Upstream::start();
    let victim = replica(&config, &redis, ports[0], &[]);
    let survivor = replica(&config, &redis, ports[1], &[]);
    let envoy = Envoy::start_config(
        "chaos-kill",
        &envoy_config_retrying(&ports, upstream.port(), RETRY_REFUSED),
    )
    .await;
    wait_health(&envoy, ports[0], true).await;
    wait_health(&envoy, ports[1], true).await;

    let stop = Arc::new(AtomicBool::new(false));
    let rejected = Arc::new(AtomicUsize::new(0));
    let load = steady_load(
        envoy.url("/"),
        "chaos-key",
        CLIENTS,
        stop.clone(),
        rejected.clone(),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let killed_us = wall_us();
    victim.signal("KILL");
    wait_health(&envoy, ports[0], false).await;
    let ejected_us = wall_us();
    // Past the quota, then a little more.
    let waiting = Instant::now();
    while rejected.load(Ordering::Relaxed) == 0 && waiting.elapsed() < WITHIN {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answers = finish(&stop, load).await;

    let counts = tally(&answers);
    let retried = envoy.stat("cluster.ratelimiter.upstream_rq_retry").await;
    let failed: Vec<_> = answers
        .iter()
        .filter(|a| !matches!(a.status, 200 | 429))
        .collect();
    let in_flight_at_kill = answers
        .iter()
        .filter(|a| a.sent_us < killed_us && a.received_us > killed_us)
        .count();
    let sent_in_window = answers
        .iter()
        .filter(|a| a.sent_us >= killed_us && a.sent_us < ejected_us)
        .count();
    let admitted = counts.get(&200).copied().unwrap_or(0);
    eprintln!(
        "{} requests: {counts:?}; {} failed; {in_flight_at_kill} in flight at the kill, \
         {sent_in_window} sent in the {} ms before Envoy was seen to eject the replica; \
         {retried} calls retried by Envoy; {:?} in all",
        answers.len(),
        failed.len(),
        (ejected_us - killed_us) / 1000,
        started.elapsed()
    );
    for a in &failed {
        eprintln!(
            "failed: {} sent {} ms after the kill, answered {} ms after",
            a.status,
            (i128::from(a.sent_us) - i128::from(killed_us)) / 1000,
            (i128::from(a.received_us) - i128::from(killed_us)) / 1000
        );
        assert!(
            a.received_us > killed_us && a.sent_us < ejected_us,
            "a request failed outside the kill's window: {a:?}\n{}",
            envoy.logs()
        );
    }
    assert!(
        failed.len() <= CLIENTS,
        "{} failed: more than the {CLIENTS} requests that can be in flight",
        failed.len()
    );
    assert!(
        answers.len() > QUOTA,
        "the load never exhausted the quota: {counts:?}"
    );
    assert!(
        admitted <= QUOTA && admitted + failed.len() >= QUOTA,
        "admitted {admitted} of a quota of {QUOTA} with {} failed",
        failed.len()
    );
    assert_eq!(upstream.hits(), admitted, "reached the upstream");
    drop(survivor);
}
