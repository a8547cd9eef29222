//! The search index backfill: index rows for the conversations and messages stored before the
//! index existed (migration 12), written once, in the background, after an upgrade.
//!
//! The walk is in primary-key order, in bounded batches, each one writer job (so live writes
//! interleave with it and it never holds the write lock for long): phase 0 walks
//! `conversations` (subject and members' profiles, [`search::conversation_keys`]), phase 1
//! walks `messages` ([`larachat_core::search::message_keys`]). Each batch moves the cursor in
//! the `backfills` row (migration 13) in the same transaction as the index rows it writes, so
//! a killed process resumes after the last committed batch; `done_at` marks it finished. The
//! rows are the same ones live writes produce and inserting them is set-like, so a batch that
//! runs twice, or runs beside the live write of the same conversation, changes nothing more.

use rusqlite::{Connection, OptionalExtension, params};

use uuid::Uuid;

use larachat_core::id::{ConversationId, ProjectId};

use super::codec::{self, sql_error};
use super::{queries, search};
use crate::StoreResult;

/// The name of the search backfill's row in `backfills`.
pub(crate) const SEARCH: &str = "search";
/// Conversations indexed per batch (each reads its members' profiles).
pub(crate) const CONVERSATIONS_PER_BATCH: usize = 200;
/// Messages indexed per batch.
pub(crate) const MESSAGES_PER_BATCH: usize = 300;

const PHASE_CONVERSATIONS: i64 = 0;
const PHASE_MESSAGES: i64 = 1;

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) conversations: u64,
    pub(crate) messages: u64,
    /// The backfill is finished (by this batch or before it).
    pub(crate) done: bool,
    /// It was finished before this batch (nothing was written).
    pub(crate) was_done: bool,
}

/// Runs the next batch of the search backfill (inside the writer's transaction).
pub(crate) fn search_step(conn: &Connection, now_ms: i64) -> StoreResult<Step> {
    let row: Option<(i64, Option<Vec<u8>>, Option<i64>)> = conn
        .query_row(
            "SELECT phase, after, done_at FROM backfills WHERE name = ?1",
            [SEARCH],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(sql_error)?;
    let Some((phase, after, done_at)) = row else {
        // No row: nothing to backfill (never the case after migration 13).
        return Ok(Step {
            done: true,
            was_done: true,
            ..Step::default()
        });
    };
    if done_at.is_some() {
        return Ok(Step {
            done: true,
            was_done: true,
            ..Step::default()
        });
    }
    let mut step = Step::default();
    let (phase, after) = match phase {
        PHASE_CONVERSATIONS => {
            let (n, last) = conversations_batch(conn, after.as_deref())?;
            step.conversations = n as u64;
            match last {
                Some(last) if n == CONVERSATIONS_PER_BATCH => (PHASE_CONVERSATIONS, Some(last)),
                _ => (PHASE_MESSAGES, None),
            }
        }
        _ => {
            let (n, last) = messages_batch(conn, after.as_deref())?;
            step.messages = n as u64;
            match last {
                Some(last) if n == MESSAGES_PER_BATCH => (PHASE_MESSAGES, Some(last)),
                _ => {
                    step.done = true;
                    (PHASE_MESSAGES, None)
                }
            }
        }
    };
    conn.prepare_cached(
        "UPDATE backfills SET phase = ?2, after = ?3, done_at = ?4 WHERE name = ?1",
    )
    .and_then(|mut s| s.execute(params![SEARCH, phase, after, step.done.then_some(now_ms)]))
    .map_err(sql_error)?;
    Ok(step)
}

/// Indexes the conversations after `after` (`project_id || id`); returns how many and the
/// last one's key.
fn conversations_batch(
    conn: &Connection,
    after: Option<&[u8]>,
) -> StoreResult<(usize, Option<Vec<u8>>)> {
    let (p, c) = split2(after);
    let sql = format!(
        "SELECT project_id, id, subject FROM conversations {} ORDER BY project_id, id LIMIT ?3",
        if p.is_some() {
            "WHERE (project_id, id) > (?1, ?2)"
        } else {
            "WHERE ?1 IS NULL AND ?2 IS NULL"
        }
    );
    let rows: Vec<(Uuid, Uuid, Option<String>)> = conn
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(params![p, c, CONVERSATIONS_PER_BATCH as i64], |r| {
                Ok((codec::get_uuid(r, 0)?, codec::get_uuid(r, 1)?, r.get(2)?))
            })?
            .collect()
        })
        .map_err(sql_error)?;
    let mut last = None;
    for (p, c, subject) in &rows {
        let project = ProjectId::from_uuid(*p);
        let id = ConversationId::from_uuid(*c);
        let members = queries::members(conn, project, id).map_err(sql_error)?;
        let keys = search::conversation_keys(conn, project, subject.as_deref(), &members)?;
        search::index(conn, project, id, &keys)?;
        last = Some([p.as_bytes().as_slice(), c.as_bytes()].concat());
    }
    Ok((rows.len(), last))
}

/// Indexes the messages after `after` (`project_id || conversation_id || id`); returns how
/// many and the last one's key.
fn messages_batch(
    conn: &Connection,
    after: Option<&[u8]>,
) -> StoreResult<(usize, Option<Vec<u8>>)> {
    let (p, c, m) = split3(after);
    let sql = format!(
        "SELECT project_id, conversation_id, id, text FROM messages {} \
         ORDER BY project_id, conversation_id, id LIMIT ?4",
        if p.is_some() {
            "WHERE (project_id, conversation_id, id) > (?1, ?2, ?3)"
        } else {
            "WHERE ?1 IS NULL AND ?2 IS NULL AND ?3 IS NULL"
        }
    );
    let rows: Vec<(Uuid, Uuid, Uuid, String)> = conn
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(params![p, c, m, MESSAGES_PER_BATCH as i64], |r| {
                Ok((
                    codec::get_uuid(r, 0)?,
                    codec::get_uuid(r, 1)?,
                    codec::get_uuid(r, 2)?,
                    r.get(3)?,
                ))
            })?
            .collect()
        })
        .map_err(sql_error)?;
    let mut last = None;
    for (p, c, m, text) in &rows {
        search::index(
            conn,
            ProjectId::from_uuid(*p),
            ConversationId::from_uuid(*c),
            &larachat_core::search::message_keys(text),
        )?;
        last = Some([p.as_bytes().as_slice(), c.as_bytes(), m.as_bytes()].concat());
    }
    Ok((rows.len(), last))
}

fn split2(after: Option<&[u8]>) -> (Option<&[u8]>, Option<&[u8]>) {
    match after {
        Some(a) if a.len() == 32 => (Some(&a[..16]), Some(&a[16..])),
        _ => (None, None),
    }
}

/// A cursor key cut into its three 16-byte parts (or three NULLs).
type Key3<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, Option<&'a [u8]>);

fn split3(after: Option<&[u8]>) -> Key3<'_> {
    match after {
        Some(a) if a.len() == 48 => (Some(&a[..16]), Some(&a[16..32]), Some(&a[32..])),
        _ => (None, None, None),
    }
}
