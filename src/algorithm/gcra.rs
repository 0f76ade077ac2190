//! Token bucket as GCRA (generic cell rate algorithm): one integer of state.
//!
//! The state is the theoretical arrival time (TAT): the instant at which the bucket would be
//! full again. One unit of cost is worth `T = ceil(window / limit)` microseconds (the emission
//! interval, rounded *up* so rounding can only admit less, never more), and the bucket holds
//! `burst` units, a tolerance of `tau = burst * T`.
//!
//! A cost `c` at `now` is admitted when `max(tat, now) + c*T - now <= tau`. Then, for any span
//! `[t1, t2]`, the admitted cost is at most `burst + (t2 - t1) / T`: the contract the property
//! tests check, against a token bucket written the ordinary way. A cost of 0 only looks: it is
//! allowed unless the TAT runs beyond the tolerance (`ahead > tau`: a debt, left by a
//! post-paid charge or a reload that shrank `tau`), and then its retry-after is the debt,
//! `ahead - tau`. A commit moves the TAT whatever the verdict (a post-paid charge), at most
//! [`USAGE_MAX`] ahead of `now`.

use super::{Micros, Quota, RetryAfter, USAGE_MAX, Verdict};

/// Theoretical arrival time in microseconds since the epoch; 0 for a counter never hit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tat(pub Micros);

/// The emission interval: microseconds one unit of cost is worth.
pub fn interval(quota: &Quota) -> Micros {
    quota.window.div_ceil(quota.limit.max(1)).max(1)
}

/// The tolerance: how far ahead of `now` the TAT may run.
pub fn tolerance(quota: &Quota) -> Micros {
    interval(quota).saturating_mul(quota.burst)
}

pub fn check(state: &Tat, quota: &Quota, now: Micros, cost: u64) -> Verdict {
    let t = interval(quota);
    let tau = tolerance(quota);
    let base = state.0.max(now);
    let ahead = base - now; // how far the bucket is from full, before this request
    if cost > quota.burst {
        return Verdict {
            allowed: false,
            remaining: (tau - ahead.min(tau)) / t,
            reset_after: ahead,
            retry_after: RetryAfter::Never,
        };
    }
    let new_ahead = ahead.saturating_add(cost.saturating_mul(t));
    // A cost of 0 only looks: allowed unless the counter is in debt (ahead > tau).
    if new_ahead <= tau {
        Verdict {
            allowed: true,
            remaining: (tau - new_ahead.min(tau)) / t,
            reset_after: new_ahead,
            retry_after: RetryAfter::Now,
        }
    } else {
        Verdict {
            allowed: false,
            remaining: (tau - ahead.min(tau)) / t,
            reset_after: ahead,
            retry_after: RetryAfter::After(new_ahead - tau),
        }
    }
}

/// Moves the TAT by `cost * T`, whatever the verdict (a post-paid charge runs it past the
/// tolerance), but never more than [`USAGE_MAX`] ahead of `now`.
pub fn commit(state: &mut Tat, quota: &Quota, now: Micros, cost: u64) {
    let t = interval(quota);
    let base = state.0.max(now);
    let room = USAGE_MAX.saturating_sub(base - now);
    state.0 = base + cost.saturating_mul(t).min(room);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A post-paid charge moves the TAT past the tolerance (debt); everything, a check-only
    /// included, waits until the TAT is back within it: `TAT - tau + cost * T`.
    #[test]
    fn debt_is_repaid_at_the_emission_rate() {
        let quota = Quota::new(10, 100); // T = 10, tau = 100
        let mut tat = Tat::default();
        commit(&mut tat, &quota, 1_000, 25); // 15 past the tolerance
        assert_eq!(tat, Tat(1_250));
        let look = check(&tat, &quota, 1_000, 0);
        assert_eq!((look.allowed, look.remaining), (false, 0));
        assert_eq!(look.retry_after, RetryAfter::After(150));
        assert_eq!(
            check(&tat, &quota, 1_000, 3).retry_after,
            RetryAfter::After(180)
        );
        assert!(check(&tat, &quota, 1_150, 0).allowed);
        assert!(!check(&tat, &quota, 1_179, 3).allowed);
        assert!(check(&tat, &quota, 1_180, 3).allowed);
    }

    /// The TAT never runs more than USAGE_MAX ahead of `now`, whatever is charged.
    #[test]
    fn debt_stops_at_usage_max() {
        let quota = Quota::new(1, 1 << 40);
        let mut tat = Tat::default();
        commit(&mut tat, &quota, 7, u64::MAX);
        assert_eq!(tat, Tat(7 + USAGE_MAX));
        commit(&mut tat, &quota, 8, 1);
        assert_eq!(
            tat,
            Tat(8 + USAGE_MAX),
            "USAGE_MAX ahead of the later `now`, no more"
        );
    }
}
