//! Redis restarted under idle replicas (issue 7, point 1): every connection a batch worker
//! held is dead afterwards, and none of that may reach a client. Three `fail_closed`
//! replicas share one `redis-server`; it is killed and started again on the same port (empty:
//! no data, no scripts); a few seconds later one `POST /check` at each replica must be
//! decided by Redis (200 or 429), never answered 503 by the failure policy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::redis::{RedisServer, check, http_client, start_replicas};
use common::{Service, config_dir};

const CONFIG: &str = r#"
settings:
  default_domain: ratelimiter
  on_store_failure: fail_closed
clients:
  unknown_key: reject
  tiers:
    t:
      - { name: per-day, algorithm: token_bucket, limit: 1000, window: 1d }
  keys:
    - { key: k, tier: t }
"#;

/// Polls `POST /check` until Redis decides one (the replica's workers hold connections by
/// then); panics with the log after `within`.
async fn until_decided(svc: &Service, within: Duration) {
    let client = http_client(Duration::from_secs(5), 1);
    let started = Instant::now();
    loop {
        if let Ok(r) = check(&client, &svc.url(""), "k", 1).await
            && r.is_normal()
        {
            return;
        }
        assert!(
            started.elapsed() < within,
            "no decision by Redis within {within:?}\n{}",
            svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_the_first_request_at_each_idle_replica_is_decided() {
    let mut redis = RedisServer::start();
    let dir = config_dir("redis-restart", &[("service.yaml", CONFIG)]);
    // The default time limit: what an operator runs with.
    let replicas = start_replicas(&dir, &redis.url(), "50", 3);
    for svc in &replicas {
        until_decided(svc, Duration::from_secs(10)).await;
    }

    // Shut down and started again on the same port; the replicas are idle meanwhile and
    // for a few seconds after, as in a maintenance restart.
    redis.restart();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let client = http_client(Duration::from_secs(5), 1);
    for (i, svc) in replicas.iter().enumerate() {
        let r = check(&client, &svc.url(""), "k", 1).await.unwrap();
        assert!(
            r.is_normal(),
            "replica {i}: the first request after the restart got {r:?}\n{}",
            svc.logs()
        );
    }
}
