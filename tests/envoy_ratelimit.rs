//! Envoy's global rate-limit filter against the real service: a real Envoy 1.40 runs the
//! shipped `envoy/ratelimit.yaml` (ports rewritten) in front of an upstream, and asks the
//! service (real binary, `envoy/config`, counters in a real redis-server) through
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`.
//!
//! Needs Envoy and redis-server: `make setup`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::envoy::{
    KEY_QUOTA, LOCAL, Stack, UPSTREAM_BODY, allow_request, assert_demo_quota_spent,
    assert_quota_reached_upstream_and_another_key_passes,
    check_counters_shared_with_post_check_and_allow_request, clear_of_hour_boundary, client_from,
    get, post_check, spend_demo_quota,
};

/// envoy/config/edge.yaml: `generic_key: global`, 4 per clock hour.
const GLOBAL_QUOTA: usize = 4;
/// envoy/config/edge.yaml: `remote_address`, 3 per clock hour per address.
const ADDRESS_QUOTA: usize = 3;

const OTHER: [u8; 4] = [127, 0, 0, 2];

#[tokio::test]
async fn api_key_quota_passes_then_429_with_headers() {
    let stack = Stack::start("ratelimit.yaml").await;
    let client = client_from(LOCAL);
    let url = stack.envoy.url("/api/orders");
    spend_demo_quota(&client, &url, "alice-key", KEY_QUOTA).await;
    let r = get(&client, &url, Some("alice-key")).await;
    // A token of the 5-per-hour bucket comes back every 720 s.
    assert_demo_quota_spent(&r);
    assert_ne!(r.body, UPSTREAM_BODY);
    assert_eq!(r.header("x-envoy-ratelimited"), "true");
    assert_quota_reached_upstream_and_another_key_passes(&stack, &client, &url).await;
}

#[tokio::test]
async fn api_key_shares_counters_with_post_check_and_allow_request() {
    check_counters_shared_with_post_check_and_allow_request("ratelimit.yaml", "/api/orders").await;
}

#[tokio::test]
async fn generic_key_is_one_quota_for_everybody() {
    clear_of_hour_boundary(Duration::from_secs(20)).await;
    let stack = Stack::start("ratelimit.yaml").await;
    let url = stack.envoy.url("/global/feed");
    let (a, b) = (client_from(LOCAL), client_from(OTHER));
    for i in 0..GLOBAL_QUOTA {
        // Two client addresses, with and without a key: all one counter.
        let client = if i % 2 == 0 { &a } else { &b };
        let key = (i % 3 == 0).then_some("alice-key");
        let r = get(client, &url, key).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.body, UPSTREAM_BODY);
        assert!(
            r.header("ratelimit-policy").contains(";q=4;w=3600"),
            "{r:?}"
        );
        assert!(
            r.header("ratelimit")
                .contains(&format!(";r={};", GLOBAL_QUOTA - 1 - i)),
            "request {i}: {r:?}"
        );
    }
    for client in [&a, &b] {
        let r = get(client, &url, None).await;
        assert_eq!(r.status, 429, "{r:?}");
        assert!(r.has("retry-after"), "{r:?}");
        assert!(
            r.header("ratelimit-policy").contains(";q=4;w=3600"),
            "{r:?}"
        );
        assert!(r.header("ratelimit").contains(";r=0;"), "{r:?}");
    }
    assert_eq!(stack.upstream.hits(), GLOBAL_QUOTA);
}

#[tokio::test]
async fn remote_address_is_one_quota_per_client_address() {
    clear_of_hour_boundary(Duration::from_secs(20)).await;
    let stack = Stack::start("ratelimit.yaml").await;
    let url = stack.envoy.url("/anything");
    let (a, b) = (client_from(LOCAL), client_from(OTHER));
    for i in 0..ADDRESS_QUOTA {
        let r = get(&a, &url, None).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert!(
            r.header("ratelimit-policy").contains(";q=3;w=3600"),
            "{r:?}"
        );
        assert!(
            r.header("ratelimit")
                .contains(&format!(";r={};", ADDRESS_QUOTA - 1 - i)),
            "request {i}: {r:?}"
        );
    }
    let r = get(&a, &url, None).await;
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.has("retry-after"), "{r:?}");
    assert!(r.header("ratelimit").contains(";r=0;"), "{r:?}");
    // Another address has its own counter.
    let r = get(&b, &url, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("ratelimit")
            .contains(&format!(";r={};", ADDRESS_QUOTA - 1)),
        "{r:?}"
    );
    assert_eq!(stack.upstream.hits(), ADDRESS_QUOTA + 1);
}

/// One request of `alice-key` passes with the service's answer; then `down` (what `kill`
/// stopped) is gone, and `KEY_QUOTA + 2` more pass without RateLimit headers, each counted by
/// Envoy as allowed by failure_mode_deny: false.
async fn lets_requests_through_when_down(down: &str, kill: fn(&mut Stack)) {
    let mut stack = Stack::start("ratelimit.yaml").await;
    let client = client_from(LOCAL);
    let url = stack.envoy.url("/api/orders");
    let r = get(&client, &url, Some("alice-key")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.has("ratelimit"), "the service answered: {r:?}");
    kill(&mut stack);
    let n = KEY_QUOTA + 2;
    for i in 0..n {
        let r = get(&client, &url, Some("alice-key")).await;
        assert_eq!(r.status, 200, "request {i} with {down} down: {r:?}");
        assert_eq!(r.body, UPSTREAM_BODY);
        assert!(!r.has("ratelimit"), "{r:?}");
    }
    assert_eq!(stack.upstream.hits(), n + 1);
    let allowed = stack
        .envoy
        .stat("cluster.upstream.ratelimit.failure_mode_allowed")
        .await;
    assert_eq!(
        allowed,
        n as u64,
        "Envoy's stats: {:?}",
        stack.envoy.stats("ratelimit").await
    );
}

/// failure_mode_deny: false — with the service gone, requests pass (and carry no RateLimit
/// headers, since nobody decided them).
#[tokio::test]
async fn service_down_lets_requests_through() {
    lets_requests_through_when_down("the service", Stack::stop_service).await;
}

/// Redis killed: the service answers UNAVAILABLE (`on_store_failure: fail_closed` in
/// envoy/config/service.yaml), which Envoy treats as an error: with failure_mode_deny: false,
/// requests pass.
#[tokio::test]
async fn store_down_lets_requests_through() {
    lets_requests_through_when_down("Redis", |stack| stack.redis.kill()).await;
}

/// The rate-limit protocol has no 401: an unknown API key is OVER_LIMIT, so it never reaches
/// the upstream (rather than an error, which failure_mode_deny: false would let through).
#[tokio::test]
async fn unknown_api_key_is_refused() {
    let stack = Stack::start("ratelimit.yaml").await;
    let client = client_from(LOCAL);
    let url = stack.envoy.url("/api/orders");
    for i in 0..3 {
        let r = get(&client, &url, Some("mallory-key")).await;
        assert_eq!(r.status, 429, "request {i}: {r:?}");
        assert_eq!(r.header("x-envoy-ratelimited"), "true");
    }
    assert_eq!(stack.upstream.hits(), 0);
}

/// One key, every door: POST /check, AllowRequest, Envoy's rate-limit filter and Envoy's
/// ext_authz filter all spend from one counter.
#[tokio::test]
async fn both_filters_and_both_apis_share_one_counter() {
    let stack = Stack::start("ratelimit.yaml").await;
    let service = stack.service();
    let authz =
        common::envoy::Envoy::start("ext-authz.yaml", service.grpc.port(), stack.upstream.port())
            .await;
    let client = client_from(LOCAL);
    let via_ratelimit = stack.envoy.url("/api/orders");
    let via_authz = authz.url("/orders");
    assert_eq!(post_check(service, "alice-key").await.0, 200);
    assert!(allow_request(service, "alice-key").await.allowed);
    let r = get(&client, &via_ratelimit, Some("alice-key")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("ratelimit").starts_with(r#""envoy-demo";r=2;"#),
        "{r:?}"
    );
    let r = get(&client, &via_authz, Some("alice-key")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("ratelimit").starts_with(r#""envoy-demo";r=1;"#),
        "{r:?}"
    );
    let r = get(&client, &via_ratelimit, Some("alice-key")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("ratelimit").starts_with(r#""envoy-demo";r=0;"#),
        "{r:?}"
    );
    // The quota is spent, whichever door asks.
    let r = get(&client, &via_ratelimit, Some("alice-key")).await;
    assert_eq!(r.status, 429, "rate-limit filter: {r:?}");
    let r = get(&client, &via_authz, Some("alice-key")).await;
    assert_eq!(r.status, 429, "ext_authz filter: {r:?}");
    assert_eq!(post_check(service, "alice-key").await.0, 429);
    assert!(!allow_request(service, "alice-key").await.allowed);
    assert_eq!(stack.upstream.hits(), 3);
}

/// With `settings.response_dynamic_metadata`, Envoy's rate-limit filter receives the answer's
/// dynamic metadata (envoyproxy/ratelimit's shape) and its access log can print it.
#[tokio::test]
async fn dynamic_metadata_reaches_envoys_access_log() {
    use common::envoy::{ADMIN_PORT, Envoy, LISTEN_PORT, RATELIMITER_GRPC_PORT, UPSTREAM_PORT};
    use common::envoy::{Upstream, repo, rewrite_port};
    use common::{Service, config_dir, temp_dir};

    let read = |path: &str| std::fs::read_to_string(repo().join(path)).unwrap();
    let service = read("envoy/config/service.yaml").replacen(
        "settings:\n",
        "settings:\n  response_dynamic_metadata: true\n",
        1,
    );
    let edge = read("envoy/config/edge.yaml").replacen(
        "    value: global\n",
        "    value: global\n    metadata: { team: edge, cost: { unit: request } }\n",
        1,
    );
    let dir = config_dir(
        "envoy-metadata",
        &[("service.yaml", &service), ("edge.yaml", &edge)],
    );
    let svc = Service::start(&dir, &[]);
    let upstream = Upstream::start();
    let log = temp_dir("envoy-metadata-log").join("access.log");
    let access_log = format!(
        "                stat_prefix: edge\n                access_log:\n                  - name: envoy.access_loggers.file\n                    typed_config:\n                      \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n                      path: {}\n                      log_format:\n                        text_format_source:\n                          inline_string: \"%DYNAMIC_METADATA(envoy.filters.http.ratelimit)%\\n\"\n",
        log.display()
    );
    let text = read("envoy/ratelimit.yaml").replacen(
        "                stat_prefix: edge\n",
        &access_log,
        1,
    );
    let text = rewrite_port(&text, LISTEN_PORT, 0);
    let text = rewrite_port(&text, ADMIN_PORT, 0);
    let text = rewrite_port(&text, RATELIMITER_GRPC_PORT, svc.grpc.port());
    let text = rewrite_port(&text, UPSTREAM_PORT, upstream.port());
    let envoy = Envoy::start_config("metadata.yaml", &text).await;

    let r = get(&client_from(LOCAL), &envoy.url("/global/feed"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    // Envoy writes its access log on a timer: wait for the line.
    let mut line = String::new();
    for _ in 0..100 {
        line = std::fs::read_to_string(&log).unwrap_or_default();
        if !line.trim().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logged: serde_json::Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("access log {line:?}: {e}\n{}", envoy.logs()));
    assert_eq!(
        logged,
        serde_json::json!({
            "domain": "edge",
            "descriptors": [ { "entries": ["generic_key=global"] } ],
            "metadata": { "team": "edge", "cost": { "unit": "request" } },
        })
    );
}

/// gRPC on a Unix socket (`--grpc-uds`, envoyproxy/ratelimit's `GRPC_UDS`): a real Envoy whose
/// `ratelimiter` cluster is the socket gets its answers there.
#[tokio::test]
async fn envoy_asks_over_a_unix_socket() {
    use common::envoy::{
        ADMIN_PORT, Envoy, LISTEN_PORT, UPSTREAM_PORT, Upstream, repo, rewrite_port,
    };
    use common::{Service, temp_dir};

    clear_of_hour_boundary(Duration::from_secs(20)).await;
    let socket = temp_dir("grpc-uds").join("ratelimiter.sock");
    let svc = Service::start(
        &repo().join("envoy/config"),
        &["--grpc-uds", socket.to_str().unwrap()],
    );
    let upstream = Upstream::start();
    let tcp = "                    socket_address:\n                      address: 127.0.0.1\n                      port_value: 50051\n";
    let pipe = format!(
        "                    pipe:\n                      path: {}\n",
        socket.display()
    );
    let text = std::fs::read_to_string(repo().join("envoy/ratelimit.yaml")).unwrap();
    assert!(
        text.contains(tcp),
        "the ratelimiter cluster's address moved"
    );
    let text = text.replacen(tcp, &pipe, 1);
    let text = rewrite_port(&text, LISTEN_PORT, 0);
    let text = rewrite_port(&text, ADMIN_PORT, 0);
    let text = rewrite_port(&text, UPSTREAM_PORT, upstream.port());
    let envoy = Envoy::start_config("uds.yaml", &text).await;

    let client = client_from(LOCAL);
    let url = envoy.url("/global/feed");
    for i in 0..GLOBAL_QUOTA {
        let r = get(&client, &url, None).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}\n{}", svc.logs());
    }
    let r = get(&client, &url, None).await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("x-envoy-ratelimited"), "true");
}
