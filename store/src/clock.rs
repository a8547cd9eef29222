//! The store's clock, injected: every time a store writes — ids (UUIDv7), `created_at` and
//! `updated_at`, usage periods, analytics hours and days, usage warnings, outbox write times —
//! comes from the [`StoreClock`] of its configuration ([`crate::SqliteConfig`],
//! `ScyllaConfig`), the system clock by default. Tests give a [`ManualClock`] to write a
//! project's history over past hours and days.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use larachat_core::clock::{Clock, ManualClock, SystemClock};

/// The clock a store is configured with: shared, the system clock by default. Two handles
/// are equal when they are the same clock.
#[derive(Clone)]
pub struct StoreClock(Arc<dyn Clock>);

impl StoreClock {
    pub fn new(clock: impl Clock) -> Self {
        Self(Arc::new(clock))
    }

    pub fn system() -> Self {
        Self::new(SystemClock)
    }

    /// Now, by this clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.0.now()
    }
}

impl Default for StoreClock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for StoreClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreClock")
    }
}

impl PartialEq for StoreClock {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for StoreClock {}
