//! envoyproxy/ratelimit's `value_to_metric`: verdicts by the descriptor's runtime values,
//! `ratelimiter_descriptor_decisions_total{domain, limit, descriptor, outcome}`.
//!
//! This is the one metric whose label holds what a request sent, and only for descriptors
//! that opt in. So that one client cannot blow up cardinality, each (domain, limit) keeps at
//! most [`MAX_VALUES`] distinct `descriptor` labels; later ones count under [`OTHER`]. The
//! set of labels seen sits behind a mutex, taken only for opted-in descriptors.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use prometheus::{IntCounterVec, Opts};

use super::LimitOutcome;

/// The most distinct `descriptor` labels per (domain, limit).
pub const MAX_VALUES: usize = 100;

/// The `descriptor` label of values past [`MAX_VALUES`].
pub const OTHER: &str = "_other";

pub struct ValueCounters {
    vec: IntCounterVec,
    /// (domain, limit) → the `descriptor` labels given a series so far.
    seen: Mutex<HashMap<(String, String), HashSet<String>>>,
}

impl ValueCounters {
    pub fn new() -> Result<Self, prometheus::Error> {
        let vec = IntCounterVec::new(
            Opts::new(
                "ratelimiter_descriptor_decisions_total",
                "Verdicts of limits whose descriptor sets value_to_metric, by the request's \
                 descriptor (key_value per level; at most 100 per limit, then _other).",
            ),
            &["domain", "limit", "descriptor", "outcome"],
        )?;
        Ok(ValueCounters {
            vec,
            seen: Mutex::new(HashMap::new()),
        })
    }

    pub fn collector(&self) -> Box<dyn prometheus::core::Collector> {
        Box::new(self.vec.clone())
    }

    /// Counts one verdict under `descriptor`, or under [`OTHER`] once the limit has
    /// [`MAX_VALUES`] labels.
    pub fn record(&self, domain: &str, limit: &str, descriptor: &str, outcome: LimitOutcome) {
        let label = {
            let Ok(mut seen) = self.seen.lock() else {
                return;
            };
            let labels = seen
                .entry((domain.to_owned(), limit.to_owned()))
                .or_default();
            if labels.contains(descriptor) || labels.len() < MAX_VALUES {
                labels.insert(descriptor.to_owned());
                descriptor
            } else {
                OTHER
            }
        };
        self.vec
            .with_label_values(&[domain, limit, label, outcome.as_str()])
            .inc();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn values_past_the_cap_count_as_other() {
        let c = ValueCounters::new().unwrap();
        for i in 0..MAX_VALUES + 20 {
            c.record("d", "l", &format!("k_{i}"), LimitOutcome::Allowed);
        }
        c.record("d", "l", "k_0", LimitOutcome::Allowed);
        let families = prometheus::core::Collector::collect(&c.vec);
        let series = families[0].get_metric().len();
        assert_eq!(series, MAX_VALUES + 1, "100 values and _other");
        let other = c.vec.with_label_values(&["d", "l", OTHER, "allowed"]).get();
        assert_eq!(other, 20);
        assert_eq!(
            c.vec.with_label_values(&["d", "l", "k_0", "allowed"]).get(),
            2
        );
    }
}
