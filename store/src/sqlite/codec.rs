//! Conversions between domain types and SQLite values, and error mapping.
//!
//! Nothing read from the database is trusted: a malformed UUID, timestamp, enum or JSON value
//! becomes a conversion error (reported as [`StoreError::Internal`]), never a panic.

use chrono::{DateTime, Utc};
use rusqlite::types::{Type, ValueRef};
use rusqlite::{ErrorCode, Row};
use uuid::Uuid;

use larachat_core::id::{ConversationId, EndUserId, MessageId, ProjectId};
use larachat_core::model::{
    Actor, ActorKind, AdminUser, ApiKeyRecord, Conversation, ConversationStatus, EndUser, KeyKind,
    Message, PlanId, Project, ProjectStatus, ReadState,
};

use crate::StoreError;

/// A value in the database that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("corrupt value: {0}")]
pub(crate) struct Corrupt(pub(crate) &'static str);

fn corrupt(idx: usize, ty: Type, what: &'static str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, ty, Box::new(Corrupt(what)))
}

/// Runs a statement without parameters (BEGIN, COMMIT, a PRAGMA…) from the connection's
/// statement cache, so it is parsed once per connection rather than on every call.
pub(crate) fn exec_cached(conn: &rusqlite::Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Maps a rusqlite error to the store's error. Uniqueness violations become `Conflict` with a
/// message naming the field (never the SQL); busy/locked become `Unavailable`; the rest is
/// logged and becomes `Internal`.
pub(crate) fn sql_error(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, msg) = &e {
        match f.code {
            ErrorCode::ConstraintViolation
                if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                return StoreError::Conflict(conflict_message(msg.as_deref().unwrap_or("")).into());
            }
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                tracing::warn!(error = %e, "sqlite busy");
                return StoreError::Unavailable("database is busy".into());
            }
            _ => {}
        }
    }
    tracing::error!(error = %e, "sqlite error");
    StoreError::Internal(e.to_string())
}

/// A user-facing description of which uniqueness rule was broken, from SQLite's
/// "UNIQUE constraint failed: table.column, …" message.
fn conflict_message(sqlite_msg: &str) -> &'static str {
    let cols = sqlite_msg.rsplit(": ").next().unwrap_or("");
    match cols {
        "admin_users.email_norm" => "an admin user with this email already exists",
        "admin_users.id" => "an admin user with this id already exists",
        "projects.id" => "a project with this id already exists",
        "api_keys.id" => "an API key with this id already exists",
        "end_users.project_id, end_users.user_identifier" => {
            "an end user with this user_identifier already exists"
        }
        "end_users.project_id, end_users.id" => "an end user with this id already exists",
        "conversations.project_id, conversations.id" => {
            "a conversation with this id already exists"
        }
        "messages.project_id, messages.conversation_id, messages.client_msg_id" => {
            "a message with this client_msg_id already exists"
        }
        _ => "already exists",
    }
}

// --- scalar codecs ---------------------------------------------------------------------------

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn opt_ms(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(ms)
}

pub(crate) fn get_uuid(row: &Row<'_>, idx: usize) -> rusqlite::Result<Uuid> {
    match row.get_ref(idx)? {
        ValueRef::Blob(b) => Uuid::from_slice(b).map_err(|_| corrupt(idx, Type::Blob, "uuid")),
        other => Err(corrupt(idx, other.data_type(), "uuid")),
    }
}

pub(crate) fn get_opt_uuid(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<Uuid>> {
    match row.get_ref(idx)? {
        ValueRef::Null => Ok(None),
        _ => get_uuid(row, idx).map(Some),
    }
}

pub(crate) fn get_time(row: &Row<'_>, idx: usize) -> rusqlite::Result<DateTime<Utc>> {
    let v: i64 = row.get(idx)?;
    DateTime::from_timestamp_millis(v).ok_or_else(|| corrupt(idx, Type::Integer, "timestamp"))
}

pub(crate) fn get_opt_time(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    let v: Option<i64> = row.get(idx)?;
    v.map(|v| {
        DateTime::from_timestamp_millis(v).ok_or_else(|| corrupt(idx, Type::Integer, "timestamp"))
    })
    .transpose()
}

pub(crate) fn get_json(row: &Row<'_>, idx: usize) -> rusqlite::Result<serde_json::Value> {
    let s: String = row.get(idx)?;
    serde_json::from_str(&s).map_err(|_| corrupt(idx, Type::Text, "json"))
}

pub(crate) fn json_text(v: &serde_json::Value) -> String {
    v.to_string()
}

/// Decodes a text column with `parse`, reporting `what` when it does not parse.
fn get_enum<T>(
    row: &Row<'_>,
    idx: usize,
    what: &'static str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let s: String = row.get(idx)?;
    parse(&s).ok_or_else(|| corrupt(idx, Type::Text, what))
}

fn parse_plan(s: &str) -> Option<PlanId> {
    PlanId::parse(s).ok()
}

pub(crate) const PLAN_COLS: &str =
    "id, name, monthly_active_users, messages_per_month, projects_per_owner, features, updated_at";

pub(crate) fn plan(row: &Row<'_>) -> rusqlite::Result<larachat_core::plan::Plan> {
    let limit = |idx: usize| -> rusqlite::Result<Option<u64>> {
        match row.get::<_, Option<i64>>(idx)? {
            None => Ok(None),
            Some(n) => u64::try_from(n)
                .map(Some)
                .map_err(|_| corrupt(idx, Type::Integer, "plan limit")),
        }
    };
    let features: String = row.get(5)?;
    let features: std::collections::BTreeSet<String> =
        serde_json::from_str(&features).map_err(|_| corrupt(5, Type::Text, "plan features"))?;
    Ok(larachat_core::plan::Plan {
        id: get_enum(row, 0, "plan id", parse_plan)?,
        name: row.get(1)?,
        limits: larachat_core::plan::PlanLimits {
            monthly_active_users: limit(2)?,
            messages_per_month: limit(3)?,
            projects_per_owner: limit(4)?,
        },
        features,
        updated_at: get_time(row, 6)?,
    })
}

pub(crate) fn project_status_str(s: ProjectStatus) -> &'static str {
    match s {
        ProjectStatus::Active => "active",
        ProjectStatus::Suspended => "suspended",
        ProjectStatus::Cancelled => "cancelled",
    }
}

fn parse_project_status(s: &str) -> Option<ProjectStatus> {
    Some(match s {
        "active" => ProjectStatus::Active,
        "suspended" => ProjectStatus::Suspended,
        "cancelled" => ProjectStatus::Cancelled,
        _ => return None,
    })
}

pub(crate) fn key_kind_str(k: KeyKind) -> &'static str {
    match k {
        KeyKind::Secret => "secret",
        KeyKind::Publishable => "publishable",
    }
}

fn parse_key_kind(s: &str) -> Option<KeyKind> {
    Some(match s {
        "secret" => KeyKind::Secret,
        "publishable" => KeyKind::Publishable,
        _ => return None,
    })
}

fn parse_conversation_status(s: &str) -> Option<ConversationStatus> {
    Some(match s {
        "open" => ConversationStatus::Open,
        "closed" => ConversationStatus::Closed,
        _ => return None,
    })
}

// --- rows ------------------------------------------------------------------------------------

pub(crate) const ADMIN_USER_COLS: &str = "id, email, password_hash, created_at";

pub(crate) fn admin_user(row: &Row<'_>) -> rusqlite::Result<AdminUser> {
    Ok(AdminUser {
        id: larachat_core::id::AdminUserId::from_uuid(get_uuid(row, 0)?),
        email: row.get(1)?,
        password_hash: row.get(2)?,
        created_at: get_time(row, 3)?,
    })
}

pub(crate) const PROJECT_COLS: &str =
    "id, name, owner_id, plan, status, settings, created_at, updated_at";

pub(crate) fn project(row: &Row<'_>) -> rusqlite::Result<Project> {
    Ok(Project {
        id: ProjectId::from_uuid(get_uuid(row, 0)?),
        name: row.get(1)?,
        owner_id: larachat_core::id::AdminUserId::from_uuid(get_uuid(row, 2)?),
        plan: get_enum(row, 3, "plan", parse_plan)?,
        status: get_enum(row, 4, "project status", parse_project_status)?,
        settings: get_json(row, 5)?,
        created_at: get_time(row, 6)?,
        updated_at: get_time(row, 7)?,
    })
}

pub(crate) const API_KEY_COLS: &str = "id, project_id, name, kind, prefix, scopes, secret_hash, \
     last_used_at, expires_at, revoked_at, created_at";

pub(crate) fn api_key(row: &Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    let scopes: String = row.get(5)?;
    let secret_hash = match row.get_ref(6)? {
        ValueRef::Blob(b) => {
            <[u8; 32]>::try_from(b).map_err(|_| corrupt(6, Type::Blob, "secret hash"))?
        }
        other => return Err(corrupt(6, other.data_type(), "secret hash")),
    };
    Ok(ApiKeyRecord {
        id: larachat_core::id::ApiKeyId::from_uuid(get_uuid(row, 0)?),
        project_id: ProjectId::from_uuid(get_uuid(row, 1)?),
        name: row.get(2)?,
        kind: get_enum(row, 3, "key kind", parse_key_kind)?,
        prefix: row.get(4)?,
        scopes: serde_json::from_str(&scopes).map_err(|_| corrupt(5, Type::Text, "scopes"))?,
        secret_hash,
        last_used_at: get_opt_time(row, 7)?,
        expires_at: get_opt_time(row, 8)?,
        revoked_at: get_opt_time(row, 9)?,
        created_at: get_time(row, 10)?,
    })
}

pub(crate) const END_USER_COLS: &str = "id, project_id, user_identifier, name, email, avatar, \
     metadata, is_anonymous, last_seen_at, created_at, updated_at";

pub(crate) fn end_user(row: &Row<'_>) -> rusqlite::Result<EndUser> {
    Ok(EndUser {
        id: EndUserId::from_uuid(get_uuid(row, 0)?),
        project_id: ProjectId::from_uuid(get_uuid(row, 1)?),
        user_identifier: row.get(2)?,
        name: row.get(3)?,
        email: row.get(4)?,
        avatar: row.get(5)?,
        metadata: get_json(row, 6)?,
        is_anonymous: row.get(7)?,
        last_seen_at: get_opt_time(row, 8)?,
        created_at: get_time(row, 9)?,
        updated_at: get_time(row, 10)?,
    })
}

pub(crate) const CONVERSATION_COLS: &str =
    "id, project_id, subject, status, metadata, created_at, updated_at, last_message_id, assignee";

/// A conversation without its members (they come from another table).
pub(crate) fn conversation(row: &Row<'_>) -> rusqlite::Result<Conversation> {
    Ok(Conversation {
        id: ConversationId::from_uuid(get_uuid(row, 0)?),
        project_id: ProjectId::from_uuid(get_uuid(row, 1)?),
        subject: row.get(2)?,
        status: get_enum(row, 3, "conversation status", parse_conversation_status)?,
        members: Vec::new(),
        metadata: get_json(row, 4)?,
        created_at: get_time(row, 5)?,
        updated_at: get_time(row, 6)?,
        last_message_id: get_opt_uuid(row, 7)?.map(MessageId::from_uuid),
        assignee: row.get(8)?,
    })
}

pub(crate) const MESSAGE_COLS: &str = "id, project_id, conversation_id, sender_kind, sender_id, \
     sender_name, text, metadata, client_msg_id, created_at, seq";

pub(crate) fn message(row: &Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: MessageId::from_uuid(get_uuid(row, 0)?),
        project_id: ProjectId::from_uuid(get_uuid(row, 1)?),
        conversation_id: ConversationId::from_uuid(get_uuid(row, 2)?),
        sender: Actor {
            kind: get_enum(row, 3, "actor kind", |s| s.parse::<ActorKind>().ok())?,
            id: row.get(4)?,
            name: row.get(5)?,
        },
        text: row.get(6)?,
        metadata: get_json(row, 7)?,
        client_msg_id: row.get(8)?,
        created_at: get_time(row, 9)?,
        seq: row.get(10)?,
    })
}

pub(crate) const READ_STATE_COLS: &str =
    "conversation_id, reader_kind, reader_id, reader_name, last_read_message_id, updated_at";

pub(crate) fn read_state(row: &Row<'_>) -> rusqlite::Result<ReadState> {
    Ok(ReadState {
        conversation_id: ConversationId::from_uuid(get_uuid(row, 0)?),
        reader: Actor {
            kind: get_enum(row, 1, "actor kind", |s| s.parse::<ActorKind>().ok())?,
            id: row.get(2)?,
            name: row.get(3)?,
        },
        last_read_message_id: MessageId::from_uuid(get_uuid(row, 4)?),
        updated_at: get_time(row, 5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_name_the_field_not_the_sql() {
        assert_eq!(
            conflict_message("UNIQUE constraint failed: admin_users.email_norm"),
            "an admin user with this email already exists"
        );
        assert_eq!(conflict_message("something else"), "already exists");
    }

    #[test]
    fn enums_round_trip() {
        for p in ["free", "starter", "pro", "enterprise"] {
            assert_eq!(parse_plan(p).map(|p| p.to_string()).as_deref(), Some(p));
        }
        for s in [
            ProjectStatus::Active,
            ProjectStatus::Suspended,
            ProjectStatus::Cancelled,
        ] {
            assert_eq!(parse_project_status(project_status_str(s)), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), project_status_str(s));
        }
        for k in [KeyKind::Secret, KeyKind::Publishable] {
            assert_eq!(parse_key_kind(key_kind_str(k)), Some(k));
        }
        for s in [ConversationStatus::Open, ConversationStatus::Closed] {
            assert_eq!(parse_conversation_status(s.as_str()), Some(s));
        }
    }
}
