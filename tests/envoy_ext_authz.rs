//! Envoy's ext_authz filter against the real service: a real Envoy 1.40 runs the shipped
//! `envoy/ext-authz.yaml` (ports rewritten) in front of an upstream, and asks the service
//! (real binary, `envoy/config`, counters in a real redis-server) through
//! `envoy.service.auth.v3.Authorization/Check`.
//!
//! Needs Envoy and redis-server: `make setup`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::envoy::{
    KEY_QUOTA, LOCAL, Reply, Stack, UPSTREAM_BODY, assert_demo_quota_spent,
    assert_quota_reached_upstream_and_another_key_passes,
    check_counters_shared_with_post_check_and_allow_request, clear_of_hour_boundary, client_from,
    get, post_check, spend_demo_quota,
};

/// envoy/config/edge.yaml: `api_key` in domain `edge`, 2 per clock hour per value.
const EDGE_KEY_QUOTA: usize = 2;

/// The JSON body of a refusal (panics with the reply when it is not JSON).
fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {r:?}"))
}

/// The stack, a client and the `/orders` URL, after one request of `alice-key` passed.
async fn start_and_pass_one() -> (Stack, reqwest::Client, String) {
    let stack = Stack::start("ext-authz.yaml").await;
    let client = client_from(LOCAL);
    let url = stack.envoy.url("/orders");
    let r = get(&client, &url, Some("alice-key")).await;
    assert_eq!(r.status, 200, "{r:?}");
    (stack, client, url)
}

#[tokio::test]
async fn quota_passes_then_429_with_headers_and_json_body() {
    let stack = Stack::start("ext-authz.yaml").await;
    let client = client_from(LOCAL);
    let url = stack.envoy.url("/orders");
    spend_demo_quota(&client, &url, "alice-key", KEY_QUOTA).await;
    let r = get(&client, &url, Some("alice-key")).await;
    assert_demo_quota_spent(&r);
    assert!(
        r.header("content-type").starts_with("application/json"),
        "{r:?}"
    );
    let body = json(&r);
    assert_eq!(body["allowed"], false, "{body}");
    assert_eq!(body["limit"], 5, "{body}");
    assert_eq!(body["remaining"], 0, "{body}");
    assert_eq!(body["policy"], "envoy-demo", "{body}");
    assert_quota_reached_upstream_and_another_key_passes(&stack, &client, &url).await;
}

#[tokio::test]
async fn missing_and_unknown_keys_are_refused() {
    let stack = Stack::start("ext-authz.yaml").await;
    let client = client_from(LOCAL);
    let url = stack.envoy.url("/orders");
    // clients.unknown_key: reject
    let r = get(&client, &url, Some("mallory-key")).await;
    assert_eq!(r.status, 401, "unknown key: {r:?}");
    assert!(json(&r)["error"].is_string(), "{r:?}");
    assert!(!r.body.contains("mallory-key"), "the key is echoed: {r:?}");
    // No key at all: the anonymous client, which the client table does not know.
    let r = get(&client, &url, None).await;
    assert_eq!(r.status, 401, "missing key: {r:?}");
    assert!(json(&r)["error"].is_string(), "{r:?}");
    assert_eq!(stack.upstream.hits(), 0);
}

#[tokio::test]
async fn shares_counters_with_post_check_and_allow_request() {
    check_counters_shared_with_post_check_and_allow_request("ext-authz.yaml", "/orders").await;
}

/// The /edge/ route sets context_extensions domain: edge, where envoy/config/edge.yaml limits
/// every `api_key` value on its own counter (no client table there), apart from the default
/// domain's counter for the same key.
#[tokio::test]
async fn context_extensions_pick_the_domain() {
    clear_of_hour_boundary(Duration::from_secs(20)).await;
    let stack = Stack::start("ext-authz.yaml").await;
    let client = client_from(LOCAL);
    let url = stack.envoy.url("/edge/orders");
    for key in ["anyone", "alice-key"] {
        for i in 0..EDGE_KEY_QUOTA {
            let r = get(&client, &url, Some(key)).await;
            assert_eq!(r.status, 200, "{key} request {i}: {r:?}");
            assert!(
                r.header("ratelimit-policy").contains(";q=2;w=3600"),
                "{r:?}"
            );
        }
        let r = get(&client, &url, Some(key)).await;
        assert_eq!(r.status, 429, "{key}: {r:?}");
        assert!(r.has("retry-after"), "{r:?}");
        assert!(r.header("ratelimit").contains(";r=0;"), "{r:?}");
    }
    assert_eq!(stack.upstream.hits(), 2 * EDGE_KEY_QUOTA);
    // alice-key's own quota in the default domain is untouched.
    let (status, body) = post_check(stack.service(), "alice-key").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["remaining"], KEY_QUOTA - 1, "{body}");
}

/// failure_mode_allow: false with status_on_error 503 — with the service gone, Envoy refuses
/// every request with 503 and the upstream sees none.
#[tokio::test]
async fn service_down_is_503() {
    let (mut stack, client, url) = start_and_pass_one().await;
    stack.stop_service();
    for i in 0..3 {
        let r = get(&client, &url, Some("alice-key")).await;
        assert_eq!(r.status, 503, "request {i} with the service down: {r:?}");
        assert_ne!(r.body, UPSTREAM_BODY);
        assert!(!r.has("ratelimit"), "{r:?}");
    }
    assert_eq!(stack.upstream.hits(), 1);
    let errors = stack.envoy.stat("http.edge.ext_authz.error").await;
    assert_eq!(
        errors,
        3,
        "Envoy's stats: {:?}",
        stack.envoy.stats("ext_authz").await
    );
}

/// Redis killed: under `on_store_failure: fail_closed` (envoy/config/service.yaml) the
/// service denies with 503 and `Retry-After`; the upstream sees nothing.
#[tokio::test]
async fn store_down_is_503() {
    let (mut stack, client, url) = start_and_pass_one().await;
    stack.redis.kill();
    for i in 0..3 {
        let r = get(&client, &url, Some("alice-key")).await;
        assert_eq!(r.status, 503, "request {i} with Redis down: {r:?}");
        assert!(r.has("retry-after"), "{r:?}");
        assert_ne!(r.body, UPSTREAM_BODY);
    }
    assert_eq!(stack.upstream.hits(), 1);
}
