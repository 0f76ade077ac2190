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
    /// The descriptor asked for per-limit metrics (envoyproxy/ratelimit's `detailed_metric`).
    pub detailed_metric: bool,
    pub verdict: Verdict,
}

impl LimitStatus {
    /// Whether this limit stops the request (a shadow-mode limit never does).
    pub fn rejects(&self) -> bool {
        !self.verdict.allowed && !self.shadow
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
    pub allowed: bool,
    /// Every limit that applied, in descriptor order.
    pub limits: Vec<LimitStatus>,
    /// Per request descriptor: whether it is over its limit.
    pub over_limit: Vec<bool>,
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
            self.limits
                .iter()
                .filter(|l| l.rejects())
                .max_by_key(|l| l.verdict.retry_after)
        }
    }

    /// A decision with nothing limiting it.
    pub fn unlimited(descriptors: usize) -> Self {
        Decision {
            allowed: true,
            limits: Vec::new(),
            over_limit: vec![false; descriptors],
            retry_after: RetryAfter::Now,
            degraded: None,
        }
    }
}
