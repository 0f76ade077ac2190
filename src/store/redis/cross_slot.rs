//! Plans whose counters live in different Redis Cluster slots.
//!
//! One script run can only touch keys of one slot, so such a plan is reserved slot by slot
//! (one `decide.lua` run per slot, in ascending tag order: the same order on every replica)
//! and the slots already reserved are refunded (`refund.lua`) when a later one rejects, fails,
//! or does not answer within the caller's deadline.
//!
//! - **Nothing is stranded.** The deadline bounds the reservations only: the slots a plan may
//!   hold are kept in [`Reservations`], whose drop (a rejection, an error, or the caller's
//!   timeout dropping the future) spawns their refunds, each retried [`REFUND_ATTEMPTS`] times
//!   with backoff, outside any request's deadline. A slot whose reply was lost (sent, then an
//!   error or the timeout) is refunded too: it may have committed.
//! - **Idempotent under client retries.** redis-rs's cluster client resends a command whose
//!   connection dropped, scripts included. Each slot is reserved under a reservation key of its
//!   own (random, in the slot's hash tag, expiring after a minute) that records what the
//!   decide did: a resent decide replays the recorded reply instead of charging again; a
//!   refund gives back only what was recorded, once, and leaves a tombstone, so a second
//!   refund, or a decide that arrives after its refund, charges and gives back nothing.
//!   Single-slot plans have no reservation key and no extra work.
//! - **Post-paid checks are recorded in every slot and never refunded.** They are usage that
//!   already happened: a slot before the rejecting one keeps them (`refund.lua` skips them),
//!   the rejecting slot commits them (`decide.lua` does so whatever the verdict), and the
//!   slots after it, never asked for admission, are sent their post-paid checks alone (under
//!   reservations too, so a resent call records them once).
//! - A refund that still fails is logged (never with a key) and counted
//!   (`ratelimiter_redis_refund_failures_total`); its counters stay charged until they expire:
//!   a false rejection at worst, never an over-admission.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use super::{Connections, RedisStats, script};
use crate::algorithm::{RetryAfter, Verdict};
use crate::store::{Check, Plan, StoreError};

/// How many times a refund is tried before it is counted as failed.
pub const REFUND_ATTEMPTS: u32 = 5;
/// The longest one refund attempt waits for its reply.
const REFUND_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// The pause after the first failed attempt; doubled after each one.
const REFUND_FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Reserves slot by slot, in ascending tag order (the same order on every replica); when a
/// slot rejects, the slots reserved before it are refunded in the background. Never
/// over-admits; a concurrent request may see a reservation for about one round trip and be
/// rejected although the plan is refunded right after.
pub(super) async fn decide_across_slots(
    connections: &Arc<Connections>,
    prefix: &str,
    stats: &RedisStats,
    plan: &mut Plan,
) -> Result<(), StoreError> {
    // Groups of checks sharing a tag (one slot), in ascending tag order. The plan's own
    // order is kept: the limiter maps verdicts back by position.
    let mut order: Vec<usize> = (0..plan.checks.len()).collect();
    order.sort_by_key(|&i| plan.checks[i].key);
    let mut held = Reservations {
        connections,
        prefix,
        stats,
        parts: Vec::new(),
        admitted: false,
    };
    let mut rest = order.as_slice();
    while !rest.is_empty() {
        let (indices, tail) = next_slot(plan, rest);
        rest = tail;
        let mut group: Vec<Check> = indices.iter().map(|&i| plan.checks[i].clone()).collect();
        let tag = group[0].key.tag;
        let reservation = script::reservation_key(prefix, tag, &new_token());
        let inv = script::reserve_invocation(prefix, &group, &reservation);
        // Held from before it is sent: from then on it may commit whatever becomes of us.
        held.parts.push(Part {
            checks: group.clone(),
            reservation,
        });
        let reply = connections.invoke::<redis::Value>(&inv).await?;
        let decoded = script::decode(&reply, &mut group)?;
        for (&i, c) in indices.iter().zip(&group) {
            plan.checks[i].verdict = c.verdict;
        }
        if !decoded.admitted {
            // A rejection commits nothing but its post-paid checks, which are never refunded:
            // only the slots before it need refunds.
            held.parts.pop();
            plan.admitted = false;
            return record_post_paid(connections, prefix, plan, rest).await;
        }
    }
    held.admitted = true;
    plan.admitted = true;
    Ok(())
}

/// The first slot's checks in `rest` (indices into `plan.checks`, sorted by key, so a tag's
/// checks are together), and what follows them.
fn next_slot<'o>(plan: &Plan, rest: &'o [usize]) -> (&'o [usize], &'o [usize]) {
    let tag = rest.first().map(|&i| plan.checks[i].key.tag);
    let len = rest
        .iter()
        .take_while(|&&i| Some(plan.checks[i].key.tag) == tag)
        .count();
    rest.split_at(len)
}

/// After a rejection: the slots in `rest` were never asked for admission. Their post-paid
/// checks (usage that already happened) are recorded all the same, one reservation per slot
/// (so a resent call records once), never refunded; every other check of theirs is reported
/// as not limiting.
async fn record_post_paid(
    connections: &Arc<Connections>,
    prefix: &str,
    plan: &mut Plan,
    mut rest: &[usize],
) -> Result<(), StoreError> {
    while !rest.is_empty() {
        let (indices, tail) = next_slot(plan, rest);
        rest = tail;
        let (post_paid, others): (Vec<usize>, Vec<usize>) =
            indices.iter().partition(|&&i| plan.checks[i].post_paid);
        for i in others {
            plan.checks[i].verdict = Some(unasked(&plan.checks[i]));
        }
        let Some(&first) = post_paid.first() else {
            continue;
        };
        let mut group: Vec<Check> = post_paid.iter().map(|&i| plan.checks[i].clone()).collect();
        let token = new_token();
        let reservation = script::reservation_key(prefix, plan.checks[first].key.tag, &token);
        let inv = script::reserve_invocation(prefix, &group, &reservation);
        let reply = connections.invoke::<redis::Value>(&inv).await?;
        script::decode(&reply, &mut group)?;
        for (&i, c) in post_paid.iter().zip(&group) {
            plan.checks[i].verdict = c.verdict;
        }
    }
    Ok(())
}

/// One slot's part of a plan and the reservation key it was reserved under.
struct Part {
    checks: Vec<Check>,
    reservation: String,
}

/// The slots a plan may hold. Unless the plan was admitted, dropping it (whatever the reason:
/// a rejection, an error, the caller's deadline) refunds every one of them in the background.
struct Reservations<'a> {
    connections: &'a Arc<Connections>,
    prefix: &'a str,
    stats: &'a RedisStats,
    parts: Vec<Part>,
    admitted: bool,
}

impl Drop for Reservations<'_> {
    fn drop(&mut self) {
        if self.admitted || self.parts.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Only outside a runtime, where no reservation can have been sent.
            return;
        };
        for part in self.parts.drain(..) {
            let refund = Refund {
                connections: self.connections.clone(),
                prefix: self.prefix.to_owned(),
                stats: self.stats.clone(),
                part,
            };
            runtime.spawn(refund.run());
        }
    }
}

/// One reservation's refund, on its own task.
struct Refund {
    connections: Arc<Connections>,
    prefix: String,
    stats: RedisStats,
    part: Part,
}

impl Refund {
    /// Tries up to [`REFUND_ATTEMPTS`] times (the script is idempotent, so an attempt that
    /// timed out but ran after all does no harm); counts and logs the outcome.
    async fn run(self) {
        let mut backoff = REFUND_FIRST_BACKOFF;
        let mut last_error = String::new();
        for attempt in 1..=REFUND_ATTEMPTS {
            let inv = script::refund_reservation_invocation(
                &self.prefix,
                &self.part.checks,
                &self.part.reservation,
            );
            let call = self.connections.invoke::<i64>(&inv);
            match tokio::time::timeout(REFUND_ATTEMPT_TIMEOUT, call).await {
                Ok(Ok(gave_back)) => {
                    if gave_back == 1 {
                        self.stats.refunds.inc();
                    }
                    return;
                }
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = format!("no reply within {REFUND_ATTEMPT_TIMEOUT:?}"),
            }
            if attempt < REFUND_ATTEMPTS {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        self.stats.refund_failures.inc();
        // The counters stay charged until they expire: false rejections for at most one
        // window, never an over-admission.
        tracing::warn!(
            attempts = REFUND_ATTEMPTS,
            error = %last_error,
            "refund of a cross-slot reservation failed"
        );
    }
}

/// A reservation token unique to this process and call: a random per-process prefix (so
/// replicas never collide) and a counter.
fn new_token() -> String {
    static PROCESS: LazyLock<u64> =
        LazyLock::new(|| RandomState::new().hash_one((std::process::id(), SystemTime::now())));
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:016x}{:x}",
        *PROCESS,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The verdict reported for a limit the store did not consult.
fn unasked(c: &Check) -> Verdict {
    Verdict {
        allowed: true,
        remaining: c.quota.limit,
        reset_after: 0,
        retry_after: RetryAfter::Now,
    }
}
