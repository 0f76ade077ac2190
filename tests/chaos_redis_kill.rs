//! Redis SIGKILLed under load and restarted (issue 13, point 2), counted: what a restart
//! keeps of the counters. `tests/redis_failures.rs::redis_killed_and_restarted_*` already
//! prove the answers (SIGKILL under four concurrent clients, every answer the policy's and in
//! time, normal again after the restart); these tests prove what the counters lose, for each
//! failure policy, against the real binary and a real `redis-server`.
//!
//! **What may be lost, and what is asserted:**
//! - With an append-only file (as the Helm chart's bundled Redis runs: `--appendonly yes`,
//!   fsync every second), a killed *process* loses nothing Redis acknowledged: Redis writes
//!   each command to the file (the kernel's page cache) before it replies, so the restarted
//!   Redis replays every acknowledged decision. With `known` the requests Redis admitted and
//!   answered and `degraded` those the policy answered (a decision that timed out may or may
//!   not have run), the counter after the restart is `known <= charged <= known + degraded`.
//!   A crash of the machine (not tested here) can lose the last second of writes.
//! - Without persistence the restarted Redis is empty: every counter is forgotten and each
//!   quota starts afresh — an over-admission of up to one whole quota per key. The counter
//!   after the restart holds exactly what was decided since: `known_since <= charged <=
//!   known_since + degraded_since`, well below all that was admitted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::redis::{
    Kind, Load, Policy, RedisServer, Reply, check, http_client, wait_normal, wait_ready, wall_us,
};
use common::{Service, config_dir};

/// The tests here are about timing under failure: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The loaded key's quota: never reached within a test, and over 30 days it refills less
/// than one token during one (so `remaining` reads exactly what Redis charged).
const LIMIT: u64 = 10_000;
/// A generous bound for a busy machine; it decides no pass by timing.
const WITHIN: Duration = Duration::from_secs(20);
/// No answer may take longer than this, whatever Redis does.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

fn config(policy: Policy) -> String {
    format!(
        r#"
settings:
  default_domain: ratelimiter
  on_store_failure: {}
clients:
  unknown_key: reject
  tiers:
    load:
      - {{ name: load, algorithm: token_bucket, limit: {LIMIT}, window: 30d }}
  keys:
    - {{ key: counted, tier: load }}
    - {{ key: probe, tier: load }}
"#,
        policy.name()
    )
}

/// Admitted by Redis, and answered by the policy, among `replies` received after `since`
/// (µs since the epoch; 0 for all); panics on a missing, late or unexpected answer.
fn tally(
    policy: Policy,
    replies: &[Result<Reply, String>],
    since: u64,
    svc: &Service,
) -> (u64, u64) {
    let (mut known, mut degraded) = (0, 0);
    for (i, r) in replies.iter().enumerate() {
        let (r, by_redis) = policy.judge(i, r, ANSWER_WITHIN, svc);
        let counts = u64::from(r.received_us > since);
        if by_redis {
            known += counts;
        } else {
            degraded += counts;
        }
    }
    (known, degraded)
}

async fn killed_and_restarted(policy: Policy, append_only: bool) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let aof = if append_only { "yes" } else { "no" };
    let mut redis = RedisServer::start_with(&["--appendonly", aof]);
    let name = format!("chaos-kill-{}-aof-{aof}", policy.name());
    let dir = config_dir(&name, &[("service.yaml", &config(policy))]);
    let svc = Service::start(
        &dir,
        &["--redis-url", &redis.url(), "--redis-timeout-ms", "200"],
    );
    wait_ready(&svc, WITHIN).await;
    let client = http_client(Duration::from_secs(5), 1);

    let load = Load::start(&svc, "counted", 4);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    tokio::task::block_in_place(|| redis.kill());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Redis has been dead for a second: any decision received from now on was made by the
    // restarted one (one received just after the kill may still be the old one's).
    let restarted = wall_us();
    tokio::task::block_in_place(|| redis.restart());
    wait_normal(&svc, "probe", WITHIN).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let replies = load.finish().await;

    // Persisted, every answer counts; forgotten, only those after the restart.
    let since = if append_only { 0 } else { restarted };
    let (known, degraded) = tally(policy, &replies, since, &svc);
    let (known_before, degraded_in_all) = tally(policy, &replies, 0, &svc);
    let last = check(&client, &svc.url(""), "counted", 1).await.unwrap();
    assert_eq!(last.kind(), Kind::Normal { allowed: true }, "{last:?}");
    let charged = LIMIT - 1 - last.remaining().unwrap();
    eprintln!(
        "{policy:?}, appendonly {aof}: {} requests, {known_before} admitted by Redis in all; \
         counted: {known} admitted, {degraded} answered by the policy; Redis charged \
         {charged} after the restart; {:?}",
        replies.len(),
        started.elapsed()
    );
    assert!(degraded_in_all > 0 && known > 0, "the load was too thin");
    assert!(
        known <= charged && charged <= known + degraded,
        "Redis charged {charged}: outside [{known}, {}] under {policy:?}, appendonly {aof}",
        known + degraded
    );
    if !append_only {
        assert!(
            charged + (known_before - known) / 2 < known_before,
            "the empty Redis still counts what was admitted before the kill: {charged} of \
             {known_before}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_with_an_append_only_file_killed_keeps_every_acknowledged_decision_fail_open() {
    killed_and_restarted(Policy::FailOpen, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_with_an_append_only_file_killed_keeps_every_acknowledged_decision_fail_closed() {
    killed_and_restarted(Policy::FailClosed, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_with_an_append_only_file_killed_keeps_every_acknowledged_decision_local() {
    killed_and_restarted(Policy::Local, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_without_persistence_killed_forgets_every_counter_fail_closed() {
    killed_and_restarted(Policy::FailClosed, false).await;
}
