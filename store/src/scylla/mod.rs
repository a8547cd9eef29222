//! `ScyllaStore`: the distributed system of record on ScyllaDB or Apache Cassandra (CQL, the
//! `scylla` driver). Compiled with the `scylla` feature; passes the same [`contract`] suite as
//! the SQLite store (`tests/scylla_contract.rs`, against `deploy/cassandra.sh start`).
//!
//! Submodules (private): `schema` (numbered migrations, recorded in `schema_migrations`),
//! `codec` (rows, values and driver errors), `usage` (plans, usage rows keyed by what they
//! count, the per-process quota estimate), `sequencer` (the commit point of a message: its
//! `seq` and id claimed by one lightweight transaction, which is also the idempotency fence;
//! hole repair on read); public: `outbox` (the event outbox written in each change's batch,
//! and the storage side of its publisher and sweeper).
//!
//! # Layout
//!
//! Every partition key starts with `project_id`, except the admin-plane tables keyed by their
//! own id (`admin_users`, `admin_users_by_email`, `projects`, `projects_by_owner`,
//! `projects_by_bucket`, `project_buckets`, `api_keys`) and `member_projects`, keyed by the
//! admin. No partition grows without bound:
//!
//! | table | key | why |
//! |---|---|---|
//! | `messages` | `((project_id, conversation_id, bucket), id)` + `seq` | bucket = id time / `message_bucket` |
//! | `message_buckets` | `((project_id, conversation_id), bucket DESC)` | the non-empty buckets; paging walks them |
//! | `conversation_sequencer` | `((project_id, conversation_id), key)` + static head | the commit point of appends: head, `client_msg_id`s and repair records, 7-day TTL rows (see `sequencer`) |
//! | `message_client_ids` | `((project_id, conversation_id), client_msg_id)` | schema 1's idempotency index; read once by the migration to schema 2, no longer written |
//! | `conversations` | `((project_id, id))` | the row, members as a `set<uuid>`, `last_message_id` |
//! | `conversations_by_project` | `((project_id, bucket), id DESC)` | newest-first listing |
//! | `conversations_by_status` | `((project_id, status, bucket), id DESC)` | status filter; a status change moves the row |
//! | `conversations_by_member` | `((project_id, member_id), conversation_id DESC)` + `status`, `assignee` | member filter (status and assignee filtered in the partition) |
//! | `conversations_by_assignee` | `((project_id, assignee, status, bucket), id DESC)` | assignee filter (`!none` = unassigned); rows under `any` and under the status; an assignment or status change moves them |
//! | `conversation_buckets` | `((project_id), bucket DESC)` | the buckets listings walk |
//! | `conversation_keys` | `((project_id, caller, key))` | a conversation creation's idempotency key, claimed with an LWT before the conversation is written; 7-day TTL |
//! | `end_users` / `end_users_by_identifier` | `((project_id, id))` / `((project_id, user_identifier))` | identify is an LWT on the latter |
//! | `end_users_by_project` + `end_user_buckets` | `((project_id, bucket), id)` | enumeration for `delete_project` |
//! | `read_states` | `((project_id, conversation_id), member_key)` | one marker per reader |
//! | `api_keys_by_project` | `((project_id), created_at DESC, id DESC)` | key listing |
//! | `event_outbox` (+ `_lease`, `_state`) | `((bucket, shard), id)` | every change's domain event, in the change's batch (see `outbox`) |
//! | `plans` | `((id))` | plans as data |
//! | `usage_items` | `((project_id, period, kind, shard), id)` | one row per message / conversation of a month (a message's with its content's `bytes`), in the change's batch (see `usage`) |
//! | `usage_active_users` | `((project_id, period, shard), end_user_id)` | one row per end user active in a month |
//! | `usage_periods` | `((project_id), period DESC)` | the months with usage |
//! | `usage_edge` | `((project_id, period), hour, process_id)` | per gateway process and hour: its API requests and peak realtime connections so far (see `usage`) |
//! | `analytics_messages` / `analytics_active` | `((project_id, hour), …)` | one row per message / per conversation active in an hour, in the message's batch (see `analytics`) |
//! | `analytics_active_days` | `((project_id, day), conversation_id)` | one row per conversation active in a day, in the message's batch |
//! | `analytics_hours` | `((project_id, day), hour)` | sealed hourly message counts |
//! | `analytics_conversations` | `((project_id, day), conversation_id)` | per conversation: created, first end-user message, first answer, closed |
//! | `analytics_days` | `((project_id), day)` | the days with analytics rows (deletion) |
//! | `project_members` | `((project_id), admin_id)` | a project's team, LWT only (see `team`) |
//! | `member_projects` | `((admin_id), project_id DESC)` | an admin's projects (admin-plane lookup) |
//! | `project_invites` | `((project_id), id DESC)` | invitations, LWT only; single use |
//! | `search_terms` | `((project_id, bucket, term), conversation_id DESC)` | search: one row per conversation (of a listing bucket) and word or prefix, in the change's batch (see `search`) |
//! | `search_conversation_terms` | `((project_id, conversation_id), term)` | a conversation's search keys (deletion) |
//! | `backfills` | `((name))` | a one-off background backfill's cursor and finish time (the search index backfill, see `search`) |
//!
//! Listing buckets are `listing_bucket` wide (id time, 30 days by default); both bucket widths
//! are part of the data layout and must not change for an existing keyspace.
//!
//! # Consistency and concurrency
//!
//! Every statement runs at the configured consistency (`LOCAL_QUORUM` by default), so a write
//! acknowledged to a caller is read back by the next reader. Lightweight transactions are used
//! only where uniqueness demands them: admin emails, end-user identifiers, conversation creation
//! keys, and the commit point of a message. No counters are used.
//!
//! `append_message` claims the message's `seq` and id with ONE conditional batch on the
//! conversation's sequencer partition (head `N → N+1`, the `client_msg_id` row `IF NOT EXISTS`,
//! a repair record), then writes the message row, its bucket index and the conversation's
//! `last_message_id` with a logged batch, then returns. The claim makes the send exactly-once
//! across processes and stalls of any length, gives every message of a conversation a gapless
//! `seq`, and forces its id above the previous one whatever the clocks
//! ([`MessageId::following`]). Readers repair a claimed message whose row a dead or stalled
//! writer has not written yet. The details, and why each part is needed, are in `sequencer`.
//! Appends to one conversation take turns within a process (a striped async mutex, which also
//! caches the conversation's head), so local writers do not make each other's claims fail.
//! The conversation's `last_message_id` is written with a write timestamp taken from the
//! message id, so across processes it still ends at the greatest id.
//!
//! Multi-row operations that SQLite does in one transaction (`delete_project`,
//! `delete_end_user`, conversation updates that move index rows) are sequences of idempotent
//! writes here: a failure part-way is repaired by repeating the call.

mod analytics;
mod codec;
pub mod outbox;
mod schema;
mod search;
mod sequencer;
mod team;
mod usage;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::response::query_result::QueryResult;
use scylla::response::{PagingState, PagingStateResponse};
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue, Row};
use uuid::Uuid;

pub use schema::SCHEMA_VERSION;
pub use scylla::statement::{Consistency, SerialConsistency};

use larachat_core::analytics::{AnalyticsData, AnalyticsRange};
use larachat_core::event::DomainEvent;
use larachat_core::id::{
    AdminUserId, ApiKeyId, ConversationId, EndUserId, InviteId, MessageId, ProjectId,
};
use larachat_core::model::{
    self, Actor, ActorKind, AdminUser, ApiKeyRecord, Conversation, ConversationPatch,
    ConversationStatus, EndUser, EndUserPatch, Message, NewMessage, Project, ProjectPatch,
    ReadState,
};
use larachat_core::plan::{EdgeUsage, Period, Plan, PlanId, UsageCounts};
use larachat_core::search::SearchQuery;
use larachat_core::team::{Invite, Member, ProjectRole};

use crate::clock::StoreClock;
use crate::{
    Appended, AssigneeFilter, ConversationQuery, CreationKey, MessageRange, NewEndUser, Page,
    Store, StoreError, StoreResult,
};
use codec::{
    Values, corrupt, enum_str, exec_error, from_opt_ts, from_ts, internal, json_text, parse_enum,
    parse_json, ts, vbool, vi, vot, vots, vt, vts, vu, vuuid_set,
};

/// How to reach the cluster and how to store data in it.
#[derive(Debug, Clone)]
pub struct ScyllaConfig {
    /// Where every time the store writes comes from (ids, `created_at`, usage periods,
    /// analytics hours, warnings, outbox write times; see [`crate::clock`]). CQL write
    /// timestamps (`USING TIMESTAMP`, last-write-wins) stay on the system clock.
    pub clock: StoreClock,
    /// `host:port` of one or more nodes; the driver discovers the rest.
    pub contact_points: Vec<String>,
    /// Keyspace name: `[a-z_][a-z0-9_]*`, at most 48 characters.
    pub keyspace: String,
    /// The CQL replication map used when `migrate` creates the keyspace, e.g.
    /// `{'class': 'NetworkTopologyStrategy', 'dc1': 3}`.
    pub replication: String,
    /// Consistency of every statement (`LOCAL_QUORUM` by default).
    pub consistency: Consistency,
    /// Client-side timeout of one request.
    pub request_timeout: Duration,
    /// Width of a message partition (time of the message id). Part of the data layout.
    pub message_bucket: Duration,
    /// Width of a conversation / project / end-user listing partition. Part of the data layout.
    pub listing_bucket: Duration,
}

impl ScyllaConfig {
    /// A configuration with the defaults: `SimpleStrategy` with one replica (development),
    /// `LOCAL_QUORUM`, 10 s requests, weekly message buckets, 30-day listing buckets.
    pub fn new(contact_points: Vec<String>, keyspace: impl Into<String>) -> Self {
        Self {
            contact_points,
            keyspace: keyspace.into(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            consistency: Consistency::LocalQuorum,
            request_timeout: Duration::from_secs(10),
            message_bucket: Duration::from_secs(7 * 24 * 3600),
            listing_bucket: Duration::from_secs(30 * 24 * 3600),
            clock: StoreClock::system(),
        }
    }
}

/// Stripes of async mutexes: serialises work on one key (a conversation, an identifier) within
/// this process without a map that grows with the keys. Each stripe can hold a little state
/// for the key that last used it.
struct Stripes<T = ()> {
    locks: Box<[tokio::sync::Mutex<T>]>,
    hasher: RandomState,
}

impl<T: Default> Stripes<T> {
    fn new(n: usize) -> Self {
        Self {
            locks: (0..n)
                .map(|_| tokio::sync::Mutex::new(T::default()))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    fn of(&self, key: impl Hash) -> &tokio::sync::Mutex<T> {
        let i = (self.hasher.hash_one(key) % self.locks.len() as u64) as usize;
        &self.locks[i]
    }
}

/// The ScyllaDB / Cassandra store. Cheap to share (`Arc<dyn Store>`).
pub struct ScyllaStore {
    session: Session,
    config: ScyllaConfig,
    prepared: parking_lot::Mutex<HashMap<&'static str, PreparedStatement>>,
    /// Appends per conversation, with the head last claimed through each stripe.
    conversation_locks: Stripes<sequencer::HeadCache>,
    /// Identify per (project, identifier) and read markers per (conversation, reader).
    key_locks: Stripes,
    /// The publisher's queue of written events (see `outbox`), once set.
    outbox_tx: std::sync::OnceLock<tokio::sync::mpsc::Sender<outbox::OutboxEntry>>,
    /// Plan limits and usage estimates of the quota checks (see `usage`).
    quota: usage::QuotaCache,
    #[cfg(feature = "fault-injection")]
    faults: sequencer::Faults,
}

/// A row of the `messages` table (after the key columns given by the query).
type MessageRow = (
    Uuid,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<CqlTimestamp>,
    Option<i64>,
);

macro_rules! message_cols {
    () => {
        "id, sender_kind, sender_id, sender_name, text, metadata, client_msg_id, created_at, seq"
    };
}

type ConversationRow = (
    Uuid,
    Option<String>,
    Option<String>,
    Option<Vec<Uuid>>,
    Option<String>,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
    Option<Uuid>,
    Option<String>,
);

macro_rules! conversation_cols {
    () => {
        "id, subject, status, members, metadata, created_at, updated_at, last_message_id, \
         assignee"
    };
}

type EndUserRow = (
    Uuid,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<bool>,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
);

macro_rules! end_user_cols {
    () => {
        "id, user_identifier, name, email, avatar, metadata, is_anonymous, last_seen_at, \
         created_at, updated_at"
    };
}

type ProjectRow = (
    Uuid,
    Option<String>,
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
);

macro_rules! project_cols {
    () => {
        "id, name, owner_id, plan, status, settings, created_at, updated_at"
    };
}

type ApiKeyRow = (
    Uuid,
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Vec<String>>,
    Option<Vec<u8>>,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
);

macro_rules! api_key_cols {
    () => {
        "id, project_id, name, kind, prefix, scopes, secret_hash, last_used_at, expires_at, \
         revoked_at, created_at"
    };
}

type ReadStateRow = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Uuid>,
    Option<CqlTimestamp>,
);

const PROJECT_SCOPE: i32 = 0;
/// `conversations_by_assignee.assignee` of an unassigned conversation: not a valid agent
/// identifier, so no agent's partition can collide with it.
const UNASSIGNED_KEY: &str = "!none";
/// `conversations_by_assignee.status` of the row every conversation has whatever its status
/// (the listing without a status filter).
const ANY_STATUS: &str = "any";
const INSERT_BY_ASSIGNEE: &str = "INSERT INTO conversations_by_assignee \
     (project_id, assignee, status, bucket, id) VALUES (?, ?, ?, ?, ?)";
const DELETE_BY_ASSIGNEE: &str = "DELETE FROM conversations_by_assignee WHERE project_id = ? \
     AND assignee = ? AND status = ? AND bucket = ? AND id = ?";
const CONVERSATION_STATUSES: [ConversationStatus; 2] =
    [ConversationStatus::Open, ConversationStatus::Closed];

impl ScyllaStore {
    /// Connects to the cluster. The keyspace is selected when it exists; call
    /// [`ScyllaStore::migrate`] before first use of a new keyspace.
    pub async fn connect(config: ScyllaConfig) -> StoreResult<Self> {
        if !valid_keyspace(&config.keyspace) {
            return Err(StoreError::Internal(format!(
                "invalid keyspace name {:?}",
                config.keyspace
            )));
        }
        if config.message_bucket.as_millis() == 0 || config.listing_bucket.as_millis() == 0 {
            return Err(StoreError::Internal("bucket widths must be >= 1 ms".into()));
        }
        let profile = ExecutionProfile::builder()
            .consistency(config.consistency)
            .serial_consistency(Some(SerialConsistency::LocalSerial))
            .request_timeout(Some(config.request_timeout))
            .build();
        let session = SessionBuilder::new()
            .known_nodes(&config.contact_points)
            .default_execution_profile_handle(profile.into_handle())
            // Client-side, monotonic write timestamps: a delete followed by a re-insert from
            // this process is ordered even when they reach different coordinators.
            .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()))
            .connection_timeout(config.request_timeout)
            .build()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        // Absent before the first migration; `migrate` selects it then.
        let _ = session.use_keyspace(config.keyspace.clone(), false).await;
        Ok(Self {
            session,
            config,
            prepared: parking_lot::Mutex::new(HashMap::new()),
            conversation_locks: Stripes::new(4096),
            key_locks: Stripes::new(1024),
            outbox_tx: std::sync::OnceLock::new(),
            quota: usage::QuotaCache::default(),
            #[cfg(feature = "fault-injection")]
            faults: sequencer::Faults::default(),
        })
    }

    /// Creates the keyspace and applies the migrations not yet recorded in
    /// `schema_migrations`. Idempotent; run it from one process at a time (concurrent schema
    /// changes from several nodes can disagree), and with no process of an older schema
    /// writing (the migration to schema 2 numbers existing messages; see `docs/configuration.md`).
    pub async fn migrate(&self) -> StoreResult<()> {
        self.migrate_to(SCHEMA_VERSION).await
    }

    /// [`ScyllaStore::migrate`], stopping after schema `version` (upgrade tests start from an
    /// older schema with it). This build only reads and writes [`SCHEMA_VERSION`].
    pub async fn migrate_to(&self, version: i32) -> StoreResult<()> {
        let ks = &self.config.keyspace;
        let create = format!(
            "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
            self.config.replication
        );
        self.session
            .query_unpaged(ddl(create), ())
            .await
            .map_err(exec_error)?;
        self.session
            .use_keyspace(ks.clone(), false)
            .await
            .map_err(internal)?;
        self.session
            .query_unpaged(ddl(schema::CREATE_MIGRATIONS_TABLE), ())
            .await
            .map_err(exec_error)?;
        let applied = self.applied_migrations().await?;
        if let Some(newer) = applied.iter().find(|v| **v > SCHEMA_VERSION) {
            return Err(StoreError::Internal(format!(
                "keyspace {ks} has schema version {newer}, newer than this build's \
                 {SCHEMA_VERSION}"
            )));
        }
        for m in schema::MIGRATIONS {
            if applied.contains(&m.version) || m.version > version {
                continue;
            }
            tracing::info!(keyspace = %ks, version = m.version, name = m.name, "applying migration");
            for s in m.statements {
                self.session
                    .query_unpaged(ddl(*s), ())
                    .await
                    .map_err(exec_error)?;
            }
            for (table, column, ty) in m.add_columns {
                if !self.has_column(table, column).await? {
                    self.session
                        .query_unpaged(ddl(format!("ALTER TABLE {table} ADD {column} {ty}")), ())
                        .await
                        .map_err(exec_error)?;
                }
            }
            // Statements prepared before the DDL may describe the old columns.
            self.prepared.lock().clear();
            match m.data {
                Some(schema::DataStep::NumberMessages) => self.number_all_conversations().await?,
                Some(schema::DataStep::IndexAssignees) => self.index_all_assignees().await?,
                Some(schema::DataStep::ActiveDays) => self.backfill_active_days().await?,
                Some(schema::DataStep::BackfillOwners) => self.backfill_owners().await?,
                None => {}
            }
            self.session
                .query_unpaged(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (m.version, m.name, ts(model::now())),
                )
                .await
                .map_err(exec_error)?;
        }
        Ok(())
    }

    /// Checks that the keyspace exists and holds exactly this build's schema, so that a
    /// process started before `larachat migrate` (or against a newer schema) stops with a
    /// clear message instead of failing on its first query.
    pub async fn check_schema(&self) -> StoreResult<()> {
        let ks = &self.config.keyspace;
        let applied = self.applied_migrations().await.map_err(|e| {
            StoreError::Unavailable(format!(
                "keyspace {ks} is not migrated (run `larachat migrate`): {e}"
            ))
        })?;
        let newest = applied.into_iter().max().unwrap_or(0);
        match newest.cmp(&SCHEMA_VERSION) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Less => Err(StoreError::Unavailable(format!(
                "keyspace {ks} has schema version {newest}, this build needs {SCHEMA_VERSION}: \
                 run `larachat migrate`"
            ))),
            std::cmp::Ordering::Greater => Err(StoreError::Unavailable(format!(
                "keyspace {ks} has schema version {newest}, newer than this build's \
                 {SCHEMA_VERSION}: upgrade this process"
            ))),
        }
    }

    /// Whether `table` of this keyspace has `column` (schema metadata, not a query on the
    /// table).
    async fn has_column(&self, table: &str, column: &str) -> StoreResult<bool> {
        let rows = self
            .session
            .query_unpaged(
                "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? \
                 AND table_name = ? AND column_name = ?",
                (&self.config.keyspace, table, column),
            )
            .await
            .map_err(exec_error)?
            .into_rows_result()
            .map_err(internal)?;
        Ok(rows.rows_num() > 0)
    }

    /// Every listing partition of conversations, `(project_id, bucket)`, of every project:
    /// the walk of the data steps, which then read one partition at a time
    /// ([`Self::conversations_in`]). Small: a few buckets per project.
    async fn conversation_partitions(&self) -> StoreResult<Vec<(Uuid, i64)>> {
        let mut out = Vec::new();
        let project_buckets: Vec<(i64,)> = self
            .all_rows(
                "SELECT bucket FROM project_buckets WHERE scope = ?",
                (PROJECT_SCOPE,),
            )
            .await?;
        for (pb,) in project_buckets {
            let projects: Vec<(Uuid,)> = self
                .all_rows("SELECT id FROM projects_by_bucket WHERE bucket = ?", (pb,))
                .await?;
            for (p,) in projects {
                let buckets: Vec<(i64,)> = self
                    .all_rows(
                        "SELECT bucket FROM conversation_buckets WHERE project_id = ?",
                        (p,),
                    )
                    .await?;
                out.extend(buckets.into_iter().map(|(cb,)| (p, cb)));
            }
        }
        Ok(out)
    }

    /// The conversation ids of one listing partition.
    async fn conversations_in(&self, project: Uuid, bucket: i64) -> StoreResult<Vec<Uuid>> {
        let convs: Vec<(Uuid,)> = self
            .all_rows(
                "SELECT id FROM conversations_by_project WHERE project_id = ? AND bucket = ?",
                (project, bucket),
            )
            .await?;
        Ok(convs.into_iter().map(|(c,)| c).collect())
    }

    /// The data step of schema 2: every conversation of every project without a sequencer
    /// head gets one, its messages numbered in id order (`sequencer::init_sequencer`).
    /// Resumable: a conversation with a head is skipped, one numbered half-way is numbered
    /// again the same way. Run it while no schema-1 process writes (they do not number their
    /// messages).
    async fn number_all_conversations(&self) -> StoreResult<()> {
        let started = std::time::Instant::now();
        let (mut numbered, mut seen) = (0u64, 0u64);
        for (p, cb) in self.conversation_partitions().await? {
            for c in self.conversations_in(p, cb).await? {
                seen += 1;
                if self.read_head(p, c).await?.is_some() {
                    continue;
                }
                match self
                    .init_sequencer(ProjectId::from_uuid(p), ConversationId::from_uuid(c))
                    .await
                {
                    Ok(_) => numbered += 1,
                    // Listed but deleted meanwhile: nothing to number.
                    Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                if numbered > 0 && numbered % 1000 == 0 {
                    tracing::info!(numbered, seen, "numbering messages");
                }
            }
        }
        tracing::info!(
            numbered,
            seen,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "conversations numbered"
        );
        Ok(())
    }

    /// The data step of schema 4: every conversation of every project gets its
    /// `conversations_by_assignee` rows (`any` and its status) under its assignee (unassigned
    /// for all of them, as no older build writes one). Idempotent inserts: an interrupted run
    /// is simply run again. Run it while no schema-3 process writes.
    async fn index_all_assignees(&self) -> StoreResult<()> {
        let started = std::time::Instant::now();
        let mut indexed = 0u64;
        for (p, cb) in self.conversation_partitions().await? {
            for c in self.conversations_in(p, cb).await? {
                let row: Option<(Option<String>, Option<String>)> = self
                    .row(
                        "SELECT assignee, status FROM conversations \
                         WHERE project_id = ? AND id = ?",
                        (p, c),
                    )
                    .await?;
                // Listed but deleted meanwhile (or a partial row): nothing to index.
                let Some((assignee, Some(status))) = row else {
                    continue;
                };
                let items = by_assignee(
                    INSERT_BY_ASSIGNEE,
                    p,
                    assignee.as_deref(),
                    &[ANY_STATUS, status.as_str()],
                    self.listing_bucket(&c),
                    c,
                );
                self.batch(items).await?;
                indexed += 1;
                if indexed % 1000 == 0 {
                    tracing::info!(indexed, "indexing conversation assignees");
                }
            }
        }
        tracing::info!(
            indexed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "conversation assignees indexed"
        );
        Ok(())
    }

    /// Versions recorded in the keyspace's `schema_migrations` table.
    async fn applied_migrations(&self) -> StoreResult<HashSet<i32>> {
        let ks = &self.config.keyspace;
        self.session
            .query_unpaged(format!("SELECT version FROM {ks}.schema_migrations"), ())
            .await
            .map_err(exec_error)?
            .into_rows_result()
            .map_err(internal)?
            .rows::<(i32,)>()
            .map_err(internal)?
            .map(|r| r.map(|(v,)| v).map_err(internal))
            .collect()
    }

    /// The configuration in use.
    /// Now, by the configured clock.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.config.clock.now()
    }

    pub fn config(&self) -> &ScyllaConfig {
        &self.config
    }

    // --- statement helpers ---------------------------------------------------------------

    async fn stmt(&self, cql: &'static str) -> StoreResult<PreparedStatement> {
        if let Some(p) = self.prepared.lock().get(cql) {
            return Ok(p.clone());
        }
        let mut p = self
            .session
            .prepare(cql)
            .await
            .map_err(|e| StoreError::Unavailable(format!("prepare: {e}")))?;
        // Lightweight transactions are not retried blindly; everything else is.
        p.set_is_idempotent(!cql.contains(" IF "));
        self.prepared.lock().insert(cql, p.clone());
        Ok(p)
    }

    async fn exec(&self, cql: &'static str, values: impl SerializeRow) -> StoreResult<QueryResult> {
        let p = self.stmt(cql).await?;
        self.session
            .execute_unpaged(&p, values)
            .await
            .map_err(exec_error)
    }

    async fn rows<R>(&self, cql: &'static str, values: impl SerializeRow) -> StoreResult<Vec<R>>
    where
        R: for<'f> DeserializeRow<'f, 'f>,
    {
        let result = self
            .exec(cql, values)
            .await?
            .into_rows_result()
            .map_err(internal)?;
        let rows = result.rows::<R>().map_err(internal)?;
        rows.map(|r| r.map_err(internal)).collect()
    }

    async fn row<R>(&self, cql: &'static str, values: impl SerializeRow) -> StoreResult<Option<R>>
    where
        R: for<'f> DeserializeRow<'f, 'f>,
    {
        Ok(self.rows::<R>(cql, values).await?.into_iter().next())
    }

    /// Every row of a query, page by page (for partitions that may be large).
    async fn all_rows<R>(&self, cql: &'static str, values: impl SerializeRow) -> StoreResult<Vec<R>>
    where
        R: for<'f> DeserializeRow<'f, 'f>,
    {
        let p = self.stmt(cql).await?;
        let mut out = Vec::new();
        let mut state = PagingState::start();
        loop {
            let (result, next) = self
                .session
                .execute_single_page(&p, &values, state)
                .await
                .map_err(exec_error)?;
            let result = result.into_rows_result().map_err(internal)?;
            for r in result.rows::<R>().map_err(internal)? {
                out.push(r.map_err(internal)?);
            }
            match next {
                PagingStateResponse::HasMorePages { state: s } => state = s,
                PagingStateResponse::NoMorePages => return Ok(out),
            }
        }
    }

    /// Runs statements as one logged batch: all of them are applied, eventually, or none.
    async fn batch(&self, items: Vec<(&'static str, Values)>) -> StoreResult<()> {
        self.batch_of(BatchType::Logged, items).await
    }

    /// Runs statements as one batch of `kind` (an unlogged one applies each statement on its
    /// own, without the batch log's extra writes: for idempotent writes whose partial
    /// application something else repairs).
    async fn batch_of(
        &self,
        kind: BatchType,
        items: Vec<(&'static str, Values)>,
    ) -> StoreResult<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new(kind);
        let mut values = Vec::with_capacity(items.len());
        for (cql, v) in items {
            batch.append_statement(self.stmt(cql).await?);
            values.push(v);
        }
        batch.set_is_idempotent(true);
        self.session
            .batch(&batch, values)
            .await
            .map_err(exec_error)?;
        Ok(())
    }

    /// Runs a lightweight transaction; `true` when it was applied.
    async fn lwt(&self, cql: &'static str, values: impl SerializeRow) -> StoreResult<bool> {
        let result = self
            .exec(cql, values)
            .await?
            .into_rows_result()
            .map_err(internal)?;
        let row: Row = result.first_row().map_err(internal)?;
        match row.columns.first() {
            Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
            _ => Err(corrupt("[applied]")),
        }
    }

    /// Reads up to `want` rows from bucketed partitions: `buckets` in walk order, starting at
    /// the bucket of `bound` (exclusive id bound inside it). `open` and `bounded` take the
    /// `prefix` values, the bucket, (the bound id,) and a limit.
    #[allow(clippy::too_many_arguments)]
    async fn walk<R>(
        &self,
        open: &'static str,
        bounded: &'static str,
        prefix: &Values,
        buckets: &[i64],
        bound: Option<(i64, Uuid)>,
        descending: bool,
        want: usize,
    ) -> StoreResult<Vec<R>>
    where
        R: for<'f> DeserializeRow<'f, 'f>,
    {
        let mut out = Vec::new();
        for &b in buckets {
            if let Some((bb, _)) = bound {
                if (descending && b > bb) || (!descending && b < bb) {
                    continue;
                }
            }
            let remaining = want - out.len();
            let mut v = prefix.clone();
            v.push(vi(b));
            let cql = match bound {
                Some((bb, id)) if bb == b => {
                    v.push(vu(id));
                    bounded
                }
                _ => open,
            };
            v.push(Some(CqlValue::Int(
                i32::try_from(remaining).unwrap_or(i32::MAX),
            )));
            out.extend(self.rows::<R>(cql, v).await?);
            if out.len() >= want {
                break;
            }
        }
        Ok(out)
    }

    fn message_bucket(&self, id: &Uuid) -> i64 {
        bucket_of(id, self.config.message_bucket)
    }

    fn listing_bucket(&self, id: &Uuid) -> i64 {
        bucket_of(id, self.config.listing_bucket)
    }

    // --- reads shared by several operations -----------------------------------------------

    async fn load_conversation(
        &self,
        project: ProjectId,
        id: ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        let row: Option<ConversationRow> = self
            .row(
                concat!(
                    "SELECT ",
                    conversation_cols!(),
                    " FROM conversations WHERE project_id = ? AND id = ?"
                ),
                (project.as_uuid(), id.as_uuid()),
            )
            .await?;
        row.map(|r| decode_conversation(project, r))
            .transpose()
            .map(Option::flatten)
    }

    async fn load_conversations(
        &self,
        project: ProjectId,
        ids: &[Uuid],
    ) -> StoreResult<Vec<Conversation>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<ConversationRow> = self
            .rows(
                concat!(
                    "SELECT ",
                    conversation_cols!(),
                    " FROM conversations WHERE project_id = ? AND id IN ?"
                ),
                (project.as_uuid(), ids.to_vec()),
            )
            .await?;
        let mut by_id = HashMap::new();
        for r in rows {
            if let Some(c) = decode_conversation(project, r)? {
                by_id.insert(*c.id.as_uuid(), c);
            }
        }
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    /// `NotFound("end user")` unless every id is an end user of the project.
    async fn check_end_users(&self, project: ProjectId, ids: &[EndUserId]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let wanted: Vec<Uuid> = ids.iter().map(|i| *i.as_uuid()).collect();
        let found: Vec<(Uuid, Option<CqlTimestamp>)> = self
            .rows(
                "SELECT id, created_at FROM end_users WHERE project_id = ? AND id IN ?",
                (project.as_uuid(), wanted.clone()),
            )
            .await?;
        let found: HashSet<Uuid> = found
            .into_iter()
            .filter(|(_, c)| c.is_some())
            .map(|(id, _)| id)
            .collect();
        if wanted.iter().all(|w| found.contains(w)) {
            Ok(())
        } else {
            Err(StoreError::NotFound("end user"))
        }
    }

    async fn load_project(&self, id: ProjectId) -> StoreResult<Option<Project>> {
        let row: Option<ProjectRow> = self
            .row(
                concat!("SELECT ", project_cols!(), " FROM projects WHERE id = ?"),
                (id.as_uuid(),),
            )
            .await?;
        row.map(decode_project).transpose().map(Option::flatten)
    }

    async fn load_projects(&self, ids: &[Uuid]) -> StoreResult<Vec<Project>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<ProjectRow> = self
            .rows(
                concat!("SELECT ", project_cols!(), " FROM projects WHERE id IN ?"),
                (ids.to_vec(),),
            )
            .await?;
        let mut by_id = HashMap::new();
        for r in rows {
            if let Some(p) = decode_project(r)? {
                by_id.insert(*p.id.as_uuid(), p);
            }
        }
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    async fn load_api_key(&self, id: ApiKeyId) -> StoreResult<Option<ApiKeyRecord>> {
        let row: Option<ApiKeyRow> = self
            .row(
                concat!("SELECT ", api_key_cols!(), " FROM api_keys WHERE id = ?"),
                (id.as_uuid(),),
            )
            .await?;
        row.map(decode_api_key).transpose().map(Option::flatten)
    }

    async fn load_end_user(&self, project: ProjectId, id: Uuid) -> StoreResult<Option<EndUser>> {
        let row: Option<EndUserRow> = self
            .row(
                concat!(
                    "SELECT ",
                    end_user_cols!(),
                    " FROM end_users WHERE project_id = ? AND id = ?"
                ),
                (project.as_uuid(), id),
            )
            .await?;
        row.map(|r| decode_end_user(project, r))
            .transpose()
            .map(Option::flatten)
    }

    /// Writes a profile; with `event` (a profile change, not a heartbeat), `user.updated` in
    /// the same logged batch.
    async fn write_end_user_profile(&self, u: &EndUser, event: bool) -> StoreResult<()> {
        let mut items: Vec<(&'static str, Values)> = vec![(
            "UPDATE end_users SET name = ?, email = ?, avatar = ?, metadata = ?, \
             last_seen_at = ?, updated_at = ? WHERE project_id = ? AND id = ?",
            vec![
                vot(u.name.as_deref()),
                vot(u.email.as_deref()),
                vot(u.avatar.as_deref()),
                vt(&json_text(&u.metadata)),
                vots(u.last_seen_at),
                vts(u.updated_at),
                vu(*u.project_id.as_uuid()),
                vu(*u.id.as_uuid()),
            ],
        )];
        if !event {
            // A heartbeat: one statement, no batch.
            let (cql, values) = items.remove(0);
            self.exec(cql, values).await?;
            return Ok(());
        }
        let (insert, entry) = outbox::insert(&DomainEvent::user_updated(u), self.now());
        items.push(insert);
        self.batch(items).await?;
        self.enqueue(vec![entry]);
        Ok(())
    }

    /// Inserts a new end user's row, its enumeration rows and its `user.created` outbox row
    /// (returned, not queued yet: an identified user is created only once its claim wins).
    async fn insert_end_user(&self, u: &EndUser) -> StoreResult<outbox::OutboxEntry> {
        let p = *u.project_id.as_uuid();
        let id = *u.id.as_uuid();
        let bucket = self.listing_bucket(&id);
        let (insert, entry) = outbox::insert(&DomainEvent::user_created(u), self.now());
        self.batch(
            vec![
                (
                    "INSERT INTO end_users (project_id, id, user_identifier, name, email, avatar, \
                 metadata, is_anonymous, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    vec![
                        vu(p),
                        vu(id),
                        vot(u.user_identifier.as_deref()),
                        vot(u.name.as_deref()),
                        vot(u.email.as_deref()),
                        vot(u.avatar.as_deref()),
                        vt(&json_text(&u.metadata)),
                        vbool(u.is_anonymous),
                        vts(u.created_at),
                        vts(u.updated_at),
                    ],
                ),
                (
                    "INSERT INTO end_user_buckets (project_id, bucket) VALUES (?, ?)",
                    vec![vu(p), vi(bucket)],
                ),
                (
                    "INSERT INTO end_users_by_project (project_id, bucket, id, user_identifier) \
                 VALUES (?, ?, ?, ?)",
                    vec![vu(p), vi(bucket), vu(id), vot(u.user_identifier.as_deref())],
                ),
                insert,
            ]
            .into_iter()
            .chain(usage::rows(
                u.project_id,
                Period::of(u.created_at),
                &[],
                &[u.id],
            ))
            .collect(),
        )
        .await?;
        Ok(entry)
    }

    async fn remove_end_user_rows(&self, project: ProjectId, id: Uuid) -> StoreResult<()> {
        let p = *project.as_uuid();
        self.batch(vec![
            (
                "DELETE FROM end_users WHERE project_id = ? AND id = ?",
                vec![vu(p), vu(id)],
            ),
            (
                "DELETE FROM end_users_by_project WHERE project_id = ? AND bucket = ? AND id = ?",
                vec![vu(p), vi(self.listing_bucket(&id)), vu(id)],
            ),
        ])
        .await
    }

    async fn message_buckets(&self, project: Uuid, conversation: Uuid) -> StoreResult<Vec<i64>> {
        let rows: Vec<(i64,)> = self
            .all_rows(
                "SELECT bucket FROM message_buckets WHERE project_id = ? AND conversation_id = ?",
                (project, conversation),
            )
            .await?;
        Ok(rows.into_iter().map(|(b,)| b).collect())
    }

    async fn load_message(
        &self,
        project: ProjectId,
        conversation: ConversationId,
        id: Uuid,
    ) -> StoreResult<Option<Message>> {
        let row: Option<MessageRow> = self
            .row(
                concat!(
                    "SELECT ",
                    message_cols!(),
                    " FROM messages WHERE project_id = ? AND conversation_id = ? AND bucket = ? \
                     AND id = ?"
                ),
                (
                    project.as_uuid(),
                    conversation.as_uuid(),
                    self.message_bucket(&id),
                    id,
                ),
            )
            .await?;
        row.map(|r| decode_message(project, conversation, r))
            .transpose()
    }

    /// Deletes one conversation and everything below it (messages, indexes, read states).
    async fn purge_conversation(&self, project: Uuid, conversation: Uuid) -> StoreResult<()> {
        let row: Option<(Option<String>, Option<String>)> = self
            .row(
                "SELECT assignee, status FROM conversations WHERE project_id = ? AND id = ?",
                (project, conversation),
            )
            .await?;
        if let Some((assignee, status)) = row {
            let bucket = self.listing_bucket(&conversation);
            let mut statuses = vec![ANY_STATUS];
            statuses.extend(status.as_deref());
            for (cql, values) in by_assignee(
                DELETE_BY_ASSIGNEE,
                project,
                assignee.as_deref(),
                &statuses,
                bucket,
                conversation,
            ) {
                self.exec(cql, values).await?;
            }
        }
        self.purge_search(project, conversation).await?;
        for b in self.message_buckets(project, conversation).await? {
            self.exec(
                "DELETE FROM messages WHERE project_id = ? AND conversation_id = ? AND bucket = ?",
                (project, conversation, b),
            )
            .await?;
        }
        for cql in [
            "DELETE FROM message_buckets WHERE project_id = ? AND conversation_id = ?",
            "DELETE FROM message_client_ids WHERE project_id = ? AND conversation_id = ?",
            "DELETE FROM conversation_sequencer WHERE project_id = ? AND conversation_id = ?",
            "DELETE FROM read_states WHERE project_id = ? AND conversation_id = ?",
            "DELETE FROM conversations WHERE project_id = ? AND id = ?",
        ] {
            self.exec(cql, (project, conversation)).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Store for ScyllaStore {
    // --- admin users -----------------------------------------------------------------------

    async fn create_admin_user(&self, user: &AdminUser) -> StoreResult<()> {
        let key = user.email.to_lowercase();
        let id = *user.id.as_uuid();
        // The row first, then the claim of the email: a claim never points at nothing.
        self.exec(
            "INSERT INTO admin_users (id, email, password_hash, created_at) VALUES (?, ?, ?, ?)",
            (id, &user.email, &user.password_hash, ts(user.created_at)),
        )
        .await?;
        let claimed = self
            .lwt(
                "INSERT INTO admin_users_by_email (email_key, id) VALUES (?, ?) IF NOT EXISTS",
                (&key, id),
            )
            .await?;
        if !claimed {
            self.exec("DELETE FROM admin_users WHERE id = ?", (id,))
                .await?;
            return Err(StoreError::Conflict("email already registered".into()));
        }
        Ok(())
    }

    async fn admin_user_by_email(&self, email: &str) -> StoreResult<Option<AdminUser>> {
        let id: Option<(Option<Uuid>,)> = self
            .row(
                "SELECT id FROM admin_users_by_email WHERE email_key = ?",
                (email.to_lowercase(),),
            )
            .await?;
        match id {
            Some((Some(id),)) => self.admin_user(AdminUserId::from_uuid(id)).await,
            _ => Ok(None),
        }
    }

    async fn admin_user(&self, id: AdminUserId) -> StoreResult<Option<AdminUser>> {
        let row: Option<(Uuid, Option<String>, Option<String>, Option<CqlTimestamp>)> = self
            .row(
                "SELECT id, email, password_hash, created_at FROM admin_users WHERE id = ?",
                (id.as_uuid(),),
            )
            .await?;
        match row {
            Some((id, Some(email), Some(password_hash), Some(created_at))) => Ok(Some(AdminUser {
                id: AdminUserId::from_uuid(id),
                email,
                password_hash,
                created_at: from_ts(created_at)?,
            })),
            _ => Ok(None),
        }
    }

    async fn count_admin_users(&self) -> StoreResult<u64> {
        // A full scan of a small admin-plane table.
        let row: Option<(i64,)> = self.row("SELECT COUNT(*) FROM admin_users", ()).await?;
        Ok(row.map_or(0, |(n,)| u64::try_from(n).unwrap_or(0)))
    }

    // --- projects --------------------------------------------------------------------------

    async fn create_project(&self, p: &Project) -> StoreResult<()> {
        if self.load_project(p.id).await?.is_some() {
            return Err(StoreError::Conflict("project id exists".into()));
        }
        self.check_new_project(p.owner_id, &p.plan).await?;
        let id = *p.id.as_uuid();
        let bucket = self.listing_bucket(&id);
        self.batch(vec![
            (
                "INSERT INTO projects (id, name, owner_id, plan, status, settings, created_at, \
                 updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                vec![
                    vu(id),
                    vt(&p.name),
                    vu(*p.owner_id.as_uuid()),
                    vt(&enum_str(&p.plan)),
                    vt(&enum_str(&p.status)),
                    vt(&json_text(&p.settings)),
                    vts(p.created_at),
                    vts(p.updated_at),
                ],
            ),
            (
                "INSERT INTO projects_by_owner (owner_id, id) VALUES (?, ?)",
                vec![vu(*p.owner_id.as_uuid()), vu(id)],
            ),
            (
                "INSERT INTO project_buckets (scope, bucket) VALUES (?, ?)",
                vec![Some(CqlValue::Int(PROJECT_SCOPE)), vi(bucket)],
            ),
            (
                "INSERT INTO projects_by_bucket (bucket, id) VALUES (?, ?)",
                vec![vi(bucket), vu(id)],
            ),
        ])
        .await?;
        // After the project rows (a membership never names a missing project); a failure
        // here leaves a project only platform admins see until its owner is added again.
        self.team_add_owner(p).await
    }

    async fn project(&self, id: ProjectId) -> StoreResult<Option<Project>> {
        self.load_project(id).await
    }

    async fn list_projects(
        &self,
        owner: Option<AdminUserId>,
        cursor: Option<ProjectId>,
        limit: u32,
    ) -> StoreResult<Page<Project>> {
        let limit = clamp(limit);
        let want = limit + 1;
        let ids: Vec<(Uuid,)> = match owner {
            Some(owner) => {
                let lim = want as i32;
                match cursor {
                    Some(c) => {
                        self.rows(
                            "SELECT id FROM projects_by_owner WHERE owner_id = ? AND id < ? \
                             LIMIT ?",
                            (owner.as_uuid(), c.as_uuid(), lim),
                        )
                        .await?
                    }
                    None => {
                        self.rows(
                            "SELECT id FROM projects_by_owner WHERE owner_id = ? LIMIT ?",
                            (owner.as_uuid(), lim),
                        )
                        .await?
                    }
                }
            }
            None => {
                let buckets: Vec<(i64,)> = self
                    .all_rows(
                        "SELECT bucket FROM project_buckets WHERE scope = ?",
                        (PROJECT_SCOPE,),
                    )
                    .await?;
                let buckets: Vec<i64> = buckets.into_iter().map(|(b,)| b).collect();
                let bound = cursor.map(|c| (self.listing_bucket(c.as_uuid()), *c.as_uuid()));
                self.walk(
                    "SELECT id FROM projects_by_bucket WHERE bucket = ? LIMIT ?",
                    "SELECT id FROM projects_by_bucket WHERE bucket = ? AND id < ? LIMIT ?",
                    &Vec::new(),
                    &buckets,
                    bound,
                    true,
                    want,
                )
                .await?
            }
        };
        let has_more = ids.len() > limit;
        let ids: Vec<Uuid> = ids.into_iter().take(limit).map(|(id,)| id).collect();
        let items = self.load_projects(&ids).await?;
        Ok(Page { items, has_more })
    }

    async fn update_project(
        &self,
        id: ProjectId,
        patch: &ProjectPatch,
    ) -> StoreResult<Option<Project>> {
        let Some(mut p) = self.load_project(id).await? else {
            return Ok(None);
        };
        patch.apply_at(&mut p, self.now());
        self.exec(
            "UPDATE projects SET name = ?, plan = ?, status = ?, settings = ?, updated_at = ? \
             WHERE id = ?",
            (
                &p.name,
                enum_str(&p.plan),
                enum_str(&p.status),
                json_text(&p.settings),
                ts(p.updated_at),
                id.as_uuid(),
            ),
        )
        .await?;
        Ok(Some(p))
    }

    async fn delete_project(&self, id: ProjectId) -> StoreResult<bool> {
        let Some(project) = self.load_project(id).await? else {
            return Ok(false);
        };
        let p = *id.as_uuid();
        // Children first, the project row last: a failure part-way leaves the project in
        // place, and deleting it again finishes the job.
        self.team_delete_project(id).await?;
        let keys: Vec<(Uuid,)> = self
            .all_rows(
                "SELECT id FROM api_keys_by_project WHERE project_id = ?",
                (p,),
            )
            .await?;
        for (k,) in keys {
            self.exec("DELETE FROM api_keys WHERE id = ?", (k,)).await?;
        }
        self.exec("DELETE FROM api_keys_by_project WHERE project_id = ?", (p,))
            .await?;

        let buckets: Vec<(i64,)> = self
            .all_rows(
                "SELECT bucket FROM conversation_buckets WHERE project_id = ?",
                (p,),
            )
            .await?;
        for (b,) in buckets {
            let convs: Vec<(Uuid,)> = self
                .all_rows(
                    "SELECT id FROM conversations_by_project WHERE project_id = ? AND bucket = ?",
                    (p, b),
                )
                .await?;
            for (c,) in convs {
                self.purge_conversation(p, c).await?;
            }
            self.exec(
                "DELETE FROM conversations_by_project WHERE project_id = ? AND bucket = ?",
                (p, b),
            )
            .await?;
            for s in CONVERSATION_STATUSES {
                self.exec(
                    "DELETE FROM conversations_by_status WHERE project_id = ? AND status = ? \
                     AND bucket = ?",
                    (p, s.as_str(), b),
                )
                .await?;
            }
        }
        self.exec(
            "DELETE FROM conversation_buckets WHERE project_id = ?",
            (p,),
        )
        .await?;

        let buckets: Vec<(i64,)> = self
            .all_rows(
                "SELECT bucket FROM end_user_buckets WHERE project_id = ?",
                (p,),
            )
            .await?;
        for (b,) in buckets {
            let users: Vec<(Uuid, Option<String>)> = self
                .all_rows(
                    "SELECT id, user_identifier FROM end_users_by_project WHERE project_id = ? \
                     AND bucket = ?",
                    (p, b),
                )
                .await?;
            for (u, ident) in users {
                self.exec(
                    "DELETE FROM conversations_by_member WHERE project_id = ? AND member_id = ?",
                    (p, u),
                )
                .await?;
                self.exec(
                    "DELETE FROM end_users WHERE project_id = ? AND id = ?",
                    (p, u),
                )
                .await?;
                if let Some(ident) = ident {
                    self.exec(
                        "DELETE FROM end_users_by_identifier WHERE project_id = ? \
                         AND user_identifier = ?",
                        (p, ident),
                    )
                    .await?;
                }
            }
            self.exec(
                "DELETE FROM end_users_by_project WHERE project_id = ? AND bucket = ?",
                (p, b),
            )
            .await?;
        }
        self.exec("DELETE FROM end_user_buckets WHERE project_id = ?", (p,))
            .await?;
        self.delete_usage(id).await?;
        self.delete_analytics(id).await?;

        self.batch(vec![
            ("DELETE FROM projects WHERE id = ?", vec![vu(p)]),
            (
                "DELETE FROM projects_by_owner WHERE owner_id = ? AND id = ?",
                vec![vu(*project.owner_id.as_uuid()), vu(p)],
            ),
            (
                "DELETE FROM projects_by_bucket WHERE bucket = ? AND id = ?",
                vec![vi(self.listing_bucket(&p)), vu(p)],
            ),
        ])
        .await?;
        Ok(true)
    }

    // --- API keys --------------------------------------------------------------------------

    // --- team members and invites (see `team`) -------------------------------------------

    async fn member(&self, project: ProjectId, admin: AdminUserId) -> StoreResult<Option<Member>> {
        self.team_member(project, admin).await
    }

    async fn list_members(&self, project: ProjectId) -> StoreResult<Vec<Member>> {
        self.team_members(project).await
    }

    async fn add_member(&self, member: &Member) -> StoreResult<()> {
        self.team_add_member(member).await
    }

    async fn set_member_role(
        &self,
        project: ProjectId,
        admin: AdminUserId,
        role: ProjectRole,
    ) -> StoreResult<Option<Member>> {
        self.team_set_role(project, admin, role).await
    }

    async fn remove_member(&self, project: ProjectId, admin: AdminUserId) -> StoreResult<bool> {
        self.team_remove(project, admin).await
    }

    async fn member_projects(
        &self,
        admin: AdminUserId,
        cursor: Option<ProjectId>,
        limit: u32,
    ) -> StoreResult<Page<(Project, ProjectRole)>> {
        self.team_member_projects(admin, cursor, limit).await
    }

    async fn create_invite(&self, invite: &Invite) -> StoreResult<()> {
        self.team_create_invite(invite).await
    }

    async fn invite(&self, project: ProjectId, id: InviteId) -> StoreResult<Option<Invite>> {
        self.team_invite(project, id).await
    }

    async fn list_invites(&self, project: ProjectId) -> StoreResult<Vec<Invite>> {
        self.team_invites(project).await
    }

    async fn delete_invite(&self, project: ProjectId, id: InviteId) -> StoreResult<bool> {
        self.team_delete_invite(project, id).await
    }

    async fn claim_invite(
        &self,
        project: ProjectId,
        id: InviteId,
        token_hash: &[u8; 32],
        at: DateTime<Utc>,
    ) -> StoreResult<Option<Invite>> {
        self.team_claim_invite(project, id, token_hash, at).await
    }

    async fn create_api_key(&self, key: &ApiKeyRecord) -> StoreResult<()> {
        if self.load_api_key(key.id).await?.is_some() {
            return Err(StoreError::Conflict("key id exists".into()));
        }
        let id = *key.id.as_uuid();
        let scopes: Vec<CqlValue> = key
            .scopes
            .iter()
            .map(|s| CqlValue::Text(s.as_str().to_owned()))
            .collect();
        let mut items: Vec<(&'static str, Values)> = vec![
            (
                "INSERT INTO api_keys (id, project_id, name, kind, prefix, scopes, secret_hash, \
                 expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                vec![
                    vu(id),
                    vu(*key.project_id.as_uuid()),
                    vt(&key.name),
                    vt(&enum_str(&key.kind)),
                    vt(&key.prefix),
                    Some(CqlValue::Set(scopes)),
                    Some(CqlValue::Blob(key.secret_hash.to_vec())),
                    vots(key.expires_at),
                    vts(key.created_at),
                ],
            ),
            (
                "INSERT INTO api_keys_by_project (project_id, created_at, id) VALUES (?, ?, ?)",
                vec![vu(*key.project_id.as_uuid()), vts(key.created_at), vu(id)],
            ),
        ];
        // Written only when set: a null would be a tombstone newer than a later touch.
        if let Some(t) = key.last_used_at {
            items.push((
                "UPDATE api_keys SET last_used_at = ? WHERE id = ?",
                vec![vts(t), vu(id)],
            ));
        }
        if let Some(t) = key.revoked_at {
            items.push((
                "UPDATE api_keys SET revoked_at = ? WHERE id = ?",
                vec![vts(t), vu(id)],
            ));
        }
        self.batch(items).await
    }

    async fn api_key(&self, id: ApiKeyId) -> StoreResult<Option<ApiKeyRecord>> {
        self.load_api_key(id).await
    }

    async fn list_api_keys(&self, project: ProjectId) -> StoreResult<Vec<ApiKeyRecord>> {
        let ids: Vec<(Uuid,)> = self
            .all_rows(
                "SELECT id FROM api_keys_by_project WHERE project_id = ?",
                (project.as_uuid(),),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = ids.into_iter().map(|(id,)| id).collect();
        let rows: Vec<ApiKeyRow> = self
            .rows(
                concat!("SELECT ", api_key_cols!(), " FROM api_keys WHERE id IN ?"),
                (ids.clone(),),
            )
            .await?;
        let mut by_id = HashMap::new();
        for r in rows {
            if let Some(k) = decode_api_key(r)? {
                if k.project_id == project {
                    by_id.insert(*k.id.as_uuid(), k);
                }
            }
        }
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    async fn revoke_api_key(
        &self,
        id: ApiKeyId,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<ApiKeyRecord>> {
        let Some(mut key) = self.load_api_key(id).await? else {
            return Ok(None);
        };
        if key.revoked_at.is_some() {
            return Ok(Some(key));
        }
        self.exec(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ?",
            (ts(at), id.as_uuid()),
        )
        .await?;
        key.revoked_at = Some(at);
        Ok(Some(key))
    }

    async fn touch_api_key(&self, id: ApiKeyId, at: DateTime<Utc>) -> StoreResult<()> {
        let exists: Option<(Option<Uuid>,)> = self
            .row(
                "SELECT project_id FROM api_keys WHERE id = ?",
                (id.as_uuid(),),
            )
            .await?;
        if !matches!(exists, Some((Some(_),))) {
            return Ok(());
        }
        // The write timestamp is the use time: last-write-wins keeps the latest use, so
        // `last_used_at` never moves backwards, whatever order touches arrive in.
        self.exec(
            "UPDATE api_keys USING TIMESTAMP ? SET last_used_at = ? WHERE id = ?",
            (at.timestamp_micros(), ts(at), id.as_uuid()),
        )
        .await?;
        Ok(())
    }

    // --- end users -------------------------------------------------------------------------

    async fn upsert_end_user(
        &self,
        project: ProjectId,
        u: &NewEndUser,
    ) -> StoreResult<(EndUser, bool)> {
        let now = self.now();
        let fresh = |identifier: Option<String>| EndUser {
            id: EndUserId::new_v7_at(now),
            project_id: project,
            is_anonymous: identifier.is_none(),
            user_identifier: identifier,
            name: u.name.clone(),
            email: u.email.clone(),
            avatar: u.avatar.clone(),
            metadata: if u.metadata.is_null() {
                model::empty_object()
            } else {
                u.metadata.clone()
            },
            last_seen_at: None,
            created_at: now,
            updated_at: now,
        };
        let Some(identifier) = u.user_identifier.clone() else {
            let user = fresh(None);
            let ticket = self.check_quota(project, 0, &[user.id]).await?;
            let entry = self.insert_end_user(&user).await?;
            self.enqueue(vec![entry]);
            self.settle(ticket, 0).await;
            return Ok((user, true));
        };
        // Concurrent identifications in this process queue here; across processes the
        // lightweight transaction below decides.
        let _guard = self
            .key_locks
            .of(("ident", project, &identifier))
            .lock()
            .await;
        // The claim first, then the user: an identification killed between the two leaves a
        // claim that points at no user yet, counted nowhere, which the next identification
        // repairs by writing the user with the claimed id. Never a user that no identifier
        // reaches. (The user's rows, its usage rows and its `user.created` event, whose id is
        // derived from the user's, are the same whoever writes them, so a repair racing the
        // claimant's own write counts the user once and publishes one event id.)
        for _ in 0..5 {
            let claimed: Option<(Option<Uuid>,)> = self
                .row(
                    "SELECT id FROM end_users_by_identifier WHERE project_id = ? \
                     AND user_identifier = ?",
                    (project.as_uuid(), &identifier),
                )
                .await?;
            if let Some((Some(id),)) = claimed {
                if let Some(mut user) = self.load_end_user(project, id).await? {
                    // Identified this month: an active user (counted once per month).
                    let ticket = self.check_quota(project, 0, &[user.id]).await?;
                    self.batch(usage::rows(project, Period::of(now), &[], &[user.id]))
                        .await?;
                    self.settle(ticket, 0).await;
                    if apply_identify(&mut user, u) {
                        user.updated_at = now.max(user.updated_at);
                        self.write_end_user_profile(&user, true).await?;
                    }
                    return Ok((user, false));
                }
                // Claimed, never written: its identification was killed (or is still
                // writing, in another process). Write the user with the claimed id.
                let user = EndUser {
                    id: EndUserId::from_uuid(id),
                    ..fresh(Some(identifier.clone()))
                };
                let ticket = self.check_quota(project, 0, &[user.id]).await?;
                let entry = self.insert_end_user(&user).await?;
                self.enqueue(vec![entry]);
                self.settle(ticket, 0).await;
                // Created for the identification that claimed it, not by this call (which
                // may race a live claimant: only the claimant answers `true`).
                return Ok((user, false));
            }
            let user = fresh(Some(identifier.clone()));
            let ticket = self.check_quota(project, 0, &[user.id]).await?;
            let won = self
                .lwt(
                    "INSERT INTO end_users_by_identifier (project_id, user_identifier, id) \
                     VALUES (?, ?, ?) IF NOT EXISTS",
                    (project.as_uuid(), &identifier, user.id.as_uuid()),
                )
                .await?;
            if !won {
                // Another process claimed it first: nothing was written; read its claim.
                continue;
            }
            let entry = self.insert_end_user(&user).await?;
            self.enqueue(vec![entry]);
            self.settle(ticket, 0).await;
            return Ok((user, true));
        }
        Err(StoreError::Unavailable(
            "end-user identification kept racing".into(),
        ))
    }

    async fn end_user(&self, project: ProjectId, id: EndUserId) -> StoreResult<Option<EndUser>> {
        self.load_end_user(project, *id.as_uuid()).await
    }

    async fn update_end_user(
        &self,
        project: ProjectId,
        id: EndUserId,
        patch: &EndUserPatch,
    ) -> StoreResult<Option<EndUser>> {
        let Some(mut user) = self.load_end_user(project, *id.as_uuid()).await? else {
            return Ok(None);
        };
        patch.apply_at(&mut user, self.now());
        // A heartbeat (`last_seen_at` only) is not a profile change: no event.
        self.write_end_user_profile(&user, patch.has_profile_fields())
            .await?;
        Ok(Some(user))
    }

    async fn delete_end_user(&self, project: ProjectId, id: EndUserId) -> StoreResult<bool> {
        let Some(user) = self.load_end_user(project, *id.as_uuid()).await? else {
            return Ok(false);
        };
        let p = *project.as_uuid();
        let u = *id.as_uuid();
        let member_key = Actor::end_user(id, None).member_key();
        let convs: Vec<(Uuid,)> = self
            .all_rows(
                "SELECT conversation_id FROM conversations_by_member WHERE project_id = ? \
                 AND member_id = ?",
                (p, u),
            )
            .await?;
        for (c,) in convs {
            self.batch(vec![
                (
                    "UPDATE conversations SET members = members - ? WHERE project_id = ? \
                     AND id = ?",
                    vec![vuuid_set([u]), vu(p), vu(c)],
                ),
                (
                    "DELETE FROM read_states WHERE project_id = ? AND conversation_id = ? \
                     AND member_key = ?",
                    vec![vu(p), vu(c), vt(&member_key)],
                ),
            ])
            .await?;
        }
        self.exec(
            "DELETE FROM conversations_by_member WHERE project_id = ? AND member_id = ?",
            (p, u),
        )
        .await?;
        // The claim before the rows: a claim without its user is an identification to
        // repair (see `upsert_end_user`), so a delete killed between the two must leave the
        // user (still listed, deleted by the retry), not the claim.
        if let Some(ident) = &user.user_identifier {
            self.lwt(
                "DELETE FROM end_users_by_identifier WHERE project_id = ? \
                 AND user_identifier = ? IF id = ?",
                (p, ident, u),
            )
            .await?;
        }
        self.remove_end_user_rows(project, u).await?;
        Ok(true)
    }

    // --- conversations ---------------------------------------------------------------------

    async fn create_conversation(&self, c: &Conversation) -> StoreResult<()> {
        let mut members = c.members.clone();
        members.sort();
        members.dedup();
        self.check_end_users(c.project_id, &members).await?;
        if self.load_conversation(c.project_id, c.id).await?.is_some() {
            return Err(StoreError::Conflict("conversation id exists".into()));
        }
        let ticket = self.check_quota(c.project_id, 0, &members).await?;
        let p = *c.project_id.as_uuid();
        let id = *c.id.as_uuid();
        let bucket = self.listing_bucket(&id);
        let status = c.status.as_str();
        let mut items: Vec<(&'static str, Values)> = vec![
            (
                "INSERT INTO conversations (project_id, id, subject, status, members, metadata, \
                 created_at, updated_at, assignee) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                vec![
                    vu(p),
                    vu(id),
                    vot(c.subject.as_deref()),
                    vt(status),
                    vuuid_set(members.iter().map(|m| *m.as_uuid())),
                    vt(&json_text(&c.metadata)),
                    vts(c.created_at),
                    vts(c.updated_at),
                    vot(c.assignee.as_deref()),
                ],
            ),
            (
                "INSERT INTO conversation_buckets (project_id, bucket) VALUES (?, ?)",
                vec![vu(p), vi(bucket)],
            ),
            (
                "INSERT INTO conversations_by_project (project_id, bucket, id) VALUES (?, ?, ?)",
                vec![vu(p), vi(bucket), vu(id)],
            ),
            (
                "INSERT INTO conversations_by_status (project_id, status, bucket, id) \
                 VALUES (?, ?, ?, ?)",
                vec![vu(p), vt(status), vi(bucket), vu(id)],
            ),
        ];
        items.extend(by_assignee(
            INSERT_BY_ASSIGNEE,
            p,
            c.assignee.as_deref(),
            &[ANY_STATUS, status],
            bucket,
            id,
        ));
        for m in &members {
            items.push((
                "INSERT INTO conversations_by_member (project_id, member_id, conversation_id, \
                 status, assignee) VALUES (?, ?, ?, ?, ?)",
                vec![
                    vu(p),
                    vu(*m.as_uuid()),
                    vu(id),
                    vt(status),
                    vot(c.assignee.as_deref()),
                ],
            ));
        }
        if let Some(last) = c.last_message_id {
            items.push((
                "UPDATE conversations USING TIMESTAMP ? SET last_message_id = ? \
                 WHERE project_id = ? AND id = ?",
                vec![
                    vi(head_timestamp(last.as_uuid())),
                    vu(*last.as_uuid()),
                    vu(p),
                    vu(id),
                ],
            ));
        }
        let stored = Conversation {
            members: members.clone(),
            ..c.clone()
        };
        let (insert, entry) =
            outbox::insert(&DomainEvent::conversation_created(&stored), self.now());
        items.push(insert);
        items.extend(usage::rows(
            c.project_id,
            Period::of(self.now()),
            &[(usage::KIND_CONVERSATION, id, None)],
            &members,
        ));
        items.extend(analytics::conversation_rows(&stored));
        let keys = self
            .conversation_keys(c.project_id, c.subject.as_deref(), &members)
            .await?;
        items.extend(self.search_rows(p, id, &keys));
        self.batch(items).await?;
        self.enqueue(vec![entry]);
        self.settle(ticket, 1).await;
        // The sequencer starts at seq 0. Should this fail, the first append does it.
        self.set_initial_head(p, id, sequencer::Head { seq: 0, id: None })
            .await?;
        Ok(())
    }

    async fn create_conversation_keyed(
        &self,
        c: &Conversation,
        key: &CreationKey,
    ) -> StoreResult<(Conversation, bool)> {
        let mut members = c.members.clone();
        members.sort();
        members.dedup();
        let c = Conversation {
            members,
            ..c.clone()
        };
        let p = *c.project_id.as_uuid();
        // Concurrent creations with one key queue here; across processes the lightweight
        // transaction below decides. The claim first, with the conversation to write, then
        // the conversation (as for end-user identifiers): a creator killed between the two
        // leaves a claim without its conversation, counted nowhere, that the next call with
        // the key finishes by writing the claimed conversation (the same rows and the same
        // derived event id, whoever writes them, so a finisher racing a live creator counts
        // and announces it once).
        let _guard = self
            .key_locks
            .of(("conversation key", c.project_id, &key.caller, &key.key))
            .lock()
            .await;
        for _ in 0..5 {
            let claimed: Option<(Option<Uuid>, Option<String>)> = self
                .row(
                    "SELECT conversation_id, conversation FROM conversation_keys \
                     WHERE project_id = ? AND caller = ? AND key = ?",
                    (p, &key.caller, &key.key),
                )
                .await?;
            if let Some((Some(id), body)) = claimed {
                let id = ConversationId::from_uuid(id);
                if let Some(existing) = self.load_conversation(c.project_id, id).await? {
                    return Ok((existing, false));
                }
                let claimed: Conversation = body
                    .as_deref()
                    .and_then(|b| serde_json::from_str(b).ok())
                    .filter(|k: &Conversation| k.id == id && k.project_id == c.project_id)
                    .ok_or_else(|| corrupt("conversation_keys.conversation"))?;
                match self.create_conversation(&claimed).await {
                    // Finished for the caller that claimed the key: not created by this call.
                    Ok(()) => return Ok((claimed, false)),
                    // Written meanwhile by its creator: read it.
                    Err(StoreError::Conflict(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            // Refuse what would be refused before claiming: unknown members.
            self.check_end_users(c.project_id, &c.members).await?;
            let body = serde_json::to_string(&c)
                .map_err(|e| StoreError::Internal(format!("encoding a conversation: {e}")))?;
            let won = self
                .lwt(
                    "INSERT INTO conversation_keys (project_id, caller, key, conversation_id, \
                     conversation) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS",
                    (p, &key.caller, &key.key, c.id.as_uuid(), &body),
                )
                .await?;
            if !won {
                continue;
            }
            match self.create_conversation(&c).await {
                Ok(()) => return Ok((c, true)),
                // Refused before anything was written: the key stays unused.
                Err(e @ (StoreError::NotFound(_) | StoreError::QuotaExceeded(_))) => {
                    self.lwt(
                        "DELETE FROM conversation_keys WHERE project_id = ? AND caller = ? \
                         AND key = ? IF conversation_id = ?",
                        (p, &key.caller, &key.key, c.id.as_uuid()),
                    )
                    .await?;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Unavailable(
            "conversation creation key kept racing".into(),
        ))
    }

    async fn conversation(
        &self,
        project: ProjectId,
        id: ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        self.load_conversation(project, id).await
    }

    async fn list_conversations(
        &self,
        project: ProjectId,
        query: &ConversationQuery,
    ) -> StoreResult<Page<Conversation>> {
        let limit = clamp(query.limit);
        let want = limit + 1;
        let p = *project.as_uuid();
        let mut ids: Vec<Uuid> = Vec::new();
        if let Some(member) = query.member {
            // The member's partition, newest first, status filtered here; chunks until the
            // page is full or the partition ends.
            let mut cursor = query.cursor.map(|c| *c.as_uuid());
            let chunk = want.max(100);
            loop {
                let rows: Vec<(Uuid, Option<String>, Option<String>)> = match cursor {
                    Some(c) => {
                        self.rows(
                            "SELECT conversation_id, status, assignee FROM conversations_by_member \
                             WHERE project_id = ? AND member_id = ? AND conversation_id < ? \
                             LIMIT ?",
                            (p, member.as_uuid(), c, chunk as i32),
                        )
                        .await?
                    }
                    None => {
                        self.rows(
                            "SELECT conversation_id, status, assignee FROM conversations_by_member \
                             WHERE project_id = ? AND member_id = ? LIMIT ?",
                            (p, member.as_uuid(), chunk as i32),
                        )
                        .await?
                    }
                };
                let n = rows.len();
                for (id, status, assignee) in rows {
                    cursor = Some(id);
                    let keep = query
                        .status
                        .is_none_or(|s| status.as_deref() == Some(s.as_str()))
                        && query
                            .assignee
                            .as_ref()
                            .is_none_or(|a| a.matches(assignee.as_deref()));
                    if keep && ids.len() < want {
                        ids.push(id);
                    }
                }
                if ids.len() >= want || n < chunk {
                    break;
                }
            }
        } else {
            let buckets: Vec<(i64,)> = self
                .all_rows(
                    "SELECT bucket FROM conversation_buckets WHERE project_id = ?",
                    (p,),
                )
                .await?;
            let buckets: Vec<i64> = buckets.into_iter().map(|(b,)| b).collect();
            let bound = query
                .cursor
                .map(|c| (self.listing_bucket(c.as_uuid()), *c.as_uuid()));
            let rows: Vec<(Uuid,)> = match (&query.assignee, query.status) {
                (Some(a), s) => {
                    let key = match a {
                        AssigneeFilter::Unassigned => UNASSIGNED_KEY,
                        AssigneeFilter::Agent(agent) => agent.as_str(),
                    };
                    let status = s.map_or(ANY_STATUS, ConversationStatus::as_str);
                    self.walk(
                        "SELECT id FROM conversations_by_assignee WHERE project_id = ? \
                         AND assignee = ? AND status = ? AND bucket = ? LIMIT ?",
                        "SELECT id FROM conversations_by_assignee WHERE project_id = ? \
                         AND assignee = ? AND status = ? AND bucket = ? AND id < ? LIMIT ?",
                        &vec![vu(p), vt(key), vt(status)],
                        &buckets,
                        bound,
                        true,
                        want,
                    )
                    .await?
                }
                (None, Some(s)) => {
                    self.walk(
                        "SELECT id FROM conversations_by_status WHERE project_id = ? \
                         AND status = ? AND bucket = ? LIMIT ?",
                        "SELECT id FROM conversations_by_status WHERE project_id = ? \
                         AND status = ? AND bucket = ? AND id < ? LIMIT ?",
                        &vec![vu(p), vt(s.as_str())],
                        &buckets,
                        bound,
                        true,
                        want,
                    )
                    .await?
                }
                (None, None) => {
                    self.walk(
                        "SELECT id FROM conversations_by_project WHERE project_id = ? \
                         AND bucket = ? LIMIT ?",
                        "SELECT id FROM conversations_by_project WHERE project_id = ? \
                         AND bucket = ? AND id < ? LIMIT ?",
                        &vec![vu(p)],
                        &buckets,
                        bound,
                        true,
                        want,
                    )
                    .await?
                }
            };
            ids = rows.into_iter().map(|(id,)| id).collect();
        }
        let has_more = ids.len() > limit;
        ids.truncate(limit);
        let mut items = self.load_conversations(project, &ids).await?;
        if let Some(a) = &query.assignee {
            // Two processes reassigning one conversation at once can each leave an index row
            // (the row itself ends at one assignee): drop what the row contradicts.
            items.retain(|c| a.matches(c.assignee.as_deref()));
        }
        Ok(Page { items, has_more })
    }

    async fn search_conversations(
        &self,
        project: ProjectId,
        search: &SearchQuery,
        query: &ConversationQuery,
    ) -> StoreResult<Page<Conversation>> {
        self.search(project, search, query).await
    }

    async fn update_conversation(
        &self,
        project: ProjectId,
        id: ConversationId,
        patch: &ConversationPatch,
    ) -> StoreResult<Option<Conversation>> {
        let Some(mut c) = self.load_conversation(project, id).await? else {
            return Ok(None);
        };
        let mut added: Vec<EndUserId> = patch
            .add_members
            .iter()
            .filter(|m| !c.members.contains(m))
            .copied()
            .collect();
        added.sort();
        added.dedup();
        self.check_end_users(project, &added).await?;
        let old_status = c.status;
        let old_assignee = c.assignee.clone();
        patch.apply_fields_at(&mut c, self.now());
        c.members.extend(added.iter().copied());
        c.members.sort();

        let p = *project.as_uuid();
        let cid = *id.as_uuid();
        let bucket = self.listing_bucket(&cid);
        let status = c.status.as_str();
        let mut items: Vec<(&'static str, Values)> = vec![(
            "UPDATE conversations SET subject = ?, status = ?, metadata = ?, updated_at = ?, \
             assignee = ?, members = members + ? WHERE project_id = ? AND id = ?",
            vec![
                vot(c.subject.as_deref()),
                vt(status),
                vt(&json_text(&c.metadata)),
                vts(c.updated_at),
                vot(c.assignee.as_deref()),
                vuuid_set(added.iter().map(|m| *m.as_uuid())),
                vu(p),
                vu(cid),
            ],
        )];
        if old_status != c.status {
            items.push((
                "DELETE FROM conversations_by_status WHERE project_id = ? AND status = ? \
                 AND bucket = ? AND id = ?",
                vec![vu(p), vt(old_status.as_str()), vi(bucket), vu(cid)],
            ));
            items.push((
                "INSERT INTO conversations_by_status (project_id, status, bucket, id) \
                 VALUES (?, ?, ?, ?)",
                vec![vu(p), vt(status), vi(bucket), vu(cid)],
            ));
        }
        let reassigned = old_assignee != c.assignee;
        if reassigned {
            items.extend(by_assignee(
                DELETE_BY_ASSIGNEE,
                p,
                old_assignee.as_deref(),
                &[ANY_STATUS, old_status.as_str()],
                bucket,
                cid,
            ));
            items.extend(by_assignee(
                INSERT_BY_ASSIGNEE,
                p,
                c.assignee.as_deref(),
                &[ANY_STATUS, status],
                bucket,
                cid,
            ));
        } else if old_status != c.status {
            items.extend(by_assignee(
                DELETE_BY_ASSIGNEE,
                p,
                old_assignee.as_deref(),
                &[old_status.as_str()],
                bucket,
                cid,
            ));
            items.extend(by_assignee(
                INSERT_BY_ASSIGNEE,
                p,
                c.assignee.as_deref(),
                &[status],
                bucket,
                cid,
            ));
        }
        if old_status != c.status || reassigned || !added.is_empty() {
            for m in &c.members {
                items.push((
                    "INSERT INTO conversations_by_member (project_id, member_id, \
                     conversation_id, status, assignee) VALUES (?, ?, ?, ?, ?)",
                    vec![
                        vu(p),
                        vu(*m.as_uuid()),
                        vu(cid),
                        vt(status),
                        vot(c.assignee.as_deref()),
                    ],
                ));
            }
        }
        let (insert, entry) = outbox::insert(
            &DomainEvent::conversation_changed(old_status, &c),
            self.now(),
        );
        items.push(insert);
        items.extend(analytics::status_rows(&c, old_status));
        // A new subject and added members become searchable (earlier words stay findable).
        let subject = patch.subject.as_ref().and_then(|s| s.as_deref());
        if subject.is_some() || !added.is_empty() {
            let keys = self.conversation_keys(project, subject, &added).await?;
            items.extend(self.search_rows(p, cid, &keys));
        }
        self.batch(items).await?;
        self.enqueue(vec![entry]);
        Ok(Some(c))
    }

    // --- messages --------------------------------------------------------------------------

    async fn append_message(&self, m: &NewMessage) -> StoreResult<Appended> {
        let sender: Vec<EndUserId> = match m.sender.kind {
            ActorKind::EndUser => m.sender.id.parse().ok().into_iter().collect(),
            _ => Vec::new(),
        };
        let ticket = match self.check_quota(m.project_id, 1, &sender).await {
            Ok(t) => t,
            Err(StoreError::QuotaExceeded(q)) => {
                // A retry of a send that was stored gets its original, as below the limit.
                return match self.previous_append(m).await? {
                    Some(message) => Ok(Appended {
                        message,
                        created: false,
                    }),
                    None => Err(StoreError::QuotaExceeded(q)),
                };
            }
            Err(e) => return Err(e),
        };
        let appended = self.append(m).await?;
        if appended.created {
            self.settle(ticket, 0).await;
        }
        Ok(appended)
    }

    async fn list_messages(
        &self,
        project: ProjectId,
        conversation: ConversationId,
        range: MessageRange,
        limit: u32,
    ) -> StoreResult<Page<Message>> {
        let limit = clamp(limit);
        let want = limit + 1;
        let p = *project.as_uuid();
        let c = *conversation.as_uuid();
        let mut buckets = self.message_buckets(p, c).await?; // newest first
        let prefix = vec![vu(p), vu(c)];
        let (rows, ascending): (Vec<MessageRow>, bool) = match range {
            MessageRange::Latest | MessageRange::Before(_) => {
                let bound = match range {
                    MessageRange::Before(id) => {
                        Some((self.message_bucket(id.as_uuid()), *id.as_uuid()))
                    }
                    _ => None,
                };
                let rows = self
                    .walk(
                        concat!(
                            "SELECT ",
                            message_cols!(),
                            " FROM messages WHERE project_id = ? AND conversation_id = ? \
                             AND bucket = ? ORDER BY id DESC LIMIT ?"
                        ),
                        concat!(
                            "SELECT ",
                            message_cols!(),
                            " FROM messages WHERE project_id = ? AND conversation_id = ? \
                             AND bucket = ? AND id < ? ORDER BY id DESC LIMIT ?"
                        ),
                        &prefix,
                        &buckets,
                        bound,
                        true,
                        want,
                    )
                    .await?;
                (rows, false)
            }
            MessageRange::After(id) => {
                buckets.reverse();
                let rows = self
                    .walk(
                        concat!(
                            "SELECT ",
                            message_cols!(),
                            " FROM messages WHERE project_id = ? AND conversation_id = ? \
                             AND bucket = ? ORDER BY id ASC LIMIT ?"
                        ),
                        concat!(
                            "SELECT ",
                            message_cols!(),
                            " FROM messages WHERE project_id = ? AND conversation_id = ? \
                             AND bucket = ? AND id > ? ORDER BY id ASC LIMIT ?"
                        ),
                        &prefix,
                        &buckets,
                        Some((self.message_bucket(id.as_uuid()), *id.as_uuid())),
                        false,
                        want,
                    )
                    .await?;
                (rows, true)
            }
        };
        let mut items = rows
            .into_iter()
            .map(|r| decode_message(project, conversation, r))
            .collect::<StoreResult<Vec<_>>>()?;
        if !ascending {
            items.reverse();
        }
        // A resume after a known message checks continuity from its seq, so a hole right after
        // the cursor is repaired too. (A cursor that is not a message id — a v1 client's 5 s
        // window — has no seq: continuity is checked among the rows only.)
        let anchor = match range {
            MessageRange::After(id) if id != MessageId::MIN => self
                .load_message(project, conversation, *id.as_uuid())
                .await?
                .map(|m| m.seq),
            _ => None,
        };
        self.fill_holes(project, conversation, anchor, &mut items)
            .await?;
        // One row more than the page was read to know `has_more`; it also lets a hole just
        // below an older page be found. Keep the page's end in the direction of travel.
        let has_more = items.len() > limit;
        if has_more {
            if ascending {
                items.truncate(limit);
            } else {
                items.drain(..items.len() - limit);
            }
        }
        Ok(Page { items, has_more })
    }

    async fn message(
        &self,
        project: ProjectId,
        conversation: ConversationId,
        id: MessageId,
    ) -> StoreResult<Option<Message>> {
        self.load_message(project, conversation, *id.as_uuid())
            .await
    }

    // --- read state ------------------------------------------------------------------------

    async fn mark_read(
        &self,
        project: ProjectId,
        conversation: ConversationId,
        reader: &Actor,
        message_id: MessageId,
        at: DateTime<Utc>,
    ) -> StoreResult<ReadState> {
        if self
            .load_conversation(project, conversation)
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound("conversation"));
        }
        let p = *project.as_uuid();
        let c = *conversation.as_uuid();
        let member_key = reader.member_key();
        // Read-compare-write per (conversation, reader), serialised in this process. Across
        // processes markers are last-write-wins, as the architecture allows.
        let _guard = self.key_locks.of(("read", p, c, &member_key)).lock().await;
        let current: Option<ReadStateRow> = self
            .row(
                "SELECT reader_kind, reader_id, reader_name, last_read_message_id, updated_at \
                 FROM read_states WHERE project_id = ? AND conversation_id = ? \
                 AND member_key = ?",
                (p, c, &member_key),
            )
            .await?;
        if let Some(row) = current {
            if let Some(state) = decode_read_state(conversation, row)? {
                if state.last_read_message_id >= message_id {
                    return Ok(state);
                }
            }
        }
        let state = ReadState {
            conversation_id: conversation,
            reader: reader.clone(),
            last_read_message_id: message_id,
            updated_at: at,
        };
        let (insert, entry) =
            outbox::insert(&DomainEvent::message_read(project, &state), self.now());
        self.batch(vec![
            (
                "INSERT INTO read_states (project_id, conversation_id, member_key, \
                 reader_kind, reader_id, reader_name, last_read_message_id, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                vec![
                    vu(p),
                    vu(c),
                    vt(&member_key),
                    vt(reader.kind.as_str()),
                    vt(&reader.id),
                    vot(reader.name.as_deref()),
                    vu(*message_id.as_uuid()),
                    vts(at),
                ],
            ),
            insert,
        ])
        .await?;
        self.enqueue(vec![entry]);
        Ok(state)
    }

    async fn read_states(
        &self,
        project: ProjectId,
        conversation: ConversationId,
    ) -> StoreResult<Vec<ReadState>> {
        let rows: Vec<ReadStateRow> = self
            .all_rows(
                "SELECT reader_kind, reader_id, reader_name, last_read_message_id, updated_at \
                 FROM read_states WHERE project_id = ? AND conversation_id = ?",
                (project.as_uuid(), conversation.as_uuid()),
            )
            .await?;
        let mut out = Vec::new();
        for r in rows {
            if let Some(s) = decode_read_state(conversation, r)? {
                out.push(s);
            }
        }
        Ok(out)
    }

    // --- health ----------------------------------------------------------------------------

    async fn list_plans(&self) -> StoreResult<Vec<Plan>> {
        self.load_plans().await
    }

    async fn plan(&self, id: &PlanId) -> StoreResult<Option<Plan>> {
        self.load_plan(id).await
    }

    async fn put_plan(&self, plan: &Plan) -> StoreResult<()> {
        self.write_plan(plan).await
    }

    async fn usage(&self, project: ProjectId, period: Period) -> StoreResult<UsageCounts> {
        self.read_usage(project, period).await
    }

    async fn usage_history(
        &self,
        project: ProjectId,
        limit: u32,
    ) -> StoreResult<Vec<(Period, UsageCounts)>> {
        let mut out = Vec::new();
        for period in self.usage_periods(project, limit).await? {
            out.push((period, self.read_usage(project, period).await?));
        }
        Ok(out)
    }

    async fn record_edge_usage(&self, process: Uuid, rows: &[EdgeUsage]) -> StoreResult<()> {
        self.write_edge_usage(process, rows).await
    }

    fn plans_changed(&self) {
        self.forget_limits();
    }

    async fn analytics(
        &self,
        project: ProjectId,
        range: &AnalyticsRange,
    ) -> StoreResult<AnalyticsData> {
        self.read_analytics(project, range).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.exec("SELECT release_version FROM system.local", ())
            .await?;
        Ok(())
    }
}

// --- free functions ------------------------------------------------------------------------

/// A schema statement. Schema changes wait for every node to agree and can take far longer
/// than a query on a busy cluster (tens of seconds on a loaded 2-core machine), so they get
/// their own timeout instead of `request_timeout`.
fn ddl(cql: impl Into<String>) -> scylla::statement::unprepared::Statement {
    let mut statement = scylla::statement::unprepared::Statement::new(cql.into());
    statement.set_request_timeout(Some(DDL_TIMEOUT));
    statement
}

const DDL_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether `name` is a keyspace name this store accepts: `[a-z_][a-z0-9_]*`, at most 48
/// characters (it is written into DDL, so it is checked before anything else).
pub fn valid_keyspace(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && name.len() <= 48
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn clamp(limit: u32) -> usize {
    limit.clamp(1, 1000) as usize
}

/// The bucket of an id: the 48-bit millisecond prefix of a v7 UUID divided by the width. For
/// any UUID it is monotonic in id order, so walking buckets in order walks ids in order.
fn bucket_of(id: &Uuid, width: Duration) -> i64 {
    let b = id.as_bytes();
    let ms = u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]]);
    let width = u64::try_from(width.as_millis()).unwrap_or(u64::MAX).max(1);
    i64::try_from(ms / width).unwrap_or(i64::MAX)
}

/// Write timestamp (µs) for a conversation head pointing at message `id`: the id's time, so
/// a later id never loses to an earlier one (equal timestamps keep the greater value).
fn head_timestamp(id: &Uuid) -> i64 {
    let b = id.as_bytes();
    let ms = u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]]);
    i64::try_from(ms).unwrap_or(i64::MAX / 1000) * 1000 + 999
}

fn is_empty_object(v: &serde_json::Value) -> bool {
    v.is_null() || v.as_object().is_some_and(|o| o.is_empty())
}

/// Applies an identification's profile to a known user; `true` when something changed.
fn apply_identify(user: &mut EndUser, u: &NewEndUser) -> bool {
    let mut changed = false;
    for (field, value) in [
        (&mut user.name, &u.name),
        (&mut user.email, &u.email),
        (&mut user.avatar, &u.avatar),
    ] {
        if let Some(v) = value {
            if field.as_ref() != Some(v) {
                *field = Some(v.clone());
                changed = true;
            }
        }
    }
    if !is_empty_object(&u.metadata) && user.metadata != u.metadata {
        user.metadata = u.metadata.clone();
        changed = true;
    }
    changed
}

/// The `conversations_by_assignee` statements (`cql`: [`INSERT_BY_ASSIGNEE`] or
/// [`DELETE_BY_ASSIGNEE`]) of one conversation under `assignee`, one per status key.
fn by_assignee(
    cql: &'static str,
    project: Uuid,
    assignee: Option<&str>,
    statuses: &[&str],
    bucket: i64,
    id: Uuid,
) -> Vec<(&'static str, Values)> {
    let key = assignee.unwrap_or(UNASSIGNED_KEY);
    statuses
        .iter()
        .map(|s| (cql, vec![vu(project), vt(key), vt(s), vi(bucket), vu(id)]))
        .collect()
}

/// A conversation row; `None` for a partial row (only cells written by a racing append or
/// member removal after the conversation was deleted).
fn decode_conversation(
    project: ProjectId,
    r: ConversationRow,
) -> StoreResult<Option<Conversation>> {
    let (id, subject, status, members, metadata, created_at, updated_at, last, assignee) = r;
    let (Some(status), Some(created_at)) = (status, created_at) else {
        return Ok(None);
    };
    let mut members: Vec<EndUserId> = members
        .unwrap_or_default()
        .into_iter()
        .map(EndUserId::from_uuid)
        .collect();
    members.sort();
    let created_at = from_ts(created_at)?;
    Ok(Some(Conversation {
        id: ConversationId::from_uuid(id),
        project_id: project,
        subject,
        status: parse_enum(&status, "conversation status")?,
        members,
        metadata: parse_json(metadata.as_deref())?,
        created_at,
        updated_at: from_opt_ts(updated_at)?.unwrap_or(created_at),
        last_message_id: last.map(MessageId::from_uuid),
        assignee,
    }))
}

fn decode_message(
    project: ProjectId,
    conversation: ConversationId,
    r: MessageRow,
) -> StoreResult<Message> {
    let (id, kind, sender_id, sender_name, text, metadata, client_msg_id, created_at, seq) = r;
    let kind: ActorKind = kind
        .as_deref()
        .and_then(|k| k.parse().ok())
        .ok_or_else(|| corrupt("message sender kind"))?;
    Ok(Message {
        id: MessageId::from_uuid(id),
        // Absent only on a row written by a schema-1 process after the migration.
        seq: seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
        project_id: project,
        conversation_id: conversation,
        sender: Actor {
            kind,
            id: sender_id.ok_or_else(|| corrupt("message sender id"))?,
            name: sender_name,
        },
        text: text.unwrap_or_default(),
        metadata: parse_json(metadata.as_deref())?,
        client_msg_id,
        created_at: from_ts(created_at.ok_or_else(|| corrupt("message created_at"))?)?,
    })
}

fn decode_end_user(project: ProjectId, r: EndUserRow) -> StoreResult<Option<EndUser>> {
    let (id, ident, name, email, avatar, metadata, anon, last_seen, created_at, updated_at) = r;
    let Some(created_at) = created_at else {
        return Ok(None);
    };
    let created_at = from_ts(created_at)?;
    Ok(Some(EndUser {
        id: EndUserId::from_uuid(id),
        project_id: project,
        is_anonymous: anon.unwrap_or(ident.is_none()),
        user_identifier: ident,
        name,
        email,
        avatar,
        metadata: parse_json(metadata.as_deref())?,
        last_seen_at: from_opt_ts(last_seen)?,
        created_at,
        updated_at: from_opt_ts(updated_at)?.unwrap_or(created_at),
    }))
}

fn decode_project(r: ProjectRow) -> StoreResult<Option<Project>> {
    let (id, name, owner, plan, status, settings, created_at, updated_at) = r;
    let (Some(name), Some(owner), Some(plan), Some(status), Some(created_at)) =
        (name, owner, plan, status, created_at)
    else {
        return Ok(None);
    };
    let created_at = from_ts(created_at)?;
    Ok(Some(Project {
        id: ProjectId::from_uuid(id),
        name,
        owner_id: AdminUserId::from_uuid(owner),
        plan: parse_enum(&plan, "plan")?,
        status: parse_enum(&status, "project status")?,
        settings: parse_json(settings.as_deref())?,
        created_at,
        updated_at: from_opt_ts(updated_at)?.unwrap_or(created_at),
    }))
}

fn decode_api_key(r: ApiKeyRow) -> StoreResult<Option<ApiKeyRecord>> {
    let (id, project, name, kind, prefix, scopes, hash, last_used, expires, revoked, created) = r;
    let (Some(project), Some(kind), Some(created)) = (project, kind, created) else {
        return Ok(None);
    };
    let secret_hash: [u8; 32] = hash
        .unwrap_or_default()
        .try_into()
        .map_err(|_| corrupt("api key hash"))?;
    let scopes = scopes
        .unwrap_or_default()
        .iter()
        .map(|s| s.parse().map_err(|_| corrupt("api key scope")))
        .collect::<StoreResult<_>>()?;
    Ok(Some(ApiKeyRecord {
        id: ApiKeyId::from_uuid(id),
        project_id: ProjectId::from_uuid(project),
        name: name.unwrap_or_default(),
        kind: parse_enum(&kind, "api key kind")?,
        prefix: prefix.unwrap_or_default(),
        scopes,
        secret_hash,
        last_used_at: from_opt_ts(last_used)?,
        expires_at: from_opt_ts(expires)?,
        revoked_at: from_opt_ts(revoked)?,
        created_at: from_ts(created)?,
    }))
}

fn decode_read_state(
    conversation: ConversationId,
    r: ReadStateRow,
) -> StoreResult<Option<ReadState>> {
    let (kind, reader_id, name, last, updated_at) = r;
    let (Some(kind), Some(reader_id), Some(last), Some(updated_at)) =
        (kind, reader_id, last, updated_at)
    else {
        return Ok(None);
    };
    Ok(Some(ReadState {
        conversation_id: conversation,
        reader: Actor {
            kind: kind.parse().map_err(|_| corrupt("reader kind"))?,
            id: reader_id,
            name,
        },
        last_read_message_id: MessageId::from_uuid(last),
        updated_at: from_ts(updated_at)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_id_order() {
        let width = Duration::from_millis(10);
        let a = MessageId::following(None);
        let b = MessageId::from_uuid(Uuid::from_u128(a.as_uuid().as_u128() + (1_000u128 << 80)));
        assert!(bucket_of(a.as_uuid(), width) < bucket_of(b.as_uuid(), width));
        assert_eq!(bucket_of(&Uuid::nil(), width), 0);
    }

    #[test]
    fn keyspace_names_are_checked() {
        assert!(valid_keyspace("lc_test_1"));
        assert!(!valid_keyspace("1abc"));
        assert!(!valid_keyspace("a-b"));
        assert!(!valid_keyspace("a; DROP"));
    }

    #[test]
    fn head_timestamps_increase_with_ids() {
        let a = MessageId::following(None);
        let b = MessageId::following(Some(a));
        assert!(head_timestamp(a.as_uuid()) <= head_timestamp(b.as_uuid()));
        assert_eq!(b.as_uuid().get_version_num(), 7);
    }
}
