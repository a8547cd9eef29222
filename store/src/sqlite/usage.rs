//! Plans, usage metering and quota checks of the embedded store.
//!
//! Usage is counted by the write that makes the change, on the writer thread, inside that
//! change's savepoint and therefore in the same transaction as the change and its outbox event.
//! So a count exists exactly when its change does: a retried send that finds its
//! `client_msg_id` returns before counting, a rolled-back change takes its count with it, and
//! there is no event consumer to redeliver to. The quota check reads the count in the same
//! transaction, and the single writer serializes every write, so a limit is exact: the change
//! that would make the count pass it fails with [`StoreError::QuotaExceeded`] and its savepoint
//! (the change, its event, any count) is rolled back. The change that makes a count reach
//! 80 % or 100 % of its limit writes a `usage.threshold_reached` event in the same savepoint.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use larachat_core::event::DomainEvent;
use larachat_core::id::{AdminUserId, EndUserId, ProjectId};
use larachat_core::plan::{
    EdgeUsage, Period, Plan, PlanId, PlanLimits, QuotaExceeded, QuotaMetric, ThresholdCrossing,
    UsageCounts,
};
use uuid::Uuid;

use super::codec::{self, ms, sql_error};
use super::outbox;
use crate::{StoreError, StoreResult};

/// Most periods [`usage_history`] returns.
pub(crate) const MAX_HISTORY: u32 = 120;

/// What one change adds to its project's usage in the month it happens.
#[derive(Debug, Default)]
pub(crate) struct Count<'a> {
    pub(crate) messages: u64,
    pub(crate) conversations: u64,
    /// Bytes of message content added ([`larachat_core::plan::content_bytes`]).
    pub(crate) bytes: u64,
    /// End users active because of the change; each counts once per month.
    pub(crate) active: &'a [EndUserId],
}

pub(crate) fn list_plans(conn: &Connection) -> StoreResult<Vec<Plan>> {
    let sql = format!("SELECT {} FROM plans ORDER BY id", codec::PLAN_COLS);
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map([], codec::plan)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_error)
}

pub(crate) fn plan(conn: &Connection, id: &PlanId) -> StoreResult<Option<Plan>> {
    let sql = format!("SELECT {} FROM plans WHERE id = ?1", codec::PLAN_COLS);
    conn.prepare_cached(&sql)
        .and_then(|mut s| s.query_row([id.as_str()], codec::plan).optional())
        .map_err(sql_error)
}

pub(crate) fn put_plan(conn: &Connection, p: &Plan) -> StoreResult<()> {
    let features = serde_json::to_string(&p.features)
        .map_err(|e| StoreError::Internal(format!("encoding features: {e}")))?;
    let limit = |l: Option<u64>| l.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    conn.prepare_cached(
        "INSERT INTO plans (id, name, monthly_active_users, messages_per_month, \
         projects_per_owner, features, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
         monthly_active_users = excluded.monthly_active_users, \
         messages_per_month = excluded.messages_per_month, \
         projects_per_owner = excluded.projects_per_owner, features = excluded.features, \
         updated_at = excluded.updated_at",
    )
    .and_then(|mut s| {
        s.execute(params![
            p.id.as_str(),
            p.name,
            limit(p.limits.monthly_active_users),
            limit(p.limits.messages_per_month),
            limit(p.limits.projects_per_owner),
            features,
            ms(p.updated_at)
        ])
    })
    .map_err(sql_error)?;
    Ok(())
}

/// The project's plan and its limits. A project whose plan row is missing (never written by
/// this code: plans are not deleted) has no limits; a missing project has none either (the
/// change itself then fails as before).
fn limits_of(conn: &Connection, project: ProjectId) -> StoreResult<(PlanId, PlanLimits)> {
    let sql = format!(
        "SELECT {} FROM plans WHERE id = (SELECT plan FROM projects WHERE id = ?1)",
        codec::PLAN_COLS
    );
    let plan = conn
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row([project.as_uuid().as_bytes()], codec::plan)
                .optional()
        })
        .map_err(sql_error)?;
    Ok(match plan {
        Some(p) => (p.id, p.limits),
        None => (PlanId::free(), PlanLimits::default()),
    })
}

fn counts(conn: &Connection, project: ProjectId, period: &str) -> StoreResult<UsageCounts> {
    conn.prepare_cached(
        "SELECT messages, conversations, active_users, storage_bytes FROM usage \
         WHERE project_id = ?1 AND period = ?2",
    )
    .and_then(|mut s| {
        s.query_row(params![project.as_uuid().as_bytes(), period], |r| {
            Ok(UsageCounts {
                messages: r.get::<_, i64>(0)?.max(0) as u64,
                conversations: r.get::<_, i64>(1)?.max(0) as u64,
                active_users: r.get::<_, i64>(2)?.max(0) as u64,
                storage_bytes: r.get::<_, i64>(3)?.max(0) as u64,
                ..UsageCounts::default()
            })
        })
        .optional()
    })
    .map(Option::unwrap_or_default)
    .map_err(sql_error)
}

/// Counts a change of `project` made at `at`, refusing it if that goes past a plan limit.
/// Must run in the change's savepoint (an error rolls the change back with the count).
pub(crate) fn count(
    conn: &Connection,
    project: ProjectId,
    at: DateTime<Utc>,
    c: Count<'_>,
) -> StoreResult<()> {
    let period = Period::of(at);
    let key = period.to_string();
    let pid = project.as_uuid().as_bytes();
    let before = counts(conn, project, &key)?;
    let mut new_users = 0u64;
    for user in c.active {
        new_users += conn
            .prepare_cached(
                "INSERT OR IGNORE INTO usage_active_users (project_id, period, end_user_id) \
                 VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![pid, key, user.as_uuid().as_bytes()]))
            .map_err(sql_error)? as u64;
    }
    if c.messages == 0 && c.conversations == 0 && c.bytes == 0 && new_users == 0 {
        return Ok(());
    }
    let after = UsageCounts {
        messages: before.messages + c.messages,
        conversations: before.conversations + c.conversations,
        active_users: before.active_users + new_users,
        storage_bytes: before.storage_bytes + c.bytes,
        ..before
    };
    let (plan, limits) = limits_of(conn, project)?;
    let refuse = |metric, limit| {
        Err(StoreError::QuotaExceeded(QuotaExceeded {
            metric,
            limit,
            plan: plan.clone(),
            resets_at: Some(period.resets_at()),
        }))
    };
    // Only a change that raises a count is refused: after a limit is lowered below the
    // current count, users already counted this month keep chatting.
    if let Some(limit) = limits.monthly_active_users {
        if new_users > 0 && after.active_users > limit {
            return refuse(QuotaMetric::MonthlyActiveUsers, limit);
        }
    }
    if let Some(limit) = limits.messages_per_month {
        if c.messages > 0 && after.messages > limit {
            return refuse(QuotaMetric::MessagesPerMonth, limit);
        }
    }
    conn.prepare_cached(
        "INSERT INTO usage (project_id, period, messages, conversations, active_users, \
         storage_bytes) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (project_id, period) \
         DO UPDATE SET messages = excluded.messages, conversations = excluded.conversations, \
         active_users = excluded.active_users, storage_bytes = excluded.storage_bytes",
    )
    .and_then(|mut s| {
        s.execute(params![
            pid,
            key,
            after.messages as i64,
            after.conversations as i64,
            after.active_users as i64,
            i64::try_from(after.storage_bytes).unwrap_or(i64::MAX)
        ])
    })
    .map_err(sql_error)?;
    // The warnings, in the change's savepoint: exact and once (the single writer sees every
    // count go up one change at a time).
    for c in &ThresholdCrossing::crossed_by(&limits, &before, &after) {
        let event = DomainEvent::usage_threshold_reached(project, at, c, plan.clone(), period);
        outbox::insert(conn, &event)?;
    }
    Ok(())
}

/// Refuses a new project of `owner` on `plan` when the owner already has as many projects as
/// the plan allows. Runs before the insert, in its savepoint.
pub(crate) fn check_new_project(
    conn: &Connection,
    owner: AdminUserId,
    plan: &PlanId,
) -> StoreResult<()> {
    let Some(limit) = self::plan(conn, plan)?.and_then(|p| p.limits.projects_per_owner) else {
        return Ok(());
    };
    let owned: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM projects WHERE owner_id = ?1")
        .and_then(|mut s| s.query_row([owner.as_uuid().as_bytes()], |r| r.get(0)))
        .map_err(sql_error)?;
    if owned.max(0) as u64 >= limit {
        return Err(StoreError::QuotaExceeded(QuotaExceeded {
            metric: QuotaMetric::ProjectsPerOwner,
            limit,
            plan: plan.clone(),
            resets_at: None,
        }));
    }
    Ok(())
}

/// Keeps, per (project, hour, process), the larger of the stored and the given values (see
/// [`EdgeUsage`]). Rows of projects that no longer exist are skipped. The month gets a
/// `usage` row (zero counts) so that the history lists it.
pub(crate) fn record_edge_usage(
    conn: &Connection,
    process: Uuid,
    rows: &[EdgeUsage],
) -> StoreResult<()> {
    for r in rows {
        let pid = r.project.as_uuid().as_bytes();
        let period = Period::of(r.hour).to_string();
        let stored = conn
            .prepare_cached(
                "INSERT INTO usage_edge (project_id, period, hour, process_id, requests, \
                 peak_connections) SELECT ?1, ?2, ?3, ?4, ?5, ?6 \
                 WHERE EXISTS (SELECT 1 FROM projects WHERE id = ?1) \
                 ON CONFLICT (project_id, period, hour, process_id) DO UPDATE SET \
                 requests = max(requests, excluded.requests), \
                 peak_connections = max(peak_connections, excluded.peak_connections)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    pid,
                    period,
                    ms(r.hour),
                    process.as_bytes(),
                    i64::try_from(r.requests).unwrap_or(i64::MAX),
                    i64::try_from(r.peak_connections).unwrap_or(i64::MAX)
                ])
            })
            .map_err(sql_error)?;
        if stored > 0 {
            conn.prepare_cached(
                "INSERT INTO usage (project_id, period) VALUES (?1, ?2) \
                 ON CONFLICT (project_id, period) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![pid, period]))
            .map_err(sql_error)?;
        }
    }
    Ok(())
}

/// Adds the edge metrics of the period to `c`.
fn with_edge(
    conn: &Connection,
    project: ProjectId,
    period: &str,
    mut c: UsageCounts,
) -> StoreResult<UsageCounts> {
    let rows = conn
        .prepare_cached(
            "SELECT hour, requests, peak_connections FROM usage_edge \
             WHERE project_id = ?1 AND period = ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![project.as_uuid().as_bytes(), period], |r| {
                Ok(EdgeUsage {
                    project,
                    hour: codec::get_time(r, 0)?,
                    requests: r.get::<_, i64>(1)?.max(0) as u64,
                    peak_connections: r.get::<_, i64>(2)?.max(0) as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_error)?;
    (c.api_requests, c.peak_connections) = EdgeUsage::totals(&rows);
    Ok(c)
}

pub(crate) fn usage(
    conn: &Connection,
    project: ProjectId,
    period: Period,
) -> StoreResult<UsageCounts> {
    let key = period.to_string();
    let c = counts(conn, project, &key)?;
    with_edge(conn, project, &key, c)
}

pub(crate) fn usage_history(
    conn: &Connection,
    project: ProjectId,
    limit: u32,
) -> StoreResult<Vec<(Period, UsageCounts)>> {
    let limit = limit.clamp(1, MAX_HISTORY);
    let rows: Vec<(String, UsageCounts)> = conn
        .prepare_cached(
            "SELECT period, messages, conversations, active_users, storage_bytes FROM usage \
             WHERE project_id = ?1 ORDER BY period DESC LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![project.as_uuid().as_bytes(), limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    UsageCounts {
                        messages: r.get::<_, i64>(1)?.max(0) as u64,
                        conversations: r.get::<_, i64>(2)?.max(0) as u64,
                        active_users: r.get::<_, i64>(3)?.max(0) as u64,
                        storage_bytes: r.get::<_, i64>(4)?.max(0) as u64,
                        ..UsageCounts::default()
                    },
                ))
            })?
            .collect()
        })
        .map_err(sql_error)?;
    rows.into_iter()
        .map(|(p, c)| {
            let c = with_edge(conn, project, &p, c)?;
            Period::parse(&p)
                .map(|p| (p, c))
                .map_err(|_| StoreError::Internal(format!("corrupt usage period {p:?}")))
        })
        .collect()
}
