//! The single writer thread and its group commit.
//!
//! SQLite allows one writer at a time, and each commit in `synchronous=FULL` costs an fsync.
//! So one dedicated thread owns the only read-write connection and receives every write as a
//! [`Job`] over a bounded queue. It takes the first job, drains whatever else is already queued
//! (up to [`MAX_BATCH`]), runs them all in ONE transaction — each inside its own SAVEPOINT, so a
//! failing job rolls back only itself — commits once, and only then replies to each caller.
//! A batch of N writes costs one fsync instead of N, and a reply always means "durable".
//!
//! Because every write runs on this one thread, read-check-write sequences (idempotent append,
//! identify-or-create) are atomic without retries, and message ids assigned here are in commit
//! order.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::Checkpoints;
use super::codec::{exec_cached, sql_error};
use crate::{StoreError, StoreResult};

/// Largest number of jobs committed together.
pub(crate) const MAX_BATCH: usize = 256;

/// Capacity of the queue in front of the writer; callers wait (asynchronously) when it is full.
pub(crate) const QUEUE_CAPACITY: usize = 1024;

/// One write, as seen by the writer thread.
pub(crate) trait Job: Send {
    /// Runs the write on `conn`, inside the batch transaction, and keeps its result.
    fn run(&mut self, conn: &Connection);
    /// Delivers the result once the batch's fate is known: `Ok` when the transaction committed,
    /// otherwise the error that lost the batch.
    fn finish(self: Box<Self>, batch: Result<(), &StoreError>);
}

/// A closure-backed [`Job`] whose result is sent back over a oneshot channel.
pub(crate) struct Call<T, F> {
    f: Option<F>,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Call<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
{
    pub(crate) fn job(f: F) -> (Box<dyn Job>, oneshot::Receiver<StoreResult<T>>) {
        let (reply, rx) = oneshot::channel();
        let job = Call {
            f: Some(f),
            result: None,
            reply,
        };
        (Box::new(job), rx)
    }
}

impl<T, F> Job for Call<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) {
        if let Some(f) = self.f.take() {
            self.result = Some(in_savepoint(conn, f));
        }
    }

    fn finish(self: Box<Self>, batch: Result<(), &StoreError>) {
        let result = match (self.result, batch) {
            // The job's own failure is the more precise answer (its savepoint was rolled back
            // either way).
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (Some(Ok(_)), Err(e)) => Err(duplicate(e)),
            (None, Err(e)) => Err(duplicate(e)),
            (None, Ok(())) => Err(StoreError::Internal("write was never run".into())),
        };
        // The caller may have gone away (future dropped); the write stands regardless.
        let _ = self.reply.send(result);
    }
}

/// Runs `f` in a savepoint: released on success, rolled back on error or panic.
fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> StoreResult<T>,
) -> StoreResult<T> {
    exec_cached(conn, "SAVEPOINT job").map_err(sql_error)?;
    let result = match catch_unwind(AssertUnwindSafe(|| f(conn))) {
        Ok(r) => r,
        Err(_) => {
            tracing::error!("store write panicked; rolled back");
            Err(StoreError::Internal("write panicked".into()))
        }
    };
    if conn.is_autocommit() {
        // SQLite rolled back the whole transaction itself (I/O error, disk full…); the
        // batch loop notices and reports it.
        return result;
    }
    let end = if result.is_ok() {
        exec_cached(conn, "RELEASE job")
    } else {
        exec_cached(conn, "ROLLBACK TO job").and_then(|()| exec_cached(conn, "RELEASE job"))
    };
    match end {
        Ok(_) => result,
        Err(e) => Err(sql_error(e)),
    }
}

/// A fresh copy of a batch-level error for each job of the batch.
fn duplicate(e: &StoreError) -> StoreError {
    match e {
        StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
        StoreError::NotFound(w) => StoreError::NotFound(w),
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Internal(m) => StoreError::Internal(m.clone()),
        StoreError::QuotaExceeded(q) => StoreError::QuotaExceeded(q.clone()),
    }
}

/// Counters describing the writer's work, readable while it runs.
#[derive(Debug, Default)]
pub(crate) struct WriterCounters {
    pub(crate) batches: AtomicU64,
    pub(crate) jobs: AtomicU64,
    pub(crate) largest_batch: AtomicU64,
    pub(crate) failed_batches: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
}

/// The writer thread's loop: runs until every sender is gone and the queue is empty.
/// `checkpoint_conn` is a second read-write connection for the WAL checkpointer thread
/// (see `checkpoint`).
pub(crate) fn run(
    conn: Connection,
    checkpoint_conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn Job>>,
    counters: Arc<WriterCounters>,
) {
    let checkpoints = match Checkpoints::start(&conn, checkpoint_conn, counters.clone()) {
        Ok(c) => Some(c),
        Err(e) => {
            // Without the thread, SQLite's own checkpoint (inside commits) stays on.
            tracing::warn!(error = %e, "no WAL checkpointer thread; checkpoints run in commits");
            None
        }
    };
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        counters
            .jobs
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        counters
            .largest_batch
            .fetch_max(batch.len() as u64, Ordering::Relaxed);
        execute(&conn, &mut batch, &counters);
        debug_assert!(batch.is_empty());
        if let Some(checkpoints) = &checkpoints {
            checkpoints.after_commit(&conn, rx.is_empty());
        }
    }
    // The checkpointer closes its connection first, so the writer's is the last one: closing
    // it checkpoints the whole WAL and removes it.
    drop(checkpoints);
    tracing::debug!("store writer stopped");
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the write connection failed");
    }
}

/// Runs a batch in one transaction and answers every job. Leaves `batch` empty.
fn execute(conn: &Connection, batch: &mut Vec<Box<dyn Job>>, counters: &WriterCounters) {
    let mut pending = batch.drain(..);
    // Jobs that ran inside the current transaction and wait for its commit.
    let mut ran: Vec<Box<dyn Job>> = Vec::with_capacity(pending.len());
    if let Err(e) = begin(conn) {
        fail_all(ran.drain(..).chain(pending), &e, counters);
        return;
    }
    while let Some(mut job) = pending.next() {
        job.run(conn);
        ran.push(job);
        if conn.is_autocommit() {
            // The transaction is gone: everything that ran in it is lost. Report that, and
            // carry on with the rest of the batch in a new transaction.
            let e = StoreError::Unavailable("write transaction aborted".into());
            fail_all(ran.drain(..), &e, counters);
            if let Err(e) = begin(conn) {
                fail_all(pending, &e, counters);
                return;
            }
        }
    }
    drop(pending);
    if ran.is_empty() {
        // Only possible after an abort: nothing left to commit.
        let _ = conn.execute_batch("ROLLBACK");
        return;
    }
    match exec_cached(conn, "COMMIT") {
        Ok(()) => {
            counters.batches.fetch_add(1, Ordering::Relaxed);
            for job in ran {
                job.finish(Ok(()));
            }
        }
        Err(e) => {
            let e = sql_error(e);
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            fail_all(ran, &e, counters);
        }
    }
}

fn begin(conn: &Connection) -> StoreResult<()> {
    exec_cached(conn, "BEGIN IMMEDIATE").map_err(sql_error)
}

fn fail_all(
    jobs: impl IntoIterator<Item = Box<dyn Job>>,
    e: &StoreError,
    counters: &WriterCounters,
) {
    counters.failed_batches.fetch_add(1, Ordering::Relaxed);
    for job in jobs {
        job.finish(Err(e));
    }
}
