//! The distributed event log's producer side: the **publisher** (every process that writes
//! to the CQL store) and the **sweeper** (one process at a time, under a lease).
//!
//! `ScyllaStore` writes each change's event to `event_outbox` in the change's own batch and,
//! once the batch succeeded, offers it to a bounded queue ([`ScyllaStore::outbox_queue`]);
//! the client's ack never waits for more. The publisher drains the queue, publishes each
//! event to JetStream with `Nats-Msg-Id` = its id ([`NatsBus::send_event`], pipelined per
//! batch), and marks the acknowledged rows published. Whatever the queue could not take (it
//! was full), the publisher could not publish (NATS away), or a process took down with it
//! (killed between the write and the publish), the sweeper finds in the outbox a few seconds
//! later and publishes. The argument for "never lost, never invented" is in docs/events.md.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use larachat_broker::NatsBus;
use larachat_core::model;
use larachat_store::scylla::outbox::{
    self, OUTBOX_SHARDS, OUTBOX_TTL_SECS, OutboxEntry, bucket_at,
};
use larachat_store::{ScyllaStore, StoreError};

/// Events offered to the publisher and not yet taken: the queue's bound. A full queue leaves
/// the event to the sweeper (counted in `larachat_events_outbox_queue_full_total`).
pub const PUBLISH_QUEUE: usize = 16_384;
/// Events published per pipelined batch.
const PUBLISH_BATCH: usize = 256;

/// Metric: events published to JetStream (label `by`: `publisher` or `sweeper`).
pub const EVENTS_PUBLISHED_TOTAL: &str = "larachat_events_published_total";
/// Metric: publish attempts that failed (left to the sweeper / the next sweep).
pub const EVENTS_PUBLISH_FAILED_TOTAL: &str = "larachat_events_publish_failed_total";

/// Test-only: when this environment variable is `1`, the publisher drops what it takes from
/// the queue without publishing, as if the process died right after each write; only the
/// sweeper publishes. Used by the kill tests (tests/dist_events.rs); never set it in
/// production.
pub const TEST_SKIP_PUBLISH_ENV: &str = "LARACHAT_TEST_SKIP_PUBLISH";

/// Publishes what the store queued, until `stop` or the queue's end.
pub async fn run_publisher(
    store: Arc<ScyllaStore>,
    bus: NatsBus,
    mut queue: mpsc::Receiver<OutboxEntry>,
    stop: CancellationToken,
) {
    let skip = std::env::var(TEST_SKIP_PUBLISH_ENV).is_ok_and(|v| v == "1");
    if skip {
        tracing::warn!(
            "{TEST_SKIP_PUBLISH_ENV}=1: the publisher does not publish (test only); the sweeper will"
        );
    }
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    loop {
        batch.clear();
        tokio::select! {
            n = queue.recv_many(&mut batch, PUBLISH_BATCH) => if n == 0 { return },
            () = stop.cancelled() => return,
        }
        if skip {
            continue;
        }
        let published = publish_all(&bus, std::mem::take(&mut batch)).await;
        metrics::counter!(EVENTS_PUBLISHED_TOTAL, "by" => "publisher")
            .increment(published.len() as u64);
        if let Err(e) = store.mark_published(&published).await {
            // The sweeper will publish them again; JetStream drops the duplicates.
            tracing::warn!(error = %e, "could not mark published events");
        }
    }
}

/// Publishes `entries` pipelined; returns those JetStream acknowledged.
async fn publish_all(bus: &NatsBus, entries: Vec<OutboxEntry>) -> Vec<OutboxEntry> {
    let mut pending = Vec::with_capacity(entries.len());
    let mut failed = 0u64;
    for e in entries {
        match bus.send_event(&e.event).await {
            Ok(ack) => pending.push((e, ack)),
            Err(err) => {
                failed += 1;
                tracing::debug!(error = %err, "event not published; left to the sweeper");
            }
        }
    }
    let mut done = Vec::with_capacity(pending.len());
    for (e, ack) in pending {
        match tokio::time::timeout(Duration::from_secs(5), ack).await {
            Ok(Ok(_)) => done.push(e),
            _ => failed += 1,
        }
    }
    if failed > 0 {
        metrics::counter!(EVENTS_PUBLISH_FAILED_TOTAL).increment(failed);
        tracing::warn!(failed, "events not published; the sweeper will");
    }
    done
}

/// How the sweeper works. `Default` is the product's.
#[derive(Debug, Clone, Copy)]
pub struct SweeperConfig {
    /// Time between sweeps.
    pub period: Duration,
    /// A row unpublished this long after its write is published by the sweeper (the
    /// publisher normally marks it well before).
    pub delay: Duration,
    /// The lease's lifetime; renewed every sweep.
    pub lease: Duration,
    /// A bucket is closed (no write can still land in it) this long after its end: longer
    /// than any write takes (the CQL request timeout with its retries).
    pub close: Duration,
    /// Events published per sweep at most (memory bound of one sweep).
    pub max_per_sweep: usize,
}

impl Default for SweeperConfig {
    fn default() -> Self {
        Self {
            period: Duration::from_secs(2),
            delay: Duration::from_secs(5),
            lease: Duration::from_secs(15),
            close: Duration::from_secs(60),
            max_per_sweep: 20_000,
        }
    }
}

/// Sweeps every `config.period` while this process holds the lease, until `stop`; gives the
/// lease up on the way out.
pub async fn run_sweeper(
    store: Arc<ScyllaStore>,
    bus: NatsBus,
    config: SweeperConfig,
    stop: CancellationToken,
) {
    let holder = Uuid::new_v4();
    let mut held = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(config.period) => {}
            () = stop.cancelled() => break,
        }
        match store.outbox_lease(holder, config.lease).await {
            Ok(true) => {
                if !held {
                    tracing::info!(%holder, "this process sweeps the event outbox");
                }
                held = true;
            }
            Ok(false) => {
                held = false;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "outbox lease unavailable");
                continue;
            }
        }
        match sweep_once(&store, &bus, &config, model::now()).await {
            Ok(n) if n > 0 => tracing::info!(published = n, "sweeper published outbox events"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "outbox sweep failed; retrying next period"),
        }
    }
    if held {
        let _ = store.release_outbox_lease(holder).await;
    }
}

/// One sweep at time `now`: publishes every row unpublished `config.delay` after its write,
/// from the watermark's bucket to `now`'s, and moves the watermark past the closed buckets
/// that are fully published. Returns how many events it published.
pub async fn sweep_once(
    store: &ScyllaStore,
    bus: &NatsBus,
    config: &SweeperConfig,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let span = |d: Duration| chrono::Duration::from_std(d).unwrap_or_default();
    let watermark = store.outbox_watermark().await?;
    let oldest = bucket_at(now - chrono::Duration::seconds(i64::from(OUTBOX_TTL_SECS)));
    let from = watermark.max(oldest);
    let to = bucket_at(now);
    let cut_off = now - span(config.delay);
    let closed_below = bucket_at(now - span(config.close));
    let mut new_watermark = from;
    let mut contiguous = true;
    let mut published = 0usize;
    for bucket in from..=to {
        let mut clear = true;
        let mut due = Vec::new();
        for shard in 0..OUTBOX_SHARDS {
            let scan = store.scan_outbox(bucket, shard, cut_off).await?;
            if scan.pending > 0 {
                clear = false;
            }
            due.extend(scan.due);
        }
        if !due.is_empty() {
            // In id order (UUIDv7: creation time; for messages, `seq` order within a
            // conversation), not shard by shard.
            due.sort_by_key(|e| e.event.id);
            let count = due.len();
            let done = publish_all(bus, due).await;
            if done.len() < count {
                clear = false;
            }
            store.mark_published(&done).await?;
            published += done.len();
            metrics::counter!(EVENTS_PUBLISHED_TOTAL, "by" => "sweeper")
                .increment(done.len() as u64);
        }
        if contiguous && clear && bucket < closed_below {
            new_watermark = bucket + 1;
        } else {
            contiguous = false;
        }
        if published >= config.max_per_sweep {
            break;
        }
    }
    if new_watermark > watermark {
        store.set_outbox_watermark(new_watermark).await?;
    }
    Ok(published)
}

/// HELP text of the outbox's metric families.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter};
    describe_counter!(
        EVENTS_PUBLISHED_TOTAL,
        Unit::Count,
        "Domain events published to JetStream from the CQL outbox, by who published them (publisher, sweeper)."
    );
    describe_counter!(
        EVENTS_PUBLISH_FAILED_TOTAL,
        Unit::Count,
        "Domain event publishes that failed or were not acknowledged in time (left to the sweeper)."
    );
    describe_counter!(
        OUTBOX_QUEUE_FULL_TOTAL,
        Unit::Count,
        "Domain events not offered to the publisher because its queue was full (left to the sweeper)."
    );
}

/// The queue's receiver for a store, re-exported for the wiring.
pub fn queue(store: &ScyllaStore) -> mpsc::Receiver<OutboxEntry> {
    store.outbox_queue(PUBLISH_QUEUE)
}

#[doc(hidden)]
pub use outbox::OUTBOX_QUEUE_FULL_TOTAL;
