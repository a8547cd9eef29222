//! # larachat-store
//!
//! The system of record. This crate owns the storage traits every backend implements and the
//! backends themselves:
//! - [`Store`]: the one object-safe trait (held as `Arc<dyn Store>`), covering admin users,
//!   projects, API keys, end users, conversations, messages and read state;
//! - [`sqlite`]: [`SqliteStore`], the embedded default (rusqlite, WAL, one writer thread with
//!   group commit, a pool of parallel read-only connections, embedded migrations tracked by
//!   `PRAGMA user_version`); its submodules are private: `writer` (the batch loop), `queries`
//!   (the SQL), `codec` (rows and errors), `migrations` (+ `migrations/*.sql`);
//! - `scylla` (cargo feature `scylla`, off by default): `ScyllaStore`, the distributed backend
//!   on ScyllaDB / Apache Cassandra (bucketed partitions keyed by project, numbered CQL
//!   migrations); its submodules are private: `schema` (the migrations), `codec` (rows, values
//!   and driver errors), `sequencer` (the lightweight transaction that commits a message's
//!   `seq` and id and fences its `client_msg_id`; hole repair on read). Cargo feature
//!   `fault-injection` (tests only) adds hooks that stop an append where a crash would;
//! - [`contract`]: the generic contract suite that every backend must pass (also with two
//!   store handles on the same data, as two processes);
//!   `tests/sqlite_contract.rs` runs it on SQLite, `tests/scylla_contract.rs` on Cassandra
//!   (`deploy/cassandra.sh start`).
//!
//! - [`event_contract`]: the contract suite of the durable event log (every change logs exactly
//!   its domain events, redelivery, consumer groups); `tests/sqlite_events.rs` runs it on the
//!   SQLite outbox, with the restart checks only SQLite has.
//!
//! Conventions every backend follows: timestamps are kept to the millisecond (build them with
//! `model::now()`); every time a store writes itself (ids, `created_at`, `updated_at`, usage
//! periods, analytics buckets, warnings) comes from its configured [`clock`] (the system clock
//! unless a test injects a [`ManualClock`]); listing limits are clamped to `1..=1000`; ids order listings (UUIDv7, so id
//! order is creation order); a conversation's messages carry `seq` 1, 2, 3, … in id order,
//! and no listing ever skips one (a backend that can see a claimed-but-unwritten message
//! repairs it before answering).
//!
//! Tenancy: every method that touches tenant data takes the `ProjectId` first and only ever
//! returns rows of that project; a row of another project is indistinguishable from a missing
//! one (`None` / `false`).
//!
//! Must not depend on the broker, gateway or control plane.

pub mod clock;
pub mod contract;
pub mod event_contract;
#[cfg(feature = "scylla")]
pub mod scylla;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use larachat_core::analytics::{AnalyticsData, AnalyticsRange};
use larachat_core::id::{
    AdminUserId, ApiKeyId, ConversationId, EndUserId, InviteId, MessageId, ProjectId,
};
use larachat_core::model::{
    Actor, AdminUser, ApiKeyRecord, Conversation, ConversationPatch, ConversationStatus, EndUser,
    EndUserPatch, Message, NewMessage, Project, ProjectPatch, ReadState,
};
use larachat_core::plan::{EdgeUsage, Period, Plan, PlanId, QuotaExceeded, UsageCounts};
use larachat_core::search::SearchQuery;
use larachat_core::team::{Invite, Member, ProjectRole};

pub use clock::{Clock, ManualClock, StoreClock, SystemClock};
#[cfg(feature = "scylla")]
pub use scylla::{ScyllaConfig, ScyllaStore};
pub use sqlite::{SqliteConfig, SqliteStats, SqliteStore};

/// Failures of a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was broken (admin email, end-user identifier, key id).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The operation refers to a row that must exist but does not (e.g. a message for a
    /// missing conversation). Handlers check existence first; this is a safety net.
    #[error("not found: {0}")]
    NotFound(&'static str),
    /// The backend is unreachable or overloaded; the caller may retry.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else (corruption, bug). Logged; clients see `internal`.
    #[error("store error: {0}")]
    Internal(String),
    /// The change would go past a limit of the project's plan; nothing was written.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(QuotaExceeded),
}

impl From<StoreError> for larachat_core::ApiError {
    fn from(e: StoreError) -> Self {
        use larachat_core::ApiError;
        match e {
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Unavailable(_) => ApiError::unavailable(),
            StoreError::Internal(_) => ApiError::internal(),
            StoreError::QuotaExceeded(q) => q.into(),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A page of results ordered by id, with the cursor to continue from.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Whether more items exist beyond this page in the listing direction.
    pub has_more: bool,
}

/// What a run of the search index backfill did (see the README, "Search": conversations and
/// messages stored before the search index existed get their index rows once, in the
/// background, after an upgrade).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackfillReport {
    /// Conversations whose subject and members' profiles were (re)indexed by this run.
    pub conversations: u64,
    /// Messages (re)indexed by this run.
    pub messages: u64,
    /// Batches written by this run.
    pub batches: u64,
    /// The backfill had already finished before this run (it wrote nothing).
    pub already_done: bool,
}

impl BackfillReport {
    /// Logs the run after a batch: when it finished, and every 100 batches on the way (both
    /// backends report the same way).
    pub(crate) fn log_batch(&self, done: bool) {
        if done {
            tracing::info!(
                conversations = self.conversations,
                messages = self.messages,
                batches = self.batches,
                "search backfill finished"
            );
        } else if self.batches % 100 == 0 {
            tracing::info!(
                conversations = self.conversations,
                messages = self.messages,
                batches = self.batches,
                "search backfill in progress"
            );
        }
    }
}

/// Which slice of a conversation's messages to read. Results are always in ascending id order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageRange {
    /// The newest `limit` messages.
    Latest,
    /// The `limit` messages immediately before this id (exclusive) — "load older".
    Before(MessageId),
    /// The `limit` messages immediately after this id (exclusive) — resume, "load newer".
    After(MessageId),
}

/// Filters for listing conversations. Listing order is newest conversation first (id desc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversationQuery {
    pub status: Option<ConversationStatus>,
    /// Only conversations this end user is a member of.
    pub member: Option<EndUserId>,
    /// Only conversations assigned to this agent, or only unassigned ones.
    pub assignee: Option<AssigneeFilter>,
    /// Continue after this conversation id (exclusive) in listing order.
    pub cursor: Option<ConversationId>,
    pub limit: u32,
}

/// Which conversations a listing keeps by assignee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssigneeFilter {
    /// Those without an assignee.
    Unassigned,
    /// Those assigned to this agent identifier.
    Agent(String),
}

impl AssigneeFilter {
    /// Whether `assignee` (a conversation's) passes the filter.
    pub fn matches(&self, assignee: Option<&str>) -> bool {
        match self {
            Self::Unassigned => assignee.is_none(),
            Self::Agent(a) => assignee == Some(a.as_str()),
        }
    }
}

/// A new end user, or the identification of an existing one by `user_identifier`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEndUser {
    pub user_identifier: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub avatar: Option<String>,
    pub metadata: serde_json::Value,
}

/// The idempotency key of a conversation creation: the caller's own key (`key`), scoped to
/// who asks (`caller`: a stable name of the principal, such as `key:<api key id>` or
/// `user:<end user id>`) within the conversation's project. The same key from another caller,
/// or in another project, is another key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CreationKey {
    pub caller: String,
    pub key: String,
}

/// How long a backend remembers a [`CreationKey`] at least: 7 days (CQL rows expire then;
/// SQLite keeps them with the project).
pub const CREATION_KEY_TTL_SECS: i32 = 7 * 24 * 3600;

/// Result of an idempotent append.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    pub message: Message,
    /// `false` when `client_msg_id` had been used before in this conversation and `message` is
    /// the original.
    pub created: bool,
}

/// The storage contract. All methods are cancel-safe from the caller's point of view: a write
/// whose future is dropped either happened completely or not at all.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- admin users -------------------------------------------------------------------------

    /// Creates an admin user. `Conflict` if the email (case-insensitive) exists. The email is
    /// returned as given; only comparisons ignore case.
    async fn create_admin_user(&self, user: &AdminUser) -> StoreResult<()>;
    /// Looks an admin up by email, ignoring case.
    async fn admin_user_by_email(&self, email: &str) -> StoreResult<Option<AdminUser>>;
    async fn admin_user(&self, id: AdminUserId) -> StoreResult<Option<AdminUser>>;
    async fn count_admin_users(&self) -> StoreResult<u64>;

    // --- projects ----------------------------------------------------------------------------

    /// Creates a project. `Conflict` if the id exists. Its owner (`owner_id`), when that admin
    /// exists, becomes its `owner` member in the same change (named by their email).
    async fn create_project(&self, project: &Project) -> StoreResult<()>;
    async fn project(&self, id: ProjectId) -> StoreResult<Option<Project>>;
    /// Projects owned by `owner` (all projects when `None`), newest first (id descending;
    /// project ids are UUIDv7), after `cursor` (exclusive). `has_more` is exact.
    async fn list_projects(
        &self,
        owner: Option<AdminUserId>,
        cursor: Option<ProjectId>,
        limit: u32,
    ) -> StoreResult<Page<Project>>;
    /// Applies the patch and bumps `updated_at`. `None` if the project does not exist.
    async fn update_project(
        &self,
        id: ProjectId,
        patch: &ProjectPatch,
    ) -> StoreResult<Option<Project>>;
    /// Deletes the project and everything in it (keys, end users, conversations, members,
    /// messages, read states, team members and invites), atomically. `false` if it did not exist.
    async fn delete_project(&self, id: ProjectId) -> StoreResult<bool>;

    // --- team members and invites ---------------------------------------------------------

    /// `admin`'s membership of `project`.
    async fn member(&self, project: ProjectId, admin: AdminUserId) -> StoreResult<Option<Member>>;
    /// The project's members, oldest membership first (then by admin id).
    async fn list_members(&self, project: ProjectId) -> StoreResult<Vec<Member>>;
    /// Adds a member. `Conflict` if the admin is a member already (nothing changes).
    async fn add_member(&self, member: &Member) -> StoreResult<()>;
    /// Changes a member's role. `None` if not a member. `Conflict` (and no change) if it would
    /// leave the project without an owner; atomic with concurrent changes of other members
    /// (two owners demoting each other: one wins, the other gets `Conflict`).
    async fn set_member_role(
        &self,
        project: ProjectId,
        admin: AdminUserId,
        role: ProjectRole,
    ) -> StoreResult<Option<Member>>;
    /// Removes a member. `false` if not a member; `Conflict` (and no change) for the last
    /// owner, with the same atomicity as [`Store::set_member_role`].
    async fn remove_member(&self, project: ProjectId, admin: AdminUserId) -> StoreResult<bool>;
    /// The projects `admin` is a member of, with its role, newest project first (id
    /// descending), after `cursor` (exclusive). `has_more` is exact.
    async fn member_projects(
        &self,
        admin: AdminUserId,
        cursor: Option<ProjectId>,
        limit: u32,
    ) -> StoreResult<Page<(Project, ProjectRole)>>;

    /// Stores an invitation. `Conflict` if the id exists.
    async fn create_invite(&self, invite: &Invite) -> StoreResult<()>;
    async fn invite(&self, project: ProjectId, id: InviteId) -> StoreResult<Option<Invite>>;
    /// The project's invitations, used and expired ones included, newest first.
    async fn list_invites(&self, project: ProjectId) -> StoreResult<Vec<Invite>>;
    /// Deletes an invitation (used or not). `false` if unknown in the project.
    async fn delete_invite(&self, project: ProjectId, id: InviteId) -> StoreResult<bool>;
    /// Uses the invitation: marks it accepted at `at` if its token hash is `token_hash`, it was
    /// not used and it has not expired at `at`. Returns it (as accepted), or `None` for any
    /// other case. Atomic: of concurrent claims of one invite at most one gets `Some`.
    async fn claim_invite(
        &self,
        project: ProjectId,
        id: InviteId,
        token_hash: &[u8; 32],
        at: DateTime<Utc>,
    ) -> StoreResult<Option<Invite>>;

    // --- API keys ----------------------------------------------------------------------------

    /// Stores a key. `Conflict` if the id exists.
    async fn create_api_key(&self, key: &ApiKeyRecord) -> StoreResult<()>;
    /// A key by id, whatever its project (the id comes from inside the presented key).
    async fn api_key(&self, id: ApiKeyId) -> StoreResult<Option<ApiKeyRecord>>;
    /// Keys of a project, revoked ones included, newest first.
    async fn list_api_keys(&self, project: ProjectId) -> StoreResult<Vec<ApiKeyRecord>>;
    /// Marks a key revoked at `at` (idempotent: keeps the first revocation time). Returns the
    /// updated key, `None` if unknown.
    async fn revoke_api_key(
        &self,
        id: ApiKeyId,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<ApiKeyRecord>>;
    /// Records use of a key (best effort, may be coalesced). `last_used_at` never moves
    /// backwards; an unknown key is not an error.
    async fn touch_api_key(&self, id: ApiKeyId, at: DateTime<Utc>) -> StoreResult<()>;

    // --- end users ---------------------------------------------------------------------------

    /// Creates an end user, or — when `user_identifier` is set and already known in the project
    /// — updates the given profile fields of that user. Returns the user and whether it was
    /// created. Identification is atomic: two concurrent calls with the same identifier yield
    /// one user.
    ///
    /// On identification, `name`, `email` and `avatar` are overwritten when `Some`, and
    /// `metadata` is replaced when it is not an empty object (or null). Without an identifier a
    /// new anonymous user (`is_anonymous: true`) is always created.
    async fn upsert_end_user(
        &self,
        project: ProjectId,
        user: &NewEndUser,
    ) -> StoreResult<(EndUser, bool)>;
    async fn end_user(&self, project: ProjectId, id: EndUserId) -> StoreResult<Option<EndUser>>;
    /// Applies the patch. `updated_at` moves for profile fields only, not for `last_seen_at`.
    /// `None` if unknown in the project.
    async fn update_end_user(
        &self,
        project: ProjectId,
        id: EndUserId,
        patch: &EndUserPatch,
    ) -> StoreResult<Option<EndUser>>;
    /// Deletes the end user (memberships and read markers go too; their messages stay).
    /// `false` if unknown.
    async fn delete_end_user(&self, project: ProjectId, id: EndUserId) -> StoreResult<bool>;

    // --- conversations -----------------------------------------------------------------------

    /// Creates a conversation with its members. Members must be end users of the project
    /// (`NotFound("end user")` otherwise, and nothing is created). `Conflict` if the id
    /// exists. Duplicate members are stored once; `members` read back in id order.
    async fn create_conversation(&self, conversation: &Conversation) -> StoreResult<()>;
    /// [`Store::create_conversation`], once per `key`: the first call with a key creates
    /// `conversation` and returns it as stored with `true`; every later call with the same
    /// key in the same project returns that conversation (whatever it asks for) with `false`,
    /// creating, counting and announcing nothing. A failed creation (unknown member, quota)
    /// leaves the key unused.
    async fn create_conversation_keyed(
        &self,
        conversation: &Conversation,
        key: &CreationKey,
    ) -> StoreResult<(Conversation, bool)>;
    async fn conversation(
        &self,
        project: ProjectId,
        id: ConversationId,
    ) -> StoreResult<Option<Conversation>>;
    /// Conversations of the project, newest first (id descending), filtered by status,
    /// member and assignee (any combination), after `query.cursor` (exclusive). `has_more` is
    /// exact. No filter scans the whole project: each is served by an index.
    async fn list_conversations(
        &self,
        project: ProjectId,
        query: &ConversationQuery,
    ) -> StoreResult<Page<Conversation>>;
    /// Conversations of the project matching `search` (see [`larachat_core::search`]: every
    /// query word is found in the subject, a member's name, email or external id, or a
    /// message; the last word also as a word prefix of the subject and profile fields), with
    /// the filters and paging of [`Store::list_conversations`], newest first; `has_more` is
    /// exact. Served by an index of the terms each change writes with itself: no scan of
    /// the project's conversations or messages. Words stay findable after the text they came
    /// from changed (a renamed subject is found by old and new words).
    async fn search_conversations(
        &self,
        project: ProjectId,
        search: &SearchQuery,
        query: &ConversationQuery,
    ) -> StoreResult<Page<Conversation>>;
    /// Applies the patch and bumps `updated_at`. `None` if unknown in the project;
    /// `NotFound("end user")` (and no change at all) if an added member is not an end user of
    /// the project.
    async fn update_conversation(
        &self,
        project: ProjectId,
        id: ConversationId,
        patch: &ConversationPatch,
    ) -> StoreResult<Option<Conversation>>;

    // --- messages ----------------------------------------------------------------------------

    /// Appends a message, durably, before returning. Idempotent on
    /// `(conversation, client_msg_id)`, also across processes sharing the data: a repeat
    /// returns the original with `created: false` (for at least the backend's idempotency
    /// window: forever in SQLite, 7 days in CQL). The store assigns `seq` (the conversation's
    /// previous one + 1), `id` (UUIDv7, [`MessageId::following`] the previous message's, so
    /// greater than every id already in the conversation whatever the clocks) and
    /// `created_at`, and updates the conversation's `last_message_id`.
    /// `NotFound("conversation")` if the conversation is not in the project.
    async fn append_message(&self, message: &NewMessage) -> StoreResult<Appended>;
    /// Messages of a conversation, always in ascending id (= `seq`) order; `limit` is clamped
    /// to `1..=1000`. `has_more` is exact in the direction of travel: older messages exist for
    /// `Latest` and `Before`, newer ones for `After`. An unknown conversation is an empty page.
    /// Between two returned messages, and between `After(id)` of a stored message and the
    /// first returned one, no `seq` is missing.
    async fn list_messages(
        &self,
        project: ProjectId,
        conversation: ConversationId,
        range: MessageRange,
        limit: u32,
    ) -> StoreResult<Page<Message>>;
    async fn message(
        &self,
        project: ProjectId,
        conversation: ConversationId,
        id: MessageId,
    ) -> StoreResult<Option<Message>>;

    // --- read state --------------------------------------------------------------------------

    /// Moves `reader`'s read marker forward to `message_id` (never backwards: an older id
    /// leaves the newer marker in place). Returns the resulting state: the stored one,
    /// unchanged, when it was already at or past `message_id`. Only the conversation must
    /// exist (`NotFound("conversation")`); the caller validates the message id.
    async fn mark_read(
        &self,
        project: ProjectId,
        conversation: ConversationId,
        reader: &Actor,
        message_id: MessageId,
        at: DateTime<Utc>,
    ) -> StoreResult<ReadState>;
    /// Every reader's marker in the conversation (empty for an unknown conversation).
    async fn read_states(
        &self,
        project: ProjectId,
        conversation: ConversationId,
    ) -> StoreResult<Vec<ReadState>>;

    // --- plans and usage ---------------------------------------------------------------------

    /// Every plan, ordered by id. The migrations seed the four of [`Plan::seed`].
    async fn list_plans(&self) -> StoreResult<Vec<Plan>>;
    async fn plan(&self, id: &PlanId) -> StoreResult<Option<Plan>>;
    /// Creates or replaces a plan. Limits apply to the changes that follow (in a
    /// distributed deployment within the backend's plan cache time, see `docs/usage.md`).
    async fn put_plan(&self, plan: &Plan) -> StoreResult<()>;
    /// What the project used in `period`: zeros when nothing was counted. Usage is counted
    /// by the changes themselves, exactly once per counted thing (a retried send that returns
    /// the original message counts nothing):
    /// - `messages`: messages appended;
    /// - `conversations`: conversations created;
    /// - `active_users`: distinct end users created or identified, sending a message, or
    ///   members of a conversation created in the period.
    ///
    /// The same changes enforce the project's plan limits (monthly active users, messages
    /// per month) and `create_project` the owner's project count: a change that would go past
    /// a limit fails with [`StoreError::QuotaExceeded`] and writes nothing.
    async fn usage(&self, project: ProjectId, period: Period) -> StoreResult<UsageCounts>;
    /// The periods in which the project used anything, newest first, at most `limit`
    /// (clamped to `1..=120`).
    async fn usage_history(
        &self,
        project: ProjectId,
        limit: u32,
    ) -> StoreResult<Vec<(Period, UsageCounts)>>;

    /// Records what the gateway process `process` metered at the edge ([`EdgeUsage`]: per
    /// project and UTC hour, its API requests and peak realtime connections so far). The
    /// values are the process's running totals, which never go down: the store keeps, per
    /// (project, hour, process), the newest values, so a repeated or retried write changes
    /// nothing. `usage` and `usage_history` then report `api_requests` and
    /// `peak_connections` of every process. A project that no longer exists may be skipped.
    async fn record_edge_usage(&self, process: Uuid, rows: &[EdgeUsage]) -> StoreResult<()>;

    /// A plan was changed (by another process): forget cached plan limits, if this backend
    /// caches them. The SQLite store reads them inside each write and has nothing to forget.
    fn plans_changed(&self) {}

    // --- analytics ---------------------------------------------------------------------------

    /// What analytics needs of `project` over `range`, read from rollups the changes keep
    /// themselves (never a scan of messages; see `docs/usage.md`, "Analytics"):
    /// - `hours`: messages per UTC hour of the range and sender kind (hours without messages
    ///   may be left out);
    /// - `active_conversations`: distinct conversations with a message in the range;
    /// - `conversations`: every conversation created in the range (by its `created_at`), with
    ///   its first end-user message, the first agent or bot message after that (in `seq`
    ///   order) and, if it is closed now, when it was closed;
    /// - `open`, `closed`: the project's conversations by status now.
    ///
    /// A retried send that returns the original message changes nothing.
    async fn analytics(
        &self,
        project: ProjectId,
        range: &AnalyticsRange,
    ) -> StoreResult<AnalyticsData>;

    // --- health ------------------------------------------------------------------------------

    /// Cheap round-trip used by `/ready`.
    async fn ping(&self) -> StoreResult<()>;
}
