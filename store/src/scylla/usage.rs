//! Plans, usage metering and quota checks of the CQL store (see `docs/usage.md`).
//!
//! **Metering is idempotent by key, not by counter.** A counted thing is a row keyed by what
//! it counts, written in the same logged batch as the change:
//! - `usage_items ((project_id, period, kind, shard), id)`: one row per message (`kind`
//!   `message`, id = message id) or conversation (`conversation`) created in the period;
//! - `usage_active_users ((project_id, period, shard), end_user_id)`: one row per end user
//!   active in the period;
//! - `usage_periods ((project_id), period)`: the periods with usage (history, deletion).
//!
//! Writing a row again (a retried send that rewrites its message, a repair, a redelivered
//! batch) changes nothing, so no count is ever doubled, and the count exists exactly when the
//! change does (same logged batch). Counts are `COUNT(*)` over the [`SHARDS`] partitions of a
//! (project, period, kind): a partition holds 1/[`SHARDS`] of one month of one project's
//! messages (Pro: ~3,100 rows) and is never written after its month.
//!
//! **Quota checks are exact within a process, approximate across processes.** Each process
//! caches a project's plan limits and its usage estimate for [`CACHE_TTL`]: the estimate is
//! the store's count when loaded plus what this process has reserved since. A change is
//! refused when the estimate says it would pass the limit; otherwise it is reserved in the
//! estimate under its lock before it is made (and given back if it fails), so concurrent
//! changes in one process never pass the same check. Changes made by other processes within
//! the TTL are not in the estimate, so the overshoot is bounded by what the other processes
//! write in one TTL.
//!
//! **Warnings (`usage.threshold_reached`) are emitted at least once, with one id.** A process
//! looks for a reached threshold (80 % / 100 % of a monthly limit) where it sees the count:
//! a reservation that takes its estimate across one (emitted once the change is made), and a
//! freshly loaded count already past one (which covers crossings no single process saw, and a
//! process that died before emitting). Emitting is decided once per project, period and
//! threshold by a lightweight transaction on `usage_alerts`, whose row holds the event; its
//! winner writes the event to the outbox and marks the row emitted. A row left unmarked for
//! [`ALERT_TAKEOVER`] (its winner died in between) is emitted by the next process that finds
//! it, with the same event (same id): consumers de-duplicate by id.

use std::sync::Arc;
use std::time::Duration;

use futures::future::try_join_all;
use uuid::Uuid;

use larachat_core::event::DomainEvent;
use larachat_core::id::{AdminUserId, EndUserId, ProjectId};
use larachat_core::model::{self, Message};
use larachat_core::plan::{
    EdgeUsage, Period, Plan, PlanId, PlanLimits, QuotaExceeded, QuotaMetric, ThresholdCrossing,
    UsageCounts, content_bytes,
};

use super::ScyllaStore;
use super::codec::{Values, corrupt, from_opt_ts, vi, vt, vts, vu};
use crate::{StoreError, StoreResult};

/// Partitions per (project, period, kind). Part of the data layout: never change it for an
/// existing keyspace.
pub(crate) const SHARDS: i64 = 32;

/// How long a process trusts its cached plan limits and usage estimate.
pub(crate) const CACHE_TTL: Duration = Duration::from_secs(1);

/// Most projects whose limits / estimates a process keeps.
const CACHE_CAPACITY: u64 = 100_000;

/// How long a claimed, unmarked warning is left to the process that claimed it.
const ALERT_TAKEOVER: Duration = Duration::from_secs(30);

/// Most periods of history returned.
const MAX_HISTORY: u32 = 120;

pub(crate) const KIND_MESSAGE: &str = "message";
pub(crate) const KIND_CONVERSATION: &str = "conversation";

type PlanRow = (
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<Vec<String>>,
    Option<scylla::value::CqlTimestamp>,
);

/// The per-process caches of the quota checks.
pub(crate) struct QuotaCache {
    limits: moka::sync::Cache<ProjectId, (PlanId, PlanLimits)>,
    estimates: moka::sync::Cache<(ProjectId, Period), Arc<parking_lot::Mutex<UsageCounts>>>,
    /// Warnings known to be emitted, by (project, period, [`ThresholdCrossing::key`]).
    alerted: moka::sync::Cache<(ProjectId, Period, String), ()>,
    /// The last `USING TIMESTAMP` of an edge usage write (µs; see `write_edge_usage`).
    edge_clock: std::sync::atomic::AtomicI64,
    /// (project, period)s this process has listed in `usage_periods` for edge usage: a
    /// gateway flushes every few seconds, the period row is needed once.
    edge_periods: moka::sync::Cache<(ProjectId, Period), ()>,
}

impl Default for QuotaCache {
    fn default() -> Self {
        Self {
            limits: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(CACHE_TTL)
                .build(),
            estimates: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(CACHE_TTL)
                .build(),
            alerted: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            edge_clock: std::sync::atomic::AtomicI64::new(0),
            edge_periods: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
        }
    }
}

fn shard(id: &Uuid) -> i64 {
    // The last byte of a UUIDv7 (and v4) is random.
    i64::from(id.as_bytes()[15]) % SHARDS
}

fn limit_value(l: Option<u64>) -> Option<scylla::value::CqlValue> {
    l.map(|n| scylla::value::CqlValue::BigInt(i64::try_from(n).unwrap_or(i64::MAX)))
}

fn decode_plan(r: PlanRow) -> StoreResult<Plan> {
    let (id, name, mau, msgs, projects, features, updated_at) = r;
    let limit = |v: Option<i64>| -> StoreResult<Option<u64>> {
        v.map(|n| u64::try_from(n).map_err(|_| corrupt("plan limit")))
            .transpose()
    };
    Ok(Plan {
        id: PlanId::parse(&id).map_err(|_| corrupt("plan id"))?,
        name: name.unwrap_or_default(),
        limits: PlanLimits {
            monthly_active_users: limit(mau)?,
            messages_per_month: limit(msgs)?,
            projects_per_owner: limit(projects)?,
        },
        features: features.unwrap_or_default().into_iter().collect(),
        updated_at: from_opt_ts(updated_at)?.unwrap_or_else(model::now),
    })
}

/// The rows that count `items` (kind, id, bytes of content) and `users` of `project` in
/// `period`.
pub(crate) fn rows(
    project: ProjectId,
    period: Period,
    items: &[(&'static str, Uuid, Option<u64>)],
    users: &[EndUserId],
) -> Vec<(&'static str, Values)> {
    let p = *project.as_uuid();
    let key = period.to_string();
    let mut out: Vec<(&'static str, Values)> = vec![(
        "INSERT INTO usage_periods (project_id, period) VALUES (?, ?)",
        vec![vu(p), vt(&key)],
    )];
    for (kind, id, bytes) in items {
        out.push(match bytes {
            None => (
                "INSERT INTO usage_items (project_id, period, kind, shard, id) \
                 VALUES (?, ?, ?, ?, ?)",
                vec![vu(p), vt(&key), vt(kind), vi(shard(id)), vu(*id)],
            ),
            Some(n) => (
                "INSERT INTO usage_items (project_id, period, kind, shard, id, bytes) \
                 VALUES (?, ?, ?, ?, ?, ?)",
                vec![
                    vu(p),
                    vt(&key),
                    vt(kind),
                    vi(shard(id)),
                    vu(*id),
                    vi(i64::try_from(*n).unwrap_or(i64::MAX)),
                ],
            ),
        });
    }
    for u in users {
        let u = *u.as_uuid();
        out.push((
            "INSERT INTO usage_active_users (project_id, period, shard, end_user_id) \
             VALUES (?, ?, ?, ?)",
            vec![vu(p), vt(&key), vi(shard(&u)), vu(u)],
        ));
    }
    out
}

/// The rows counting a message, its content's bytes (a function of the message: the writer,
/// a retry and a repairer write the same value) and its sender, when an end user.
pub(crate) fn message_rows(m: &Message) -> Vec<(&'static str, Values)> {
    rows(
        m.project_id,
        Period::of(m.created_at),
        &[(
            KIND_MESSAGE,
            *m.id.as_uuid(),
            Some(content_bytes(&m.text, &m.metadata)),
        )],
        &end_user_sender(m),
    )
}

pub(crate) fn end_user_sender(m: &Message) -> Vec<EndUserId> {
    match m.sender.kind {
        model::ActorKind::EndUser => m.sender.id.parse().ok().into_iter().collect(),
        _ => Vec::new(),
    }
}

impl ScyllaStore {
    /// Forgets every cached plan limit (a plan changed).
    pub(super) fn forget_limits(&self) {
        self.quota.limits.invalidate_all();
    }

    pub(super) async fn load_plans(&self) -> StoreResult<Vec<Plan>> {
        let rows: Vec<PlanRow> = self
            .all_rows(
                "SELECT id, name, monthly_active_users, messages_per_month, projects_per_owner, \
                 features, updated_at FROM plans",
                (),
            )
            .await?;
        let mut plans = rows
            .into_iter()
            .map(decode_plan)
            .collect::<StoreResult<Vec<_>>>()?;
        plans.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(plans)
    }

    pub(super) async fn load_plan(&self, id: &PlanId) -> StoreResult<Option<Plan>> {
        let row: Option<PlanRow> = self
            .row(
                "SELECT id, name, monthly_active_users, messages_per_month, projects_per_owner, \
                 features, updated_at FROM plans WHERE id = ?",
                (id.as_str(),),
            )
            .await?;
        row.map(decode_plan).transpose()
    }

    pub(super) async fn write_plan(&self, plan: &Plan) -> StoreResult<()> {
        let features: Vec<&str> = plan.features.iter().map(String::as_str).collect();
        self.exec(
            "INSERT INTO plans (id, name, monthly_active_users, messages_per_month, \
             projects_per_owner, features, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                plan.id.as_str(),
                plan.name.as_str(),
                limit_value(plan.limits.monthly_active_users),
                limit_value(plan.limits.messages_per_month),
                limit_value(plan.limits.projects_per_owner),
                features,
                vts(plan.updated_at),
            ),
        )
        .await?;
        self.quota.limits.invalidate_all();
        Ok(())
    }

    /// The usage of `project` in `period`, counted from the usage rows.
    pub(super) async fn count_usage(
        &self,
        project: ProjectId,
        period: Period,
    ) -> StoreResult<UsageCounts> {
        let p = *project.as_uuid();
        let key = period.to_string();
        let items = |kind: &'static str| {
            let key = key.clone();
            try_join_all((0..SHARDS).map(move |s| {
                let key = key.clone();
                async move {
                    self.row::<(i64, Option<i64>)>(
                        "SELECT COUNT(*), SUM(bytes) FROM usage_items WHERE project_id = ? \
                         AND period = ? AND kind = ? AND shard = ?",
                        (p, key, kind, s),
                    )
                    .await
                }
            }))
        };
        let users = try_join_all((0..SHARDS).map(|s| {
            let key = key.clone();
            async move {
                self.row::<(i64,)>(
                    "SELECT COUNT(*) FROM usage_active_users WHERE project_id = ? \
                     AND period = ? AND shard = ?",
                    (p, key, s),
                )
                .await
            }
        }));
        let (messages, conversations, users) =
            futures::try_join!(items(KIND_MESSAGE), items(KIND_CONVERSATION), users)?;
        let sum = |v: Vec<Option<(i64,)>>| -> u64 {
            v.into_iter()
                .map(|r| r.map_or(0, |(n,)| n.max(0) as u64))
                .sum()
        };
        // (rows, bytes): a row without `bytes` (written before schema 7) counts 0 bytes.
        let sum_items = |v: Vec<Option<(i64, Option<i64>)>>| -> (u64, u64) {
            v.into_iter().fold((0, 0), |(n, b), r| match r {
                Some((rows, bytes)) => {
                    (n + rows.max(0) as u64, b + bytes.unwrap_or(0).max(0) as u64)
                }
                None => (n, b),
            })
        };
        let (messages, storage_bytes) = sum_items(messages);
        Ok(UsageCounts {
            messages,
            conversations: sum_items(conversations).0,
            active_users: sum(users),
            storage_bytes,
            ..UsageCounts::default()
        })
    }

    /// The usage of `project` in `period`, edge metrics included (the usage API; quota
    /// checks need only [`Self::count_usage`]).
    pub(super) async fn read_usage(
        &self,
        project: ProjectId,
        period: Period,
    ) -> StoreResult<UsageCounts> {
        let (mut counts, edge) = futures::try_join!(
            self.count_usage(project, period),
            self.edge_usage(project, period)
        )?;
        (counts.api_requests, counts.peak_connections) = EdgeUsage::totals(&edge);
        Ok(counts)
    }

    async fn edge_usage(&self, project: ProjectId, period: Period) -> StoreResult<Vec<EdgeUsage>> {
        let rows: Vec<(i64, Option<i64>, Option<i64>)> = self
            .all_rows(
                "SELECT hour, requests, peak_connections FROM usage_edge \
                 WHERE project_id = ? AND period = ?",
                (*project.as_uuid(), period.to_string()),
            )
            .await?;
        rows.into_iter()
            .map(|(hour, requests, peak)| {
                Ok(EdgeUsage {
                    project,
                    hour: chrono::DateTime::from_timestamp_millis(hour)
                        .ok_or_else(|| corrupt("usage_edge hour"))?,
                    requests: requests.unwrap_or(0).max(0) as u64,
                    peak_connections: peak.unwrap_or(0).max(0) as u64,
                })
            })
            .collect()
    }

    /// A write timestamp (µs) for edge usage: the wall clock, but always after the last one.
    fn edge_write_timestamp(&self) -> i64 {
        use std::sync::atomic::Ordering;
        let now = chrono::Utc::now().timestamp_micros();
        let prev = self
            .quota
            .edge_clock
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(now);
        now.max(prev + 1)
    }

    /// Writes a gateway process's edge metering (see [`EdgeUsage`]). Only `process` writes
    /// its rows, and its values never go down, so "keep the larger value" is "keep the
    /// newest write": each flush is written `USING TIMESTAMP` of a clock this store makes
    /// strictly increasing, so a delayed or retried older write never wins over a newer one.
    pub(super) async fn write_edge_usage(
        &self,
        process: Uuid,
        rows: &[EdgeUsage],
    ) -> StoreResult<()> {
        let ts = self.edge_write_timestamp();
        for chunk in rows.chunks(64) {
            try_join_all(chunk.iter().map(|r| async move {
                let period = Period::of(r.hour);
                self.exec(
                    "INSERT INTO usage_edge (project_id, period, hour, process_id, requests, \
                     peak_connections) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                    (
                        *r.project.as_uuid(),
                        period.to_string(),
                        r.hour.timestamp_millis(),
                        process,
                        i64::try_from(r.requests).unwrap_or(i64::MAX),
                        i64::try_from(r.peak_connections).unwrap_or(i64::MAX),
                        ts,
                    ),
                )
                .await
            }))
            .await?;
        }
        // The months, listed once per process (after their rows: a listed month has rows).
        let mut periods: Vec<(ProjectId, Period)> = rows
            .iter()
            .map(|r| (r.project, Period::of(r.hour)))
            .collect();
        periods.sort_unstable();
        periods.dedup();
        for key in periods {
            if self.quota.edge_periods.contains_key(&key) {
                continue;
            }
            self.exec(
                "INSERT INTO usage_periods (project_id, period) VALUES (?, ?)",
                (*key.0.as_uuid(), key.1.to_string()),
            )
            .await?;
            self.quota.edge_periods.insert(key, ());
        }
        Ok(())
    }

    pub(super) async fn usage_periods(
        &self,
        project: ProjectId,
        limit: u32,
    ) -> StoreResult<Vec<Period>> {
        let limit = limit.clamp(1, MAX_HISTORY);
        let rows: Vec<(String,)> = self
            .rows(
                "SELECT period FROM usage_periods WHERE project_id = ? LIMIT ?",
                (*project.as_uuid(), limit as i32),
            )
            .await?;
        rows.into_iter()
            .map(|(p,)| Period::parse(&p).map_err(|_| corrupt("usage period")))
            .collect()
    }

    /// Deletes every usage row of the project (part of `delete_project`).
    pub(super) async fn delete_usage(&self, project: ProjectId) -> StoreResult<()> {
        let p = *project.as_uuid();
        for period in self.usage_periods(project, MAX_HISTORY).await? {
            let key = period.to_string();
            for s in 0..SHARDS {
                for kind in [KIND_MESSAGE, KIND_CONVERSATION] {
                    self.exec(
                        "DELETE FROM usage_items WHERE project_id = ? AND period = ? \
                         AND kind = ? AND shard = ?",
                        (p, key.as_str(), kind, s),
                    )
                    .await?;
                }
                self.exec(
                    "DELETE FROM usage_active_users WHERE project_id = ? AND period = ? \
                     AND shard = ?",
                    (p, key.as_str(), s),
                )
                .await?;
            }
            self.exec(
                "DELETE FROM usage_alerts WHERE project_id = ? AND period = ?",
                (p, key.as_str()),
            )
            .await?;
            self.exec(
                "DELETE FROM usage_edge WHERE project_id = ? AND period = ?",
                (p, key.as_str()),
            )
            .await?;
        }
        self.exec("DELETE FROM usage_periods WHERE project_id = ?", (p,))
            .await?;
        Ok(())
    }

    /// The project's plan and limits, cached for [`CACHE_TTL`].
    async fn limits_of(&self, project: ProjectId) -> StoreResult<(PlanId, PlanLimits)> {
        if let Some(l) = self.quota.limits.get(&project) {
            return Ok(l);
        }
        let limits = match self.load_project(project).await? {
            Some(p) => match self.load_plan(&p.plan).await? {
                Some(plan) => (plan.id, plan.limits),
                None => (p.plan, PlanLimits::default()),
            },
            None => (PlanId::free(), PlanLimits::default()),
        };
        self.quota.limits.insert(project, limits.clone());
        Ok(limits)
    }

    async fn estimate(
        &self,
        project: ProjectId,
        period: Period,
        plan: &PlanId,
        limits: &PlanLimits,
    ) -> StoreResult<Arc<parking_lot::Mutex<UsageCounts>>> {
        if let Some(e) = self.quota.estimates.get(&(project, period)) {
            return Ok(e);
        }
        let count = self.count_usage(project, period).await?;
        // Thresholds the stored count is past: emitted unless known to be (see module docs).
        let reached = ThresholdCrossing::reached_by(limits, &count);
        self.emit_alerts(project, plan, period, reached).await;
        let counted = Arc::new(parking_lot::Mutex::new(count));
        // Another task may have loaded it meanwhile: keep the first (it may hold increments).
        Ok(self
            .quota
            .estimates
            .entry((project, period))
            .or_insert(counted)
            .into_value())
    }

    /// Whether each of `users` is not yet counted active in `period`.
    async fn new_users(
        &self,
        project: ProjectId,
        period: Period,
        users: &[EndUserId],
    ) -> StoreResult<u64> {
        let key = period.to_string();
        let mut n = 0;
        for u in users {
            let u = *u.as_uuid();
            let found: Option<(Uuid,)> = self
                .row(
                    "SELECT end_user_id FROM usage_active_users WHERE project_id = ? \
                     AND period = ? AND shard = ? AND end_user_id = ?",
                    (*project.as_uuid(), key.as_str(), shard(&u), u),
                )
                .await?;
            n += u64::from(found.is_none());
        }
        Ok(n)
    }

    /// Refuses a change adding `messages` messages and making `users` active in `project`
    /// now, if this process's estimate says it would pass a limit of the plan; otherwise
    /// reserves the change in the estimate (so that concurrent changes in this process never
    /// pass the same check) and returns the reservation. The caller makes the change and
    /// [`Ticket::commit`]s it; a ticket dropped uncommitted (the change failed, or was a
    /// retry) gives its reservation back.
    pub(super) async fn check_quota(
        &self,
        project: ProjectId,
        messages: u64,
        users: &[EndUserId],
    ) -> StoreResult<Ticket> {
        let period = Period::of(self.now());
        let (plan, limits) = self.limits_of(project).await?;
        let mut ticket = Ticket {
            estimate: None,
            messages,
            new_users: 0,
            committed: false,
            alerts: None,
        };
        if limits.messages_per_month.is_none() && limits.monthly_active_users.is_none() {
            return Ok(ticket);
        }
        if limits.monthly_active_users.is_some() && !users.is_empty() {
            ticket.new_users = self.new_users(project, period, users).await?;
        }
        let estimate = self.estimate(project, period, &plan, &limits).await?;
        let refuse = |metric, limit| {
            Err(StoreError::QuotaExceeded(QuotaExceeded {
                metric,
                limit,
                plan: plan.clone(),
                resets_at: Some(period.resets_at()),
            }))
        };
        {
            let mut e = estimate.lock();
            if let Some(limit) = limits.monthly_active_users {
                if ticket.new_users > 0 && e.active_users + ticket.new_users > limit {
                    return refuse(QuotaMetric::MonthlyActiveUsers, limit);
                }
            }
            if let Some(limit) = limits.messages_per_month {
                if messages > 0 && e.messages + messages > limit {
                    return refuse(QuotaMetric::MessagesPerMonth, limit);
                }
            }
            let before = *e;
            e.messages += ticket.messages;
            e.active_users += ticket.new_users;
            let crossed = ThresholdCrossing::crossed_by(&limits, &before, &e);
            if !crossed.is_empty() {
                ticket.alerts = Some(Alerts {
                    project,
                    plan,
                    period,
                    crossed,
                });
            }
        }
        ticket.estimate = Some(estimate);
        Ok(ticket)
    }

    /// Refuses a new project of `owner` on `plan` when the owner already has as many
    /// projects as the plan allows (read from `projects_by_owner`; concurrent creations by
    /// one owner on several nodes can both pass).
    pub(super) async fn check_new_project(
        &self,
        owner: AdminUserId,
        plan: &PlanId,
    ) -> StoreResult<()> {
        let Some(limit) = self
            .load_plan(plan)
            .await?
            .and_then(|p| p.limits.projects_per_owner)
        else {
            return Ok(());
        };
        let owned: Option<(i64,)> = self
            .row(
                "SELECT COUNT(*) FROM projects_by_owner WHERE owner_id = ?",
                (*owner.as_uuid(),),
            )
            .await?;
        if owned.map_or(0, |(n,)| n.max(0) as u64) >= limit {
            return Err(StoreError::QuotaExceeded(QuotaExceeded {
                metric: QuotaMetric::ProjectsPerOwner,
                limit,
                plan: plan.clone(),
                resets_at: None,
            }));
        }
        Ok(())
    }
}

/// Warnings a reservation reached, to emit once its change is made.
#[derive(Debug)]
pub(crate) struct Alerts {
    project: ProjectId,
    plan: PlanId,
    period: Period,
    crossed: Vec<ThresholdCrossing>,
}

impl ScyllaStore {
    /// Commits a ticket whose change was made (`conversations` created with it) and emits
    /// the warnings it reached.
    pub(super) async fn settle(&self, ticket: Ticket, conversations: u64) {
        if let Some(a) = ticket.commit(conversations) {
            self.emit_alerts(a.project, &a.plan, a.period, a.crossed)
                .await;
        }
    }

    /// Emits each warning not known to be emitted (see the module docs). Never fails the
    /// change that found them: an error is logged, and the next process to load the count
    /// finds the threshold again.
    async fn emit_alerts(
        &self,
        project: ProjectId,
        plan: &PlanId,
        period: Period,
        alerts: Vec<ThresholdCrossing>,
    ) {
        for c in alerts {
            let key = (project, period, c.key());
            if self.quota.alerted.contains_key(&key) {
                continue;
            }
            match self.emit_alert(project, plan, period, &c).await {
                Ok(true) => self.quota.alerted.insert(key, ()),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(%project, alert = %key.2, error = %e, "usage warning not emitted yet")
                }
            }
        }
    }

    /// Claims the warning and writes its event; `true` once it is known to be emitted.
    async fn emit_alert(
        &self,
        project: ProjectId,
        plan: &PlanId,
        period: Period,
        c: &ThresholdCrossing,
    ) -> StoreResult<bool> {
        let (p, key, alert) = (*project.as_uuid(), period.to_string(), c.key());
        let now = self.now();
        let mine = DomainEvent::usage_threshold_reached(project, now, c, plan.clone(), period);
        let claimed = self
            .lwt(
                "INSERT INTO usage_alerts (project_id, period, alert, event, emitted) \
                 VALUES (?, ?, ?, ?, false) IF NOT EXISTS",
                (
                    p,
                    key.as_str(),
                    alert.as_str(),
                    String::from_utf8_lossy(&mine.to_json()),
                ),
            )
            .await?;
        let event = if claimed {
            mine
        } else {
            let mut stmt = self
                .stmt(
                    "SELECT event, emitted FROM usage_alerts WHERE project_id = ? AND period = ? \
                     AND alert = ?",
                )
                .await?;
            stmt.set_consistency(super::Consistency::LocalSerial);
            let row: Option<(Option<String>, Option<bool>)> = self
                .session
                .execute_unpaged(&stmt, (p, key.as_str(), alert.as_str()))
                .await
                .map_err(super::codec::exec_error)?
                .into_rows_result()
                .map_err(super::codec::internal)?
                .maybe_first_row()
                .map_err(super::codec::internal)?;
            let Some((Some(body), emitted)) = row else {
                return Err(corrupt("usage alert without its event"));
            };
            if emitted == Some(true) {
                return Ok(true);
            }
            let theirs = DomainEvent::from_json(body.as_bytes())
                .map_err(|_| corrupt("usage alert event"))?;
            let age = (now - theirs.occurred_at).to_std().unwrap_or_default();
            if age < ALERT_TAKEOVER {
                // Its claimer is writing it; if that claimer died, a later look takes over.
                return Ok(false);
            }
            theirs
        };
        let ((cql, values), entry) = super::outbox::insert(&event, now);
        self.exec(cql, values).await?;
        self.enqueue(vec![entry]);
        self.lwt(
            "UPDATE usage_alerts SET emitted = true WHERE project_id = ? AND period = ? \
             AND alert = ? IF EXISTS",
            (p, key.as_str(), alert.as_str()),
        )
        .await?;
        Ok(true)
    }
}

/// A change that passed [`ScyllaStore::check_quota`], reserved in this process's estimate
/// until it is committed or dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    /// The estimate the reservation was made in (none when the plan has no limits).
    estimate: Option<Arc<parking_lot::Mutex<UsageCounts>>>,
    messages: u64,
    new_users: u64,
    committed: bool,
    /// Warnings the reservation reached.
    alerts: Option<Alerts>,
}

impl Ticket {
    /// The change was made (`conversations` created with it): keep the reservation; returns
    /// the warnings it reached. [`ScyllaStore::settle`] also emits them.
    pub(crate) fn commit(mut self, conversations: u64) -> Option<Alerts> {
        self.committed = true;
        if let Some(e) = &self.estimate {
            e.lock().conversations += conversations;
        }
        self.alerts.take()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Some(e) = &self.estimate {
            let mut e = e.lock();
            e.messages = e.messages.saturating_sub(self.messages);
            e.active_users = e.active_users.saturating_sub(self.new_users);
        }
    }
}
