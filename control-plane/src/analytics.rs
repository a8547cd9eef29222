//! `GET /api/admin/projects/{id}/analytics`: a project's analytics over a range.
//!
//! Visible to the project's owner and to platform admins; anyone else gets 404, as for a
//! missing project. The figures come from the store's rollups (see `docs/usage.md`,
//! "Analytics"); `online_users` from presence when this process can reach it.

use axum::extract::State;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use larachat_core::analytics::{
    AnalyticsRange, CountBucket, DurationStats, Granularity, MessageBucket,
};
use larachat_core::error::ErrorBody;
use larachat_core::http::{ApiJson, ApiPath, ApiQuery};
use larachat_core::{ApiError, ProjectId};

use crate::ControlPlane;
use crate::auth::AdminAuth;
use crate::plans::UsageView;

/// The range when `from` is not given: this long before `to`.
const DEFAULT_SPAN: TimeDelta = TimeDelta::days(7);

/// Query of `GET /api/admin/projects/{id}/analytics`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AnalyticsQuery {
    /// Start of the range, RFC 3339 (rounded down to the granularity); default: 7 days
    /// before `to`.
    pub from: Option<String>,
    /// End of the range, RFC 3339, exclusive (rounded up to the granularity); default: now.
    pub to: Option<String>,
    /// `hour` or `day` (default), UTC buckets. At most 2,000 buckets per query.
    pub granularity: Option<String>,
}

/// Conversations: created per bucket, and open / closed now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConversationsView {
    /// Conversations created, one bucket per step of the range (zeros included).
    pub created: Vec<CountBucket>,
    /// Conversations of the project open now.
    pub open: u64,
    /// Conversations of the project closed now.
    pub closed: u64,
}

/// End users online now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OnlineView {
    pub count: u64,
    /// More users are online than presence lists (`count` is a lower bound).
    pub truncated: bool,
}

/// A project's analytics over a range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AnalyticsView {
    pub project_id: ProjectId,
    /// The range answered: whole buckets (UTC), `from` inclusive, `to` exclusive.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub granularity: Granularity,
    /// Messages per bucket (zeros included), in total and by sender kind.
    pub messages: Vec<MessageBucket>,
    pub conversations: ConversationsView,
    /// Distinct conversations with at least one message in the range.
    pub active_conversations: u64,
    /// End users online now (presence); `null` when presence is unreachable from this
    /// process (see docs/usage.md).
    pub online_users: Option<OnlineView>,
    /// First end-user message → first agent or bot message after it, over the conversations
    /// created in the range that have both.
    pub first_response: DurationStats,
    /// Creation → close, over the conversations created in the range that are closed now.
    pub resolution: DurationStats,
    /// Usage this month against the plan's limits (as `GET .../usage`).
    pub usage: UsageView,
}

fn instant(value: Option<&str>, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    match value {
        None | Some("") => Ok(None),
        Some(v) => DateTime::parse_from_rfc3339(v)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| {
                ApiError::validation(format!(
                    "'{name}' must be an RFC 3339 time, e.g. 2026-11-30T00:00:00Z"
                ))
            }),
    }
}

/// Parses the query into a range (422 for anything unusable).
pub fn parse_range(q: &AnalyticsQuery, now: DateTime<Utc>) -> Result<AnalyticsRange, ApiError> {
    let granularity = match q.granularity.as_deref() {
        None | Some("") => Granularity::Day,
        Some(g) => Granularity::parse(g).map_err(|e| ApiError::validation(e.to_string()))?,
    };
    let to = instant(q.to.as_deref(), "to")?.unwrap_or(now);
    let from = match instant(q.from.as_deref(), "from")? {
        Some(f) => f,
        None => to
            .checked_sub_signed(DEFAULT_SPAN)
            .ok_or_else(|| ApiError::validation("'to' is out of range"))?,
    };
    AnalyticsRange::new(from, to, granularity).map_err(|e| ApiError::validation(e.to_string()))
}

/// A project's analytics: messages over time, conversations created / open / closed, active
/// conversations, end users online now, first response and resolution times (median and
/// p90), and usage against the plan. Read from precomputed rollups.
#[utoipa::path(
    get,
    path = "/api/admin/projects/{id}/analytics",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Project id"), AnalyticsQuery),
    responses(
        (status = 200, description = "The project's analytics", body = AnalyticsView),
        (status = 400, description = "Not a valid id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such project for this admin", body = ErrorBody),
        (status = 422, description = "Unparseable time, from ≥ to, unknown granularity, or more than 2,000 buckets", body = ErrorBody),
    )
)]
pub async fn get_analytics(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath(id): ApiPath<ProjectId>,
    ApiQuery(query): ApiQuery<AnalyticsQuery>,
) -> Result<ApiJson<AnalyticsView>, ApiError> {
    let project = crate::api::authorize(
        &cp,
        &admin,
        id,
        larachat_core::team::Permission::ReadAnalytics,
    )
    .await?
    .project;
    let range = parse_range(&query, larachat_core::model::now())?;
    let report = cp.service().analytics(&project, range).await?;
    let online_users = match cp.presence() {
        None => None,
        Some(online) => match online(project.id).await {
            Ok((count, truncated)) => Some(OnlineView { count, truncated }),
            Err(e) => {
                tracing::warn!(error = %e, project_id = %project.id, "presence query failed");
                return Err(ApiError::unavailable());
            }
        },
    };
    let a = report.analytics;
    Ok(ApiJson(AnalyticsView {
        project_id: project.id,
        from: a.range.from(),
        to: a.range.to(),
        granularity: a.range.granularity(),
        messages: a.messages,
        conversations: ConversationsView {
            created: a.conversations_created,
            open: a.open,
            closed: a.closed,
        },
        active_conversations: a.active_conversations,
        online_users,
        first_response: a.first_response,
        resolution: a.resolution,
        usage: UsageView::from(&report.usage),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(from: Option<&str>, to: Option<&str>, g: Option<&str>) -> AnalyticsQuery {
        AnalyticsQuery {
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            granularity: g.map(str::to_owned),
        }
    }

    #[test]
    fn ranges_parse_or_are_refused() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T12:34:56Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = parse_range(&q(None, None, None), now).unwrap();
        assert_eq!(r.granularity(), Granularity::Day);
        assert_eq!(r.buckets(), 8, "7 days back from mid-day: 8 whole days");
        let r = parse_range(
            &q(
                Some("2026-11-01T00:00:00Z"),
                Some("2026-11-02T00:00:00+00:00"),
                Some("hour"),
            ),
            now,
        )
        .unwrap();
        assert_eq!(r.buckets(), 24);
        for bad in [
            q(Some("yesterday"), None, None),
            q(None, None, Some("minute")),
            q(
                Some("2026-11-02T00:00:00Z"),
                Some("2026-11-01T00:00:00Z"),
                None,
            ),
            q(Some("2000-01-01T00:00:00Z"), None, Some("hour")),
        ] {
            let e = parse_range(&bad, now).unwrap_err();
            assert_eq!(e.code.http_status(), 422, "{bad:?}");
        }
    }
}
