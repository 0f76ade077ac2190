//! The over-limit cache: once Redis has rejected a key until time T, the replica answers that
//! key's rejections itself until T, without a script call to Redis; after T the next request
//! is decided by Redis again and admitted if it fits (no wrong rejection). Checked for every
//! algorithm with `INFO commandstats` of the real `redis-server`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::redis::{Kind, RedisServer, Reply, check, http_client, wall_us};
use common::{Service, config_dir};

/// Timing matters here (a rejection must be cached and reused within half a second): one
/// test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CONFIG: &str = r#"
settings:
  default_domain: ratelimiter
  on_store_failure: fail_closed
clients:
  unknown_key: reject
  tiers:
    tb:
      - { name: tb, algorithm: token_bucket, limit: 2, window: 1s }
    sw:
      - { name: sw, algorithm: sliding_window, limit: 2, window: 1s }
    fw:
      - { name: fw, algorithm: fixed_window, limit: 2, window: 1s }
    costly:
      - { name: costly, algorithm: token_bucket, limit: 4, window: 4s }
  keys:
    - { key: tb, tier: tb }
    - { key: sw, tier: sw }
    - { key: fw, tier: fw }
    - { key: costly, tier: costly }
"#;

fn start(name: &str, redis: &RedisServer) -> Service {
    let dir = config_dir(name, &[("service.yaml", CONFIG)]);
    Service::start(&dir, &["--redis-url", &redis.url()])
}

async fn one(svc: &Service, key: &str, cost: u64) -> Reply {
    let r = check(
        &http_client(Duration::from_secs(5), 1),
        &svc.url(""),
        key,
        cost,
    )
    .await
    .unwrap();
    assert!(
        matches!(r.kind(), Kind::Normal { .. }),
        "{key}: {r:?}\n{}",
        svc.logs()
    );
    r
}

/// Exhausts `key` (limit 2 per 1 s), then checks that rejections until the retry time are
/// answered without a script call, and that the first request after it is admitted.
async fn cached_until_retry_time(key: &str) {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let svc = start(&format!("rcache-{key}"), &redis);

    // Start just after a whole second, so that a fixed window (aligned to epoch seconds) has
    // most of its second left when the quota is spent.
    let into_second = wall_us() % 1_000_000;
    tokio::time::sleep(Duration::from_micros(1_000_000 - into_second + 20_000)).await;
    // Spend the quota until Redis rejects.
    let mut rejected = None;
    for _ in 0..10 {
        let sent = Instant::now();
        let r = one(&svc, key, 1).await;
        if !r.allowed() {
            rejected = Some((sent, r));
            break;
        }
    }
    let (sent, r) = rejected.expect("never rejected");
    let retry = Duration::from_secs_f64(r.retry_after().expect("a retry time"));
    assert!(
        retry > Duration::from_millis(200) && retry <= Duration::from_secs(1),
        "{r:?}"
    );
    // Redis decided at or after `sent`, so T is at least `sent + retry` (less the rounding
    // of retry_after to milliseconds): everything sent before `before_t` is before T.
    let before_t = sent + retry - Duration::from_millis(100);
    let calls = redis.script_calls();
    assert!(calls > 0, "no script call reached Redis at all");
    let mut cached = 0;
    while Instant::now() < before_t && cached < 50 {
        let r = one(&svc, key, 1).await;
        assert_eq!(r.status, 429, "before the retry time: {r:?}");
        assert!(r.retry_after().unwrap() > 0.0, "{r:?}");
        cached += 1;
    }
    let after = redis.script_calls();
    eprintln!("{key}: {cached} rejections before T; script calls {calls} -> {after}");
    assert!(
        cached >= 3,
        "only {cached} requests fitted before T ({retry:?})"
    );
    assert_eq!(
        after,
        calls,
        "{cached} rejections before T made {} script calls to Redis",
        after - calls
    );

    // Once T has passed, the next request is Redis's to decide, and it fits.
    tokio::time::sleep_until((sent + retry + Duration::from_millis(50)).into()).await;
    let r = one(&svc, key, 1).await;
    assert!(r.allowed(), "wrongly rejected after the retry time: {r:?}");
    assert!(
        redis.script_calls() > after,
        "the request after T did not reach Redis"
    );

    // And a whole window later the whole quota is back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let admitted: Vec<bool> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(one(&svc, key, 1).await.allowed());
        }
        v
    };
    assert_eq!(admitted, [true, true], "{key} after a whole window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_bucket_rejections_are_cached_until_the_retry_time() {
    cached_until_retry_time("tb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_window_rejections_are_cached_until_the_retry_time() {
    cached_until_retry_time("sw").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_window_rejections_are_cached_until_the_retry_time() {
    cached_until_retry_time("fw").await;
}

/// A rejection of a large cost says nothing about a smaller one: 4 per 4 s, 3 spent, a
/// second cost-3 request is rejected (retry in about 2 s), and a cost-1 request right after
/// must still be admitted: the one token left is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_rejection_of_a_large_cost_does_not_reject_a_smaller_one() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let svc = start("rcache-cost", &redis);
    let r = one(&svc, "costly", 3).await;
    assert!(r.allowed(), "{r:?}");
    assert_eq!(r.remaining(), Some(1), "{r:?}");
    let r = one(&svc, "costly", 3).await;
    assert!(!r.allowed(), "{r:?}");
    let r = one(&svc, "costly", 1).await;
    assert!(
        r.allowed(),
        "cost 1 with one token left was rejected (a cached cost-3 rejection?): {r:?}"
    );
    assert_eq!(r.remaining(), Some(0), "{r:?}");
}
