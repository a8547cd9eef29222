//! [`EventLog`] over the outbox: durable consumers with checkpoints, work-queue workers.
//!
//! A consumer group (one [`ConsumerName`]) keeps, in memory and shared by its workers:
//! - `checkpoint`: every event at or below it is handled; loaded from `event_consumers` (a new
//!   consumer registered at 0) when the group is first opened;
//! - `saved`: the checkpoint as last written to `event_consumers` (≤ `checkpoint`), and when.
//!   An ack only moves `checkpoint` in memory; a `fetch` writes it before claiming more once
//!   [`SAVE_EVERY`] has passed since the last write (or the checkpoint moved [`SAVE_SPAN`]
//!   positions), a trim writes every group's first, and closing the store writes what is
//!   left. So a busy consumer costs one checkpoint write per second, not one per batch (on
//!   the 1:1 benchmark that was one extra commit per message), and a kill loses at most the
//!   acks of the last second: those events are delivered again (at least once, as for any
//!   ack above the checkpoint);
//! - `delivered`: the highest position handed out so far (≥ checkpoint);
//! - `in_flight`: positions handed out and not acknowledged, with their redelivery deadline
//!   and attempt count.
//!
//! Because a fetch hands out the first eligible events in position order, every event in
//! `(checkpoint, delivered]` that is not in flight has been acknowledged, and the checkpoint is
//! `min(in_flight) - 1` (or `delivered` when nothing is in flight). After a restart only the
//! checkpoint is known: events acknowledged above it are delivered again (at least once;
//! consumers de-duplicate by event id). Writers to the outbox wake waiting fetches through a
//! [`Notify`]; fetches also wake at the nearest redelivery deadline.
//!
//! One process per database file (the single-node mode): a second process opening the same
//! consumer would not see this one's in-flight set.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use larachat_core::event::{
    Acker, ConsumerName, ConsumerOptions, Delivery, DomainEvent, EventConsumer, EventLog,
    EventLogError,
};

use super::{SqliteStore, outbox};
use crate::StoreError;

/// Rows read per query while looking for eligible events.
const PAGE: usize = 256;
/// A moved checkpoint is written by the first fetch this long after the previous write…
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// …or once it has moved this many positions, whichever comes first.
const SAVE_SPAN: i64 = 4096;

/// The shared state of one consumer group.
#[derive(Debug)]
pub(crate) struct Group {
    checkpoint: i64,
    saved: i64,
    saved_at: Instant,
    delivered: i64,
    in_flight: BTreeMap<i64, InFlight>,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    deadline: Instant,
    attempt: u64,
}

impl Group {
    /// Whether a fetch at `now` should write the checkpoint first.
    fn save_due(&self, now: Instant) -> bool {
        self.checkpoint > self.saved
            && (now >= self.saved_at + SAVE_EVERY || self.checkpoint - self.saved >= SAVE_SPAN)
    }

    fn current_checkpoint(&self) -> i64 {
        match self.in_flight.keys().next() {
            Some(first) => first - 1,
            None => self.delivered,
        }
    }

    fn mark_saved(&mut self, position: i64, at: Instant) {
        self.saved = self.saved.max(position);
        self.saved_at = at;
    }
}

/// The groups opened through one store, by name (names come from our code, not clients).
#[derive(Default)]
pub(crate) struct Groups {
    pub(crate) by_name: Mutex<HashMap<ConsumerName, Arc<Mutex<Group>>>>,
    /// Signalled after every committed write (new events may be visible) and every ack.
    pub(crate) changed: Notify,
}

impl Groups {
    /// The checkpoints that acks moved past what is written: (name, checkpoint).
    pub(crate) fn unsaved(&self) -> Vec<(String, i64)> {
        self.by_name
            .lock()
            .iter()
            .filter_map(|(name, g)| {
                let g = g.lock();
                (g.checkpoint > g.saved).then(|| (name.as_str().to_owned(), g.checkpoint))
            })
            .collect()
    }

    /// Records that `saved` were written.
    pub(crate) fn mark_saved(&self, saved: &[(String, i64)]) {
        let by_name = self.by_name.lock();
        for (name, position) in saved {
            if let Some(g) = by_name
                .iter()
                .find(|(n, _)| n.as_str() == name)
                .map(|(_, g)| g)
            {
                g.lock().mark_saved(*position, Instant::now());
            }
        }
    }
}

fn log_error(e: StoreError) -> EventLogError {
    match e {
        StoreError::Unavailable(m) => EventLogError::Unavailable(m),
        other => EventLogError::Internal(other.to_string()),
    }
}

#[async_trait]
impl EventLog for SqliteStore {
    async fn consumer(
        &self,
        name: &ConsumerName,
        options: ConsumerOptions,
    ) -> Result<Box<dyn EventConsumer>, EventLogError> {
        let existing = self.inner.groups.by_name.lock().get(name).cloned();
        let group = match existing {
            Some(g) => g,
            None => {
                let key = name.as_str().to_owned();
                let checkpoint = self
                    .write(move |c| outbox::register(c, &key))
                    .await
                    .map_err(log_error)?;
                let mut groups = self.inner.groups.by_name.lock();
                groups
                    .entry(name.clone())
                    .or_insert_with(|| {
                        Arc::new(Mutex::new(Group {
                            checkpoint,
                            saved: checkpoint,
                            saved_at: Instant::now(),
                            delivered: checkpoint,
                            in_flight: BTreeMap::new(),
                        }))
                    })
                    .clone()
            }
        };
        Ok(Box::new(SqliteConsumer {
            store: self.clone(),
            name: name.clone(),
            group,
            options,
        }))
    }
}

struct SqliteConsumer {
    store: SqliteStore,
    name: ConsumerName,
    group: Arc<Mutex<Group>>,
    options: ConsumerOptions,
}

impl SqliteConsumer {
    /// Claims up to `max` eligible events: new ones after `delivered`, and in-flight ones past
    /// their deadline. `None` when there is none, with the nearest deadline to wake at.
    async fn claim(&self, max: usize) -> Result<(Vec<Delivery>, Option<Instant>), EventLogError> {
        let mut out = Vec::new();
        let mut cursor = self.group.lock().checkpoint;
        loop {
            let rows = self
                .store
                .read(move |c| outbox::after(c, cursor, PAGE))
                .await
                .map_err(log_error)?;
            let exhausted = rows.len() < PAGE;
            let now = Instant::now();
            let mut group = self.group.lock();
            for (position, event) in rows {
                cursor = position;
                if out.len() >= max {
                    break;
                }
                let attempt = if position > group.delivered {
                    group.delivered = position;
                    1
                } else {
                    match group.in_flight.get(&position) {
                        // Acknowledged by some worker.
                        None => continue,
                        Some(f) if f.deadline > now => continue,
                        Some(f) => f.attempt + 1,
                    }
                };
                group.in_flight.insert(
                    position,
                    InFlight {
                        deadline: now + self.options.ack_wait,
                        attempt,
                    },
                );
                out.push(self.delivery(position, event, attempt));
            }
            if out.len() >= max || exhausted {
                let next = group.in_flight.values().map(|f| f.deadline).min();
                return Ok((out, next));
            }
        }
    }

    /// Writes the group's checkpoint if acks moved it and a write is due (see the module docs).
    async fn save_checkpoint(&self) -> Result<(), EventLogError> {
        let position = {
            let group = self.group.lock();
            if !group.save_due(Instant::now()) {
                return Ok(());
            }
            group.checkpoint
        };
        let name = self.name.as_str().to_owned();
        self.store
            .write(move |c| outbox::save_checkpoint(c, &name, position))
            .await
            .map_err(log_error)?;
        self.group.lock().mark_saved(position, Instant::now());
        Ok(())
    }

    fn delivery(&self, position: i64, event: DomainEvent, attempt: u64) -> Delivery {
        Delivery::new(
            event,
            attempt,
            Box::new(SqliteAck {
                group: self.group.clone(),
                position,
                attempt,
            }),
        )
    }
}

#[async_trait]
impl EventConsumer for SqliteConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, EventLogError> {
        let max = max.max(1);
        let until = Instant::now() + wait;
        self.save_checkpoint().await?;
        loop {
            let changed = self.store.inner.groups.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (out, next_deadline) = self.claim(max).await?;
            if !out.is_empty() {
                return Ok(out);
            }
            let wake = next_deadline.map_or(until, |d| d.min(until));
            if Instant::now() >= until {
                return Ok(out);
            }
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

struct SqliteAck {
    group: Arc<Mutex<Group>>,
    position: i64,
    attempt: u64,
}

#[async_trait]
impl Acker for SqliteAck {
    async fn ack(self: Box<Self>) -> Result<(), EventLogError> {
        let mut group = self.group.lock();
        // A late ack of a delivery that was since handed out again: the newer attempt
        // owns the event now.
        match group.in_flight.get(&self.position) {
            Some(f) if f.attempt == self.attempt => {
                group.in_flight.remove(&self.position);
            }
            _ => return Ok(()),
        }
        // In memory only: the next fetch (or a trim) makes it durable.
        let checkpoint = group.current_checkpoint();
        if checkpoint > group.checkpoint {
            group.checkpoint = checkpoint;
        }
        Ok(())
    }
}
