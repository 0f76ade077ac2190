//! Redis Sentinel, against real servers: a primary, a replica (`--replicaof`) and sentinels
//! watching them, each on free loopback ports, and the real binary with
//! `--redis-url redis+sentinel://…/mymaster`.
//!
//! - A storm through the sentinel-named primary admits exactly the quota, and the counters
//!   live on the primary (the replica runs no script).
//! - A failover: the primary is killed, the sentinels promote the replica, and the service
//!   finds the new primary by itself (no restart) and resumes normal decisions; a counter
//!   replicated before the kill carries on where it was.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::redis::{RedisSentinel, RedisServer, check, http_client, storm, wait_until};
use common::{Service, config_dir};

/// The tests here time a failover: one at a time, so that a busy machine does not slow the
/// sentinels' own timers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MASTER: &str = "mymaster";
/// Sentinels watching the primary, and how many must agree that it is down.
const SENTINELS: usize = 3;
const QUORUM: usize = 2;
/// Generous: these tests check exactness and recovery, not latency.
const TIMEOUT_MS: &str = "1000";
/// How long the sentinels get to promote the replica once the primary is killed (down after
/// 1 s, then an election and the promotion).
const PROMOTED_WITHIN: Duration = Duration::from_secs(20);
/// How long the service gets to decide normally again once the replica is promoted.
const RESUMED_WITHIN: Duration = Duration::from_secs(15);
/// How long the service may go on deciding on an old primary that is still up once the
/// sentinels name the new one (it asks them every 500 ms). The sentinels demote the old
/// primary only some 10 s later.
const MOVED_WITHIN: Duration = Duration::from_secs(3);

/// fail_closed, so that any store failure is a 503 (a test failure), never a silent "allow".
const CONFIG: &str = r#"
settings:
  default_domain: ratelimiter
  on_store_failure: fail_closed
clients:
  unknown_key: reject
  tiers:
    hundred:
      - { name: per-day, algorithm: token_bucket, limit: 100, window: 1d }
    ten:
      - { name: per-day, algorithm: token_bucket, limit: 10, window: 1d }
  keys:
    - { key: storm, tier: hundred }
    - { key: probe, tier: hundred }
    - { key: carried, tier: ten }
"#;

/// A primary, its replica and the sentinels, once every sentinel knows the replica and the
/// other sentinels (a failover needs both).
struct Group {
    primary: RedisServer,
    replica: RedisServer,
    sentinels: Vec<RedisSentinel>,
    /// The password in the URL, if any.
    password: Option<&'static str>,
}

impl Group {
    fn start() -> Group {
        Self::start_with(None, false)
    }

    /// With `password` on the primary and the replica, and on the sentinels too when
    /// `sentinels_too`.
    fn start_with(password: Option<&'static str>, sentinels_too: bool) -> Group {
        let primary = match password {
            None => RedisServer::start(),
            Some(pw) => RedisServer::start_with_password(pw, &[]),
        };
        let replica = RedisServer::start_replica_of(&primary);
        let sentinels: Vec<RedisSentinel> = (0..SENTINELS)
            .map(|_| match password {
                Some(pw) if sentinels_too => {
                    RedisSentinel::start_with_password(MASTER, &primary, QUORUM, pw)
                }
                _ => RedisSentinel::start(MASTER, &primary, QUORUM),
            })
            .collect();
        let took = wait_until(
            "every sentinel knows the replica and the other sentinels",
            Duration::from_secs(20),
            || {
                sentinels
                    .iter()
                    .all(|s| s.knows(MASTER) == (1, SENTINELS - 1))
            },
        );
        eprintln!("sentinels settled in {took:?}");
        for s in &sentinels {
            assert_eq!(s.primary_port(MASTER), Some(primary.port()));
        }
        Group {
            primary,
            replica,
            sentinels,
            password,
        }
    }

    /// `redis+sentinel://[:password@]127.0.0.1:S1,127.0.0.1:S2,…/mymaster`
    fn url(&self) -> String {
        let addrs: Vec<String> = self.sentinels.iter().map(RedisSentinel::addr).collect();
        let auth = self.password.map_or(String::new(), |pw| format!(":{pw}@"));
        format!("redis+sentinel://{auth}{}/{MASTER}", addrs.join(","))
    }
}

fn start_service(name: &str, group: &Group) -> Service {
    let dir = config_dir(name, &[("service.yaml", CONFIG)]);
    Service::start(
        &dir,
        &[
            "--redis-url",
            &group.url(),
            "--redis-timeout-ms",
            TIMEOUT_MS,
        ],
    )
}

/// Waits (within [`PROMOTED_WITHIN`], blocking this worker thread in place) until every
/// sentinel names the server on `port` as the primary; how long that took.
fn wait_named_primary(group: &Group, port: u16) -> Duration {
    tokio::task::block_in_place(|| {
        wait_until(
            "the sentinels name the replica as the primary",
            PROMOTED_WITHIN,
            || {
                group
                    .sentinels
                    .iter()
                    .all(|s| s.primary_port(MASTER) == Some(port))
            },
        )
    })
}

/// 8 requests for `carried` once the failover is over; how many were admitted. Panics unless
/// each is a normal decision.
async fn carried_after_failover(client: &reqwest::Client, base: &str) -> usize {
    let mut admitted = 0;
    for _ in 0..8 {
        let r = check(client, base, "carried", 1).await.unwrap();
        match r.kind() {
            common::redis::Kind::Normal { allowed } => admitted += usize::from(allowed),
            other => panic!("not a normal decision after the failover: {other:?}"),
        }
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_through_the_sentinels_admits_exactly_the_quota_on_the_primary() {
    let _serial = SERIAL.lock().await;
    let group = Group::start();
    let svc = start_service("sentinel-storm", &group);

    let admitted = storm(&svc, "storm", 400, 64).await;
    assert_eq!(admitted, 100, "the quota is 100\n{}", svc.logs());

    // The service talked to the primary the sentinels named, never to the replica.
    assert!(
        !group.primary.keys("rl:*").is_empty(),
        "no counter on the primary"
    );
    assert!(group.primary.script_calls() > 0);
    assert_eq!(group.replica.script_calls(), 0, "the replica ran a script");
    // The counter reached the replica by replication.
    group.primary.wait_for_replicas(1, Duration::from_secs(5));
    assert_eq!(group.replica.keys("rl:*"), group.primary.keys("rl:*"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_failover_the_service_finds_the_promoted_replica_without_a_restart() {
    let _serial = SERIAL.lock().await;
    let mut group = Group::start();
    let svc = start_service("sentinel-failover", &group);
    let client = http_client(Duration::from_secs(10), 1);
    let base = svc.url("");

    // Half of `carried`'s quota, before the failover.
    for i in 0..5 {
        let r = check(&client, &base, "carried", 1).await.unwrap();
        assert_eq!(
            r.kind(),
            common::redis::Kind::Normal { allowed: true },
            "request {i}: {r:?}"
        );
    }
    // Every write has reached the replica: the failover may lose nothing.
    assert_eq!(
        group.primary.wait_for_replicas(1, Duration::from_secs(5)),
        1
    );

    let old = group.primary.port();
    let new = group.replica.port();
    group.primary.kill();
    let killed = Instant::now();
    let promoted = wait_named_primary(&group, new);
    assert_eq!(group.replica.role(), "master");
    eprintln!("failover {old} -> {new}: promoted {promoted:?} after the kill");

    // The service finds the new primary by itself.
    let mut last;
    let resumed = loop {
        match check(&client, &base, "probe", 1).await {
            Ok(r) if r.is_normal() => break killed.elapsed(),
            other => last = other,
        }
        assert!(
            killed.elapsed() < promoted + RESUMED_WITHIN,
            "no normal decision {RESUMED_WITHIN:?} after the promotion; last: {last:?}\n{}",
            svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("normal decisions {resumed:?} after the kill");
    assert!(
        group.replica.script_calls() > 0,
        "the new primary ran no script"
    );

    // `carried` goes on from 5 used: exactly 5 more are admitted.
    let admitted = carried_after_failover(&client, &base).await;
    assert_eq!(admitted, 5, "the counter did not survive the failover");
}

/// A planned failover (`SENTINEL FAILOVER`): the old primary stays up, still a primary that
/// takes writes until the sentinels demote it (some 10 s later), and its demotion then
/// discards what it took meanwhile. The service must leave it as soon as the sentinels name
/// the new primary, not when the old one is demoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_planned_failover_the_service_leaves_the_old_primary_at_once() {
    let _serial = SERIAL.lock().await;
    let group = Group::start();
    let svc = start_service("sentinel-planned", &group);
    let client = http_client(Duration::from_secs(10), 1);
    let base = svc.url("");
    for _ in 0..5 {
        let r = check(&client, &base, "carried", 1).await.unwrap();
        assert_eq!(r.kind(), common::redis::Kind::Normal { allowed: true });
    }
    assert_eq!(
        group.primary.wait_for_replicas(1, Duration::from_secs(5)),
        1
    );

    let (old, new) = (&group.primary, &group.replica);
    let started = Instant::now();
    let () = group.sentinels[0].cmd(redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER));
    let named = wait_named_primary(&group, new.port());

    // Decisions move to the new primary within a few polls of the sentinels, well before
    // the old primary is demoted.
    let mut last;
    let moved = loop {
        match check(&client, &base, "probe", 1).await {
            Ok(r) if r.is_normal() && new.script_calls() > 0 => break started.elapsed(),
            other => last = other,
        }
        assert!(
            started.elapsed() < named + MOVED_WITHIN,
            "decisions not on the new primary {MOVED_WITHIN:?} after the sentinels named it \
             (old primary: {}); last: {last:?}\n{}",
            old.role(),
            svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "planned failover: named after {named:?}, decisions moved after {moved:?}, old primary \
         now a {}",
        old.role()
    );

    // Every decision is the new primary's: `carried` goes on from 5 used.
    let before = old.script_calls();
    let admitted = carried_after_failover(&client, &base).await;
    assert_eq!(admitted, 5, "the counter did not carry over");
    assert_eq!(
        old.script_calls(),
        before,
        "a script ran on the old primary"
    );
}

/// The URL's password is the primary's (and the replica's, once promoted): it reaches the
/// primary the sentinels name, whether the sentinels are open or require the same password.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_urls_password_reaches_the_primary_whether_or_not_the_sentinels_require_it() {
    let _serial = SERIAL.lock().await;
    for sentinels_too in [false, true] {
        let group = Group::start_with(Some("Sentinel0Secret"), sentinels_too);
        let svc = start_service("sentinel-password", &group);
        let admitted = storm(&svc, "storm", 150, 16).await;
        assert_eq!(
            admitted,
            100,
            "sentinels require the password: {sentinels_too}\n{}",
            svc.logs()
        );
        assert!(!group.primary.keys("rl:*").is_empty());
        assert!(
            !svc.logs().contains("Sentinel0Secret"),
            "the password was logged"
        );
    }
}
