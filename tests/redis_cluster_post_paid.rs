//! Post-paid charges on a plan across Redis Cluster slots, through the store itself.
//!
//! A plan is reserved slot by slot in ascending tag order; when a slot rejects, the slots
//! before it are refunded and the slots after it are never asked for admission. A post-paid
//! check is usage that already happened, so wherever it stands it is recorded (even in a slot
//! after the rejecting one) and never refunded (even in a slot before it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::redis::RedisCluster;
use ratelimiter::algorithm::{Algorithm, Quota};
use ratelimiter::store::{Check, CounterKey, Plan, RedisOptions, RedisStore, Store};

const HOUR: u64 = 3_600_000_000;
/// Tags sorting low and high: the low one's slot is reserved first.
const LOW: u128 = 0x0000_1111_2222_3333_4444_5555_6666_7777;
const HIGH: u128 = 0xffff_1111_2222_3333_4444_5555_6666_7777;

fn check(tag: u128, limit: u64, cost: u64, post_paid: bool) -> Check {
    Check {
        key: CounterKey { tag, limit: 1 },
        algorithm: Algorithm::FixedWindow,
        quota: Quota::new(limit, HOUR),
        cost,
        enforce: true,
        post_paid,
        verdict: None,
    }
}

async fn apply(store: &RedisStore, checks: Vec<Check>) -> Plan {
    let mut batch = [Plan {
        checks,
        admitted: false,
    }];
    store.apply(&mut batch).await.unwrap();
    let [plan] = batch;
    plan
}

/// What a counter of limit 100 holds, read with a check-only plan (refunds run in the
/// background: waits until it reads `expected`, for a generous bound).
async fn holds(store: &RedisStore, tag: u128, expected: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let plan = apply(store, vec![check(tag, 100, 0, false)]).await;
        let count = 100 - plan.checks[0].verdict.unwrap().remaining;
        if count == expected || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn store_on(cluster: &RedisCluster) -> RedisStore {
    let store = RedisStore::new(RedisOptions {
        url: cluster.url(),
        timeout: Duration::from_secs(2),
        pool_size: 4,
        ..RedisOptions::default()
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.warm_up().await.is_err() {
        assert!(Instant::now() < deadline, "store never warmed up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_paid_checks_are_recorded_in_every_slot_and_never_refunded() {
    let cluster = RedisCluster::start(3);
    let store = store_on(&cluster).await;
    let gate = LOW + 1; // low slot, limit 1: full after one request
    assert!(apply(&store, vec![check(gate, 1, 1, false)]).await.admitted);

    // The low slot rejects: the high slot is never asked for admission, but its report of 7
    // is recorded.
    let plan = apply(
        &store,
        vec![check(gate, 1, 1, false), check(HIGH, 100, 7, true)],
    )
    .await;
    assert!(!plan.admitted);
    assert_eq!(
        holds(&store, HIGH, 7).await,
        7,
        "the report after the rejecting slot"
    );

    // The high slot rejects: the low slot's pre-paid 2 is refunded, its report of 5 is not.
    let wall = HIGH + 1; // high slot, limit 1, full
    assert!(apply(&store, vec![check(wall, 1, 1, false)]).await.admitted);
    let plan = apply(
        &store,
        vec![
            check(LOW, 100, 5, true),
            check(LOW + 2, 100, 2, false),
            check(wall, 1, 1, false),
        ],
    )
    .await;
    assert!(!plan.admitted);
    assert_eq!(
        holds(&store, LOW + 2, 0).await,
        0,
        "the pre-paid 2 refunded"
    );
    assert_eq!(
        holds(&store, LOW, 5).await,
        5,
        "the report before the rejecting slot"
    );
}
