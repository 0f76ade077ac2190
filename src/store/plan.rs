//! The all-or-nothing rule for one plan, once, as pure functions over the counters' states.
//!
//! Every store follows it: the memory store calls these functions, the models the Redis
//! scripts are tested against call them too, and `lua/decide.lua` mirrors them line for
//! line. A plan is decided in two steps:
//! 1. [`check_all`]: every check is decided against its counter's live state at one `now`
//!    (a missing, expired or other-algorithm state counts as the empty state); the plan is
//!    admitted when every enforced check allows.
//! 2. Every check in [`to_commit`] is [`commit`]ted: when the plan is admitted, every allowed
//!    check with a cost; admitted or not, every post-paid check with a cost (usage that
//!    already happened, recorded even when it did not fit: debt). A rejected plan commits
//!    nothing else. A post-paid check is "allowed" when its cost fit, so an enforced one that
//!    did not fit rejects the plan (and is still recorded).
//! 3. [`settle`]: a recorded post-paid check's figures (remaining, reset, retry) become what a
//!    check-only sees after the charge: nothing left and the wait until the debt is paid when
//!    it went into debt — never "retrying cannot help", since the usage is already recorded.

use super::Check;
use crate::algorithm::{CounterState, Micros};

/// Fills every check's verdict from `live(check)` (the counter's state, `None` when it has
/// none that is live) and says whether the plan is admitted.
pub fn check_all<'s>(
    checks: &mut [Check],
    now: Micros,
    live: impl Fn(&Check) -> Option<&'s CounterState>,
) -> bool {
    let mut admitted = true;
    for check in checks.iter_mut() {
        let verdict = match live(check) {
            Some(state) if state.is(check.algorithm) => state.check(&check.quota, now, check.cost),
            _ => CounterState::empty(check.algorithm).check(&check.quota, now, check.cost),
        };
        admitted &= verdict.allowed || !check.enforce;
        check.verdict = Some(verdict);
    }
    admitted
}

/// The checks a plan commits, `admitted` or not: those with a cost above 0 that are
/// post-paid, or allowed in an admitted plan.
pub fn to_commit(checks: &[Check], admitted: bool) -> impl Iterator<Item = &Check> {
    checks.iter().filter(move |c| {
        c.cost > 0 && (c.post_paid || admitted && c.verdict.is_some_and(|v| v.allowed))
    })
}

/// Commits one check into its counter's `state` (`live`: whether that state still holds; an
/// expired or other-algorithm state starts from empty) and returns the instant from which the
/// new state is empty again, when the counter may be forgotten.
pub fn commit(state: &mut CounterState, live: bool, check: &Check, now: Micros) -> Micros {
    if !live || !state.is(check.algorithm) {
        *state = CounterState::empty(check.algorithm);
    }
    state.commit(&check.quota, now, check.cost);
    state.expires_at(&check.quota)
}

/// Step 3: every post-paid check with a cost, once committed, takes the figures a check-only
/// (cost 0) sees on its counter's new state `live(check)`; `allowed` stays whether it fit.
pub fn settle<'s>(
    checks: &mut [Check],
    now: Micros,
    live: impl Fn(&Check) -> Option<&'s CounterState>,
) {
    for check in checks.iter_mut().filter(|c| c.post_paid && c.cost > 0) {
        let Some(state) = live(check) else { continue };
        let after = state.check(&check.quota, now, 0);
        if let Some(v) = check.verdict.as_mut() {
            v.remaining = after.remaining;
            v.reset_after = after.reset_after;
            v.retry_after = after.retry_after;
        }
    }
}
