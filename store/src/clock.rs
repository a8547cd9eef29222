//! The store's clock, injected: every time a store writes — ids (UUIDv7), `created_at` and
//! `updated_at`, usage periods, analytics hours and days, usage warnings, outbox write times —
//! comes from the [`StoreClock`] of its configuration ([`crate::SqliteConfig`],
//! `ScyllaConfig`), the system clock by default. Tests give a [`ManualClock`] to write a
//! project's history over past hours and days.

use std::fmt;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use larachat_core::model;

/// A source of "now" (millisecond precision, like [`model::now`]).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        model::now()
    }
}

/// A clock that moves only when told.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    /// A clock showing `t` (truncated to the millisecond).
    pub fn starting_at(t: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(truncate(t))))
    }

    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = truncate(t);
    }

    pub fn advance(&self, by: chrono::TimeDelta) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t = truncate(*t + by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn truncate(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

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
