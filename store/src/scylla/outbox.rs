//! The CQL event outbox (schema 3): every change's [`DomainEvent`] is written in the change's
//! own batch to `event_outbox`, then handed to a bounded in-process queue for publishing off
//! the ack path; a sweeper (one process at a time, under an LWT lease) republishes what the
//! queue did not. The publisher and the sweeper live in the `larachat` binary (they need the
//! bus); this module is their storage side. See docs/events.md, "Distributed mode".
//!
//! # Layout
//!
//! | table | key | |
//! |---|---|---|
//! | `event_outbox` | `((bucket, shard), id)` | bucket = write time / [`OUTBOX_BUCKET_MS`], shard = id hash % [`OUTBOX_SHARDS`]; TTL [`OUTBOX_TTL_SECS`] |
//! | `event_outbox_lease` | `(name)` | the sweeper's lease: holder + expiry, LWT only, TTL'd |
//! | `event_outbox_state` | `(name)` | the sweeper's watermark: every row in a bucket below it is published |
//!
//! A row is written unpublished (`published` null) and marked `published = true` once
//! JetStream acknowledged it. The bucket is the row's *write* time (not its event's), so a
//! late write (a repair of a message claimed hours ago) lands in a bucket the sweeper still
//! scans. Partitions are bounded: one bucket of one shard.

use std::time::Duration;

use chrono::{DateTime, Utc};
use scylla::value::CqlValue;
use tokio::sync::mpsc;
use uuid::Uuid;

use larachat_core::event::DomainEvent;
use larachat_core::model;

use super::ScyllaStore;
use super::codec::{Values, corrupt, from_ts, vi, vt, vts, vu};
use crate::StoreResult;

/// Width of an outbox bucket (write time), milliseconds.
pub const OUTBOX_BUCKET_MS: i64 = 10_000;
/// Shards per bucket: spreads one bucket's writes over this many partitions.
pub const OUTBOX_SHARDS: i32 = 4;
/// How long an outbox row lives: 3 days. An event not published within it (NATS down for 3
/// days) is dropped from the outbox; see docs/events.md.
pub const OUTBOX_TTL_SECS: i32 = 3 * 24 * 3600;

/// Name of the metric counting events left to the sweeper because the queue was full.
pub const OUTBOX_QUEUE_FULL_TOTAL: &str = "larachat_events_outbox_queue_full_total";

/// An outbox row: where it is stored, and its event.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub bucket: i64,
    pub shard: i32,
    pub event: DomainEvent,
}

/// The insert of an outbox row, for a change's batch. `at` is the write time (its bucket).
pub(crate) fn insert(
    event: &DomainEvent,
    at: DateTime<Utc>,
) -> ((&'static str, Values), OutboxEntry) {
    let bucket = bucket_at(at);
    let shard = shard_of(event.id.as_uuid());
    let stmt = (
        "INSERT INTO event_outbox (bucket, shard, id, project_id, kind, body, written_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        vec![
            vi(bucket),
            Some(CqlValue::Int(shard)),
            vu(*event.id.as_uuid()),
            vu(*event.project_id.as_uuid()),
            vt(event.kind().name()),
            Some(CqlValue::Blob(event.to_json())),
            vts(at),
        ],
    );
    (
        stmt,
        OutboxEntry {
            bucket,
            shard,
            event: event.clone(),
        },
    )
}

/// The bucket of write time `at`.
pub fn bucket_at(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis().div_euclid(OUTBOX_BUCKET_MS)
}

/// The start of bucket `b`.
pub fn bucket_start(b: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(b.saturating_mul(OUTBOX_BUCKET_MS)).unwrap_or_default()
}

fn shard_of(id: &Uuid) -> i32 {
    // The low bits of a UUIDv7 are random.
    (id.as_u128() % OUTBOX_SHARDS as u128) as i32
}

/// Row of an outbox scan: (id, published, written_at).
type ScanRow = (Uuid, Option<bool>, Option<scylla::value::CqlTimestamp>);

/// What a scan of one partition found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Unpublished rows written before the scan's cut-off.
    pub due: Vec<OutboxEntry>,
    /// Unpublished rows written after it (not due yet).
    pub pending: usize,
}

impl ScyllaStore {
    /// Creates the bounded queue the store hands written events to (`capacity` entries; when
    /// it is full the event is left to the sweeper and [`OUTBOX_QUEUE_FULL_TOTAL`] counts
    /// it). Call once, before the store takes writes; the receiver goes to the publisher.
    /// Without a queue, every event waits for the sweeper.
    pub fn outbox_queue(&self, capacity: usize) -> mpsc::Receiver<OutboxEntry> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        if self.outbox_tx.set(tx).is_err() {
            tracing::warn!("outbox queue set twice; the second receiver gets nothing");
        }
        rx
    }

    /// Hands written events to the publisher queue (after their batch succeeded).
    pub(crate) fn enqueue(&self, entries: Vec<OutboxEntry>) {
        let Some(tx) = self.outbox_tx.get() else {
            return;
        };
        for e in entries {
            if tx.try_send(e).is_err() {
                metrics::counter!(OUTBOX_QUEUE_FULL_TOTAL).increment(1);
            }
        }
    }

    /// Marks rows published (JetStream acknowledged them).
    pub async fn mark_published(&self, entries: &[OutboxEntry]) -> StoreResult<()> {
        let marks = entries.iter().map(|e| {
            self.exec(
                "UPDATE event_outbox SET published = true WHERE bucket = ? AND shard = ? \
                 AND id = ?",
                (e.bucket, e.shard, *e.event.id.as_uuid()),
            )
        });
        futures::future::try_join_all(marks).await?;
        Ok(())
    }

    /// Scans one partition: unpublished rows written before `cut_off`, with their events.
    pub async fn scan_outbox(
        &self,
        bucket: i64,
        shard: i32,
        cut_off: DateTime<Utc>,
    ) -> StoreResult<Scan> {
        let rows: Vec<ScanRow> = self
            .all_rows(
                "SELECT id, published, written_at FROM event_outbox WHERE bucket = ? \
                 AND shard = ?",
                (bucket, shard),
            )
            .await?;
        let mut scan = Scan::default();
        for (id, published, written_at) in rows {
            if published == Some(true) {
                continue;
            }
            let Some(written_at) = written_at else {
                // A mark that outlived its row: nothing to publish.
                continue;
            };
            if from_ts(written_at)? >= cut_off {
                scan.pending += 1;
                continue;
            }
            let body: Option<(Option<Vec<u8>>,)> = self
                .row(
                    "SELECT body FROM event_outbox WHERE bucket = ? AND shard = ? AND id = ?",
                    (bucket, shard, id),
                )
                .await?;
            let Some((Some(body),)) = body else { continue };
            let event = DomainEvent::from_json(&body).map_err(|_| corrupt("outbox body"))?;
            scan.due.push(OutboxEntry {
                bucket,
                shard,
                event,
            });
        }
        Ok(scan)
    }

    /// Takes or renews the sweeper's lease for `ttl`: `true` when `holder` holds it now.
    pub async fn outbox_lease(&self, holder: Uuid, ttl: Duration) -> StoreResult<bool> {
        let secs = i32::try_from(ttl.as_secs().max(1)).unwrap_or(i32::MAX);
        if self
            .lwt(
                "UPDATE event_outbox_lease USING TTL ? SET holder = ? WHERE name = 'sweeper' \
                 IF holder = ?",
                (secs, holder, holder),
            )
            .await?
        {
            return Ok(true);
        }
        self.lwt(
            "INSERT INTO event_outbox_lease (name, holder) VALUES ('sweeper', ?) \
             IF NOT EXISTS USING TTL ?",
            (holder, secs),
        )
        .await
    }

    /// Gives the lease up (a clean shutdown), so another sweeper takes over at once.
    pub async fn release_outbox_lease(&self, holder: Uuid) -> StoreResult<()> {
        self.lwt(
            "DELETE FROM event_outbox_lease WHERE name = 'sweeper' IF holder = ?",
            (holder,),
        )
        .await?;
        Ok(())
    }

    /// The sweeper's watermark: every row in a bucket below it is published. Before the first
    /// sweep: the bucket of the migration to schema 3 (no row is older).
    pub async fn outbox_watermark(&self) -> StoreResult<i64> {
        let row: Option<(Option<i64>,)> = self
            .row(
                "SELECT watermark FROM event_outbox_state WHERE name = 'sweeper'",
                (),
            )
            .await?;
        if let Some((Some(w),)) = row {
            return Ok(w);
        }
        let at = self.outbox_created_at().await?.unwrap_or_else(model::now);
        // The migration's clock and the writers' may differ a little.
        Ok(bucket_at(at) - 6)
    }

    /// When the keyspace got its outbox (the migration to schema 3): no event of this
    /// deployment is older. `None` if the keyspace is not at schema 3.
    pub async fn outbox_created_at(&self) -> StoreResult<Option<DateTime<Utc>>> {
        let migrated: Option<(Option<scylla::value::CqlTimestamp>,)> = self
            .row(
                "SELECT applied_at FROM schema_migrations WHERE version = 3",
                (),
            )
            .await?;
        migrated.and_then(|(t,)| t).map(from_ts).transpose()
    }

    /// Moves the watermark. Written by the lease holder only; a stale holder's write is still
    /// true (rows only ever go from unpublished to published), so it needs no fencing.
    pub async fn set_outbox_watermark(&self, bucket: i64) -> StoreResult<()> {
        self.exec(
            "INSERT INTO event_outbox_state (name, watermark) VALUES ('sweeper', ?)",
            (bucket,),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_write_time() {
        let t = DateTime::from_timestamp_millis(1_700_000_012_345).unwrap();
        let b = bucket_at(t);
        assert!(bucket_start(b) <= t);
        assert!(t < bucket_start(b + 1));
        assert_eq!(bucket_at(bucket_start(b)), b);
    }

    #[test]
    fn shards_are_in_range() {
        for _ in 0..100 {
            let s = shard_of(&Uuid::now_v7());
            assert!((0..OUTBOX_SHARDS).contains(&s));
        }
    }
}
