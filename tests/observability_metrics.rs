//! `/metrics` against the real binary and a real Redis: every family of the issue is there,
//! promtool accepts the exposition, and no label value comes from a request. Requests carry
//! hostile API keys, domains, descriptor keys and values (through every front door); none
//! of them, nor a key's SHA-256, may appear in the scrape, and the `domain` and `limit`
//! labels hold configured names only. Reloads are counted and the config digest follows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::prometheus::promtool;
use common::redis::RedisServer;
use common::{Service, config_dir, grpc_channel, metrics, temp_dir};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use sha2::{Digest, Sha256};

const SERVICE: &str = r#"
settings: { default_domain: ratelimiter, on_store_failure: fail_open }
clients:
  unknown_key: anon
  tiers:
    anon: [ { name: anon-per-hour, limit: 3, window: 1h } ]
    paid: [ { name: paid-per-day, limit: 1000, window: 1d } ]
  keys:
    - { key: hostilekeyKNOWN-7f3a, tier: paid }
"#;

const EDGE: &str = r#"
domain: edge
descriptors:
  - key: remote_address
    rate_limit: { unit: minute, requests_per_unit: 2, name: per-address }
  - key: path
    value: "/api/*"
    rate_limit: { unit: minute, requests_per_unit: 1, name: api-paths }
    shadow_mode: true
"#;

/// Every family the issue asks for (point 1).
const FAMILIES: &[&str] = &[
    "ratelimiter_decisions_total",
    "ratelimiter_limit_decisions_total",
    "ratelimiter_decision_duration_seconds_bucket",
    "ratelimiter_store_errors_total",
    "ratelimiter_failure_policy_decisions_total",
    "ratelimiter_in_flight_decisions",
    "ratelimiter_redis_call_duration_seconds_bucket",
    "ratelimiter_redis_errors_total",
    "ratelimiter_redis_batch_size_bucket",
    "ratelimiter_redis_cached_rejections_total",
    "ratelimiter_redis_breaker_open",
    "ratelimiter_redis_queue_depth",
    "ratelimiter_redis_queue_capacity",
    "ratelimiter_config_reloads_total",
    "ratelimiter_config_last_success_timestamp_seconds",
    "ratelimiter_config_info",
    "ratelimiter_memory_store_counters",
    "ratelimiter_memory_store_capacity_counters",
    "ratelimiter_build_info",
    "ratelimiter_ready",
];

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

/// Hostile requests through the HTTP door and Envoy's RLS, known domain and unknown.
async fn send_hostile_requests(svc: &Service, keys: &[String]) {
    let http = reqwest::Client::new();
    for key in keys {
        for _ in 0..4 {
            http.post(svc.url("/check"))
                .header("X-API-Key", key)
                .send()
                .await
                .unwrap();
        }
    }
    let mut rls = RateLimitServiceClient::new(grpc_channel(svc.grpc_url()).await);
    let override_limit = RateLimitOverride {
        requests_per_unit: 5,
        unit: 2,
    };
    let requests = [
        (
            "edge",
            descriptor(&[("remote_address", "hostileADDR-1.2.3.4")]),
        ),
        ("edge", descriptor(&[("path", "/api/hostilePATH")])),
        (
            "edge",
            descriptor(&[("hostileENTRYKEY", "hostileENTRYVALUE")]),
        ),
        (
            "hostileDOMAIN",
            descriptor(&[("remote_address", "hostileADDR-9")]),
        ),
        (
            "edge",
            RateLimitDescriptor {
                limit: Some(override_limit),
                ..descriptor(&[("hostileOVERRIDEKEY", "hostileOVERRIDEVALUE")])
            },
        ),
        (
            "hostileDOMAIN2",
            RateLimitDescriptor {
                limit: Some(override_limit),
                ..descriptor(&[("remote_address", "hostileADDR-10")])
            },
        ),
    ];
    for (domain, d) in requests {
        for _ in 0..3 {
            let _ = rls
                .should_rate_limit(RateLimitRequest {
                    domain: domain.into(),
                    descriptors: vec![d.clone()],
                    hits_addend: 0,
                })
                .await;
        }
    }
}

/// The values of label `label` over every series of `/metrics`.
fn label_values(text: &str, label: &str) -> BTreeSet<String> {
    let pattern = format!("{label}=\"");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(&pattern))
        .filter_map(|(_, rest)| rest.split_once('"'))
        .map(|(value, _)| value.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_label_value_comes_from_a_request_and_promtool_accepts_every_name() {
    let redis = RedisServer::start();
    let dir = config_dir(
        "obs-metrics",
        &[("service.yaml", SERVICE), ("edge.yaml", EDGE)],
    );
    let svc = Service::start(&dir, &["--redis-url", &redis.url()]);
    let mut keys: Vec<String> = (0..20)
        .map(|i| format!("hostileKEY-{i}-{{le=\"0\"}}\\n#EOF"))
        .collect();
    keys.push("hostilekeyKNOWN-7f3a".into());
    send_hostile_requests(&svc, &keys).await;
    let text = metrics(&reqwest::Client::new(), &svc.url("/metrics")).await;

    assert!(
        !text.to_lowercase().contains("hostile"),
        "a request's value reached /metrics:\n{text}"
    );
    for key in &keys {
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        assert!(!text.contains(&digest[..16]), "a key's SHA-256 in /metrics");
    }
    let limits = label_values(&text, "limit");
    let configured = [
        "anon-per-hour",
        "paid-per-day",
        "per-address",
        "api-paths",
        "override",
    ];
    assert!(
        limits.iter().all(|l| configured.contains(&l.as_str())),
        "limit labels beyond the configured names: {limits:?}"
    );
    assert_eq!(
        label_values(&text, "domain"),
        BTreeSet::from(["edge".to_string(), "ratelimiter".to_string()]),
    );
    for family in FAMILIES {
        assert!(
            text.contains(family),
            "{family} missing from /metrics:\n{text}"
        );
    }
    // Shadow and the override were counted under configured names.
    assert!(
        text.contains(r#"limit="api-paths",outcome="shadow"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"door="ratelimit_service",outcome="shadow"} 2"#),
        "{text}"
    );
    promtool(&["check", "metrics"], Some(&text), &dir)
        .unwrap_or_else(|e| panic!("promtool check metrics:\n{e}\n{text}"));
}

#[tokio::test]
async fn reloads_are_counted_and_the_digest_follows_the_config() {
    let dir = temp_dir("obs-reload");
    std::fs::write(dir.join("service.yaml"), SERVICE).unwrap();
    let svc = Service::start(&dir, &[]);
    let client = reqwest::Client::new();
    let before = metrics(&client, &svc.url("/metrics")).await;
    let digest = label_values(&before, "sha256");
    assert_eq!(digest.len(), 1, "{before}");
    assert!(
        before.contains(r#"ratelimiter_memory_store_capacity_counters{store="primary"} 1000000"#)
    );

    std::fs::write(
        dir.join("service.yaml"),
        SERVICE.replace("limit: 3", "limit: 4"),
    )
    .unwrap();
    svc.signal("HUP");
    let mut after = String::new();
    for _ in 0..100 {
        after = metrics(&client, &svc.url("/metrics")).await;
        if after
            .contains(r#"ratelimiter_config_reloads_total{result="success",trigger="sighup"} 1"#)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        after.contains(r#"ratelimiter_config_reloads_total{result="success",trigger="sighup"} 1"#),
        "{after}"
    );
    let new_digest = label_values(&after, "sha256");
    assert_eq!(new_digest.len(), 1, "one config_info series only:\n{after}");
    assert_ne!(digest, new_digest);

    std::fs::write(dir.join("service.yaml"), "clients: [ not a table").unwrap();
    svc.signal("HUP");
    for _ in 0..100 {
        after = metrics(&client, &svc.url("/metrics")).await;
        if after
            .contains(r#"ratelimiter_config_reloads_total{result="failure",trigger="sighup"} 1"#)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        after.contains(r#"ratelimiter_config_reloads_total{result="failure",trigger="sighup"} 1"#),
        "{after}"
    );
    assert_eq!(
        label_values(&after, "sha256"),
        new_digest,
        "a refused reload keeps the digest"
    );
}
