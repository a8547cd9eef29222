//! The wall clock, injected: the worker and the schedule read time only through [`Clock`],
//! so tests move time by days without sleeping.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

/// A source of "now".
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        larachat_core::model::now()
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    pub fn starting_at(t: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(t)))
    }

    pub fn advance(&self, by: chrono::Duration) {
        *self.0.lock() += by;
    }

    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock() = t;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock()
    }
}
