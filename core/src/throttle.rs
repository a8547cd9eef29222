//! A counter that says when a repeated event deserves a log line.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts repeated events (dropped messages, failed publishes) and lets the 1st, 2nd, 4th,
/// 8th… through: rate-limited without a clock, so a flood of n events costs log₂(n) lines
/// while the total stays exact.
#[derive(Debug, Default)]
pub struct PowersOfTwo(AtomicU64);

impl PowersOfTwo {
    /// Counts `n` more events. Returns the new total when it reached or crossed a power of
    /// two (log then), `None` otherwise.
    pub fn add(&self, n: u64) -> Option<u64> {
        if n == 0 {
            return None;
        }
        let before = self.0.fetch_add(n, Ordering::Relaxed);
        let after = before.saturating_add(n);
        (before == 0 || after.ilog2() > before.ilog2()).then_some(after)
    }

    /// Events counted so far.
    pub fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_at_powers_of_two_and_counts_everything() {
        let t = PowersOfTwo::default();
        let logged: Vec<u64> = (0..20).filter_map(|_| t.add(1)).collect();
        assert_eq!(logged, [1, 2, 4, 8, 16]);
        assert_eq!(t.total(), 20);
        assert_eq!(t.add(0), None);
        assert_eq!(t.add(13), Some(33), "a batch crossing 32");
        assert_eq!(t.add(1), None);
    }
}
