//! The decision engine: every front door calls [`Limiter::decide`] and nothing else.
//!
//! `decide` takes one lock-free snapshot of the compiled [`Rules`], resolves each descriptor
//! of the request to its limits, builds one all-or-nothing [`Plan`], hands it to the store in
//! one call and folds the verdicts into a [`Decision`]. It knows nothing of HTTP or gRPC.
//! Store failures are handled here, once, by the configured failure policy.

mod decision;
mod request;
mod rules;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use decision::{Decision, Degraded, LimitStatus, retry_rank};
pub use request::{API_KEY, Descriptor, Entry, LimitRequest, QuotaOverride};
pub use rules::{LimitRule, Match, Rules, glob_match};

use crate::algorithm::{Algorithm, Quota, RetryAfter};
use crate::config::FailurePolicy;
use crate::store::{Backend, Check, CounterKey, MemoryStore, Plan, Store, StoreError};
use sha2::{Digest, Sha256};

/// Why no decision could be given.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("unknown API key")]
    UnknownClient,
    #[error("cost {cost} exceeds the maximum of {max} per request")]
    CostTooHigh { cost: u64, max: u64 },
    #[error("the request names no descriptors")]
    NoDescriptors,
    #[error("the request names no domain")]
    NoDomain,
    #[error("descriptor {0} has no entries")]
    EmptyDescriptor(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The in-process limiter that decides while the store is down and the policy is `local`.
pub struct LocalFallback {
    pub store: MemoryStore,
    /// How many replicas share the quota: each enforces `quota / replicas` (rounded down, so
    /// the replicas together never admit more than the quota).
    pub replicas: u64,
}

impl LocalFallback {
    fn scale(&self, q: Quota) -> Quota {
        let n = self.replicas.max(1);
        Quota {
            limit: q.limit / n,
            window: q.window,
            burst: q.burst / n,
        }
    }
}

/// The decision engine, shared by every front door.
pub struct Limiter {
    rules: ArcSwap<Rules>,
    store: Backend,
    fallback: Option<LocalFallback>,
}

impl Limiter {
    pub fn new(rules: Rules, store: Backend, fallback: Option<LocalFallback>) -> Self {
        Limiter {
            rules: ArcSwap::from_pointee(rules),
            store,
            fallback,
        }
    }

    /// The rules in force now.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    /// Swaps in a new, fully compiled configuration. Requests in flight finish on the old one.
    pub fn reload(&self, rules: Rules) {
        self.rules.store(Arc::new(rules));
        if let Backend::Redis(r) = &self.store {
            r.clear_cache();
        }
    }

    pub fn store(&self) -> &Backend {
        &self.store
    }

    /// Decides one request.
    ///
    /// # Cancel safety
    /// Dropping the future may leave the request counted or not, never half-counted.
    pub async fn decide(&self, req: &LimitRequest<'_>) -> Result<Decision, LimitError> {
        let rules = self.rules.load();
        if req.domain.is_empty() {
            return Err(LimitError::NoDomain);
        }
        if req.descriptors.is_empty() {
            return Err(LimitError::NoDescriptors);
        }
        let max = rules.settings.max_cost;
        if req.hits > max {
            return Err(LimitError::CostTooHigh {
                cost: req.hits,
                max,
            });
        }

        // Resolve every descriptor to its limits.
        let mut applied: Vec<(usize, &Arc<LimitRule>)> = Vec::new();
        for (i, d) in req.descriptors.iter().enumerate() {
            if d.entries.is_empty() {
                return Err(LimitError::EmptyDescriptor(i));
            }
            if let Some(h) = d.hits.filter(|&h| h > max) {
                return Err(LimitError::CostTooHigh { cost: h, max });
            }
            match rules.lookup(req.domain, d.entries.iter().map(|e| (e.key, e.value))) {
                Match::Node(node) => applied.extend(node.limits.iter().map(|l| (i, l))),
                Match::None => {}
                Match::UnknownClient => return Err(LimitError::UnknownClient),
            }
        }
        // A limit that names others in `replaces` removes them from this request.
        if applied.iter().any(|(_, l)| !l.replaces.is_empty()) {
            let replaced: Vec<&str> = applied
                .iter()
                .flat_map(|(_, l)| l.replaces.iter().map(|r| &**r))
                .collect();
            applied.retain(|(_, l)| !replaced.contains(&&*l.name));
        }
        if applied.is_empty() {
            return Ok(Decision::unlimited(req.descriptors.len()));
        }

        // One plan; checks on the same counter are merged so the store sees each once.
        let mut plan = Plan {
            checks: Vec::with_capacity(applied.len()),
            admitted: false,
        };
        let mut check_of: Vec<usize> = Vec::with_capacity(applied.len());
        // `applied` is in descriptor order, so a descriptor's tag is hashed once, and only
        // for descriptors that have limits.
        let mut tag: Option<(usize, u128)> = None;
        for (i, rule) in &applied {
            let d = &req.descriptors[*i];
            let tag = match tag {
                Some((at, t)) if at == *i => t,
                _ => {
                    let t = counter_tag(req.domain, d);
                    tag = Some((*i, t));
                    t
                }
            };
            let (quota, id) = match d.limit_override {
                Some(o) => (o.quota, override_id(rule.algorithm, &o)),
                None => (rule.quota, rule.id),
            };
            let key = CounterKey { tag, limit: id };
            let cost = d.hits.unwrap_or(req.hits);
            match plan.checks.iter().position(|c| c.key == key) {
                Some(at) => {
                    let c = &mut plan.checks[at];
                    c.cost = c.cost.saturating_add(cost);
                    c.enforce |= !rule.shadow;
                    check_of.push(at);
                }
                None => {
                    check_of.push(plan.checks.len());
                    plan.checks.push(Check {
                        key,
                        algorithm: rule.algorithm,
                        quota,
                        cost,
                        enforce: !rule.shadow,
                        verdict: None,
                    });
                }
            }
        }

        let mut degraded = None;
        let mut batch = [plan];
        if let Err(e) = self.store.apply(&mut batch).await {
            match (rules.settings.on_store_failure, &self.fallback) {
                (FailurePolicy::FailOpen, _) if e.is_transient() => {
                    tracing::warn!(error = %e, "store failed; allowing (fail_open)");
                    return Ok(Decision {
                        degraded: Some(Degraded::FailOpen),
                        ..Decision::unlimited(req.descriptors.len())
                    });
                }
                (FailurePolicy::Local, Some(local)) if e.is_transient() => {
                    tracing::warn!(error = %e, "store failed; deciding locally");
                    for c in &mut batch[0].checks {
                        c.quota = local.scale(c.quota);
                        c.verdict = None;
                    }
                    local.store.apply(&mut batch).await?;
                    degraded = Some(Degraded::LocalFallback);
                }
                _ => return Err(LimitError::Store(e)),
            }
        }
        let [plan] = batch;

        // Fold verdicts back per descriptor.
        let mut over_limit = vec![false; req.descriptors.len()];
        let mut limits = Vec::with_capacity(applied.len());
        let mut retry_after = RetryAfter::Now;
        for ((i, rule), at) in applied.iter().zip(check_of) {
            let Some((verdict, quota)) = plan
                .checks
                .get(at)
                .and_then(|c| Some((c.verdict?, c.quota)))
            else {
                return Err(LimitError::Store(StoreError::Protocol(
                    "store left a check undecided".into(),
                )));
            };
            let status = LimitStatus {
                descriptor: *i,
                name: rule.name.clone(),
                algorithm: rule.algorithm,
                quota,
                shadow: rule.shadow,
                detailed_metric: rule.detailed_metric,
                verdict,
            };
            if status.rejects() {
                over_limit[*i] = true;
                if retry_rank(verdict.retry_after) > retry_rank(retry_after) {
                    retry_after = verdict.retry_after;
                }
            }
            limits.push(status);
        }
        Ok(Decision {
            allowed: plan.admitted,
            limits,
            over_limit,
            retry_after: if plan.admitted {
                RetryAfter::Now
            } else {
                retry_after
            },
            degraded,
        })
    }
}

/// The hash tag of a descriptor: SHA-256 over the domain and every entry, truncated to 128
/// bits. The raw values (an API key among them) never leave this function.
fn counter_tag(domain: &str, d: &Descriptor<'_>) -> u128 {
    let mut h = Sha256::new();
    h.update(domain.as_bytes());
    for e in &d.entries {
        h.update([0]);
        h.update(e.key.as_bytes());
        h.update([0]);
        h.update(e.value.as_bytes());
    }
    let digest = h.finalize();
    let mut tag = [0u8; 16];
    tag.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(tag)
}

/// The limit id of a request-supplied override: its own counter, apart from the configured one.
fn override_id(algorithm: Algorithm, o: &QuotaOverride) -> u64 {
    let mut h = Sha256::new();
    h.update(b"override");
    h.update(algorithm.as_str().as_bytes());
    h.update(o.quota.limit.to_be_bytes());
    h.update(o.quota.window.to_be_bytes());
    let digest = h.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(id)
}
