//! Per-limit verdicts: `ratelimiter_limit_decisions_total{door, domain, limit, outcome}`.
//!
//! Every label value comes from the configuration: `domain` is a configured domain (a limit
//! only applies in one), `limit` a configured limit's name (or `override` for Envoy's
//! request-supplied limit), so the series are bounded by the limits ever loaded, never by
//! what requests carry.
//!
//! The counter handles are looked up in a table read through an [`ArcSwap`] (no lock, no
//! allocation); a limit seen for the first time is added copy-on-write, once per limit. The
//! table hashes with FNV-1a: its keys are configured names (a limit only applies in a
//! configured domain), so no request can choose what collides, and short names hash in a
//! few nanoseconds where SipHash takes tens.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntCounterVec, Opts};

use super::Door;

/// What one limit said about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitOutcome {
    Allowed = 0,
    Rejected = 1,
    /// A shadow-mode limit that would have rejected: counted, never enforced.
    Shadow = 2,
}

impl LimitOutcome {
    const ALL: [LimitOutcome; 3] = [
        LimitOutcome::Allowed,
        LimitOutcome::Rejected,
        LimitOutcome::Shadow,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LimitOutcome::Allowed => "allowed",
            LimitOutcome::Rejected => "rejected",
            LimitOutcome::Shadow => "shadow",
        }
    }
}

/// One limit's counters, by door and outcome.
type Handles = [[IntCounter; 3]; 4];
type Fnv = BuildHasherDefault<Fnv1a>;
/// Domain → limit name → counters.
type Table = HashMap<Arc<str>, HashMap<Arc<str>, Handles, Fnv>, Fnv>;

/// FNV-1a, 64 bits.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub struct LimitCounters {
    vec: IntCounterVec,
    table: ArcSwap<Table>,
}

impl LimitCounters {
    pub fn new() -> Result<Self, prometheus::Error> {
        let vec = IntCounterVec::new(
            Opts::new(
                "ratelimiter_limit_decisions_total",
                "Verdicts of each configured limit, by front door, domain, limit name and \
                 outcome (allowed, rejected, shadow).",
            ),
            &["door", "domain", "limit", "outcome"],
        )?;
        Ok(LimitCounters {
            vec,
            table: ArcSwap::from_pointee(Table::default()),
        })
    }

    /// The collector to register.
    pub fn collector(&self) -> Box<dyn prometheus::core::Collector> {
        Box::new(self.vec.clone())
    }

    /// Counts one verdict of the configured limit `limit` of `domain`.
    pub fn record(&self, door: Door, domain: &str, limit: &str, outcome: LimitOutcome) {
        let table = self.table.load();
        if let Some(handles) = table.get(domain).and_then(|limits| limits.get(limit)) {
            handles[door as usize][outcome as usize].inc();
            return;
        }
        drop(table);
        self.add(domain, limit)[door as usize][outcome as usize].inc();
    }

    /// Creates the counters of a limit seen for the first time and adds them to the table.
    fn add(&self, domain: &str, limit: &str) -> Handles {
        let handles: Handles = Door::ALL.map(|d| {
            LimitOutcome::ALL.map(|o| {
                self.vec
                    .with_label_values(&[d.as_str(), domain, limit, o.as_str()])
            })
        });
        self.table.rcu(|table| {
            let mut table = Table::clone(table);
            table
                .entry(domain.into())
                .or_default()
                .insert(limit.into(), handles.clone());
            table
        });
        handles
    }
}
