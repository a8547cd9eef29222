//! Plans and usage in the Admin API.
//!
//! Every admin may list and read plans (to choose one). Only platform admins
//! ([`ControlPlaneConfig::platform_admins`](crate::ControlPlaneConfig::platform_admins))
//! change them; a change is announced to every gateway (`plan_changed`), so the stores that
//! cache plan limits re-read them at once (and within their cache time, one second, if the
//! notice is lost). A project's owner reads its usage against its plan.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use larachat_core::control::ControlEvent;
use larachat_core::error::ErrorBody;
use larachat_core::http::{ApiJson, ApiPath, ApiQuery, double_option};
use larachat_core::plan::{Period, Plan, PlanId, UsageCounts};
use larachat_core::{ApiError, ProjectId};
use larachat_service::input::Name;
use larachat_service::plans::{ExportLine, LimitsChange, PlanChange, PlanFeatures, UsageReport};

use crate::ControlPlane;
use crate::api::publish;
use crate::auth::AdminAuth;

/// All plans.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanList {
    pub data: Vec<Plan>,
}

/// `PATCH /api/admin/plans/{id}`: absent fields are left as they are, in `limits` too (a
/// limit set to `null` becomes unlimited).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePlanRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub limits: Option<PlanLimitsPatch>,
    #[serde(default)]
    pub features: Option<Vec<String>>,
}

/// Limits to change: an absent limit is left as it is, `null` makes it unlimited.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanLimitsPatch {
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u64>)]
    pub monthly_active_users: Option<Option<u64>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u64>)]
    pub messages_per_month: Option<Option<u64>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u64>)]
    pub projects_per_owner: Option<Option<u64>>,
}

impl PlanLimitsPatch {
    fn into_change(self) -> LimitsChange {
        LimitsChange {
            monthly_active_users: self.monthly_active_users,
            messages_per_month: self.messages_per_month,
            projects_per_owner: self.projects_per_owner,
        }
    }
}

/// Query of `GET /api/admin/projects/{id}/usage`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// The month, `YYYY-MM` (UTC); the current one by default.
    pub period: Option<String>,
}

/// Query of `GET /api/admin/projects/{id}/usage/history`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageHistoryQuery {
    /// Most months returned, 1 to 120 (default 12).
    pub limit: Option<u32>,
}

/// One metered quantity and the plan's limit on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Metric {
    pub used: u64,
    /// `null`: unlimited (or not limited by plans).
    pub limit: Option<u64>,
}

/// A project's usage in one month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageView {
    pub project_id: ProjectId,
    /// `YYYY-MM`, UTC.
    pub period: Period,
    pub plan: PlanId,
    /// When the month's quotas reset (the first instant of the next month, UTC).
    pub resets_at: DateTime<Utc>,
    /// Distinct end users created or identified, sending a message, or members of a
    /// conversation created in the month.
    pub monthly_active_users: Metric,
    pub messages: Metric,
    pub conversations: Metric,
    /// Bytes of message content added in the month: UTF-8 length of each message's text
    /// plus its serialized metadata. Not limited by plans (`limit` is `null`).
    pub storage_bytes: Metric,
    /// Client API and Widget API requests in the month, metered by the gateways (written
    /// every few seconds). Not limited by plans.
    pub api_requests: Metric,
    /// The most realtime connections the project had open at once in the month: per hour,
    /// the sum of each gateway's peak; the busiest hour. Not limited by plans.
    pub peak_connections: Metric,
}

/// Past and current months with usage, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageHistory {
    pub data: Vec<UsageView>,
}

fn view(project: ProjectId, plan: &Plan, period: Period, used: UsageCounts) -> UsageView {
    UsageView {
        project_id: project,
        period,
        plan: plan.id.clone(),
        resets_at: period.resets_at(),
        monthly_active_users: Metric {
            used: used.active_users,
            limit: plan.limits.monthly_active_users,
        },
        messages: Metric {
            used: used.messages,
            limit: plan.limits.messages_per_month,
        },
        conversations: Metric {
            used: used.conversations,
            limit: None,
        },
        storage_bytes: Metric {
            used: used.storage_bytes,
            limit: None,
        },
        api_requests: Metric {
            used: used.api_requests,
            limit: None,
        },
        peak_connections: Metric {
            used: used.peak_connections,
            limit: None,
        },
    }
}

impl From<&UsageReport> for UsageView {
    fn from(r: &UsageReport) -> Self {
        view(r.project.id, &r.plan, r.period, r.used)
    }
}

/// Every plan.
#[utoipa::path(
    get,
    path = "/api/admin/plans",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The plans, by id", body = PlanList),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
    )
)]
pub async fn list_plans(
    State(cp): State<ControlPlane>,
    AdminAuth(_admin): AdminAuth,
) -> Result<ApiJson<PlanList>, ApiError> {
    Ok(ApiJson(PlanList {
        data: cp.service().plans().await?,
    }))
}

/// One plan.
#[utoipa::path(
    get,
    path = "/api/admin/plans/{id}",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Plan id, e.g. `free`")),
    responses(
        (status = 200, description = "The plan", body = Plan),
        (status = 400, description = "Not a valid plan id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such plan", body = ErrorBody),
    )
)]
pub async fn get_plan(
    State(cp): State<ControlPlane>,
    AdminAuth(_admin): AdminAuth,
    ApiPath(id): ApiPath<PlanId>,
) -> Result<ApiJson<Plan>, ApiError> {
    cp.service().plan(&id).await.map(ApiJson)
}

/// Change a plan's name, limits or features (platform admins only). Takes effect on every
/// gateway at once (a `plan_changed` notice), for the changes that follow.
#[utoipa::path(
    patch,
    path = "/api/admin/plans/{id}",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Plan id, e.g. `free`")),
    request_body = UpdatePlanRequest,
    responses(
        (status = 200, description = "The updated plan", body = Plan),
        (status = 400, description = "Malformed body or id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not a platform admin", body = ErrorBody),
        (status = 404, description = "No such plan", body = ErrorBody),
        (status = 422, description = "A field breaks a rule", body = ErrorBody),
    )
)]
pub async fn update_plan(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath(id): ApiPath<PlanId>,
    ApiJson(body): ApiJson<UpdatePlanRequest>,
) -> Result<ApiJson<Plan>, ApiError> {
    if !cp.config().is_platform_admin(&admin) {
        return Err(ApiError::forbidden(
            "only a platform admin may change plans",
        ));
    }
    let change = PlanChange {
        name: body.name.map(|n| Name::parse(n, "name")).transpose()?,
        limits: body
            .limits
            .map(PlanLimitsPatch::into_change)
            .unwrap_or_default(),
        features: body.features.map(PlanFeatures::parse).transpose()?,
    };
    let (plan, changed) = cp.service().update_plan(&id, change).await?;
    if changed {
        tracing::info!(admin_id = %admin.id, plan_id = %id, "plan updated");
        publish(&cp, ControlEvent::PlanChanged { plan_id: id }).await;
    }
    Ok(ApiJson(plan))
}

/// A project's usage in one month (the current one by default) against its plan's limits.
#[utoipa::path(
    get,
    path = "/api/admin/projects/{id}/usage",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Project id"), UsageQuery),
    responses(
        (status = 200, description = "Usage in the month", body = UsageView),
        (status = 400, description = "Not a valid id or period", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such project for this admin", body = ErrorBody),
    )
)]
pub async fn get_usage(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath(id): ApiPath<ProjectId>,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<ApiJson<UsageView>, ApiError> {
    let period = match query.period.as_deref() {
        None | Some("") => None,
        Some(p) => Some(Period::parse(p).map_err(|e| ApiError::invalid(e.to_string()))?),
    };
    let report = cp.service().usage(cp.caller(&admin), id, period).await?;
    Ok(ApiJson(UsageView::from(&report)))
}

/// The months in which a project used anything, newest first, against its current plan.
#[utoipa::path(
    get,
    path = "/api/admin/projects/{id}/usage/history",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Project id"), UsageHistoryQuery),
    responses(
        (status = 200, description = "Usage by month", body = UsageHistory),
        (status = 400, description = "Not a valid id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such project for this admin", body = ErrorBody),
        (status = 422, description = "limit out of range", body = ErrorBody),
    )
)]
pub async fn usage_history(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath(id): ApiPath<ProjectId>,
    ApiQuery(query): ApiQuery<UsageHistoryQuery>,
) -> Result<ApiJson<UsageHistory>, ApiError> {
    let limit = query.limit.unwrap_or(12);
    if !(1..=120).contains(&limit) {
        return Err(ApiError::validation("limit must be between 1 and 120"));
    }
    let current = cp.service().usage(cp.caller(&admin), id, None).await?;
    let months = cp
        .service()
        .usage_history(cp.caller(&admin), id, limit)
        .await?;
    Ok(ApiJson(UsageHistory {
        data: months
            .into_iter()
            .map(|(period, used)| view(id, &current.plan, period, used))
            .collect(),
    }))
}

/// Query of `GET /api/admin/usage/export`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageExportQuery {
    /// The month, `YYYY-MM` (UTC); the current one by default.
    pub period: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
    /// Projects per page, 1 to 100 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (JSON), or its `X-Next-Cursor` header (CSV).
    pub cursor: Option<String>,
}

/// One project's usage in the exported month: one CSV line, with these columns in this order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageExportRow {
    /// `YYYY-MM`, UTC.
    pub period: Period,
    pub project_id: ProjectId,
    pub project_name: String,
    pub owner_id: larachat_core::AdminUserId,
    /// The project's plan at export time.
    pub plan: PlanId,
    pub monthly_active_users: u64,
    /// Empty in CSV / `null` in JSON: unlimited.
    pub monthly_active_users_limit: Option<u64>,
    pub messages: u64,
    pub messages_limit: Option<u64>,
    pub conversations: u64,
    /// Bytes of message content added in the month (text plus serialized metadata).
    pub storage_bytes: u64,
    /// Client API and Widget API requests in the month.
    pub api_requests: u64,
    /// The most realtime connections open at once in the month.
    pub peak_connections: u64,
    /// When the month ended (or ends): the first instant of the next month.
    pub period_end: DateTime<Utc>,
}

/// A page of the monthly usage export (JSON).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageExport {
    pub period: Period,
    pub data: Vec<UsageExportRow>,
    pub has_more: bool,
    pub next_cursor: Option<ProjectId>,
}

impl UsageExportRow {
    fn of(period: Period, l: ExportLine) -> Self {
        Self {
            period,
            project_id: l.project.id,
            project_name: l.project.name,
            owner_id: l.project.owner_id,
            plan: l.plan.id,
            monthly_active_users: l.used.active_users,
            monthly_active_users_limit: l.plan.limits.monthly_active_users,
            messages: l.used.messages,
            messages_limit: l.plan.limits.messages_per_month,
            conversations: l.used.conversations,
            storage_bytes: l.used.storage_bytes,
            api_requests: l.used.api_requests,
            peak_connections: l.used.peak_connections,
            period_end: period.resets_at(),
        }
    }
}

/// A cell that a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR) is
/// prefixed with `'` (OWASP's advice for CSV exports); project names are tenants' text.
fn csv_text(s: &str) -> String {
    match s.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{s}"),
        _ => s.to_owned(),
    }
}

/// The rows as CSV, after a header line (also when there is no row).
fn to_csv(rows: &[UsageExportRow]) -> Result<Vec<u8>, ApiError> {
    let internal = |e: csv::Error| {
        tracing::error!(error = %e, "writing the usage export as CSV");
        ApiError::internal()
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "period",
        "project_id",
        "project_name",
        "owner_id",
        "plan",
        "monthly_active_users",
        "monthly_active_users_limit",
        "messages",
        "messages_limit",
        "conversations",
        "storage_bytes",
        "api_requests",
        "peak_connections",
        "period_end",
    ])
    .map_err(internal)?;
    let opt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
    for r in rows {
        w.write_record([
            r.period.to_string(),
            r.project_id.to_string(),
            csv_text(&r.project_name),
            r.owner_id.to_string(),
            r.plan.to_string(),
            r.monthly_active_users.to_string(),
            opt(r.monthly_active_users_limit),
            r.messages.to_string(),
            opt(r.messages_limit),
            r.conversations.to_string(),
            r.storage_bytes.to_string(),
            r.api_requests.to_string(),
            r.peak_connections.to_string(),
            r.period_end
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ])
        .map_err(internal)?;
    }
    w.into_inner().map_err(|e| {
        tracing::error!(error = %e, "writing the usage export as CSV");
        ApiError::internal()
    })
}

/// The usage of every project in one month, for billing: a platform admin gets every
/// project, any other admin their own. JSON or CSV (`format=csv`, one line per project,
/// RFC 4180), paged by project id.
#[utoipa::path(
    get,
    path = "/api/admin/usage/export",
    tag = "admin",
    security(("bearer" = [])),
    params(UsageExportQuery),
    responses(
        (status = 200, description = "One page of the month's usage, by project id. CSV: the \
            header line, then one line per project; the next page's cursor is in \
            `X-Next-Cursor` when there is one",
            content(
                (UsageExport = "application/json"),
                (String = "text/csv"),
            ),
            headers(("X-Next-Cursor" = String, description = "CSV only: the next page's cursor"))),
        (status = 400, description = "Malformed cursor", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 422, description = "Bad period, format or limit", body = ErrorBody),
    )
)]
pub async fn usage_export(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiQuery(query): ApiQuery<UsageExportQuery>,
) -> Result<Response, ApiError> {
    let period = match query.period.as_deref() {
        None | Some("") => Period::of(larachat_core::model::now()),
        Some(p) => Period::parse(p).map_err(|e| ApiError::validation(e.to_string()))?,
    };
    let csv = match query.format.as_deref() {
        None | Some("") | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "format is json or csv, not {other:?}"
            )));
        }
    };
    let limit = match query.limit {
        None => 50,
        Some(l) if (1..=100).contains(&l) => l,
        Some(_) => return Err(ApiError::validation("limit must be between 1 and 100")),
    };
    let cursor = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.parse::<ProjectId>()
                .map_err(|_| ApiError::invalid("cursor is not a valid project id"))?,
        ),
    };
    let page = cp
        .service()
        .usage_export(cp.caller(&admin), period, cursor, limit)
        .await?;
    let next = page.next;
    let rows: Vec<UsageExportRow> = page
        .lines
        .into_iter()
        .map(|l| UsageExportRow::of(period, l))
        .collect();
    if !csv {
        return Ok(ApiJson(UsageExport {
            period,
            has_more: next.is_some(),
            next_cursor: next,
            data: rows,
        })
        .into_response());
    }
    let body = to_csv(&rows)?;
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"larachat-usage-{period}.csv\""
    )) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(next) = next {
        if let Ok(v) = HeaderValue::from_str(&next.to_string()) {
            headers.insert("x-next-cursor", v);
        }
    }
    Ok(response)
}
