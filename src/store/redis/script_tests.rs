//! Tests of the Lua scripts against a real `redis-server` (one per test, on a free port).
//!
//! The main property: any sequence of plans (mixed algorithms, shadow checks, post-paid checks
//! recorded whatever the verdict, costs of 0 and above the limit, config reloads that change a
//! counter's quota or algorithm) gets the same verdicts from `decide.lua` with an injected
//! clock as from the Rust algorithms driven the way `MemoryStore` drives them, debt included;
//! a plan that is not admitted writes nothing but its post-paid checks; every key holds
//! exactly the state the Rust side would hold, and expires at the millisecond its state becomes
//! empty, rounded up.
//!
//! The injected clock runs 30 days ahead of the machine's, so Redis itself expires no key
//! during a test. Instead each step first deletes what Redis would have expired by the injected
//! clock (a key is gone once the current millisecond is past its `PEXPIRETIME`), and the model
//! applies the same rule. (The memory store forgets a counter at `expires_at` to the
//! microsecond, Redis up to a millisecond later; the state is empty by then either way, unless
//! a config reload changed the quota within that millisecond.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fmt::Display;

use ::redis::aio::MultiplexedConnection;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::*;
use crate::algorithm::{CounterState, Quota, USAGE_MAX};
use crate::store::plan;

const PREFIX: &str = "rl:";
const DAY: u64 = 86_400_000_000;

// ---------------------------------------------------------------------------------------------
// A redis-server of our own: the integration tests' harness, one file for both.

#[path = "../../../tests/common/redis_server.rs"]
mod harness;
pub(super) use harness::{RedisServer, wall_us};

fn fail(e: impl Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// Runs a property with its own runtime, connection and `cases`.
fn run_property<S: Strategy>(
    cases: u32,
    strategy: S,
    test: impl AsyncFn(&mut MultiplexedConnection, S::Value) -> Result<(), TestCaseError>,
) {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let con = rt.block_on(server.connect());
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |value| {
        let mut con = con.clone();
        rt.block_on(async {
            ::redis::cmd("FLUSHALL")
                .query_async::<()>(&mut con)
                .await
                .map_err(fail)?;
            test(&mut con, value).await
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// The model: the Rust algorithms, driven the way MemoryStore::decide drives them.

struct Slot {
    state: CounterState,
    expires_at: Micros,
    /// The quota of the last commit, for reporting only.
    quota: Quota,
}

/// Whether Redis has expired a key whose state empties at `expires_at`, at `now`: its
/// `PEXPIREAT` is `expires_at` rounded up to the ms, and Redis keeps a key during that ms.
fn gone(expires_at: Micros, now: Micros) -> bool {
    now / 1000 > expires_at.div_ceil(1000)
}

#[derive(Default)]
struct Model {
    slots: HashMap<CounterKey, Slot>,
}

impl Model {
    fn live(&self, key: &CounterKey, now: Micros) -> Option<&Slot> {
        self.slots.get(key).filter(|s| !gone(s.expires_at, now))
    }

    /// The plan rule (`store::plan`), with Redis's expiry rule.
    fn decide(&mut self, checks: &mut [Check], now: Micros) -> bool {
        let admitted = plan::check_all(checks, now, |c| self.live(&c.key, now).map(|s| &s.state));
        for check in plan::to_commit(checks, admitted) {
            let slot = self.slots.entry(check.key).or_insert_with(|| Slot {
                state: CounterState::empty(check.algorithm),
                expires_at: 0,
                quota: check.quota,
            });
            let live = !gone(slot.expires_at, now);
            slot.expires_at = plan::commit(&mut slot.state, live, check, now);
            slot.quota = check.quota;
        }
        plan::settle(checks, now, |c| self.slots.get(&c.key).map(|s| &s.state));
        admitted
    }

    fn snapshot(&self) -> HashMap<CounterKey, (CounterState, Micros, Quota)> {
        self.slots
            .iter()
            .map(|(k, s)| (*k, (s.state.clone(), s.expires_at, s.quota)))
            .collect()
    }

    fn restore(&mut self, snap: HashMap<CounterKey, (CounterState, Micros, Quota)>) {
        self.slots = snap
            .into_iter()
            .map(|(k, (state, expires_at, quota))| {
                (
                    k,
                    Slot {
                        state,
                        expires_at,
                        quota,
                    },
                )
            })
            .collect();
    }
}

/// A sliding-window log of `(instant, cost)` entries (base 0) as the scripts store it.
fn sliding_log(entries: &[(Micros, u64)]) -> String {
    let mut total = 0;
    let mut out = "sw2:0000000000000".to_owned();
    for (t, c) in entries {
        total += c;
        out.push_str(&format!("{t:013x}{total:013x}"));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Random plans.

/// The counters every case works on: two limits of one descriptor and one of another.
const KEYS: [CounterKey; 3] = [
    CounterKey {
        tag: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        limit: 1,
    },
    CounterKey {
        tag: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        limit: 2,
    },
    CounterKey {
        tag: 0xfeed_0000_0000_0000_0000_0000_0000_0001,
        limit: 0xffff_ffff_ffff_fff0,
    },
];

#[derive(Clone, Copy, Debug)]
struct Limit {
    algorithm: Algorithm,
    quota: Quota,
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![
        Just(Algorithm::TokenBucket),
        Just(Algorithm::SlidingWindow),
        Just(Algorithm::FixedWindow),
    ]
}

fn limit() -> impl Strategy<Value = Limit> {
    let limit = prop_oneof![
        Just(1u64),
        Just(2),
        Just(3),
        Just(5),
        Just(10),
        Just(100),
        1..50u64
    ];
    let window = prop_oneof![
        Just(1u64),
        Just(7),
        Just(1000),
        Just(1500),
        Just(1_000_000),
        Just(60_000_000),
        Just(3_600_000_000),
        1..5_000_000u64,
    ];
    (algorithm(), limit, window, 0..4u8, 1..200u64).prop_map(
        |(algorithm, limit, window, burst_kind, burst)| {
            let burst = match burst_kind {
                0 | 1 => limit,
                2 => 1,
                _ => burst,
            };
            Limit {
                algorithm,
                quota: Quota {
                    limit,
                    window,
                    burst,
                },
            }
        },
    )
}

/// How far the clock moves before a step.
#[derive(Clone, Copy, Debug)]
enum Gap {
    By(u64),
    /// By one counter's window, -1, +0 or +1 µs: to the instant an entry leaves the window.
    Window(usize, i8),
    /// To the next multiple of 1 ms, 1 s, 1 min or one counter's window (`3 + key`), minus
    /// 1 µs when the flag is set: fixed-window boundaries.
    Boundary(usize, bool),
}

fn gap() -> impl Strategy<Value = Gap> {
    prop_oneof![
        2 => Just(Gap::By(0)),
        3 => (1..=1000u64).prop_map(Gap::By),
        3 => (1..=3_000_000u64).prop_map(Gap::By),
        1 => (1..=400_000_000u64).prop_map(Gap::By),
        2 => (0..KEYS.len(), -1..=1i8).prop_map(|(k, d)| Gap::Window(k, d)),
        2 => (0..3 + KEYS.len(), any::<bool>()).prop_map(|(i, m)| Gap::Boundary(i, m)),
    ]
}

fn advance(case: &Case, now: Micros, gap: Gap) -> Micros {
    let window = |k: usize| case.limits[k].0.quota.window;
    match gap {
        Gap::By(d) => now + d,
        Gap::Window(k, d) => (now + window(k)).saturating_add_signed(d.into()).max(now),
        Gap::Boundary(i, minus_one) => {
            let unit = match i {
                0..3 => [1000, 1_000_000, 60_000_000][i],
                _ => window(i - 3),
            };
            let next = (now / unit + 1) * unit;
            if minus_one && next - 1 > now {
                next - 1
            } else {
                next
            }
        }
    }
}

/// One check of a step: which counter, whether it uses its reloaded limit, cost, enforce,
/// and whether it is post-paid (recorded whatever the verdict: debt).
#[derive(Clone, Copy, Debug)]
struct Pick {
    key: usize,
    reloaded: bool,
    cost: u64,
    enforce: bool,
    post_paid: bool,
}

fn pick() -> impl Strategy<Value = Pick> {
    let cost = prop_oneof![4 => 0..=3u64, 1 => 0..=120u64];
    (
        0..KEYS.len(),
        prop::bool::weighted(0.15),
        cost,
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.25),
    )
        .prop_map(|(key, reloaded, cost, enforce, post_paid)| Pick {
            key,
            reloaded,
            cost,
            enforce,
            post_paid,
        })
}

#[derive(Clone, Debug)]
struct Step {
    gap: Gap,
    picks: Vec<Pick>,
}

fn step() -> impl Strategy<Value = Step> {
    (gap(), prop::collection::vec(pick(), 1..=3)).prop_map(|(gap, mut picks)| {
        // A plan's counters are distinct (the limiter merges checks on one counter).
        let mut seen = [false; KEYS.len()];
        picks.retain(|p| !std::mem::replace(&mut seen[p.key], true));
        Step { gap, picks }
    })
}

#[derive(Clone, Debug)]
struct Case {
    /// Per counter: its limit, and the one a config reload gives it.
    limits: [(Limit, Limit); KEYS.len()],
    /// Microseconds after "30 days from now".
    start: u64,
    steps: Vec<Step>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        [(limit(), limit()), (limit(), limit()), (limit(), limit())],
        0..1_000_000_000u64,
        prop::collection::vec(step(), 1..40),
    )
        .prop_map(|(limits, start, steps)| Case {
            limits,
            start,
            steps,
        })
}

fn checks_of(case: &Case, step: &Step, reloads: bool) -> Vec<Check> {
    step.picks
        .iter()
        .map(|p| {
            let (normal, reloaded) = case.limits[p.key];
            let l = if reloads && p.reloaded {
                reloaded
            } else {
                normal
            };
            Check {
                key: KEYS[p.key],
                algorithm: l.algorithm,
                quota: l.quota,
                cost: p.cost,
                enforce: p.enforce,
                // As the limiter builds them: a cost of 0 is never post-paid.
                post_paid: p.post_paid && p.cost > 0,
                verdict: None,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Redis helpers.

fn key_names() -> Vec<String> {
    KEYS.iter().map(|k| counter_key(PREFIX, k)).collect()
}

/// Per counter key: DUMP (or nil), GET (via pcall semantics: nil for other types) and
/// PEXPIRETIME.
async fn observe(
    con: &mut MultiplexedConnection,
) -> Result<Vec<(Value, Value, i64)>, TestCaseError> {
    let mut pipe = ::redis::pipe();
    for k in key_names() {
        pipe.cmd("DUMP")
            .arg(&k)
            .cmd("GET")
            .arg(&k)
            .cmd("PEXPIRETIME")
            .arg(&k);
    }
    let values: Vec<Value> = pipe.query_async(con).await.map_err(fail)?;
    Ok(values
        .chunks_exact(3)
        .map(|c| {
            let ttl = match c[2] {
                Value::Int(i) => i,
                _ => i64::MIN,
            };
            (c[0].clone(), c[1].clone(), ttl)
        })
        .collect())
}

/// Deletes what Redis would have expired by `now` (see the module doc).
async fn expire(con: &mut MultiplexedConnection, now: Micros) -> Result<(), TestCaseError> {
    for (k, (_, _, at)) in key_names().iter().zip(observe(con).await?) {
        if at >= 0 && now / 1000 > u64::try_from(at).unwrap() {
            ::redis::cmd("DEL")
                .arg(k)
                .query_async::<()>(con)
                .await
                .map_err(fail)?;
        }
    }
    Ok(())
}

/// Every key but the witness has an expiry.
async fn all_keys_expire(con: &mut MultiplexedConnection) -> Result<(), TestCaseError> {
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("*")
        .query_async(con)
        .await
        .map_err(fail)?;
    for k in keys {
        if k == witness_key(PREFIX) {
            continue;
        }
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(&k)
            .query_async(con)
            .await
            .map_err(fail)?;
        prop_assert!(ttl > 0, "key {} has PTTL {}", k, ttl);
    }
    Ok(())
}

async fn run_decide(
    con: &mut MultiplexedConnection,
    checks: &mut [Check],
    now: Micros,
) -> Result<Decoded, TestCaseError> {
    let reply: Value = decide_invocation(decide_script_test_clock(), PREFIX, checks, Some(now))
        .invoke_async(con)
        .await
        .map_err(fail)?;
    decode(&reply, checks).map_err(fail)
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The properties.

/// decide.lua and the model agree on every verdict, on every key's value and expiry, and a
/// plan that is not admitted changes nothing.
async fn same_as_the_model(
    con: &mut MultiplexedConnection,
    case: Case,
) -> Result<(), TestCaseError> {
    let mut now = wall_us() + 30 * DAY + case.start;
    let mut model = Model::default();
    for (i, step) in case.steps.iter().enumerate() {
        now = advance(&case, now, step.gap);
        expire(con, now).await?;
        let before = observe(con).await?;

        let mut expected = checks_of(&case, step, true);
        let admitted = model.decide(&mut expected, now);
        let mut checks = checks_of(&case, step, true);
        let got = run_decide(con, &mut checks, now).await?;

        prop_assert_eq!(got.now, now);
        prop_assert_eq!(got.seq, Some(i as u64 + 1), "one witness INCR per run");
        for (j, (e, g)) in expected.iter().zip(&checks).enumerate() {
            prop_assert_eq!(
                g.verdict,
                e.verdict,
                "step {} at {}: check {} ({:?} {:?} cost {})",
                i,
                now,
                j,
                e.algorithm,
                e.quota,
                e.cost
            );
        }
        prop_assert_eq!(got.admitted, admitted, "step {}", i);

        let after = observe(con).await?;
        if !admitted && !checks.iter().any(|c| c.post_paid) {
            prop_assert_eq!(&after, &before, "step {}: a rejected plan wrote", i);
        }
        for (k, (_, value, at)) in KEYS.iter().zip(&after) {
            match model.live(k, now) {
                Some(slot) => {
                    prop_assert_eq!(
                        as_text(value),
                        Some(encoded(&slot.state)),
                        "step {}: value of {:?} (quota {:?})",
                        i,
                        k,
                        slot.quota
                    );
                    prop_assert_eq!(
                        *at,
                        i64::try_from(slot.expires_at.div_ceil(1000)).unwrap(),
                        "step {}: PEXPIRETIME of {:?}, expires_at {}",
                        i,
                        k,
                        slot.expires_at
                    );
                }
                None => prop_assert_eq!(*at, -2, "step {}: {:?} should not exist", i, k),
            }
        }
    }
    all_keys_expire(con).await
}

/// With refunds: right after an admitted plan, refund.lua undoes it (sometimes), and the model
/// forgets it but for its post-paid checks, which are never refunded; every later verdict
/// still agrees. No config reloads here (a refund restores
/// what verdicts see, not the exact value or expiry, and a reload could tell the difference).
async fn refunds_restore_verdicts(
    con: &mut MultiplexedConnection,
    (case, refunds): (Case, Vec<bool>),
) -> Result<(), TestCaseError> {
    let mut now = wall_us() + 30 * DAY + case.start;
    let mut model = Model::default();
    for (i, step) in case.steps.iter().enumerate() {
        now = advance(&case, now, step.gap);
        expire(con, now).await?;
        let snapshot = model.snapshot();
        let mut expected = checks_of(&case, step, false);
        let admitted = model.decide(&mut expected, now);
        let mut checks = checks_of(&case, step, false);
        let got = run_decide(con, &mut checks, now).await?;
        for (e, g) in expected.iter().zip(&checks) {
            prop_assert_eq!(g.verdict, e.verdict, "step {} at {}", i, now);
        }
        prop_assert_eq!(got.admitted, admitted);
        if admitted && refunds.get(i).copied().unwrap_or(false) {
            let done: i64 = refund_invocation(PREFIX, &checks, got.now)
                .invoke_async(con)
                .await
                .map_err(fail)?;
            prop_assert_eq!(done, 1);
            model.restore(snapshot);
            let mut post_paid: Vec<Check> = expected.into_iter().filter(|c| c.post_paid).collect();
            model.decide(&mut post_paid, now);
        }
        all_keys_expire(con).await?;
    }
    Ok(())
}

#[test]
fn decide_matches_the_rust_algorithms() {
    run_property(256, case(), same_as_the_model);
}

#[test]
fn refund_restores_the_verdicts() {
    let strategy = (case(), prop::collection::vec(prop::bool::weighted(0.4), 40));
    run_property(128, strategy, refunds_restore_verdicts);
}

// ---------------------------------------------------------------------------------------------
// Examples.

fn check(tag: u128, algorithm: Algorithm, limit: u64, window: u64, cost: u64) -> Check {
    Check {
        key: CounterKey { tag, limit: 1 },
        algorithm,
        quota: Quota::new(limit, window),
        cost,
        enforce: true,
        post_paid: false,
        verdict: None,
    }
}

const SEC: u64 = 1_000_000;

#[test]
fn counter_keys_carry_the_tag_as_a_hash_tag() {
    let key = CounterKey {
        tag: 0xabc,
        limit: 0x1f,
    };
    assert_eq!(
        counter_key("rl:", &key),
        "rl:{00000000000000000000000000000abc}:000000000000001f"
    );
    let key = CounterKey {
        tag: u128::MAX,
        limit: u64::MAX,
    };
    assert_eq!(
        counter_key("", &key),
        format!("{{{}}}:{}", "f".repeat(32), "f".repeat(16))
    );
}

#[tokio::test]
async fn the_production_script_reads_redis_time_and_ignores_argv1() {
    let server = RedisServer::start();
    let mut con = server.connect().await;
    let mut nows = Vec::new();
    for injected in [1, NOW_MAX + 12345] {
        let mut checks = vec![check(1, Algorithm::TokenBucket, 10, 10 * SEC, 1)];
        let before = wall_us();
        let reply: Value = decide_invocation(decide_script(), PREFIX, &checks, Some(injected))
            .invoke_async(&mut con)
            .await
            .unwrap();
        let after = wall_us();
        let got = decode(&reply, &mut checks).unwrap();
        assert!(got.admitted);
        assert_eq!(got.seq, None, "no witness in production");
        assert!(
            got.now + SEC >= before && got.now <= after + SEC,
            "Redis TIME {} vs machine {before}..{after}",
            got.now
        );
        nows.push(got.now);
    }
    assert!(nows[1] >= nows[0]);
    // Two commits of 1 at T = 1 s: the TAT is the second now + 1 s or the first + 2 s.
    let tat = nows[0].max(nows[1] - SEC) + 2 * SEC;
    let key = counter_key(PREFIX, &CounterKey { tag: 1, limit: 1 });
    let value: String = ::redis::cmd("GET")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(value, tat.to_string());
    let at: u64 = ::redis::cmd("PEXPIRETIME")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(at, tat.div_ceil(1000));

    // Scripts are gone after a SCRIPT FLUSH (or a restart): the invocation loads them again.
    ::redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let mut checks = vec![check(1, Algorithm::TokenBucket, 10, 10 * SEC, 1)];
    let reply: Value = decide_invocation(decide_script(), PREFIX, &checks, None)
        .invoke_async(&mut con)
        .await
        .unwrap();
    assert!(decode(&reply, &mut checks).unwrap().admitted);
}

#[tokio::test]
async fn foreign_values_count_as_empty_and_are_replaced() {
    let server = RedisServer::start();
    let mut con = server.connect().await;
    let now = wall_us() + 30 * DAY;
    let foreign: [(&str, Option<&str>); 10] = [
        ("token_bucket", Some("12:3")),
        ("token_bucket", Some("sw:1:1")),
        ("fixed_window", Some("123")),
        ("fixed_window", Some("1:2:3")),
        ("sliding_window", Some("sw:1:0")),
        ("sliding_window", Some("sw:5:1")), // the log's encoding before "sw2:"
        ("sliding_window", Some("sw2:000000000000")),
        (
            "sliding_window",
            Some("sw2:00000000000000000000000000000000000000g"),
        ),
        (
            "sliding_window",
            Some("sw2:00000000000x000000000000010000000000001"),
        ),
        ("sliding_window", None), // a list
    ];
    for (i, (algorithm, value)) in foreign.into_iter().enumerate() {
        let algorithm = match algorithm {
            "token_bucket" => Algorithm::TokenBucket,
            "fixed_window" => Algorithm::FixedWindow,
            _ => Algorithm::SlidingWindow,
        };
        let tag = 100 + i as u128;
        let key = counter_key(PREFIX, &CounterKey { tag, limit: 1 });
        match value {
            Some(v) => {
                ::redis::cmd("SET")
                    .arg(&key)
                    .arg(v)
                    .query_async::<()>(&mut con)
                    .await
            }
            None => {
                ::redis::cmd("RPUSH")
                    .arg(&key)
                    .arg("x")
                    .query_async::<()>(&mut con)
                    .await
            }
        }
        .unwrap();
        let mut checks = vec![check(tag, algorithm, 3, SEC, 2)];
        let got = run_decide(&mut con, &mut checks, now).await.unwrap();
        assert!(got.admitted, "{algorithm:?} over {value:?}");
        assert_eq!(
            checks[0].verdict.unwrap().remaining,
            1,
            "{algorithm:?} over {value:?}"
        );
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(ttl > 0);
    }
}

#[tokio::test]
async fn check_only_runs_write_nothing() {
    let server = RedisServer::start();
    let mut con = server.connect().await;
    let key = counter_key(PREFIX, &CounterKey { tag: 5, limit: 1 });
    let mut inv = decide_script().prepare_invoke();
    inv.key(&key)
        .arg("0")
        .arg(1)
        .arg("0")
        .arg("fixed_window")
        .arg(5)
        .arg(SEC)
        .arg(5)
        .arg(1)
        .arg("1");
    let reply: Value = inv.invoke_async(&mut con).await.unwrap();
    let mut checks = vec![check(5, Algorithm::FixedWindow, 5, SEC, 1)];
    assert!(decode(&reply, &mut checks).unwrap().admitted);
    let exists: bool = ::redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn figures_outside_the_exact_range_are_refused() {
    let server = RedisServer::start();
    let mut con = server.connect().await;
    let now = wall_us() + 30 * DAY;
    let mut big_tolerance = check(1, Algorithm::TokenBucket, 1, 1 << 40, 1);
    big_tolerance.quota.burst = 1 << 12; // 2^52 µs
    let mut big_limit = check(2, Algorithm::SlidingWindow, QUOTA_MAX + 1, SEC, 1);
    big_limit.enforce = false;
    let fine = check(3, Algorithm::FixedWindow, 10, SEC, 1);
    let mut huge_cost = check(4, Algorithm::FixedWindow, QUOTA_MAX, SEC, u64::MAX);
    huge_cost.enforce = false;
    assert!(!within_exact_range(&big_tolerance));
    assert!(!within_exact_range(&big_limit));
    assert!(within_exact_range(&fine));
    assert!(within_exact_range(&huge_cost), "costs are capped");

    for bad in [big_tolerance, big_limit] {
        let mut checks = vec![fine.clone(), bad];
        let err = decide_invocation(decide_script_test_clock(), PREFIX, &checks, Some(now))
            .invoke_async::<Value>(&mut con)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("ratelimiter"), "{err}");
        assert!(decode(&Value::Nil, &mut checks).is_err());
    }
    let n: u64 = ::redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
    assert_eq!(n, 0, "a refused plan writes nothing");

    // u64::MAX is capped to COST_CAP and refused as Never, like the Rust algorithm does.
    let mut checks = vec![fine, huge_cost.clone()];
    let got = run_decide(&mut con, &mut checks, now).await.unwrap();
    assert!(got.admitted);
    let expected =
        CounterState::empty(Algorithm::FixedWindow).check(&huge_cost.quota, now, huge_cost.cost);
    assert_eq!(checks[1].verdict, Some(expected));
    assert_eq!(expected.retry_after, RetryAfter::Never);
}

/// Refunds that are not the counter's last commit: only what that commit added goes back.
#[tokio::test]
async fn a_refund_takes_back_only_its_own_commit() {
    let server = RedisServer::start();
    let mut con = server.connect().await;
    // Inside a whole second, 30 days ahead.
    let t = (wall_us() + 30 * DAY) / SEC * SEC + 100_000;
    let get = async |con: &mut MultiplexedConnection, tag: u128| -> Option<String> {
        let key = counter_key(PREFIX, &CounterKey { tag, limit: 1 });
        ::redis::cmd("GET").arg(key).query_async(con).await.unwrap()
    };
    let decide_at = async |con: &mut MultiplexedConnection, c: &Check, now: Micros| {
        let mut checks = vec![c.clone()];
        let got = run_decide(con, &mut checks, now).await.unwrap();
        assert!(got.admitted);
        checks
    };
    let refund = async |con: &mut MultiplexedConnection, checks: &[Check], at: Micros| {
        let done: i64 = refund_invocation(PREFIX, checks, at)
            .invoke_async(con)
            .await
            .unwrap();
        assert_eq!(done, 1);
    };

    // Fixed window: a refund after the window rolled over leaves the new window alone.
    let fixed = check(1, Algorithm::FixedWindow, 5, SEC, 2);
    let first = decide_at(&mut con, &fixed, t).await;
    decide_at(&mut con, &fixed, t + SEC).await;
    refund(&mut con, &first, t).await;
    assert_eq!(
        get(&mut con, 1).await,
        Some(format!("{}:2", t / SEC * SEC + SEC))
    );
    // ...and within its window it gives back its cost, deleting a counter back at 0.
    let again = decide_at(&mut con, &fixed, t + SEC + 1).await;
    refund(&mut con, &again, t + SEC + 1).await;
    assert_eq!(
        get(&mut con, 1).await,
        Some(format!("{}:2", t / SEC * SEC + SEC))
    );
    refund(&mut con, &first, t + SEC).await;
    assert_eq!(get(&mut con, 1).await, None);

    // Sliding window: the refund takes its cost off its own instant's entry, merged or not.
    let sliding = |cost| check(2, Algorithm::SlidingWindow, 10, 10 * SEC, cost);
    let a = decide_at(&mut con, &sliding(2), t).await;
    decide_at(&mut con, &sliding(1), t + 5).await;
    decide_at(&mut con, &sliding(3), t + 9).await;
    let merged = decide_at(&mut con, &sliding(2), t + 9).await;
    assert_eq!(
        get(&mut con, 2).await,
        Some(sliding_log(&[(t, 2), (t + 5, 1), (t + 9, 5)]))
    );
    refund(&mut con, &a, t).await;
    refund(&mut con, &merged, t + 9).await;
    assert_eq!(
        get(&mut con, 2).await,
        Some(sliding_log(&[(t + 5, 1), (t + 9, 3)]))
    );
    let key = counter_key(PREFIX, &CounterKey { tag: 2, limit: 1 });
    let at: u64 = ::redis::cmd("PEXPIRETIME")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(at, (t + 9 + 10 * SEC).div_ceil(1000));

    // Token bucket: the TAT goes back by the refunded cost only.
    let bucket = |cost| check(3, Algorithm::TokenBucket, 10, 10 * SEC, cost);
    let a = decide_at(&mut con, &bucket(3), t).await;
    decide_at(&mut con, &bucket(2), t + SEC / 2).await;
    refund(&mut con, &a, t).await;
    assert_eq!(get(&mut con, 3).await, Some((t + 2 * SEC).to_string()));

    // A check that was not allowed committed nothing, so gives back nothing.
    let mut refused = vec![check(3, Algorithm::TokenBucket, 10, 10 * SEC, 9)];
    let got = run_decide(&mut con, &mut refused, t).await.unwrap();
    assert!(!got.admitted);
    refund(&mut con, &refused, t).await;
    assert_eq!(get(&mut con, 3).await, Some((t + 2 * SEC).to_string()));

    // A counter another algorithm took over (a config reload) is left alone.
    decide_at(&mut con, &check(3, Algorithm::FixedWindow, 10, SEC, 1), t).await;
    refund(&mut con, &a, t).await;
    assert_eq!(get(&mut con, 3).await, Some(format!("{}:1", t / SEC * SEC)));
}

// ---------------------------------------------------------------------------------------------
// Cross-slot reservations under client retries.

/// One slot's part of a cross-slot plan on tag 5: a token bucket of 10 per 1000 s (no
/// refill within a test) at `cost`.
fn bucket_part(cost: u64) -> Vec<Check> {
    vec![check(5, Algorithm::TokenBucket, 10, 1000 * SEC, cost)]
}

/// A reserve run under `token`: the raw reply (an error reply is an `Err`).
async fn reserve(
    con: &mut MultiplexedConnection,
    checks: &[Check],
    token: &str,
) -> ::redis::RedisResult<Value> {
    reserve_invocation(PREFIX, checks, &reservation_key(PREFIX, 5, token))
        .invoke_async(con)
        .await
}

async fn refund_reservation(con: &mut MultiplexedConnection, checks: &[Check], token: &str) {
    let _: Value =
        refund_reservation_invocation(PREFIX, checks, &reservation_key(PREFIX, 5, token))
            .invoke_async(con)
            .await
            .unwrap();
}

/// Whether a plain decide (no reservation) of `cost` on the bucket is admitted (and commits).
async fn admits(con: &mut MultiplexedConnection, cost: u64) -> bool {
    let mut checks = bucket_part(cost);
    let reply: Value = decide_invocation(decide_script(), PREFIX, &checks, None)
        .invoke_async(con)
        .await
        .unwrap();
    decode(&reply, &mut checks).unwrap().admitted
}

/// A client that resends a reserve (its reply was lost) charges once and reads the same
/// verdicts.
#[tokio::test]
async fn a_reservation_decided_twice_charges_once() {
    let server = RedisServer::start();
    let mut con = server.connect().await;
    let mut first = bucket_part(4);
    let reply = reserve(&mut con, &first, "t1").await.unwrap();
    assert!(decode(&reply, &mut first).unwrap().admitted);
    let mut again = bucket_part(4);
    let resent = reserve(&mut con, &again, "t1").await.unwrap();
    assert_eq!(resent, reply, "the resent reserve answers as the first did");
    assert!(decode(&resent, &mut again).unwrap().admitted);
    // Charged 4 once: 6 are left (not 2).
    assert!(
        admits(&mut con, 6).await,
        "the resent reserve charged again"
    );
    assert!(!admits(&mut con, 1).await);
}

/// The case: two requests drain a burst of 10; one reservation refunded twice must
/// give back its 5 once, so a cost-10 request is still rejected.
#[tokio::test]
async fn a_reservation_refunded_twice_refunds_once() {
    let server = RedisServer::start();
    let mut con = server.connect().await;
    let mut a = bucket_part(5);
    assert!(
        decode(&reserve(&mut con, &a, "a").await.unwrap(), &mut a)
            .unwrap()
            .admitted
    );
    let mut b = bucket_part(5);
    assert!(
        decode(&reserve(&mut con, &b, "b").await.unwrap(), &mut b)
            .unwrap()
            .admitted
    );
    refund_reservation(&mut con, &a, "a").await;
    refund_reservation(&mut con, &a, "a").await;
    assert!(
        !admits(&mut con, 10).await,
        "a refund run twice gave back 10 for 5"
    );
    assert!(admits(&mut con, 5).await, "the refund gave nothing back");
    // A refund whose reserve reply was lost (no verdicts known) gives back what it committed.
    refund_reservation(&mut con, &bucket_part(5), "b").await;
    assert!(
        admits(&mut con, 5).await,
        "the lost reserve was not refunded"
    );
    assert!(!admits(&mut con, 1).await);
}

/// A refund that overtakes its (resent, late) reserve leaves a tombstone: the reserve then
/// charges nothing and answers an error.
#[tokio::test]
async fn a_refund_before_its_reservation_leaves_it_charging_nothing() {
    let server = RedisServer::start();
    let mut con = server.connect().await;
    refund_reservation(&mut con, &bucket_part(4), "c").await;
    let late = reserve(&mut con, &bucket_part(4), "c").await;
    assert!(
        late.as_ref()
            .is_err_and(|e| e.to_string().contains("refunded")),
        "a reserve after its refund: {late:?}"
    );
    assert!(
        admits(&mut con, 10).await,
        "the late reserve charged the bucket"
    );
}

/// A refund whose reserve reply was lost knows no verdicts and no commit instant: it takes
/// both from the reservation's record. The sliding window's entry at that instant and the
/// fixed window's count go back; a shadow check that was not allowed committed nothing and
/// gets nothing back.
#[tokio::test]
async fn a_lost_reservation_is_refunded_from_its_record() {
    let server = RedisServer::start();
    let mut con = server.connect().await;
    let limit = |id: u64, c: Check| Check {
        key: CounterKey { tag: 5, limit: id },
        ..c
    };
    let shadow = Check {
        enforce: false,
        post_paid: false,
        ..limit(3, check(5, Algorithm::TokenBucket, 10, 1000 * SEC, 5))
    };
    let part = || {
        vec![
            limit(1, check(5, Algorithm::SlidingWindow, 10, 1000 * SEC, 2)),
            limit(2, check(5, Algorithm::FixedWindow, 10, 1000 * SEC, 3)),
            shadow.clone(),
        ]
    };
    // The shadow check's bucket holds 2 of 10.
    let mut drain = vec![limit(
        3,
        check(5, Algorithm::TokenBucket, 10, 1000 * SEC, 8),
    )];
    let reply: Value = decide_invocation(decide_script(), PREFIX, &drain, None)
        .invoke_async(&mut con)
        .await
        .unwrap();
    assert!(decode(&reply, &mut drain).unwrap().admitted);
    let mut reserved = part();
    let reply = reserve(&mut con, &reserved, "lost").await.unwrap();
    assert!(decode(&reply, &mut reserved).unwrap().admitted);
    assert_eq!(reserved[2].verdict.map(|v| v.allowed), Some(false));

    refund_reservation(&mut con, &part(), "lost").await;
    let get = |id: u64| counter_key(PREFIX, &CounterKey { tag: 5, limit: id });
    let left: Vec<Option<String>> = ::redis::cmd("MGET")
        .arg(get(1))
        .arg(get(2))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(left, vec![None, None], "both windows are empty again");
    // The bucket still holds 2: nothing was given back for the shadow check.
    let mut two = vec![limit(
        3,
        check(5, Algorithm::TokenBucket, 10, 1000 * SEC, 3),
    )];
    let reply: Value = decide_invocation(decide_script(), PREFIX, &two, None)
        .invoke_async(&mut con)
        .await
        .unwrap();
    assert!(!decode(&reply, &mut two).unwrap().admitted);
}

#[tokio::test]
async fn the_witness_counts_runs() {
    let server = RedisServer::start();
    let mut con = server.connect().await;
    let now = wall_us() + 30 * DAY;
    for i in 1..=3u64 {
        let mut checks = vec![check(9, Algorithm::SlidingWindow, 1, SEC, 1)];
        let got = run_decide(&mut con, &mut checks, now + i).await.unwrap();
        assert_eq!(got.seq, Some(i));
        assert_eq!(got.admitted, i == 1);
    }
}

// ---------------------------------------------------------------------------------------------
// decode.

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

fn good_reply() -> Vec<Value> {
    vec![
        Value::Int(1),
        bulk("1700000000000000"),
        Value::Int(1),
        bulk("4"),
        bulk("600000"),
        Value::Int(0),
        bulk("0"),
        Value::Int(0),
        bulk("0"),
        bulk("30000000"),
        Value::Int(1),
        bulk("250000"),
    ]
}

fn two_checks() -> Vec<Check> {
    let mut shadow = check(2, Algorithm::FixedWindow, 1, 60 * SEC, 1);
    shadow.enforce = false;
    vec![check(1, Algorithm::TokenBucket, 10, SEC, 1), shadow]
}

#[test]
fn decode_reads_a_reply() {
    let mut checks = two_checks();
    let got = decode(&Value::Array(good_reply()), &mut checks).unwrap();
    assert_eq!(
        got,
        Decoded {
            admitted: true,
            now: 1_700_000_000_000_000,
            seq: None
        }
    );
    assert_eq!(
        checks[0].verdict,
        Some(Verdict {
            allowed: true,
            remaining: 4,
            reset_after: 600_000,
            retry_after: RetryAfter::Now
        })
    );
    assert_eq!(
        checks[1].verdict,
        Some(Verdict {
            allowed: false,
            remaining: 0,
            reset_after: 30_000_000,
            retry_after: RetryAfter::After(250_000)
        })
    );
    let mut with_seq = good_reply();
    with_seq.push(Value::Int(42));
    let got = decode(&Value::Array(with_seq), &mut checks).unwrap();
    assert_eq!(got.seq, Some(42));
}

#[test]
fn decode_rejects_malformed_replies() {
    let replace = |i: usize, v: Value| {
        let mut r = good_reply();
        r[i] = v;
        Value::Array(r)
    };
    let mut too_long = good_reply();
    too_long.extend([Value::Int(1), Value::Int(2)]);
    let mut bad_seq = good_reply();
    bad_seq.push(bulk("x"));
    let bad = [
        Value::Nil,
        Value::Okay,
        Value::Int(1),
        bulk("1"),
        Value::Array(vec![]),
        Value::Array(good_reply()[..11].to_vec()),
        Value::Array(too_long),
        Value::Array(bad_seq),
        replace(0, Value::Int(2)),
        replace(0, Value::Int(-1)),
        replace(0, Value::Nil),
        replace(1, bulk("-5")),
        replace(1, bulk("")),
        replace(1, bulk(" 5")),
        replace(1, bulk("18446744073709551616")),
        replace(1, Value::Double(1.5)),
        replace(1, Value::BulkString(vec![0xff, 0xfe])),
        replace(2, Value::Int(0)), // allowed 0 but retry kind "now"
        replace(3, bulk("1e3")),
        replace(5, Value::Int(3)),
        replace(5, Value::Int(2)),  // allowed with retry kind "never"
        replace(7, Value::Int(1)),  // allowed with retry kind "after"
        replace(10, Value::Int(0)), // not allowed with retry kind "now"
        replace(11, Value::Array(vec![])),
    ];
    let mut refused_yet_admitted = good_reply();
    refused_yet_admitted[2] = Value::Int(0);
    refused_yet_admitted[5] = Value::Int(1);
    let mut admitted_not = good_reply();
    admitted_not[0] = Value::Int(0);
    let bad = bad.into_iter().chain([
        Value::Array(refused_yet_admitted),
        Value::Array(admitted_not),
    ]);
    for reply in bad {
        let mut checks = two_checks();
        let err = decode(&reply, &mut checks).unwrap_err();
        assert!(matches!(err, StoreError::Protocol(_)), "{reply:?}: {err}");
        assert!(
            checks.iter().all(|c| c.verdict.is_none()),
            "{reply:?} left a verdict"
        );
    }
}

fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        Just(Value::Okay),
        any::<i64>().prop_map(Value::Int),
        (0..4i64).prop_map(Value::Int),
        "[0-9]{0,21}".prop_map(|s| Value::BulkString(s.into_bytes())),
        any::<Vec<u8>>().prop_map(Value::BulkString),
        any::<f64>().prop_map(Value::Double),
    ];
    leaf.prop_recursive(3, 64, 16, |inner| {
        prop::collection::vec(inner, 0..16).prop_map(Value::Array)
    })
}

proptest! {
    #![proptest_config(Config { cases: 512, failure_persistence: None, ..Config::default() })]

    #[test]
    fn decode_never_panics(reply in any_value(), n in 0..4usize) {
        let mut checks: Vec<Check> = (0..n)
            .map(|i| check(i as u128, Algorithm::TokenBucket, 1, SEC, 1))
            .collect();
        let _ = decode(&reply, &mut checks);
    }
}

/// The sliding log's running totals wrap at 2^52 in Lua exactly as in Rust: same verdicts,
/// same stored log, round after round past the wrap.
#[tokio::test]
async fn sliding_window_running_totals_wrap_as_in_rust() {
    use crate::algorithm::sliding_window;
    let server = RedisServer::start();
    let mut con = server.connect().await;
    let start = wall_us() + 30 * DAY;
    let half = 1u64 << 49;
    let mut log = sliding_window::Log::default();
    let key = counter_key(PREFIX, &CounterKey { tag: 3, limit: 1 });
    for round in 0..12u64 {
        let now = start + round * 5;
        for cost in [half, 1 << 50] {
            let mut checks = vec![check(3, Algorithm::SlidingWindow, 1 << 50, 10, cost)];
            run_decide(&mut con, &mut checks, now).await.unwrap();
            let expected = sliding_window::check(&log, &checks[0].quota, now, cost);
            assert_eq!(
                checks[0].verdict,
                Some(expected),
                "round {round}, cost {cost}"
            );
            if expected.allowed {
                sliding_window::commit(&mut log, &checks[0].quota, now, cost);
            }
        }
        let stored: Option<String> = ::redis::cmd("GET")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(stored, Some(log.encoded()), "round {round}");
    }
}

/// A post-paid report of 700 tokens against the 300 left of 1,000 a minute (token bucket):
/// recorded whole in Redis (debt of 400 tokens = 24 s), the key expiring when the debt and the
/// rest are repaid (PXAT = the TAT); a check-only request is refused until the debt is paid;
/// a charge of u64::MAX records USAGE_MAX, as the Rust does.
#[tokio::test]
async fn a_post_paid_charge_past_the_limit_is_recorded_with_its_expiry() {
    let server = RedisServer::start();
    let mut con = server.connect().await;
    let now = wall_us() + 30 * DAY;
    let minute = 60 * SEC;
    let spend = |cost, post_paid| {
        let mut c = check(1, Algorithm::TokenBucket, 1000, minute, cost);
        c.post_paid = post_paid;
        vec![c]
    };
    assert!(
        run_decide(&mut con, &mut spend(700, false), now)
            .await
            .unwrap()
            .admitted
    );
    let mut report = spend(700, true);
    let got = run_decide(&mut con, &mut report, now).await.unwrap();
    assert!(!got.admitted, "700 did not fit in the 300 left");
    let tat = now + 1400 * 60_000;
    let key = counter_key(PREFIX, &report[0].key);
    let (value, pexpiretime): (String, u64) = ::redis::pipe()
        .get(&key)
        .cmd("PEXPIRETIME")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(value, tat.to_string(), "the whole 700 recorded");
    assert_eq!(pexpiretime, tat.div_ceil(1000));

    let mut peek = spend(0, false);
    assert!(!run_decide(&mut con, &mut peek, now).await.unwrap().admitted);
    let v = peek[0].verdict.unwrap();
    assert_eq!(
        (v.remaining, v.retry_after),
        (0, RetryAfter::After(400 * 60_000))
    );
    let paid = now + 400 * 60_000;
    assert!(
        !run_decide(&mut con, &mut spend(0, false), paid - 1)
            .await
            .unwrap()
            .admitted
    );
    assert!(
        run_decide(&mut con, &mut spend(0, false), paid)
            .await
            .unwrap()
            .admitted
    );

    let mut fixed = check(2, Algorithm::FixedWindow, 10, minute, u64::MAX);
    fixed.post_paid = true;
    fixed.enforce = false;
    let mut checks = vec![fixed.clone()];
    assert!(
        run_decide(&mut con, &mut checks, now)
            .await
            .unwrap()
            .admitted
    );
    let mut model = Model::default();
    model.decide(&mut [fixed.clone()], now);
    let value: String = ::redis::cmd("GET")
        .arg(counter_key(PREFIX, &fixed.key))
        .query_async(&mut con)
        .await
        .unwrap();
    let slot = model.live(&fixed.key, now).unwrap();
    assert_eq!(value, encoded(&slot.state));
    assert!(value.ends_with(&format!(":{USAGE_MAX}")), "{value}");
}

/// Refunds never give back a post-paid charge: neither a plain refund nor a reservation's, and a
/// rejected decide under a reservation records its post-paid charge, so a resent decide replays
/// it (charging once) and a refund of it gives nothing back.
#[tokio::test]
async fn post_paid_charges_are_never_refunded() {
    let server = RedisServer::start();
    let mut con = server.connect().await;
    let bucket = |cost, post_paid| {
        let mut c = check(6, Algorithm::FixedWindow, 10, 1000 * SEC, cost);
        c.post_paid = post_paid;
        c
    };
    let key = counter_key(PREFIX, &bucket(0, false).key);
    let count = |value: Option<String>| {
        value.map_or(0, |v| v.rsplit(':').next().unwrap().parse::<u64>().unwrap())
    };
    // Admitted: 3 pre-paid + 4 post-paid on two counters; a refund gives back the 3 only.
    let mut other = check(7, Algorithm::FixedWindow, 10, 1000 * SEC, 4);
    other.post_paid = true;
    let mut checks = vec![bucket(3, false), other.clone()];
    let reply: Value = decide_invocation(decide_script(), PREFIX, &checks, None)
        .invoke_async(&mut con)
        .await
        .unwrap();
    let decoded = decode(&reply, &mut checks).unwrap();
    assert!(decoded.admitted);
    let done: i64 = refund_invocation(PREFIX, &checks, decoded.now)
        .invoke_async(&mut con)
        .await
        .unwrap();
    assert_eq!(done, 1);
    let get = |k: String| ::redis::cmd("GET").arg(k).clone();
    let mine: Option<String> = get(key.clone()).query_async(&mut con).await.unwrap();
    let theirs: Option<String> = get(counter_key(PREFIX, &other.key))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!((count(mine), count(theirs)), (0, 4));

    // Under a reservation: a rejected decide (post-paid 12 of 10) records, replays, refunds 0.
    let reservation = reservation_key(PREFIX, 6, "t1");
    let mut part = vec![bucket(12, true)];
    for _ in 0..2 {
        let reply: Value = reserve_invocation(PREFIX, &part, &reservation)
            .invoke_async(&mut con)
            .await
            .unwrap();
        assert!(!decode(&reply, &mut part).unwrap().admitted);
    }
    let gave: i64 = refund_reservation_invocation(PREFIX, &part, &reservation)
        .invoke_async(&mut con)
        .await
        .unwrap();
    assert_eq!(gave, 0);
    let mine: Option<String> = get(key).query_async(&mut con).await.unwrap();
    assert_eq!(count(mine), 12, "charged once, never refunded");
}

/// Post-paid charges past a sliding window's limit keep its log at MAX_LIMIT entries in Redis
/// exactly as in Rust (the oldest entry folded into the next), and the key expires with the
/// newest entry.
#[tokio::test]
async fn a_sliding_log_in_debt_is_folded_as_in_rust() {
    let server = RedisServer::start();
    let mut con = server.connect().await;
    let start = wall_us() + 30 * DAY;
    let mut charge = check(8, Algorithm::SlidingWindow, 3, 1000 * SEC, 1);
    charge.post_paid = true;
    let mut log = crate::algorithm::sliding_window::Log::default();
    for k in 0..600 {
        let now = start + k * 7;
        let mut checks = vec![charge.clone()];
        run_decide(&mut con, &mut checks, now).await.unwrap();
        crate::algorithm::sliding_window::commit(&mut log, &charge.quota, now, 1);
    }
    assert_eq!(log.entries().count(), 500);
    let key = counter_key(PREFIX, &charge.key);
    let (value, pexpiretime): (String, u64) = ::redis::pipe()
        .get(&key)
        .cmd("PEXPIRETIME")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(value, log.encoded());
    assert_eq!(pexpiretime, (start + 599 * 7 + 1000 * SEC).div_ceil(1000));
    let mut peek = vec![check(8, Algorithm::SlidingWindow, 3, 1000 * SEC, 0)];
    let now = start + 600 * 7;
    run_decide(&mut con, &mut peek, now).await.unwrap();
    let expected = crate::algorithm::sliding_window::check(&log, &charge.quota, now, 0);
    assert_eq!(peek[0].verdict, Some(expected));
    assert!(!expected.allowed);
}

/// `decide_cmd` (what the batch workers send) is the `EVALSHA` that `decide_invocation`
/// sends, byte for byte: keys, argument order, flags, capped costs.
#[test]
fn decide_cmd_sends_the_bytes_of_the_invocation() {
    let mut shadow = check(u128::MAX, Algorithm::FixedWindow, QUOTA_MAX, QUOTA_MAX, 0);
    shadow.enforce = false;
    shadow.key.limit = u64::MAX;
    let mut post_paid = check(7, Algorithm::SlidingWindow, 3, 1000 * SEC, u64::MAX);
    post_paid.post_paid = true;
    let mut both = post_paid.clone();
    both.enforce = false;
    both.key.limit = 9;
    let plans = [
        vec![],
        vec![check(1, Algorithm::TokenBucket, 10, SEC, 1)],
        vec![
            check(0, Algorithm::TokenBucket, 1, 1, COST_CAP + 1),
            shadow,
            post_paid,
            both,
        ],
    ];
    for prefix in ["", "rl:", "tenant-a:{x}:"] {
        for checks in &plans {
            let mut sent = ::redis::pipe();
            sent.invoke_script(&decide_invocation(decide_script(), prefix, checks, None));
            let mut built = ::redis::pipe();
            built.add_command(decide_cmd(prefix, checks));
            assert_eq!(
                String::from_utf8_lossy(&built.get_packed_pipeline()),
                String::from_utf8_lossy(&sent.get_packed_pipeline()),
                "prefix {prefix:?}, {} checks",
                checks.len()
            );
        }
    }
}
