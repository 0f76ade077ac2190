//! Redis memory per counter, for each algorithm's key layout, measured with `MEMORY USAGE`
//! against a real redis-server. The figures quoted in docs/tradeoffs.md come from
//! `cargo test --test redis_memory -- --nocapture`; the assertions bound them so a change of
//! layout that bloats a key fails here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::redis::RedisServer;
use common::{Service, config_dir};

const CONFIG: &str = r#"
clients:
  tiers:
    gcra: [ { name: gcra, algorithm: token_bucket, limit: 1000, window: 1h } ]
    fixed: [ { name: fixed, algorithm: fixed_window, limit: 1000, window: 1h } ]
    sliding: [ { name: sliding, algorithm: sliding_window, limit: 500, window: 1h } ]
  keys:
    - { key: key-gcra, tier: gcra }
    - { key: key-fixed, tier: fixed }
    - { key: key-sliding, tier: sliding }
"#;

async fn hit(svc: &Service, key: &str, times: usize) {
    let client = reqwest::Client::new();
    for _ in 0..times {
        let r = client
            .post(svc.url("/check"))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// The one key the service wrote since the last call, and its `MEMORY USAGE`.
fn usage(redis: &RedisServer, seen: &mut Vec<String>) -> (String, u64) {
    let keys = redis.keys("rl:*");
    let new: Vec<String> = keys.into_iter().filter(|k| !seen.contains(k)).collect();
    assert_eq!(new.len(), 1, "{new:?}");
    let key = new[0].clone();
    let bytes: u64 = redis.cmd(
        redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0),
    );
    seen.push(key.clone());
    (key, bytes)
}

#[tokio::test]
async fn memory_per_counter_key() {
    let redis = RedisServer::start();
    let dir = config_dir("redis-memory", &[("service.yaml", CONFIG)]);
    let svc = Service::start(&dir, &["--redis-url", &redis.url()]);
    let mut seen = Vec::new();

    hit(&svc, "key-gcra", 10).await;
    let (_, gcra) = usage(&redis, &mut seen);
    hit(&svc, "key-fixed", 10).await;
    let (_, fixed) = usage(&redis, &mut seen);
    hit(&svc, "key-sliding", 1).await;
    let (sliding_key, sliding_1) = usage(&redis, &mut seen);
    hit(&svc, "key-sliding", 99).await;
    let sliding_100: u64 = redis.cmd(
        redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&sliding_key)
            .arg("SAMPLES")
            .arg(0),
    );

    println!(
        "MEMORY USAGE per counter key (redis-server {}):",
        redis
            .info("server")
            .lines()
            .find(|l| l.starts_with("redis_version"))
            .unwrap_or("?")
    );
    println!("  token_bucket (GCRA)          {gcra:>6} bytes");
    println!("  fixed_window                 {fixed:>6} bytes");
    println!("  sliding_window, 1 entry      {sliding_1:>6} bytes");
    println!("  sliding_window, 100 entries  {sliding_100:>6} bytes");

    // One small string per counter for GCRA and the fixed window, whatever the limit.
    assert!(gcra <= 160, "GCRA key takes {gcra} bytes");
    assert!(fixed <= 160, "fixed-window key takes {fixed} bytes");
    // The sliding log grows with the admitted requests in the window (at most `limit`
    // entries), 26 bytes each.
    assert!(sliding_100 > sliding_1);
    assert!(
        sliding_100 <= sliding_1 + 100 * 32,
        "{sliding_100} bytes for 100 entries"
    );
}
