//! Usage metered at the edge: each project's API requests and the most realtime connections
//! it had open at once (docs/usage.md, "Edge metrics").
//!
//! Each gateway process counts in memory, per project and UTC hour, and flushes its running
//! values ([`EdgeUsage`]) to the store every [`FLUSH_EVERY`] and when it shuts down. The rows
//! are keyed by this process's id (new at each start), so gateways never write each other's
//! rows, and a value is written as a total, never as an increment: a retried or repeated
//! flush counts nothing twice. The usage API sums the processes' requests and, per hour, their
//! peaks.
//!
//! What is counted:
//! - a request: every Client API or Widget API request that passed authentication and the
//!   rate limits (including `POST /widget/v1/init`); realtime frames are not requests (the
//!   messages they send are metered as messages);
//! - connections: authenticated realtime connections, per project. A process's peak of an
//!   hour is the most it held at once in that hour; connections still open when an hour
//!   begins count in the new hour at the next flush.
//!
//! A process killed without shutting down loses what it counted since its last flush (at
//! most [`FLUSH_EVERY`] of requests); nothing is ever counted twice. The state machine,
//! [`Meter`], takes `now` from its caller (an injected clock); [`UsageMeter`] drives it with
//! the wall clock.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use uuid::Uuid;

use larachat_core::id::ProjectId;
use larachat_core::plan::EdgeUsage;
use larachat_store::Store;

/// How often a gateway writes what it metered.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// One project's counts of one hour in this process.
#[derive(Debug, Default)]
struct Slot {
    requests: u64,
    peak: u64,
    /// Changed since it was last written.
    dirty: bool,
}

/// The metering state of one process. Every method takes the current time.
#[derive(Debug, Default)]
pub struct Meter {
    /// Realtime connections open now, per project (no entry at 0).
    open: HashMap<ProjectId, u64>,
    /// Counts per (project, hour start). An hour that is over stays until it is written.
    hours: HashMap<(ProjectId, DateTime<Utc>), Slot>,
    /// The latest time seen: time never goes back here, so an hour once forgotten is never
    /// counted again from zero (which would overwrite its total with less).
    latest: Option<DateTime<Utc>>,
}

impl Meter {
    fn now(&mut self, now: DateTime<Utc>) -> DateTime<Utc> {
        let now = self.latest.map_or(now, |l| l.max(now));
        self.latest = Some(now);
        now
    }

    fn slot(&mut self, project: ProjectId, now: DateTime<Utc>) -> &mut Slot {
        let now = self.now(now);
        self.hours
            .entry((project, EdgeUsage::hour_of(now)))
            .or_default()
    }

    /// One API request of `project`.
    pub fn request(&mut self, project: ProjectId, now: DateTime<Utc>) {
        let slot = self.slot(project, now);
        slot.requests += 1;
        slot.dirty = true;
    }

    /// A realtime connection of `project` was authenticated.
    pub fn connected(&mut self, project: ProjectId, now: DateTime<Utc>) {
        let open = self.open.entry(project).or_default();
        *open += 1;
        let open = *open;
        let slot = self.slot(project, now);
        if slot.peak < open {
            slot.peak = open;
            slot.dirty = true;
        }
    }

    /// A realtime connection of `project` ended.
    pub fn disconnected(&mut self, project: ProjectId) {
        if let Entry::Occupied(mut e) = self.open.entry(project) {
            *e.get_mut() = e.get().saturating_sub(1);
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// What changed since the last call, as rows to write. Hours that are over and were
    /// written are forgotten; connections still open count in the current hour.
    pub fn take(&mut self, now: DateTime<Utc>) -> Vec<EdgeUsage> {
        let this_hour = EdgeUsage::hour_of(self.now(now));
        self.hours
            .retain(|(_, hour), slot| *hour >= this_hour || slot.dirty);
        for (project, &n) in &self.open {
            let slot = self.hours.entry((*project, this_hour)).or_default();
            if slot.peak < n {
                slot.peak = n;
                slot.dirty = true;
            }
        }
        let mut rows = Vec::new();
        for ((project, hour), slot) in &mut self.hours {
            if std::mem::take(&mut slot.dirty) {
                rows.push(EdgeUsage {
                    project: *project,
                    hour: *hour,
                    requests: slot.requests,
                    peak_connections: slot.peak,
                });
            }
        }
        rows
    }

    /// Rows taken by [`Meter::take`] that could not be written: written with the next ones.
    pub fn untake(&mut self, rows: &[EdgeUsage]) {
        for r in rows {
            // The slot is still there: `take` forgets only hours that are not dirty.
            self.hours.entry((r.project, r.hour)).or_default().dirty = true;
        }
    }
}

/// A gateway's meter: [`Meter`] under a lock, on the wall clock (read under the lock, so
/// the meter sees time in order), flushed to the store.
pub struct UsageMeter {
    process: Uuid,
    store: Arc<dyn Store>,
    state: Mutex<Meter>,
}

impl UsageMeter {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            process: Uuid::new_v4(),
            store,
            state: Mutex::new(Meter::default()),
        }
    }

    /// This process's id in the usage rows.
    pub fn process_id(&self) -> Uuid {
        self.process
    }

    pub fn request(&self, project: ProjectId) {
        self.state.lock().request(project, Utc::now());
    }

    pub fn connected(&self, project: ProjectId) {
        self.state.lock().connected(project, Utc::now());
    }

    pub fn disconnected(&self, project: ProjectId) {
        self.state.lock().disconnected(project);
    }

    /// Writes what changed since the last flush. On failure the rows are kept for the next.
    pub async fn flush(&self) -> Result<(), larachat_store::StoreError> {
        let rows = self.state.lock().take(Utc::now());
        if rows.is_empty() {
            return Ok(());
        }
        let written = self.store.record_edge_usage(self.process, &rows).await;
        if written.is_err() {
            self.state.lock().untake(&rows);
        }
        written
    }

    /// Flushes every [`FLUSH_EVERY`] until `shutdown`, then once more.
    pub async fn run(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            if let Err(e) = self.flush().await {
                tracing::warn!(error = %e, "could not write edge usage; retrying at the next flush");
            }
        }
        if let Err(e) = self.flush().await {
            tracing::warn!(error = %e, "could not write edge usage at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 30, h, m, 0).unwrap()
    }

    fn by_hour(rows: &[EdgeUsage]) -> Vec<(u32, u64, u64)> {
        use chrono::Timelike;
        let mut v: Vec<_> = rows
            .iter()
            .map(|r| (r.hour.hour(), r.requests, r.peak_connections))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn counts_requests_and_peaks_per_hour_as_running_values() {
        let p = ProjectId::new_v7();
        let mut m = Meter::default();
        m.request(p, at(9, 1));
        m.request(p, at(9, 2));
        m.connected(p, at(9, 3));
        m.connected(p, at(9, 4));
        m.disconnected(p);
        assert_eq!(by_hour(&m.take(at(9, 5))), vec![(9, 2, 2)]);
        assert!(m.take(at(9, 6)).is_empty(), "nothing changed");
        // Running values: the next row of the hour carries the total, not the increment.
        m.request(p, at(9, 7));
        assert_eq!(by_hour(&m.take(at(9, 8))), vec![(9, 3, 2)]);
        // A connection still open at 10:00 counts in the new hour without any event.
        assert_eq!(by_hour(&m.take(at(10, 0))), vec![(10, 0, 1)]);
        m.disconnected(p);
        m.disconnected(p); // more closes than opens never underflow
        m.connected(p, at(10, 30));
        assert!(m.take(at(10, 31)).is_empty(), "the hour's peak is still 1");
        // The 9:00 slot was written and is over: forgotten.
        assert_eq!(m.hours.len(), 1);
    }

    #[test]
    fn rows_that_failed_are_written_with_the_next() {
        let p = ProjectId::new_v7();
        let mut m = Meter::default();
        m.request(p, at(9, 59));
        let failed = m.take(at(9, 59));
        m.untake(&failed);
        // The hour is over, but its row was never written: it stays until it is.
        m.request(p, at(10, 1));
        assert_eq!(by_hour(&m.take(at(10, 2))), vec![(9, 1, 0), (10, 1, 0)]);
        assert_eq!(by_hour(&m.take(at(10, 3))), vec![]);
        assert_eq!(m.hours.len(), 1);
        // A clock that steps back counts in the latest hour seen, never in a forgotten one.
        m.request(p, at(9, 58));
        assert_eq!(by_hour(&m.take(at(10, 4))), vec![(10, 2, 0)]);
    }
}
