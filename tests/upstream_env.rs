//! An envoyproxy/ratelimit Deployment's environment starts this service with the same limits
//! (issue "A drop-in for envoyproxy/ratelimit", point 5): the config directory from
//! `RUNTIME_ROOT`/`RUNTIME_SUBDIRECTORY`/`RUNTIME_APPDIRECTORY`, Redis from `REDIS_*`, the
//! listeners from `GRPC_HOST`/`GRPC_PORT` and `HOST`/`PORT`, the global switches; an upstream
//! variable that changes nothing here is named in the log; our own flags win.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::redis::RedisServer;
use common::redis_server::free_port;
use common::{Service, grpc_channel, temp_dir};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;

const UPSTREAM_CONFIG: &str = r#"
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit:
      unit: minute
      requests_per_unit: 1
"#;

/// The binary with an upstream Deployment's environment (and nothing of ours).
fn upstream_deployment(redis: &RedisServer, grpc_port: u16, http_port: u16) -> Command {
    let root = temp_dir("upstream-env");
    let dir = root.join("ratelimit").join("config");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.yaml"), UPSTREAM_CONFIG).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ratelimiter"));
    cmd.env("RUNTIME_ROOT", &root)
        .env("RUNTIME_SUBDIRECTORY", "ratelimit")
        .env("RUNTIME_WATCH_ROOT", "false")
        .env("REDIS_SOCKET_TYPE", "tcp")
        .env("REDIS_TYPE", "single")
        .env("REDIS_URL", format!("127.0.0.1:{}", redis.port()))
        .env("CACHE_KEY_PREFIX", "upstream_")
        .env("GRPC_HOST", "127.0.0.1")
        .env("GRPC_PORT", grpc_port.to_string())
        .env("HOST", "127.0.0.1")
        .env("PORT", http_port.to_string())
        .env("RESPONSE_DYNAMIC_METADATA", "true")
        .env("LOG_LEVEL", "info")
        .env("USE_STATSD", "false");
    cmd
}

fn users() -> RateLimitRequest {
    RateLimitRequest {
        domain: "mongo_cps".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "database".into(),
                value: "users".into(),
            }],
            ..Default::default()
        }],
        hits_addend: 0,
    }
}

#[tokio::test]
async fn an_upstream_deployments_environment_starts_it_with_the_same_limits() {
    let redis = RedisServer::start();
    let (grpc_port, http_port) = (free_port(), free_port());
    let svc = Service::spawn_as_is(upstream_deployment(&redis, grpc_port, http_port));
    assert_eq!((svc.grpc.port(), svc.http.port()), (grpc_port, http_port));

    let mut client = RateLimitServiceClient::new(grpc_channel(svc.grpc_url()).await);
    let first = client
        .should_rate_limit(users())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.overall_code, Code::Ok as i32);
    assert!(
        first.dynamic_metadata.is_some(),
        "RESPONSE_DYNAMIC_METADATA"
    );
    let second = client
        .should_rate_limit(users())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.overall_code, Code::OverLimit as i32, "1 per minute");
    // The counters are in the Redis REDIS_URL names, under CACHE_KEY_PREFIX.
    assert!(
        !redis.keys("upstream_*").is_empty(),
        "{:?}",
        redis.keys("*")
    );
    // Upstream's health path: ready once the store has warmed up.
    let mut status = 0;
    for _ in 0..100 {
        status = reqwest::get(svc.url("/healthcheck"))
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    // What changes nothing here is said, by name.
    let logs = svc.logs();
    assert!(
        logs.contains("USE_STATSD") && logs.contains("changes nothing here"),
        "{logs}"
    );
}

#[tokio::test]
async fn our_own_flags_win_over_upstream_variables() {
    let redis = RedisServer::start();
    let grpc_port = free_port();
    let mut cmd = upstream_deployment(&redis, grpc_port, free_port());
    cmd.env("SHADOW_MODE", "true");
    cmd.args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]);
    let svc = Service::spawn_as_is(cmd);
    assert_ne!(
        svc.grpc.port(),
        grpc_port,
        "--grpc-addr wins over GRPC_PORT"
    );
    let mut client = RateLimitServiceClient::new(grpc_channel(svc.grpc_url()).await);
    client.should_rate_limit(users()).await.unwrap();
    // SHADOW_MODE: over the limit, answered OK.
    let second = client
        .should_rate_limit(users())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.overall_code, Code::Ok as i32);
    assert_eq!(second.statuses[0].code, Code::OverLimit as i32);
}

#[test]
fn an_unusable_upstream_variable_stops_start_up_with_its_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_ratelimiter"))
        .env("REDIS_URL", "/var/run/nutcracker/ratelimit.sock")
        .env("RATELIMITER_CONFIG", temp_dir("upstream-env-bad"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("REDIS_SOCKET_TYPE=unix"), "{stderr}");
}
