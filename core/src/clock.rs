//! Injected time: code that decides by the clock (the store's ids, timestamps, usage periods
//! and analytics buckets; the webhook worker's schedule) reads "now" through a [`Clock`], so
//! tests move time by hours or days without sleeping. One definition for every crate.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use crate::model;

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
