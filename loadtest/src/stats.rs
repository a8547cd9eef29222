//! Latency samples and their percentiles.
//!
//! Samples are kept exactly (microseconds in a `Vec`) and sorted once when summarised: a run
//! records at most a few million samples, so this is cheaper and simpler than a histogram and
//! its percentiles are exact (nearest-rank definition).

use std::time::Duration;

use serde::Serialize;

/// Latency samples in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples_us: Vec<u64>,
}

impl Latencies {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&mut self, d: Duration) {
        self.record_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn record_us(&mut self, us: u64) {
        self.samples_us.push(us);
    }

    pub fn merge(&mut self, other: Latencies) {
        self.samples_us.extend(other.samples_us);
    }

    /// Sorts the samples and computes the summary.
    pub fn summary(&mut self) -> Summary {
        self.samples_us.sort_unstable();
        let s = &self.samples_us;
        if s.is_empty() {
            return Summary::default();
        }
        let sum: u128 = s.iter().map(|&v| u128::from(v)).sum();
        Summary {
            count: s.len() as u64,
            mean_ms: us_to_ms((sum / s.len() as u128) as u64),
            p50_ms: us_to_ms(percentile(s, 50.0)),
            p90_ms: us_to_ms(percentile(s, 90.0)),
            p99_ms: us_to_ms(percentile(s, 99.0)),
            max_ms: us_to_ms(*s.last().unwrap_or(&0)),
        }
    }
}

/// Percentiles of a set of latencies, in milliseconds (three decimals).
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms (mean {:.3} ms, n={})",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms, self.mean_ms, self.count
        )
    }
}

/// Nearest-rank percentile of sorted samples: the smallest value such that at least `p`% of
/// the samples are at or below it. `p` is clamped to 0..=100; an empty slice gives 0.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Operations per second over `elapsed`, 0 when nothing elapsed.
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        0.0
    } else {
        ((count as f64 / secs) * 10.0).round() / 10.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 90.0), 90);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        // Ten samples: p99 is the largest, p50 the fifth.
        let v = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1000];
        assert_eq!(percentile(&v, 50.0), 5);
        assert_eq!(percentile(&v, 90.0), 9);
        assert_eq!(percentile(&v, 99.0), 1000);
    }

    #[test]
    fn summary_is_in_milliseconds_and_order_independent() {
        let mut l = Latencies::new();
        for us in [3000u64, 1000, 2000, 4000] {
            l.record_us(us);
        }
        let mut other = Latencies::new();
        other.record(Duration::from_micros(10_500));
        l.merge(other);
        let s = l.summary();
        assert_eq!(s.count, 5);
        assert_eq!(s.p50_ms, 3.0);
        assert_eq!(s.max_ms, 10.5);
        assert_eq!(s.mean_ms, 4.1);
        assert_eq!(Latencies::new().summary(), Summary::default());
    }

    #[test]
    fn rates() {
        assert_eq!(rate(1000, Duration::from_secs(4)), 250.0);
        assert_eq!(rate(10, Duration::ZERO), 0.0);
        assert_eq!(rate(1, Duration::from_secs(3)), 0.3);
    }
}
