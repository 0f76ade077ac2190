//! What the Redis store counts, for `/metrics`: round trips and their latency, pipeline
//! sizes, errors by kind, over-limit cache hits and cross-slot refunds. Every handle is
//! resolved here, once, so counting is an atomic add.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts};

use crate::metrics::LATENCY_BUCKETS;
use crate::store::StoreError;

/// The kinds of `ratelimiter_redis_errors_total`, in the order of [`RedisStats::errors`].
const ERROR_KINDS: [&str; 5] = [
    "timeout",
    "unavailable",
    "circuit_open",
    "protocol",
    "other",
];

#[derive(Clone)]
pub struct RedisStats {
    /// Calls sent to Redis (a pipeline of many decisions counts once).
    pub round_trips: IntCounter,
    /// Decisions sent to Redis.
    pub decisions: IntCounter,
    /// Rejections answered by the over-limit cache, without Redis.
    pub cached_rejections: IntCounter,
    /// Cross-slot reservations given back (see `cross_slot`).
    pub refunds: IntCounter,
    /// Cross-slot reservations whose refund failed after every attempt.
    pub refund_failures: IntCounter,
    /// How long a decision call (a pipeline, or a script run on a Cluster) takes.
    pub call_duration: Histogram,
    /// Plans per pipeline.
    pub batch_size: Histogram,
    /// Failed decisions by kind (see [`ERROR_KINDS`]).
    errors: [IntCounter; 5],
    /// Registered as one family; the handles above are its children.
    errors_vec: IntCounterVec,
}

fn counter(name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    IntCounter::new(name, help)
}

impl RedisStats {
    pub fn new() -> Result<Self, prometheus::Error> {
        let errors_vec = IntCounterVec::new(
            Opts::new(
                "ratelimiter_redis_errors_total",
                "Decisions Redis did not answer, by kind (timeout, unavailable, circuit_open, \
                 protocol, other).",
            ),
            &["kind"],
        )?;
        let batch_buckets = vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
        Ok(RedisStats {
            round_trips: counter(
                "ratelimiter_redis_round_trips_total",
                "Calls sent to Redis; a pipeline of many decisions counts once.",
            )?,
            decisions: counter(
                "ratelimiter_redis_decisions_total",
                "Decisions (plans) sent to Redis.",
            )?,
            cached_rejections: counter(
                "ratelimiter_redis_cached_rejections_total",
                "Rejections answered by the over-limit cache without asking Redis.",
            )?,
            refunds: counter(
                "ratelimiter_redis_refunds_total",
                "Cross-slot reservations given back after a later slot rejected, failed or \
                 timed out.",
            )?,
            refund_failures: counter(
                "ratelimiter_redis_refund_failures_total",
                "Cross-slot reservations whose refund failed after every attempt; they stay \
                 charged until their counters expire.",
            )?,
            call_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "ratelimiter_redis_call_duration_seconds",
                    "Time of one decision call to Redis (a pipeline, or a script run on a \
                     Cluster), reply included.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new(
                    "ratelimiter_redis_batch_size",
                    "Decisions carried by one pipeline to Redis.",
                )
                .buckets(batch_buckets),
            )?,
            errors: ERROR_KINDS.map(|k| errors_vec.with_label_values(&[k])),
            errors_vec,
        })
    }

    /// Counts a decision Redis did not answer; `breaker_open`: the breaker refused it.
    pub fn error(&self, e: &StoreError, breaker_open: bool) {
        let i = match e {
            StoreError::Timeout(_) => 0,
            StoreError::Unavailable(_) if breaker_open => 2,
            StoreError::Unavailable(_) => 1,
            StoreError::Protocol(_) => 3,
            StoreError::Full { .. } | StoreError::Config(_) => 4,
        };
        self.errors[i].inc();
    }

    /// The collectors, to register with the service's registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.round_trips.clone()),
            Box::new(self.decisions.clone()),
            Box::new(self.cached_rejections.clone()),
            Box::new(self.refunds.clone()),
            Box::new(self.refund_failures.clone()),
            Box::new(self.call_duration.clone()),
            Box::new(self.batch_size.clone()),
            Box::new(self.errors_vec.clone()),
        ]
    }
}
