//! The SQL of every operation, as plain functions over a connection.
//!
//! Write functions run on the writer thread inside a savepoint (see `writer`); read functions
//! run on a pooled read-only connection inside a read transaction, so that multi-statement
//! reads see one snapshot.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use uuid::Uuid;

use larachat_core::id::{AdminUserId, ApiKeyId, ConversationId, EndUserId, MessageId, ProjectId};
use larachat_core::model::{
    self, Actor, ActorKind, AdminUser, ApiKeyRecord, Conversation, ConversationPatch, EndUser,
    EndUserPatch, Message, NewMessage, Project, ProjectPatch, ReadState,
};

use larachat_core::event::DomainEvent;

use super::analytics;
use super::codec::{self, json_text, ms, opt_ms, sql_error};
use super::outbox;
use super::search;
use super::usage::{self, Count};
use crate::{
    Appended, AssigneeFilter, ConversationQuery, CreationKey, MessageRange, NewEndUser, Page,
    StoreError, StoreResult,
};

/// Largest page any listing returns; smaller requests are honoured, 0 means 1.
pub(crate) const MAX_PAGE: u32 = 1000;

pub(crate) fn clamp_limit(limit: u32) -> usize {
    limit.clamp(1, MAX_PAGE) as usize
}

fn b(u: &Uuid) -> &[u8; 16] {
    u.as_bytes()
}

/// Splits `limit + 1` fetched rows into a page with an exact `has_more`.
fn page<T>(mut items: Vec<T>, limit: usize) -> Page<T> {
    let has_more = items.len() > limit;
    items.truncate(limit);
    Page { items, has_more }
}

// --- admin users -----------------------------------------------------------------------------

pub(crate) fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

pub(crate) fn create_admin_user(conn: &Connection, u: &AdminUser) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO admin_users (id, email, email_norm, password_hash, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| {
        s.execute(params![
            b(u.id.as_uuid()),
            u.email,
            normalize_email(&u.email),
            u.password_hash,
            ms(u.created_at)
        ])
    })
    .map_err(sql_error)?;
    Ok(())
}

pub(crate) fn admin_user_by_email(
    conn: &Connection,
    email: &str,
) -> StoreResult<Option<AdminUser>> {
    let sql = format!(
        "SELECT {} FROM admin_users WHERE email_norm = ?1",
        codec::ADMIN_USER_COLS
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row([normalize_email(email)], codec::admin_user)
                .optional()
        })
        .map_err(sql_error)
}

pub(crate) fn admin_user(conn: &Connection, id: AdminUserId) -> StoreResult<Option<AdminUser>> {
    let sql = format!(
        "SELECT {} FROM admin_users WHERE id = ?1",
        codec::ADMIN_USER_COLS
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| s.query_row([b(id.as_uuid())], codec::admin_user).optional())
        .map_err(sql_error)
}

pub(crate) fn count_admin_users(conn: &Connection) -> StoreResult<u64> {
    let n: i64 = conn
        .query_row("SELECT count(*) FROM admin_users", [], |r| r.get(0))
        .map_err(sql_error)?;
    Ok(n.max(0) as u64)
}

// --- projects --------------------------------------------------------------------------------

pub(crate) fn create_project(conn: &Connection, p: &Project) -> StoreResult<()> {
    usage::check_new_project(conn, p.owner_id, &p.plan)?;
    conn.prepare_cached(
        "INSERT INTO projects (id, name, owner_id, plan, status, settings, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            b(p.id.as_uuid()),
            p.name,
            b(p.owner_id.as_uuid()),
            p.plan.as_str(),
            codec::project_status_str(p.status),
            json_text(&p.settings),
            ms(p.created_at),
            ms(p.updated_at)
        ])
    })
    .map_err(sql_error)?;
    super::team::add_owner_of_new_project(conn, p)
}

pub(crate) fn project(conn: &Connection, id: ProjectId) -> StoreResult<Option<Project>> {
    let sql = format!("SELECT {} FROM projects WHERE id = ?1", codec::PROJECT_COLS);
    conn.prepare_cached(&sql)
        .and_then(|mut s| s.query_row([b(id.as_uuid())], codec::project).optional())
        .map_err(sql_error)
}

pub(crate) fn list_projects(
    conn: &Connection,
    owner: Option<AdminUserId>,
    cursor: Option<ProjectId>,
    limit: u32,
) -> StoreResult<Page<Project>> {
    let limit = clamp_limit(limit);
    let mut sql = format!("SELECT {} FROM projects WHERE 1 = 1", codec::PROJECT_COLS);
    let mut args: Vec<Vec<u8>> = Vec::new();
    if let Some(owner) = owner {
        args.push(owner.as_uuid().as_bytes().to_vec());
        sql.push_str(&format!(" AND owner_id = ?{}", args.len()));
    }
    if let Some(cursor) = cursor {
        args.push(cursor.as_uuid().as_bytes().to_vec());
        sql.push_str(&format!(" AND id < ?{}", args.len()));
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit + 1));
    let items = conn
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(params_from_iter(args.iter()), codec::project)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_error)?;
    Ok(page(items, limit))
}

pub(crate) fn update_project(
    conn: &Connection,
    id: ProjectId,
    patch: &ProjectPatch,
    now: DateTime<Utc>,
) -> StoreResult<Option<Project>> {
    let Some(mut p) = project(conn, id)? else {
        return Ok(None);
    };
    patch.apply_at(&mut p, now);
    conn.prepare_cached(
        "UPDATE projects SET name = ?2, plan = ?3, status = ?4, settings = ?5, updated_at = ?6 \
         WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            b(p.id.as_uuid()),
            p.name,
            p.plan.as_str(),
            codec::project_status_str(p.status),
            json_text(&p.settings),
            ms(p.updated_at)
        ])
    })
    .map_err(sql_error)?;
    Ok(Some(p))
}

pub(crate) fn delete_project(conn: &Connection, id: ProjectId) -> StoreResult<bool> {
    let pid = b(id.as_uuid());
    super::team::delete_project_team(conn, id)?;
    // Children before parents (foreign keys), tenant tables first.
    for table in [
        "read_states",
        "search_terms",
        "messages",
        "conversation_members",
        "conversations",
        "end_users",
        "api_keys",
        "usage_active_users",
        "usage",
        "usage_edge",
        "analytics_hours",
        "analytics_active",
        "analytics_conversations",
        "conversation_keys",
    ] {
        conn.prepare_cached(&format!("DELETE FROM {table} WHERE project_id = ?1"))
            .and_then(|mut s| s.execute([pid]))
            .map_err(sql_error)?;
    }
    let n = conn
        .prepare_cached("DELETE FROM projects WHERE id = ?1")
        .and_then(|mut s| s.execute([pid]))
        .map_err(sql_error)?;
    Ok(n > 0)
}

// --- API keys --------------------------------------------------------------------------------

pub(crate) fn create_api_key(conn: &Connection, k: &ApiKeyRecord) -> StoreResult<()> {
    let scopes = serde_json::to_string(&k.scopes)
        .map_err(|e| StoreError::Internal(format!("encoding scopes: {e}")))?;
    conn.prepare_cached(
        "INSERT INTO api_keys (id, project_id, name, kind, prefix, scopes, secret_hash, \
         last_used_at, expires_at, revoked_at, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .and_then(|mut s| {
        s.execute(params![
            b(k.id.as_uuid()),
            b(k.project_id.as_uuid()),
            k.name,
            codec::key_kind_str(k.kind),
            k.prefix,
            scopes,
            k.secret_hash,
            opt_ms(k.last_used_at),
            opt_ms(k.expires_at),
            opt_ms(k.revoked_at),
            ms(k.created_at)
        ])
    })
    .map_err(sql_error)?;
    Ok(())
}

pub(crate) fn api_key(conn: &Connection, id: ApiKeyId) -> StoreResult<Option<ApiKeyRecord>> {
    let sql = format!("SELECT {} FROM api_keys WHERE id = ?1", codec::API_KEY_COLS);
    conn.prepare_cached(&sql)
        .and_then(|mut s| s.query_row([b(id.as_uuid())], codec::api_key).optional())
        .map_err(sql_error)
}

pub(crate) fn list_api_keys(
    conn: &Connection,
    project: ProjectId,
) -> StoreResult<Vec<ApiKeyRecord>> {
    let sql = format!(
        "SELECT {} FROM api_keys WHERE project_id = ?1 ORDER BY created_at DESC, id DESC",
        codec::API_KEY_COLS
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map([b(project.as_uuid())], codec::api_key)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_error)
}

pub(crate) fn revoke_api_key(
    conn: &Connection,
    id: ApiKeyId,
    at: DateTime<Utc>,
) -> StoreResult<Option<ApiKeyRecord>> {
    conn.prepare_cached("UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1")
        .and_then(|mut s| s.execute(params![b(id.as_uuid()), ms(at)]))
        .map_err(sql_error)?;
    api_key(conn, id)
}

pub(crate) fn touch_api_key(conn: &Connection, id: ApiKeyId, at: DateTime<Utc>) -> StoreResult<()> {
    // Never moves backwards: touches may arrive out of order.
    conn.prepare_cached(
        "UPDATE api_keys SET last_used_at = ?2 \
         WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
    )
    .and_then(|mut s| s.execute(params![b(id.as_uuid()), ms(at)]))
    .map_err(sql_error)?;
    Ok(())
}

// --- end users -------------------------------------------------------------------------------

pub(crate) fn upsert_end_user(
    conn: &Connection,
    project: ProjectId,
    u: &NewEndUser,
    now: DateTime<Utc>,
) -> StoreResult<(EndUser, bool)> {
    if let Some(identifier) = &u.user_identifier {
        let sql = format!(
            "SELECT {} FROM end_users WHERE project_id = ?1 AND user_identifier = ?2",
            codec::END_USER_COLS
        );
        let existing = conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_row(params![b(project.as_uuid()), identifier], codec::end_user)
                    .optional()
            })
            .map_err(sql_error)?;
        if let Some(mut user) = existing {
            let mut changed = false;
            let mut set = |field: &mut Option<String>, value: &Option<String>| {
                if let Some(v) = value {
                    if field.as_ref() != Some(v) {
                        *field = Some(v.clone());
                        changed = true;
                    }
                }
            };
            set(&mut user.name, &u.name);
            set(&mut user.email, &u.email);
            set(&mut user.avatar, &u.avatar);
            if !is_empty_object(&u.metadata) && user.metadata != u.metadata {
                user.metadata = u.metadata.clone();
                changed = true;
            }
            if changed {
                user.updated_at = now.max(user.updated_at);
                write_end_user(conn, &user)?;
                outbox::insert(conn, &DomainEvent::user_updated(&user))?;
            }
            usage::count(
                conn,
                project,
                now,
                Count {
                    active: &[user.id],
                    ..Count::default()
                },
            )?;
            return Ok((user, false));
        }
    }
    let user = EndUser {
        id: EndUserId::new_v7_at(now),
        project_id: project,
        user_identifier: u.user_identifier.clone(),
        name: u.name.clone(),
        email: u.email.clone(),
        avatar: u.avatar.clone(),
        metadata: if u.metadata.is_null() {
            model::empty_object()
        } else {
            u.metadata.clone()
        },
        is_anonymous: u.user_identifier.is_none(),
        last_seen_at: None,
        created_at: now,
        updated_at: now,
    };
    conn.prepare_cached(
        "INSERT INTO end_users (project_id, id, user_identifier, name, email, avatar, metadata, \
         is_anonymous, last_seen_at, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .and_then(|mut s| {
        s.execute(params![
            b(project.as_uuid()),
            b(user.id.as_uuid()),
            user.user_identifier,
            user.name,
            user.email,
            user.avatar,
            json_text(&user.metadata),
            user.is_anonymous,
            opt_ms(user.last_seen_at),
            ms(user.created_at),
            ms(user.updated_at)
        ])
    })
    .map_err(sql_error)?;
    outbox::insert(conn, &DomainEvent::user_created(&user))?;
    usage::count(
        conn,
        project,
        user.created_at,
        Count {
            active: &[user.id],
            ..Count::default()
        },
    )?;
    Ok((user, true))
}

fn is_empty_object(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// Writes the mutable fields of an existing end user.
fn write_end_user(conn: &Connection, u: &EndUser) -> StoreResult<()> {
    conn.prepare_cached(
        "UPDATE end_users SET name = ?3, email = ?4, avatar = ?5, metadata = ?6, \
         last_seen_at = ?7, updated_at = ?8 WHERE project_id = ?1 AND id = ?2",
    )
    .and_then(|mut s| {
        s.execute(params![
            b(u.project_id.as_uuid()),
            b(u.id.as_uuid()),
            u.name,
            u.email,
            u.avatar,
            json_text(&u.metadata),
            opt_ms(u.last_seen_at),
            ms(u.updated_at)
        ])
    })
    .map_err(sql_error)?;
    Ok(())
}

pub(crate) fn end_user(
    conn: &Connection,
    project: ProjectId,
    id: EndUserId,
) -> StoreResult<Option<EndUser>> {
    let sql = format!(
        "SELECT {} FROM end_users WHERE project_id = ?1 AND id = ?2",
        codec::END_USER_COLS
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row([b(project.as_uuid()), b(id.as_uuid())], codec::end_user)
                .optional()
        })
        .map_err(sql_error)
}

pub(crate) fn update_end_user(
    conn: &Connection,
    project: ProjectId,
    id: EndUserId,
    patch: &EndUserPatch,
    now: DateTime<Utc>,
) -> StoreResult<Option<EndUser>> {
    let Some(mut u) = end_user(conn, project, id)? else {
        return Ok(None);
    };
    patch.apply_at(&mut u, now);
    write_end_user(conn, &u)?;
    // A heartbeat (`last_seen_at` only) is not a profile change: no event.
    if patch.has_profile_fields() {
        outbox::insert(conn, &DomainEvent::user_updated(&u))?;
    }
    Ok(Some(u))
}

pub(crate) fn delete_end_user(
    conn: &Connection,
    project: ProjectId,
    id: EndUserId,
) -> StoreResult<bool> {
    let pid = b(project.as_uuid());
    let member_key = Actor::end_user(id, None).member_key();
    conn.prepare_cached("DELETE FROM read_states WHERE project_id = ?1 AND member_key = ?2")
        .and_then(|mut s| s.execute(params![pid, member_key]))
        .map_err(sql_error)?;
    conn.prepare_cached(
        "DELETE FROM conversation_members WHERE project_id = ?1 AND end_user_id = ?2",
    )
    .and_then(|mut s| s.execute(params![pid, b(id.as_uuid())]))
    .map_err(sql_error)?;
    let n = conn
        .prepare_cached("DELETE FROM end_users WHERE project_id = ?1 AND id = ?2")
        .and_then(|mut s| s.execute(params![pid, b(id.as_uuid())]))
        .map_err(sql_error)?;
    Ok(n > 0)
}

// --- conversations ---------------------------------------------------------------------------

fn end_user_exists(conn: &Connection, project: ProjectId, id: EndUserId) -> StoreResult<bool> {
    conn.prepare_cached("SELECT 1 FROM end_users WHERE project_id = ?1 AND id = ?2")
        .and_then(|mut s| s.exists([b(project.as_uuid()), b(id.as_uuid())]))
        .map_err(sql_error)
}

/// Adds members (already-present ones are ignored). `NotFound("end user")` if one is not an
/// end user of the project.
fn add_members(
    conn: &Connection,
    project: ProjectId,
    conversation: ConversationId,
    members: &[EndUserId],
) -> StoreResult<()> {
    for m in members {
        if !end_user_exists(conn, project, *m)? {
            return Err(StoreError::NotFound("end user"));
        }
        conn.prepare_cached(
            "INSERT OR IGNORE INTO conversation_members (project_id, conversation_id, end_user_id) \
             VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut s| {
            s.execute([
                b(project.as_uuid()),
                b(conversation.as_uuid()),
                b(m.as_uuid()),
            ])
        })
        .map_err(sql_error)?;
    }
    Ok(())
}

pub(crate) fn create_conversation(
    conn: &Connection,
    c: &Conversation,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO conversations (project_id, id, subject, status, metadata, created_at, \
         updated_at, last_message_id, assignee) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut s| {
        s.execute(params![
            b(c.project_id.as_uuid()),
            b(c.id.as_uuid()),
            c.subject,
            c.status.as_str(),
            json_text(&c.metadata),
            ms(c.created_at),
            ms(c.updated_at),
            c.last_message_id.map(|m| *m.as_uuid().as_bytes()),
            c.assignee
        ])
    })
    .map_err(sql_error)?;
    add_members(conn, c.project_id, c.id, &c.members)?;
    let stored = conversation(conn, c.project_id, c.id)?
        .ok_or(StoreError::Internal("conversation vanished".into()))?;
    let keys =
        search::conversation_keys(conn, c.project_id, c.subject.as_deref(), &stored.members)?;
    search::index(conn, c.project_id, c.id, &keys)?;
    outbox::insert(conn, &DomainEvent::conversation_created(&stored))?;
    analytics::conversation_created(conn, &stored)?;
    usage::count(
        conn,
        c.project_id,
        now,
        Count {
            conversations: 1,
            active: &stored.members,
            ..Count::default()
        },
    )
}

/// [`create_conversation`] once per `key` (see `Store::create_conversation_keyed`): in the
/// writer's transaction, so the key row and the conversation commit together.
pub(crate) fn create_conversation_keyed(
    conn: &Connection,
    c: &Conversation,
    key: &CreationKey,
    now: DateTime<Utc>,
) -> StoreResult<(Conversation, bool)> {
    let pid = b(c.project_id.as_uuid());
    let seen: Option<Uuid> = conn
        .prepare_cached(
            "SELECT conversation_id FROM conversation_keys \
             WHERE project_id = ?1 AND caller = ?2 AND key = ?3",
        )
        .and_then(|mut s| {
            s.query_row(params![pid, key.caller, key.key], |r| codec::get_uuid(r, 0))
                .optional()
        })
        .map_err(sql_error)?;
    if let Some(id) = seen {
        if let Some(existing) = conversation(conn, c.project_id, ConversationId::from_uuid(id))? {
            return Ok((existing, false));
        }
    }
    create_conversation(conn, c, now)?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO conversation_keys (project_id, caller, key, conversation_id, \
         created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| {
        s.execute(params![
            pid,
            key.caller,
            key.key,
            b(c.id.as_uuid()),
            ms(c.created_at)
        ])
    })
    .map_err(sql_error)?;
    let stored = conversation(conn, c.project_id, c.id)?
        .ok_or(StoreError::Internal("conversation vanished".into()))?;
    Ok((stored, true))
}

pub(super) fn members(
    conn: &Connection,
    project: ProjectId,
    id: ConversationId,
) -> rusqlite::Result<Vec<EndUserId>> {
    let mut s = conn.prepare_cached(
        "SELECT end_user_id FROM conversation_members \
         WHERE project_id = ?1 AND conversation_id = ?2 ORDER BY end_user_id",
    )?;
    s.query_map([b(project.as_uuid()), b(id.as_uuid())], |r| {
        codec::get_uuid(r, 0).map(EndUserId::from_uuid)
    })?
    .collect()
}

pub(crate) fn conversation(
    conn: &Connection,
    project: ProjectId,
    id: ConversationId,
) -> StoreResult<Option<Conversation>> {
    let sql = format!(
        "SELECT {} FROM conversations WHERE project_id = ?1 AND id = ?2",
        codec::CONVERSATION_COLS
    );
    let found = conn
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row([b(project.as_uuid()), b(id.as_uuid())], codec::conversation)
                .optional()
        })
        .map_err(sql_error)?;
    let Some(mut c) = found else {
        return Ok(None);
    };
    c.members = members(conn, project, id).map_err(sql_error)?;
    Ok(Some(c))
}

pub(crate) fn list_conversations(
    conn: &Connection,
    project: ProjectId,
    q: &ConversationQuery,
) -> StoreResult<Page<Conversation>> {
    let limit = clamp_limit(q.limit);
    let cols = joined_conversation_cols();
    let mut args: SqlArgs = vec![Box::new(project.as_uuid().as_bytes().to_vec())];
    let mut sql = if let Some(member) = q.member {
        args.push(Box::new(member.as_uuid().as_bytes().to_vec()));
        // Driven by the member index: a member's conversations, newest first.
        format!(
            "SELECT {cols} FROM conversation_members m \
             JOIN conversations c ON c.project_id = m.project_id AND c.id = m.conversation_id \
             WHERE m.project_id = ?1 AND m.end_user_id = ?2"
        )
    } else {
        format!("SELECT {cols} FROM conversations c WHERE c.project_id = ?1")
    };
    // Served by `conversations_by_assignee` (project, assignee, id) when there is no member.
    push_conversation_filters(&mut sql, &mut args, q);
    if let Some(cursor) = q.cursor {
        args.push(Box::new(cursor.as_uuid().as_bytes().to_vec()));
        sql.push_str(&format!(" AND c.id < ?{}", args.len()));
    }
    sql.push_str(&format!(" ORDER BY c.id DESC LIMIT {}", limit + 1));
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    conversation_page(conn, project, &mut statement, &args, limit)
}

/// Values bound to a query built at run time.
pub(super) type SqlArgs = Vec<Box<dyn rusqlite::ToSql>>;

/// The conversation columns qualified with `c.`, for listings that join.
pub(super) fn joined_conversation_cols() -> String {
    codec::CONVERSATION_COLS
        .split(", ")
        .map(|c| format!("c.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Appends the status and assignee filters of a listing (on `c`), binding their values.
pub(super) fn push_conversation_filters(
    sql: &mut String,
    args: &mut SqlArgs,
    q: &ConversationQuery,
) {
    if let Some(status) = q.status {
        args.push(Box::new(status.as_str()));
        sql.push_str(&format!(" AND c.status = ?{}", args.len()));
    }
    match &q.assignee {
        None => {}
        Some(AssigneeFilter::Unassigned) => sql.push_str(" AND c.assignee IS NULL"),
        Some(AssigneeFilter::Agent(agent)) => {
            args.push(Box::new(agent.clone()));
            sql.push_str(&format!(" AND c.assignee = ?{}", args.len()));
        }
    }
}

/// Runs a listing that selects `limit + 1` conversations, newest first, and loads the
/// members of the page's conversations.
pub(super) fn conversation_page(
    conn: &Connection,
    project: ProjectId,
    statement: &mut rusqlite::Statement<'_>,
    args: &SqlArgs,
    limit: usize,
) -> StoreResult<Page<Conversation>> {
    let items = statement
        .query_map(params_from_iter(args.iter()), codec::conversation)
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql_error)?;
    let mut page = page(items, limit);
    for c in &mut page.items {
        c.members = members(conn, project, c.id).map_err(sql_error)?;
    }
    Ok(page)
}

pub(crate) fn update_conversation(
    conn: &Connection,
    project: ProjectId,
    id: ConversationId,
    patch: &ConversationPatch,
    now: DateTime<Utc>,
) -> StoreResult<Option<Conversation>> {
    let Some(mut c) = conversation(conn, project, id)? else {
        return Ok(None);
    };
    let before = c.status;
    patch.apply_fields_at(&mut c, now);
    conn.prepare_cached(
        "UPDATE conversations SET subject = ?3, status = ?4, metadata = ?5, updated_at = ?6, \
         assignee = ?7 WHERE project_id = ?1 AND id = ?2",
    )
    .and_then(|mut s| {
        s.execute(params![
            b(project.as_uuid()),
            b(id.as_uuid()),
            c.subject,
            c.status.as_str(),
            json_text(&c.metadata),
            ms(c.updated_at),
            c.assignee
        ])
    })
    .map_err(sql_error)?;
    if !patch.add_members.is_empty() {
        add_members(conn, project, id, &patch.add_members)?;
        c.members = members(conn, project, id).map_err(sql_error)?;
    }
    // A new subject and added members become searchable (earlier words stay findable).
    let subject = patch.subject.as_ref().and_then(|s| s.as_deref());
    if subject.is_some() || !patch.add_members.is_empty() {
        let keys = search::conversation_keys(conn, project, subject, &patch.add_members)?;
        search::index(conn, project, id, &keys)?;
    }
    outbox::insert(conn, &DomainEvent::conversation_changed(before, &c))?;
    analytics::status_changed(conn, project, id, before, c.status, c.updated_at)?;
    Ok(Some(c))
}

// --- messages --------------------------------------------------------------------------------

/// The conversation's newest message (id and seq; `None`/0 without messages), `None` (outer)
/// if the conversation is not in the project.
fn conversation_head(
    conn: &Connection,
    project: ProjectId,
    id: ConversationId,
) -> StoreResult<Option<(Option<MessageId>, u64)>> {
    conn.prepare_cached(
        "SELECT last_message_id, last_seq FROM conversations WHERE project_id = ?1 AND id = ?2",
    )
    .and_then(|mut s| {
        s.query_row([b(project.as_uuid()), b(id.as_uuid())], |r| {
            Ok((
                codec::get_opt_uuid(r, 0)?.map(MessageId::from_uuid),
                r.get::<_, u64>(1)?,
            ))
        })
        .optional()
    })
    .map_err(sql_error)
}

pub(crate) fn append_message(
    conn: &Connection,
    m: &NewMessage,
    now: DateTime<Utc>,
) -> StoreResult<Appended> {
    let project = m.project_id;
    let Some((head, last_seq)) = conversation_head(conn, project, m.conversation_id)? else {
        return Err(StoreError::NotFound("conversation"));
    };
    if let Some(client_msg_id) = &m.client_msg_id {
        let sql = format!(
            "SELECT {} FROM messages \
             WHERE project_id = ?1 AND conversation_id = ?2 AND client_msg_id = ?3",
            codec::MESSAGE_COLS
        );
        let existing = conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_row(
                    params![
                        b(project.as_uuid()),
                        b(m.conversation_id.as_uuid()),
                        client_msg_id
                    ],
                    codec::message,
                )
                .optional()
            })
            .map_err(sql_error)?;
        if let Some(message) = existing {
            return Ok(Appended {
                message,
                created: false,
            });
        }
    }
    // The single writer reads the head and writes the message in one transaction: the id
    // follows the newest one (even if that came from a faster clock) and seq has no gap.
    let id = MessageId::following_at(head, now);
    let seq = last_seq + 1;
    let message = Message {
        id,
        seq,
        project_id: project,
        conversation_id: m.conversation_id,
        sender: m.sender.clone(),
        text: m.text.clone(),
        metadata: if m.metadata.is_null() {
            model::empty_object()
        } else {
            m.metadata.clone()
        },
        client_msg_id: m.client_msg_id.clone(),
        created_at: now,
    };
    conn.prepare_cached(
        "INSERT INTO messages (project_id, conversation_id, id, sender_kind, sender_id, \
         sender_name, text, metadata, client_msg_id, created_at, seq) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .and_then(|mut s| {
        s.execute(params![
            b(project.as_uuid()),
            b(message.conversation_id.as_uuid()),
            b(id.as_uuid()),
            message.sender.kind.as_str(),
            message.sender.id,
            message.sender.name,
            message.text,
            json_text(&message.metadata),
            message.client_msg_id,
            ms(message.created_at),
            seq
        ])
    })
    .map_err(sql_error)?;
    conn.prepare_cached(
        "UPDATE conversations SET last_message_id = ?3, last_seq = ?5, \
         updated_at = max(updated_at, ?4) WHERE project_id = ?1 AND id = ?2",
    )
    .and_then(|mut s| {
        s.execute(params![
            b(project.as_uuid()),
            b(message.conversation_id.as_uuid()),
            b(id.as_uuid()),
            ms(message.created_at),
            seq
        ])
    })
    .map_err(sql_error)?;
    search::index(
        conn,
        project,
        message.conversation_id,
        &larachat_core::search::message_keys(&message.text),
    )?;
    outbox::insert(conn, &DomainEvent::message_sent(&message))?;
    analytics::message_appended(conn, &message)?;
    let sender: Vec<EndUserId> = match message.sender.kind {
        ActorKind::EndUser => message.sender.id.parse().ok().into_iter().collect(),
        _ => Vec::new(),
    };
    usage::count(
        conn,
        project,
        message.created_at,
        Count {
            messages: 1,
            bytes: larachat_core::plan::content_bytes(&message.text, &message.metadata),
            active: &sender,
            ..Count::default()
        },
    )?;
    Ok(Appended {
        message,
        created: true,
    })
}

pub(crate) fn list_messages(
    conn: &Connection,
    project: ProjectId,
    conversation: ConversationId,
    range: MessageRange,
    limit: u32,
) -> StoreResult<Page<Message>> {
    let limit = clamp_limit(limit);
    let (filter, order, anchor) = match range {
        MessageRange::Latest => ("", "DESC", None),
        MessageRange::Before(id) => (" AND id < ?3", "DESC", Some(id)),
        MessageRange::After(id) => (" AND id > ?3", "ASC", Some(id)),
    };
    let sql = format!(
        "SELECT {} FROM messages WHERE project_id = ?1 AND conversation_id = ?2{filter} \
         ORDER BY id {order} LIMIT {}",
        codec::MESSAGE_COLS,
        limit + 1
    );
    let pid = b(project.as_uuid());
    let cid = b(conversation.as_uuid());
    let items = conn
        .prepare_cached(&sql)
        .and_then(|mut s| {
            let rows = match &anchor {
                Some(a) => s.query_map(params![pid, cid, b(a.as_uuid())], codec::message)?,
                None => s.query_map(params![pid, cid], codec::message)?,
            };
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_error)?;
    let mut page = page(items, limit);
    if order == "DESC" {
        page.items.reverse();
    }
    Ok(page)
}

pub(crate) fn message(
    conn: &Connection,
    project: ProjectId,
    conversation: ConversationId,
    id: MessageId,
) -> StoreResult<Option<Message>> {
    let sql = format!(
        "SELECT {} FROM messages WHERE project_id = ?1 AND conversation_id = ?2 AND id = ?3",
        codec::MESSAGE_COLS
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row(
                [
                    b(project.as_uuid()),
                    b(conversation.as_uuid()),
                    b(id.as_uuid()),
                ],
                codec::message,
            )
            .optional()
        })
        .map_err(sql_error)
}

// --- read state ------------------------------------------------------------------------------

fn read_state(
    conn: &Connection,
    project: ProjectId,
    conversation: ConversationId,
    member_key: &str,
) -> StoreResult<Option<ReadState>> {
    let sql = format!(
        "SELECT {} FROM read_states WHERE project_id = ?1 AND conversation_id = ?2 AND member_key = ?3",
        codec::READ_STATE_COLS
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row(
                params![b(project.as_uuid()), b(conversation.as_uuid()), member_key],
                codec::read_state,
            )
            .optional()
        })
        .map_err(sql_error)
}

pub(crate) fn mark_read(
    conn: &Connection,
    project: ProjectId,
    conversation: ConversationId,
    reader: &Actor,
    message_id: MessageId,
    at: DateTime<Utc>,
) -> StoreResult<ReadState> {
    if conversation_head(conn, project, conversation)?.is_none() {
        return Err(StoreError::NotFound("conversation"));
    }
    let key = reader.member_key();
    if let Some(current) = read_state(conn, project, conversation, &key)? {
        if current.last_read_message_id >= message_id {
            return Ok(current);
        }
    }
    let state = ReadState {
        conversation_id: conversation,
        reader: reader.clone(),
        last_read_message_id: message_id,
        updated_at: at,
    };
    conn.prepare_cached(
        "INSERT OR REPLACE INTO read_states (project_id, conversation_id, member_key, reader_kind, \
         reader_id, reader_name, last_read_message_id, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            b(project.as_uuid()),
            b(conversation.as_uuid()),
            key,
            reader.kind.as_str(),
            reader.id,
            reader.name,
            b(message_id.as_uuid()),
            ms(at)
        ])
    })
    .map_err(sql_error)?;
    outbox::insert(conn, &DomainEvent::message_read(project, &state))?;
    Ok(state)
}

pub(crate) fn read_states(
    conn: &Connection,
    project: ProjectId,
    conversation: ConversationId,
) -> StoreResult<Vec<ReadState>> {
    let sql = format!(
        "SELECT {} FROM read_states WHERE project_id = ?1 AND conversation_id = ?2 ORDER BY member_key",
        codec::READ_STATE_COLS
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(
                [b(project.as_uuid()), b(conversation.as_uuid())],
                codec::read_state,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_error)
}
