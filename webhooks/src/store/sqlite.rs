//! The single-node backend: one SQLite file (WAL), one connection behind a lock, every call
//! on the blocking pool. Webhook traffic is an event's worth of rows per endpoint, far below
//! what one connection does; a pool would only add contention on the one writer.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use larachat_core::id::{EventId, ProjectId};

use super::{
    MAX_ENDPOINTS_PER_PROJECT, WebhookStore, WebhookStoreError, WebhookStoreResult, clamp_limit,
};
use crate::model::{
    Attempt, Delivery, DeliveryQuery, DeliveryStatus, Endpoint, EndpointId, EventFilter,
    event_id_floor,
};
use crate::signing::Secret;

/// Migrations, applied in order and tracked by `PRAGMA user_version`.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE endpoints (
    project_id   BLOB NOT NULL,
    id           BLOB NOT NULL,
    url          TEXT NOT NULL,
    description  TEXT NOT NULL,
    filter       TEXT NOT NULL,
    enabled      INTEGER NOT NULL,
    disabled_reason TEXT,
    secret       TEXT NOT NULL,
    previous_secret TEXT,
    previous_expires_at INTEGER,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (project_id, id)
) WITHOUT ROWID;
CREATE TABLE deliveries (
    project_id   BLOB NOT NULL,
    endpoint_id  BLOB NOT NULL,
    event_id     BLOB NOT NULL,
    event        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    status       TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    series_attempts INTEGER NOT NULL,
    series_started_at INTEGER NOT NULL,
    next_attempt_at INTEGER,
    last_response_code INTEGER,
    lease_until  INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (project_id, endpoint_id, event_id)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_finished ON deliveries (updated_at) WHERE status != 'pending';
CREATE TABLE attempts (
    project_id   BLOB NOT NULL,
    endpoint_id  BLOB NOT NULL,
    event_id     BLOB NOT NULL,
    attempt      INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    succeeded    INTEGER NOT NULL,
    response_code INTEGER,
    response_body TEXT NOT NULL,
    duration_ms  INTEGER NOT NULL,
    error        TEXT,
    next_attempt_at INTEGER,
    PRIMARY KEY (project_id, endpoint_id, event_id, attempt)
) WITHOUT ROWID;
CREATE INDEX attempts_at ON attempts (at);
"#];

/// The SQLite webhook store.
#[derive(Clone)]
pub struct SqliteWebhookStore {
    conn: Arc<Mutex<Connection>>,
    /// Attempts older than this many days are deleted as new ones are logged (the TTL).
    retention_days: u32,
    /// When the log was last trimmed (ms): at most once a minute, not on every attempt.
    last_trim: Arc<AtomicI64>,
}

impl SqliteWebhookStore {
    /// Opens (creating and migrating) `path`.
    pub fn open(path: &Path, retention_days: u32) -> WebhookStoreResult<Self> {
        let conn = Connection::open(path).map_err(unavailable)?;
        Self::init(conn, retention_days)
    }

    /// A private in-memory database (tests).
    pub fn in_memory() -> WebhookStoreResult<Self> {
        Self::init(Connection::open_in_memory().map_err(unavailable)?, 30)
    }

    fn init(conn: Connection, retention_days: u32) -> WebhookStoreResult<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(unavailable)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(unavailable)?;
        let version: usize = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(unavailable)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            conn.execute_batch(&format!(
                "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
                i + 1
            ))
            .map_err(unavailable)?;
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            retention_days,
            last_trim: Arc::new(AtomicI64::new(0)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> WebhookStoreResult<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock()))
            .await
            .map_err(|e| WebhookStoreError::Unavailable(e.to_string()))?
            .map_err(|e| match e {
                rusqlite::Error::FromSqlConversionFailure(_, _, e) => {
                    WebhookStoreError::Corrupt(e.to_string())
                }
                e => unavailable(e),
            })
    }
}

fn unavailable(e: rusqlite::Error) -> WebhookStoreError {
    WebhookStoreError::Unavailable(e.to_string())
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn corrupt(what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("bad {what}").into(),
    )
}

fn uuid_of(row: &Row<'_>, i: usize) -> rusqlite::Result<Uuid> {
    let b: Vec<u8> = row.get(i)?;
    Uuid::from_slice(&b).map_err(|_| corrupt("uuid"))
}

const ENDPOINT_COLS: &str = "project_id, id, url, description, filter, enabled, disabled_reason, \
     secret, previous_secret, previous_expires_at, created_at, updated_at";

fn endpoint_row(row: &Row<'_>) -> rusqlite::Result<Endpoint> {
    let secret: String = row.get(7)?;
    let prev: Option<String> = row.get(8)?;
    let prev_at: Option<i64> = row.get(9)?;
    let previous_secret = match (prev, prev_at) {
        (Some(s), Some(at)) => Some((Secret::parse(&s).map_err(|_| corrupt("secret"))?, time(at))),
        _ => None,
    };
    Ok(Endpoint {
        project_id: ProjectId::from_uuid(uuid_of(row, 0)?),
        id: EndpointId::from_uuid(uuid_of(row, 1)?),
        url: row.get(2)?,
        description: row.get(3)?,
        filter: EventFilter::from_stored(&row.get::<_, String>(4)?),
        enabled: row.get(5)?,
        disabled_reason: row.get(6)?,
        secret: Secret::parse(&secret).map_err(|_| corrupt("secret"))?,
        previous_secret,
        created_at: time(row.get(10)?),
        updated_at: time(row.get(11)?),
    })
}

const DELIVERY_COLS: &str = "project_id, endpoint_id, event_id, event, payload, status, \
     attempts, series_attempts, series_started_at, next_attempt_at, last_response_code, \
     created_at, updated_at";

fn delivery_row(row: &Row<'_>) -> rusqlite::Result<Delivery> {
    let status: String = row.get(5)?;
    Ok(Delivery {
        project_id: ProjectId::from_uuid(uuid_of(row, 0)?),
        endpoint_id: EndpointId::from_uuid(uuid_of(row, 1)?),
        event_id: EventId::from_uuid(uuid_of(row, 2)?),
        event: row.get(3)?,
        payload: row.get(4)?,
        status: DeliveryStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
        attempts: row.get(6)?,
        series_attempts: row.get(7)?,
        series_started_at: time(row.get(8)?),
        next_attempt_at: row.get::<_, Option<i64>>(9)?.map(time),
        last_response_code: row.get(10)?,
        created_at: time(row.get(11)?),
        updated_at: time(row.get(12)?),
    })
}

const ATTEMPT_COLS: &str = "project_id, endpoint_id, event_id, attempt, at, succeeded, \
     response_code, response_body, duration_ms, error, next_attempt_at";

fn attempt_row(row: &Row<'_>) -> rusqlite::Result<Attempt> {
    Ok(Attempt {
        project_id: ProjectId::from_uuid(uuid_of(row, 0)?),
        endpoint_id: EndpointId::from_uuid(uuid_of(row, 1)?),
        event_id: EventId::from_uuid(uuid_of(row, 2)?),
        attempt: row.get(3)?,
        at: time(row.get(4)?),
        succeeded: row.get(5)?,
        response_code: row.get(6)?,
        response_body: row.get(7)?,
        duration_ms: row.get(8)?,
        error: row.get(9)?,
        next_attempt_at: row.get::<_, Option<i64>>(10)?.map(time),
    })
}

fn b(u: &Uuid) -> &[u8] {
    u.as_bytes()
}

#[async_trait]
impl WebhookStore for SqliteWebhookStore {
    async fn create_endpoint(&self, e: &Endpoint) -> WebhookStoreResult<()> {
        let e = e.clone();
        let inserted = self
            .with(move |c| {
                let tx = c.transaction()?;
                let n: usize = tx.query_row(
                    "SELECT count(*) FROM endpoints WHERE project_id = ?1",
                    [b(e.project_id.as_uuid())],
                    |r| r.get(0),
                )?;
                if n >= MAX_ENDPOINTS_PER_PROJECT {
                    return Ok(false);
                }
                tx.execute(
                    &format!("INSERT INTO endpoints ({ENDPOINT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
                    params![
                        b(e.project_id.as_uuid()),
                        b(e.id.as_uuid()),
                        e.url,
                        e.description,
                        e.filter.to_stored(),
                        e.enabled,
                        e.disabled_reason,
                        e.secret.expose(),
                        e.previous_secret.as_ref().map(|(s, _)| s.expose()),
                        e.previous_secret.as_ref().map(|(_, t)| ms(*t)),
                        ms(e.created_at),
                        ms(e.updated_at),
                    ],
                )?;
                tx.commit()?;
                Ok(true)
            })
            .await?;
        if inserted {
            Ok(())
        } else {
            Err(WebhookStoreError::TooManyEndpoints)
        }
    }

    async fn get_endpoint(
        &self,
        project: ProjectId,
        id: EndpointId,
    ) -> WebhookStoreResult<Option<Endpoint>> {
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {ENDPOINT_COLS} FROM endpoints WHERE project_id = ?1 AND id = ?2"),
                [b(project.as_uuid()), b(id.as_uuid())],
                endpoint_row,
            )
            .optional()
        })
        .await
    }

    async fn list_endpoints(&self, project: ProjectId) -> WebhookStoreResult<Vec<Endpoint>> {
        self.with(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {ENDPOINT_COLS} FROM endpoints WHERE project_id = ?1 ORDER BY id"
            ))?;
            st.query_map([b(project.as_uuid())], endpoint_row)?
                .collect()
        })
        .await
    }

    async fn update_endpoint(&self, e: &Endpoint) -> WebhookStoreResult<bool> {
        let e = e.clone();
        self.with(move |c| {
            let n = c.execute(
                "UPDATE endpoints SET url = ?3, description = ?4, filter = ?5, enabled = ?6, \
                 disabled_reason = ?7, secret = ?8, previous_secret = ?9, \
                 previous_expires_at = ?10, updated_at = ?11 WHERE project_id = ?1 AND id = ?2",
                params![
                    b(e.project_id.as_uuid()),
                    b(e.id.as_uuid()),
                    e.url,
                    e.description,
                    e.filter.to_stored(),
                    e.enabled,
                    e.disabled_reason,
                    e.secret.expose(),
                    e.previous_secret.as_ref().map(|(s, _)| s.expose()),
                    e.previous_secret.as_ref().map(|(_, t)| ms(*t)),
                    ms(e.updated_at),
                ],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_endpoint(
        &self,
        project: ProjectId,
        id: EndpointId,
    ) -> WebhookStoreResult<bool> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "DELETE FROM endpoints WHERE project_id = ?1 AND id = ?2",
                [b(project.as_uuid()), b(id.as_uuid())],
            )?;
            // Nothing more to attempt for a deleted endpoint; the log stays until its TTL.
            tx.execute(
                "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL \
                 WHERE project_id = ?1 AND endpoint_id = ?2 AND status = 'pending'",
                [b(project.as_uuid()), b(id.as_uuid())],
            )?;
            tx.commit()?;
            Ok(n == 1)
        })
        .await
    }

    async fn enqueue(&self, d: &Delivery) -> WebhookStoreResult<bool> {
        Ok(self.enqueue_many(std::slice::from_ref(d)).await? == 1)
    }

    async fn enqueue_many(&self, ds: &[Delivery]) -> WebhookStoreResult<usize> {
        if ds.is_empty() {
            return Ok(0);
        }
        let ds = ds.to_vec();
        self.with(move |c| {
            // One transaction (one WAL commit) for the whole fan-out.
            let tx = c.transaction()?;
            let mut new = 0;
            {
                let mut st = tx.prepare_cached(&format!(
                    "INSERT INTO deliveries ({DELIVERY_COLS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
                     ON CONFLICT DO NOTHING"
                ))?;
                for d in &ds {
                    new += st.execute(params![
                        b(d.project_id.as_uuid()),
                        b(d.endpoint_id.as_uuid()),
                        b(d.event_id.as_uuid()),
                        d.event,
                        d.payload,
                        d.status.as_str(),
                        d.attempts,
                        d.series_attempts,
                        ms(d.series_started_at),
                        d.next_attempt_at.map(ms),
                        d.last_response_code,
                        ms(d.created_at),
                        ms(d.updated_at),
                    ])?;
                }
            }
            tx.commit()?;
            Ok(new)
        })
        .await
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> WebhookStoreResult<Vec<Delivery>> {
        let limit = clamp_limit(limit);
        self.with(move |c| {
            // One statement: the rows it returns are leased to this caller only (the
            // connection is the single writer, and the lease excludes other processes'
            // stores on the same file through SQLite's write lock).
            let mut st = c.prepare_cached(&format!(
                "UPDATE deliveries SET lease_until = ?2 WHERE rowid IN (\
                   SELECT rowid FROM deliveries WHERE status = 'pending' \
                   AND next_attempt_at <= ?1 AND lease_until <= ?1 \
                   ORDER BY next_attempt_at LIMIT ?3) RETURNING {DELIVERY_COLS}"
            ))?;
            st.query_map(params![ms(now), ms(lease_until), limit], delivery_row)?
                .collect()
        })
        .await
    }

    async fn record_attempt(&self, a: &Attempt, d: &Delivery) -> WebhookStoreResult<()> {
        self.record_attempts(&[(a.clone(), d.clone())]).await
    }

    async fn record_attempts(&self, batch: &[(Attempt, Delivery)]) -> WebhookStoreResult<()> {
        let Some(at) = batch.iter().map(|(a, _)| ms(a.at)).max() else {
            return Ok(());
        };
        let batch = batch.to_vec();
        let retention_ms = i64::from(self.retention_days) * 86_400_000;
        let last = self.last_trim.load(Ordering::Relaxed);
        let trim = at - last >= 60_000
            && self
                .last_trim
                .compare_exchange(last, at, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        self.with(move |c| {
            // One transaction (one WAL commit) for the batch.
            let tx = c.transaction()?;
            {
                let mut insert = tx.prepare_cached(&format!(
                    "INSERT OR REPLACE INTO attempts ({ATTEMPT_COLS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ))?;
                let mut update = tx.prepare_cached(
                    "UPDATE deliveries SET status = ?4, attempts = ?5, series_attempts = ?6, \
                     series_started_at = ?7, next_attempt_at = ?8, last_response_code = ?9, \
                     updated_at = ?10, lease_until = 0 \
                     WHERE project_id = ?1 AND endpoint_id = ?2 AND event_id = ?3",
                )?;
                for (a, d) in &batch {
                    insert.execute(params![
                        b(a.project_id.as_uuid()),
                        b(a.endpoint_id.as_uuid()),
                        b(a.event_id.as_uuid()),
                        a.attempt,
                        ms(a.at),
                        a.succeeded,
                        a.response_code,
                        a.response_body,
                        a.duration_ms,
                        a.error,
                        a.next_attempt_at.map(ms),
                    ])?;
                    update.execute(params![
                        b(d.project_id.as_uuid()),
                        b(d.endpoint_id.as_uuid()),
                        b(d.event_id.as_uuid()),
                        d.status.as_str(),
                        d.attempts,
                        d.series_attempts,
                        ms(d.series_started_at),
                        d.next_attempt_at.map(ms),
                        d.last_response_code,
                        ms(d.updated_at),
                    ])?;
                }
            }
            // The TTL of the log: attempts and finished deliveries past the retention
            // (both through an index; at most once a minute).
            if trim {
                let horizon = at - retention_ms;
                tx.execute("DELETE FROM attempts WHERE at < ?1", [horizon])?;
                tx.execute(
                    "DELETE FROM deliveries WHERE status != 'pending' AND updated_at < ?1",
                    [horizon],
                )?;
            }
            tx.commit()
        })
        .await
    }

    async fn get_delivery(
        &self,
        project: ProjectId,
        endpoint: EndpointId,
        event: EventId,
    ) -> WebhookStoreResult<Option<Delivery>> {
        self.with(move |c| {
            c.query_row(
                &format!(
                    "SELECT {DELIVERY_COLS} FROM deliveries \
                     WHERE project_id = ?1 AND endpoint_id = ?2 AND event_id = ?3"
                ),
                [
                    b(project.as_uuid()),
                    b(endpoint.as_uuid()),
                    b(event.as_uuid()),
                ],
                delivery_row,
            )
            .optional()
        })
        .await
    }

    async fn list_deliveries(
        &self,
        project: ProjectId,
        endpoint: EndpointId,
        q: &DeliveryQuery,
    ) -> WebhookStoreResult<Vec<Delivery>> {
        let q = q.clone();
        self.with(move |c| {
            let after = q.after.map(|e| *e.as_uuid()).unwrap_or(Uuid::nil());
            let since = q.since.map(event_id_floor).unwrap_or(Uuid::nil());
            let low = after.max(since);
            let until = q.until.map(event_id_floor).unwrap_or(Uuid::max());
            let mut st = c.prepare_cached(&format!(
                "SELECT {DELIVERY_COLS} FROM deliveries \
                 WHERE project_id = ?1 AND endpoint_id = ?2 AND event_id > ?3 \
                 AND event_id >= ?4 AND event_id < ?5 AND (?6 IS NULL OR status = ?6) \
                 ORDER BY event_id LIMIT ?7"
            ))?;
            st.query_map(
                params![
                    b(project.as_uuid()),
                    b(endpoint.as_uuid()),
                    b(&after),
                    b(&low),
                    b(&until),
                    q.status.map(|s| s.as_str()),
                    clamp_limit(q.limit),
                ],
                delivery_row,
            )?
            .collect()
        })
        .await
    }

    async fn list_attempts(
        &self,
        project: ProjectId,
        endpoint: EndpointId,
        event: EventId,
    ) -> WebhookStoreResult<Vec<Attempt>> {
        self.with(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {ATTEMPT_COLS} FROM attempts WHERE project_id = ?1 \
                 AND endpoint_id = ?2 AND event_id = ?3 ORDER BY attempt"
            ))?;
            st.query_map(
                [
                    b(project.as_uuid()),
                    b(endpoint.as_uuid()),
                    b(event.as_uuid()),
                ],
                attempt_row,
            )?
            .collect()
        })
        .await
    }

    async fn redeliver(
        &self,
        project: ProjectId,
        endpoint: EndpointId,
        event: EventId,
        now: DateTime<Utc>,
    ) -> WebhookStoreResult<bool> {
        self.with(move |c| {
            let n = c.execute(
                "UPDATE deliveries SET status = 'pending', series_attempts = 0, \
                 series_started_at = ?4, next_attempt_at = ?4, updated_at = ?4, lease_until = 0 \
                 WHERE project_id = ?1 AND endpoint_id = ?2 AND event_id = ?3",
                params![
                    b(project.as_uuid()),
                    b(endpoint.as_uuid()),
                    b(event.as_uuid()),
                    ms(now)
                ],
            )?;
            Ok(n == 1)
        })
        .await
    }
}
