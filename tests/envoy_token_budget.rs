//! Token budgets through a real Envoy (envoy/token-budget.yaml): a request-time check that
//! charges nothing (`hits_addend: 0`) and a stream-done charge of the response's
//! `x-tokens-used` (`apply_on_stream_done: true`), recorded into debt by the `post_paid`
//! descriptor of envoy/config/llm.yaml. Two replicas of the service share one redis-server,
//! each behind its own Envoy, and the tenant is held to its budget across them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Service;
use common::envoy::{Envoy, LOCAL, Reply, TOKENS_USED, UPSTREAM_BODY, Upstream, client_from, repo};
use common::redis::RedisServer;

/// What every upstream answer costs: two fit a budget of 1,000, the second into debt.
const TOKENS: u64 = 700;

/// Two replicas on envoy/config sharing one redis-server, each behind its own Envoy on
/// envoy/token-budget.yaml, and the upstream they proxy to. Dropped in field order: the
/// Envoys first, Redis last.
struct Replicas {
    envoys: Vec<Envoy>,
    upstream: Upstream,
    services: Vec<Service>,
    _redis: RedisServer,
}

impl Replicas {
    async fn start() -> Replicas {
        let redis = RedisServer::start();
        let url = redis.url();
        let args = ["--redis-url", &url, "--redis-timeout-ms", "1000"];
        let services: Vec<Service> = (0..2)
            .map(|_| Service::start(&repo().join("envoy/config"), &args))
            .collect();
        let upstream = Upstream::using_tokens(TOKENS);
        let mut envoys = Vec::new();
        for s in &services {
            envoys.push(Envoy::start("token-budget.yaml", s.grpc.port(), upstream.port()).await);
        }
        Replicas {
            envoys,
            upstream,
            services,
            _redis: redis,
        }
    }

    /// `GET <path>` through replica `i`'s Envoy with one header.
    async fn get(&self, i: usize, path: &str, header: (&str, &str)) -> Reply {
        let r = client_from(LOCAL)
            .get(self.envoys[i].url(path))
            .header(header.0, header.1)
            .send()
            .await
            .unwrap();
        Reply {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.text().await.unwrap(),
        }
    }

    /// `ShouldRateLimit` calls both replicas have decided so far.
    async fn rate_limit_calls(&self) -> u64 {
        let mut total = 0;
        for s in &self.services {
            let text = common::metrics(&reqwest::Client::new(), &s.url("/metrics")).await;
            total += text
                .lines()
                .filter(|l| {
                    l.starts_with(r#"ratelimiter_decisions_total{door="ratelimit_service""#)
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        total
    }

    /// `GET <path>` through replica `i`'s Envoy, which must reach the upstream; returns once
    /// both of its `ShouldRateLimit` calls were decided (the stream-done charge comes after
    /// the client has its answer).
    async fn served_and_charged(&self, i: usize, path: &str, header: (&str, &str)) -> Reply {
        let before = self.rate_limit_calls().await;
        let r = self.get(i, path, header).await;
        assert_served(&r);
        self.wait_for_calls(before + 2).await;
        r
    }

    /// Waits (at most 10 s) until `n` `ShouldRateLimit` calls were decided.
    async fn wait_for_calls(&self, n: u64) {
        for _ in 0..200 {
            if self.rate_limit_calls().await >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{} ShouldRateLimit calls after 10 s, expected {n}",
            self.rate_limit_calls().await
        );
    }
}

/// A response that reached the upstream: 200 with its body and its token count.
#[track_caller]
fn assert_served(r: &Reply) {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, UPSTREAM_BODY);
    assert_eq!(r.header(TOKENS_USED), TOKENS.to_string());
}

/// A refusal by the request-time check: 429 from Envoy with the service's Retry-After.
#[track_caller]
fn retry_after_of_refusal(r: &Reply) -> u64 {
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("x-envoy-ratelimited"), "true");
    r.header("retry-after").parse().unwrap()
}

/// Waits until the clock minute has at least `margin` seconds left: a test on a fixed
/// one-minute window must not straddle its end.
async fn clear_of_minute_boundary(margin: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let left = 60 - now.as_secs() % 60;
    if left <= margin {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

#[tokio::test]
async fn a_tenant_is_held_to_its_token_budget_across_replicas_until_the_debt_is_paid() {
    let stack = Replicas::start().await;
    let acme = ("x-tenant", "acme");
    // Replica 0: 700 of 1,000 tokens, charged when the response is done.
    stack.served_and_charged(0, "/v1/chat", acme).await;
    // Replica 1 sees them (about 300 left before this request: the bucket refills a token
    // every 60 ms) and charges 700 more: about 400 in debt.
    let r = stack.served_and_charged(1, "/v1/chat", acme).await;
    assert!(
        r.header("ratelimit").starts_with(r#""tokens";r=30"#),
        "{r:?}"
    );
    // The third request is refused on both replicas, and never reaches the upstream; the
    // debt of 400 tokens at 1,000 a minute is repaid in 24 s.
    let mut retry = 0;
    for i in [0, 1] {
        retry = retry_after_of_refusal(&stack.get(i, "/v1/chat", acme).await);
        assert!((1..=24).contains(&retry), "retry-after {retry}");
    }
    assert_eq!(stack.upstream.hits(), 2);
    // Another tenant has its own budget.
    stack
        .served_and_charged(0, "/v1/chat", ("x-tenant", "globex"))
        .await;
    // Once the debt is paid off, the tenant is served again.
    tokio::time::sleep(Duration::from_secs(retry + 1)).await;
    stack.served_and_charged(1, "/v1/chat", acme).await;
}

#[tokio::test]
async fn the_budget_comes_from_ext_authz_through_the_limit_override() {
    let stack = Replicas::start().await;
    // The override is upstream's fixed window: keep the test inside one clock minute.
    clear_of_minute_boundary(20).await;
    let a = ("x-api-key", "tenant-a-key"); // 1,000 tokens a minute
    let b = ("x-api-key", "tenant-b-key"); // 2,000 tokens a minute
    for i in [0, 1] {
        let r = stack.served_and_charged(i, "/authz/v1/chat", a).await;
        // The limit in force is the one ext_authz handed over.
        assert!(
            r.header("ratelimit-policy")
                .contains(r#""override";q=1000;w=60"#),
            "{r:?}"
        );
    }
    let retry = retry_after_of_refusal(&stack.get(0, "/authz/v1/chat", a).await);
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    // Tenant b's own budget is 2,000: after 1,400 tokens it is still served.
    for i in [0, 1, 0] {
        stack.served_and_charged(i, "/authz/v1/chat", b).await;
    }
    // An unknown key never gets that far.
    let r = stack.get(1, "/authz/v1/chat", ("x-api-key", "nope")).await;
    assert_eq!(r.status, 401, "{r:?}");
}
