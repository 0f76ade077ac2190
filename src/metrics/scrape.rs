//! Gauges whose value is read at scrape time (a breaker's state, a queue's depth, how many
//! counters a store holds), so that nothing on the hot path has to keep them up to date.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, Opts};

/// Reads the value a [`ScrapeGauge`] reports.
pub type ReadValue = Box<dyn Fn() -> f64 + Send + Sync>;

/// A gauge set from `read` each time `/metrics` is scraped.
pub struct ScrapeGauge {
    gauge: Gauge,
    read: ReadValue,
}

impl ScrapeGauge {
    /// A gauge named by `opts` (constant labels allowed), read from `read` at every scrape.
    pub fn new(opts: Opts, read: ReadValue) -> Result<Self, prometheus::Error> {
        Ok(ScrapeGauge {
            gauge: Gauge::with_opts(opts)?,
            read,
        })
    }
}

impl Collector for ScrapeGauge {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.gauge.set((self.read)());
        self.gauge.collect()
    }
}
