//! The distributed backend: `webhook_*` tables in the cluster's keyspace (created by
//! `larachat-store`'s migrations; [`ScyllaWebhookStore::migrate`] adds these tables with
//! `IF NOT EXISTS`, so it is idempotent and may run on every start).
//!
//! | table | key | notes |
//! |---|---|---|
//! | `webhook_endpoints` | `((project_id), id)` | at most 20 per project |
//! | `webhook_deliveries` | `((project_id, endpoint_id, day), event_id)` | `day` of the event id's time; TTL = retention |
//! | `webhook_attempts` | `((project_id, endpoint_id, day), event_id, attempt)` | TTL = retention |
//! | `webhook_due` | `((shard), due_at, project_id, endpoint_id, event_id)` | the work queue; 16 shards by endpoint |
//!
//! Partitions are bounded: one endpoint's deliveries of one day, and the due queue holds only
//! pending deliveries. Every write to a delivery row is a lightweight transaction (enqueue
//! `IF NOT EXISTS`, claim `IF lease_until <= now`, the rest `IF EXISTS`): mixing Paxos and
//! plain writes on one row can order them wrongly, and the lease is what keeps two workers
//! from attempting one delivery at once. A due row is only a hint: a claim checks it against
//! the delivery (pending and due at that time) and deletes it when stale.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlTimestamp, CqlValue, Row};
use uuid::Uuid;

use larachat_core::id::{EventId, ProjectId};

use super::{
    MAX_ENDPOINTS_PER_PROJECT, WebhookStore, WebhookStoreError, WebhookStoreResult, clamp_limit,
};
use crate::model::{
    Attempt, Delivery, DeliveryQuery, DeliveryStatus, Endpoint, EndpointId, EventFilter,
    event_id_floor, event_time,
};
use crate::signing::Secret;

const SHARDS: i32 = 16;
/// How long a due row may point at a delivery that does not exist yet before a claim deletes
/// it as an orphan: far longer than an enqueue's two writes take.
const ENQUEUE_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
const DAY_MS: i64 = 86_400_000;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS webhook_endpoints (project_id uuid, id uuid, url text, \
     description text, filter text, enabled boolean, disabled_reason text, secret text, \
     previous_secret text, previous_expires_at timestamp, created_at timestamp, \
     updated_at timestamp, PRIMARY KEY ((project_id), id))",
    "CREATE TABLE IF NOT EXISTS webhook_deliveries (project_id uuid, endpoint_id uuid, \
     day bigint, event_id uuid, event text, payload text, status text, attempts int, \
     series_attempts int, series_started_at timestamp, next_attempt_at timestamp, \
     last_response_code int, lease_until timestamp, created_at timestamp, \
     updated_at timestamp, PRIMARY KEY ((project_id, endpoint_id, day), event_id))",
    "CREATE TABLE IF NOT EXISTS webhook_attempts (project_id uuid, endpoint_id uuid, \
     day bigint, event_id uuid, attempt int, at timestamp, succeeded boolean, \
     response_code int, response_body text, duration_ms int, error text, \
     next_attempt_at timestamp, \
     PRIMARY KEY ((project_id, endpoint_id, day), event_id, attempt))",
    // Deleted rows of a queue are tombstones read by the next scan; a short grace keeps
    // them from piling up (the table holds hints only, a resurrected one is harmless).
    "CREATE TABLE IF NOT EXISTS webhook_due (shard int, due_at timestamp, project_id uuid, \
     endpoint_id uuid, event_id uuid, \
     PRIMARY KEY ((shard), due_at, project_id, endpoint_id, event_id)) \
     WITH gc_grace_seconds = 3600",
];

type EndpointRow = (
    Uuid,
    Uuid,
    String,
    String,
    String,
    bool,
    Option<String>,
    String,
    Option<String>,
    Option<CqlTimestamp>,
    CqlTimestamp,
    CqlTimestamp,
);

type DeliveryRow = (
    Uuid,
    Uuid,
    Uuid,
    String,
    String,
    String,
    i32,
    i32,
    CqlTimestamp,
    Option<CqlTimestamp>,
    Option<i32>,
    CqlTimestamp,
    CqlTimestamp,
);

type AttemptRow = (
    Uuid,
    Uuid,
    Uuid,
    i32,
    CqlTimestamp,
    bool,
    Option<i32>,
    Option<String>,
    i32,
    Option<String>,
    Option<CqlTimestamp>,
);

/// The CQL webhook store.
pub struct ScyllaWebhookStore {
    session: Session,
    retention_secs: i32,
    prepared: parking_lot::Mutex<HashMap<&'static str, PreparedStatement>>,
}

fn unavailable(e: impl std::fmt::Display) -> WebhookStoreError {
    WebhookStoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> WebhookStoreError {
    WebhookStoreError::Corrupt(e.to_string())
}

fn ts(t: DateTime<Utc>) -> CqlTimestamp {
    CqlTimestamp(t.timestamp_millis())
}

fn time(t: CqlTimestamp) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.0).unwrap_or_default()
}

fn day_of(event: &EventId) -> i64 {
    event_time(event).timestamp_millis().div_euclid(DAY_MS)
}

fn shard_of(endpoint: &EndpointId) -> i32 {
    i32::from(endpoint.as_uuid().as_bytes()[15]) % SHARDS
}

fn u32_of(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn endpoint_of(r: EndpointRow) -> WebhookStoreResult<Endpoint> {
    let previous_secret = match (r.8, r.9) {
        (Some(s), Some(at)) => Some((Secret::parse(&s).map_err(corrupt)?, time(at))),
        _ => None,
    };
    Ok(Endpoint {
        project_id: ProjectId::from_uuid(r.0),
        id: EndpointId::from_uuid(r.1),
        url: r.2,
        description: r.3,
        filter: EventFilter::from_stored(&r.4),
        enabled: r.5,
        disabled_reason: r.6,
        secret: Secret::parse(&r.7).map_err(corrupt)?,
        previous_secret,
        created_at: time(r.10),
        updated_at: time(r.11),
    })
}

fn delivery_of(r: DeliveryRow) -> WebhookStoreResult<Delivery> {
    Ok(Delivery {
        project_id: ProjectId::from_uuid(r.0),
        endpoint_id: EndpointId::from_uuid(r.1),
        event_id: EventId::from_uuid(r.2),
        event: r.3,
        payload: r.4,
        status: DeliveryStatus::parse(&r.5).ok_or_else(|| corrupt("status"))?,
        attempts: u32_of(r.6),
        series_attempts: u32_of(r.7),
        series_started_at: time(r.8),
        next_attempt_at: r.9.map(time),
        last_response_code: r.10.and_then(|c| u16::try_from(c).ok()),
        created_at: time(r.11),
        updated_at: time(r.12),
    })
}

fn attempt_of(r: AttemptRow) -> Attempt {
    Attempt {
        project_id: ProjectId::from_uuid(r.0),
        endpoint_id: EndpointId::from_uuid(r.1),
        event_id: EventId::from_uuid(r.2),
        attempt: u32_of(r.3),
        at: time(r.4),
        succeeded: r.5,
        response_code: r.6.and_then(|c| u16::try_from(c).ok()),
        response_body: r.7.unwrap_or_default(),
        duration_ms: u32_of(r.8),
        error: r.9,
        next_attempt_at: r.10.map(time),
    }
}

impl ScyllaWebhookStore {
    /// Connects to the cluster and uses `keyspace` (which must exist: `larachat-store`'s
    /// migrations create it). `retention_days` is the TTL of the deliveries log.
    pub async fn connect(
        contact_points: &[String],
        keyspace: &str,
        retention_days: u32,
    ) -> WebhookStoreResult<Self> {
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::LocalQuorum)
            .serial_consistency(Some(SerialConsistency::LocalSerial))
            .request_timeout(Some(std::time::Duration::from_secs(10)))
            .build();
        let session = SessionBuilder::new()
            .known_nodes(contact_points)
            .default_execution_profile_handle(profile.into_handle())
            .build()
            .await
            .map_err(unavailable)?;
        session
            .use_keyspace(keyspace, false)
            .await
            .map_err(unavailable)?;
        let retention_secs = i32::try_from(u64::from(retention_days) * 86_400).unwrap_or(i32::MAX);
        Ok(Self {
            session,
            retention_secs,
            prepared: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// Creates the `webhook_*` tables (idempotent).
    pub async fn migrate(&self) -> WebhookStoreResult<()> {
        for cql in SCHEMA {
            self.session
                .query_unpaged(*cql, ())
                .await
                .map_err(unavailable)?;
        }
        self.session
            .await_schema_agreement()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn stmt(&self, cql: &'static str) -> WebhookStoreResult<PreparedStatement> {
        if let Some(p) = self.prepared.lock().get(cql) {
            return Ok(p.clone());
        }
        let mut p = self.session.prepare(cql).await.map_err(unavailable)?;
        p.set_is_idempotent(!cql.contains(" IF "));
        self.prepared.lock().insert(cql, p.clone());
        Ok(p)
    }

    async fn exec(
        &self,
        cql: &'static str,
        values: impl SerializeRow,
    ) -> WebhookStoreResult<QueryResult> {
        let p = self.stmt(cql).await?;
        self.session
            .execute_unpaged(&p, values)
            .await
            .map_err(unavailable)
    }

    async fn rows<R>(
        &self,
        cql: &'static str,
        values: impl SerializeRow,
    ) -> WebhookStoreResult<Vec<R>>
    where
        R: for<'f> DeserializeRow<'f, 'f>,
    {
        let result = self
            .exec(cql, values)
            .await?
            .into_rows_result()
            .map_err(corrupt)?;
        let rows = result.rows::<R>().map_err(corrupt)?;
        rows.map(|r| r.map_err(corrupt)).collect()
    }

    async fn lwt(&self, cql: &'static str, values: impl SerializeRow) -> WebhookStoreResult<bool> {
        let result = self
            .exec(cql, values)
            .await?
            .into_rows_result()
            .map_err(corrupt)?;
        let row: Row = result.first_row().map_err(corrupt)?;
        match row.columns.first() {
            Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
            _ => Err(corrupt("[applied]")),
        }
    }

    async fn read_delivery(
        &self,
        project: ProjectId,
        endpoint: EndpointId,
        event: EventId,
    ) -> WebhookStoreResult<Option<Delivery>> {
        const Q: &str = "SELECT project_id, endpoint_id, event_id, event, payload, status, \
             attempts, series_attempts, series_started_at, next_attempt_at, \
             last_response_code, created_at, updated_at FROM webhook_deliveries \
             WHERE project_id = ? AND endpoint_id = ? AND day = ? AND event_id = ?";
        let rows: Vec<DeliveryRow> = self
            .rows(
                Q,
                (
                    project.as_uuid(),
                    endpoint.as_uuid(),
                    day_of(&event),
                    event.as_uuid(),
                ),
            )
            .await?;
        rows.into_iter().next().map(delivery_of).transpose()
    }

    async fn add_due(&self, d: &Delivery, at: DateTime<Utc>) -> WebhookStoreResult<()> {
        self.exec(
            "INSERT INTO webhook_due (shard, due_at, project_id, endpoint_id, event_id) \
             VALUES (?, ?, ?, ?, ?)",
            (
                shard_of(&d.endpoint_id),
                ts(at),
                d.project_id.as_uuid(),
                d.endpoint_id.as_uuid(),
                d.event_id.as_uuid(),
            ),
        )
        .await?;
        Ok(())
    }

    async fn remove_due(
        &self,
        shard: i32,
        at: CqlTimestamp,
        p: Uuid,
        e: Uuid,
        ev: Uuid,
    ) -> WebhookStoreResult<()> {
        self.exec(
            "DELETE FROM webhook_due WHERE shard = ? AND due_at = ? AND project_id = ? \
             AND endpoint_id = ? AND event_id = ?",
            (shard, at, p, e, ev),
        )
        .await?;
        Ok(())
    }

    /// Stores every column of `d` but the lease (released) if the row exists.
    async fn write_state(&self, d: &Delivery) -> WebhookStoreResult<bool> {
        self.lwt(
            "UPDATE webhook_deliveries USING TTL ? SET status = ?, attempts = ?, \
             series_attempts = ?, series_started_at = ?, next_attempt_at = ?, \
             last_response_code = ?, updated_at = ?, lease_until = ? \
             WHERE project_id = ? AND endpoint_id = ? AND day = ? AND event_id = ? IF EXISTS",
            (
                self.retention_secs,
                d.status.as_str(),
                d.attempts as i32,
                d.series_attempts as i32,
                ts(d.series_started_at),
                d.next_attempt_at.map(ts),
                d.last_response_code.map(i32::from),
                ts(d.updated_at),
                CqlTimestamp(0),
                d.project_id.as_uuid(),
                d.endpoint_id.as_uuid(),
                day_of(&d.event_id),
                d.event_id.as_uuid(),
            ),
        )
        .await
    }

    /// Moves a delivery's due row from its old time to its new one.
    async fn reschedule(&self, old: &Delivery, new: &Delivery) -> WebhookStoreResult<()> {
        if let (DeliveryStatus::Pending, Some(at)) = (new.status, new.next_attempt_at) {
            self.add_due(new, at).await?;
        }
        if let Some(at) = old.next_attempt_at
            && (new.status != DeliveryStatus::Pending || new.next_attempt_at != Some(at))
        {
            self.remove_due(
                shard_of(&old.endpoint_id),
                ts(at),
                *old.project_id.as_uuid(),
                *old.endpoint_id.as_uuid(),
                *old.event_id.as_uuid(),
            )
            .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl WebhookStore for ScyllaWebhookStore {
    async fn create_endpoint(&self, e: &Endpoint) -> WebhookStoreResult<()> {
        // The count and the insert are not one transaction: two concurrent registrations
        // can pass the cap by one each. The cap bounds a partition, not a bill.
        if self.list_endpoints(e.project_id).await?.len() >= MAX_ENDPOINTS_PER_PROJECT {
            return Err(WebhookStoreError::TooManyEndpoints);
        }
        self.exec(
            "INSERT INTO webhook_endpoints (project_id, id, url, description, filter, enabled, \
             disabled_reason, secret, previous_secret, previous_expires_at, created_at, \
             updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                e.project_id.as_uuid(),
                e.id.as_uuid(),
                &e.url,
                &e.description,
                e.filter.to_stored(),
                e.enabled,
                &e.disabled_reason,
                e.secret.expose(),
                e.previous_secret.as_ref().map(|(s, _)| s.expose()),
                e.previous_secret.as_ref().map(|(_, t)| ts(*t)),
                ts(e.created_at),
                ts(e.updated_at),
            ),
        )
        .await?;
        Ok(())
    }

    async fn get_endpoint(
        &self,
        project: ProjectId,
        id: EndpointId,
    ) -> WebhookStoreResult<Option<Endpoint>> {
        const Q: &str = "SELECT project_id, id, url, description, filter, enabled, \
             disabled_reason, secret, previous_secret, previous_expires_at, created_at, \
             updated_at FROM webhook_endpoints WHERE project_id = ? AND id = ?";
        let rows: Vec<EndpointRow> = self.rows(Q, (project.as_uuid(), id.as_uuid())).await?;
        rows.into_iter().next().map(endpoint_of).transpose()
    }

    async fn list_endpoints(&self, project: ProjectId) -> WebhookStoreResult<Vec<Endpoint>> {
        const Q: &str = "SELECT project_id, id, url, description, filter, enabled, \
             disabled_reason, secret, previous_secret, previous_expires_at, created_at, \
             updated_at FROM webhook_endpoints WHERE project_id = ?";
        let rows: Vec<EndpointRow> = self.rows(Q, (project.as_uuid(),)).await?;
        rows.into_iter().map(endpoint_of).collect()
    }

    async fn update_endpoint(&self, e: &Endpoint) -> WebhookStoreResult<bool> {
        self.lwt(
            "UPDATE webhook_endpoints SET url = ?, description = ?, filter = ?, enabled = ?, \
             disabled_reason = ?, secret = ?, previous_secret = ?, previous_expires_at = ?, \
             updated_at = ? WHERE project_id = ? AND id = ? IF EXISTS",
            (
                &e.url,
                &e.description,
                e.filter.to_stored(),
                e.enabled,
                &e.disabled_reason,
                e.secret.expose(),
                e.previous_secret.as_ref().map(|(s, _)| s.expose()),
                e.previous_secret.as_ref().map(|(_, t)| ts(*t)),
                ts(e.updated_at),
                e.project_id.as_uuid(),
                e.id.as_uuid(),
            ),
        )
        .await
    }

    async fn delete_endpoint(
        &self,
        project: ProjectId,
        id: EndpointId,
    ) -> WebhookStoreResult<bool> {
        // Pending deliveries of a deleted endpoint are failed by the worker when it claims
        // them (it finds no endpoint).
        self.lwt(
            "DELETE FROM webhook_endpoints WHERE project_id = ? AND id = ? IF EXISTS",
            (project.as_uuid(), id.as_uuid()),
        )
        .await
    }

    async fn enqueue(&self, d: &Delivery) -> WebhookStoreResult<bool> {
        // The due row first: if the process dies between the two writes, a due row without
        // a delivery is dropped by a claim once it is older than `ENQUEUE_GRACE` (younger
        // ones may be mid-enqueue); the reverse would be a delivery never attempted.
        if let Some(at) = d.next_attempt_at {
            self.add_due(d, at).await?;
        }
        self.lwt(
            "INSERT INTO webhook_deliveries (project_id, endpoint_id, day, event_id, event, \
             payload, status, attempts, series_attempts, series_started_at, next_attempt_at, \
             last_response_code, lease_until, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?",
            (
                d.project_id.as_uuid(),
                d.endpoint_id.as_uuid(),
                day_of(&d.event_id),
                d.event_id.as_uuid(),
                &d.event,
                &d.payload,
                d.status.as_str(),
                d.attempts as i32,
                d.series_attempts as i32,
                ts(d.series_started_at),
                d.next_attempt_at.map(ts),
                d.last_response_code.map(i32::from),
                CqlTimestamp(0),
                ts(d.created_at),
                ts(d.updated_at),
                self.retention_secs,
            ),
        )
        .await
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> WebhookStoreResult<Vec<Delivery>> {
        let limit = clamp_limit(limit);
        let mut out = Vec::new();
        // Start at a different shard each call so one busy shard cannot starve the others.
        let start = (now.timestamp_subsec_millis() as i32) % SHARDS;
        for i in 0..SHARDS {
            if out.len() >= limit {
                break;
            }
            let shard = (start + i) % SHARDS;
            let due: Vec<(CqlTimestamp, Uuid, Uuid, Uuid)> = self
                .rows(
                    "SELECT due_at, project_id, endpoint_id, event_id FROM webhook_due \
                     WHERE shard = ? AND due_at <= ? LIMIT ?",
                    (shard, ts(now), (limit - out.len()) as i32 * 2),
                )
                .await?;
            for (at, p, e, ev) in due {
                if out.len() >= limit {
                    break;
                }
                let (project, endpoint, event) = (
                    ProjectId::from_uuid(p),
                    EndpointId::from_uuid(e),
                    EventId::from_uuid(ev),
                );
                let current = self.read_delivery(project, endpoint, event).await?;
                let live = current.as_ref().is_some_and(|d| {
                    d.status == DeliveryStatus::Pending && d.next_attempt_at == Some(time(at))
                });
                let missing = current.is_none();
                let Some(d) = current.filter(|_| live) else {
                    // `enqueue` writes the due row before the delivery: a missing delivery
                    // may be one another worker is enqueuing right now, and deleting its due
                    // row would leave it pending forever (seen in tests/dist_events.rs with
                    // three workers). Only a row older than the grace is an orphan of an
                    // enqueuer that died between the two writes.
                    if !(missing && time(at) > now - ENQUEUE_GRACE) {
                        self.remove_due(shard, at, p, e, ev).await?;
                    }
                    continue;
                };
                let won = self
                    .lwt(
                        "UPDATE webhook_deliveries SET lease_until = ? WHERE project_id = ? \
                         AND endpoint_id = ? AND day = ? AND event_id = ? \
                         IF lease_until <= ? AND status = 'pending' AND next_attempt_at = ?",
                        (ts(lease_until), p, e, day_of(&event), ev, ts(now), at),
                    )
                    .await?;
                if won {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    async fn record_attempt(&self, a: &Attempt, d: &Delivery) -> WebhookStoreResult<()> {
        let old = self
            .read_delivery(d.project_id, d.endpoint_id, d.event_id)
            .await?;
        self.exec(
            "INSERT INTO webhook_attempts (project_id, endpoint_id, day, event_id, attempt, at, \
             succeeded, response_code, response_body, duration_ms, error, next_attempt_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
            (
                a.project_id.as_uuid(),
                a.endpoint_id.as_uuid(),
                day_of(&a.event_id),
                a.event_id.as_uuid(),
                a.attempt as i32,
                ts(a.at),
                a.succeeded,
                a.response_code.map(i32::from),
                &a.response_body,
                a.duration_ms as i32,
                &a.error,
                a.next_attempt_at.map(ts),
                self.retention_secs,
            ),
        )
        .await?;
        if self.write_state(d).await?
            && let Some(old) = old
        {
            self.reschedule(&old, d).await?;
        }
        Ok(())
    }

    async fn get_delivery(
        &self,
        project: ProjectId,
        endpoint: EndpointId,
        event: EventId,
    ) -> WebhookStoreResult<Option<Delivery>> {
        self.read_delivery(project, endpoint, event).await
    }

    async fn list_deliveries(
        &self,
        project: ProjectId,
        endpoint: EndpointId,
        q: &DeliveryQuery,
    ) -> WebhookStoreResult<Vec<Delivery>> {
        const Q: &str = "SELECT project_id, endpoint_id, event_id, event, payload, status, \
             attempts, series_attempts, series_started_at, next_attempt_at, \
             last_response_code, created_at, updated_at FROM webhook_deliveries \
             WHERE project_id = ? AND endpoint_id = ? AND day = ? AND event_id > ? \
             AND event_id < ? LIMIT ?";
        let limit = clamp_limit(q.limit);
        let now = larachat_core::model::now();
        let retention = chrono::Duration::seconds(i64::from(self.retention_secs));
        let mut low = q.since.map(event_id_floor).unwrap_or(Uuid::nil());
        if let Some(after) = q.after {
            low = low.max(*after.as_uuid());
        }
        // `event_id > low` is exclusive: step back one so `since` is inclusive.
        let low_excl = if q.after.is_none() && q.since.is_some() {
            Uuid::from_u128(low.as_u128().saturating_sub(1))
        } else {
            low
        };
        let high = q.until.map(event_id_floor).unwrap_or(Uuid::max());
        let first_day = {
            let floor = (now - retention).timestamp_millis().div_euclid(DAY_MS);
            let from = EventId::from_uuid(low);
            if low.is_nil() {
                floor
            } else {
                day_of(&from).max(floor)
            }
        };
        let last_day = q
            .until
            .unwrap_or(now + chrono::Duration::days(1))
            .timestamp_millis()
            .div_euclid(DAY_MS);
        let mut out = Vec::new();
        let mut day = first_day;
        while day <= last_day && out.len() < limit {
            let mut cursor = low_excl;
            loop {
                let page: Vec<DeliveryRow> = self
                    .rows(
                        Q,
                        (
                            project.as_uuid(),
                            endpoint.as_uuid(),
                            day,
                            cursor,
                            high,
                            1000i32,
                        ),
                    )
                    .await?;
                let n = page.len();
                for r in page {
                    cursor = r.2;
                    let d = delivery_of(r)?;
                    if q.status.is_none_or(|s| s == d.status) {
                        out.push(d);
                        if out.len() >= limit {
                            return Ok(out);
                        }
                    }
                }
                if n < 1000 {
                    break;
                }
            }
            day += 1;
        }
        Ok(out)
    }

    async fn list_attempts(
        &self,
        project: ProjectId,
        endpoint: EndpointId,
        event: EventId,
    ) -> WebhookStoreResult<Vec<Attempt>> {
        let rows: Vec<AttemptRow> = self
            .rows(
                "SELECT project_id, endpoint_id, event_id, attempt, at, succeeded, \
                 response_code, response_body, duration_ms, error, next_attempt_at \
                 FROM webhook_attempts WHERE project_id = ? AND endpoint_id = ? AND day = ? \
                 AND event_id = ?",
                (
                    project.as_uuid(),
                    endpoint.as_uuid(),
                    day_of(&event),
                    event.as_uuid(),
                ),
            )
            .await?;
        Ok(rows.into_iter().map(attempt_of).collect())
    }

    async fn redeliver(
        &self,
        project: ProjectId,
        endpoint: EndpointId,
        event: EventId,
        now: DateTime<Utc>,
    ) -> WebhookStoreResult<bool> {
        let Some(old) = self.read_delivery(project, endpoint, event).await? else {
            return Ok(false);
        };
        let new = Delivery {
            status: DeliveryStatus::Pending,
            series_attempts: 0,
            series_started_at: now,
            next_attempt_at: Some(now),
            updated_at: now,
            ..old.clone()
        };
        self.add_due(&new, now).await?;
        self.write_state(&new).await
    }
}
