//! JSON logs of the real binary (`--log-format json`, `RATELIMITER_LOG=debug`): a decision's
//! log line carries the request's `x-request-id` and the trace id of its `traceparent`
//! (HTTP headers, gRPC metadata), and never the API key nor the key's SHA-256.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Service, config_dir, grpc_channel};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use ratelimiter::api::grpc::pb::AllowRequestRequest;
use ratelimiter::api::grpc::pb::rate_limiter_client::RateLimiterClient;
use sha2::{Digest, Sha256};

const KEY: &str = "SeCrEt-api-key-4f1c9e";

const CONFIG: &str = r#"
clients:
  tiers:
    one: [ { name: one-per-hour, limit: 1, window: 1h } ]
  keys:
    - { key: SeCrEt-api-key-4f1c9e, tier: one }
"#;

const EDGE: &str = r#"
domain: edge
descriptors:
  - key: tenant
    rate_limit: { unit: hour, requests_per_unit: 1, name: per-tenant }
"#;

fn traceparent(trace_id: &str) -> String {
    format!("00-{trace_id}-00f067aa0ba902b7-01")
}

/// The JSON log line of the rejection logged with `request_id`, waiting for it a while.
async fn rejection_line(svc: &Service, request_id: &str) -> serde_json::Value {
    for _ in 0..100 {
        let found = svc.log.lock().unwrap().iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["fields"]["message"] == "rejected" && v["fields"]["request_id"] == request_id)
                .then_some(v)
        });
        if let Some(v) = found {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "no rejection logged with request_id {request_id}:\n{}",
        svc.logs()
    );
}

async fn http_rejection(svc: &Service, trace_id: &str) {
    let client = reqwest::Client::new();
    for i in 0..2 {
        client
            .post(svc.url("/check"))
            .header("x-api-key", KEY)
            .header("x-request-id", format!("req-http-{i}"))
            .header("traceparent", traceparent(trace_id))
            .send()
            .await
            .unwrap();
    }
}

async fn grpc_rejection(svc: &Service, trace_id: &str) {
    let mut client = RateLimiterClient::new(grpc_channel(svc.grpc_url()).await);
    let mut req = tonic::Request::new(AllowRequestRequest {
        api_key: KEY.into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-request-id", "req-grpc".parse().unwrap());
    req.metadata_mut()
        .insert("traceparent", traceparent(trace_id).parse().unwrap());
    client.allow_request(req).await.unwrap();
}

async fn rls_rejection(svc: &Service, trace_id: &str) {
    let mut client = RateLimitServiceClient::new(grpc_channel(svc.grpc_url()).await);
    for _ in 0..2 {
        let mut req = tonic::Request::new(RateLimitRequest {
            domain: "edge".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "tenant".into(),
                    value: "t1".into(),
                }],
                ..Default::default()
            }],
            hits_addend: 0,
        });
        req.metadata_mut()
            .insert("x-request-id", "req-rls".parse().unwrap());
        req.metadata_mut()
            .insert("traceparent", traceparent(trace_id).parse().unwrap());
        client.should_rate_limit(req).await.unwrap();
    }
}

#[tokio::test]
async fn decision_logs_carry_request_and_trace_ids_and_never_the_key() {
    let dir = config_dir("obs-logs", &[("service.yaml", CONFIG), ("edge.yaml", EDGE)]);
    let svc = Service::start_with_log_filter(&dir, &[], "debug");
    let traces = [
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "5ce92f3577b34da6a3ce929d0e0e4737",
        "6df92f3577b34da6a3ce929d0e0e4738",
    ];
    http_rejection(&svc, traces[0]).await;
    grpc_rejection(&svc, traces[1]).await;
    rls_rejection(&svc, traces[2]).await;
    for (request_id, trace_id, door) in [
        ("req-http-1", traces[0], "http"),
        ("req-grpc", traces[1], "grpc"),
        ("req-rls", traces[2], "ratelimit_service"),
    ] {
        let line = rejection_line(&svc, request_id).await;
        assert_eq!(line["fields"]["trace_id"], trace_id, "{line}");
        assert_eq!(line["fields"]["door"], door, "{line}");
    }
    let logs = svc.logs();
    let digest = hex::encode(Sha256::digest(KEY.as_bytes()));
    assert!(!logs.contains(KEY), "the key was logged:\n{logs}");
    assert!(
        !logs.to_lowercase().contains("secret-api"),
        "part of the key was logged"
    );
    assert!(
        !logs.contains(&digest[..16]),
        "the key's SHA-256 was logged:\n{logs}"
    );
}
