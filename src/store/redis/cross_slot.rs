//! Plans whose counters live in different Redis Cluster slots.
//!
//! One script run can only touch keys of one slot, so such a plan is reserved slot by slot
//! (one `decide.lua` run per slot, in ascending tag order: the same order on every replica)
//! and the slots already committed are refunded (`refund.lua`) when a later one rejects.

use deadpool_redis::redis;

use super::{Connections, script};
use crate::algorithm::{RetryAfter, Verdict};
use crate::store::{Check, Plan, StoreError};

/// Reserves slot by slot, in ascending tag order (the same order on every replica), and
/// refunds the slots already committed when a later one rejects. Never over-admits; a
/// concurrent request may see the reservation for the length of one round trip and be
/// rejected although the plan is refunded right after.
pub(super) async fn decide_across_slots(
    connections: &Connections,
    prefix: &str,
    plan: &mut Plan,
) -> Result<(), StoreError> {
    // Groups of checks sharing a tag (one slot), in ascending tag order. The plan's own
    // order is kept: the limiter maps verdicts back by position.
    let mut order: Vec<usize> = (0..plan.checks.len()).collect();
    order.sort_by_key(|&i| plan.checks[i].key);
    let mut committed: Vec<(Vec<Check>, u64)> = Vec::new();
    let mut rest = order.as_slice();
    while let Some(&first) = rest.first() {
        let tag = plan.checks[first].key.tag;
        let len = rest
            .iter()
            .take_while(|&&i| plan.checks[i].key.tag == tag)
            .count();
        let (indices, tail) = rest.split_at(len);
        rest = tail;
        let mut group: Vec<Check> = indices.iter().map(|&i| plan.checks[i].clone()).collect();
        let inv = script::decide_invocation(script::decide_script(), prefix, &group, None);
        let reply = match connections.invoke::<redis::Value>(&inv).await {
            Ok(r) => r,
            Err(e) => {
                refund(connections, prefix, &committed).await;
                return Err(e);
            }
        };
        let decoded = match script::decode(&reply, &mut group) {
            Ok(d) => d,
            Err(e) => {
                refund(connections, prefix, &committed).await;
                return Err(e);
            }
        };
        for (&i, c) in indices.iter().zip(&group) {
            plan.checks[i].verdict = c.verdict;
        }
        if !decoded.admitted {
            refund(connections, prefix, &committed).await;
            // Later slots were never asked: report them as not limiting.
            for &i in rest {
                plan.checks[i].verdict = Some(unasked(&plan.checks[i]));
            }
            plan.admitted = false;
            return Ok(());
        }
        committed.push((group, decoded.now));
    }
    plan.admitted = true;
    Ok(())
}

async fn refund(connections: &Connections, prefix: &str, committed: &[(Vec<Check>, u64)]) {
    for (group, at) in committed {
        let inv = script::refund_invocation(prefix, group, *at);
        if let Err(e) = connections.invoke::<redis::Value>(&inv).await {
            // The reservation stays until its counters expire: a false rejection for at
            // most one window, never an over-admission.
            tracing::warn!(error = %e, "refund of a cross-slot reservation failed");
        }
    }
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
