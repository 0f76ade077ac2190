//! The decision engine: every front door calls [`Limiter::decide`] and nothing else.
//!
//! `decide` takes one lock-free snapshot of the compiled [`Rules`], resolves each descriptor
//! of the request to its limits, builds one all-or-nothing [`Plan`], hands it to the store in
//! one call and folds the verdicts into a [`Decision`]. It knows nothing of HTTP or gRPC.
//! Store failures are handled here, once, by the configured failure policy.

mod clients;
mod decision;
mod request;
mod rules;
mod tag;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::num::NonZeroU64;
use std::sync::Arc;

use std::time::Duration;

use arc_swap::ArcSwap;

pub use clients::{ClientUsage, KnownClientId, LimitUsage};
pub use decision::{Decision, Degraded, LimitStatus};
pub use request::{API_KEY, Descriptor, Entry, LimitRequest, QuotaOverride};
pub use rules::{
    KnownClient, LimitRule, Match, MetricLevel, MetricLevels, Rules, SharedValues, glob_match,
};
pub use tag::{TagKey, TagSecret, TagSecretError};

use crate::algorithm::{Algorithm, Quota, RetryAfter};
use crate::config::{FailurePolicy, ForcedSettings, Settings};
use crate::store::{Backend, Check, CounterKey, MemoryStore, Plan, Store, StoreError};
use crate::telemetry::LogThrottle;
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
    pub replicas: NonZeroU64,
}

impl LocalFallback {
    fn scale(&self, q: Quota) -> Quota {
        let n = self.replicas.get();
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
    /// Settings the command line forces on over every loaded configuration.
    forced: ForcedSettings,
    /// The failure policy's warnings: at most one a second during an outage.
    store_failures: LogThrottle,
    tags: TagKey,
}

impl Limiter {
    /// A limiter whose counter tags are unkeyed SHA-256 until [`with_tag_key`](Self::with_tag_key).
    pub fn new(rules: Rules, store: Backend, fallback: Option<LocalFallback>) -> Self {
        Limiter {
            rules: ArcSwap::from_pointee(rules),
            store,
            fallback,
            forced: ForcedSettings::default(),
            store_failures: LogThrottle::new(Duration::from_secs(1)),
            tags: TagKey::Unkeyed,
        }
    }

    /// The same limiter with `forced` settings on, now and after every reload.
    pub fn with_forced_settings(mut self, forced: ForcedSettings) -> Self {
        let mut rules = Rules::clone(&self.rules.load());
        forced.apply(&mut rules.settings);
        self.rules = ArcSwap::from_pointee(rules);
        self.forced = forced;
        self
    }

    /// The same limiter naming counters (and log fingerprints) with `tags`.
    pub fn with_tag_key(mut self, tags: TagKey) -> Self {
        self.tags = tags;
        self
    }

    /// How descriptors are hashed into counter tags and log fingerprints.
    pub fn tag_key(&self) -> &TagKey {
        &self.tags
    }

    /// The rules in force now.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    /// Swaps in a new, fully compiled configuration. Requests in flight finish on the old one.
    pub fn reload(&self, mut rules: Rules) {
        self.forced.apply(&mut rules.settings);
        self.rules.store(Arc::new(rules));
        self.store.forget_derived();
    }

    pub fn store(&self) -> &Backend {
        &self.store
    }

    /// The in-process store the `local` failure policy decides with, if there is one.
    pub fn fallback_store(&self) -> Option<&MemoryStore> {
        self.fallback.as_ref().map(|f| &f.store)
    }

    /// Decides one request against the rules in force now. A door that read anything from
    /// the rules to build the request (the default domain, header style) must use
    /// [`decide_with`](Self::decide_with) and that same snapshot instead.
    pub async fn decide(&self, req: &LimitRequest<'_>) -> Result<Decision, LimitError> {
        let rules = self.rules.load_full();
        self.decide_with(&rules, req).await
    }

    /// Decides one request against one configuration snapshot, from the door to the store:
    /// validate → resolve every descriptor to its limits → one all-or-nothing plan → apply it
    /// with the failure policy → fold the verdicts into a [`Decision`].
    ///
    /// # Cancel safety
    /// Dropping the future may leave the request counted or not, never half-counted.
    pub async fn decide_with(
        &self,
        rules: &Rules,
        req: &LimitRequest<'_>,
    ) -> Result<Decision, LimitError> {
        validate(rules, req)?;
        let applied = resolve(rules, req)?;
        if applied.is_empty() {
            return Ok(Decision::unlimited(req.descriptors.len()));
        }
        let (plan, check_of) = plan(&self.tags, req, &applied, &rules.settings);
        let mut batch = [plan];
        let degraded = self.apply(rules, &mut batch).await?;
        let [plan] = batch;
        match degraded {
            Some(Degraded::FailOpen) => Ok(Decision {
                degraded,
                ..Decision::unlimited(req.descriptors.len())
            }),
            _ => fold(req, &applied, &check_of, plan, degraded, &rules.settings),
        }
    }

    /// Hands the plan to the store; when the store fails, applies the failure policy of the
    /// snapshot. `Some(FailOpen)` means "allow without deciding".
    async fn apply(
        &self,
        rules: &Rules,
        batch: &mut [Plan; 1],
    ) -> Result<Option<Degraded>, LimitError> {
        let Err(e) = self.store.apply(batch).await else {
            return Ok(None);
        };
        if !e.is_transient() {
            return Err(LimitError::Store(e));
        }
        match (rules.settings.on_store_failure, &self.fallback) {
            (FailurePolicy::FailOpen, _) => {
                if let Some(held_back) = self.store_failures.admit() {
                    tracing::warn!(error = %e, held_back, "store failed; allowing (fail_open)");
                }
                Ok(Some(Degraded::FailOpen))
            }
            (FailurePolicy::Local, Some(local)) => {
                if let Some(held_back) = self.store_failures.admit() {
                    tracing::warn!(error = %e, held_back, "store failed; deciding locally");
                }
                for c in &mut batch[0].checks {
                    c.quota = local.scale(c.quota);
                    c.verdict = None;
                }
                local.store.apply(batch).await?;
                Ok(Some(Degraded::LocalFallback))
            }
            _ => Err(LimitError::Store(e)),
        }
    }
}

/// The limits that apply to a request, each with the index of its descriptor, in descriptor
/// order: the configured ones borrowed from the rules, an override's made for the request.
type Applied<'r> = Vec<(usize, Cow<'r, Arc<LimitRule>>)>;

/// The limit a request-supplied override stands for: envoyproxy/ratelimit's, a fixed window
/// that is never in shadow mode, on a counter of its own (keyed by the override's quota),
/// post-paid when the descriptor's configured limits are.
fn override_rule(o: &QuotaOverride, post_paid: bool) -> Arc<LimitRule> {
    let algorithm = Algorithm::FixedWindow;
    Arc::new(LimitRule {
        name: OVERRIDE_NAME.into(),
        algorithm,
        quota: o.quota,
        shadow: false,
        replaces: Box::default(),
        detailed_metric: false,
        post_paid,
        quota_mode: false,
        metadata: None,
        shared_values: None,
        metric_levels: None,
        id: override_id(algorithm, o),
    })
}

/// The name a request-supplied limit is reported under.
pub const OVERRIDE_NAME: &str = "override";

/// The request-level checks: a domain, descriptors with entries, costs within the maximum.
fn validate(rules: &Rules, req: &LimitRequest<'_>) -> Result<(), LimitError> {
    if req.domain.is_empty() {
        return Err(LimitError::NoDomain);
    }
    if req.descriptors.is_empty() {
        return Err(LimitError::NoDescriptors);
    }
    let max = rules.settings.max_cost;
    let too_high = |cost: u64| (cost > max).then_some(LimitError::CostTooHigh { cost, max });
    if let Some(e) = too_high(req.hits) {
        return Err(e);
    }
    for (i, d) in req.descriptors.iter().enumerate() {
        if d.entries.is_empty() {
            return Err(LimitError::EmptyDescriptor(i));
        }
        if let Some(e) = d.hits.and_then(too_high) {
            return Err(e);
        }
    }
    Ok(())
}

/// Every limit that applies, with the index of the descriptor it applies to, in descriptor
/// order. A descriptor carrying its own limit (Envoy's `limit` override) gets that one limit
/// in any known domain, matched or not; a limit named in another's `replaces` drops out.
fn resolve<'r>(rules: &'r Rules, req: &LimitRequest<'_>) -> Result<Applied<'r>, LimitError> {
    let mut applied: Applied<'r> = Vec::new();
    for (i, d) in req.descriptors.iter().enumerate() {
        let found = rules.lookup(req.domain, d.entries.iter().map(|e| (e.key, e.value)));
        match found {
            Match::UnknownClient => return Err(LimitError::UnknownClient),
            Match::None if i == 0 && req.client_required => {
                return Err(LimitError::UnknownClient);
            }
            _ => {}
        }
        match (&d.limit_override, found) {
            (Some(o), found) if rules.has_domain(req.domain) => {
                // A budget handed over per request is post-paid as the descriptor it stands
                // in for (a stream-done charge against a tenant's own limit).
                let post_paid =
                    matches!(found, Match::Node(node) if node.limits.iter().any(|l| l.post_paid));
                applied.push((i, Cow::Owned(override_rule(o, post_paid))));
            }
            (_, Match::Node(node)) => {
                applied.extend(node.limits.iter().map(|l| (i, Cow::Borrowed(l))));
            }
            _ => {}
        }
    }
    if applied.iter().any(|(_, l)| !l.replaces.is_empty()) {
        let replaced = |name: &str| {
            applied
                .iter()
                .any(|(_, l)| l.replaces.iter().any(|r| **r == *name))
        };
        let keep: Vec<bool> = applied.iter().map(|(_, l)| !replaced(&l.name)).collect();
        let mut keep = keep.into_iter();
        applied.retain(|_| keep.next().unwrap_or(true));
    }
    Ok(applied)
}

/// One all-or-nothing plan for the applied limits, and for each applied limit the index of
/// its check. Checks on the same counter are merged so the store sees each counter once.
fn plan(
    tags: &TagKey,
    req: &LimitRequest<'_>,
    applied: &Applied<'_>,
    settings: &Settings,
) -> (Plan, Vec<usize>) {
    let mut plan = Plan {
        checks: Vec::with_capacity(applied.len()),
        admitted: false,
    };
    let mut check_of: Vec<usize> = Vec::with_capacity(applied.len());
    // `applied` is in descriptor order, so a descriptor's tag is hashed once, and only for
    // descriptors that have limits.
    let mut tag: Option<(usize, u128)> = None;
    for (i, rule) in applied {
        let d = &req.descriptors[*i];
        let tag = match (&rule.shared_values, tag) {
            (Some(named), _) => tags.counter_tag_of(req.domain, counter_entries(d, named)),
            (None, Some((at, t))) if at == *i => t,
            (None, _) => {
                let t = tags.counter_tag(req.domain, d);
                tag = Some((*i, t));
                t
            }
        };
        let key = CounterKey {
            tag,
            limit: rule.id,
        };
        let cost = d.hits.unwrap_or(req.hits);
        // Usage reported after the fact: recorded whatever the verdict (a cost of 0 reports
        // nothing, so it stays a check-only request).
        let post_paid = (req.post_paid || rule.post_paid) && cost > 0;
        // A quota-mode limit refuses only with its peers, which the fold judges: to the store
        // it is like a shadow-mode one, decided but never refusing the plan.
        let enforce = !(rule.shadow || rule.quota_mode || settings.quota_mode);
        match plan.checks.iter().position(|c| c.key == key) {
            Some(at) => {
                let c = &mut plan.checks[at];
                c.cost = c.cost.saturating_add(cost);
                c.enforce |= enforce;
                c.post_paid |= post_paid;
                check_of.push(at);
            }
            None => {
                check_of.push(plan.checks.len());
                plan.checks.push(Check {
                    key,
                    algorithm: rule.algorithm,
                    quota: rule.quota,
                    cost,
                    enforce,
                    post_paid,
                    verdict: None,
                });
            }
        }
    }
    (plan, check_of)
}

/// Folds the decided plan back into per-descriptor statuses, then applies
/// envoyproxy/ratelimit's quota-mode rule and global shadow mode.
fn fold(
    req: &LimitRequest<'_>,
    applied: &Applied<'_>,
    check_of: &[usize],
    plan: Plan,
    degraded: Option<Degraded>,
    settings: &Settings,
) -> Result<Decision, LimitError> {
    let mut over_limit = vec![false; req.descriptors.len()];
    let mut limits = Vec::with_capacity(applied.len());
    for ((i, rule), &at) in applied.iter().zip(check_of) {
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
            quota_mode: rule.quota_mode || settings.quota_mode,
            metadata: rule.metadata.clone(),
            metric_levels: rule.metric_levels.clone(),
            detailed_metric: rule.detailed_metric,
            verdict,
        };
        over_limit[*i] |= status.is_over();
        limits.push(status);
    }
    let refused_by_quota = every_quota_descriptor_over(&limits, &over_limit);
    let allowed = plan.admitted && !refused_by_quota;
    let shadowed = !allowed && settings.shadow_mode;
    Ok(Decision {
        allowed: allowed || shadowed,
        retry_after: if allowed || shadowed {
            RetryAfter::Now
        } else {
            retry_after(&limits, refused_by_quota)
        },
        limits,
        over_limit,
        shadowed,
        degraded,
    })
}

/// envoyproxy/ratelimit's quota-mode rule: a request that matched quota-mode descriptors is
/// refused when every one of them is over its limit.
fn every_quota_descriptor_over(limits: &[LimitStatus], over_limit: &[bool]) -> bool {
    let mut quota_descriptors = limits.iter().filter(|l| l.quota_mode).map(|l| l.descriptor);
    let mut any = false;
    let all_over = quota_descriptors.all(|i| {
        any = true;
        over_limit.get(i).copied().unwrap_or(false)
    });
    any && all_over
}

/// When retrying can succeed: once every limit that refuses on its own frees up, and, when
/// the quota-mode rule refused, once the first quota-mode limit does.
fn retry_after(limits: &[LimitStatus], refused_by_quota: bool) -> RetryAfter {
    let own = limits
        .iter()
        .filter(|l| l.rejects())
        .map(|l| l.verdict.retry_after)
        .max()
        .unwrap_or(RetryAfter::Now);
    let quota = limits
        .iter()
        .filter(|l| refused_by_quota && l.quota_mode && l.is_over())
        .map(|l| l.verdict.retry_after)
        .min()
        .unwrap_or(RetryAfter::Now);
    own.max(quota)
}

/// The entries a descriptor's counter is named by when its rule names some values itself
/// (`share_threshold`'s wildcard, a known API key's digest): each such entry's value replaced,
/// so every request it stands for counts on one counter.
fn counter_entries<'d>(
    d: &'d Descriptor<'_>,
    named: &'d SharedValues,
) -> impl Iterator<Item = (&'d str, &'d str)> {
    d.entries.iter().enumerate().map(|(i, e)| {
        let name = named.get(i).and_then(|n| n.as_deref());
        (e.key, name.unwrap_or(e.value))
    })
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
