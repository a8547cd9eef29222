//! The OpenAPI description of the Admin API. The binary merges [`AdminApiDoc`] into the
//! document it serves at `/openapi.json`.

use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use larachat_core::openapi::StandardErrors;

use crate::api;

/// Paths and schemas of the Admin API, with the `bearer` security scheme (admin JWT).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        api::login,
        api::me,
        api::create_project,
        api::list_projects,
        api::get_project,
        api::update_project,
        api::delete_project,
        api::create_api_key,
        api::list_api_keys,
        api::revoke_api_key,
        crate::widget::get_widget,
        crate::widget::put_widget,
        crate::widget::rotate_identity_secret,
        crate::plans::list_plans,
        crate::plans::get_plan,
        crate::plans::update_plan,
        crate::plans::get_usage,
        crate::plans::usage_history,
        crate::plans::usage_export,
        crate::analytics::get_analytics,
        crate::team::list_members,
        crate::team::update_member,
        crate::team::remove_member,
        crate::team::create_invite,
        crate::team::list_invites,
        crate::team::delete_invite,
        crate::team::accept_invite,
        crate::team::create_agent_token,
    ),
    components(schemas(
        crate::widget::WidgetSettingsRequest,
        crate::widget::WidgetSettingsView,
        api::LoginRequest,
        api::LoginResponse,
        api::AdminView,
        api::CreateProjectRequest,
        api::UpdateProjectRequest,
        api::ProjectList,
        api::ProjectView,
        larachat_core::team::ProjectRole,
        larachat_core::team::Permission,
        larachat_core::team::Member,
        larachat_core::model::Actor,
        larachat_core::model::ActorKind,
        crate::team::MemberList,
        crate::team::UpdateMemberRequest,
        crate::team::CreateInviteRequest,
        crate::team::InviteView,
        crate::team::CreatedInvite,
        crate::team::InviteList,
        crate::team::AcceptInviteRequest,
        crate::team::AcceptedInvite,
        crate::team::MemberAgentTokenRequest,
        crate::team::MemberAgentToken,
        api::CreateApiKeyRequest,
        api::ApiKeyView,
        api::CreatedApiKey,
        api::ApiKeyList,
        larachat_core::model::Project,
        larachat_core::plan::PlanId,
        larachat_core::plan::Plan,
        larachat_core::plan::PlanLimits,
        larachat_core::plan::Period,
        crate::plans::PlanList,
        crate::plans::UpdatePlanRequest,
        crate::plans::PlanLimitsPatch,
        crate::plans::Metric,
        crate::plans::UsageView,
        crate::plans::UsageHistory,
        crate::plans::UsageExport,
        crate::plans::UsageExportRow,
        crate::analytics::AnalyticsView,
        crate::analytics::ConversationsView,
        crate::analytics::OnlineView,
        larachat_core::analytics::Granularity,
        larachat_core::analytics::MessageBucket,
        larachat_core::analytics::CountBucket,
        larachat_core::analytics::DurationStats,
        larachat_core::model::ProjectStatus,
        larachat_core::model::KeyKind,
        larachat_core::model::Scope,
        larachat_core::error::ErrorBody,
        larachat_core::error::ErrorDetail,
        larachat_core::error::ErrorCode,
    )),
    modifiers(&BearerSecurity, &StandardErrors),
    tags((name = "admin", description = "Admin API: admin login, projects, team members and invites, API keys, plans, usage and analytics"))
)]
pub struct AdminApiDoc;

/// Declares the `bearer` scheme the paths refer to.
struct BearerSecurity;

impl Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "Admin token from POST /api/admin/login (HS256, aud larachat:admin)",
                    ))
                    .build(),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::OpenApi;

    #[test]
    fn document_lists_every_route_and_never_a_key_hash() {
        let doc = AdminApiDoc::openapi();
        let json = doc.to_json().unwrap();
        for path in [
            "/api/admin/login",
            "/api/admin/me",
            "/api/admin/projects",
            "/api/admin/projects/{id}",
            "/api/admin/projects/{id}/api-keys",
            "/api/admin/api-keys/{id}",
            "/api/admin/projects/{id}/analytics",
            "/api/admin/projects/{id}/members",
            "/api/admin/projects/{id}/members/{admin_id}",
            "/api/admin/projects/{id}/invites",
            "/api/admin/projects/{id}/invites/{invite_id}",
            "/api/admin/invites/accept",
            "/api/admin/projects/{id}/agent-token",
        ] {
            assert!(doc.paths.paths.contains_key(path), "missing {path}");
        }
        assert!(json.contains("\"bearer\""));
        assert!(!json.contains("secret_hash"));
        assert!(!json.contains("password_hash"));
        assert!(!json.contains("token_hash"));
    }
}
