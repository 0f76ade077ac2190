//! Descriptor policy for `AllowRequest` (issue 12, point 4), over real sockets: by default a
//! caller may add no descriptor of its own (PERMISSION_DENIED, nothing consumed), so a key
//! holder cannot spend other descriptors' quotas; `settings.allow_request_descriptors` names
//! the descriptor keys callers may add.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{InProcess, config_dir};
use ratelimiter::api::grpc::pb::rate_limiter_client::RateLimiterClient;
use ratelimiter::api::grpc::pb::{AllowRequestRequest, Descriptor, descriptor::Entry};

const SERVICE: &str = r#"
settings:
  default_domain: ratelimiter
clients:
  tiers:
    small: [ { name: small, limit: 5, window: 1h } ]
  keys:
    - { key: k1, tier: small }
"#;

/// A route's limit, shared by every caller who names the route.
const ROUTES: &str = r#"
domain: ratelimiter
descriptors:
  - key: route
    value: /expensive
    rate_limit: { unit: hour, requests_per_unit: 1 }
"#;

fn naming(key: &str, value: &str) -> AllowRequestRequest {
    AllowRequestRequest {
        api_key: "k1".into(),
        descriptors: vec![Descriptor {
            entries: vec![Entry {
                key: key.into(),
                value: value.into(),
            }],
        }],
        cost: None,
        report: false,
    }
}

fn own() -> AllowRequestRequest {
    AllowRequestRequest {
        api_key: "k1".into(),
        descriptors: vec![],
        cost: None,
        report: false,
    }
}

#[tokio::test]
async fn by_default_a_caller_adds_no_descriptor() {
    let dir = config_dir(
        "sec-desc-default",
        &[("service.yaml", SERVICE), ("routes.yaml", ROUTES)],
    );
    let svc = InProcess::start(&dir).await;
    let mut client = RateLimiterClient::connect(svc.grpc_url()).await.unwrap();
    let refused = client
        .allow_request(naming("route", "/expensive"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("allow_request_descriptors"),
        "{refused:?}"
    );
    // Nothing was consumed: the caller's own quota is whole.
    assert_eq!(
        client
            .allow_request(own())
            .await
            .unwrap()
            .into_inner()
            .remaining,
        4
    );
}

#[tokio::test]
async fn the_configured_descriptor_keys_may_be_added() {
    let service = SERVICE.replace(
        "  default_domain: ratelimiter\n",
        "  default_domain: ratelimiter\n  allow_request_descriptors: [route]\n",
    );
    let dir = config_dir(
        "sec-desc-allowed",
        &[("service.yaml", &service), ("routes.yaml", ROUTES)],
    );
    let svc = InProcess::start(&dir).await;
    let mut client = RateLimiterClient::connect(svc.grpc_url()).await.unwrap();
    assert!(
        client
            .allow_request(naming("route", "/expensive"))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        !client
            .allow_request(naming("route", "/expensive"))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let refused = client
        .allow_request(naming("tenant", "acme"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
}
