//! Brute-force reference models of the three algorithms, and property tests against them.
//!
//! Each model is written the obvious way, with no concern for memory or speed: a token bucket
//! that counts credit in microseconds, a sliding window over the full history of admitted
//! costs (never pruned), and a fixed window that sums admitted costs per aligned window.
//! Random request sequences (non-decreasing instants, equal instants, window boundaries, big
//! jumps, epoch-scale times, costs of 0 and above capacity, post-paid charges committed
//! whatever the verdict) are fed to both the real algorithm and its model, and on every step
//! the tests check:
//!
//! 1. equivalence: the same decision, the same `remaining`, the same `retry_after`, and that
//!    `retry_after` is the exact minimal wait (admitted at `now + w`, not at `now + w - 1`);
//!    `RetryAfter::Never` exactly when the cost exceeds what the limit can ever admit. The
//!    models count debt the obvious way (a token bucket's credit goes negative, a window's
//!    sum past the limit), so this is also how debt is repaid: exactly when the model's
//!    credit or window has room again;
//! 2. safety over the whole history: the contract in each algorithm's doc, for every
//!    pre-paid admitted cost, counting every charge before it, post-paid ones (debt)
//!    included;
//! 3. liveness: no rejection while the model has room;
//! 4. `check` never mutates; `reset_after` gives back the whole quota (exactly, for the token
//!    bucket and the sliding window); from `expires_at` on, the state behaves exactly like the
//!    empty state (and not before, while it holds anything); the sliding log holds at most
//!    `limit` entries (without debt);
//! 5. a cost of 0 is allowed exactly when the counter is not in debt (its answer agrees with
//!    every other cost's), and committing it changes no later verdict.
//!
//! A second family of tests changes the quota half-way (a config reload keeps counters whose
//! algorithm did not change) and checks the contracts that must survive that.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{
    Algorithm, CounterState, Micros, Quota, RetryAfter, USAGE_MAX, fixed_window, gcra,
    sliding_window,
};

/// What a reference model says about one cost at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Expect {
    allowed: bool,
    remaining: u64,
    retry_after: RetryAfter,
}

trait Reference {
    /// The verdict for `cost` at `now`, without changing anything.
    fn decide(&self, now: Micros, cost: u64) -> Expect;
    /// Records a cost: an admitted one, or a post-paid charge whatever the verdict (bounded
    /// by [`USAGE_MAX`]). Returns the units actually recorded (at most `cost`).
    fn admit(&mut self, now: Micros, cost: u64) -> u64;
}

/// A token bucket the ordinary way: credit in microseconds, refilled one per microsecond,
/// negative while in debt.
struct TokenBucket {
    /// Microseconds one unit of cost is worth.
    per_unit: i128,
    burst: u64,
    size: i128,
    credit: i128,
    last: Micros,
}

impl TokenBucket {
    fn new(quota: &Quota) -> Self {
        let per_unit = i128::from(gcra::interval(quota));
        let size = per_unit * i128::from(quota.burst);
        TokenBucket {
            per_unit,
            burst: quota.burst,
            size,
            credit: size,
            last: 0,
        }
    }

    fn credit_at(&self, now: Micros) -> i128 {
        assert!(now >= self.last, "time went backwards in a test");
        (self.credit + i128::from(now - self.last)).min(self.size)
    }
}

impl Reference for TokenBucket {
    fn decide(&self, now: Micros, cost: u64) -> Expect {
        let credit = self.credit_at(now);
        let units = |credit: i128| u64::try_from(credit.max(0) / self.per_unit).unwrap();
        if cost > self.burst {
            return Expect {
                allowed: false,
                remaining: units(credit),
                retry_after: RetryAfter::Never,
            };
        }
        let need = i128::from(cost) * self.per_unit;
        if need <= credit {
            Expect {
                allowed: true,
                remaining: units(credit - need),
                retry_after: RetryAfter::Now,
            }
        } else {
            Expect {
                allowed: false,
                remaining: units(credit),
                retry_after: RetryAfter::After(u64::try_from(need - credit).unwrap()),
            }
        }
    }

    fn admit(&mut self, now: Micros, cost: u64) -> u64 {
        let credit = self.credit_at(now);
        // The debt (how far the TAT runs ahead) stops at USAGE_MAX µs.
        let room = (credit - self.size + i128::from(USAGE_MAX)).max(0);
        let spent = (i128::from(cost) * self.per_unit).min(room);
        self.credit = credit - spent;
        self.last = now;
        u64::try_from(spent / self.per_unit).unwrap()
    }
}

/// A sliding window over every admitted cost ever, never pruned.
struct FullHistory {
    window: Micros,
    limit: u64,
    history: Vec<(Micros, u64)>,
}

impl FullHistory {
    fn new(quota: &Quota) -> Self {
        FullHistory {
            window: quota.window,
            limit: quota.limit,
            history: Vec::new(),
        }
    }

    /// Admitted cost with an instant in `(now - window, now]`.
    fn used(&self, now: Micros) -> u128 {
        self.history
            .iter()
            .filter(|&&(t, _)| {
                t <= now && u128::from(t) + u128::from(self.window) > u128::from(now)
            })
            .map(|&(_, c)| u128::from(c))
            .sum()
    }

    fn fits(&self, now: Micros, cost: u64) -> bool {
        self.used(now) + u128::from(cost) <= u128::from(self.limit)
    }
}

impl Reference for FullHistory {
    fn decide(&self, now: Micros, cost: u64) -> Expect {
        let used = self.used(now);
        let remaining = u64::try_from(u128::from(self.limit).saturating_sub(used)).unwrap();
        // (Debt: `used` may exceed the limit; then nothing fits, a cost of 0 included.)
        if cost > self.limit {
            return Expect {
                allowed: false,
                remaining,
                retry_after: RetryAfter::Never,
            };
        }
        if self.fits(now, cost) {
            return Expect {
                allowed: true,
                remaining: remaining - cost,
                retry_after: RetryAfter::Now,
            };
        }
        // The count only changes when an entry leaves: try every such instant, earliest first.
        let mut leaves: Vec<Micros> = self
            .history
            .iter()
            .map(|&(t, _)| t + self.window)
            .filter(|&t| t > now)
            .collect();
        leaves.sort_unstable();
        let at = leaves
            .into_iter()
            .find(|&t| self.fits(t, cost))
            .expect("the window empties eventually");
        Expect {
            allowed: false,
            remaining,
            retry_after: RetryAfter::After(at - now),
        }
    }

    fn admit(&mut self, now: Micros, cost: u64) -> u64 {
        let room = u128::from(USAGE_MAX).saturating_sub(self.used(now));
        let cost = cost.min(u64::try_from(room).unwrap());
        if cost > 0 {
            self.history.push((now, cost));
        }
        cost
    }
}

/// A fixed window: admitted costs summed per aligned window number.
struct PerWindow {
    window: Micros,
    limit: u64,
    sums: BTreeMap<u64, u64>,
}

impl PerWindow {
    fn new(quota: &Quota) -> Self {
        PerWindow {
            window: quota.window,
            limit: quota.limit,
            sums: BTreeMap::new(),
        }
    }

    fn used_in(&self, number: u64) -> u64 {
        self.sums.get(&number).copied().unwrap_or(0)
    }
}

impl Reference for PerWindow {
    fn decide(&self, now: Micros, cost: u64) -> Expect {
        let number = now / self.window;
        let used = self.used_in(number);
        let remaining = self.limit.saturating_sub(used);
        if cost > self.limit {
            return Expect {
                allowed: false,
                remaining,
                retry_after: RetryAfter::Never,
            };
        }
        if used + cost <= self.limit {
            return Expect {
                allowed: true,
                remaining: remaining - cost,
                retry_after: RetryAfter::Now,
            };
        }
        let next = (number + 1..)
            .find(|&n| self.used_in(n) + cost <= self.limit)
            .expect("some later window has room");
        Expect {
            allowed: false,
            remaining,
            retry_after: RetryAfter::After(next * self.window - now),
        }
    }

    fn admit(&mut self, now: Micros, cost: u64) -> u64 {
        let sum = self.sums.entry(now / self.window).or_default();
        let cost = cost.min(USAGE_MAX.saturating_sub(*sum));
        *sum += cost;
        cost
    }
}

/// The largest cost an algorithm can ever admit at once.
fn capacity(algorithm: Algorithm, quota: &Quota) -> u64 {
    match algorithm {
        Algorithm::TokenBucket => quota.burst,
        Algorithm::SlidingWindow | Algorithm::FixedWindow => quota.limit,
    }
}

fn reference(algorithm: Algorithm, quota: &Quota) -> Box<dyn Reference> {
    match algorithm {
        Algorithm::TokenBucket => Box::new(TokenBucket::new(quota)),
        Algorithm::SlidingWindow => Box::new(FullHistory::new(quota)),
        Algorithm::FixedWindow => Box::new(PerWindow::new(quota)),
    }
}

/// How far the next request comes after the previous one.
#[derive(Clone, Copy, Debug)]
enum Gap {
    /// The same instant.
    Same,
    /// A few microseconds.
    Tiny(u64),
    /// A few emission intervals of the token bucket.
    Intervals(u64),
    /// Sixteenths of the window.
    Sixteenths(u64),
    /// The next multiple of the window, give or take a microsecond.
    Boundary(i64),
    /// The last rejection's `retry_after`, give or take a microsecond.
    Retry(i64),
    /// Whole windows.
    Windows(u64),
    /// Up to about 12 days.
    Jump(u64),
}

fn advance(now: Micros, gap: Gap, quota: &Quota, last_retry: Option<Micros>) -> Micros {
    let window = quota.window;
    match gap {
        Gap::Same => now,
        Gap::Tiny(d) | Gap::Jump(d) => now + d,
        Gap::Intervals(k) => now + k * gcra::interval(quota),
        Gap::Sixteenths(k) => now + window * k / 16,
        Gap::Boundary(off) => ((now / window + 1) * window)
            .saturating_add_signed(off)
            .max(now),
        Gap::Retry(off) => {
            last_retry.map_or(now, |r| (now + r).saturating_add_signed(off).max(now))
        }
        Gap::Windows(k) => now + k * window,
    }
}

fn gap() -> impl Strategy<Value = Gap> {
    prop_oneof![
        3 => Just(Gap::Same),
        3 => (1u64..=3).prop_map(Gap::Tiny),
        3 => (1u64..=4).prop_map(Gap::Intervals),
        3 => (1u64..=24).prop_map(Gap::Sixteenths),
        3 => (-1i64..=1).prop_map(Gap::Boundary),
        3 => (-1i64..=1).prop_map(Gap::Retry),
        1 => (1u64..=3).prop_map(Gap::Windows),
        1 => (1u64..=1_000_000_000_000).prop_map(Gap::Jump),
    ]
}

fn cost() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        8 => 1u64..=5,
        4 => 1u64..=30,
        1 => 31u64..=100,
        1 => Just(u64::MAX),
    ]
}

fn quota() -> impl Strategy<Value = Quota> {
    let window = prop_oneof![
        1u64..=10,
        1u64..=1_000,
        1u64..=10_000_000,
        Just(1_000_000u64),
        Just(10_000_000u64),
    ];
    (1u64..=20, window, 1u64..=30).prop_map(|(limit, window, burst)| Quota {
        limit,
        window,
        burst,
    })
}

/// The first instant: the epoch, early times, or realistic epoch-scale microseconds.
fn start() -> impl Strategy<Value = Micros> {
    prop_oneof![
        Just(0u64),
        0u64..=20_000_000,
        1_700_000_000_000_000u64..=1_700_100_000_000_000,
    ]
}

/// One request: how long after the previous one, its cost, and whether it is a post-paid
/// charge (committed whatever the verdict).
type Step = (Gap, u64, bool);

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let post_paid = prop_oneof![3 => Just(false), 1 => Just(true)];
    prop::collection::vec((gap(), cost(), post_paid), 1..64)
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![
        Just(Algorithm::TokenBucket),
        Just(Algorithm::SlidingWindow),
        Just(Algorithm::FixedWindow),
    ]
}

/// The units a commit at `now` recorded, from the states before and after it: its cost, or
/// less when the charge was cut at USAGE_MAX (token bucket: whole units of the TAT's move).
fn recorded(before: &CounterState, after: &CounterState, quota: &Quota, now: Micros) -> u64 {
    match (before, after) {
        (CounterState::Gcra(b), CounterState::Gcra(a)) => {
            (a.0 - b.0.max(now)) / gcra::interval(quota)
        }
        (CounterState::FixedWindow(b), CounterState::FixedWindow(a)) => {
            let start = fixed_window::window_start(quota, now);
            a.count - if b.start == start { b.count } else { 0 }
        }
        (CounterState::SlidingWindow(b), CounterState::SlidingWindow(a)) => {
            let live = |log: &sliding_window::Log| -> u64 {
                log.entries()
                    .filter(|&(t, _)| now < quota.window || t > now - quota.window)
                    .map(|(_, c)| c)
                    .sum()
            };
            live(a) - live(b)
        }
        _ => panic!("a commit changed the algorithm"),
    }
}

/// Costs worth probing a state with.
fn probe_costs(cap: u64) -> [u64; 6] {
    [0, 1, cap.saturating_sub(1), cap, cap + 1, u64::MAX]
}

/// One counter driven through a request sequence.
struct Run {
    algorithm: Algorithm,
    quota: Quota,
    state: CounterState,
    now: Micros,
    last_retry: Option<Micros>,
    /// Costs recorded (non-zero) since `quota` took effect, in order: instant, the cost the
    /// reference model recorded, and whether it was admitted pre-paid (not a post-paid charge).
    admitted: Vec<(Micros, u64, bool)>,
    /// Whether the state was built under another quota.
    switched: bool,
    /// Whether a post-paid charge was recorded (the counter may be in debt).
    charged: bool,
    /// The instant of the last commit under `quota`.
    committed_at: Option<Micros>,
}

impl Run {
    fn new(algorithm: Algorithm, quota: Quota, start: Micros) -> Self {
        Run {
            algorithm,
            quota,
            state: CounterState::empty(algorithm),
            now: start,
            last_retry: None,
            admitted: Vec::new(),
            switched: false,
            charged: false,
            committed_at: None,
        }
    }

    /// From now on, the limit has another quota; the state is kept.
    fn switch(&mut self, quota: Quota) {
        self.quota = quota;
        self.admitted.clear();
        self.switched = true;
        self.committed_at = None;
    }

    fn step(
        &mut self,
        (gap, cost, post_paid): Step,
        mut model: Option<&mut dyn Reference>,
    ) -> Result<(), TestCaseError> {
        let q = self.quota;
        let cap = capacity(self.algorithm, &q);
        self.now = advance(self.now, gap, &q, self.last_retry);
        let now = self.now;

        // 4. check never mutates (and is a function of its inputs).
        let before = self.state.clone();
        let v = self.state.check(&q, now, cost);
        prop_assert_eq!(&self.state, &before, "check mutated the state");
        prop_assert_eq!(self.state.check(&q, now, cost), v);

        // 5. A cost of 0 is allowed unless the counter is in debt (then nothing remains); the
        // verdict agrees with what a look (cost 0) says.
        let look = self.state.check(&q, now, 0);
        prop_assert!(look.remaining <= cap);
        if look.allowed {
            prop_assert_eq!(look.retry_after, RetryAfter::Now);
        } else {
            prop_assert!(
                self.charged || self.switched,
                "debt without a charge: {:?}",
                look
            );
            prop_assert_eq!(look.remaining, 0);
        }
        if cost > cap {
            prop_assert!(!v.allowed);
            prop_assert_eq!(v.retry_after, RetryAfter::Never);
            prop_assert_eq!(v.remaining, look.remaining);
        } else if look.allowed && cost <= look.remaining {
            prop_assert!(
                v.allowed,
                "cost {} rejected with {} remaining",
                cost,
                look.remaining
            );
            prop_assert_eq!(v.retry_after, RetryAfter::Now);
            prop_assert_eq!(v.remaining, look.remaining - cost);
        } else {
            prop_assert!(!v.allowed);
            prop_assert!(
                matches!(v.retry_after, RetryAfter::After(w) if w >= 1),
                "{:?}",
                v
            );
            prop_assert_eq!(v.remaining, look.remaining);
        }

        // 1. retry_after is the exact minimal wait, if nothing else happens meanwhile.
        if let RetryAfter::After(w) = v.retry_after {
            prop_assert!(
                self.state.check(&q, now + w, cost).allowed,
                "still rejected after retry_after {}",
                w
            );
            prop_assert!(
                !self.state.check(&q, now + w - 1, cost).allowed,
                "retry_after {} is not minimal",
                w
            );
        }

        // 1 and 3. Equivalence with the reference model, liveness included.
        if let Some(model) = model.as_deref_mut() {
            let e = model.decide(now, cost);
            prop_assert!(
                v.allowed || !e.allowed,
                "liveness: rejected while the reference has room: {:?} vs {:?}",
                v,
                e
            );
            prop_assert!(
                !v.allowed || e.allowed,
                "safety: admitted while the reference is full: {:?} vs {:?}",
                v,
                e
            );
            prop_assert_eq!(v.remaining, e.remaining, "remaining");
            prop_assert_eq!(v.retry_after, e.retry_after, "retry_after");
            if let RetryAfter::After(w) = e.retry_after {
                prop_assert!(model.decide(now + w, cost).allowed);
                prop_assert!(!model.decide(now + w - 1, cost).allowed);
            }
        }

        // 4. reset_after: the whole quota is back then (and not a microsecond earlier, except
        // for the fixed window, which reports the end of its window).
        let mut after = self.state.clone();
        if v.allowed {
            after.commit(&q, now, cost);
        }
        let reset = after.check(&q, now + v.reset_after, 0);
        prop_assert_eq!(
            reset.remaining,
            cap,
            "quota not whole after reset_after: {:?}",
            v
        );
        if self.algorithm == Algorithm::FixedWindow {
            let end = fixed_window::window_start(&q, now) + q.window;
            prop_assert_eq!(v.reset_after, end - now);
        } else if v.reset_after > 0 {
            let early = after.check(&q, now + v.reset_after - 1, 0);
            prop_assert!(
                early.remaining < cap,
                "reset_after {} not minimal",
                v.reset_after
            );
        }

        // 5. Committing a cost of 0 changes no later verdict.
        if cost == 0 {
            prop_assert_eq!(v, look);
            let mut zeroed = self.state.clone();
            zeroed.commit(&q, now, 0);
            let times = [
                now,
                now + 1,
                now + gcra::interval(&q),
                now + q.window - 1,
                now + q.window,
                self.state.expires_at(&q).max(now),
            ];
            for t in times {
                for c in probe_costs(cap) {
                    prop_assert_eq!(
                        zeroed.check(&q, t, c),
                        self.state.check(&q, t, c),
                        "commit of cost 0 changed the verdict at {} for {}",
                        t,
                        c
                    );
                }
            }
        }

        if v.allowed || post_paid {
            let before = self.state.clone();
            self.state.commit(&q, now, cost);
            self.committed_at = Some(now);
            let recorded = recorded(&before, &self.state, &q, now);
            if let Some(model) = model {
                prop_assert_eq!(model.admit(now, cost), recorded, "recorded cost");
            }
            if recorded > 0 {
                self.admitted.push((now, recorded, v.allowed && !post_paid));
            }
            self.charged |= post_paid && cost > 0;
        }
        self.last_retry = match v.retry_after {
            RetryAfter::After(w) => Some(w),
            RetryAfter::Now | RetryAfter::Never => None,
        };
        self.check_state()
    }

    /// Invariants of the state itself and the `expires_at` contract.
    fn check_state(&self) -> Result<(), TestCaseError> {
        let q = self.quota;
        let now = self.now;
        let cap = capacity(self.algorithm, &q);
        prop_assert!(self.state.is(self.algorithm));
        match &self.state {
            CounterState::Gcra(tat) => {
                let bound = if self.charged {
                    USAGE_MAX.max(gcra::tolerance(&q))
                } else {
                    gcra::tolerance(&q)
                };
                if !self.switched {
                    prop_assert!(tat.0 <= now + bound, "TAT too far ahead");
                }
            }
            CounterState::SlidingWindow(log) => {
                let entries: Vec<_> = log.entries().collect();
                prop_assert!(entries.iter().all(|&(t, c)| c >= 1 && t <= now));
                prop_assert!(
                    entries.windows(2).all(|w| w[0].0 < w[1].0),
                    "log out of order"
                );
                prop_assert_eq!(log.newest(), entries.last().map(|e| e.0));
                // Only entries inside the window as of the last commit are kept.
                if let Some(at) = self.committed_at {
                    prop_assert!(
                        entries
                            .iter()
                            .all(|&(t, _)| at < q.window || t > at - q.window),
                        "the log kept an entry that left the window: {:?} at {}",
                        entries,
                        at
                    );
                }
                let bound = if self.charged {
                    q.limit.max(sliding_window::MAX_LIMIT)
                } else {
                    q.limit
                };
                if !self.switched {
                    prop_assert!(entries.len() as u64 <= bound, "log longer than the limit");
                }
                let total: u128 = entries.iter().map(|e| u128::from(e.1)).sum();
                prop_assert!(total <= u128::from(USAGE_MAX.max(q.limit)));
            }
            CounterState::FixedWindow(w) => {
                prop_assert!(w.start <= now);
                if !self.switched {
                    prop_assert_eq!(w.start % q.window, 0);
                    let bound = if self.charged { USAGE_MAX } else { q.limit };
                    prop_assert!(w.count <= bound);
                }
            }
        }

        // From expires_at on, the state is the empty state...
        let empty = CounterState::empty(self.algorithm);
        let expires = self.state.expires_at(&q);
        let from = expires.max(now);
        for t in [from, from + 1, from + q.window, from + 1_000_000_007] {
            for c in probe_costs(cap) {
                prop_assert_eq!(
                    self.state.check(&q, t, c),
                    empty.check(&q, t, c),
                    "not empty at {} (expires_at {}) for cost {}",
                    t,
                    expires,
                    c
                );
            }
        }
        // ...and not a microsecond earlier, while it holds anything.
        let holds = match &self.state {
            CounterState::FixedWindow(w) => w.count > 0 && w.start % q.window == 0,
            CounterState::Gcra(_) | CounterState::SlidingWindow(_) => true,
        };
        if expires > now && holds {
            prop_assert_ne!(
                self.state.check(&q, expires - 1, cap),
                empty.check(&q, expires - 1, cap),
                "already empty before expires_at {}",
                expires
            );
        }
        Ok(())
    }

    /// Property 2, the safety contract under the current quota: for every cost admitted
    /// pre-paid (at `h[j]`), what was recorded up to and including it, post-paid charges
    /// (debt) included, fits the algorithm's bound. So a debt holds back exactly as much as admitted usage.
    fn check_history(&self) -> Result<(), TestCaseError> {
        let q = self.quota;
        let h = &self.admitted;
        prop_assert!(h.windows(2).all(|w| w[0].0 <= w[1].0));
        for (j, &(end, _, prepaid)) in h.iter().enumerate() {
            if !prepaid {
                continue;
            }
            match self.algorithm {
                // The cost recorded in `[t1, end]`, from every `h[i]` at `t1` on, is at most
                // `burst + (end - t1) / T`.
                Algorithm::TokenBucket => {
                    let t = gcra::interval(&q);
                    let mut sum = 0u128;
                    for &(t1, c, _) in h[..=j].iter().rev() {
                        sum += u128::from(c);
                        let bound = u128::from(q.burst + (end - t1) / t);
                        prop_assert!(sum <= bound, "{} in [{}, {}] > {}", sum, t1, end, bound);
                    }
                }
                Algorithm::SlidingWindow => {
                    let sum: u128 = h[..=j]
                        .iter()
                        .filter(|&&(t, _, _)| t + q.window > end)
                        .map(|&(_, c, _)| u128::from(c))
                        .sum();
                    prop_assert!(
                        sum <= u128::from(q.limit),
                        "{} in the window to {}",
                        sum,
                        end
                    );
                }
                Algorithm::FixedWindow => {
                    let sum: u128 = h[..=j]
                        .iter()
                        .filter(|&&(t, _, _)| t / q.window == end / q.window)
                        .map(|&(_, c, _)| u128::from(c))
                        .sum();
                    prop_assert!(
                        sum <= u128::from(q.limit),
                        "{} in the window of {}",
                        sum,
                        end
                    );
                }
            }
        }
        Ok(())
    }
}

/// Drives one algorithm and its reference model through `steps`.
fn against_reference(
    algorithm: Algorithm,
    quota: Quota,
    start: Micros,
    steps: &[Step],
) -> Result<(), TestCaseError> {
    let mut run = Run::new(algorithm, quota, start);
    let mut model = reference(algorithm, &quota);
    run.check_state()?;
    for &step in steps {
        run.step(step, Some(model.as_mut()))?;
    }
    run.check_history()
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn token_bucket_matches_reference(quota in quota(), start in start(), steps in steps()) {
        against_reference(Algorithm::TokenBucket, quota, start, &steps)?;
    }

    #[test]
    fn sliding_window_matches_reference(quota in quota(), start in start(), steps in steps()) {
        against_reference(Algorithm::SlidingWindow, quota, start, &steps)?;
    }

    #[test]
    fn fixed_window_matches_reference(quota in quota(), start in start(), steps in steps()) {
        against_reference(Algorithm::FixedWindow, quota, start, &steps)?;
    }

    /// A config reload may change a limit's quota and keep its counters: every contract that
    /// does not depend on the past quota must still hold, from the first request after it.
    #[test]
    fn quota_change_keeps_contracts(
        algorithm in algorithm(),
        first in quota(),
        second in quota(),
        start in start(),
        before in steps(),
        after in steps(),
    ) {
        let mut run = Run::new(algorithm, first, start);
        let mut model = reference(algorithm, &first);
        for &step in &before {
            run.step(step, Some(model.as_mut()))?;
        }
        run.check_history()?;
        run.switch(second);
        run.check_state()?;
        for &step in &after {
            run.step(step, None)?;
        }
        run.check_history()?;
    }

    #[test]
    fn interval_and_tolerance(quota in quota()) {
        let t = gcra::interval(&quota);
        // The smallest interval that spends no more than the window on `limit` units.
        prop_assert!(t >= 1);
        prop_assert!(t * quota.limit >= quota.window);
        prop_assert!(t == 1 || (t - 1) * quota.limit < quota.window);
        prop_assert_eq!(gcra::tolerance(&quota), t * quota.burst);
    }
}

#[test]
fn sliding_window_log_is_pruned_and_merged() {
    let quota = Quota::new(3, 10);
    let mut log = sliding_window::Log::default();
    for (now, cost) in [(5, 1), (5, 1), (12, 1)] {
        assert!(sliding_window::check(&log, &quota, now, cost).allowed);
        sliding_window::commit(&mut log, &quota, now, cost);
    }
    assert_eq!(log.entries().collect::<Vec<_>>(), [(5, 2), (12, 1)]);
    sliding_window::commit(&mut log, &quota, 15, 0);
    assert_eq!(log.entries().collect::<Vec<_>>(), [(12, 1)]);
}

/// After the limit shrinks, the entries over the new limit must leave the window too before a
/// rejected cost fits.
#[test]
fn sliding_window_retry_after_a_smaller_limit() {
    let mut log = sliding_window::Log::default();
    let big = Quota::new(5, 100);
    for now in 0..5 {
        sliding_window::commit(&mut log, &big, now, 1);
    }
    let small = Quota::new(2, 100);
    let v = sliding_window::check(&log, &small, 10, 1);
    assert!(!v.allowed);
    // Used 5, limit 2: four entries must leave; the fourth (at 3) leaves at 103.
    assert_eq!(v.retry_after, RetryAfter::After(93));
    assert!(sliding_window::check(&log, &small, 103, 1).allowed);
    assert!(!sliding_window::check(&log, &small, 102, 1).allowed);
}

/// After the burst shrinks, the TAT may be beyond the tolerance: the counter is in debt, so a
/// cost of 0 is refused until the debt is paid, as after a post-paid charge.
#[test]
fn token_bucket_zero_cost_after_a_smaller_burst() {
    let mut tat = gcra::Tat::default();
    let big = Quota::new(10, 10);
    gcra::commit(&mut tat, &big, 0, 10);
    let small = Quota::new(2, 2);
    let look = gcra::check(&tat, &small, 0, 0);
    assert!(!look.allowed);
    assert_eq!(look.remaining, 0);
    assert_eq!(look.reset_after, 10);
    assert_eq!(look.retry_after, RetryAfter::After(8));
    assert!(gcra::check(&tat, &small, 8, 0).allowed);
    let v = gcra::check(&tat, &small, 0, 1);
    assert_eq!(v.retry_after, RetryAfter::After(9));
}

#[test]
fn fixed_window_is_aligned_to_the_epoch() {
    let quota = Quota::new(2, 60_000_000);
    let mut w = fixed_window::Window::default();
    let now = 1_700_000_010_000_000; // 30 s into a minute
    fixed_window::commit(&mut w, &quota, now, 2);
    assert_eq!(w.start, 1_699_999_980_000_000);
    let v = fixed_window::check(&w, &quota, now, 1);
    assert_eq!(v.retry_after, RetryAfter::After(30_000_000));
    assert!(fixed_window::check(&w, &quota, now + 30_000_000, 2).allowed);
}
