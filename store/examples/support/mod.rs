//! What the analytics benchmarks share (`#[path]`-included; not an example of its own).

use std::time::Duration;

use chrono::TimeDelta;
use larachat_core::analytics::Granularity;
use uuid::Uuid;

/// A small deterministic generator (xorshift), so runs are comparable.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A UUIDv7 made at `ms` (Unix milliseconds), as the service makes ids.
pub fn v7_at(ms: i64) -> Uuid {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        (ms / 1000) as u64,
        ((ms % 1000) * 1_000_000) as u32,
    );
    Uuid::new_v7(ts)
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The queries both benchmarks time: (name, span ending now, granularity).
pub fn cases() -> [(&'static str, TimeDelta, Granularity); 3] {
    [
        (
            "30 days by the hour",
            TimeDelta::days(30),
            Granularity::Hour,
        ),
        ("30 days by the day", TimeDelta::days(30), Granularity::Day),
        (
            "24 hours by the hour",
            TimeDelta::hours(24),
            Granularity::Hour,
        ),
    ]
}

/// The `p`-th percentile (nearest rank) of `sorted`, which is not empty.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p).div_ceil(100).max(1) - 1]
}
