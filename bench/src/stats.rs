//! Latency statistics: HDR histograms in microseconds, summarised as min, mean, p50, p95, p99
//! and max in milliseconds.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// One latency metric.
#[derive(Debug, Clone)]
pub struct Metric {
    hist: Histogram<u64>,
}

impl Default for Metric {
    fn default() -> Self {
        Self::new()
    }
}

impl Metric {
    /// An empty metric: 1 µs to 10 min, 3 significant digits.
    pub fn new() -> Self {
        Metric {
            hist: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
        }
    }

    /// Records one sample.
    pub fn record(&mut self, d: Duration) {
        self.hist.saturating_record((d.as_micros() as u64).max(1));
    }

    /// Records a sample given in milliseconds (negative values count as 0).
    pub fn record_ms(&mut self, ms: f64) {
        self.hist
            .saturating_record(((ms.max(0.0)) * 1000.0).round().max(1.0) as u64);
    }

    /// Adds another metric's samples.
    pub fn merge(&mut self, other: &Metric) {
        self.hist.add(&other.hist).expect("same bounds");
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The summary, or `None` with no samples.
    pub fn summary(&self) -> Option<Summary> {
        if self.hist.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Summary {
            count: self.hist.len(),
            min_ms: ms(self.hist.min()),
            mean_ms: (self.hist.mean() / 1000.0 * 1000.0).round() / 1000.0,
            p50_ms: ms(self.hist.value_at_quantile(0.50)),
            p95_ms: ms(self.hist.value_at_quantile(0.95)),
            p99_ms: ms(self.hist.value_at_quantile(0.99)),
            max_ms: ms(self.hist.max()),
        })
    }
}

/// Percentiles of one metric, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Summary {
    /// A statistic by name: `min`, `mean`, `p50`, `p95`, `p99`, `max`.
    pub fn get(&self, stat: &str) -> Option<f64> {
        Some(match stat {
            "min" => self.min_ms,
            "mean" => self.mean_ms,
            "p50" => self.p50_ms,
            "p95" => self.p95_ms,
            "p99" => self.p99_ms,
            "max" => self.max_ms,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut m = Metric::new();
        for i in 1..=1000 {
            m.record(Duration::from_millis(i));
        }
        let s = m.summary().unwrap();
        assert_eq!(s.count, 1000);
        assert_eq!(s.min_ms, 1.0);
        // HDR keeps 3 significant digits.
        assert!((s.p50_ms - 500.0).abs() <= 0.5, "{s:?}");
        assert!((s.p95_ms - 950.0).abs() <= 1.0, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() <= 1.0, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() <= 1.0, "{s:?}");
        assert!((s.mean_ms - 500.5).abs() <= 0.5, "{s:?}");
    }

    #[test]
    fn merging_adds_samples_and_empty_has_no_summary() {
        let mut a = Metric::new();
        assert!(a.summary().is_none());
        let mut b = Metric::new();
        a.record_ms(10.0);
        b.record_ms(30.0);
        b.record_ms(-5.0);
        a.merge(&b);
        let s = a.summary().unwrap();
        assert_eq!(s.count, 3);
        assert!((s.max_ms - 30.0).abs() < 0.05, "{s:?}");
        assert_eq!(s.get("p99"), Some(s.p99_ms));
        assert_eq!(s.get("p42"), None);
    }
}
