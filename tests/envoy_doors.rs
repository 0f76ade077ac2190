//! The two Envoy front doors over real gRPC sockets (no Envoy here; `tests/envoy_*.rs` run
//! the real proxy): `RateLimitService/ShouldRateLimit` and `Authorization/Check`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::{BASIC, InProcess, config_dir, grpc_channel};
use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use tonic::transport::Channel;

const EDGE: &str = r#"
domain: edge
descriptors:
  - key: remote_address
    rate_limit: { unit: minute, requests_per_unit: 3 }
  - key: generic_key
    value: global
    rate_limit: { unit: hour, requests_per_unit: 100, name: global }
    detailed_metric: true
  - key: api_key
    rate_limit: { unit: day, requests_per_unit: 2 }
"#;

async fn start(extra_settings: &str) -> (InProcess, Channel) {
    let service = BASIC.replace("max_cost: 1000", &format!("max_cost: 1000{extra_settings}"));
    let dir = config_dir(
        "envoy-doors",
        &[("service.yaml", &service), ("edge.yaml", EDGE)],
    );
    let svc = InProcess::start(&dir).await;
    let channel = grpc_channel(svc.grpc_url()).await;
    (svc, channel)
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        ..Default::default()
    }
}

fn rls(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 0,
    }
}

fn header<'a>(r: &'a RateLimitResponse, name: &str) -> Option<&'a str> {
    r.response_headers_to_add
        .iter()
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}

#[tokio::test]
async fn should_rate_limit_counts_per_descriptor_and_reports_statuses() {
    let (svc, channel) = start("").await;
    let mut client = RateLimitServiceClient::new(channel);
    let req = || {
        rls(
            "edge",
            vec![
                descriptor(&[("remote_address", "10.0.0.1")]),
                descriptor(&[("generic_key", "global")]),
            ],
        )
    };
    for i in 0..3u32 {
        let r = client.should_rate_limit(req()).await.unwrap().into_inner();
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses.len(), 2);
        let s = &r.statuses[0];
        assert_eq!(s.code, Code::Ok as i32);
        assert_eq!(s.limit_remaining, 2 - i);
        let limit = s.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit),
            (3, Unit::Minute as i32)
        );
        assert!(s.duration_until_reset.is_some());
        assert_eq!(r.statuses[1].limit_remaining, 99 - i);
        // Every limit that applied is in the policy header; the tightest in RateLimit.
        let policy = header(&r, "ratelimit-policy").unwrap();
        assert!(
            policy.contains(r#""3-per-1m";q=3;w=60"#)
                && policy.contains(r#""global";q=100;w=3600"#),
            "{policy}"
        );
        assert!(
            header(&r, "ratelimit")
                .unwrap()
                .starts_with(r#""3-per-1m""#)
        );
    }
    let r = client.should_rate_limit(req()).await.unwrap().into_inner();
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(
        r.statuses[1].code,
        Code::Ok as i32,
        "the global descriptor itself is fine"
    );
    assert!(header(&r, "retry-after").is_some());
    // All or nothing: the rejected request did not charge the global limit.
    let r = client
        .should_rate_limit(rls("edge", vec![descriptor(&[("generic_key", "global")])]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.statuses[0].limit_remaining, 96);
    // Another address has its own counter; an unknown domain or descriptor is not limited.
    let r = client
        .should_rate_limit(rls(
            "edge",
            vec![descriptor(&[("remote_address", "10.0.0.2")])],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, Code::Ok as i32);
    let r = client
        .should_rate_limit(rls("nope", vec![descriptor(&[("a", "b")])]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert!(r.statuses[0].current_limit.is_none());
    svc.stop().await;
}

#[tokio::test]
async fn hits_addend_and_limit_override() {
    let (svc, channel) = start("").await;
    let mut client = RateLimitServiceClient::new(channel);
    // Request-level hits_addend.
    let mut req = rls("edge", vec![descriptor(&[("remote_address", "1.1.1.1")])]);
    req.hits_addend = 2;
    let r = client.should_rate_limit(req).await.unwrap().into_inner();
    assert_eq!(r.statuses[0].limit_remaining, 1);
    // A descriptor's hits_addend of 0 checks without consuming.
    let mut d = descriptor(&[("remote_address", "1.1.1.1")]);
    d.hits_addend = Some(UInt64Value { value: 0 });
    for _ in 0..3 {
        let r = client
            .should_rate_limit(rls("edge", vec![d.clone()]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses[0].limit_remaining, 1);
    }
    // A per-request limit replaces the configured one, on its own counter.
    let mut d = descriptor(&[("remote_address", "1.1.1.1")]);
    d.limit = Some(RateLimitOverride {
        requests_per_unit: 10,
        unit: 3, /* HOUR */
    });
    let r = client
        .should_rate_limit(rls("edge", vec![d.clone()]))
        .await
        .unwrap()
        .into_inner();
    let limit = r.statuses[0].current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (10, Unit::Hour as i32)
    );
    assert_eq!(r.statuses[0].limit_remaining, 9);
    d.limit = Some(RateLimitOverride {
        requests_per_unit: 10,
        unit: 0,
    });
    let e = client
        .should_rate_limit(rls("edge", vec![d]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    svc.stop().await;
}

#[tokio::test]
async fn should_rate_limit_bad_input_and_raw_body() {
    let (svc, channel) = start("\n  over_limit_body: slow down").await;
    let mut client = RateLimitServiceClient::new(channel);
    for (req, message) in [
        (rls("", vec![descriptor(&[("a", "b")])]), "domain"),
        (rls("edge", vec![]), "descriptor"),
        (rls("edge", vec![descriptor(&[])]), "no entries"),
        (rls("edge", vec![descriptor(&[("", "b")])]), "key is empty"),
        (
            rls("edge", vec![descriptor(&[("a", &"v".repeat(5000))])]),
            "longer than",
        ),
    ] {
        let e = client.should_rate_limit(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{message}");
        assert!(e.message().contains(message), "{e:?}");
    }
    let d = || rls("edge", vec![descriptor(&[("api_key", "anything")])]);
    for _ in 0..2 {
        let r = client.should_rate_limit(d()).await.unwrap().into_inner();
        assert!(r.raw_body.is_empty());
    }
    let r = client.should_rate_limit(d()).await.unwrap().into_inner();
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(r.raw_body, b"slow down");
    svc.stop().await;
}

fn check_request(headers: &[(&str, &str)], context: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                    path: "/x".into(),
                    method: "GET".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: context
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        }),
    }
}

/// The HTTP status a check answer means, and its headers (added upstream or on the denial).
fn outcome(
    r: &envoy_types::ext_authz::v3::pb::CheckResponse,
) -> (u16, HashMap<String, String>, String) {
    match r.http_response.as_ref().unwrap() {
        HttpResponse::OkResponse(ok) => {
            assert_eq!(r.status.as_ref().unwrap().code, 0);
            let h = ok.response_headers_to_add.iter().map(|h| {
                let h = h.header.as_ref().unwrap();
                (h.key.clone(), h.value.clone())
            });
            (200, h.collect(), String::new())
        }
        HttpResponse::DeniedResponse(d) => {
            assert_ne!(r.status.as_ref().unwrap().code, 0);
            let h = d.headers.iter().map(|h| {
                let h = h.header.as_ref().unwrap();
                (h.key.clone(), h.value.clone())
            });
            (
                d.status.as_ref().unwrap().code as u16,
                h.collect(),
                d.body.clone(),
            )
        }
        HttpResponse::ErrorResponse(_) => panic!("unexpected error response"),
    }
}

#[tokio::test]
async fn ext_authz_allows_then_denies_with_headers_and_shares_counters() {
    let (svc, channel) = start("").await;
    let mut client = AuthorizationClient::new(channel);
    // Two units spent through POST /check first.
    let http = reqwest::Client::new();
    let r = http
        .post(svc.url("/check?cost=2"))
        .header("x-api-key", "k1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for remaining in [2, 1, 0] {
        let r = client
            .check(check_request(&[("x-api-key", "k1")], &[]))
            .await
            .unwrap()
            .into_inner();
        let (status, headers, _) = outcome(&r);
        assert_eq!(status, 200);
        assert_eq!(headers["ratelimit-policy"], r#""small";q=5;w=3600"#);
        assert!(
            headers["ratelimit"].starts_with(&format!(r#""small";r={remaining};"#)),
            "{headers:?}"
        );
    }
    let r = client
        .check(check_request(&[("x-api-key", "k1")], &[]))
        .await
        .unwrap()
        .into_inner();
    let (status, headers, body) = outcome(&r);
    assert_eq!(status, 429);
    assert!(
        headers.contains_key("retry-after") && headers.contains_key("ratelimit"),
        "{headers:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["allowed"], false);
    assert_eq!(body["policy"], "small");
    // And the counter is the one POST /check sees.
    let r = http
        .post(svc.url("/check"))
        .header("x-api-key", "k1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    svc.stop().await;
}

#[tokio::test]
async fn ext_authz_unknown_missing_and_malformed_keys() {
    let (svc, channel) = start("").await;
    let mut client = AuthorizationClient::new(channel);
    for (headers, status, message) in [
        (vec![("x-api-key", "nope")], 401, "unknown API key"),
        (vec![], 401, "missing API key"),
        (vec![("x-api-key", "has space")], 400, "malformed"),
    ] {
        let r = client
            .check(check_request(&headers, &[]))
            .await
            .unwrap()
            .into_inner();
        let (got, _, body) = outcome(&r);
        assert_eq!(got, status, "{body}");
        assert!(body.contains(message), "{body}");
    }
    // context_extensions pick the domain: in `edge`, api_key has a key-only limit of 2 a day.
    for expected in [200, 200, 429] {
        let r = client
            .check(check_request(
                &[("x-api-key", "whoever")],
                &[("domain", "edge")],
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(outcome(&r).0, expected);
    }
    svc.stop().await;
}

#[tokio::test]
async fn ext_authz_rules_build_descriptors_from_the_request() {
    let rules = r#"
  ext_authz:
    descriptors:
      - [ { key: api_key, from: "header:x-api-key" } ]
      - [ { key: route, from: path }, { key: verb, from: method } ]"#;
    let routes = r#"
domain: ratelimiter
descriptors:
  - key: route
    value: /x
    descriptors:
      - key: verb
        value: GET
        rate_limit: { unit: hour, requests_per_unit: 1, name: get-x }
"#;
    let service = BASIC.replace("max_cost: 1000", &format!("max_cost: 1000{rules}"));
    let dir = config_dir(
        "envoy-rules",
        &[("service.yaml", &service), ("routes.yaml", routes)],
    );
    let svc = InProcess::start(&dir).await;
    let channel = grpc_channel(svc.grpc_url()).await;
    let mut client = AuthorizationClient::new(channel);
    let r = client
        .check(check_request(&[("x-api-key", "k1")], &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&r).0, 200);
    let r = client
        .check(check_request(&[("x-api-key", "k2")], &[]))
        .await
        .unwrap()
        .into_inner();
    let (status, _, body) = outcome(&r);
    assert_eq!(status, 429, "GET /x is limited to 1 an hour whoever asks");
    assert!(body.contains("get-x"), "{body}");
    svc.stop().await;
}

/// Upstream's override: one fixed window, never in shadow mode, for any descriptor of a
/// known domain, matched or not; every unit Envoy has (WEEK included).
#[tokio::test]
async fn a_limit_override_replaces_every_configured_limit_of_its_descriptor() {
    let edge = r#"
domain: edge
descriptors:
  - key: tenant
    rate_limit: { unit: second, requests_per_unit: 1000 }
    limits:
      - { name: per-minute, algorithm: fixed_window, limit: 1000, window: 1m }
  - key: shadowed
    rate_limit: { unit: second, requests_per_unit: 1000 }
    shadow_mode: true
"#;
    let dir = config_dir(
        "envoy-override",
        &[("service.yaml", BASIC), ("edge.yaml", edge)],
    );
    let svc = InProcess::start(&dir).await;
    let mut client = RateLimitServiceClient::new(grpc_channel(svc.grpc_url()).await);
    for (entries, unit) in [
        (("tenant", "t1"), Unit::Minute),
        (("shadowed", "s1"), Unit::Hour),
        (("unmatched", "u1"), Unit::Week),
    ] {
        let mut d = descriptor(&[entries]);
        d.limit = Some(RateLimitOverride {
            requests_per_unit: 5,
            unit: unit as i32,
        });
        let mut codes = Vec::new();
        for _ in 0..6 {
            let r = client
                .should_rate_limit(rls("edge", vec![d.clone()]))
                .await
                .unwrap()
                .into_inner();
            codes.push(r.overall_code);
        }
        let ok = Code::Ok as i32;
        let over = Code::OverLimit as i32;
        assert_eq!(
            codes,
            [ok, ok, ok, ok, ok, over],
            "{entries:?} per {unit:?}"
        );
    }
    svc.stop().await;
}

/// The budget an allowed ext_authz answer hands to Envoy under `key`: its
/// `(requests_per_unit, unit)`, or `None` when there is none.
fn budget(r: &envoy_types::ext_authz::v3::pb::CheckResponse, key: &str) -> Option<(f64, String)> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let metadata = r.dynamic_metadata.as_ref()?;
    let Some(Kind::StructValue(s)) = metadata.fields.get(key)?.kind.as_ref() else {
        panic!("{key} is not a struct: {metadata:?}");
    };
    let Some(Kind::NumberValue(n)) = s.fields["requests_per_unit"].kind else {
        panic!("requests_per_unit is not a number: {s:?}");
    };
    let Some(Kind::StringValue(unit)) = s.fields["unit"].kind.clone() else {
        panic!("unit is not a string: {s:?}");
    };
    assert_eq!(s.fields.len(), 2, "{s:?}");
    Some((n, unit))
}

#[tokio::test]
async fn ext_authz_hands_the_clients_limit_to_envoy_in_dynamic_metadata() {
    let (svc, channel) = start("").await;
    let mut client = AuthorizationClient::new(channel);
    let mut ask = async |key: &str| {
        client
            .check(check_request(&[("x-api-key", key)], &[]))
            .await
            .unwrap()
            .into_inner()
    };
    let r = ask("k1").await;
    assert_eq!(outcome(&r).0, 200);
    assert_eq!(
        budget(&r, "ratelimit_budget"),
        Some((5.0, "HOUR".to_owned()))
    );
    let r = ask("big").await;
    assert_eq!(budget(&r, "ratelimit_budget"), Some((1000.0, "DAY".into())));
    svc.stop().await;

    // Another key; or none at all.
    let (svc, channel) = start("\n  ext_authz_budget_metadata_key: tenant_budget").await;
    let r = AuthorizationClient::new(channel)
        .check(check_request(&[("x-api-key", "k1")], &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(budget(&r, "tenant_budget"), Some((5.0, "HOUR".into())));
    assert_eq!(budget(&r, "ratelimit_budget"), None);
    svc.stop().await;
    let (svc, channel) = start("\n  ext_authz_budget_metadata_key: \"\"").await;
    let r = AuthorizationClient::new(channel)
        .check(check_request(&[("x-api-key", "k1")], &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&r).0, 200);
    assert!(r.dynamic_metadata.is_none(), "{r:?}");
    svc.stop().await;
}

#[tokio::test]
async fn ext_authz_hands_no_budget_when_the_window_is_not_one_envoy_unit() {
    let service = r#"
clients:
  unknown_key: reject
  tiers:
    ten-seconds: [ { name: short, limit: 10, window: 10s } ]
    two-hours: [ { name: long, limit: 10, window: 2h } ]
  keys:
    - { key: short, tier: ten-seconds }
    - { key: long, tier: two-hours }
"#;
    let dir = config_dir("envoy-doors-budget", &[("service.yaml", service)]);
    let svc = InProcess::start(&dir).await;
    let mut client = AuthorizationClient::new(grpc_channel(svc.grpc_url()).await);
    for key in ["short", "long"] {
        let r = client
            .check(check_request(&[("x-api-key", key)], &[]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(outcome(&r).0, 200, "{key}");
        assert!(r.dynamic_metadata.is_none(), "{key}: {r:?}");
    }
    svc.stop().await;
}

/// A token budget in upstream's format: 1,000 tokens a minute per tenant, charged after the
/// response (`post_paid`), as a token bucket so the debt is repaid at the refill rate.
const LLM: &str = r#"
domain: llm
descriptors:
  - key: tenant
    post_paid: true
    rate_limit: { unit: minute, requests_per_unit: 1000 }
    algorithm: token_bucket
"#;

/// A descriptor of `tenant` with its own `hits_addend` (Envoy's request-time check sends 0,
/// its stream-done charge the tokens used).
fn tenant(name: &str, hits: u64) -> RateLimitDescriptor {
    let mut d = descriptor(&[("tenant", name)]);
    d.hits_addend = Some(UInt64Value { value: hits });
    d
}

/// Sends one descriptor in domain `llm`: the overall code and the descriptor's status.
async fn llm(
    client: &mut RateLimitServiceClient<Channel>,
    d: RateLimitDescriptor,
) -> RateLimitResponse {
    client
        .should_rate_limit(rls("llm", vec![d]))
        .await
        .unwrap()
        .into_inner()
}

/// Waits until the clock minute has at least `margin` seconds left: a test that fills a
/// fixed one-minute window must not straddle its end.
async fn clear_of_minute_boundary(margin: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let left = 60 - now.as_secs() % 60;
    if left <= margin {
        tokio::time::sleep(std::time::Duration::from_secs(left + 1)).await;
    }
}

#[tokio::test]
async fn post_paid_descriptor_records_stream_done_charges_into_debt() {
    let dir = config_dir(
        "envoy-doors-llm",
        &[("service.yaml", BASIC), ("llm.yaml", LLM)],
    );
    let svc = InProcess::start(&dir).await;
    let mut client = RateLimitServiceClient::new(grpc_channel(svc.grpc_url()).await);
    let ok = Code::Ok as i32;
    let over = Code::OverLimit as i32;
    // Request-time check, then the response's 700 tokens; twice.
    for _ in 0..2 {
        assert_eq!(llm(&mut client, tenant("a", 0)).await.overall_code, ok);
        llm(&mut client, tenant("a", 700)).await;
    }
    // 1,400 of 1,000 used: the third request-time check is refused, with nothing left and a
    // Retry-After for the debt (400 tokens at 1,000 a minute: 24 s).
    let r = llm(&mut client, tenant("a", 0)).await;
    assert_eq!(r.overall_code, over, "{r:?}");
    assert_eq!(r.statuses[0].limit_remaining, 0);
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((20..=24).contains(&retry), "retry-after {retry}");
    // Another tenant has its own budget.
    assert_eq!(llm(&mut client, tenant("b", 0)).await.overall_code, ok);

    // A budget handed over per request (Envoy's `limit` override from ext_authz's metadata)
    // is post-paid like the descriptor it replaces the limit of.
    clear_of_minute_boundary(10).await;
    let with_budget = |hits| {
        let mut d = tenant("c", hits);
        d.limit = Some(RateLimitOverride {
            requests_per_unit: 1000,
            unit: Unit::Minute as i32,
        });
        d
    };
    for _ in 0..2 {
        assert_eq!(llm(&mut client, with_budget(0)).await.overall_code, ok);
        llm(&mut client, with_budget(700)).await;
    }
    let r = llm(&mut client, with_budget(0)).await;
    assert_eq!(r.overall_code, over, "{r:?}");
    svc.stop().await;
}

/// envoyproxy/ratelimit's quota mode and response dynamic metadata, as upstream answers them.
const QUOTA: &str = r#"
domain: quota
descriptors:
  - key: tenant
    quota_mode: true
    rate_limit: { unit: hour, requests_per_unit: 1 }
    metadata: { team: tenants, route: { tier: free } }
  - key: region
    quota_mode: true
    rate_limit: { unit: hour, requests_per_unit: 5 }
    metadata: { team: regions, route: { zone: eu } }
"#;

#[tokio::test]
async fn quota_mode_and_dynamic_metadata_answer_as_upstream_does() {
    let service = BASIC.replace(
        "max_cost: 1000",
        "max_cost: 1000\n  response_dynamic_metadata: true",
    );
    let dir = config_dir(
        "envoy-doors-quota",
        &[("service.yaml", &service), ("quota.yaml", QUOTA)],
    );
    let svc = InProcess::start(&dir).await;
    let mut client = RateLimitServiceClient::new(grpc_channel(svc.grpc_url()).await);
    let ask = |descriptors| rls("quota", descriptors);
    let both = || {
        vec![
            descriptor(&[("tenant", "t")]),
            descriptor(&[("region", "r")]),
        ]
    };

    let first = client
        .should_rate_limit(ask(both()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.overall_code, Code::Ok as i32);
    // The tenant is now over; the region is not: OK overall, the tenant's status OVER_LIMIT,
    // and only the region's metadata handed back.
    let second = client
        .should_rate_limit(ask(both()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.overall_code, Code::Ok as i32, "{second:?}");
    let codes: Vec<i32> = second.statuses.iter().map(|s| s.code).collect();
    assert_eq!(codes, vec![Code::OverLimit as i32, Code::Ok as i32]);
    let metadata =
        serde_json::to_value(json_of(second.dynamic_metadata.as_ref().unwrap())).unwrap();
    assert_eq!(
        metadata,
        serde_json::json!({
            "domain": "quota",
            "descriptors": [ { "entries": ["tenant=t"] }, { "entries": ["region=r"] } ],
            "metadata": { "team": "regions", "route": { "zone": "eu" } },
        })
    );
    // Every quota-mode descriptor over: OVER_LIMIT.
    let alone = client
        .should_rate_limit(ask(vec![descriptor(&[("tenant", "t")])]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alone.overall_code, Code::OverLimit as i32);
    let metadata = serde_json::to_value(json_of(alone.dynamic_metadata.as_ref().unwrap())).unwrap();
    assert_eq!(
        metadata.get("metadata"),
        None,
        "no descriptor passed: {metadata}"
    );
}

/// A protobuf `Struct` as JSON, to compare whole shapes.
fn json_of(s: &envoy_types::pb::google::protobuf::Struct) -> serde_json::Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    fn value(v: &envoy_types::pb::google::protobuf::Value) -> serde_json::Value {
        match &v.kind {
            Some(Kind::StringValue(s)) => serde_json::json!(s),
            Some(Kind::NumberValue(n)) => serde_json::json!(n),
            Some(Kind::BoolValue(b)) => serde_json::json!(b),
            Some(Kind::StructValue(s)) => json_of(s),
            Some(Kind::ListValue(l)) => l.values.iter().map(value).collect(),
            Some(Kind::NullValue(_)) | None => serde_json::Value::Null,
        }
    }
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value(v)))
        .collect()
}

/// envoyproxy/ratelimit's `value_to_metric` (README's example: a route shared by wildcard
/// with `share_threshold`, methods below it): the runtime values go in the per-value metric,
/// and one limit's labels are capped, the rest counted as `_other`.
const VALUES: &str = r#"
domain: example11_metrics
descriptors:
  - key: route
    value: api/*
    share_threshold: true
    value_to_metric: true
    descriptors:
      - key: method
        rate_limit: { unit: minute, requests_per_unit: 1000 }
  - key: user
    value_to_metric: true
    rate_limit: { unit: minute, requests_per_unit: 1000, name: per-user }
  - key: plain
    rate_limit: { unit: minute, requests_per_unit: 1000 }
"#;

#[tokio::test]
async fn value_to_metric_puts_runtime_values_in_a_capped_metric() {
    let dir = config_dir(
        "envoy-doors-values",
        &[("service.yaml", BASIC), ("values.yaml", VALUES)],
    );
    let svc = InProcess::start(&dir).await;
    let mut client = RateLimitServiceClient::new(grpc_channel(svc.grpc_url()).await);
    let ask = |entries: &[(&str, &str)]| rls("example11_metrics", vec![descriptor(entries)]);
    client
        .should_rate_limit(ask(&[("route", "api/v1"), ("method", "GET")]))
        .await
        .unwrap();
    for i in 0..105 {
        let user = format!("u{i}");
        client
            .should_rate_limit(ask(&[("user", user.as_str())]))
            .await
            .unwrap();
    }
    client
        .should_rate_limit(ask(&[("plain", "secret-value")]))
        .await
        .unwrap();
    let text = common::metrics(&reqwest::Client::new(), &svc.url("/metrics")).await;
    let series = |needle: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("ratelimiter_descriptor_decisions_total") && l.contains(needle)
            })
            .count()
    };
    // Upstream's key for the README's request, as its code writes it: the shared wildcard's
    // pattern, then the method level by its key (it does not set value_to_metric).
    assert_eq!(series(r#"descriptor="route_api/*.method""#), 1, "{text}");
    assert_eq!(series(r#"descriptor="user_u0""#), 1);
    assert_eq!(series(r#"limit="per-user""#), 101, "100 values and _other");
    assert!(text.contains(r#"descriptor="_other",domain="example11_metrics",limit="per-user",outcome="allowed"} 5"#), "{text}");
    // A descriptor without value_to_metric never puts its value in a label.
    assert!(!text.contains("secret-value"));
}
