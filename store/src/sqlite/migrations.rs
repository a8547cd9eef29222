//! Schema migrations, embedded in the binary.
//!
//! Migration `n` (1-based) is `MIGRATIONS[n - 1]`. The number of applied migrations is the
//! database's `PRAGMA user_version`, which lives in the file header and changes inside the same
//! transaction as the migration itself: a crash mid-migration leaves the previous version.
//! Migrations are append-only: never edit one that has shipped, add a new one.

use rusqlite::{Connection, TransactionBehavior};

use super::codec::sql_error;
use crate::{StoreError, StoreResult};

/// Every migration, in order.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_message_seq.sql"),
    include_str!("migrations/0003_events.sql"),
    include_str!("migrations/0004_events_drop_id_index.sql"),
    include_str!("migrations/0005_conversation_assignee.sql"),
    include_str!("migrations/0006_plans_usage.sql"),
    include_str!("migrations/0007_usage_storage.sql"),
    include_str!("migrations/0008_analytics.sql"),
    include_str!("migrations/0009_edge_usage.sql"),
    include_str!("migrations/0010_members.sql"),
    include_str!("migrations/0011_conversation_keys.sql"),
    include_str!("migrations/0012_search.sql"),
    include_str!("migrations/0013_backfills.sql"),
];

/// The schema version this binary writes and understands.
pub(crate) const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the database up to [`SCHEMA_VERSION`]. Returns the number of migrations applied.
///
/// Refuses a database whose version is newer than this binary: running old code on a newer
/// schema could silently corrupt data.
pub(crate) fn migrate(conn: &mut Connection) -> StoreResult<usize> {
    let mut applied = 0;
    loop {
        // Re-read the version inside an IMMEDIATE transaction (it holds the write lock), so two
        // processes opening the same file never apply a migration twice.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_error)?;
        let version = user_version(&tx)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Internal(format!(
                "database schema version {version} is newer than this binary supports \
                 ({SCHEMA_VERSION}); upgrade larachat"
            )));
        }
        if version == SCHEMA_VERSION {
            tx.commit().map_err(sql_error)?;
            return Ok(applied);
        }
        let sql = MIGRATIONS[version as usize];
        tx.execute_batch(sql).map_err(sql_error)?;
        tx.pragma_update(None, "user_version", version + 1)
            .map_err(sql_error)?;
        tx.commit().map_err(sql_error)?;
        tracing::info!(version = version + 1, "applied store migration");
        applied += 1;
    }
}

/// The schema version recorded in the database file.
pub(crate) fn user_version(conn: &Connection) -> StoreResult<u32> {
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql_error)?;
    u32::try_from(v).map_err(|_| StoreError::Internal(format!("invalid schema version {v}")))
}
