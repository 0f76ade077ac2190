//! Chaos on the network between the service and Redis (issue 13, point 2), through the
//! fault-injecting proxy of `tests/common/chaos_proxy.rs` in front of a real `redis-server`,
//! with the real binary under a steady load of four clients, for each failure policy.
//!
//! One incident after another on the same service: first 600 ms of latency per forwarded
//! chunk (far above `--redis-timeout-ms 200`), healed; then a blackhole (connections kept open,
//! nothing forwarded), healed.
//!
//! **What may be lost, and what is asserted** (docs/tradeoffs.md §4, "What
//! `--redis-timeout-ms` bounds"):
//! - no request goes unanswered or takes longer than [`ANSWER_WITHIN`] (the timeout plus a
//!   generous margin for a shared machine); while a fault is surely in force every answer is
//!   the policy's (`fail_open`: 200 marked degraded, `fail_closed`: 503, `local`: decided
//!   in-process), before it every answer is Redis's;
//! - the blackhole opens the circuit breaker (`ratelimiter_redis_breaker_open` 1) and the heal
//!   closes it again (0);
//! - after each heal, decisions are Redis's again, and the counter Redis kept for the loaded
//!   key is exact up to the requests the policy answered: a decision that timed out after it
//!   was sent may or may not have been charged. So, with `known` the requests Redis admitted
//!   and answered and `degraded` those the policy answered,
//!   `known <= charged <= known + degraded` — never a charge that nobody sent (a stale reply
//!   read as a later call's answer would break the lower bound or the exact `remaining`
//!   countdown after the heal), never an admitted request left uncharged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::chaos_proxy::ChaosProxy;
use common::redis::{
    Kind, Load, Policy, RedisServer, Reply, check, http_client, readyz, until_normal, wall_us,
};
use common::{Service, config_dir, counter, metrics};

/// The tests here are about timing under failure: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The per-call timeout the service runs with.
const TIMEOUT_MS: &str = "200";
/// The latency injected: three times the timeout, per chunk, each way.
const LATENCY: Duration = Duration::from_millis(600);
/// No answer may take longer than this, whatever the network does.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// How long the service gets to decide with Redis again after a heal.
const RECOVER_WITHIN: Duration = Duration::from_secs(10);
/// How long each fault stays in force.
const FAULT_FOR: Duration = Duration::from_millis(2000);
/// The loaded key's quota: never reached within a test, and over 30 days it refills less
/// than one token during one (so `remaining` reads exactly what Redis charged).
const LIMIT: u64 = 10_000;

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

/// `ratelimiter_redis_breaker_open` until it reads `want`, within `within`; whether it did.
async fn breaker_becomes(svc: &Service, want: u64, within: Duration) -> bool {
    let client = http_client(Duration::from_secs(5), 1);
    let started = Instant::now();
    while started.elapsed() < within {
        let text = metrics(&client, &svc.url("/metrics")).await;
        if counter(&text, "ratelimiter_redis_breaker_open") == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A span of wall-clock time (µs since the epoch) during which a fault was surely in force.
#[derive(Clone, Copy, Debug)]
struct Window {
    from: u64,
    to: u64,
}

impl Window {
    fn holds(self, r: &Reply) -> bool {
        r.sent_us > self.from && r.received_us < self.to
    }
}

/// Injects one fault (`start` turns it on) for [`FAULT_FOR`], heals, waits for Redis's
/// decisions to come back; the window in which the fault was surely in force.
async fn incident(svc: &Service, proxy: &ChaosProxy, blackhole: bool) -> Window {
    let from = wall_us();
    if blackhole {
        proxy.blackhole();
        assert!(
            breaker_becomes(svc, 1, FAULT_FOR).await,
            "the breaker did not open during a blackhole\n{}",
            svc.logs()
        );
    } else {
        proxy.set_delay(LATENCY);
    }
    tokio::time::sleep(FAULT_FOR.saturating_sub(Duration::from_micros(wall_us() - from))).await;
    let to = wall_us();
    proxy.heal();
    assert!(
        until_normal(svc, "probe", RECOVER_WITHIN).await.is_some(),
        "no decision by Redis within {RECOVER_WITHIN:?} of the heal\n{}",
        svc.logs()
    );
    if blackhole {
        assert!(
            breaker_becomes(svc, 0, RECOVER_WITHIN).await,
            "the breaker stayed open after the heal\n{}",
            svc.logs()
        );
    }
    Window { from, to }
}

/// Counts of a load's answers, each checked against the phase it fell in.
#[derive(Debug, Default)]
struct Tally {
    /// Admitted by Redis and answered so.
    known: u64,
    /// Answered by the failure policy (timed out, or failed fast by the breaker).
    degraded: u64,
    /// Inside each fault's window, answered by the policy.
    in_latency: u64,
    in_blackhole: u64,
}

fn tally(
    policy: Policy,
    replies: &[Result<Reply, String>],
    faults: [Window; 2],
    svc: &Service,
) -> Tally {
    let mut t = Tally::default();
    let before = faults[0].from;
    for (i, r) in replies.iter().enumerate() {
        let (r, by_redis) = policy.judge(i, r, ANSWER_WITHIN, svc);
        let kind = r.kind();
        if r.received_us < before {
            assert_eq!(
                kind,
                Kind::Normal { allowed: true },
                "before any fault, request {i}"
            );
        }
        for (w, n) in faults.iter().zip([&mut t.in_latency, &mut t.in_blackhole]) {
            if w.holds(r) {
                assert!(
                    policy.answered(&kind),
                    "during a fault, request {i} under {policy:?}: {r:?}"
                );
                *n += 1;
            }
        }
        if by_redis {
            t.known += 1;
        } else {
            t.degraded += 1;
        }
    }
    t
}

async fn latency_then_blackhole(policy: Policy) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let redis = RedisServer::start();
    let proxy = ChaosProxy::start(redis.port()).await;
    let dir = config_dir(
        &format!("chaos-net-{}", policy.name()),
        &[("service.yaml", &config(policy))],
    );
    let svc = Service::start(
        &dir,
        &[
            "--redis-url",
            &proxy.url(),
            "--redis-timeout-ms",
            TIMEOUT_MS,
        ],
    );
    assert!(
        until_normal(&svc, "probe", RECOVER_WITHIN).await.is_some(),
        "{}",
        svc.logs()
    );
    let client = http_client(Duration::from_secs(5), 1);
    while readyz(&client, &svc.url("")).await != Ok(200) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never ready\n{}",
            svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let load = Load::start(&svc, "counted", 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let latency = incident(&svc, &proxy, false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let blackhole = incident(&svc, &proxy, true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let replies = load.finish().await;
    let t = tally(policy, &replies, [latency, blackhole], &svc);

    // What Redis counted for the loaded key: one more request reads it.
    let last = check(&client, &svc.url(""), "counted", 1).await.unwrap();
    assert_eq!(last.kind(), Kind::Normal { allowed: true }, "{last:?}");
    let charged = LIMIT - 1 - last.remaining().unwrap();
    eprintln!(
        "{policy:?}: {} requests, {} admitted by Redis, {} answered by the policy ({} in the \
         latency window, {} in the blackhole); Redis charged {charged}; {} chunks proxied; {:?}",
        replies.len(),
        t.known,
        t.degraded,
        t.in_latency,
        t.in_blackhole,
        proxy.chunks(),
        started.elapsed()
    );
    assert!(
        t.in_latency > 0 && t.in_blackhole > 0,
        "the load was too thin: {t:?}"
    );
    assert!(
        t.known <= charged && charged <= t.known + t.degraded,
        "Redis charged {charged}: outside [{}, {}] under {policy:?}",
        t.known,
        t.known + t.degraded
    );
    // And it counts exactly again: the next requests count down one by one.
    for i in 1..=5 {
        let r = check(&client, &svc.url(""), "counted", 1).await.unwrap();
        assert_eq!(r.remaining(), Some(last.remaining().unwrap() - i), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latency_and_blackhole_fail_open() {
    latency_then_blackhole(Policy::FailOpen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latency_and_blackhole_fail_closed() {
    latency_then_blackhole(Policy::FailClosed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latency_and_blackhole_local() {
    latency_then_blackhole(Policy::Local).await;
}
