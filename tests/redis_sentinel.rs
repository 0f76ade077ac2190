//! Redis Sentinel, against real servers: a primary, a replica (`--replicaof`) and sentinels
//! watching them, each on free loopback ports, and the real binary with
//! `--redis-url redis+sentinel://…/mymaster`.
//!
//! - A storm through the sentinel-named primary admits exactly the quota, and the counters
//!   live on the primary (the replica runs no script).
//! - A failover: the primary is killed, the sentinels promote the replica, and the service
//!   finds the new primary by itself (no restart) and resumes normal decisions; a counter
//!   replicated before the kill carries on where it was.
//! - Over TLS (`rediss+sentinel://`): the primary, the replica and the sentinels speak only
//!   TLS and ask for client certificates; without one the service is not ready and says why,
//!   with `--redis-client-cert-file`/`--redis-client-key-file` the storm and the failover
//!   above hold as they do in plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::redis::{
    RedisSentinel, RedisServer, TestCerts, check, http_client, never_ready,
    says_a_certificate_is_required, storm, wait_ready, wait_until,
};
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
        let sentinel_password = password.filter(|_| sentinels_too);
        Self::assemble(primary, password, sentinel_password)
    }

    /// Every server and sentinel speaking only TLS (replication and the sentinels' links
    /// too), asking clients for a certificate when `client_auth`.
    fn start_tls(certs: &TestCerts, client_auth: bool) -> Group {
        Self::assemble(
            RedisServer::start_tls_with(certs, client_auth, &[]),
            None,
            None,
        )
    }

    /// A replica of `primary` (as it is: password, TLS) and the sentinels.
    fn assemble(
        primary: RedisServer,
        password: Option<&'static str>,
        sentinel_password: Option<&'static str>,
    ) -> Group {
        let replica = RedisServer::start_replica_of(&primary);
        let sentinels: Vec<RedisSentinel> = (0..SENTINELS)
            .map(|_| match sentinel_password {
                Some(pw) => RedisSentinel::start_with_password(MASTER, &primary, QUORUM, pw),
                None => RedisSentinel::start(MASTER, &primary, QUORUM),
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

    /// `redis+sentinel://[:password@]127.0.0.1:S1,127.0.0.1:S2,…/mymaster` (`rediss+sentinel`
    /// over TLS)
    fn url(&self) -> String {
        let addrs: Vec<String> = self.sentinels.iter().map(RedisSentinel::addr).collect();
        let auth = self.password.map_or(String::new(), |pw| format!(":{pw}@"));
        let tls = self.primary.access().tls.is_some();
        let scheme = if tls { "rediss" } else { "redis" };
        format!("{scheme}+sentinel://{auth}{}/{MASTER}", addrs.join(","))
    }
}

fn start_service(name: &str, group: &Group) -> Service {
    start_service_with(name, group, &[])
}

fn start_service_with(name: &str, group: &Group, extra: &[&str]) -> Service {
    let dir = config_dir(name, &[("service.yaml", CONFIG)]);
    let url = group.url();
    let mut args = vec!["--redis-url", &url, "--redis-timeout-ms", TIMEOUT_MS];
    args.extend_from_slice(extra);
    Service::start(&dir, &args)
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
    storm_on_the_primary(&group, &svc).await;
}

/// A storm admits exactly the quota, on the primary the sentinels name, never the replica.
async fn storm_on_the_primary(group: &Group, svc: &Service) {
    let admitted = storm(svc, "storm", 400, 64).await;
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
    fail_over_and_carry_on(&mut group, &svc).await;
}

/// Half of `carried`'s quota, the primary killed, the replica promoted: the service finds it
/// by itself, and `carried` goes on where it was.
async fn fail_over_and_carry_on(group: &mut Group, svc: &Service) {
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
    let promoted = wait_named_primary(group, new);
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
    planned_failover_moves_at_once(&group, &svc).await;
}

/// `SENTINEL FAILOVER`: decisions move to the new primary within [`MOVED_WITHIN`] of the
/// sentinels naming it, and none runs on the old one after.
async fn planned_failover_moves_at_once(group: &Group, svc: &Service) {
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
    let named = wait_named_primary(group, new.port());

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

/// Over TLS, every server and sentinel asking for client certificates: without one the
/// service is not ready and says why; with one, the storm and the failover above hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tls_with_client_certificates_the_storm_and_the_failover_hold() {
    let _serial = SERIAL.lock().await;
    let certs = TestCerts::generate();
    let mut group = Group::start_tls(&certs, true);
    assert!(group.url().starts_with("rediss+sentinel://"));
    let ca_only = certs.service_flags(false);
    let ca_only: Vec<&str> = ca_only.iter().map(String::as_str).collect();
    let without = start_service_with("sentinel-tls-no-cert", &group, &ca_only);
    never_ready(&without, Duration::from_secs(7)).await;
    says_a_certificate_is_required(&without);
    drop(without);

    let args = certs.service_flags(true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let svc = start_service_with("sentinel-tls", &group, &args);
    wait_ready(&svc, Duration::from_secs(30)).await;
    storm_on_the_primary(&group, &svc).await;
    fail_over_and_carry_on(&mut group, &svc).await;
}

/// Over TLS (the sentinels asked every 500 ms over TLS too): a planned failover moves the
/// decisions at once, as in plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tls_after_a_planned_failover_the_service_leaves_the_old_primary_at_once() {
    let _serial = SERIAL.lock().await;
    let certs = TestCerts::generate();
    let group = Group::start_tls(&certs, false);
    let ca = certs.ca();
    let svc = start_service_with(
        "sentinel-tls-planned",
        &group,
        &["--redis-ca-file", ca.to_str().unwrap()],
    );
    wait_ready(&svc, Duration::from_secs(30)).await;
    planned_failover_moves_at_once(&group, &svc).await;
}
