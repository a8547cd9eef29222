//! Plans and usage: reading and editing plans (platform admins), a project's usage against
//! its plan, and its analytics (read from the store's rollups).
//!
//! Quotas themselves are enforced by the store, inside each change's write (SQLite: in the
//! writer's transaction, exact; CQL: against a per-process estimate, see `docs/usage.md`):
//! only there can a check and the change it guards be atomic. Every operation of this crate
//! that creates end users, conversations, messages or projects therefore refuses with
//! `quota_exceeded` on every path (REST, widget, socket, control plane); this module only
//! reads and edits the plans the store applies.

use std::collections::BTreeSet;

use larachat_core::ApiError;
use larachat_core::analytics::{AnalyticsRange, ProjectAnalytics};
use larachat_core::id::ProjectId;
use larachat_core::model::{self, Project};
use larachat_core::plan::{Period, Plan, PlanId, PlanLimits, UsageCounts, valid_feature};

use crate::Service;
use crate::input::Name;
use crate::projects::AdminCaller;
use larachat_core::team::Permission;

/// Most features one plan may list.
pub const MAX_FEATURES: usize = 32;

/// A change to a plan, parsed. `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct PlanChange {
    pub name: Option<Name>,
    pub limits: LimitsChange,
    pub features: Option<PlanFeatures>,
}

/// Limits to change: `None` leaves a limit as it is, `Some(None)` makes it unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitsChange {
    pub monthly_active_users: Option<Option<u64>>,
    pub messages_per_month: Option<Option<u64>>,
    pub projects_per_owner: Option<Option<u64>>,
}

impl LimitsChange {
    fn apply(self, limits: &mut PlanLimits) {
        if let Some(v) = self.monthly_active_users {
            limits.monthly_active_users = v;
        }
        if let Some(v) = self.messages_per_month {
            limits.messages_per_month = v;
        }
        if let Some(v) = self.projects_per_owner {
            limits.projects_per_owner = v;
        }
    }
}

/// A plan's feature set: at most [`MAX_FEATURES`] names of `[a-z0-9_]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanFeatures(BTreeSet<String>);

impl PlanFeatures {
    pub fn parse(features: Vec<String>) -> Result<Self, ApiError> {
        if features.len() > MAX_FEATURES {
            return Err(ApiError::validation(format!(
                "a plan has at most {MAX_FEATURES} features"
            )));
        }
        if let Some(bad) = features.iter().find(|f| !valid_feature(f)) {
            return Err(ApiError::validation(format!(
                "feature {bad:?} is not 1 to 64 characters a-z, 0-9 or '_'"
            )));
        }
        Ok(Self(features.into_iter().collect()))
    }
}

/// The plan of a project that names an unknown one (plans are never deleted): no limits.
fn unknown_plan(project: &Project) -> Plan {
    Plan {
        id: project.plan.clone(),
        name: project.plan.to_string(),
        limits: PlanLimits::default(),
        features: BTreeSet::new(),
        updated_at: project.updated_at,
    }
}

/// A project's usage in one period, with the plan it is measured against.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageReport {
    pub project: Project,
    pub period: Period,
    pub plan: Plan,
    pub used: UsageCounts,
}

/// One project's line of a monthly usage export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportLine {
    pub project: Project,
    /// The project's plan now (a month's limits are those of the plan at export time).
    pub plan: Plan,
    pub used: UsageCounts,
}

/// A page of a monthly usage export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportPage {
    pub period: Period,
    pub lines: Vec<ExportLine>,
    /// Where the next page starts, if there is one.
    pub next: Option<ProjectId>,
}

impl Service {
    /// One page of the usage in `period` of every project (platform admins) or of the
    /// caller's projects whose usage its role may read (`read_usage`), by project id
    /// descending. A member's page may hold fewer lines than `limit` (projects where it is an
    /// agent are left out); `next` still continues after the last project looked at.
    pub async fn usage_export(
        &self,
        caller: AdminCaller,
        period: Period,
        cursor: Option<ProjectId>,
        limit: u32,
    ) -> Result<ExportPage, ApiError> {
        let (projects, has_more, last) = if caller.platform_admin {
            let page = self.store().list_projects(None, cursor, limit).await?;
            let last = page.items.last().map(|p| p.id);
            (page.items, page.has_more, last)
        } else {
            let page = self
                .store()
                .member_projects(caller.id, cursor, limit)
                .await?;
            let last = page.items.last().map(|(p, _)| p.id);
            let readable = page
                .items
                .into_iter()
                .filter(|(_, role)| role.allows(Permission::ReadUsage))
                .map(|(p, _)| p)
                .collect();
            (readable, page.has_more, last)
        };
        let page = larachat_store::Page {
            items: projects,
            has_more,
        };
        let plans = self.plans().await?;
        let mut lines = Vec::with_capacity(page.items.len());
        for project in page.items {
            let used = self.store().usage(project.id, period).await?;
            let plan = plans
                .iter()
                .find(|p| p.id == project.plan)
                .cloned()
                .unwrap_or_else(|| unknown_plan(&project));
            lines.push(ExportLine {
                project,
                plan,
                used,
            });
        }
        let next = if page.has_more { last } else { None };
        Ok(ExportPage {
            period,
            lines,
            next,
        })
    }

    /// Every plan, by id.
    pub async fn plans(&self) -> Result<Vec<Plan>, ApiError> {
        Ok(self.store().list_plans().await?)
    }

    /// One plan; 404 if unknown.
    pub async fn plan(&self, id: &PlanId) -> Result<Plan, ApiError> {
        self.store()
            .plan(id)
            .await?
            .ok_or_else(|| ApiError::not_found("plan"))
    }

    /// Checks that a plan exists, for a project that names it (422 otherwise: the id is in
    /// the body, not the path).
    pub async fn known_plan(&self, id: &PlanId) -> Result<(), ApiError> {
        match self.store().plan(id).await? {
            Some(_) => Ok(()),
            None => Err(ApiError::validation(format!("unknown plan {id:?}"))),
        }
    }

    /// Changes a plan (the caller has checked that a platform admin asks). Returns the plan
    /// and whether anything changed.
    pub async fn update_plan(
        &self,
        id: &PlanId,
        change: PlanChange,
    ) -> Result<(Plan, bool), ApiError> {
        let mut plan = self.plan(id).await?;
        let before = plan.clone();
        if let Some(name) = change.name {
            plan.name = name.into_inner();
        }
        change.limits.apply(&mut plan.limits);
        if let Some(features) = change.features {
            plan.features = features.0;
        }
        if plan == before {
            return Ok((plan, false));
        }
        plan.updated_at = model::now().max(before.updated_at);
        self.store().put_plan(&plan).await?;
        Ok((plan, true))
    }

    /// The usage of a project (`read_usage`) in `period` (the current month by default).
    pub async fn usage(
        &self,
        caller: AdminCaller,
        project: ProjectId,
        period: Option<Period>,
    ) -> Result<UsageReport, ApiError> {
        let project = self
            .authorize(caller, project, Permission::ReadUsage)
            .await?
            .project;
        self.usage_of(project, period).await
    }

    /// The usage of `project` in `period` (the current month by default), unchecked.
    async fn usage_of(
        &self,
        project: Project,
        period: Option<Period>,
    ) -> Result<UsageReport, ApiError> {
        let period = period.unwrap_or_else(|| Period::of(model::now()));
        let used = self.store().usage(project.id, period).await?;
        let plan = match self.store().plan(&project.plan).await? {
            Some(p) => p,
            None => unknown_plan(&project),
        };
        Ok(UsageReport {
            project,
            period,
            plan,
            used,
        })
    }

    /// The months in which a project (`read_usage`) used anything, newest first.
    pub async fn usage_history(
        &self,
        caller: AdminCaller,
        project: ProjectId,
        limit: u32,
    ) -> Result<Vec<(Period, UsageCounts)>, ApiError> {
        let project = self
            .authorize(caller, project, Permission::ReadUsage)
            .await?
            .project;
        Ok(self.store().usage_history(project.id, limit).await?)
    }
}

/// A project's analytics over a range, with its usage in the current month.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalyticsReport {
    pub analytics: ProjectAnalytics,
    pub usage: UsageReport,
}

impl Service {
    /// The analytics of `project` over `range` (read from the store's rollups) and its usage
    /// this month against its plan.
    pub async fn analytics(
        &self,
        project: &Project,
        range: AnalyticsRange,
    ) -> Result<AnalyticsReport, ApiError> {
        let data = self.store().analytics(project.id, &range).await?;
        let usage = self.usage_of(project.clone(), None).await?;
        Ok(AnalyticsReport {
            analytics: ProjectAnalytics::compute(range, data),
            usage,
        })
    }
}
