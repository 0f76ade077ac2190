//! Replica storms against a real Redis: K = 3 separate processes of the real binary share one
//! `redis-server` (or a 3-master Redis Cluster), thousands of concurrent requests for one key
//! are spread round-robin over them, and exactly the quota is admitted: with cost 1, with cost
//! 3, with two limits on the key (all-or-nothing), over HTTP and gRPC mixed, and across fixed
//! window boundaries. Counter keys in Redis never contain the raw API key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis::{RedisCluster, RedisServer, check, http_client, wall_us};
use common::{Service, all_logs, config_dir, warm_grpc_channels};
use ratelimiter::api::grpc::pb::AllowRequestRequest;
use ratelimiter::api::grpc::pb::rate_limiter_client::RateLimiterClient;
use tokio::sync::Semaphore;

/// Replicas (separate processes) sharing one Redis.
const REPLICAS: usize = 3;
/// Requests per storm, and how many are in flight at once at the most (over all replicas).
const REQUESTS: usize = 1800;
const IN_FLIGHT: usize = 384;
/// The storms check exactness, not latency: a generous per-call timeout keeps a busy 2-core
/// machine from turning slow calls into 503s (the failure tests use the 50 ms default).
const STORM_TIMEOUT_MS: &str = "2000";

/// Every key on windows so long that nothing refills during a test; fail_closed so that any
/// store failure shows up as a 503 (a test failure) instead of being hidden.
const CONFIG: &str = r#"
settings:
  default_domain: ratelimiter
  on_store_failure: fail_closed
  max_cost: 1000
clients:
  unknown_key: reject
  tiers:
    big:
      - { name: per-day, algorithm: token_bucket, limit: 1000, window: 1d }
    two:
      - { name: tight, algorithm: token_bucket, limit: 200, window: 1d }
      - { name: loose, algorithm: token_bucket, limit: 1000, window: 1d }
    fixed:
      - { name: fixed, algorithm: fixed_window, limit: 100, window: 2s }
  keys:
    - { key: big, tier: big }
    - { key: cost, tier: big }
    - { key: mixed, tier: big }
    - { key: two, tier: two }
    - { key: fixed, tier: fixed }
    - { key: Secret-Api-Key-0123456789, tier: big }
"#;

/// The same key `two` with only its looser limit: same name, algorithm and window, so the
/// same counter. A replica started on it reads what the storm left of that counter.
const LOOSE_ONLY: &str = r#"
settings:
  default_domain: ratelimiter
  on_store_failure: fail_closed
clients:
  unknown_key: reject
  tiers:
    loose:
      - { name: loose, algorithm: token_bucket, limit: 1000, window: 1d }
  keys:
    - { key: two, tier: loose }
"#;

fn start_replicas(name: &str, url: &str, n: usize) -> Vec<Service> {
    let dir = config_dir(name, &[("service.yaml", CONFIG)]);
    common::redis::start_replicas(&dir, url, STORM_TIMEOUT_MS, n)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Door {
    Http,
    Grpc,
}

/// Sends `REQUESTS` concurrent requests for `key` with `cost`, request `i` to replica
/// `i % K` through `door(i)`. Returns how many were admitted; panics, with every replica's
/// log, if any answer is not a normal decision (200/429, or gRPC OK without `degraded`).
async fn storm(
    services: &[Service],
    key: &'static str,
    cost: u64,
    door: impl Fn(usize) -> Door,
) -> usize {
    let http = http_client(Duration::from_secs(30), IN_FLIGHT);
    let channels = warm_grpc_channels(services).await;
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let at = i % services.len();
        let gate = gate.clone();
        match door(i) {
            Door::Http => {
                let (client, base) = (http.clone(), services[at].url(""));
                tasks.push(tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await.unwrap();
                    let reply = check(&client, &base, key, cost).await?;
                    match reply.kind() {
                        common::redis::Kind::Normal { allowed } => Ok(allowed),
                        other => Err(format!("replica {at}, HTTP: {other:?}")),
                    }
                }));
            }
            Door::Grpc => {
                let mut client = RateLimiterClient::new(channels[at].clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await.unwrap();
                    match client
                        .allow_request(AllowRequestRequest {
                            api_key: key.into(),
                            descriptors: vec![],
                            cost: Some(cost),
                            report: false,
                        })
                        .await
                    {
                        Ok(r) if r.get_ref().degraded.is_empty() => Ok(r.get_ref().allowed),
                        Ok(r) => Err(format!("replica {at}, gRPC: degraded {:?}", r.get_ref())),
                        Err(s) => Err(format!("replica {at}, gRPC: {s}")),
                    }
                }));
            }
        }
    }
    let (mut admitted, mut failures) = (0, Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            Ok(allowed) => admitted += usize::from(allowed),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {REQUESTS} answers were not normal decisions; the first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        all_logs(services)
    );
    admitted
}

/// One fresh `POST /check` through `svc`.
async fn one(svc: &Service, key: &str, cost: u64) -> common::redis::Reply {
    check(
        &http_client(Duration::from_secs(10), 1),
        &svc.url(""),
        key,
        cost,
    )
    .await
    .unwrap()
}

/// Every counter key in `keys` is named by hashes only: the prefix, a hash tag of 32 hex
/// digits, and 16 more hex digits (`rl:{<32 hex>}:<16 hex>`), never a raw API key.
fn assert_hashed(keys: &[String], prefix: &str, raw: &[&str]) {
    assert!(!keys.is_empty(), "no keys in Redis: was Redis used at all?");
    for k in keys {
        for r in raw {
            assert!(
                !k.to_lowercase().contains(&r.to_lowercase()),
                "the key {k:?} contains the raw API key {r:?}"
            );
        }
        assert!(k.starts_with(prefix), "{k:?} lacks the prefix {prefix:?}");
    }
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let shaped = keys.iter().any(|k| {
        k.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('{'))
            .and_then(|r| r.split_once("}:"))
            .is_some_and(|(tag, limit)| hex(tag, 32) && hex(limit, 16))
    });
    assert!(
        shaped,
        "no key has the documented shape {prefix}{{<32 hex>}}:<16 hex>: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_admit_exactly_the_quota() {
    let redis = RedisServer::start();
    let services = start_replicas("rstorm-base", &redis.url(), REPLICAS);
    let admitted = storm(&services, "big", 1, |_| Door::Http).await;
    assert_eq!(admitted, 1000, "admitted of {REQUESTS}, limit 1000");
    for svc in &services {
        let r = one(svc, "big", 1).await;
        assert_eq!(r.status, 429, "after the storm: {r:?}");
    }
    assert_hashed(&redis.keys("*"), "rl:", &["big"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_with_cost_three_admit_whole_requests_only() {
    let redis = RedisServer::start();
    let services = start_replicas("rstorm-cost", &redis.url(), REPLICAS);
    let admitted = storm(&services, "cost", 3, |_| Door::Http).await;
    // 1000 units, 3 per request: 333 requests fit and one unit stays unused.
    assert_eq!(
        admitted, 333,
        "admitted of {REQUESTS} at cost 3, limit 1000"
    );
    // A replica that has rejected nothing itself reads the Redis-side truth: one unit left.
    let fresh = start_replicas("rstorm-cost-fresh", &redis.url(), 1);
    let r = one(&fresh[0], "cost", 1).await;
    assert_eq!(r.status, 200, "the one unit left is still there: {r:?}");
    assert_eq!(r.remaining(), Some(0), "{r:?}");
    let r = one(&fresh[0], "cost", 1).await;
    assert_eq!(r.status, 429, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_limits_are_all_or_nothing_across_replicas() {
    let redis = RedisServer::start();
    let services = start_replicas("rstorm-two", &redis.url(), REPLICAS);
    let admitted = storm(&services, "two", 1, |_| Door::Http).await;
    assert_eq!(admitted, 200, "admitted of {REQUESTS}, tight limit 200");
    // The loose limit (1000) must have been charged for the 200 admitted requests only,
    // never for the 1600 rejected ones. A replica configured with the loose limit alone
    // reads that counter: 1000 - 200 - this request.
    let dir = config_dir("rstorm-two-loose", &[("service.yaml", LOOSE_ONLY)]);
    let loose = Service::start(&dir, &["--redis-url", &redis.url()]);
    let r = one(&loose, "two", 1).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", loose.logs());
    assert_eq!(r.body["policy"], "loose", "{r:?}");
    assert_eq!(
        r.remaining(),
        Some(1000 - 200 - 1),
        "the loose limit was charged for rejected requests: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_and_grpc_mixed_admit_exactly_the_quota() {
    let redis = RedisServer::start();
    let services = start_replicas("rstorm-mixed", &redis.url(), REPLICAS);
    // Request i goes to replica i % 3; doors alternate per round, so every replica gets both.
    let admitted = storm(&services, "mixed", 1, |i| {
        if (i / REPLICAS).is_multiple_of(2) {
            Door::Http
        } else {
            Door::Grpc
        }
    })
    .await;
    assert_eq!(admitted, 1000, "admitted of {REQUESTS}, limit 1000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixed_window_storm_across_boundaries_never_exceeds_the_contract() {
    const LIMIT: usize = 100;
    const WINDOW_US: u64 = 2_000_000;
    const SPAN: Duration = Duration::from_secs(6);
    let redis = RedisServer::start();
    // The windows below are computed with this machine's clock; Redis reads the same one.
    let skew = redis.time_us().abs_diff(wall_us());
    assert!(
        skew < 100_000,
        "Redis TIME and the wall clock differ by {skew} µs"
    );
    let services = start_replicas("rstorm-fixed", &redis.url(), REPLICAS);
    let client = http_client(Duration::from_secs(30), IN_FLIGHT);

    // REQUESTS paced evenly over SPAN (300 per second: 6 times the limit per window), round
    // robin over the replicas.
    let start = tokio::time::Instant::now();
    let step = SPAN / u32::try_from(REQUESTS).unwrap();
    let mut tasks = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let (client, base) = (client.clone(), services[i % REPLICAS].url(""));
        let at = start + step * u32::try_from(i).unwrap();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            check(&client, &base, "fixed", 1).await
        }));
    }
    let mut replies = Vec::with_capacity(REQUESTS);
    for t in tasks {
        let r = t.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert!(r.is_normal(), "{r:?}\n{}", all_logs(&services));
        replies.push(r);
    }

    // Redis decided each request at some instant between its sending and its answer. An
    // admitted request sent in window `a` or later and answered in window `b` or earlier was
    // therefore counted in one of the windows a..=b; those windows together admit at most
    // LIMIT each. Requests take milliseconds and windows last 2 s, so almost every request
    // falls in one known window, and an over-admission in any window breaks the a == b case.
    let window = |t: u64| t / WINDOW_US;
    let first = replies.iter().map(|r| window(r.sent_us)).min().unwrap();
    let last = replies.iter().map(|r| window(r.received_us)).max().unwrap();
    let admitted: Vec<(u64, u64)> = replies
        .iter()
        .filter(|r| r.allowed())
        .map(|r| (window(r.sent_us), window(r.received_us)))
        .collect();
    for a in first..=last {
        for b in a..=last {
            let inside = admitted.iter().filter(|&&(s, e)| s >= a && e <= b).count();
            let most = LIMIT * usize::try_from(b - a + 1).unwrap();
            assert!(
                inside <= most,
                "windows {a}..={b} (of 2 s) admitted {inside} > {most}; per window: {:?}",
                (first..=last)
                    .map(|w| admitted.iter().filter(|&&(s, e)| s == w && e == w).count())
                    .collect::<Vec<_>>()
            );
        }
    }
    // No under-admission either: every window that lies entirely inside the span in which
    // requests were sent saw far more than LIMIT requests, so it admitted LIMIT.
    let first_sent = replies.iter().map(|r| r.sent_us).min().unwrap();
    let last_sent = replies.iter().map(|r| r.sent_us).max().unwrap();
    let full = (first..=last)
        .filter(|w| w * WINDOW_US >= first_sent && (w + 1) * WINDOW_US <= last_sent)
        .count();
    assert!(full >= 1, "the storm covered no whole window");
    assert!(
        admitted.len() >= LIMIT * full,
        "{} admitted, but {full} whole windows should have admitted {LIMIT} each",
        admitted.len()
    );
    eprintln!(
        "fixed window storm: {} admitted over windows {first}..={last} ({full} whole)",
        admitted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_a_redis_cluster_admit_exactly_the_quota() {
    let cluster = RedisCluster::start(3);
    let services = start_replicas("rstorm-cluster", &cluster.url(), REPLICAS);
    let admitted = storm(&services, "big", 1, |_| Door::Http).await;
    assert_eq!(admitted, 1000, "admitted of {REQUESTS}, limit 1000");
    for svc in &services {
        let r = one(svc, "big", 1).await;
        assert_eq!(r.status, 429, "after the storm: {r:?}");
    }
    assert_hashed(&cluster.keys("*"), "rl:", &["big"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counter_keys_are_hashed_prefixed_and_expire() {
    const RAW: &str = "Secret-Api-Key-0123456789";
    let redis = RedisServer::start();
    let dir = config_dir("rstorm-keys", &[("service.yaml", CONFIG)]);
    let svc = Service::start(&dir, &["--redis-url", &redis.url()]);
    for key in [RAW, "big", "two", "fixed"] {
        let r = one(&svc, key, 1).await;
        assert_eq!(r.status, 200, "{key}: {r:?}\n{}", svc.logs());
    }
    let keys = redis.keys("*");
    assert_hashed(&keys, "rl:", &[RAW, "Secret", "0123456789"]);
    // No immortal keys: every counter expires once its state no longer matters.
    for k in &keys {
        // -1: no expiry; -2: the key expired between KEYS and PTTL, which is fine.
        let ttl: i64 = redis.cmd(redis::cmd("PTTL").arg(k));
        assert_ne!(ttl, -1, "{k:?} has no expiry: it never goes away");
    }

    // A configured prefix replaces `rl:`.
    drop(svc);
    redis.flushall();
    let svc = Service::start(
        &dir,
        &["--redis-url", &redis.url(), "--redis-prefix", "tenant-a:"],
    );
    let r = one(&svc, RAW, 1).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", svc.logs());
    assert_hashed(
        &redis.keys("*"),
        "tenant-a:",
        &[RAW, "Secret", "0123456789"],
    );
}
