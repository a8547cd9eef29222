//! The SQL of the event outbox (`events`) and of consumer checkpoints (`event_consumers`).
//!
//! [`insert`] is called by the write functions of `queries`, inside the savepoint of the change
//! itself, with the event built by the one [`DomainEvent`] builder of its kind: if the change
//! rolls back, so does its event.

use rusqlite::{Connection, OptionalExtension, params};

use larachat_core::event::DomainEvent;
use larachat_core::model;

use super::codec::{ms, sql_error};
use crate::{StoreError, StoreResult};

/// Appends `event` to the outbox (in the caller's transaction).
pub(crate) fn insert(conn: &Connection, event: &DomainEvent) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO events (id, project_id, kind, occurred_at, body) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| {
        s.execute(params![
            event.id.as_uuid().as_bytes(),
            event.project_id.as_uuid().as_bytes(),
            event.kind().name(),
            ms(event.occurred_at),
            event.to_json()
        ])
    })
    .map_err(sql_error)?;
    Ok(())
}

/// Up to `limit` events after `position` (exclusive), in position (= commit) order.
pub(crate) fn after(
    conn: &Connection,
    position: i64,
    limit: usize,
) -> StoreResult<Vec<(i64, DomainEvent)>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT position, body FROM events WHERE position > ?1 ORDER BY position LIMIT ?2",
        )
        .map_err(sql_error)?;
    let rows = stmt
        .query_map(params![position, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .map_err(sql_error)?;
    let mut out = Vec::new();
    for row in rows {
        let (pos, body) = row.map_err(sql_error)?;
        let event = DomainEvent::from_json(&body).map_err(|e| {
            StoreError::Internal(format!("event at position {pos} does not parse: {e}"))
        })?;
        out.push((pos, event));
    }
    Ok(out)
}

/// The consumer's durable checkpoint, registering a new consumer at 0 (nothing handled yet)
/// so that trimming keeps everything for it from now on.
pub(crate) fn register(conn: &Connection, name: &str) -> StoreResult<i64> {
    conn.prepare_cached(
        "INSERT INTO event_consumers (name, checkpoint, updated_at) VALUES (?1, 0, ?2) \
         ON CONFLICT (name) DO NOTHING",
    )
    .and_then(|mut s| s.execute(params![name, ms(model::now())]))
    .map_err(sql_error)?;
    conn.prepare_cached("SELECT checkpoint FROM event_consumers WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
        .map(Option::unwrap_or_default)
        .map_err(sql_error)
}

/// Moves the consumer's checkpoint forward to `position` (never backwards).
pub(crate) fn save_checkpoint(conn: &Connection, name: &str, position: i64) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO event_consumers (name, checkpoint, updated_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET checkpoint = max(checkpoint, excluded.checkpoint), \
         updated_at = excluded.updated_at",
    )
    .and_then(|mut s| s.execute(params![name, position, ms(model::now())]))
    .map_err(sql_error)?;
    Ok(())
}

/// [`save_checkpoint`] for each `(consumer, position)`.
pub(crate) fn save_checkpoints(
    conn: &Connection,
    checkpoints: &[(String, i64)],
) -> StoreResult<()> {
    checkpoints
        .iter()
        .try_for_each(|(name, position)| save_checkpoint(conn, name, *position))
}

/// Deletes events that occurred before `before_ms` and that every known consumer has passed.
/// Returns the number deleted.
pub(crate) fn trim(conn: &Connection, before_ms: i64) -> StoreResult<usize> {
    conn.prepare_cached(
        "DELETE FROM events WHERE occurred_at < ?1 \
         AND position <= coalesce((SELECT min(checkpoint) FROM event_consumers), \
                                  (SELECT max(position) FROM events))",
    )
    .and_then(|mut s| s.execute([before_ms]))
    .map_err(sql_error)
}
