//! Redis Cluster over TLS (`rediss+cluster://`), against a real 3-master cluster whose nodes
//! speak only TLS (`port 0`, `tls-port`, `tls-cluster yes`, `tls-replication yes`), created
//! with `redis-cli --tls --cluster create`, with a throwaway CA made by `openssl`, and the real
//! binary:
//!
//! - with the CA trusted (`--redis-ca-file`), concurrent storms on keys spread over the
//!   cluster's slots admit exactly each key's quota, and the counters land on every master;
//! - the certificates are really checked: with the system's CAs alone, or over plain TCP
//!   (`redis+cluster://` to the TLS ports), no decision is made;
//! - with `tls-auth-clients yes` on every node, the service without a client certificate is
//!   not ready and its log says why, and with `--redis-client-cert-file` and
//!   `--redis-client-key-file` it decides.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::redis::{
    Kind, RedisCluster, TestCerts, check, http_client, never_ready, says_a_certificate_is_required,
    storm, wait_ready,
};
use common::{Service, config_dir};

/// Generous: these tests check TLS, not latency. Opening a Cluster connection is a TLS
/// handshake with every node and `CLUSTER SLOTS`; under the whole suite's load on 2 cores it
/// once took over 1 s (the pool's creation limit follows this one).
const TIMEOUT_MS: &str = "5000";
/// How long a service gets to warm up (its warm-up gives up after 5 s).
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Keys, each with its own quota; their counters' hash tags spread them over the slots.
const KEYS: [&str; 12] = [
    "k01", "k02", "k03", "k04", "k05", "k06", "k07", "k08", "k09", "k10", "k11", "k12",
];
const QUOTA: usize = 20;

/// fail_closed, so that a connection that fails shows as a 503, never as a silent "allow".
fn config(name: &str) -> std::path::PathBuf {
    let keys: String = KEYS
        .iter()
        .map(|k| format!("    - {{ key: {k}, tier: twenty }}\n"))
        .collect();
    let yaml = format!(
        "settings:\n  default_domain: ratelimiter\n  on_store_failure: fail_closed\n\
         clients:\n  unknown_key: reject\n  tiers:\n    twenty:\n      \
         - {{ name: per-day, algorithm: token_bucket, limit: {QUOTA}, window: 1d }}\n  \
         keys:\n{keys}"
    );
    config_dir(name, &[("service.yaml", &yaml)])
}

fn start(name: &str, url: &str, extra: &[&str]) -> Service {
    let mut args = vec!["--redis-url", url, "--redis-timeout-ms", TIMEOUT_MS];
    args.extend_from_slice(extra);
    Service::start(&config(name), &args)
}

fn path(p: std::path::PathBuf) -> String {
    p.to_str().unwrap().to_owned()
}

/// Once the service is ready, twice each key's quota for every key, key after key (each
/// storm concurrent); panics unless each key admitted exactly its quota.
async fn storm_every_key(svc: &Service) {
    wait_ready(svc, READY_WITHIN).await;
    for key in KEYS {
        let admitted = storm(svc, key, 2 * QUOTA, 8).await;
        assert_eq!(
            admitted,
            QUOTA,
            "{key}: the quota is {QUOTA}\n{}",
            svc.logs()
        );
    }
}

/// How many of the cluster's nodes hold counters.
fn nodes_with_counters(cluster: &RedisCluster) -> usize {
    cluster
        .nodes()
        .iter()
        .filter(|n| !n.keys("rl:*").is_empty())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_cluster_with_the_ca_trusted_decides_exactly_on_every_slot() {
    let certs = TestCerts::generate();
    let cluster = RedisCluster::start_tls(3, &certs, false);
    assert!(cluster.url().starts_with("rediss+cluster://"));
    let svc = start(
        "tls-cluster",
        &cluster.url(),
        &["--redis-ca-file", &path(certs.ca())],
    );
    storm_every_key(&svc).await;
    assert_eq!(
        nodes_with_counters(&cluster),
        3,
        "the keys' counters should be spread over every master"
    );
    assert!(cluster.script_calls() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_cluster_gets_no_decision_from_an_untrusted_or_plain_client() {
    let certs = TestCerts::generate();
    let cluster = RedisCluster::start_tls(3, &certs, false);
    let client = http_client(Duration::from_secs(10), 1);
    let plain = cluster
        .url()
        .replace("rediss+cluster://", "redis+cluster://");
    for (name, url) in [
        // The system's CAs do not know the throwaway CA.
        ("tls-cluster-untrusted", cluster.url()),
        ("tls-cluster-plain", plain),
    ] {
        let svc = start(name, &url, &[]);
        for _ in 0..3 {
            let r = check(&client, &svc.url(""), KEYS[0], 1).await.unwrap();
            assert_eq!(r.kind(), Kind::FailClosed, "{url}: {r:?}\n{}", svc.logs());
        }
    }
    assert!(cluster.keys("rl:*").is_empty(), "a counter was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_asking_for_client_certificates_gets_one() {
    let certs = TestCerts::generate();
    let cluster = RedisCluster::start_tls(3, &certs, true);
    let ca_only = certs.service_flags(false);
    let ca_only: Vec<&str> = ca_only.iter().map(String::as_str).collect();
    let without = start("tls-cluster-no-cert", &cluster.url(), &ca_only);
    never_ready(&without, Duration::from_secs(7)).await;
    let client = http_client(Duration::from_secs(10), 1);
    let r = check(&client, &without.url(""), KEYS[0], 1).await.unwrap();
    assert_eq!(r.kind(), Kind::FailClosed, "{r:?}");
    says_a_certificate_is_required(&without);
    drop(without);

    let args = certs.service_flags(true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let with = start("tls-cluster-cert", &cluster.url(), &args);
    storm_every_key(&with).await;
    assert_eq!(nodes_with_counters(&cluster), 3);
}
