//! The ordering witness: a linearizability check of `decide.lua` under real concurrency.
//!
//! `TASKS` tasks, each on its OWN connection to one real `redis-server`, fire `CALLS` decide
//! runs each of the test-clock script at a handful of shared counters (every algorithm, up to
//! three checks per plan, two limits on one descriptor, plans sharing counters, costs from 0
//! to above capacity, shadow checks, post-paid checks recorded into debt). Every call takes its `now` from one shared atomic clock
//! that every task advances, so calls race: a call may reach Redis after one that drew a later
//! instant. The test-clock script `INCR`s a witness key inside the script and returns the new
//! value: the position of that run in Redis's execution order.
//!
//! Sorting every call by that sequence number and replaying the history in that order through
//! the Rust model (`MemoryStore`'s decision rule over `crate::algorithm`) must reproduce every
//! verdict (allowed, remaining, reset_after, retry_after) and every admitted flag, and the
//! sequence numbers must be exactly `1..=TASKS * CALLS`. That is what "one script per decision
//! is linearizable" means: each decision is the one the model gives after exactly the
//! decisions ordered before it, none half-applied.
//!
//! Why this would catch interleaving: if a decision were a check followed by a separate write
//! (or if Redis ran two scripts at once), two racing calls `a` and `b` on a shared counter
//! could both read the state before either wrote. Whichever is ordered second (say `b`) then
//! answers from a state without `a`'s commit, while the replay decides `b` on the state *with*
//! it: `remaining` is off by `a`'s cost at least, and near the limit `allowed` flips too (both
//! admitted where the quota had room for one). The test counts, over the pairs of calls that
//! really overlapped in time (different tasks, overlapping send/receive intervals, a shared
//! counter, consecutive in the witness order), how many would have answered differently from
//! such a stale read, and requires plenty: the history was contended enough for a lost update
//! to show.
//!
//! Expiry: the injected clock runs 30 days ahead of the machine's, and Redis expires keys by
//! its real clock, at `PEXPIREAT` ≥ the injected instant their state empties. So no key expires
//! during the test and the replay never forgets a counter's state (an expired state equals
//! the empty one anyway; keeping it also stays exact when a call's `now` goes back in time,
//! which racing calls do). The end state of every key, value and `PEXPIRETIME`, is checked
//! against the replay's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ::redis::aio::MultiplexedConnection;

use super::tests::{RedisServer, wall_us};
use super::*;
use crate::algorithm::{CounterState, Quota};
use crate::store::plan;

const PREFIX: &str = "rl:";
const DAY: u64 = 86_400_000_000;
/// Concurrent tasks, each with its own connection.
const TASKS: usize = 6;
/// Decide calls per task.
const CALLS: usize = 400;

/// One shared counter: its key and the limit on it (fixed for the whole test).
struct Counter {
    key: CounterKey,
    algorithm: Algorithm,
    quota: Quota,
}

const fn counter(
    tag: u128,
    limit_id: u64,
    algorithm: Algorithm,
    quota: (u64, u64, u64),
) -> Counter {
    Counter {
        key: CounterKey {
            tag,
            limit: limit_id,
        },
        algorithm,
        quota: Quota {
            limit: quota.0,
            window: quota.1,
            burst: quota.2,
        },
    }
}

/// Small limits on short windows (µs), so that at about 1 ms of injected time per call the
/// counters fill up, reject and refill again and again. Two limits share a descriptor (tag).
const COUNTERS: [Counter; 5] = [
    counter(0xa, 1, Algorithm::TokenBucket, (8, 16_000, 8)),
    counter(0xa, 2, Algorithm::FixedWindow, (12, 25_000, 12)),
    counter(0xb, 1, Algorithm::SlidingWindow, (10, 20_000, 10)),
    counter(0xc, 1, Algorithm::TokenBucket, (3, 9_000, 2)),
    counter(0xd, 1, Algorithm::SlidingWindow, (4, 7_000, 4)),
];

/// splitmix64: a small deterministic generator (each task has its own seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A plan of 1 to 3 distinct counters, costs mostly 1 (sometimes 0, 2, or above a counter's
/// capacity), about one check in ten in shadow mode.
fn random_plan(rng: &mut Rng) -> Vec<Check> {
    let n = 1 + rng.below(3);
    let mut picked = [false; COUNTERS.len()];
    let mut checks = Vec::new();
    while checks.len() < usize::try_from(n).unwrap() {
        let i = usize::try_from(rng.below(COUNTERS.len() as u64)).unwrap();
        if std::mem::replace(&mut picked[i], true) {
            continue;
        }
        let c = &COUNTERS[i];
        let cost = match rng.below(20) {
            0 | 1 => 0,
            2..=13 => 1,
            14..=17 => 2,
            _ => 3 + rng.below(3),
        };
        checks.push(Check {
            key: c.key,
            algorithm: c.algorithm,
            quota: c.quota,
            cost,
            enforce: rng.below(10) != 0,
            // A report (usage recorded whatever the verdict: debt) now and then.
            post_paid: cost > 0 && rng.below(8) == 0,
            verdict: None,
        });
    }
    checks
}

/// How far a task moves the shared clock before a call: often not at all (calls at one
/// instant), mostly under a millisecond, sometimes a few.
fn random_step(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0 | 1 => 0,
        2..=6 => 1 + rng.below(1000),
        _ => 1000 + rng.below(3000),
    }
}

/// One decide call as a task saw it.
#[derive(Clone, Debug)]
struct Call {
    task: usize,
    /// The injected clock (ARGV[1]).
    now: Micros,
    /// The plan, with the verdicts Redis returned.
    checks: Vec<Check>,
    admitted: bool,
    seq: u64,
    sent: Instant,
    received: Instant,
}

/// One task: `CALLS` decide runs on its own connection, each at an instant drawn from the
/// shared clock right before it is sent.
async fn run_task(
    task: usize,
    mut con: MultiplexedConnection,
    clock: Arc<AtomicU64>,
    start: Arc<tokio::sync::Barrier>,
) -> Vec<Call> {
    let mut rng = Rng(0x5eed_0000 + task as u64);
    let mut calls = Vec::with_capacity(CALLS);
    start.wait().await;
    for _ in 0..CALLS {
        let mut checks = random_plan(&mut rng);
        let step = random_step(&mut rng);
        let now = clock.fetch_add(step, Ordering::SeqCst) + step;
        let sent = Instant::now();
        let reply: Value =
            decide_invocation(decide_script_test_clock(), PREFIX, &checks, Some(now))
                .invoke_async(&mut con)
                .await
                .unwrap();
        let received = Instant::now();
        let decoded = decode(&reply, &mut checks).unwrap();
        assert_eq!(
            decoded.now, now,
            "the script decided at the injected instant"
        );
        calls.push(Call {
            task,
            now,
            checks,
            admitted: decoded.admitted,
            seq: decoded
                .seq
                .expect("the test-clock script returns a sequence number"),
            sent,
            received,
        });
    }
    calls
}

/// The replay: `MemoryStore::decide`'s rule (check every limit at one `now` against the
/// counter's state, admit when every enforced check allows, then commit every allowed check
/// with a cost, and every post-paid one whatever the verdict), over the Rust algorithms. No expiry (see the module doc).
#[derive(Clone, Default)]
struct Replay {
    /// Per counter: its state, and the instant from which that state is empty.
    slots: HashMap<CounterKey, (CounterState, Micros)>,
}

impl Replay {
    fn decide(&mut self, checks: &mut [Check], now: Micros) -> bool {
        let admitted = plan::check_all(checks, now, |c| self.slots.get(&c.key).map(|(s, _)| s));
        for check in plan::to_commit(checks, admitted) {
            let (state, expires_at) = self
                .slots
                .entry(check.key)
                .or_insert_with(|| (CounterState::empty(check.algorithm), 0));
            // No expiry in the replay: a state is live until replaced.
            *expires_at = plan::commit(state, true, check, now);
        }
        plan::settle(checks, now, |c| self.slots.get(&c.key).map(|(s, _)| s));
        admitted
    }
}

fn unverdicted(checks: &[Check]) -> Vec<Check> {
    checks
        .iter()
        .map(|c| Check {
            verdict: None,
            ..c.clone()
        })
        .collect()
}

fn verdicts(checks: &[Check]) -> Vec<Option<Verdict>> {
    checks.iter().map(|c| c.verdict).collect()
}

/// Whether two calls really ran at the same time (their send/receive intervals overlap) from
/// different tasks, on at least one common counter.
fn raced(a: &Call, b: &Call) -> bool {
    a.task != b.task
        && a.sent < b.received
        && b.sent < a.received
        && a.checks
            .iter()
            .any(|x| b.checks.iter().any(|y| x.key == y.key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_decisions_replay_in_witness_order() {
    let started = Instant::now();
    let server = RedisServer::start();
    let clock = Arc::new(AtomicU64::new(wall_us() + 30 * DAY));
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::with_capacity(TASKS);
    for task in 0..TASKS {
        // `connect` opens a new connection each time: one per task, none shared.
        let con = server.connect().await;
        tasks.push(tokio::spawn(run_task(
            task,
            con,
            clock.clone(),
            barrier.clone(),
        )));
    }
    let mut history: Vec<Call> = Vec::with_capacity(TASKS * CALLS);
    for t in tasks {
        history.extend(t.await.unwrap());
    }
    let storm = started.elapsed();

    // Every run counted once: the sequence numbers are exactly 1..=TASKS * CALLS.
    history.sort_by_key(|c| c.seq);
    let seqs: Vec<u64> = history.iter().map(|c| c.seq).collect();
    let expected: Vec<u64> = (1..=(TASKS * CALLS) as u64).collect();
    assert!(
        seqs == expected,
        "sequence numbers are not exactly 1..={}: first differences {:?}",
        TASKS * CALLS,
        seqs.iter()
            .zip(&expected)
            .filter(|(s, e)| s != e)
            .take(5)
            .collect::<Vec<_>>()
    );

    // Replay in witness order: every verdict and admitted flag must be the model's.
    let mut model = Replay::default();
    let mut mismatches = Vec::new();
    // Pairs of consecutive calls that raced, and how many of them a stale read (the second
    // deciding on the state before the first's commit) would have answered differently.
    let (mut raced_pairs, mut stale_read_shows) = (0usize, 0usize);
    let mut before_previous: Option<Replay> = None;
    for (i, call) in history.iter().enumerate() {
        let before = model.clone();
        let mut expected = unverdicted(&call.checks);
        let admitted = model.decide(&mut expected, call.now);
        if verdicts(&expected) != verdicts(&call.checks) || admitted != call.admitted {
            mismatches.push(format!(
                "seq {} (task {}, now {}): Redis said admitted={} {:?}, the replay admitted={} \
                 {:?}; checks {:?}",
                call.seq,
                call.task,
                call.now,
                call.admitted,
                verdicts(&call.checks),
                admitted,
                verdicts(&expected),
                unverdicted(&call.checks)
            ));
        }
        if let Some(stale) = before_previous.as_mut()
            && raced(&history[i - 1], call)
        {
            raced_pairs += 1;
            let mut stale_checks = unverdicted(&call.checks);
            let stale_admitted = stale.decide(&mut stale_checks, call.now);
            if verdicts(&stale_checks) != verdicts(&call.checks) || stale_admitted != call.admitted
            {
                stale_read_shows += 1;
            }
        }
        before_previous = Some(before);
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} decisions differ from the replay in witness order; the first:\n{}",
        mismatches.len(),
        history.len(),
        mismatches[..mismatches.len().min(5)].join("\n")
    );

    // The history was contended: many admissions and rejections, calls whose `now` went back
    // in time relative to the run before them, and plenty of raced pairs where a lost update
    // would have been visible.
    let admitted = history.iter().filter(|c| c.admitted).count();
    let rejected = history.len() - admitted;
    let back_in_time = history.windows(2).filter(|w| w[1].now < w[0].now).count();
    eprintln!(
        "linearizability: {} calls in {storm:?} ({admitted} admitted, {rejected} rejected), \
         {back_in_time} with an earlier now than the run before, {raced_pairs} raced \
         consecutive pairs, {stale_read_shows} of them would show a stale read",
        history.len()
    );
    assert!(
        admitted >= history.len() / 10 && rejected >= history.len() / 10,
        "{admitted} admitted, {rejected} rejected: the counters did not bind often enough"
    );
    assert!(
        stale_read_shows >= 50,
        "only {stale_read_shows} raced pairs (of {raced_pairs}) would expose a lost update: \
         the calls did not race enough for this test to mean anything"
    );

    // Redis ends in the replay's state: every counter's value and expiry, and the witness.
    let mut con = server.connect().await;
    for c in &COUNTERS {
        let key = counter_key(PREFIX, &c.key);
        let value: Option<String> = ::redis::cmd("GET")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        let at: i64 = ::redis::cmd("PEXPIRETIME")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        match model.slots.get(&c.key) {
            Some((state, expires_at)) => {
                assert_eq!(value, Some(encoded(state)), "value of {key}");
                assert_eq!(
                    at,
                    i64::try_from(expires_at.div_ceil(1000)).unwrap(),
                    "PEXPIRETIME of {key}"
                );
            }
            None => assert_eq!(value, None, "{key} was never committed"),
        }
    }
    let runs: u64 = ::redis::cmd("GET")
        .arg(witness_key(PREFIX))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(runs, (TASKS * CALLS) as u64);
}
