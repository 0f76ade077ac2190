//! Failure policies changed by a reload, with Redis really down: the new policy answers at
//! once (the `local` fallback exists whatever policy the service started with), and every
//! door marks a degraded answer, allowed or denied.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::redis::{RedisServer, wait_until};
use common::{Service, config_dir, grpc_channel};
use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

fn config(policy: &str) -> String {
    format!(
        "settings: {{ default_domain: ratelimiter, on_store_failure: {policy} }}\nclients:\n  tiers:\n    t: [ {{ name: daily, limit: 2, window: 1d }} ]\n  keys:\n    - {{ key: k, tier: t }}\n"
    )
}

fn ext_authz_request(key: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    headers: HashMap::from([("x-api-key".to_owned(), key.to_owned())]),
                    path: "/x".into(),
                    method: "GET".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The HTTP status an ext_authz answer stands for, and its `x-ratelimit-degraded` header.
fn ext_authz_outcome(r: &envoy_types::ext_authz::v3::pb::CheckResponse) -> (u16, Option<String>) {
    let (status, headers) = match r.http_response.as_ref().unwrap() {
        HttpResponse::OkResponse(ok) => (
            200,
            ok.response_headers_to_add
                .iter()
                .filter_map(|h| h.header.clone())
                .collect::<Vec<_>>(),
        ),
        HttpResponse::DeniedResponse(d) => (
            d.status.as_ref().unwrap().code as u16,
            d.headers.iter().filter_map(|h| h.header.clone()).collect(),
        ),
        HttpResponse::ErrorResponse(_) => panic!("unexpected error response"),
    };
    let degraded = headers
        .into_iter()
        .find(|h| h.key == "x-ratelimit-degraded")
        .map(|h| h.value);
    (status, degraded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_local_decides_locally_at_once_and_every_door_says_degraded() {
    let mut redis = RedisServer::start();
    let dir = config_dir("policy-reload", &[("service.yaml", &config("fail_closed"))]);
    let url = redis.url();
    let svc = Service::start(&dir, &["--redis-url", &url, "--redis-timeout-ms", "200"]);
    redis.kill();
    let http = reqwest::Client::new();
    let post = || http.post(svc.url("/check")).header("x-api-key", "k").send();
    assert_eq!(
        post().await.unwrap().status(),
        503,
        "fail_closed, Redis down"
    );

    std::fs::write(dir.join("service.yaml"), config("local")).unwrap();
    svc.signal("HUP");
    wait_until("the reload", Duration::from_secs(10), || {
        svc.logs().contains("configuration reloaded")
    });
    let r = post().await.unwrap();
    assert_eq!(r.status(), 200, "local: the first of 2 per day");
    assert_eq!(r.headers()["x-ratelimit-degraded"], "local");

    let mut authz = AuthorizationClient::new(grpc_channel(svc.grpc_url()).await);
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let r = authz
            .check(ext_authz_request("k"))
            .await
            .unwrap()
            .into_inner();
        outcomes.push(ext_authz_outcome(&r));
    }
    let local = Some("local".to_owned());
    assert_eq!(
        outcomes,
        [(200, local.clone()), (429, local)],
        "the second request, then the quota is spent"
    );
}
