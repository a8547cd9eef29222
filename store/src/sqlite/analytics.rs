//! Analytics rollups of the embedded store.
//!
//! The writer keeps them in the savepoint of the change they describe, like usage: a message
//! adds one to its hour's row of `analytics_hours` (by sender kind), marks its conversation
//! active in that hour (`analytics_active`, `INSERT OR IGNORE`), and may set its
//! conversation's first end-user message or first answer (`analytics_conversations`, only
//! while unset); a conversation created inserts its row there; a status change sets or clears
//! `closed_at`. A retried send (known `client_msg_id`) returns before any of this, and a
//! rolled-back change takes its rollups with it, so nothing counts twice.
//!
//! A query reads rollup rows of its range only: at most one row per hour, one per active
//! conversation and hour, one per conversation created in the range, plus the open and
//! closed counts from the status index. No message is read.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use larachat_core::analytics::{AnalyticsData, AnalyticsRange, ConversationTimes, HourCounts};
use larachat_core::id::{ConversationId, ProjectId};
use larachat_core::model::{ActorKind, Conversation, ConversationStatus, Message};

use super::codec::{get_opt_time, get_time, ms, sql_error};
use crate::{StoreError, StoreResult};

const HOUR_MS: i64 = 3_600_000;

fn hour_of(at: DateTime<Utc>) -> i64 {
    ms(at).div_euclid(HOUR_MS) * HOUR_MS
}

/// Rolls up a message just stored (in its savepoint).
pub(crate) fn message_appended(conn: &Connection, m: &Message) -> StoreResult<()> {
    let pid = m.project_id.as_uuid().as_bytes();
    let cid = m.conversation_id.as_uuid().as_bytes();
    let hour = hour_of(m.created_at);
    let kind = m.sender.kind;
    let one = |k: ActorKind| i64::from(kind == k);
    conn.prepare_cached(
        "INSERT INTO analytics_hours (project_id, hour, end_user, agent, bot, system) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (project_id, hour) DO UPDATE SET \
         end_user = end_user + excluded.end_user, agent = agent + excluded.agent, \
         bot = bot + excluded.bot, system = system + excluded.system",
    )
    .and_then(|mut s| {
        s.execute(params![
            pid,
            hour,
            one(ActorKind::EndUser),
            one(ActorKind::Agent),
            one(ActorKind::Bot),
            one(ActorKind::System)
        ])
    })
    .map_err(sql_error)?;
    conn.prepare_cached(
        "INSERT OR IGNORE INTO analytics_active (project_id, hour, conversation_id) \
         VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut s| s.execute(params![pid, hour, cid]))
    .map_err(sql_error)?;
    // The writer appends a conversation's messages in seq order, so "the first" is the first
    // one this code sees.
    let sql = match kind {
        ActorKind::EndUser => {
            "UPDATE analytics_conversations SET first_user_message_at = ?3 \
             WHERE project_id = ?1 AND conversation_id = ?2 AND first_user_message_at IS NULL"
        }
        ActorKind::Agent | ActorKind::Bot => {
            "UPDATE analytics_conversations SET first_response_at = ?3 \
             WHERE project_id = ?1 AND conversation_id = ?2 \
             AND first_user_message_at IS NOT NULL AND first_response_at IS NULL"
        }
        ActorKind::System => return Ok(()),
    };
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute(params![pid, cid, ms(m.created_at)]))
        .map_err(sql_error)?;
    Ok(())
}

/// Records a conversation just created (in its savepoint).
pub(crate) fn conversation_created(conn: &Connection, c: &Conversation) -> StoreResult<()> {
    let closed_at = (c.status == ConversationStatus::Closed).then(|| ms(c.created_at));
    conn.prepare_cached(
        "INSERT OR IGNORE INTO analytics_conversations \
         (project_id, conversation_id, created_at, closed_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| {
        s.execute(params![
            c.project_id.as_uuid().as_bytes(),
            c.id.as_uuid().as_bytes(),
            ms(c.created_at),
            closed_at
        ])
    })
    .map_err(sql_error)?;
    Ok(())
}

/// Records a status change at `at`: closing sets `closed_at`, reopening clears it.
pub(crate) fn status_changed(
    conn: &Connection,
    project: ProjectId,
    id: ConversationId,
    before: ConversationStatus,
    after: ConversationStatus,
    at: DateTime<Utc>,
) -> StoreResult<()> {
    if before == after {
        return Ok(());
    }
    let closed_at = (after == ConversationStatus::Closed).then(|| ms(at));
    conn.prepare_cached(
        "UPDATE analytics_conversations SET closed_at = ?3 \
         WHERE project_id = ?1 AND conversation_id = ?2",
    )
    .and_then(|mut s| {
        s.execute(params![
            project.as_uuid().as_bytes(),
            id.as_uuid().as_bytes(),
            closed_at
        ])
    })
    .map_err(sql_error)?;
    Ok(())
}

/// The rollups of `range` (in one read transaction, so one snapshot).
pub(crate) fn read(
    conn: &Connection,
    project: ProjectId,
    range: &AnalyticsRange,
) -> StoreResult<AnalyticsData> {
    let pid = project.as_uuid().as_bytes();
    let (from, to) = (ms(range.from()), ms(range.to()));
    let hours = conn
        .prepare_cached(
            "SELECT hour, end_user, agent, bot, system FROM analytics_hours \
             WHERE project_id = ?1 AND hour >= ?2 AND hour < ?3",
        )
        .and_then(|mut s| {
            s.query_map(params![pid, from, to], |r| {
                Ok(HourCounts {
                    hour: get_time(r, 0)?,
                    end_user: r.get::<_, i64>(1)?.max(0) as u64,
                    agent: r.get::<_, i64>(2)?.max(0) as u64,
                    bot: r.get::<_, i64>(3)?.max(0) as u64,
                    system: r.get::<_, i64>(4)?.max(0) as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_error)?;
    let active: i64 = conn
        .prepare_cached(
            "SELECT COUNT(DISTINCT conversation_id) FROM analytics_active \
             WHERE project_id = ?1 AND hour >= ?2 AND hour < ?3",
        )
        .and_then(|mut s| s.query_row(params![pid, from, to], |r| r.get(0)))
        .map_err(sql_error)?;
    let conversations = conn
        .prepare_cached(
            "SELECT created_at, first_user_message_at, first_response_at, closed_at \
             FROM analytics_conversations \
             WHERE project_id = ?1 AND created_at >= ?2 AND created_at < ?3",
        )
        .and_then(|mut s| {
            s.query_map(params![pid, from, to], |r| {
                Ok(ConversationTimes {
                    created_at: get_time(r, 0)?,
                    first_user_message_at: get_opt_time(r, 1)?,
                    first_response_at: get_opt_time(r, 2)?,
                    closed_at: get_opt_time(r, 3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_error)?;
    let count_status = |status: ConversationStatus| -> StoreResult<u64> {
        let n: i64 = conn
            .prepare_cached(
                "SELECT COUNT(*) FROM conversations WHERE project_id = ?1 AND status = ?2",
            )
            .and_then(|mut s| s.query_row(params![pid, status.as_str()], |r| r.get(0)))
            .map_err(sql_error)?;
        u64::try_from(n).map_err(|_| StoreError::Internal("negative count".into()))
    };
    Ok(AnalyticsData {
        hours,
        active_conversations: active.max(0) as u64,
        conversations,
        open: count_status(ConversationStatus::Open)?,
        closed: count_status(ConversationStatus::Closed)?,
    })
}
