//! Concurrency storms against the real binary: thousands of concurrent requests for one key
//! admit exactly the quota, over HTTP and over gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{BASIC, Service, config_dir, grpc_channel, post_status, warm_up};
use ratelimiter::api::grpc::pb::AllowRequestRequest;
use ratelimiter::api::grpc::pb::rate_limiter_client::RateLimiterClient;
use tokio::sync::Semaphore;

/// Requests in the storm, and how many are in flight at once at the most.
const REQUESTS: usize = 3000;
const IN_FLIGHT: usize = 512;

/// Sends `REQUESTS` concurrent `POST /check` for `key` with `cost`; returns (200s, 429s).
async fn http_storm(svc: &Service, key: &'static str, cost: u64) -> (usize, usize) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .unwrap();
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let url = svc.url(&format!("/check?cost={cost}"));
    let mut tasks = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let (client, gate, url) = (client.clone(), gate.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            post_status(&client, url, key).await
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    (ok, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_storm_admits_exactly_the_quota() {
    let dir = config_dir("storm-http", &[("service.yaml", BASIC)]);
    let svc = Service::start(&dir, &[]);
    let (ok, limited) = http_storm(&svc, "big", 1).await;
    assert_eq!(ok, 1000, "admitted");
    assert_eq!(limited, REQUESTS - 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_storm_with_cost_admits_whole_requests_only() {
    let dir = config_dir("storm-cost", &[("service.yaml", BASIC)]);
    let svc = Service::start(&dir, &[]);
    let (ok, limited) = http_storm(&svc, "big", 3).await;
    // 1000 units, 3 per request: 333 requests fit, the last unit stays unused.
    assert_eq!(ok, 333);
    assert_eq!(limited, REQUESTS - 333);
    let r = reqwest::Client::new()
        .post(svc.url("/check"))
        .header("x-api-key", "big")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the one unit left is still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_storm_admits_exactly_the_quota() {
    let dir = config_dir("storm-grpc", &[("service.yaml", BASIC)]);
    let svc = Service::start(&dir, &[]);
    let channel = grpc_channel(svc.grpc_url()).await;
    // One call first, so the HTTP/2 settings (the server's stream limit among them) are
    // known before thousands of streams open on the connection.
    warm_up(&channel).await;
    let mut tasks = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let mut client = RateLimiterClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            client
                .allow_request(AllowRequestRequest {
                    api_key: "big".into(),
                    descriptors: vec![],
                    cost: None,
                    report: false,
                })
                .await
                .map(|r| r.into_inner().allowed)
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(a)) => ok += usize::from(a),
            Ok(Err(e)) => panic!("{e}\n{}", svc.logs()),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 1000);
}
