//! The CQL schema: numbered migrations, applied once each and recorded in `schema_migrations`.
//!
//! Every step is idempotent (`IF NOT EXISTS`, columns added only when missing, data steps
//! that skip what is done), so a migration interrupted half-way is simply run again; its
//! version is recorded only once all of it has run. Tables are named in `mod.rs`'s module
//! docs, which explain each key.

/// One migration: its number, a name, its statements in order, columns to add, and a data
/// step run after them.
pub(crate) struct Migration {
    pub(crate) version: i32,
    pub(crate) name: &'static str,
    pub(crate) statements: &'static [&'static str],
    /// `(table, column, type)`: added unless the column exists (`ALTER TABLE … ADD` is not
    /// idempotent in CQL).
    pub(crate) add_columns: &'static [(&'static str, &'static str, &'static str)],
    pub(crate) data: Option<DataStep>,
}

/// Data migrations, in Rust, after a migration's DDL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataStep {
    /// Schema 2: number every conversation's messages and give it a sequencer head.
    NumberMessages,
    /// Schema 4: list every existing conversation in `conversations_by_assignee` (as
    /// unassigned, unless a column says otherwise).
    IndexAssignees,
    /// Schema 10: fill `analytics_active_days` from `analytics_active` (one pass over it).
    ActiveDays,
    /// Schema 11: every project's owner becomes its `owner` member.
    BackfillOwners,
}

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i32 = 14;

pub(crate) const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (\
     version int PRIMARY KEY, name text, applied_at timestamp)";

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        add_columns: &[],
        data: None,
        statements: &[
            // --- global (admin-plane) tables: keyed by their own ids, not by a project -----------
            "CREATE TABLE IF NOT EXISTS admin_users (\
            id uuid PRIMARY KEY, email text, password_hash text, created_at timestamp)",
            // Lower-cased email -> id; claimed with a lightweight transaction (unique emails).
            "CREATE TABLE IF NOT EXISTS admin_users_by_email (\
            email_key text PRIMARY KEY, id uuid)",
            "CREATE TABLE IF NOT EXISTS projects (\
            id uuid PRIMARY KEY, name text, owner_id uuid, plan text, status text, \
            settings text, created_at timestamp, updated_at timestamp)",
            "CREATE TABLE IF NOT EXISTS projects_by_owner (\
            owner_id uuid, id uuid, PRIMARY KEY ((owner_id), id)) \
            WITH CLUSTERING ORDER BY (id DESC)",
            // The time buckets that hold projects (one row per bucket: small), for listing all.
            "CREATE TABLE IF NOT EXISTS project_buckets (\
            scope int, bucket bigint, PRIMARY KEY ((scope), bucket)) \
            WITH CLUSTERING ORDER BY (bucket DESC)",
            "CREATE TABLE IF NOT EXISTS projects_by_bucket (\
            bucket bigint, id uuid, PRIMARY KEY ((bucket), id)) \
            WITH CLUSTERING ORDER BY (id DESC)",
            // A key is found by the id inside the presented key, whatever its project.
            "CREATE TABLE IF NOT EXISTS api_keys (\
            id uuid PRIMARY KEY, project_id uuid, name text, kind text, prefix text, \
            scopes set<text>, secret_hash blob, last_used_at timestamp, expires_at timestamp, \
            revoked_at timestamp, created_at timestamp)",
            // --- project tables: every partition key starts with project_id ----------------------
            "CREATE TABLE IF NOT EXISTS api_keys_by_project (\
            project_id uuid, created_at timestamp, id uuid, \
            PRIMARY KEY ((project_id), created_at, id)) \
            WITH CLUSTERING ORDER BY (created_at DESC, id DESC)",
            "CREATE TABLE IF NOT EXISTS end_users (\
            project_id uuid, id uuid, user_identifier text, name text, email text, avatar text, \
            metadata text, is_anonymous boolean, last_seen_at timestamp, created_at timestamp, \
            updated_at timestamp, PRIMARY KEY ((project_id, id)))",
            // Identifier -> id; claimed with a lightweight transaction (one user per identifier).
            "CREATE TABLE IF NOT EXISTS end_users_by_identifier (\
            project_id uuid, user_identifier text, id uuid, \
            PRIMARY KEY ((project_id, user_identifier)))",
            // Enumeration of a project's users (for delete_project), bucketed by id time.
            "CREATE TABLE IF NOT EXISTS end_user_buckets (\
            project_id uuid, bucket bigint, PRIMARY KEY ((project_id), bucket))",
            "CREATE TABLE IF NOT EXISTS end_users_by_project (\
            project_id uuid, bucket bigint, id uuid, user_identifier text, \
            PRIMARY KEY ((project_id, bucket), id))",
            "CREATE TABLE IF NOT EXISTS conversations (\
            project_id uuid, id uuid, subject text, status text, members set<uuid>, \
            metadata text, created_at timestamp, updated_at timestamp, last_message_id uuid, \
            PRIMARY KEY ((project_id, id)))",
            "CREATE TABLE IF NOT EXISTS conversation_buckets (\
            project_id uuid, bucket bigint, PRIMARY KEY ((project_id), bucket)) \
            WITH CLUSTERING ORDER BY (bucket DESC)",
            "CREATE TABLE IF NOT EXISTS conversations_by_project (\
            project_id uuid, bucket bigint, id uuid, PRIMARY KEY ((project_id, bucket), id)) \
            WITH CLUSTERING ORDER BY (id DESC)",
            "CREATE TABLE IF NOT EXISTS conversations_by_status (\
            project_id uuid, status text, bucket bigint, id uuid, \
            PRIMARY KEY ((project_id, status, bucket), id)) \
            WITH CLUSTERING ORDER BY (id DESC)",
            "CREATE TABLE IF NOT EXISTS conversations_by_member (\
            project_id uuid, member_id uuid, conversation_id uuid, status text, \
            PRIMARY KEY ((project_id, member_id), conversation_id)) \
            WITH CLUSTERING ORDER BY (conversation_id DESC)",
            "CREATE TABLE IF NOT EXISTS message_buckets (\
            project_id uuid, conversation_id uuid, bucket bigint, \
            PRIMARY KEY ((project_id, conversation_id), bucket)) \
            WITH CLUSTERING ORDER BY (bucket DESC)",
            "CREATE TABLE IF NOT EXISTS messages (\
            project_id uuid, conversation_id uuid, bucket bigint, id uuid, sender_kind text, \
            sender_id text, sender_name text, text text, metadata text, client_msg_id text, \
            created_at timestamp, PRIMARY KEY ((project_id, conversation_id, bucket), id)) \
            WITH CLUSTERING ORDER BY (id ASC)",
            // Idempotency index: (conversation, client_msg_id) -> message id. Rows expire after
            // the idempotency window (30 days), which bounds the partition.
            "CREATE TABLE IF NOT EXISTS message_client_ids (\
            project_id uuid, conversation_id uuid, client_msg_id text, message_id uuid, \
            PRIMARY KEY ((project_id, conversation_id), client_msg_id)) \
            WITH default_time_to_live = 2592000",
            "CREATE TABLE IF NOT EXISTS read_states (\
            project_id uuid, conversation_id uuid, member_key text, reader_kind text, \
            reader_id text, reader_name text, last_read_message_id uuid, updated_at timestamp, \
            PRIMARY KEY ((project_id, conversation_id), member_key))",
        ],
    },
    Migration {
        version: 2,
        name: "message sequence numbers",
        statements: &[
            // The commit point of every append (see `sequencer`): the static head, and rows
            // `c:<client_msg_id>` and `s:<seq>` that expire after the idempotency window.
            // Written by lightweight transactions only.
            "CREATE TABLE IF NOT EXISTS conversation_sequencer (\
                project_id uuid, conversation_id uuid, key text, \
                head_seq bigint static, head_id uuid static, \
                seq bigint, message_id uuid, sender_kind text, sender_id text, sender_name text, \
                text text, metadata text, client_msg_id text, created_at timestamp, \
                PRIMARY KEY ((project_id, conversation_id), key))",
        ],
        add_columns: &[("messages", "seq", "bigint")],
        data: Some(DataStep::NumberMessages),
    },
    Migration {
        version: 3,
        name: "event outbox",
        statements: &[
            // Every change's domain event, written in the change's batch (see `outbox`).
            // Partition = 10 s of writes x one of 4 shards; rows live 3 days.
            "CREATE TABLE IF NOT EXISTS event_outbox (\
                bucket bigint, shard int, id uuid, project_id uuid, kind text, body blob, \
                written_at timestamp, published boolean, \
                PRIMARY KEY ((bucket, shard), id)) \
                WITH default_time_to_live = 259200",
            // The sweeper's lease (LWT only; the holder's row expires unless renewed).
            "CREATE TABLE IF NOT EXISTS event_outbox_lease (name text PRIMARY KEY, holder uuid)",
            // The sweeper's watermark: every bucket below it is fully published.
            "CREATE TABLE IF NOT EXISTS event_outbox_state (\
                name text PRIMARY KEY, watermark bigint)",
        ],
        add_columns: &[],
        data: None,
    },
    Migration {
        version: 4,
        name: "conversation assignee",
        statements: &[
            // The assignee filter: `assignee` is the agent identifier, or `!none` for
            // unassigned (not a valid identifier); `status` is `open`, `closed`, or `any`
            // (every conversation has an `any` row and a row under its status, so a listing
            // with or without a status filter walks one partition per bucket). Partitions are
            // as wide as a listing bucket, like `conversations_by_status`.
            "CREATE TABLE IF NOT EXISTS conversations_by_assignee (\
                project_id uuid, assignee text, status text, bucket bigint, id uuid, \
                PRIMARY KEY ((project_id, assignee, status, bucket), id)) \
                WITH CLUSTERING ORDER BY (id DESC)",
        ],
        // `conversations_by_member.assignee` lets the member listing filter by assignee in
        // the member's partition, as it does by status; null there means unassigned, which
        // is true of every row written before this step.
        add_columns: &[
            ("conversations", "assignee", "text"),
            ("conversations_by_member", "assignee", "text"),
        ],
        data: Some(DataStep::IndexAssignees),
    },
    Migration {
        version: 5,
        name: "plans and usage",
        statements: &[
            // Plans as data; a null limit is unlimited (see `usage`).
            "CREATE TABLE IF NOT EXISTS plans (\
                id text PRIMARY KEY, name text, monthly_active_users bigint, \
                messages_per_month bigint, projects_per_owner bigint, features set<text>, \
                updated_at timestamp)",
            // The seed's four plans; IF NOT EXISTS keeps an admin's edits on a re-run.
            "INSERT INTO plans (id, name, monthly_active_users, messages_per_month, \
                projects_per_owner, features, updated_at) \
                VALUES ('free', 'Free', 100, 1000, 1, {}, toTimestamp(now())) IF NOT EXISTS",
            "INSERT INTO plans (id, name, monthly_active_users, messages_per_month, \
                projects_per_owner, features, updated_at) \
                VALUES ('starter', 'Starter', 1000, 10000, 3, {}, toTimestamp(now())) \
                IF NOT EXISTS",
            "INSERT INTO plans (id, name, monthly_active_users, messages_per_month, \
                projects_per_owner, features, updated_at) \
                VALUES ('pro', 'Pro', 10000, 100000, 10, {'custom_branding'}, \
                toTimestamp(now())) IF NOT EXISTS",
            "INSERT INTO plans (id, name, features, updated_at) \
                VALUES ('enterprise', 'Enterprise', {'custom_branding'}, toTimestamp(now())) \
                IF NOT EXISTS",
            // One row per counted thing (message or conversation id) of a project's month,
            // written in the change's logged batch: rewriting it is a no-op.
            "CREATE TABLE IF NOT EXISTS usage_items (\
                project_id uuid, period text, kind text, shard bigint, id uuid, \
                PRIMARY KEY ((project_id, period, kind, shard), id))",
            // One row per end user active in a project's month.
            "CREATE TABLE IF NOT EXISTS usage_active_users (\
                project_id uuid, period text, shard bigint, end_user_id uuid, \
                PRIMARY KEY ((project_id, period, shard), end_user_id))",
            // The months of a project with usage (history, deletion): 12 rows a year.
            "CREATE TABLE IF NOT EXISTS usage_periods (\
                project_id uuid, period text, PRIMARY KEY ((project_id), period)) \
                WITH CLUSTERING ORDER BY (period DESC)",
        ],
        add_columns: &[],
        data: None,
    },
    Migration {
        version: 6,
        name: "usage warnings",
        statements: &[
            // One row per warning of a project's month (`messages_per_month:80:1000`): who
            // emits it is decided by IF NOT EXISTS; the row keeps the event so that another
            // process can finish emitting it with the same id (see `usage`).
            "CREATE TABLE IF NOT EXISTS usage_alerts (\
                project_id uuid, period text, alert text, event text, emitted boolean, \
                PRIMARY KEY ((project_id, period), alert))",
        ],
        add_columns: &[],
        data: None,
    },
    Migration {
        version: 7,
        name: "usage storage",
        statements: &[],
        // A message's `usage_items` row holds its content's bytes (same value whoever writes
        // the row); the month's storage is `SUM(bytes)`. Rows written before count 0 bytes.
        add_columns: &[("usage_items", "bytes", "bigint")],
        data: None,
    },
    Migration {
        version: 8,
        name: "analytics rollups",
        statements: &[
            // One row per message, keyed by what it counts, in the message's logged batch
            // (see `analytics`): the live count of an hour not sealed yet. Partition: one
            // project's messages of one UTC hour (`hour` = its start, ms).
            "CREATE TABLE IF NOT EXISTS analytics_messages (\
                project_id uuid, hour bigint, sender_kind text, id uuid, \
                PRIMARY KEY ((project_id, hour), sender_kind, id))",
            // Sealed hours: the counts of an hour that is over, written once by a reader
            // (idempotent overwrite), deleted again by a late write into the hour.
            // Partition: one project's day (24 rows).
            "CREATE TABLE IF NOT EXISTS analytics_hours (\
                project_id uuid, day bigint, hour bigint, end_user bigint, agent bigint, \
                bot bigint, system bigint, PRIMARY KEY ((project_id, day), hour))",
            // The conversations with a message in an hour (one row per conversation and
            // hour, never per message), in the message's batch.
            "CREATE TABLE IF NOT EXISTS analytics_active (\
                project_id uuid, hour bigint, conversation_id uuid, \
                PRIMARY KEY ((project_id, hour), conversation_id))",
            // One row per conversation, in the partition of the day of its id's time (the
            // service makes the id when it creates it): creation, first end-user message,
            // first answer after it, close. The "first" columns are written with
            // `USING TIMESTAMP` decreasing with the message time, so the earliest wins.
            "CREATE TABLE IF NOT EXISTS analytics_conversations (\
                project_id uuid, day bigint, conversation_id uuid, created_at timestamp, \
                first_user_message_at timestamp, first_user_message_seq bigint, \
                first_response_at timestamp, closed_at timestamp, PRIMARY KEY ((project_id, day), conversation_id))",
            // The days with analytics rows of a project (deletion): 365 rows a year.
            "CREATE TABLE IF NOT EXISTS analytics_days (\
                project_id uuid, day bigint, PRIMARY KEY ((project_id), day))",
        ],
        add_columns: &[],
        data: None,
    },
    Migration {
        version: 9,
        name: "edge usage",
        statements: &[
            // API requests and peak realtime connections, metered by the gateways: one row
            // per project, UTC hour (its start, ms) and gateway process, holding that
            // process's running values (see `usage::write_edge_usage`). Partition: one
            // project's month, at most 744 hours × the gateway processes that served it.
            "CREATE TABLE IF NOT EXISTS usage_edge (\
                project_id uuid, period text, hour bigint, process_id uuid, requests bigint, \
                peak_connections bigint, PRIMARY KEY ((project_id, period), hour, process_id))",
        ],
        add_columns: &[],
        data: None,
    },
    Migration {
        version: 10,
        name: "analytics active conversations by day",
        statements: &[
            // The conversations with a message in a UTC day (`day` = its start, ms), in the
            // message's batch next to its `analytics_active` hour row: a range's distinct
            // active conversations read whole days from here and only the hours at its
            // edges from `analytics_active` (31 + up to 46 partitions for 30 days by the
            // hour, instead of 721). Partition: one project's day, one row per conversation.
            "CREATE TABLE IF NOT EXISTS analytics_active_days (\
                project_id uuid, day bigint, conversation_id uuid, \
                PRIMARY KEY ((project_id, day), conversation_id))",
        ],
        add_columns: &[],
        data: Some(DataStep::ActiveDays),
    },
    Migration {
        version: 11,
        name: "project members and invites",
        statements: &[
            // The members of a project, one partition, written only with lightweight
            // transactions (the last-owner rule is a conditional batch on it; see `team`).
            "CREATE TABLE IF NOT EXISTS project_members (\
                project_id uuid, admin_id uuid, email text, name text, role text, \
                created_at timestamp, PRIMARY KEY ((project_id), admin_id))",
            // An admin's projects ("my projects"), newest first; the member row decides.
            "CREATE TABLE IF NOT EXISTS member_projects (\
                admin_id uuid, project_id uuid, role text, \
                PRIMARY KEY ((admin_id), project_id)) WITH CLUSTERING ORDER BY (project_id DESC)",
            // Invitations, newest first; only the SHA-256 of the token is kept.
            "CREATE TABLE IF NOT EXISTS project_invites (\
                project_id uuid, id uuid, email text, role text, invited_by uuid, \
                token_hash blob, created_at timestamp, expires_at timestamp, \
                accepted_at timestamp, PRIMARY KEY ((project_id), id)) \
                WITH CLUSTERING ORDER BY (id DESC)",
        ],
        add_columns: &[],
        data: Some(DataStep::BackfillOwners),
    },
    Migration {
        version: 12,
        name: "conversation creation keys",
        statements: &[
            // A conversation creation's idempotency key (`caller` names the principal):
            // claimed with a lightweight transaction before the conversation is written,
            // with the conversation to write (`conversation`, JSON), so the same key creates
            // one conversation across processes, and a claim whose conversation is missing
            // (its creator died, or is still writing) is finished by the next call with the
            // key, writing the same rows. Rows expire after 7 days (`CREATION_KEY_TTL_SECS`),
            // also after their project is deleted (they cannot be enumerated by project).
            "CREATE TABLE IF NOT EXISTS conversation_keys (\
                project_id uuid, caller text, key text, conversation_id uuid, conversation text, \
                PRIMARY KEY ((project_id, caller, key))) \
                WITH default_time_to_live = 604800",
        ],
        add_columns: &[],
        data: None,
    },
    Migration {
        version: 13,
        name: "conversation search",
        statements: &[
            // One row per conversation and search key (`w:<word>`, `p:<prefix>`; see
            // `larachat_core::search`), in the batch of the change it comes from. Partition:
            // the conversations of one listing bucket (30 days by default) with that word.
            // Conversations stored before this version are not indexed.
            "CREATE TABLE IF NOT EXISTS search_terms (\
                project_id uuid, bucket bigint, term text, conversation_id uuid, \
                PRIMARY KEY ((project_id, bucket, term), conversation_id)) \
                WITH CLUSTERING ORDER BY (conversation_id DESC)",
            // A conversation's keys, to delete its rows above with it.
            "CREATE TABLE IF NOT EXISTS search_conversation_terms (\
                project_id uuid, conversation_id uuid, term text, \
                PRIMARY KEY ((project_id, conversation_id), term))",
        ],
        add_columns: &[],
        data: None,
    },
    Migration {
        version: 14,
        name: "backfills",
        statements: &[
            // One row per one-off backfill run in the background after an upgrade: where it
            // has got to and when it finished (see `search`, the search index backfill of the
            // data stored before schema 13; `walked`: the partition token walked up to).
            // No row: not started.
            "CREATE TABLE IF NOT EXISTS backfills (\
                name text PRIMARY KEY, phase int, walked bigint, project_id uuid, \
                conversation_id uuid, bucket bigint, after uuid, done_at timestamp)",
        ],
        add_columns: &[],
        data: None,
    },
];
