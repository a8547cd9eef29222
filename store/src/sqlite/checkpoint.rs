//! WAL checkpoints kept off the commit path.
//!
//! By default SQLite checkpoints inside the commit that takes the WAL past 1,000 frames: that
//! commit, and every write queued behind it, waits while about 1,000 pages are copied into the
//! database file and the file is fsynced. A message append writes about 13 pages (53 KB per
//! message written, from `/proc/<pid>/io`), so on the 1:1 benchmark one send in ~77 paid for a
//! checkpoint, which set the p99: a model of this access pattern on the development VM took
//! 5–58 ms per 1,000-page checkpoint under load, against a commit of under 0.5 ms.
//!
//! Here the writer's automatic checkpoint is off (a WAL hook, which replaces it, records how
//! many frames the WAL holds after each commit) and the work is split in two:
//! - a **checkpointer thread** with its own connection copies committed frames into the
//!   database file (`PASSIVE`: it never blocks the writer or the readers) each time the writer
//!   has added [`COPY_AFTER`] frames since it last asked. (A copy fsyncs the WAL and the
//!   database file; asking after every commit once the WAL held 256 frames, as the first
//!   version did, cost about 1.2 extra fsyncs per message on the 1:1 benchmark.)
//! - the **writer** finishes the checkpoint itself once the WAL holds more than
//!   [`RESTART_AFTER`] frames and its queue is empty (or past [`FORCE_AFTER`] frames in any
//!   case). Only a checkpoint that runs while nothing writes can reach the end of the WAL, and
//!   only then does the next commit start the WAL from its beginning again, so this keeps the
//!   file bounded; by then the checkpointer has copied most frames, so it costs little.
//!
//! Durability is unchanged: a commit is acknowledged after its WAL frames are synced
//! (`synchronous=FULL`), and a checkpoint syncs the WAL before and the database after copying.

use std::cell::Cell;
use std::os::raw::c_int;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use rusqlite::Connection;
use rusqlite::hooks::Wal;

use super::writer::WriterCounters;

/// Frames added to the WAL after which the checkpointer thread is asked to copy them.
pub(crate) const COPY_AFTER: i32 = 256;
/// Frames after which the writer completes a checkpoint when it has nothing queued.
pub(crate) const RESTART_AFTER: i32 = 1_000;
/// Frames after which the writer completes a checkpoint even with writes queued, so a writer
/// that is never idle still bounds the WAL (~32 MiB at 4 KiB pages).
pub(crate) const FORCE_AFTER: i32 = 8_000;

thread_local! {
    /// Frames in the WAL after the last commit of the connection owned by this thread (the
    /// writer's). SQLite calls the WAL hook on the committing thread, and the hook must be a
    /// plain function, hence a thread-local rather than captured state.
    static WAL_FRAMES: Cell<i32> = const { Cell::new(0) };
}

fn record_frames(_wal: &Wal, frames: c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(frames));
    Ok(())
}

/// The writer's side: counts frames, wakes the checkpointer, completes checkpoints.
pub(crate) struct Checkpoints {
    wake: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Frames in the WAL when the checkpointer was last asked to copy.
    asked_at: Cell<i32>,
    counters: Arc<WriterCounters>,
}

impl Checkpoints {
    /// Installs the frame counter on the writer's connection (which turns its automatic
    /// checkpoint off) and starts the checkpointer thread on `helper`, a second read-write
    /// connection to the same database. Call on the writer thread.
    pub(crate) fn start(
        writer: &Connection,
        helper: Connection,
        counters: Arc<WriterCounters>,
    ) -> std::io::Result<Self> {
        let (wake, asked) = sync_channel(1);
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("larachat-sqlite-checkpoint".into())
            .spawn(move || copy_frames(helper, asked, &thread_counters))?;
        // Only once the thread runs: without it SQLite's own checkpoint must stay on.
        writer.wal_hook(Some(record_frames));
        Ok(Self {
            wake: Some(wake),
            thread: Some(thread),
            asked_at: Cell::new(0),
            counters,
        })
    }

    /// After a commit: asks for copying, and completes a checkpoint when the WAL is long and
    /// (unless it is very long) nothing is waiting. Errors are logged: a failed checkpoint
    /// only leaves the WAL longer, and the next commit tries again.
    pub(crate) fn after_commit(&self, writer: &Connection, queue_empty: bool) {
        let frames = WAL_FRAMES.with(Cell::get);
        if frames < self.asked_at.get() {
            // The WAL was restarted from its first frame.
            self.asked_at.set(0);
        }
        if frames - self.asked_at.get() >= COPY_AFTER {
            self.asked_at.set(frames);
            if let Some(wake) = &self.wake {
                // Full means a wake-up is already pending: nothing to add.
                if let Err(TrySendError::Disconnected(())) = wake.try_send(()) {
                    tracing::warn!("the WAL checkpointer thread is gone");
                }
            }
        }
        if frames > FORCE_AFTER || (frames > RESTART_AFTER && queue_empty) {
            match passive_checkpoint(writer, &self.counters) {
                Ok((busy, log, copied)) => {
                    if !busy && copied == log {
                        // The next commit restarts the WAL from its first frame.
                        WAL_FRAMES.with(|f| f.set(0));
                        self.asked_at.set(0);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
            }
        }
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the WAL checkpointer thread panicked");
            }
        }
    }
}

/// `PRAGMA wal_checkpoint(PASSIVE)`: (whether it was blocked, frames in the WAL, frames copied).
/// Counted in `checkpoints`.
fn passive_checkpoint(
    conn: &Connection,
    counters: &WriterCounters,
) -> rusqlite::Result<(bool, i64, i64)> {
    counters.checkpoints.fetch_add(1, Ordering::Relaxed);
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(0)? != 0, r.get(1)?, r.get(2)?))
    })
}

/// The checkpointer thread: one passive checkpoint per wake-up, until the writer is gone.
fn copy_frames(conn: Connection, asked: Receiver<()>, counters: &WriterCounters) {
    while asked.recv().is_ok() {
        if let Err(e) = passive_checkpoint(&conn, counters) {
            tracing::warn!(error = %e, "background WAL checkpoint failed");
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the checkpoint connection failed");
    }
}
