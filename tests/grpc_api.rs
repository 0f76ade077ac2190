//! `ratelimiter.v1.RateLimiter/AllowRequest` and gRPC health, over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{BASIC, InProcess, config_dir, grpc_channel};
use ratelimiter::api::grpc::pb::rate_limiter_client::RateLimiterClient;
use ratelimiter::api::grpc::pb::{AllowRequestRequest, Descriptor, descriptor::Entry};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn req(key: &str, cost: Option<u64>) -> AllowRequestRequest {
    AllowRequestRequest {
        api_key: key.into(),
        descriptors: vec![],
        cost,
        report: false,
    }
}

#[tokio::test]
async fn allow_then_reject() {
    let dir = config_dir("grpc-basic", &[("service.yaml", BASIC)]);
    let svc = InProcess::start(&dir).await;
    let mut client = RateLimiterClient::connect(svc.grpc_url()).await.unwrap();
    for i in 0..5u64 {
        let r = client
            .allow_request(req("k1", None))
            .await
            .unwrap()
            .into_inner();
        assert!(r.allowed);
        assert_eq!(r.limit, 5);
        assert_eq!(r.remaining, 4 - i);
        assert_eq!(r.policy, "small");
        assert_eq!(r.window_ms, 3_600_000);
        assert_eq!(r.retry_after_ms, 0);
    }
    let r = client
        .allow_request(req("k1", None))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.allowed);
    assert!(
        r.retry_after_ms > 700_000 && r.retry_after_ms <= 720_000,
        "{}",
        r.retry_after_ms
    );
    assert!(!r.retry_never);
    let r = client
        .allow_request(req("k2", Some(6)))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.allowed && r.retry_never);
    svc.stop().await;
}

#[tokio::test]
async fn grpc_and_http_share_counters() {
    let dir = config_dir("grpc-shared", &[("service.yaml", BASIC)]);
    let svc = InProcess::start(&dir).await;
    let mut client = RateLimiterClient::connect(svc.grpc_url()).await.unwrap();
    let r = client
        .allow_request(req("k1", Some(3)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.remaining, 2);
    let http = reqwest::Client::new()
        .post(svc.url("/check"))
        .header("x-api-key", "k1")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = http.json().await.unwrap();
    assert_eq!(body["remaining"], 1);
    svc.stop().await;
}

#[tokio::test]
async fn extra_descriptors_join_the_decision() {
    // Callers may add `route` descriptors (by default they may add none).
    let service = &BASIC.replace(
        "  max_cost: 1000\n",
        "  max_cost: 1000\n  allow_request_descriptors: [route]\n",
    );
    let envoy = r#"
domain: ratelimiter
descriptors:
  - key: route
    value: /expensive
    rate_limit: { unit: hour, requests_per_unit: 1 }
"#;
    let dir = config_dir(
        "grpc-extra",
        &[("service.yaml", service), ("routes.yaml", envoy)],
    );
    let svc = InProcess::start(&dir).await;
    let mut client = RateLimiterClient::connect(svc.grpc_url()).await.unwrap();
    let with_route = |key: &str| AllowRequestRequest {
        api_key: key.into(),
        descriptors: vec![Descriptor {
            entries: vec![Entry {
                key: "route".into(),
                value: "/expensive".into(),
            }],
        }],
        cost: None,
        report: false,
    };
    assert!(
        client
            .allow_request(with_route("k1"))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    // The route's limit is shared by all keys and now spent; k2's own quota is untouched.
    let r = client
        .allow_request(with_route("k2"))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.allowed);
    assert_eq!(r.policy, "1-per-1h");
    let r = client
        .allow_request(req("k2", None))
        .await
        .unwrap()
        .into_inner();
    assert!(r.allowed);
    assert_eq!(
        r.remaining, 4,
        "the rejected request consumed nothing of k2's quota"
    );
    svc.stop().await;
}

#[tokio::test]
async fn bad_input_is_invalid_argument() {
    let dir = config_dir("grpc-bad", &[("service.yaml", BASIC)]);
    let svc = InProcess::start(&dir).await;
    let mut client = RateLimiterClient::connect(svc.grpc_url()).await.unwrap();
    let entry = |k: &str, v: &str| Entry {
        key: k.into(),
        value: v.into(),
    };
    let cases: Vec<(AllowRequestRequest, Code, &str)> = vec![
        (req("", None), Code::InvalidArgument, "empty"),
        (
            req(&"x".repeat(300), None),
            Code::InvalidArgument,
            "longer than 256",
        ),
        (req("k\u{e9}", None), Code::InvalidArgument, "visible ASCII"),
        (req("k1", Some(0)), Code::InvalidArgument, "at least 1"),
        (
            req("k1", Some(u64::MAX)),
            Code::InvalidArgument,
            "exceeds the maximum",
        ),
        (req("nope", None), Code::Unauthenticated, "unknown API key"),
        (
            AllowRequestRequest {
                descriptors: vec![Descriptor { entries: vec![] }],
                ..req("k1", None)
            },
            Code::InvalidArgument,
            "no entries",
        ),
        (
            AllowRequestRequest {
                descriptors: vec![Descriptor {
                    entries: vec![entry("", "v")],
                }],
                ..req("k1", None)
            },
            Code::InvalidArgument,
            "key is empty",
        ),
        (
            AllowRequestRequest {
                descriptors: vec![Descriptor {
                    entries: vec![entry("api_key", "k2")],
                }],
                ..req("k1", None)
            },
            Code::InvalidArgument,
            "reserved",
        ),
        (
            AllowRequestRequest {
                descriptors: vec![
                    Descriptor {
                        entries: vec![entry("a", "v")]
                    };
                    40
                ],
                ..req("k1", None)
            },
            Code::InvalidArgument,
            "at most",
        ),
        (
            AllowRequestRequest {
                descriptors: vec![Descriptor {
                    entries: vec![entry("a", &"v".repeat(5000))],
                }],
                ..req("k1", None)
            },
            Code::InvalidArgument,
            "longer than 1024",
        ),
    ];
    for (request, code, message) in cases {
        let status = client.allow_request(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{message}: {status:?}");
        assert!(
            status.message().contains(message),
            "{:?} should mention {message:?}",
            status.message()
        );
    }
    // Nothing above consumed k1's quota.
    let r = client
        .allow_request(req("k1", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.remaining, 4);
    svc.stop().await;
}

#[tokio::test]
async fn grpc_health_serves_then_stops() {
    let dir = config_dir("grpc-health", &[("service.yaml", BASIC)]);
    let svc = InProcess::start(&dir).await;
    let channel = grpc_channel(svc.grpc_url()).await;
    let mut health = HealthClient::new(channel);
    for service in ["", "ratelimiter.v1.RateLimiter"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32);
    }
    svc.stop().await;
}

/// A message whose field 1 is a number where the service expects a string: bytes that do not
/// decode as an `AllowRequestRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct NotARequest {
    #[prost(uint64, tag = "1")]
    api_key: u64,
}

#[tokio::test]
async fn undecodable_messages_get_an_error_and_the_server_carries_on() {
    let dir = config_dir("grpc-garbage", &[("service.yaml", BASIC)]);
    let svc = InProcess::start(&dir).await;
    let channel = grpc_channel(svc.grpc_url()).await;
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/ratelimiter.v1.RateLimiter/AllowRequest",
    );
    let codec = tonic_prost::ProstCodec::<
        NotARequest,
        ratelimiter::api::grpc::pb::AllowRequestResponse,
    >::default();
    let status = grpc
        .unary(tonic::Request::new(NotARequest { api_key: 7 }), path, codec)
        .await
        .unwrap_err();
    // tonic refuses the bytes before our code sees them, with a message saying why.
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("decode"), "{status:?}");
    // The server is unharmed.
    let mut client = RateLimiterClient::new(channel);
    assert!(
        client
            .allow_request(req("k1", None))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    svc.stop().await;
}

#[tokio::test]
async fn report_records_usage_past_the_limit() {
    let dir = config_dir("grpc-report", &[("service.yaml", BASIC)]);
    let svc = InProcess::start(&dir).await;
    let mut client = RateLimiterClient::connect(svc.grpc_url()).await.unwrap();
    let report = |cost| AllowRequestRequest {
        report: true,
        ..req("k1", Some(cost))
    };
    let r = client.allow_request(report(3)).await.unwrap().into_inner();
    assert!(r.allowed);
    assert_eq!(r.remaining, 2);
    // 4 with 2 left: recorded anyway, and the answer says the client is now over its limit.
    let r = client.allow_request(report(4)).await.unwrap().into_inner();
    assert!(!r.allowed);
    assert_eq!(r.remaining, 0, "charged anyway: nothing remains");
    // A debt of 2 plus the request's own token: 3 × 720 s.
    let r = client
        .allow_request(req("k1", None))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.allowed);
    assert!(
        (2_100_000..=2_160_000).contains(&r.retry_after_ms),
        "{}",
        r.retry_after_ms
    );
    let status = client.allow_request(report(0)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    svc.stop().await;
}
