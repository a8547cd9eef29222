//! The embedded SQLite backend: the single-node default.
//!
//! Layout:
//! - one **writer thread** owns the only writing connection and commits writes in groups
//!   (see `writer`): every acknowledged write has been committed, and a batch of concurrent
//!   writes shares one fsync; WAL checkpoints run beside it, not inside its commits (see
//!   `checkpoint`);
//! - a small pool of **read-only connections** serves reads in parallel on the blocking thread
//!   pool, never waiting for the writer (WAL mode);
//! - embedded, numbered **migrations** tracked with `PRAGMA user_version` (see `migrations`);
//! - `codec` maps rows to domain types and SQLite errors to [`StoreError`]; `queries` holds
//!   the SQL of every operation;
//! - **plans and usage** (`usage`): plan rows, and usage counted (and plan limits checked)
//!   by each change inside its own transaction, so counts are exact and limits exact;
//! - **analytics rollups** (`analytics`): messages per hour, active conversations per hour and
//!   per-conversation response times, kept by each change in its own transaction, so an
//!   analytics query reads rollups, never messages;
//! - **search** (`search`): the `search_terms` index rows, written by each change in its own
//!   transaction, and the query intersecting them; `backfill` indexes, once and in the
//!   background, what was stored before the index (resumable, see `backfills`);
//! - the **event outbox**: every change with a domain event inserts it in its own savepoint
//!   (`outbox`, called from `queries`), and `events` implements the durable
//!   [`EventLog`](larachat_core::event::EventLog) over it (checkpointed consumer groups).
//!
//! [`SqliteStore`] is a cheap handle (`Clone`, an `Arc` inside). When the last handle is
//! dropped, the writer finishes the writes already queued, closes its connection and the drop
//! waits for it, so the file is fully closed afterwards.

mod analytics;
mod backfill;
mod checkpoint;
mod codec;
mod events;
mod migrations;
mod outbox;
mod queries;
mod search;
mod team;
mod usage;
mod writer;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Semaphore, mpsc};

use larachat_core::analytics::{AnalyticsData, AnalyticsRange};
use larachat_core::id::{
    AdminUserId, ApiKeyId, ConversationId, EndUserId, InviteId, MessageId, ProjectId,
};
use larachat_core::model::{
    Actor, AdminUser, ApiKeyRecord, Conversation, ConversationPatch, EndUser, EndUserPatch,
    Message, NewMessage, Project, ProjectPatch, ReadState,
};
use larachat_core::plan::{EdgeUsage, Period, Plan, PlanId, UsageCounts};
use larachat_core::search::SearchQuery;
use larachat_core::team::{Invite, Member, ProjectRole};
use uuid::Uuid;

use crate::clock::StoreClock;
use crate::{
    Appended, BackfillReport, ConversationQuery, CreationKey, MessageRange, NewEndUser, Page,
    Store, StoreError, StoreResult,
};
use codec::{exec_cached, sql_error};
use writer::{Call, Job, WriterCounters};

/// The schema version (number of migrations) this binary creates and understands.
pub const SCHEMA_VERSION: u32 = migrations::SCHEMA_VERSION;

/// Settings of the embedded store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteConfig {
    /// The database file; its parent directory is created if missing.
    pub path: PathBuf,
    /// Read-only connections serving reads in parallel (at least 1).
    pub readers: usize,
    /// `synchronous=FULL` (durable against power loss) when `true`; `NORMAL` otherwise (in WAL
    /// mode a power cut can lose the last commits, never corrupt the file).
    pub synchronous_full: bool,
    /// How long a connection waits for a lock before failing with `Unavailable`.
    pub busy_timeout: Duration,
    /// Where every time the store writes comes from (see [`crate::clock`]).
    pub clock: StoreClock,
}

impl SqliteConfig {
    /// Defaults for a database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            ..Self::default()
        }
    }
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("data/larachat.db"),
            readers: 4,
            synchronous_full: true,
            busy_timeout: Duration::from_secs(5),
            clock: StoreClock::system(),
        }
    }
}

/// What the writer has done since the store was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SqliteStats {
    /// Committed transactions (each is one batch of writes, one fsync).
    pub batches: u64,
    /// Writes received by the writer.
    pub writes: u64,
    /// The most writes committed in one batch.
    pub largest_batch: u64,
    /// Batches (or parts of batches) that failed to begin or commit.
    pub failed_batches: u64,
    /// Passive WAL checkpoints run (one that copies pages fsyncs the WAL and the database).
    pub checkpoints: u64,
}

/// The embedded store. Cheap to clone; see the module docs.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` only while dropping.
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    writer: Option<JoinHandle<()>>,
    counters: Arc<WriterCounters>,
    readers: Arc<ReadPool>,
    read_permits: Arc<Semaphore>,
    /// Consumer groups of the event log, and the signal that wakes their fetches.
    groups: events::Groups,
    /// Where the times the store writes come from.
    clock: StoreClock,
}

/// Idle read-only connections. Connections are opened lazily again if one was lost.
struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    config: SqliteConfig,
}

impl SqliteStore {
    /// Opens (creating if needed) the database, applies pending migrations and starts the
    /// writer thread. Blocking; fine to call from `async fn main` before serving.
    pub fn open(config: SqliteConfig) -> StoreResult<SqliteStore> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Internal(format!("creating {}: {e}", dir.display())))?;
        }
        let mut conn = connect(
            &config,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(sql_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Internal(format!(
                "could not enable WAL mode (got {mode}) on {}",
                config.path.display()
            )));
        }
        let sync = if config.synchronous_full {
            "FULL"
        } else {
            "NORMAL"
        };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(sql_error)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql_error)?;
        let applied = migrations::migrate(&mut conn)?;
        tracing::info!(
            path = %config.path.display(),
            schema_version = migrations::SCHEMA_VERSION,
            applied,
            "sqlite store open"
        );

        let readers = config.readers.max(1);
        let pool = Arc::new(ReadPool {
            idle: Mutex::new(Vec::with_capacity(readers)),
            config: config.clone(),
        });
        for _ in 0..readers {
            let c = pool.open()?;
            pool.idle.lock().push(c);
        }

        let checkpoint_conn = connect(&config, OpenFlags::SQLITE_OPEN_READ_WRITE)?;

        let (tx, rx) = mpsc::channel(writer::QUEUE_CAPACITY);
        let counters = Arc::new(WriterCounters::default());
        let thread_counters = counters.clone();
        let handle = std::thread::Builder::new()
            .name("larachat-sqlite-writer".into())
            .spawn(move || writer::run(conn, checkpoint_conn, rx, thread_counters))
            .map_err(|e| StoreError::Internal(format!("starting the writer thread: {e}")))?;

        Ok(SqliteStore {
            inner: Arc::new(Inner {
                jobs: Some(tx),
                writer: Some(handle),
                counters,
                readers: pool,
                read_permits: Arc::new(Semaphore::new(readers)),
                groups: events::Groups::default(),
                clock: config.clock.clone(),
            }),
        })
    }

    /// The writer's counters: how many writes, in how many committed batches.
    pub fn stats(&self) -> SqliteStats {
        let c = &self.inner.counters;
        SqliteStats {
            batches: c.batches.load(Ordering::Relaxed),
            writes: c.jobs.load(Ordering::Relaxed),
            largest_batch: c.largest_batch.load(Ordering::Relaxed),
            failed_batches: c.failed_batches.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
        }
    }

    /// Runs `f` on the writer thread inside the current batch; resolves after the commit.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let closed = || StoreError::Unavailable("store writer stopped".into());
        let (job, reply) = Call::job(f);
        let jobs = self.inner.jobs.as_ref().ok_or_else(closed)?;
        jobs.send(job).await.map_err(|_| closed())?;
        let result = reply.await.map_err(|_| closed())?;
        if result.is_ok() {
            // The write may have added events: wake the event log's waiting fetches.
            self.inner.groups.changed.notify_waiters();
        }
        result
    }

    /// Trims the outbox every `every` (see [`SqliteStore::trim_events`]) until the store is
    /// dropped; the task does not keep the store open.
    pub fn spawn_event_trimmer(
        &self,
        retention: Duration,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let store = SqliteStore { inner };
                match store.trim_events(retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "trimmed the event outbox"),
                    Err(e) => tracing::warn!(error = %e, "trimming the event outbox failed"),
                }
            }
        })
    }

    /// Runs the search index backfill (see `backfill`) to its end: bounded batches through the
    /// writer, each committed with its cursor, so it resumes where a killed process stopped.
    /// Returns what this run did; once finished, a run writes nothing.
    pub async fn backfill_search(&self) -> StoreResult<BackfillReport> {
        let mut report = BackfillReport::default();
        while !self.backfill_search_step(&mut report).await? {
            tokio::task::yield_now().await;
        }
        Ok(report)
    }

    /// One batch of the search backfill, added to `report`; `true` once it is finished.
    async fn backfill_search_step(&self, report: &mut BackfillReport) -> StoreResult<bool> {
        let now = self.inner.clock.now().timestamp_millis();
        let step = self.write(move |c| backfill::search_step(c, now)).await?;
        if step.was_done {
            report.already_done = report.batches == 0;
            return Ok(true);
        }
        report.batches += 1;
        report.conversations += step.conversations;
        report.messages += step.messages;
        report.log_batch(step.done);
        Ok(step.done)
    }

    /// Runs [`SqliteStore::backfill_search`] in the background (a no-op once it has finished);
    /// the task does not keep the store open, and a failure is logged (the next start resumes
    /// from the last committed batch).
    pub fn spawn_search_backfill(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut report = BackfillReport::default();
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let store = SqliteStore { inner };
                match store.backfill_search_step(&mut report).await {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "search backfill stopped; it resumes at the next start");
                        return;
                    }
                }
                drop(store);
                tokio::task::yield_now().await;
            }
        })
    }

    /// Deletes outbox events older than `retention` that every consumer has passed (a
    /// consumer that has never acknowledged anything holds everything). Returns how many.
    pub async fn trim_events(&self, retention: Duration) -> StoreResult<usize> {
        let Some(cutoff) = chrono::TimeDelta::from_std(retention)
            .ok()
            .and_then(|r| self.inner.clock.now().checked_sub_signed(r))
        else {
            return Ok(0);
        };
        let cutoff = cutoff.timestamp_millis();
        // Acks move checkpoints in memory (written at the consumer's next fetch): write them
        // first, in the same transaction, so what was acknowledged can go.
        let unsaved = self.inner.groups.unsaved();
        let checkpoints = unsaved.clone();
        let deleted = self
            .write(move |c| {
                outbox::save_checkpoints(c, &checkpoints)?;
                outbox::trim(c, cutoff)
            })
            .await?;
        self.inner.groups.mark_saved(&unsaved);
        Ok(deleted)
    }

    /// Runs a point read (a lookup by primary key: tens of microseconds) on the calling
    /// thread when a pooled connection is free right now, which skips the two thread
    /// hand-offs of [`SqliteStore::read`] (about 0.1 ms of a 1:1 send on the development VM);
    /// otherwise it is `read`. Only for reads bounded by one key: anything that can scan
    /// belongs on the blocking pool.
    async fn read_point<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let Ok(permit) = self.inner.read_permits.clone().try_acquire_owned() else {
            return self.read(f).await;
        };
        let Some(conn) = self.inner.readers.idle.lock().pop() else {
            drop(permit);
            return self.read(f).await;
        };
        let result = catch_unwind(AssertUnwindSafe(|| in_snapshot(&conn, f)));
        match result {
            Ok(result) => {
                self.inner.readers.idle.lock().push(conn);
                result
            }
            // The connection is dropped (the pool opens a new one when it runs short).
            Err(_) => {
                tracing::error!("store point read panicked");
                Err(StoreError::Internal("read panicked".into()))
            }
        }
    }

    /// Runs `f` on a pooled read-only connection, in a read transaction (one snapshot).
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let permit = self
            .inner
            .read_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("store closed".into()))?;
        let pool = self.inner.readers.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = match pool.idle.lock().pop() {
                Some(c) => c,
                None => pool.open()?,
            };
            let result = in_snapshot(&conn, f);
            pool.idle.lock().push(conn);
            result
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "store read task failed");
            StoreError::Internal("read task failed".into())
        })?
    }
}

impl ReadPool {
    fn open(&self) -> StoreResult<Connection> {
        connect(&self.config, OpenFlags::SQLITE_OPEN_READ_ONLY)
    }
}

/// Runs `f` in a read transaction on `conn` (one snapshot of the database).
fn in_snapshot<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> StoreResult<T>,
) -> StoreResult<T> {
    // Cached statements rather than rusqlite's `Transaction`, which parses BEGIN and COMMIT
    // again on every read. If `f` panics the transaction stays open, but both callers drop
    // the connection then instead of returning it to the pool.
    exec_cached(conn, "BEGIN").map_err(sql_error)?;
    let value = f(conn);
    // A read transaction: COMMIT and ROLLBACK both just end it.
    let end = exec_cached(conn, if value.is_ok() { "COMMIT" } else { "ROLLBACK" });
    let value = value?;
    end.map_err(sql_error)?;
    Ok(value)
}

/// Opens a connection to the database with `flags` (plus `NO_MUTEX`: each connection is used
/// by one thread at a time) and the settings every connection shares.
fn connect(config: &SqliteConfig, flags: OpenFlags) -> StoreResult<Connection> {
    let conn = Connection::open_with_flags(&config.path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(sql_error)?;
    configure(&conn, config)?;
    Ok(conn)
}

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 256;

/// Settings shared by the write and the read connections.
fn configure(conn: &Connection, config: &SqliteConfig) -> StoreResult<()> {
    conn.busy_timeout(config.busy_timeout).map_err(sql_error)?;
    // The store has about 100 distinct statements (some in several shapes); with a smaller
    // cache the busy ones evict each other and are parsed again on every call.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Consumers' checkpoints that acks moved since their last write: written last, so a
        // clean close redelivers nothing. (If the queue is full they are not; a restart then
        // delivers those events again, as after a crash.)
        let unsaved = self.groups.unsaved();
        if let (Some(jobs), false) = (&self.jobs, unsaved.is_empty()) {
            let (job, _reply) = Call::job(move |c| outbox::save_checkpoints(c, &unsaved));
            let _ = jobs.try_send(job);
        }
        // Closing the queue lets the writer finish what is queued and exit; waiting for it
        // means the database is closed when the last handle is gone (a reopen sees everything).
        drop(self.jobs.take());
        if let Some(handle) = self.writer.take() {
            if handle.join().is_err() {
                tracing::error!("store writer thread panicked");
            }
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.readers.config.path)
            .field("stats", &self.stats())
            .finish()
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_admin_user(&self, user: &AdminUser) -> StoreResult<()> {
        let user = user.clone();
        self.write(move |c| queries::create_admin_user(c, &user))
            .await
    }

    async fn admin_user_by_email(&self, email: &str) -> StoreResult<Option<AdminUser>> {
        let email = email.to_owned();
        self.read(move |c| queries::admin_user_by_email(c, &email))
            .await
    }

    async fn admin_user(&self, id: AdminUserId) -> StoreResult<Option<AdminUser>> {
        self.read(move |c| queries::admin_user(c, id)).await
    }

    async fn count_admin_users(&self) -> StoreResult<u64> {
        self.read(queries::count_admin_users).await
    }

    async fn create_project(&self, project: &Project) -> StoreResult<()> {
        let project = project.clone();
        self.write(move |c| queries::create_project(c, &project))
            .await
    }

    async fn project(&self, id: ProjectId) -> StoreResult<Option<Project>> {
        self.read(move |c| queries::project(c, id)).await
    }

    async fn list_projects(
        &self,
        owner: Option<AdminUserId>,
        cursor: Option<ProjectId>,
        limit: u32,
    ) -> StoreResult<Page<Project>> {
        self.read(move |c| queries::list_projects(c, owner, cursor, limit))
            .await
    }

    async fn update_project(
        &self,
        id: ProjectId,
        patch: &ProjectPatch,
    ) -> StoreResult<Option<Project>> {
        let patch = patch.clone();
        let clock = self.inner.clock.clone();
        self.write(move |c| queries::update_project(c, id, &patch, clock.now()))
            .await
    }

    async fn delete_project(&self, id: ProjectId) -> StoreResult<bool> {
        self.write(move |c| queries::delete_project(c, id)).await
    }

    async fn member(&self, project: ProjectId, admin: AdminUserId) -> StoreResult<Option<Member>> {
        self.read(move |c| team::member(c, project, admin)).await
    }

    async fn list_members(&self, project: ProjectId) -> StoreResult<Vec<Member>> {
        self.read(move |c| team::list_members(c, project)).await
    }

    async fn add_member(&self, member: &Member) -> StoreResult<()> {
        let member = member.clone();
        self.write(move |c| team::add_member(c, &member)).await
    }

    async fn set_member_role(
        &self,
        project: ProjectId,
        admin: AdminUserId,
        role: ProjectRole,
    ) -> StoreResult<Option<Member>> {
        self.write(move |c| team::set_member_role(c, project, admin, role))
            .await
    }

    async fn remove_member(&self, project: ProjectId, admin: AdminUserId) -> StoreResult<bool> {
        self.write(move |c| team::remove_member(c, project, admin))
            .await
    }

    async fn member_projects(
        &self,
        admin: AdminUserId,
        cursor: Option<ProjectId>,
        limit: u32,
    ) -> StoreResult<Page<(Project, ProjectRole)>> {
        self.read(move |c| team::member_projects(c, admin, cursor, limit))
            .await
    }

    async fn create_invite(&self, invite: &Invite) -> StoreResult<()> {
        let invite = invite.clone();
        self.write(move |c| team::create_invite(c, &invite)).await
    }

    async fn invite(&self, project: ProjectId, id: InviteId) -> StoreResult<Option<Invite>> {
        self.read(move |c| team::invite(c, project, id)).await
    }

    async fn list_invites(&self, project: ProjectId) -> StoreResult<Vec<Invite>> {
        self.read(move |c| team::list_invites(c, project)).await
    }

    async fn delete_invite(&self, project: ProjectId, id: InviteId) -> StoreResult<bool> {
        self.write(move |c| team::delete_invite(c, project, id))
            .await
    }

    async fn claim_invite(
        &self,
        project: ProjectId,
        id: InviteId,
        token_hash: &[u8; 32],
        at: DateTime<Utc>,
    ) -> StoreResult<Option<Invite>> {
        let hash = *token_hash;
        self.write(move |c| team::claim_invite(c, project, id, &hash, at))
            .await
    }

    async fn create_api_key(&self, key: &ApiKeyRecord) -> StoreResult<()> {
        let key = key.clone();
        self.write(move |c| queries::create_api_key(c, &key)).await
    }

    async fn api_key(&self, id: ApiKeyId) -> StoreResult<Option<ApiKeyRecord>> {
        self.read(move |c| queries::api_key(c, id)).await
    }

    async fn list_api_keys(&self, project: ProjectId) -> StoreResult<Vec<ApiKeyRecord>> {
        self.read(move |c| queries::list_api_keys(c, project)).await
    }

    async fn revoke_api_key(
        &self,
        id: ApiKeyId,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<ApiKeyRecord>> {
        self.write(move |c| queries::revoke_api_key(c, id, at))
            .await
    }

    async fn touch_api_key(&self, id: ApiKeyId, at: DateTime<Utc>) -> StoreResult<()> {
        self.write(move |c| queries::touch_api_key(c, id, at)).await
    }

    async fn upsert_end_user(
        &self,
        project: ProjectId,
        user: &NewEndUser,
    ) -> StoreResult<(EndUser, bool)> {
        let user = user.clone();
        let clock = self.inner.clock.clone();
        self.write(move |c| queries::upsert_end_user(c, project, &user, clock.now()))
            .await
    }

    async fn end_user(&self, project: ProjectId, id: EndUserId) -> StoreResult<Option<EndUser>> {
        self.read_point(move |c| queries::end_user(c, project, id))
            .await
    }

    async fn update_end_user(
        &self,
        project: ProjectId,
        id: EndUserId,
        patch: &EndUserPatch,
    ) -> StoreResult<Option<EndUser>> {
        let patch = patch.clone();
        let clock = self.inner.clock.clone();
        self.write(move |c| queries::update_end_user(c, project, id, &patch, clock.now()))
            .await
    }

    async fn delete_end_user(&self, project: ProjectId, id: EndUserId) -> StoreResult<bool> {
        self.write(move |c| queries::delete_end_user(c, project, id))
            .await
    }

    async fn create_conversation(&self, conversation: &Conversation) -> StoreResult<()> {
        let conversation = conversation.clone();
        let clock = self.inner.clock.clone();
        self.write(move |c| queries::create_conversation(c, &conversation, clock.now()))
            .await
    }

    async fn create_conversation_keyed(
        &self,
        conversation: &Conversation,
        key: &CreationKey,
    ) -> StoreResult<(Conversation, bool)> {
        let (conversation, key) = (conversation.clone(), key.clone());
        let clock = self.inner.clock.clone();
        self.write(move |c| queries::create_conversation_keyed(c, &conversation, &key, clock.now()))
            .await
    }

    async fn conversation(
        &self,
        project: ProjectId,
        id: ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        self.read_point(move |c| queries::conversation(c, project, id))
            .await
    }

    async fn list_conversations(
        &self,
        project: ProjectId,
        query: &ConversationQuery,
    ) -> StoreResult<Page<Conversation>> {
        let query = query.clone();
        self.read(move |c| queries::list_conversations(c, project, &query))
            .await
    }

    async fn search_conversations(
        &self,
        project: ProjectId,
        search: &SearchQuery,
        query: &ConversationQuery,
    ) -> StoreResult<Page<Conversation>> {
        let (search, query) = (search.clone(), query.clone());
        self.read(move |c| search::search_conversations(c, project, &search, &query))
            .await
    }

    async fn update_conversation(
        &self,
        project: ProjectId,
        id: ConversationId,
        patch: &ConversationPatch,
    ) -> StoreResult<Option<Conversation>> {
        let patch = patch.clone();
        let clock = self.inner.clock.clone();
        self.write(move |c| queries::update_conversation(c, project, id, &patch, clock.now()))
            .await
    }

    async fn append_message(&self, message: &NewMessage) -> StoreResult<Appended> {
        let message = message.clone();
        let clock = self.inner.clock.clone();
        self.write(move |c| queries::append_message(c, &message, clock.now()))
            .await
    }

    async fn list_messages(
        &self,
        project: ProjectId,
        conversation: ConversationId,
        range: MessageRange,
        limit: u32,
    ) -> StoreResult<Page<Message>> {
        self.read(move |c| queries::list_messages(c, project, conversation, range, limit))
            .await
    }

    async fn message(
        &self,
        project: ProjectId,
        conversation: ConversationId,
        id: MessageId,
    ) -> StoreResult<Option<Message>> {
        self.read_point(move |c| queries::message(c, project, conversation, id))
            .await
    }

    async fn mark_read(
        &self,
        project: ProjectId,
        conversation: ConversationId,
        reader: &Actor,
        message_id: MessageId,
        at: DateTime<Utc>,
    ) -> StoreResult<ReadState> {
        let reader = reader.clone();
        self.write(move |c| queries::mark_read(c, project, conversation, &reader, message_id, at))
            .await
    }

    async fn read_states(
        &self,
        project: ProjectId,
        conversation: ConversationId,
    ) -> StoreResult<Vec<ReadState>> {
        self.read(move |c| queries::read_states(c, project, conversation))
            .await
    }

    async fn list_plans(&self) -> StoreResult<Vec<Plan>> {
        self.read(usage::list_plans).await
    }

    async fn plan(&self, id: &PlanId) -> StoreResult<Option<Plan>> {
        let id = id.clone();
        self.read(move |c| usage::plan(c, &id)).await
    }

    async fn put_plan(&self, plan: &Plan) -> StoreResult<()> {
        let plan = plan.clone();
        self.write(move |c| usage::put_plan(c, &plan)).await
    }

    async fn usage(&self, project: ProjectId, period: Period) -> StoreResult<UsageCounts> {
        self.read(move |c| usage::usage(c, project, period)).await
    }

    async fn usage_history(
        &self,
        project: ProjectId,
        limit: u32,
    ) -> StoreResult<Vec<(Period, UsageCounts)>> {
        self.read(move |c| usage::usage_history(c, project, limit))
            .await
    }

    async fn record_edge_usage(&self, process: Uuid, rows: &[EdgeUsage]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows = rows.to_vec();
        self.write(move |c| usage::record_edge_usage(c, process, &rows))
            .await
    }

    async fn analytics(
        &self,
        project: ProjectId,
        range: &AnalyticsRange,
    ) -> StoreResult<AnalyticsData> {
        let range = *range;
        self.read(move |c| analytics::read(c, project, &range))
            .await
    }

    async fn ping(&self) -> StoreResult<()> {
        if self.inner.jobs.as_ref().is_none_or(|j| j.is_closed()) {
            return Err(StoreError::Unavailable("store writer stopped".into()));
        }
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(sql_error))
            .await
    }
}
