//! A rolling update without loss, through a real Envoy: two replicas sharing a real Redis
//! behind Envoy's ext_authz and rate-limit filters (both failing closed, so any call that
//! does not get an answer is a failed client request), in a cluster that Envoy health-checks
//! over gRPC health. Under steady load, each replica is replaced the way the Helm chart does
//! it (maxSurge 1, maxUnavailable 0): the new process starts and Envoy sees it healthy; then
//! the old one gets SIGTERM, turns NOT_SERVING, keeps serving for `--shutdown-delay` while
//! Envoy's health check takes it out, drains and exits 0. No client request fails and exactly
//! the quota is admitted across the change.
//!
//! Needs Envoy and redis-server: `make setup`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::envoy::{Envoy, Upstream, client_from};
use common::redis::{RedisServer, free_port};
use common::{Service, config_dir};

/// The key's quota: a token bucket of a week, one token back every 10 minutes (never
/// within the test).
const QUOTA: usize = 1000;
/// Seconds a replica keeps serving after SIGTERM (the chart's `--shutdown-delay`): several
/// of Envoy's health-check intervals below.
const SHUTDOWN_DELAY: &str = "3";
/// Generous bounds for a busy machine; none of them decides a pass by timing.
const WITHIN: Duration = Duration::from_secs(30);

fn service_yaml() -> String {
    format!(
        "settings: {{ default_domain: ratelimiter, on_store_failure: fail_closed }}\n\
         clients:\n  unknown_key: reject\n  tiers:\n\
         \x20   roll: [ {{ name: roll, algorithm: token_bucket, limit: {QUOTA}, window: 7d }} ]\n\
         \x20 keys:\n    - {{ key: roll-key, tier: roll }}\n"
    )
}

/// Every request through the rate-limit filter too; never the binding limit.
const EDGE_YAML: &str = "domain: edge\ndescriptors:\n  - key: generic_key\n    value: global\n    rate_limit: { unit: hour, requests_per_unit: 100000000 }\n";

/// ext_authz, then the rate-limit filter, then the upstream; the `ratelimiter` cluster has
/// one endpoint per port (the old and the new replicas), health-checked over gRPC health,
/// with panic routing off so an unhealthy endpoint never gets a call.
fn envoy_config(replica_ports: &[u16], upstream: u16) -> String {
    let endpoints: String = replica_ports
        .iter()
        .map(|p| {
            format!(
                "              - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }} }}\n"
            )
        })
        .collect();
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
    - name: edge
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: edge
                route_config:
                  virtual_hosts:
                    - name: edge
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          route:
                            cluster: upstream
                            rate_limits:
                              - actions: [ {{ generic_key: {{ descriptor_value: global }} }} ]
                http_filters:
                  - name: envoy.filters.http.ext_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                      transport_api_version: V3
                      grpc_service: {{ envoy_grpc: {{ cluster_name: ratelimiter }}, timeout: 10s }}
                      failure_mode_allow: false
                      status_on_error: {{ code: ServiceUnavailable }}
                      allowed_headers: {{ patterns: [ {{ exact: x-api-key }} ] }}
                  - name: envoy.filters.http.ratelimit
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
                      domain: edge
                      timeout: 10s
                      failure_mode_deny: true
                      enable_x_ratelimit_headers: "OFF"
                      rate_limit_service:
                        transport_api_version: V3
                        grpc_service: {{ envoy_grpc: {{ cluster_name: ratelimiter }} }}
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: ratelimiter
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{ http2_protocol_options: {{}} }}
      circuit_breakers:
        thresholds: [ {{ max_requests: 10000, max_pending_requests: 10000 }} ]
      common_lb_config:
        healthy_panic_threshold: {{ value: 0 }}
      health_checks:
        - timeout: 1s
          interval: 0.2s
          no_traffic_interval: 0.2s
          unhealthy_threshold: 1
          healthy_threshold: 1
          grpc_health_check: {{}}
      load_assignment:
        cluster_name: ratelimiter
        endpoints:
          - lb_endpoints:
{endpoints}    - name: upstream
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: upstream
        endpoints:
          - lb_endpoints:
              - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }}
"#
    )
}

/// A replica on gRPC port `grpc`, sharing `redis`, with the chart's shutdown settings.
fn replica(config: &std::path::Path, redis: &RedisServer, grpc: u16) -> Service {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ratelimiter"));
    cmd.arg("--config")
        .arg(config)
        .args(["--http-addr", "127.0.0.1:0"])
        .arg(format!("--grpc-addr=127.0.0.1:{grpc}"))
        .args(["--redis-url", &redis.url(), "--redis-timeout-ms", "2000"])
        .args(["--shutdown-delay", SHUTDOWN_DELAY, "--drain-timeout", "10"])
        .env("RATELIMITER_LOG", "info");
    Service::spawn_as_is(cmd)
}

/// Whether Envoy's health check has the `ratelimiter` endpoint on `port` healthy.
async fn healthy(envoy: &Envoy, port: u16) -> bool {
    let clusters: serde_json::Value =
        reqwest::get(format!("http://{}/clusters?format=json", envoy.admin))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let cluster = clusters["cluster_statuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ratelimiter")
        .unwrap();
    let host = cluster["host_statuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["address"]["socket_address"]["port_value"] == port)
        .unwrap();
    let status = &host["health_status"];
    status["eds_health_status"] == "HEALTHY" && status.get("failed_active_health_check").is_none()
}

async fn wait_health(envoy: &Envoy, port: u16, want: bool) {
    let start = Instant::now();
    while healthy(envoy, port).await != want {
        assert!(
            start.elapsed() < WITHIN,
            "Envoy never saw :{port} healthy={want}:\n{}",
            envoy.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the load saw: status codes (0 for a transport error) and their count.
type Tally = std::collections::BTreeMap<u16, usize>;

/// `clients` clients, each sending `GET /` with the key every 10 ms until stopped (at most
/// 10,000 requests each); `rejected` counts the 429s as they come.
fn steady_load(
    url: String,
    clients: usize,
    stop: Arc<AtomicBool>,
    rejected: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    (0..clients)
        .map(|_| {
            let (url, stop, rejected) = (url.clone(), stop.clone(), rejected.clone());
            tokio::spawn(async move {
                let client = client_from(common::envoy::LOCAL);
                let mut tally = Tally::new();
                for _ in 0..10_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let status = match client
                        .get(&url)
                        .header("x-api-key", "roll-key")
                        .send()
                        .await
                    {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    *tally.entry(status).or_default() += 1;
                    if status == 429 {
                        rejected.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                tally
            })
        })
        .collect()
}

/// Replaces `old` by a new replica on `new_port`: the new one first, healthy in Envoy's
/// eyes; then SIGTERM to the old one, which must exit 0 after its delay and drain.
async fn replace(
    envoy: &Envoy,
    old: &mut Service,
    old_port: u16,
    config: &std::path::Path,
    redis: &RedisServer,
    new_port: u16,
) -> Service {
    let new = replica(config, redis, new_port);
    wait_health(envoy, new_port, true).await;
    old.signal("TERM");
    wait_health(envoy, old_port, false).await;
    let code = old.wait_exit(WITHIN);
    assert_eq!(code, Some(0), "the old replica's exit:\n{}", old.logs());
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_both_replicas_under_load_loses_no_request_and_admits_exactly_the_quota() {
    let redis = RedisServer::start();
    let config = config_dir(
        "rolling",
        &[("service.yaml", &service_yaml()), ("edge.yaml", EDGE_YAML)],
    );
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let upstream = Upstream::start();
    let mut a = replica(&config, &redis, ports[0]);
    let mut b = replica(&config, &redis, ports[1]);
    let envoy = Envoy::start_config("rolling", &envoy_config(&ports, upstream.port())).await;
    wait_health(&envoy, ports[0], true).await;
    wait_health(&envoy, ports[1], true).await;

    let stop = Arc::new(AtomicBool::new(false));
    let rejected = Arc::new(AtomicUsize::new(0));
    let load = steady_load(envoy.url("/"), 4, stop.clone(), rejected.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let a2 = replace(&envoy, &mut a, ports[0], &config, &redis, ports[2]).await;
    let b2 = replace(&envoy, &mut b, ports[1], &config, &redis, ports[3]).await;
    let rolled_in = started.elapsed();
    // Past the quota (if the roll did not get there), then a little more.
    let start = Instant::now();
    while rejected.load(Ordering::Relaxed) == 0 && start.elapsed() < WITHIN {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::new();
    for t in load {
        for (status, n) in t.await.unwrap() {
            *tally.entry(status).or_default() += n;
        }
    }
    let sent: usize = tally.values().sum();
    eprintln!("rolled both replicas in {rolled_in:?}; {sent} requests: {tally:?}");
    let failed: usize = tally
        .iter()
        .filter(|(s, _)| !matches!(s, 200 | 429))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        failed,
        0,
        "failed requests across the roll: {tally:?}\n{}",
        envoy.logs()
    );
    assert!(
        sent > QUOTA,
        "the load never exhausted the quota: {tally:?}"
    );
    assert_eq!(
        tally.get(&200).copied().unwrap_or(0),
        QUOTA,
        "admitted: {tally:?}"
    );
    assert_eq!(upstream.hits(), QUOTA, "reached the upstream");
    // The new replicas served: both answered Checks after the roll (Envoy spread the load).
    for (name, svc) in [("a2", &a2), ("b2", &b2)] {
        let r = reqwest::get(svc.url("/readyz")).await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
    }
}
