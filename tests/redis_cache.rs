//! The over-limit cache: once Redis has rejected a key until time T, the replica answers that
//! key's rejections itself until T, without a script call to Redis; after T the next request
//! is decided by Redis again and admitted if it fits (no wrong rejection). Checked for every
//! algorithm with `INFO commandstats` of the real `redis-server`.
//!
//! No bound here depends on how fast the machine is: a request counts as "before T" only
//! if its answer came back before T could have passed, and the wait for T is measured from
//! the moment the rejection's answer came back (Redis decided before that). Requests go
//! one at a time, so the script calls Redis ran between two `INFO`s are that request's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::redis::{Kind, RedisServer, Reply, check, http_client, wall_us};
use common::{Service, config_dir};

/// One test at a time: each counts every script call its Redis runs.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CONFIG: &str = r#"
settings:
  default_domain: ratelimiter
  on_store_failure: fail_closed
clients:
  unknown_key: reject
  tiers:
    tb:
      - { name: tb, algorithm: token_bucket, limit: 2, window: 2s }
    sw:
      - { name: sw, algorithm: sliding_window, limit: 2, window: 2s }
    fw:
      - { name: fw, algorithm: fixed_window, limit: 2, window: 2s }
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

/// The window of `tb`, `sw` and `fw`.
const WINDOW: Duration = Duration::from_secs(2);
/// `retry_after` is given in whole milliseconds: T may be this much later than it says.
const ROUNDING: Duration = Duration::from_millis(1);

/// Exhausts `key` (limit 2 per 2 s), then checks that rejections until the retry time are
/// answered without a script call, and that the first request after it is admitted.
async fn cached_until_retry_time(key: &str) {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let svc = start(&format!("rcache-{key}"), &redis);

    // Start just after a window boundary, so that a fixed window (aligned to multiples of
    // its length since the epoch) has most of its length left when the quota is spent.
    let window_us = u64::try_from(WINDOW.as_micros()).unwrap();
    let into_window = wall_us() % window_us;
    tokio::time::sleep(Duration::from_micros(window_us - into_window + 20_000)).await;
    // Spend the quota until Redis rejects.
    let mut rejected = None;
    for _ in 0..10 {
        let sent = Instant::now();
        let r = one(&svc, key, 1).await;
        if !r.allowed() {
            rejected = Some((sent, Instant::now(), r));
            break;
        }
    }
    let (sent, received, r) = rejected.expect("never rejected");
    let retry = Duration::from_secs_f64(r.retry_after().expect("a retry time"));
    assert!(retry > Duration::ZERO && retry <= WINDOW, "{r:?}");
    // The replica decided (and Redis ran the script) after `sent`, so neither the cache nor
    // Redis can let the key through before `sent + retry` (less the rounding).
    let surely_before_t = sent + retry - ROUNDING;
    assert!(
        redis.script_calls() > 0,
        "no script call reached Redis at all"
    );
    let mut cached = 0;
    loop {
        let calls = redis.script_calls();
        let r = one(&svc, key, 1).await;
        if Instant::now() >= surely_before_t || cached == 50 {
            break;
        }
        // This answer came back before T: it must be the cache's.
        assert_eq!(r.status, 429, "before the retry time: {r:?}");
        assert!(r.retry_after().unwrap() > 0.0, "{r:?}");
        assert_eq!(
            redis.script_calls(),
            calls,
            "a rejection before T ({cached} answered by the cache so far) called Redis"
        );
        cached += 1;
    }
    eprintln!("{key}: {cached} rejections answered before T without Redis");
    assert!(cached >= 1, "no request fitted before T ({retry:?})");

    // Redis decided before `received`: once `received + retry` has passed, so has T, and the
    // next request is Redis's to decide, and it fits.
    tokio::time::sleep_until((received + retry + ROUNDING).into()).await;
    let calls = redis.script_calls();
    let r = one(&svc, key, 1).await;
    assert!(r.allowed(), "wrongly rejected after the retry time: {r:?}");
    assert!(
        redis.script_calls() > calls,
        "the request after T did not reach Redis"
    );

    // And a whole window later the whole quota is back.
    tokio::time::sleep(WINDOW + ROUNDING).await;
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
