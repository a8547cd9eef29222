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

    pub fn len(&self) -> usize {
        self.samples_us.len()
    }

    /// `(latency ms, fraction of samples at or below)` at up to `points` evenly spaced ranks
    /// (always including the maximum), for a CDF plot. Sorts the samples.
    pub fn cdf(&mut self, points: usize) -> Vec<(f64, f64)> {
        self.samples_us.sort_unstable();
        let s = &self.samples_us;
        if s.is_empty() || points == 0 {
            return Vec::new();
        }
        let n = s.len();
        let step = n.div_ceil(points).max(1);
        let mut out: Vec<(f64, f64)> = (step - 1..n)
            .step_by(step)
            .map(|i| (us_to_ms(s[i]), (i + 1) as f64 / n as f64))
            .collect();
        if out.last().map(|&(_, f)| f) != Some(1.0) {
            out.push((us_to_ms(s[n - 1]), 1.0));
        }
        out
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

/// Which of the sequence numbers 1..=n were seen (one bit each), to count duplicates and
/// missing deliveries without a set of strings per subscriber.
#[derive(Debug, Clone, Default)]
pub struct SeqSet {
    bits: Vec<u64>,
    count: u64,
}

impl SeqSet {
    /// Marks `seq`; false if it was already marked.
    pub fn insert(&mut self, seq: u64) -> bool {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        let fresh = self.bits[w] & (1 << b) == 0;
        self.bits[w] |= 1 << b;
        self.count += u64::from(fresh);
        fresh
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.bits
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits.iter().enumerate().flat_map(|(w, &bits)| {
            (0..64u64)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| w as u64 * 64 + b)
        })
    }
}

/// The sequence number at the end of a key `<prefix>-<seq>`.
pub fn key_seq(key: &str) -> Option<u64> {
    key.rsplit_once('-')?.1.parse().ok()
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
    fn cdf_points_end_at_the_maximum() {
        let mut l = Latencies::new();
        for us in (1..=1000u64).rev() {
            l.record_us(us * 1000);
        }
        let c = l.cdf(10);
        assert_eq!(c.len(), 10);
        assert_eq!(c[0], (100.0, 0.1));
        assert_eq!(*c.last().unwrap(), (1000.0, 1.0));
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        let mut few = Latencies::new();
        few.record_us(5);
        assert_eq!(few.cdf(100), vec![(0.005, 1.0)]);
        assert!(Latencies::new().cdf(10).is_empty());
    }

    #[test]
    fn seq_sets_count_once() {
        let mut s = SeqSet::default();
        assert!(s.insert(1));
        assert!(s.insert(130));
        assert!(!s.insert(1));
        assert_eq!(s.len(), 2);
        assert!(s.contains(130) && !s.contains(2) && !s.contains(10_000));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![1, 130]);
        assert_eq!(key_seq("lt1a2b-f-17"), Some(17));
        assert_eq!(key_seq("nodash"), None);
        assert_eq!(key_seq("x-notanumber"), None);
    }

    #[test]
    fn rates() {
        assert_eq!(rate(1000, Duration::from_secs(4)), 250.0);
        assert_eq!(rate(10, Duration::ZERO), 0.0);
        assert_eq!(rate(1, Duration::from_secs(3)), 0.3);
    }
}
