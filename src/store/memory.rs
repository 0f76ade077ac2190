//! The in-memory store: the embedded default for a single replica.
//!
//! Counters live in a fixed number of shards, each a `HashMap` behind its own
//! `std::sync::Mutex`. A plan locks the shards its counters live in, in ascending shard order
//! (so two plans can never deadlock), decides every check, commits all or nothing and unlocks.
//! Critical sections are short and never `.await`, which is why a blocking mutex is right here.
//! There is no global lock: unrelated keys contend only when they hash to the same shard.
//!
//! Memory is bounded. Each counter records the instant from which its state equals the empty
//! state; when a shard grows past its sweep threshold it drops every such counter and sets the
//! threshold to twice what is left. So a shard holds at most `max(2 × live, 64)` counters,
//! where `live` counts counters whose state still matters, and never more than its share of
//! `max_counters`: past that a new counter is refused with [`StoreError::Full`] rather than evicting
//! live state, which would over-admit. A full store is not an outage: the failure policy does
//! not apply, and only the request that needed a new counter is refused. A sliding-window counter holds at most `limit` log entries on top.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{Capacity, Clock, CounterKey, Plan, Store, StoreError, plan};
use crate::algorithm::{CounterState, Micros};

/// Sweep a shard once it holds this many counters, at the least.
const MIN_SWEEP_THRESHOLD: usize = 64;

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    clock: Clock,
    max_per_shard: usize,
    max_counters: usize,
}

struct Shard {
    counters: HashMap<CounterKey, Slot>,
    sweep_at: usize,
}

struct Slot {
    state: CounterState,
    /// From this instant on, `state` is equivalent to the empty state.
    expires_at: Micros,
}

impl MemoryStore {
    /// A store with `max_counters` counters at most, over a shard count suited to the machine.
    pub fn new(clock: Clock, max_counters: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        let shard_count = (cores * 16).next_power_of_two();
        Self::with_shards(clock, max_counters, shard_count)
    }

    pub fn with_shards(clock: Clock, max_counters: usize, shard_count: usize) -> Self {
        let shard_count = shard_count.max(1);
        let shards = (0..shard_count)
            .map(|_| {
                Mutex::new(Shard {
                    counters: HashMap::new(),
                    sweep_at: MIN_SWEEP_THRESHOLD,
                })
            })
            .collect();
        MemoryStore {
            shards,
            clock,
            max_per_shard: max_counters.div_ceil(shard_count).max(1),
            max_counters,
        }
    }

    /// How many counters are held now, expired or not (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).counters.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_of(&self, key: &CounterKey) -> usize {
        // The tag is a uniform hash already; fold the limit id in so the limits of a tag
        // spread too.
        let mixed = (key.tag as u64) ^ ((key.tag >> 64) as u64) ^ key.limit.rotate_left(17);
        (mixed % self.shards.len() as u64) as usize
    }

    fn apply_plan(&self, plan: &mut Plan, now: Micros) -> Result<(), StoreError> {
        match plan.checks.len() {
            0 => {
                plan.admitted = true;
                Ok(())
            }
            1 => {
                let idx = self.shard_of(&plan.checks[0].key);
                let mut shard = lock(&self.shards[idx]);
                let mut shards = [(idx, &mut *shard)];
                self.decide(plan, now, &mut shards)
            }
            _ => {
                let mut idx: Vec<usize> =
                    plan.checks.iter().map(|c| self.shard_of(&c.key)).collect();
                idx.sort_unstable();
                idx.dedup();
                // Ascending order: two plans that share shards lock them in the same order.
                let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> =
                    idx.iter().map(|&i| (i, lock(&self.shards[i]))).collect();
                let mut shards: Vec<(usize, &mut Shard)> =
                    guards.iter_mut().map(|(i, g)| (*i, &mut **g)).collect();
                self.decide(plan, now, &mut shards)
            }
        }
    }

    /// Decides and commits one plan with its shards locked.
    fn decide(
        &self,
        plan: &mut Plan,
        now: Micros,
        shards: &mut [(usize, &mut Shard)],
    ) -> Result<(), StoreError> {
        let admitted = {
            let shards = &*shards;
            plan::check_all(&mut plan.checks, now, |check| {
                find_ref(shards, self.shard_of(&check.key))
                    .counters
                    .get(&check.key)
                    .filter(|slot| slot.expires_at > now)
                    .map(|slot| &slot.state)
            })
        };
        plan.admitted = admitted;
        // Make room first, so a full store commits nothing rather than part of the plan.
        for check in plan::to_commit(&plan.checks, admitted) {
            let shard = find(shards, self.shard_of(&check.key));
            if !shard.counters.contains_key(&check.key) {
                self.make_room(shard, now)?;
            }
        }
        for check in plan::to_commit(&plan.checks, admitted) {
            let shard = find(shards, self.shard_of(&check.key));
            let slot = shard.counters.entry(check.key).or_insert_with(|| Slot {
                state: CounterState::empty(check.algorithm),
                expires_at: 0,
            });
            slot.expires_at = plan::commit(&mut slot.state, slot.expires_at > now, check, now);
        }
        let shards = &*shards;
        plan::settle(&mut plan.checks, now, |check| {
            find_ref(shards, self.shard_of(&check.key))
                .counters
                .get(&check.key)
                .map(|slot| &slot.state)
        });
        Ok(())
    }

    fn make_room(&self, shard: &mut Shard, now: Micros) -> Result<(), StoreError> {
        if shard.counters.len() < shard.sweep_at && shard.counters.len() < self.max_per_shard {
            return Ok(());
        }
        shard.counters.retain(|_, slot| slot.expires_at > now);
        shard.sweep_at = (shard.counters.len() * 2).max(MIN_SWEEP_THRESHOLD);
        if shard.counters.len() >= self.max_per_shard {
            return Err(StoreError::Full {
                max: self.max_counters,
            });
        }
        Ok(())
    }
}

/// Where shard `idx` is among the locked ones. Every check's shard was locked by the caller,
/// so the search always succeeds; the fallback to the first one only avoids a panic path.
fn locked(shards: &[(usize, &mut Shard)], idx: usize) -> usize {
    shards.iter().position(|(i, _)| *i == idx).unwrap_or(0)
}

fn find<'a>(shards: &'a mut [(usize, &mut Shard)], idx: usize) -> &'a mut Shard {
    let pos = locked(shards, idx);
    &mut *shards[pos].1
}

fn find_ref<'a>(shards: &'a [(usize, &mut Shard)], idx: usize) -> &'a Shard {
    &*shards[locked(shards, idx)].1
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A poisoned shard only means another thread panicked while holding it; every write
    // to a shard is a single assignment, so its state is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store for MemoryStore {
    /// Integer microseconds in a `u64`, with headroom so that a sum of two figures never
    /// overflows.
    const CAPACITY: Capacity = Capacity {
        quota: 1 << 62,
        span: 1 << 62,
    };

    async fn apply(&self, batch: &mut [Plan]) -> Result<(), StoreError> {
        let now = self.clock.now();
        for plan in batch.iter_mut() {
            self.apply_plan(plan, now)?;
        }
        Ok(())
    }

    async fn reset(&self, keys: &[CounterKey]) -> Result<(), StoreError> {
        for key in keys {
            lock(&self.shards[self.shard_of(key)]).counters.remove(key);
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;
    use crate::algorithm::{Algorithm, Quota};
    use crate::store::Check;

    const SEC: u64 = 1_000_000;

    fn check(tag: u128, limit: u64, window: u64, cost: u64) -> Check {
        Check {
            key: CounterKey { tag, limit: 1 },
            algorithm: Algorithm::FixedWindow,
            quota: Quota::new(limit, window),
            cost,
            enforce: true,
            post_paid: false,
            verdict: None,
        }
    }

    fn run(store: &MemoryStore, checks: Vec<Check>) -> Plan {
        let mut batch = [Plan {
            checks,
            admitted: false,
        }];
        let now = store.clock.now();
        store.apply_plan(&mut batch[0], now).unwrap();
        let [plan] = batch;
        plan
    }

    #[test]
    fn a_rejected_plan_commits_nothing_on_any_shard() {
        let (clock, _) = Clock::manual(1000 * SEC);
        let store = MemoryStore::with_shards(clock, 1000, 8);
        // Find two tags on different shards.
        let a = 1u128;
        let b = (2..1000u128)
            .find(|&t| {
                store.shard_of(&CounterKey { tag: t, limit: 1 })
                    != store.shard_of(&CounterKey { tag: a, limit: 1 })
            })
            .unwrap();
        assert!(
            run(
                &store,
                vec![check(a, 10, 60 * SEC, 1), check(b, 2, 60 * SEC, 2)]
            )
            .admitted
        );
        // b is full now: a plan over both is rejected and a is not charged.
        let plan = run(
            &store,
            vec![check(a, 10, 60 * SEC, 5), check(b, 2, 60 * SEC, 1)],
        );
        assert!(!plan.admitted);
        assert!(
            plan.checks[0].verdict.unwrap().allowed,
            "a alone would pass"
        );
        let plan = run(&store, vec![check(a, 10, 60 * SEC, 9)]);
        assert!(plan.admitted, "a still has 9 left");
    }

    /// A rejected plan commits its post-paid checks (debt) and nothing else.
    #[test]
    fn a_rejected_plan_still_records_its_post_paid_checks() {
        let (clock, _) = Clock::manual(1000 * SEC);
        let store = MemoryStore::with_shards(clock, 1000, 8);
        assert!(run(&store, vec![check(1, 10, 60 * SEC, 7)]).admitted);
        let mut report = check(1, 10, 60 * SEC, 5);
        report.post_paid = true;
        // Rejected by the full counter 2, and by its own 5 > 3 left: recorded all the same.
        let plan = run(
            &store,
            vec![report, check(2, 1, 60 * SEC, 2), check(3, 10, 60 * SEC, 1)],
        );
        assert!(!plan.admitted);
        let peek = run(&store, vec![check(1, 10, 60 * SEC, 0)]);
        assert!(!peek.admitted, "12 of 10: in debt");
        assert!(
            run(&store, vec![check(3, 10, 60 * SEC, 10)]).admitted,
            "the pre-paid check 3 of the rejected plan was not charged"
        );
    }

    #[test]
    fn shadow_checks_do_not_reject() {
        let (clock, _) = Clock::manual(1000 * SEC);
        let store = MemoryStore::with_shards(clock, 1000, 8);
        let mut shadow = check(7, 1, 60 * SEC, 2);
        shadow.enforce = false;
        let plan = run(&store, vec![check(8, 10, 60 * SEC, 2), shadow]);
        assert!(plan.admitted);
        assert!(!plan.checks[1].verdict.unwrap().allowed);
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_distinct_keys() {
        let (clock, now) = Clock::manual(1000 * SEC);
        let store = MemoryStore::with_shards(clock, 1_000_000, 4);
        // 100 new keys per second, each on a 1 s window, for 200 s: 20,000 keys in all, at
        // most ~100 alive at once.
        for step in 0..200u64 {
            now.store((1000 + step) * SEC, std::sync::atomic::Ordering::Release);
            for i in 0..100u128 {
                let tag = u128::from(step) * 1000 + i;
                assert!(run(&store, vec![check(tag, 5, SEC, 1)]).admitted);
            }
        }
        // Bound: each shard holds at most max(2 × its live counters, 64), so the 4 shards
        // together at most 2 × 100 + 4 × 64, against 20,000 keys ever seen.
        let len = store.len();
        assert!(len <= 2 * 100 + 4 * 64, "{len} counters held");
    }

    #[test]
    fn a_full_store_refuses_new_counters_but_keeps_serving_old_ones() {
        let (clock, _) = Clock::manual(1000 * SEC);
        let store = MemoryStore::with_shards(clock, 4, 1);
        for tag in 0..4 {
            assert!(run(&store, vec![check(tag, 5, 3600 * SEC, 1)]).admitted);
        }
        let mut batch = [Plan {
            checks: vec![check(99, 5, 3600 * SEC, 1)],
            admitted: false,
        }];
        let err = store.apply_plan(&mut batch[0], 1000 * SEC).unwrap_err();
        assert!(matches!(err, StoreError::Full { max: 4 }));
        assert!(
            !err.is_transient(),
            "a full store is not an outage: no failure policy may answer it"
        );
        assert!(run(&store, vec![check(0, 5, 3600 * SEC, 1)]).admitted);
    }

    #[test]
    fn threads_hammering_one_counter_admit_exactly_the_limit() {
        let (clock, _) = Clock::manual(1000 * SEC);
        let store = Arc::new(MemoryStore::with_shards(clock, 1000, 16));
        let admitted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        // Two limits on different shards, locked in order by every thread.
                        if run(
                            &store,
                            vec![check(1, 5000, 60 * SEC, 1), check(2, 700, 60 * SEC, 1)],
                        )
                        .admitted
                        {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 700);
    }
}
