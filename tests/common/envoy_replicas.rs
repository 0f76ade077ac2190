//! Service replicas behind one real Envoy (both filters, ext_authz then the rate-limit
//! filter, each failing closed), in a cluster Envoy health-checks over gRPC health every
//! 200 ms, with a steady load of clients through Envoy: the rolling update and the chaos test
//! that kills a replica share it. Needs Envoy and redis-server (`make setup`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::envoy::{Envoy, LOCAL, client_from};
use super::redis::{RedisServer, wall_us};
use super::{Service, config_dir};

/// A call that never reached a replica (its connection refused, or its stream refused before
/// the replica saw it) is tried again on another replica; a call the replica may have run is
/// not (it may have been charged).
pub const RETRY_REFUSED: &str = ", retry_policy: { retry_on: \"connect-failure,refused-stream\", \
     num_retries: 2, retry_host_predicate: [ { name: envoy.retry_host_predicates.previous_hosts, \
     typed_config: { \"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } } ], \
     host_selection_retry_max_attempts: 3 }";

/// Generous bounds for a busy machine; none of them decides a pass by timing.
const WITHIN: Duration = Duration::from_secs(30);

/// Every request through the rate-limit filter too; never the binding limit.
pub const EDGE_YAML: &str = "domain: edge\ndescriptors:\n  - key: generic_key\n    value: global\n    rate_limit: { unit: hour, requests_per_unit: 100000000 }\n";

/// The replicas' configuration directory `name`: one client key `key` (its tier named the
/// same) with `quota` requests a week, failing closed, and the edge domain.
pub fn replicas_config(name: &str, key: &str, quota: usize) -> PathBuf {
    let service = format!(
        "settings: {{ default_domain: ratelimiter, on_store_failure: fail_closed }}\n\
         clients:\n  unknown_key: reject\n  tiers:\n\
         \x20   {key}: [ {{ name: {key}, algorithm: token_bucket, limit: {quota}, window: 7d }} ]\n\
         \x20 keys:\n    - {{ key: {key}, tier: {key} }}\n"
    );
    config_dir(
        name,
        &[("service.yaml", &service), ("edge.yaml", EDGE_YAML)],
    )
}

/// ext_authz, then the rate-limit filter, then the upstream; the `ratelimiter` cluster has
/// one endpoint per port (the old and the new replicas), health-checked over gRPC health,
/// with panic routing off so an unhealthy endpoint never gets a call.
pub fn envoy_config(replica_ports: &[u16], upstream: u16) -> String {
    envoy_config_retrying(replica_ports, upstream, "")
}

/// The same, with `retry` (YAML flow fields, e.g. [`RETRY_REFUSED`]) added to both filters'
/// `grpc_service`.
pub fn envoy_config_retrying(replica_ports: &[u16], upstream: u16, retry: &str) -> String {
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
                      grpc_service: {{ envoy_grpc: {{ cluster_name: ratelimiter }}, timeout: 10s{retry} }}
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
                        grpc_service: {{ envoy_grpc: {{ cluster_name: ratelimiter }}{retry} }}
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
        thresholds: [ {{ max_requests: 10000, max_pending_requests: 10000, max_retries: 10000 }} ]
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

/// A replica on gRPC port `grpc`, sharing `redis`, with `extra` arguments (the rolling update
/// gives the chart's shutdown settings).
pub fn replica(config: &Path, redis: &RedisServer, grpc: u16, extra: &[&str]) -> Service {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ratelimiter"));
    cmd.arg("--config")
        .arg(config)
        .args(["--http-addr", "127.0.0.1:0"])
        .arg(format!("--grpc-addr=127.0.0.1:{grpc}"))
        .args(["--redis-url", &redis.url(), "--redis-timeout-ms", "2000"])
        .args(extra)
        .env("RATELIMITER_LOG", "info");
    Service::spawn_as_is(cmd)
}

/// Whether Envoy's health check has the `ratelimiter` endpoint on `port` healthy.
pub async fn healthy(envoy: &Envoy, port: u16) -> bool {
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

pub async fn wait_health(envoy: &Envoy, port: u16, want: bool) {
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

/// One client request through Envoy: its status (0 for a transport error) and when it was
/// sent and answered (µs since the epoch).
#[derive(Clone, Copy, Debug)]
pub struct Answer {
    pub status: u16,
    pub sent_us: u64,
    pub received_us: u64,
}

/// Status codes and how many answers had each.
pub type Tally = BTreeMap<u16, usize>;

/// The tally of `answers`.
pub fn tally(answers: &[Answer]) -> Tally {
    let mut tally = Tally::new();
    for a in answers {
        *tally.entry(a.status).or_default() += 1;
    }
    tally
}

/// `clients` clients, each sending `GET /` with `key` every 10 ms until stopped (at most
/// 10,000 requests each, one at a time: at most `clients` in flight); `rejected` counts the
/// 429s as they come.
pub fn steady_load(
    url: String,
    key: &'static str,
    clients: usize,
    stop: Arc<AtomicBool>,
    rejected: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Vec<Answer>>> {
    (0..clients)
        .map(|_| {
            let (url, stop, rejected) = (url.clone(), stop.clone(), rejected.clone());
            tokio::spawn(async move {
                let client = client_from(LOCAL);
                let mut answers = Vec::new();
                for _ in 0..10_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let sent_us = wall_us();
                    let status = match client.get(&url).header("x-api-key", key).send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    answers.push(Answer {
                        status,
                        sent_us,
                        received_us: wall_us(),
                    });
                    if status == 429 {
                        rejected.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                answers
            })
        })
        .collect()
}

/// Stops a [`steady_load`] and gathers every answer.
pub async fn finish(
    stop: &AtomicBool,
    load: Vec<tokio::task::JoinHandle<Vec<Answer>>>,
) -> Vec<Answer> {
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in load {
        all.extend(t.await.unwrap());
    }
    all
}
