//! Errors that say enough and no more (issue 12, point 6), against the real binary: `/readyz`
//! answers a status word, never the store's error text, which goes to the log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::redis_server::RedisServer;
use common::{BASIC, Service, config_dir};

/// `GET /readyz`: status and body.
async fn readyz(svc: &Service) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(svc.url("/readyz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_a_status_word_and_logs_the_store_error() {
    let mut redis = RedisServer::start();
    let fail_open = BASIC.replace(
        "  max_cost: 1000\n",
        "  max_cost: 1000\n  on_store_failure: fail_open\n",
    );
    let closed_dir = config_dir("sec-readyz-closed", &[("service.yaml", BASIC)]);
    let open_dir = config_dir("sec-readyz-open", &[("service.yaml", &fail_open)]);
    let url = redis.url();
    let args = ["--redis-url", url.as_str(), "--redis-timeout-ms", "200"];
    let closed = Service::start(&closed_dir, &args);
    let open = Service::start(&open_dir, &args);
    for svc in [&closed, &open] {
        let started = std::time::Instant::now();
        while readyz(svc).await.0 != 200 && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(readyz(svc).await, (200, "ready\n".to_owned()));
    }
    tokio::task::block_in_place(|| redis.kill());

    let (status, body) = readyz(&closed).await;
    assert_eq!(status, 503);
    assert!(
        [
            "not ready: store unavailable\n",
            "not ready: store timeout\n"
        ]
        .contains(&body.as_str()),
        "{body:?}"
    );
    let (status, body) = readyz(&open).await;
    assert_eq!(status, 200);
    assert!(
        [
            "ready (degraded: store unavailable)\n",
            "ready (degraded: store timeout)\n"
        ]
        .contains(&body.as_str()),
        "{body:?}"
    );
    // The whole error is in the log, for the operator (read by another thread: wait for it).
    let logged = |logs: &str| {
        logs.lines()
            .any(|l| l.contains("readyz") && l.contains("store"))
    };
    let started = std::time::Instant::now();
    while !logged(&closed.logs()) && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = closed.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("readyz") && l.contains("store")),
        "no readiness error in the log: {logs}"
    );
}
