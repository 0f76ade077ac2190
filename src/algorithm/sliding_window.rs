//! An exact sliding window: a log of admitted `(instant, cost)` pairs.
//!
//! A cost `c` at `now` is admitted when the costs admitted in `(now - window, now]` plus `c`
//! fit in `limit`. The log keeps only entries inside the window, and every entry has a cost of
//! at least 1, so it never holds more than `limit` entries: memory is bounded by the limit.
//! Entries at the same instant are merged, which bounds it further by the window in
//! microseconds. (After a config reload lowers the limit, the log may still hold up to the old
//! limit's entries until they leave the window; a rejection's `retry_after` waits for them.)

use std::collections::VecDeque;

use super::{Micros, Quota, RetryAfter, Verdict};

/// Admitted costs, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Log {
    entries: VecDeque<(Micros, u64)>,
}

impl Log {
    /// The instant of the newest entry.
    pub fn newest(&self) -> Option<Micros> {
        self.entries.back().map(|e| e.0)
    }

    /// Entries, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = (Micros, u64)> + '_ {
        self.entries.iter().copied()
    }

    /// Entries still inside the window that ends at `now`.
    fn live(&self, quota: &Quota, now: Micros) -> impl Iterator<Item = (Micros, u64)> + '_ {
        let window = quota.window;
        let horizon = now.saturating_sub(window);
        self.entries
            .iter()
            .copied()
            .filter(move |&(t, _)| t > horizon || now < window)
    }
}

pub fn check(state: &Log, quota: &Quota, now: Micros, cost: u64) -> Verdict {
    let used: u64 = state.live(quota, now).map(|(_, c)| c).sum();
    let left = quota.limit.saturating_sub(used);
    let reset_of =
        |newest: Option<Micros>| newest.map_or(0, |t| (t + quota.window).saturating_sub(now));
    if cost > quota.limit {
        return Verdict {
            allowed: false,
            remaining: left,
            reset_after: reset_of(state.live(quota, now).last().map(|e| e.0)),
            retry_after: RetryAfter::Never,
        };
    }
    if cost <= left {
        let newest = if cost > 0 {
            Some(now)
        } else {
            state.live(quota, now).last().map(|e| e.0)
        };
        return Verdict {
            allowed: true,
            remaining: left - cost,
            reset_after: reset_of(newest),
            retry_after: RetryAfter::Now,
        };
    }
    // Rejected: wait until enough of the oldest entries leave the window. `used` may exceed the
    // limit (a config reload shrank it), so what must leave is everything above `limit - cost`.
    let mut need = used.saturating_add(cost) - quota.limit;
    let mut retry = 0;
    for (t, c) in state.live(quota, now) {
        retry = t + quota.window - now;
        if c >= need {
            break;
        }
        need -= c;
    }
    Verdict {
        allowed: false,
        remaining: left,
        reset_after: reset_of(state.live(quota, now).last().map(|e| e.0)),
        retry_after: RetryAfter::After(retry),
    }
}

pub fn commit(state: &mut Log, quota: &Quota, now: Micros, cost: u64) {
    let horizon = now.saturating_sub(quota.window);
    if now >= quota.window {
        while state.entries.front().is_some_and(|&(t, _)| t <= horizon) {
            state.entries.pop_front();
        }
    }
    if cost == 0 {
        return;
    }
    match state.entries.back_mut() {
        Some((t, c)) if *t == now => *c = c.saturating_add(cost),
        _ => state.entries.push_back((now, cost)),
    }
}
