//! An exact sliding window: a log of admitted `(instant, cost)` pairs.
//!
//! A cost `c` at `now` is admitted when the costs admitted in `(now - window, now]` plus `c`
//! fit in `limit`. The log keeps only entries inside the window (pruned on commit), every entry
//! has a cost of at least 1 and instants strictly increase (a commit at or before the newest
//! entry's instant merges into it), so admitted costs alone never make more than `limit`
//! entries. (After a config reload lowers the limit, the log may still hold up to the old
//! limit's entries until they leave the window; a rejection's `retry_after` waits for them.)
//!
//! # Debt
//!
//! A post-paid charge is committed whatever the verdict, so the live total may exceed the
//! limit (up to [`USAGE_MAX`]); every cost, 0 included, is then refused until enough entries
//! leave (a cost is allowed iff `used + cost <= limit`). Debt could add entries beyond the
//! limit, so a commit that would make more than `max(limit, MAX_LIMIT)` entries first folds
//! the oldest entry into the next one: its cost then counts as if charged at the next entry's
//! instant and leaves the window later, never sooner (erring towards holding back). With
//! running totals that is dropping the first entry and keeping the base.
//!
//! # Cost per decision
//!
//! Each entry stores the running total of the costs up to it (on top of the log's `base`,
//! modulo 2^52) instead of its own cost, so what any range of entries admitted is a difference
//! of two totals. Where the window starts, how much it holds, and which entry must leave before
//! a rejected cost fits are binary searches: a decision is O(log n), never a scan of the log.
//! `lua/sliding_window.lua` keeps the same log, in the same order, in a Redis string (see its
//! header and [`Log::encoded`]); there a decision reads O(log n) entries and its write copies
//! the value once. [`MAX_LIMIT`] caps the limit (and so the log) the config accepts.

use std::collections::VecDeque;

use super::{Micros, Quota, RetryAfter, USAGE_MAX, Verdict};

/// The largest limit a sliding window accepts (config files and request overrides): its log
/// holds up to this many entries (26 bytes each in Redis), and this bounds what one decision
/// costs inside Redis, where the script reads and rewrites the log's value whole: about 110 µs
/// at the cap when it admits, 50 µs when it rejects (tests/redis_heavy_key.rs,
/// `cost_per_decision`). Larger limits: `token_bucket` or `fixed_window`, whose state is one
/// number whatever the limit.
pub const MAX_LIMIT: u64 = 500;

/// Running totals are kept modulo 2^52, exact in Lua's doubles; the live part of a log holds
/// at most [`USAGE_MAX`] = 2^51 (debt included), so differences stay exact.
const TOTAL_MODULUS: u64 = 1 << 52;

/// Admitted costs, oldest first, as running totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Log {
    /// The running total before the first entry (0 for a log that was emptied).
    base: u64,
    /// `(instant, running total up to and including this entry)`, instants increasing.
    entries: VecDeque<(Micros, u64)>,
}

fn add(total: u64, cost: u64) -> u64 {
    (total + cost % TOTAL_MODULUS) % TOTAL_MODULUS
}

fn diff(later: u64, earlier: u64) -> u64 {
    (later + TOTAL_MODULUS - earlier) % TOTAL_MODULUS
}

/// The first `i` in `lo..hi` for which `pred(i)` holds (false, then true); `hi` if none.
fn search(mut lo: usize, mut hi: usize, pred: impl Fn(usize) -> bool) -> usize {
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

impl Log {
    /// The instant of the newest entry.
    pub fn newest(&self) -> Option<Micros> {
        self.entries.back().map(|e| e.0)
    }

    /// Entries as `(instant, cost)`, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = (Micros, u64)> + '_ {
        let totals = std::iter::once(self.base).chain(self.entries.iter().map(|e| e.1));
        self.entries
            .iter()
            .zip(totals)
            .map(|(&(t, total), before)| (t, diff(total, before)))
    }

    /// The value `lua/sliding_window.lua` stores for this log: `"sw2:"`, the base as 13 hex
    /// digits, then per entry its instant and running total as 13 hex digits each.
    pub fn encoded(&self) -> String {
        let mut out = String::with_capacity(17 + 26 * self.entries.len());
        out.push_str(&format!("sw2:{:013x}", self.base));
        for (t, total) in &self.entries {
            out.push_str(&format!("{t:013x}{total:013x}"));
        }
        out
    }

    /// The running total before entry `i`.
    fn total_before(&self, i: usize) -> u64 {
        match i.checked_sub(1) {
            None => self.base,
            Some(k) => self.entries[k].1,
        }
    }

    /// The index of the first entry inside the window that ends at `now`: after the horizon
    /// `now - window` (saturating), or any entry while `now < window`. `len` when none is.
    fn first_live(&self, quota: &Quota, now: Micros) -> usize {
        if now < quota.window {
            return 0;
        }
        let horizon = now - quota.window;
        self.entries.partition_point(|&(t, _)| t <= horizon)
    }

    /// The first live entry's index, the live entries' total cost, and the newest instant.
    fn live(&self, quota: &Quota, now: Micros) -> (usize, u64, Option<Micros>) {
        let first = self.first_live(quota, now);
        match self.entries.back() {
            Some(&(newest, total)) if first < self.entries.len() => {
                (first, diff(total, self.total_before(first)), Some(newest))
            }
            _ => (first, 0, None),
        }
    }
}

pub fn check(state: &Log, quota: &Quota, now: Micros, cost: u64) -> Verdict {
    let (first, used, newest) = state.live(quota, now);
    let left = quota.limit.saturating_sub(used);
    let reset_of =
        |newest: Option<Micros>| newest.map_or(0, |t| (t + quota.window).saturating_sub(now));
    if cost > quota.limit {
        return Verdict {
            allowed: false,
            remaining: left,
            reset_after: reset_of(newest),
            retry_after: RetryAfter::Never,
        };
    }
    if used.saturating_add(cost) <= quota.limit {
        // The commit merges into the newest entry when the clock is not past it.
        let newest = if cost > 0 {
            Some(newest.map_or(now, |t| t.max(now)))
        } else {
            newest
        };
        return Verdict {
            allowed: true,
            remaining: left - cost,
            reset_after: reset_of(newest),
            retry_after: RetryAfter::Now,
        };
    }
    // Rejected: wait until enough of the oldest entries leave the window. `used` may exceed the
    // limit (a config reload shrank it), so what must leave is everything above `limit - cost`:
    // the first live entry whose running total (from the window's start) reaches `need`.
    let need = used.saturating_add(cost) - quota.limit;
    let before = state.total_before(first);
    let k = search(first, state.entries.len(), |i| {
        diff(state.entries[i].1, before) >= need
    });
    let retry = state
        .entries
        .get(k)
        .map_or(0, |&(t, _)| t + quota.window - now);
    Verdict {
        allowed: false,
        remaining: left,
        reset_after: reset_of(newest),
        retry_after: RetryAfter::After(retry),
    }
}

/// Records `cost` at `now` after pruning what left the window: after [`check`] admitted it, or
/// whatever the verdict for a post-paid charge (into debt, the live total up to
/// [`USAGE_MAX`], the log folded to at most `max(limit, MAX_LIMIT)` entries).
pub fn commit(state: &mut Log, quota: &Quota, now: Micros, cost: u64) {
    if now >= quota.window {
        let first = state.first_live(quota, now);
        if first == state.entries.len() {
            *state = Log::default();
        } else {
            state.base = state.total_before(first);
            state.entries.drain(..first);
        }
    }
    let used = state.entries.back().map_or(0, |e| diff(e.1, state.base));
    let cost = cost.min(USAGE_MAX.saturating_sub(used));
    if cost == 0 {
        return;
    }
    match state.entries.back_mut() {
        Some((t, total)) if *t >= now => *total = add(*total, cost),
        Some(&mut (_, total)) => {
            let bound = usize::try_from(quota.limit.max(MAX_LIMIT)).unwrap_or(usize::MAX);
            while state.entries.len() >= bound {
                // Fold the oldest entry into the next: the base stays, so its cost moves on.
                state.entries.pop_front();
            }
            state.entries.push_back((now, add(total, cost)));
        }
        None => state.entries.push_back((now, add(state.base, cost))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Running totals wrap at 2^52 (as in the Lua): the verdicts do not notice.
    #[test]
    fn running_totals_wrap_without_changing_a_verdict() {
        let quota = Quota::new(1 << 50, 10);
        let mut log = Log::default();
        for round in 0..10u64 {
            let now = 1_000 + round * 5;
            let v = check(&log, &quota, now, 1 << 49);
            assert!(v.allowed, "round {round}: {v:?}");
            commit(&mut log, &quota, now, 1 << 49);
            // Full now: the oldest live entry must leave first.
            let v = check(&log, &quota, now, 1 << 50);
            assert_eq!(v.remaining, (1 << 50) - used(&log, &quota, now));
            assert!(!v.allowed);
            assert!(log.entries.iter().all(|&(_, total)| total < TOTAL_MODULUS));
        }
        assert!(log.base < TOTAL_MODULUS);
        assert_eq!(log.entries().map(|e| e.1).collect::<Vec<_>>(), [1 << 49; 2]);
        let v = check(&log, &quota, 1_046, 1 << 50);
        assert_eq!(v.retry_after, RetryAfter::After(9));
    }

    fn used(log: &Log, quota: &Quota, now: Micros) -> u64 {
        log.live(quota, now).1
    }

    /// Post-paid charges past the limit keep the log at MAX_LIMIT entries: the oldest entry is
    /// folded into the next, so its cost leaves the window later, never sooner.
    #[test]
    fn debt_folds_the_oldest_entry_to_keep_the_log_bounded() {
        let quota = Quota::new(3, 1000);
        let mut log = Log::default();
        for now in 1..=600 {
            commit(&mut log, &quota, now, 1);
        }
        assert_eq!(log.entries.len() as u64, MAX_LIMIT);
        let entries: Vec<_> = log.entries().collect();
        assert_eq!(entries[0], (101, 101), "entries 1..=101 folded into one");
        assert_eq!(entries[1], (102, 1));
        // At 1100 an unfolded log would hold 500 (entries 101..=600); this one holds 600.
        let v = check(&log, &quota, 1100, 0);
        assert!(!v.allowed);
        assert_eq!(v.remaining, 0);
        // 597 must leave: entries up to 597 (running total 597), gone at 1597.
        assert_eq!(v.retry_after, RetryAfter::After(497));
        assert!(!check(&log, &quota, 1596, 0).allowed);
        assert!(check(&log, &quota, 1597, 0).allowed);
        assert!(check(&log, &quota, 1598, 1).allowed);
    }

    /// A charge past USAGE_MAX is recorded up to it: totals stay exact (below 2^52).
    #[test]
    fn debt_stops_at_usage_max() {
        let quota = Quota::new(3, 1000);
        let mut log = Log::default();
        commit(&mut log, &quota, 5, u64::MAX);
        commit(&mut log, &quota, 6, u64::MAX);
        assert_eq!(log.entries().collect::<Vec<_>>(), [(5, USAGE_MAX)]);
        let v = check(&log, &quota, 6, 0);
        assert_eq!(v.retry_after, RetryAfter::After(999));
    }

    /// A clock that steps back commits into the newest entry: the log stays ordered, and the
    /// cost stays in the window at least as long as at its own instant.
    #[test]
    fn a_clock_stepping_back_merges_into_the_newest_entry() {
        let quota = Quota::new(3, 100);
        let mut log = Log::default();
        commit(&mut log, &quota, 500, 1);
        let v = check(&log, &quota, 490, 1);
        assert!(v.allowed);
        assert_eq!(v.reset_after, 110);
        commit(&mut log, &quota, 490, 1);
        assert_eq!(log.entries().collect::<Vec<_>>(), [(500, 2)]);
        assert_eq!(
            log.encoded(),
            "sw2:0000000000000".to_owned() + "00000000001f4" + "0000000000002"
        );
    }
}
