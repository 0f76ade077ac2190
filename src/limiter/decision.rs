//! What the limiter answers: per-descriptor statuses and the figures headers are made of.

use std::sync::Arc;

use crate::algorithm::{Algorithm, Quota, RetryAfter, Verdict};

/// One limit's verdict for one request.
#[derive(Clone, Debug)]
pub struct LimitStatus {
    /// Which descriptor of the request (index) this limit matched.
    pub descriptor: usize,
    pub name: Arc<str>,
    pub algorithm: Algorithm,
    pub quota: Quota,
    pub shadow: bool,
    /// envoyproxy/ratelimit's quota mode: over its limit, it refuses the request only when
    /// every quota-mode descriptor of the request is over (see [`Decision::allowed`]).
    pub quota_mode: bool,
    /// How the per-value metric writes the descriptor (`value_to_metric`), if it is wanted.
    pub metric_levels: Option<super::MetricLevels>,
    /// The descriptor's configured `metadata` (for Envoy's dynamic metadata).
    pub metadata: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// The descriptor asked for per-limit metrics (envoyproxy/ratelimit's `detailed_metric`).
    pub detailed_metric: bool,
    pub verdict: Verdict,
}

impl LimitStatus {
    /// Whether this limit is over and says so (a shadow-mode limit never does): its
    /// descriptor's status is OVER_LIMIT.
    pub fn is_over(&self) -> bool {
        !self.verdict.allowed && !self.shadow
    }

    /// Whether this limit stops the request on its own (a quota-mode one never does).
    pub fn rejects(&self) -> bool {
        self.is_over() && !self.quota_mode
    }
}

/// Why a decision was not taken by the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Degraded {
    /// The store failed and the policy said to allow.
    FailOpen,
    /// The store failed and the in-process fallback limiter decided.
    LocalFallback,
}

/// The answer to a [`LimitRequest`](super::LimitRequest).
#[derive(Clone, Debug)]
pub struct Decision {
    /// Admitted: no limit refuses it on its own, and when quota-mode descriptors matched,
    /// at least one of them is within its limit (envoyproxy/ratelimit's rule). Global shadow
    /// mode makes every refusal an admission (`shadowed`).
    pub allowed: bool,
    /// Every limit that applied, in descriptor order.
    pub limits: Vec<LimitStatus>,
    /// Per request descriptor: whether it is over its limit (a quota-mode descriptor may be
    /// over in an admitted request).
    pub over_limit: Vec<bool>,
    /// Refused by the limits, admitted by global shadow mode.
    pub shadowed: bool,
    /// When retrying the same request can succeed, if rejected.
    pub retry_after: RetryAfter,
    pub degraded: Option<Degraded>,
}

impl Decision {
    /// The limit the headers report: when rejected, the rejecting limit that frees up last;
    /// when allowed, the one with the least remaining (then the longest reset).
    pub fn tightest(&self) -> Option<&LimitStatus> {
        if self.allowed {
            self.limits
                .iter()
                .filter(|l| !l.shadow)
                .min_by_key(|l| {
                    (
                        l.verdict.remaining,
                        std::cmp::Reverse(l.verdict.reset_after),
                    )
                })
                .or_else(|| self.limits.first())
        } else {
            let refusing = |l: &&LimitStatus| l.rejects() || l.quota_mode && l.is_over();
            self.limits
                .iter()
                .filter(refusing)
                .max_by_key(|l| l.verdict.retry_after)
        }
    }

    /// A decision with nothing limiting it.
    pub fn unlimited(descriptors: usize) -> Self {
        Decision {
            allowed: true,
            limits: Vec::new(),
            over_limit: vec![false; descriptors],
            shadowed: false,
            retry_after: RetryAfter::Now,
            degraded: None,
        }
    }
}
