//! The distributed backend: `webhook_*` tables in the cluster's keyspace (created by
//! `larachat-store`'s migrations; [`ScyllaWebhookStore::migrate`] adds these tables with
//! `IF NOT EXISTS`, so it is idempotent and may run on every start).
//!
//! | table | key | notes |
//! |---|---|---|
//! | `webhook_endpoints` | `((project_id), id)` | at most 20 per project |
//! | `webhook_deliveries_v2` | `((project_id, endpoint_id, day, sub), event_id)` | `day` of the event id's time, `sub` = event id mod 16; TTL = retention |
//! | `webhook_attempts` | `((project_id, endpoint_id, day), event_id, attempt)` | TTL = retention |
//! | `webhook_due` | `((shard), due_at, project_id, endpoint_id, event_id)` | the work queue; 16 shards by endpoint and sub |
//! | `webhook_schema_migrations` | `(version)` | the migrations applied (below) |
//!
//! Partitions are bounded: one sixteenth of one endpoint's deliveries of one day, and the due
//! queue holds only pending deliveries. Every write to a delivery row is a lightweight
//! transaction (enqueue
//! `IF NOT EXISTS`, claim `IF lease_until <= now`, the rest `IF EXISTS`): mixing Paxos and
//! plain writes on one row can order them wrongly, and the lease is what keeps two workers
//! from attempting one delivery at once. A due row is only a hint: a claim checks it against
//! the delivery (pending and due at that time) and deletes it when stale.
//!
//! **Sub-buckets.** Paxos rounds on one partition serialize, so an endpoint whose deliveries
//! all shared `(project_id, endpoint_id, day)` was bounded by one partition's LWT rate (about
//! 30 deliveries/s, docs/events.md). Each delivery now lives in one of [`SUBS`] partitions
//! chosen by its event id, and the batch operations ([`WebhookStore::enqueue_many`],
//! [`WebhookStore::claim_due`], [`WebhookStore::record_attempts`]) run one sequence of
//! operations per partition, the partitions concurrently: no two LWTs of one call contend,
//! and different partitions' rounds run in parallel. The deliveries log merges the
//! sub-buckets of each day by event id.
//!
//! **Migrations.** Numbered, recorded in `webhook_schema_migrations`, each idempotent:
//! 1 creates the original tables; 2 creates `webhook_deliveries_v2` and copies every row of
//! `webhook_deliveries` into it (`IF NOT EXISTS`, with its remaining TTL), so deliveries
//! written before the upgrade stay listable, redeliverable and claimable. Run it with no
//! worker of an older build running (as `larachat migrate` requires for the chat schema).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
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
/// Partitions per endpoint and day (the `sub` of `webhook_deliveries_v2`).
pub const SUBS: i32 = 16;
/// The webhook schema this build reads and writes.
pub const WEBHOOK_SCHEMA_VERSION: i32 = 2;
/// How long a due row may point at a delivery that does not exist yet before a claim deletes
/// it as an orphan: far longer than an enqueue's two writes take.
const ENQUEUE_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
const DAY_MS: i64 = 86_400_000;

/// Schema 1: the original tables (`webhook_deliveries` is only read by migration 2).
const SCHEMA_1: &[&str] = &[
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

/// Schema 2: deliveries spread over [`SUBS`] partitions per endpoint and day.
const SCHEMA_2: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS webhook_deliveries_v2 (project_id uuid, endpoint_id uuid, \
     day bigint, sub int, event_id uuid, event text, payload text, status text, attempts int, \
     series_attempts int, series_started_at timestamp, next_attempt_at timestamp, \
     last_response_code int, lease_until timestamp, created_at timestamp, \
     updated_at timestamp, PRIMARY KEY ((project_id, endpoint_id, day, sub), event_id))",
];

const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS webhook_schema_migrations \
     (version int PRIMARY KEY, name text, applied_at timestamp)";

/// `(version, name, statements)`; version 2 also copies the deliveries (see the module docs).
const MIGRATIONS: &[(i32, &str, &[&str])] = &[
    (1, "initial", SCHEMA_1),
    (2, "deliveries in sub-buckets", SCHEMA_2),
];

/// A delivery row's partition: `(project_id, endpoint_id, day, sub)`.
type Partition = (Uuid, Uuid, i64, i32);

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
    Option<CqlTimestamp>,
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

/// The sub-bucket of an event's deliveries: its id's last byte (random bits of a UUIDv7, and
/// of [`EventId::of_message`]'s derived ids) mod [`SUBS`].
fn sub_of(event: &EventId) -> i32 {
    i32::from(event.as_uuid().as_bytes()[15]) % SUBS
}

fn partition_of(project: ProjectId, endpoint: EndpointId, event: &EventId) -> Partition {
    (
        *project.as_uuid(),
        *endpoint.as_uuid(),
        day_of(event),
        sub_of(event),
    )
}

/// The due-queue shard of a delivery: by endpoint and sub-bucket, so one endpoint's due rows
/// are spread over every shard too (rows written before schema 2 sit in the endpoint's shard
/// alone; claims scan every shard, so they are found either way).
fn shard_of(endpoint: &EndpointId, event: &EventId) -> i32 {
    (i32::from(endpoint.as_uuid().as_bytes()[15]) + sub_of(event)) % SHARDS
}

/// Splits `items` by delivery partition, keeping their order within each.
fn by_partition<T>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> Partition,
) -> Vec<Vec<T>> {
    let mut index: HashMap<Partition, usize> = HashMap::new();
    let mut groups: Vec<Vec<T>> = Vec::new();
    for item in items {
        let i = *index.entry(key(&item)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[i].push(item);
    }
    groups
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

    /// Applies the webhook migrations not yet recorded (idempotent; see the module docs).
    pub async fn migrate(&self) -> WebhookStoreResult<()> {
        self.migrate_to(WEBHOOK_SCHEMA_VERSION).await
    }

    /// [`migrate`](Self::migrate), stopping after schema `version` (upgrade tests start from
    /// an older schema with it). This build only reads and writes [`WEBHOOK_SCHEMA_VERSION`].
    pub async fn migrate_to(&self, version: i32) -> WebhookStoreResult<()> {
        self.session
            .query_unpaged(CREATE_MIGRATIONS_TABLE, ())
            .await
            .map_err(unavailable)?;
        self.session
            .await_schema_agreement()
            .await
            .map_err(unavailable)?;
        let applied: Vec<(i32,)> = self
            .session
            .query_unpaged("SELECT version FROM webhook_schema_migrations", ())
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(corrupt)?
            .rows::<(i32,)>()
            .map_err(corrupt)?
            .collect::<Result<_, _>>()
            .map_err(corrupt)?;
        for (v, name, statements) in MIGRATIONS {
            if *v > version || applied.iter().any(|(a,)| a == v) {
                continue;
            }
            tracing::info!(version = v, name, "applying webhook migration");
            for cql in *statements {
                self.session
                    .query_unpaged(*cql, ())
                    .await
                    .map_err(unavailable)?;
            }
            self.session
                .await_schema_agreement()
                .await
                .map_err(unavailable)?;
            self.prepared.lock().clear();
            if *v == 2 {
                let copied = self.copy_v1_deliveries().await?;
                tracing::info!(copied, "webhook deliveries copied into sub-buckets");
            }
            self.session
                .query_unpaged(
                    "INSERT INTO webhook_schema_migrations (version, name, applied_at) \
                     VALUES (?, ?, ?)",
                    (*v, *name, ts(Utc::now())),
                )
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// The data step of schema 2: every row of `webhook_deliveries` into its sub-bucket of
    /// `webhook_deliveries_v2`, unless already there (a re-run, or a newer state written
    /// since), with the TTL it had left and no lease. Returns the rows copied.
    async fn copy_v1_deliveries(&self) -> WebhookStoreResult<usize> {
        type OldRow = (
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
            Option<i32>,
        );
        let mut rows = self
            .session
            .query_iter(
                "SELECT project_id, endpoint_id, event_id, event, payload, status, attempts, \
                 series_attempts, series_started_at, next_attempt_at, last_response_code, \
                 created_at, updated_at, TTL(payload) FROM webhook_deliveries",
                (),
            )
            .await
            .map_err(unavailable)?
            .rows_stream::<OldRow>()
            .map_err(corrupt)?;
        let mut copied = 0;
        while let Some(r) = rows.next().await {
            let r = r.map_err(unavailable)?;
            let ttl = r.13.unwrap_or(self.retention_secs);
            if ttl <= 0 {
                continue;
            }
            let event = EventId::from_uuid(r.2);
            let inserted = self
                .lwt(
                    "INSERT INTO webhook_deliveries_v2 (project_id, endpoint_id, day, sub, \
                     event_id, event, payload, status, attempts, series_attempts, \
                     series_started_at, next_attempt_at, last_response_code, lease_until, \
                     created_at, updated_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?) \
                     IF NOT EXISTS USING TTL ?",
                    (
                        r.0,
                        r.1,
                        day_of(&event),
                        sub_of(&event),
                        r.2,
                        r.3,
                        r.4,
                        r.5,
                        r.6,
                        r.7,
                        r.8,
                        r.9,
                        r.10,
                        r.11,
                        r.12,
                        ttl,
                    ),
                )
                .await?;
            if inserted {
                copied += 1;
            }
        }
        Ok(copied)
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
        Ok(self
            .read_leased(project, endpoint, event)
            .await?
            .map(|(d, _)| d))
    }

    /// A delivery and the end of its lease (the epoch when not leased).
    async fn read_leased(
        &self,
        project: ProjectId,
        endpoint: EndpointId,
        event: EventId,
    ) -> WebhookStoreResult<Option<(Delivery, DateTime<Utc>)>> {
        const Q: &str = "SELECT project_id, endpoint_id, event_id, event, payload, status, \
             attempts, series_attempts, series_started_at, next_attempt_at, \
             last_response_code, created_at, updated_at, lease_until FROM webhook_deliveries_v2 \
             WHERE project_id = ? AND endpoint_id = ? AND day = ? AND sub = ? AND event_id = ?";
        let (p, e, day, sub) = partition_of(project, endpoint, &event);
        let rows: Vec<DeliveryRow> = self.rows(Q, (p, e, day, sub, event.as_uuid())).await?;
        let Some(r) = rows.into_iter().next() else {
            return Ok(None);
        };
        let lease = r.13.map(time).unwrap_or_default();
        Ok(Some((delivery_of(r)?, lease)))
    }

    async fn add_due(&self, d: &Delivery, at: DateTime<Utc>) -> WebhookStoreResult<()> {
        self.exec(
            "INSERT INTO webhook_due (shard, due_at, project_id, endpoint_id, event_id) \
             VALUES (?, ?, ?, ?, ?)",
            (
                shard_of(&d.endpoint_id, &d.event_id),
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
            "UPDATE webhook_deliveries_v2 USING TTL ? SET status = ?, attempts = ?, \
             series_attempts = ?, series_started_at = ?, next_attempt_at = ?, \
             last_response_code = ?, updated_at = ?, lease_until = ? \
             WHERE project_id = ? AND endpoint_id = ? AND day = ? AND sub = ? AND event_id = ? \
             IF EXISTS",
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
                sub_of(&d.event_id),
                d.event_id.as_uuid(),
            ),
        )
        .await
    }

    /// After a state change (`new` written over `old`): a due row at `new`'s next attempt
    /// if it is pending, then the rows `old` had (its next attempt and, if it was claimed,
    /// its lease end) removed unless they are that same row. Added before removed, so a
    /// pending delivery always has a due row.
    async fn reschedule(
        &self,
        old: &Delivery,
        old_lease: DateTime<Utc>,
        new: &Delivery,
    ) -> WebhookStoreResult<()> {
        let keep = match (new.status, new.next_attempt_at) {
            (DeliveryStatus::Pending, Some(at)) => {
                self.add_due(new, at).await?;
                Some(at)
            }
            _ => None,
        };
        let mut stale: Vec<DateTime<Utc>> = old.next_attempt_at.into_iter().collect();
        if old_lease > DateTime::UNIX_EPOCH && !stale.contains(&old_lease) {
            stale.push(old_lease);
        }
        for at in stale.into_iter().filter(|at| Some(*at) != keep) {
            self.remove_due(
                shard_of(&old.endpoint_id, &old.event_id),
                ts(at),
                *old.project_id.as_uuid(),
                *old.endpoint_id.as_uuid(),
                *old.event_id.as_uuid(),
            )
            .await?;
        }
        Ok(())
    }

    /// Handles one due row (a hint: "look at this delivery at this time") and leases its
    /// delivery if it is pending, due and not leased: `Some` if this call won it.
    ///
    /// A won delivery's due row moves to the end of the lease (added there, then removed
    /// here), so the rows at the head of the queue are deliveries nobody holds, whatever
    /// the number in flight; if its worker dies, the row comes due when the lease runs out.
    /// A row of a delivery that is leased by another worker, or due later, moves to that
    /// time; a row of a delivery that is no longer pending is removed; a row without a
    /// delivery is removed once older than [`ENQUEUE_GRACE`]. Every move adds before it
    /// removes, so a pending delivery is never left without a due row.
    #[allow(clippy::too_many_arguments)]
    async fn claim_one(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        shard: i32,
        at: CqlTimestamp,
        p: Uuid,
        e: Uuid,
        ev: Uuid,
    ) -> WebhookStoreResult<Option<Delivery>> {
        let (project, endpoint, event) = (
            ProjectId::from_uuid(p),
            EndpointId::from_uuid(e),
            EventId::from_uuid(ev),
        );
        let Some((d, lease)) = self.read_leased(project, endpoint, event).await? else {
            // `enqueue` writes the due row before the delivery: a missing delivery may be
            // one another worker is enqueuing right now, and deleting its due row would
            // leave it pending forever (seen in tests/dist_events.rs with three workers).
            // Only a row older than the grace is an orphan of an enqueuer that died between
            // the two writes.
            if time(at) <= now - ENQUEUE_GRACE {
                self.remove_due(shard, at, p, e, ev).await?;
            }
            return Ok(None);
        };
        let next = match (d.status, d.next_attempt_at) {
            (DeliveryStatus::Pending, Some(next)) => next,
            _ => {
                self.remove_due(shard, at, p, e, ev).await?;
                return Ok(None);
            }
        };
        // Not claimable before this.
        let wait = next.max(lease);
        if wait > now {
            self.add_due(&d, wait).await?;
            if ts(wait) != at || shard != shard_of(&endpoint, &event) {
                self.remove_due(shard, at, p, e, ev).await?;
            }
            return Ok(None);
        }
        let won = self
            .lwt(
                "UPDATE webhook_deliveries_v2 SET lease_until = ? WHERE project_id = ? \
                 AND endpoint_id = ? AND day = ? AND sub = ? AND event_id = ? \
                 IF lease_until <= ? AND status = 'pending' AND next_attempt_at = ?",
                (
                    ts(lease_until),
                    p,
                    e,
                    day_of(&event),
                    sub_of(&event),
                    ev,
                    ts(now),
                    ts(next),
                ),
            )
            .await?;
        if !won {
            // Another worker won it (and moves the row) or changed it (and rescheduled).
            return Ok(None);
        }
        self.add_due(&d, lease_until).await?;
        self.remove_due(shard, at, p, e, ev).await?;
        Ok(Some(d))
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
            "INSERT INTO webhook_deliveries_v2 (project_id, endpoint_id, day, sub, event_id, \
             event, payload, status, attempts, series_attempts, series_started_at, \
             next_attempt_at, last_response_code, lease_until, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?) IF NOT EXISTS USING TTL ?",
            (
                d.project_id.as_uuid(),
                d.endpoint_id.as_uuid(),
                day_of(&d.event_id),
                sub_of(&d.event_id),
                d.event_id.as_uuid(),
                &d.event,
                &d.payload,
                d.status.as_str(),
                d.attempts as i32,
                d.series_attempts as i32,
                ts(d.series_started_at),
                d.next_attempt_at.map(ts),
                d.last_response_code.map(i32::from),
                ts(d.created_at),
                ts(d.updated_at),
                self.retention_secs,
            ),
        )
        .await
    }

    /// One sequence of enqueues per delivery partition, the partitions concurrently (at most
    /// [`SUBS`] at once): the LWTs of one call never contend with each other.
    async fn enqueue_many(&self, ds: &[Delivery]) -> WebhookStoreResult<usize> {
        // Indices, not references: a closure over borrowed items trips async_trait's `Send`.
        let groups = by_partition(0..ds.len(), |i| {
            let d = &ds[*i];
            partition_of(d.project_id, d.endpoint_id, &d.event_id)
        });
        let counts: Vec<WebhookStoreResult<usize>> = futures::stream::iter(groups)
            .map(|group: Vec<usize>| async move {
                let mut new = 0;
                for i in group {
                    if self.enqueue(&ds[i]).await? {
                        new += 1;
                    }
                }
                Ok(new)
            })
            .buffer_unordered(SUBS as usize)
            .collect()
            .await;
        let mut new = 0;
        for c in counts {
            new += c?;
        }
        Ok(new)
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> WebhookStoreResult<Vec<Delivery>> {
        let limit = clamp_limit(limit);
        // Every shard's due rows at once (plain reads, one partition each), starting at a
        // different shard each call so that one busy shard cannot starve the others.
        let start = (now.timestamp_subsec_millis() as i32) % SHARDS;
        let scans = (0..SHARDS).map(|i| {
            let shard = (start + i) % SHARDS;
            async move {
                let due: Vec<(CqlTimestamp, Uuid, Uuid, Uuid)> = self
                    .rows(
                        "SELECT due_at, project_id, endpoint_id, event_id FROM webhook_due \
                         WHERE shard = ? AND due_at <= ? LIMIT ?",
                        (shard, ts(now), limit as i32),
                    )
                    .await?;
                Ok::<_, WebhookStoreError>(due.into_iter().map(move |r| (shard, r)))
            }
        });
        let candidates = futures::future::try_join_all(scans)
            .await?
            .into_iter()
            .flatten();
        let groups = by_partition(candidates, |(_, (_, p, e, ev))| {
            partition_of(
                ProjectId::from_uuid(*p),
                EndpointId::from_uuid(*e),
                &EventId::from_uuid(*ev),
            )
        });
        // Claims in flight or won, across the partitions: never more than `limit` won.
        let taken = AtomicUsize::new(0);
        let results: Vec<(Vec<Delivery>, Option<WebhookStoreError>)> =
            futures::stream::iter(groups)
                .map(|group| {
                    let taken = &taken;
                    async move {
                        let mut won = Vec::new();
                        for (shard, (at, p, e, ev)) in group {
                            if taken.fetch_add(1, Ordering::SeqCst) >= limit {
                                taken.fetch_sub(1, Ordering::SeqCst);
                                break;
                            }
                            match self.claim_one(now, lease_until, shard, at, p, e, ev).await {
                                Ok(Some(d)) => won.push(d),
                                Ok(None) => {
                                    taken.fetch_sub(1, Ordering::SeqCst);
                                }
                                Err(err) => {
                                    taken.fetch_sub(1, Ordering::SeqCst);
                                    return (won, Some(err));
                                }
                            }
                        }
                        (won, None)
                    }
                })
                .buffer_unordered(SUBS as usize)
                .collect()
                .await;
        // What was won is returned even if another partition failed (those deliveries are
        // leased: returning nothing would only delay them until their leases run out).
        let mut out = Vec::new();
        let mut failure = None;
        for (won, err) in results {
            out.extend(won);
            if let Some(err) = err {
                failure = Some(err);
            }
        }
        match failure {
            Some(err) if out.is_empty() => Err(err),
            Some(err) => {
                tracing::warn!("claiming webhook deliveries: {err}");
                Ok(out)
            }
            None => Ok(out),
        }
    }

    async fn record_attempt(&self, a: &Attempt, d: &Delivery) -> WebhookStoreResult<()> {
        let old = self
            .read_leased(d.project_id, d.endpoint_id, d.event_id)
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
            && let Some((old, old_lease)) = old
        {
            self.reschedule(&old, old_lease, d).await?;
        }
        Ok(())
    }

    /// One sequence of records per delivery partition, the partitions concurrently (as
    /// [`enqueue_many`](WebhookStore::enqueue_many)). Every record is tried; the first
    /// failure is returned (its delivery stays leased and is attempted again when the lease
    /// runs out).
    async fn record_attempts(&self, batch: &[(Attempt, Delivery)]) -> WebhookStoreResult<()> {
        let groups = by_partition(0..batch.len(), |i| {
            let d = &batch[*i].1;
            partition_of(d.project_id, d.endpoint_id, &d.event_id)
        });
        let results: Vec<WebhookStoreResult<()>> = futures::stream::iter(groups)
            .map(|group: Vec<usize>| async move {
                let mut first = Ok(());
                for i in group {
                    let (attempt, state) = &batch[i];
                    if let Err(e) = self.record_attempt(attempt, state).await
                        && first.is_ok()
                    {
                        first = Err(e);
                    }
                }
                first
            })
            .buffer_unordered(SUBS as usize)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn get_delivery(
        &self,
        project: ProjectId,
        endpoint: EndpointId,
        event: EventId,
    ) -> WebhookStoreResult<Option<Delivery>> {
        self.read_delivery(project, endpoint, event).await
    }

    /// Walks the days in range; within a day, merges the [`SUBS`] sub-buckets by event id
    /// (each read a page at a time from its cursor, the empty ones refilled concurrently).
    async fn list_deliveries(
        &self,
        project: ProjectId,
        endpoint: EndpointId,
        q: &DeliveryQuery,
    ) -> WebhookStoreResult<Vec<Delivery>> {
        const Q: &str = "SELECT project_id, endpoint_id, event_id, event, payload, status, \
             attempts, series_attempts, series_started_at, next_attempt_at, \
             last_response_code, created_at, updated_at, lease_until FROM webhook_deliveries_v2 \
             WHERE project_id = ? AND endpoint_id = ? AND day = ? AND sub = ? AND event_id > ? \
             AND event_id < ? LIMIT ?";
        struct Sub {
            cursor: Uuid,
            rows: VecDeque<DeliveryRow>,
            done: bool,
        }
        let limit = clamp_limit(q.limit);
        // Rows held per sub-bucket at most: bounds a listing's memory to SUBS pages.
        let page = limit.min(250) as i32;
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
        let (p, e) = (*project.as_uuid(), *endpoint.as_uuid());
        let mut out = Vec::new();
        let mut day = first_day;
        while day <= last_day && out.len() < limit {
            let mut subs: Vec<Sub> = (0..SUBS)
                .map(|_| Sub {
                    cursor: low_excl,
                    rows: VecDeque::new(),
                    done: false,
                })
                .collect();
            loop {
                let empty: Vec<(usize, Uuid)> = subs
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.rows.is_empty() && !s.done)
                    .map(|(i, s)| (i, s.cursor))
                    .collect();
                let pages = futures::future::try_join_all(empty.iter().map(|(i, cursor)| {
                    self.rows::<DeliveryRow>(Q, (p, e, day, *i as i32, *cursor, high, page))
                }))
                .await?;
                for ((i, _), rows) in empty.into_iter().zip(pages) {
                    let s = &mut subs[i];
                    s.done = rows.len() < page as usize;
                    if let Some(last) = rows.last() {
                        s.cursor = last.2;
                    }
                    s.rows.extend(rows);
                }
                // The smallest head of the sub-buckets is the day's next row.
                let next = subs
                    .iter_mut()
                    .filter(|s| !s.rows.is_empty())
                    .min_by_key(|s| s.rows.front().map(|r| r.2))
                    .and_then(|s| s.rows.pop_front());
                let Some(r) = next else { break };
                let d = delivery_of(r)?;
                if q.status.is_none_or(|s| s == d.status) {
                    out.push(d);
                    if out.len() >= limit {
                        return Ok(out);
                    }
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
