//! Cold start (issue 7, point 2): three fresh replicas on a fresh Redis, started at once,
//! each driven by 64 concurrent `AllowRequest` streams as soon as its gRPC health says
//! SERVING. Every answer must be a decision by Redis (no `UNAVAILABLE`, nothing degraded),
//! a key limited to 1,000 per hour must admit exactly 1,000 across the replicas, and Redis
//! must never have answered `NOSCRIPT` (the decide script was loaded before readiness).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{Service, config_dir};
use ratelimiter::api::grpc::pb::AllowRequestRequest;
use ratelimiter::api::grpc::pb::rate_limiter_client::RateLimiterClient;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const CONFIG: &str = r#"
settings:
  default_domain: ratelimiter
  on_store_failure: fail_closed
clients:
  unknown_key: reject
  tiers:
    limited:
      - { name: per-hour, algorithm: token_bucket, limit: 1000, window: 1h }
    load:
      - { name: load, algorithm: token_bucket, limit: 100000000, window: 1d }
  keys:
    - { key: limited, tier: limited }
    - { key: load, tier: load }
"#;

/// `--redis-timeout-ms`: see the docs paragraph on why not the default 50 in this test.
const TIMEOUT_MS: &str = "1000";
const REPLICAS: usize = 3;
const STREAMS: usize = 64;
/// How long each replica is driven once it says ready.
const DRIVE_FOR: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Tally {
    decisions: AtomicUsize,
    limited_admitted: AtomicUsize,
    errors: AtomicUsize,
    first_error: std::sync::Mutex<Option<String>>,
    /// When each error came, after its replica was driven.
    error_at: std::sync::Mutex<Vec<Duration>>,
}

impl Tally {
    fn error(&self, what: String, at: Duration) {
        self.error_at.lock().unwrap().push(at);
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().unwrap().get_or_insert(what);
    }
}

/// Polls gRPC health until the whole server says SERVING; how long that took.
async fn until_serving(channel: &Channel, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status);
        if status
            .as_ref()
            .is_ok_and(|s| *s == ServingStatus::Serving as i32)
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "not SERVING within {within:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One stream: `AllowRequest` after `AllowRequest` for `key` until `until`.
async fn stream(channel: Channel, key: &'static str, until: Instant, tally: Arc<Tally>) {
    let mut client = RateLimiterClient::new(channel);
    let began = Instant::now();
    while Instant::now() < until {
        let r = client
            .allow_request(AllowRequestRequest {
                api_key: key.into(),
                descriptors: vec![],
                cost: None,
                report: false,
            })
            .await;
        match r {
            Ok(r) if r.get_ref().degraded.is_empty() => {
                tally.decisions.fetch_add(1, Ordering::Relaxed);
                if key == "limited" && r.get_ref().allowed {
                    tally.limited_admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(r) => tally.error(
                format!("degraded answer: {:?}", r.get_ref()),
                began.elapsed(),
            ),
            Err(s) => tally.error(format!("{s:?}"), began.elapsed()),
        }
    }
}

/// Waits for `svc` to say ready, then drives it with [`STREAMS`] streams for [`DRIVE_FOR`].
async fn drive_once_ready(grpc_url: String, tally: Arc<Tally>) -> Duration {
    let channel = tonic::transport::Endpoint::from_shared(grpc_url)
        .unwrap()
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();
    let warm = until_serving(&channel, Duration::from_secs(20)).await;
    let until = Instant::now() + DRIVE_FOR;
    let streams: Vec<_> = (0..STREAMS)
        .map(|i| {
            let key = if i % 2 == 0 { "limited" } else { "load" };
            tokio::spawn(stream(channel.clone(), key, until, tally.clone()))
        })
        .collect();
    for s in streams {
        s.await.unwrap();
    }
    warm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_replicas_driven_as_soon_as_ready_decide_everything_exactly() {
    let redis = RedisServer::start();
    let dir = config_dir("redis-cold-start", &[("service.yaml", CONFIG)]);
    let url = redis.url();
    // Started at once: each process is launched from its own thread.
    let replicas: Vec<Service> = std::thread::scope(|scope| {
        let starting: Vec<_> = (0..REPLICAS)
            .map(|_| {
                scope.spawn(|| {
                    let args = ["--redis-url", &url, "--redis-timeout-ms", TIMEOUT_MS];
                    Service::start(&dir, &args)
                })
            })
            .collect();
        starting.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let tally = Arc::new(Tally::default());
    let drives: Vec<_> = replicas
        .iter()
        .map(|svc| tokio::spawn(drive_once_ready(svc.grpc_url(), tally.clone())))
        .collect();
    let mut waited = Vec::new();
    for d in drives {
        waited.push(d.await.unwrap());
    }
    let decisions = tally.decisions.load(Ordering::Relaxed);
    let errors = tally.errors.load(Ordering::Relaxed);
    println!(
        "{REPLICAS} cold replicas x {STREAMS} streams: ready after {waited:?}; \
         {decisions} decisions, {errors} errors (at {:?} after driving began), \
         {} NOSCRIPT",
        tally.error_at.lock().unwrap(),
        redis.error_count("NOSCRIPT")
    );
    let logs = replicas.iter().map(Service::logs).collect::<Vec<_>>();
    assert_eq!(
        errors,
        0,
        "first error: {:?}\n{}",
        tally.first_error.lock().unwrap(),
        logs.join("\n")
    );
    assert_eq!(
        tally.limited_admitted.load(Ordering::Relaxed),
        1000,
        "admitted on the 1,000/hour key"
    );
    assert_eq!(redis.error_count("NOSCRIPT"), 0, "NOSCRIPT replies");
}

/// `SCRIPT EXISTS` of the decide script on `node`.
fn decide_script_loaded(node: &RedisServer) -> bool {
    let sha = ratelimiter::store::redis::script::decide_script().get_hash();
    let exists: Vec<bool> = node.cmd(redis::cmd("SCRIPT").arg("EXISTS").arg(sha));
    exists == [true]
}

/// Before any request, a replica that says ready has loaded the decide script on every
/// master of a Cluster (a decision on any slot finds it there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_replica_has_loaded_the_script_on_every_cluster_master() {
    let cluster = common::redis::RedisCluster::start(3);
    let dir = config_dir("redis-cold-cluster", &[("service.yaml", CONFIG)]);
    let url = cluster.url();
    let svc = Service::start(&dir, &["--redis-url", &url]);
    common::redis::wait_ready(&svc, Duration::from_secs(20)).await;
    for (i, node) in cluster.nodes().iter().enumerate() {
        assert!(decide_script_loaded(node), "master {i}: no decide script");
    }
}

/// The same for a single server: ready means the script is there, before any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_replica_has_loaded_the_script_on_its_redis() {
    let redis = RedisServer::start();
    let dir = config_dir("redis-cold-single", &[("service.yaml", CONFIG)]);
    let url = redis.url();
    let svc = Service::start(&dir, &["--redis-url", &url]);
    common::redis::wait_ready(&svc, Duration::from_secs(20)).await;
    assert!(decide_script_loaded(&redis), "no decide script");
}

/// Redis down at start-up does not stop a replica: it starts, answers by its failure policy
/// at once, is not ready while it waits for Redis and then ready anyway (`fail_open`:
/// degraded), and once Redis comes up its workers connect by themselves, loading the script
/// first: decisions are normal again and Redis never answers `NOSCRIPT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_while_redis_is_down_answers_then_warms_up_when_it_comes() {
    let mut redis = RedisServer::start();
    redis.kill();
    let config = CONFIG.replace("fail_closed", "fail_open");
    let dir = config_dir("redis-cold-down", &[("service.yaml", &config)]);
    let url = redis.url();
    let svc = Service::start(&dir, &["--redis-url", &url]);
    let client = common::redis::http_client(Duration::from_secs(5), 1);
    let r = common::redis::check(&client, &svc.url(""), "load", 1)
        .await
        .unwrap();
    assert_eq!(r.kind(), common::redis::Kind::FailOpen, "{r:?}");
    assert_eq!(
        common::redis::readyz(&client, &svc.url("")).await,
        Ok(503),
        "ready at once although the store could not warm up"
    );
    common::redis::wait_ready(&svc, Duration::from_secs(20)).await;

    redis.restart();
    let started = Instant::now();
    loop {
        let r = common::redis::check(&client, &svc.url(""), "load", 1)
            .await
            .unwrap();
        if r.is_normal() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no normal decision 10 s after Redis came up: {r:?}\n{}",
            svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(redis.error_count("NOSCRIPT"), 0, "NOSCRIPT replies");
    assert!(decide_script_loaded(&redis), "no decide script");
}

/// A replica only some of whose batch workers hold a connection (Redis refuses the others:
/// `maxclients`) decides every request with those that do. A worker without a connection
/// leaves the plans to them, rather than taking plans it cannot send and answering them by
/// the failure policy while Redis could decide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_cannot_connect_leave_the_decisions_to_those_that_did() {
    let redis = RedisServer::start();
    let () = redis.cmd(redis::cmd("CONFIG").arg("SET").arg("maxclients").arg(2));
    let dir = config_dir("redis-cold-partial", &[("service.yaml", CONFIG)]);
    let url = redis.url();
    let args = ["--redis-url", &url, "--redis-timeout-ms", TIMEOUT_MS];
    let svc = Service::start(&dir, &[&args[..], &["--redis-pool-size", "4"]].concat());
    common::redis::wait_normal(&svc, "load", Duration::from_secs(20)).await;
    // Two workers hold the two connections Redis allows; the other two keep trying.
    let admitted = common::redis::storm(&svc, "load", 400, 64).await;
    assert_eq!(admitted, 400, "{}", svc.logs());
}
