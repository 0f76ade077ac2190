//! The over-limit cache: rejections answered without asking Redis.
//!
//! When Redis rejects cost `c` on a counter with "retry after `r`", every request of cost
//! `≥ c` on that counter is rejected until `r` has passed, whatever other replicas do
//! meanwhile: they can only consume more, and `r` is by construction the *earliest* instant
//! enough frees up (GCRA: the TAT only moves forward; sliding window: entries leave the log
//! no sooner; fixed window: the count only grows until the window ends). So the replica may
//! answer those rejections itself until `sent + r`, where `sent` is when the call left this
//! replica: Redis decided no earlier than that, so the cached entry expires no later than
//! the real one and never rejects a request Redis would have admitted.
//!
//! Two things can free capacity early and make a cached rejection stale: a config reload
//! that raises the limit (entries remember the quota and are ignored when it differs) and a
//! cross-slot refund on Redis Cluster (a false rejection for at most `r`; see
//! docs/tradeoffs.md).
//!
//! A plan carrying a post-paid check (usage that already happened) always goes to Redis, which
//! records it whatever the verdict. Its debt only moves the real retry time later, so entries
//! cached before it stay on the safe side.
//!
//! Bounded: at most `capacity` entries; expired ones are swept when a shard fills, and a
//! rejection that finds no room is simply not cached.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::algorithm::{Quota, RetryAfter, Verdict};
use crate::store::{CounterKey, Plan};

const SHARDS: usize = 16;

pub struct OverLimitCache {
    shards: Box<[Mutex<HashMap<CounterKey, Entry>>]>,
    per_shard: usize,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The smallest cost known to be rejected until `until`.
    min_cost: u64,
    until: Instant,
    quota: Quota,
    remaining: u64,
    reset_at: Instant,
}

impl OverLimitCache {
    pub fn new(capacity: usize) -> Self {
        OverLimitCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: &CounterKey) -> &Mutex<HashMap<CounterKey, Entry>> {
        let h = (key.tag as u64) ^ key.limit;
        &self.shards[(h % SHARDS as u64) as usize]
    }

    /// Rejects `plan` from the cache if one of its enforced checks is known to be over its
    /// limit at `now`. Fills every verdict and returns true then. A plan with a post-paid
    /// check is never answered here: its usage must reach Redis, rejected or not.
    pub fn reject(&self, plan: &mut Plan, now: Instant) -> bool {
        if plan.checks.iter().any(|c| c.post_paid) {
            return false;
        }
        let mut hit = false;
        for check in plan.checks.iter_mut() {
            if !check.enforce || check.cost == 0 {
                continue;
            }
            let entry = {
                let shard = self
                    .shard(&check.key)
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                shard.get(&check.key).copied()
            };
            let Some(e) = entry else { continue };
            if e.quota != check.quota || check.cost < e.min_cost || now >= e.until {
                continue;
            }
            check.verdict = Some(Verdict {
                allowed: false,
                remaining: e.remaining,
                reset_after: micros(e.reset_at.saturating_duration_since(now)),
                retry_after: RetryAfter::After(micros(e.until - now).max(1)),
            });
            hit = true;
        }
        if !hit {
            return false;
        }
        for check in plan.checks.iter_mut().filter(|c| c.verdict.is_none()) {
            // Not consulted: reported as not limiting.
            check.verdict = Some(Verdict {
                allowed: true,
                remaining: check.quota.limit,
                reset_after: 0,
                retry_after: RetryAfter::Now,
            });
        }
        plan.admitted = false;
        true
    }

    /// Remembers the rejections of a plan the store decided, for calls sent at `sent`.
    pub fn remember(&self, plan: &Plan, sent: Instant) {
        for check in plan.checks.iter().filter(|c| c.enforce && c.cost > 0) {
            let Some(v) = check.verdict else { continue };
            let RetryAfter::After(r) = v.retry_after else {
                continue;
            };
            if v.allowed {
                continue;
            }
            let entry = Entry {
                min_cost: check.cost,
                until: sent + Duration::from_micros(r),
                quota: check.quota,
                remaining: v.remaining,
                reset_at: sent + Duration::from_micros(v.reset_after),
            };
            let mut shard = self
                .shard(&check.key)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if shard.len() >= self.per_shard && !shard.contains_key(&check.key) {
                shard.retain(|_, e| e.until > sent);
                if shard.len() >= self.per_shard {
                    continue;
                }
            }
            shard.insert(check.key, entry);
        }
    }

    /// Forgets the rejections cached for `keys` (their counters were reset).
    pub fn forget(&self, keys: &[CounterKey]) {
        for key in keys {
            self.shard(key)
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(key);
        }
    }

    pub fn clear(&self) {
        for s in self.shards.iter() {
            s.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::algorithm::Algorithm;
    use crate::store::Check;

    fn plan(cost: u64, limit: u64) -> Plan {
        Plan {
            checks: vec![Check {
                key: CounterKey { tag: 1, limit: 2 },
                algorithm: Algorithm::TokenBucket,
                quota: Quota::new(limit, 1_000_000),
                cost,
                enforce: true,
                post_paid: false,
                verdict: None,
            }],
            admitted: false,
        }
    }

    fn rejected(cost: u64, retry_us: u64) -> Plan {
        let mut p = plan(cost, 10);
        p.checks[0].verdict = Some(Verdict {
            allowed: false,
            remaining: 0,
            reset_after: 2 * retry_us,
            retry_after: RetryAfter::After(retry_us),
        });
        p
    }

    #[test]
    fn rejects_costs_at_least_the_rejected_one_until_retry_after() {
        let cache = OverLimitCache::new(100);
        let t0 = Instant::now();
        cache.remember(&rejected(3, 1000), t0);
        let us = Duration::from_micros;
        assert!(cache.reject(&mut plan(3, 10), t0 + us(999)));
        assert!(cache.reject(&mut plan(5, 10), t0 + us(10)));
        let mut p = plan(3, 10);
        assert!(cache.reject(&mut p, t0 + us(400)));
        assert_eq!(
            p.checks[0].verdict.unwrap().retry_after,
            RetryAfter::After(600)
        );
        assert!(
            !cache.reject(&mut plan(2, 10), t0 + us(10)),
            "a smaller cost may fit"
        );
        assert!(
            !cache.reject(&mut plan(3, 10), t0 + us(1000)),
            "not at or after retry time"
        );
        assert!(
            !cache.reject(&mut plan(3, 20), t0 + us(10)),
            "a changed quota ignores it"
        );
        let mut shadow = plan(3, 10);
        shadow.checks[0].enforce = false;
        assert!(
            !cache.reject(&mut shadow, t0 + us(10)),
            "shadow checks never reject"
        );
    }

    /// A plan that reports usage (a post-paid check) must reach Redis to be recorded: the cache
    /// never answers it, however rejected its counters are.
    #[test]
    fn never_answers_a_plan_with_a_post_paid_check() {
        let cache = OverLimitCache::new(100);
        let t0 = Instant::now();
        cache.remember(&rejected(3, 1000), t0);
        let mut report = plan(5, 10);
        report.checks[0].post_paid = true;
        assert!(!cache.reject(&mut report, t0));
        assert!(report.checks[0].verdict.is_none());
    }

    #[test]
    fn stays_bounded() {
        let cache = OverLimitCache::new(32);
        let t0 = Instant::now();
        for tag in 0..10_000u128 {
            let mut p = rejected(1, 1_000_000);
            p.checks[0].key.tag = tag;
            cache.remember(&p, t0);
        }
        assert!(cache.len() <= 32, "{}", cache.len());
    }
}
