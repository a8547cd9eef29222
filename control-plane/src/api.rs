//! The Admin API: request and response types, and the handlers.
//!
//! Every request body rejects unknown fields. Every failure is a catalog [`ApiError`]; store
//! failures are logged here and shown only as `internal` / `unavailable`. An admin only sees
//! the projects it is a member of (every project for a platform admin) and their keys: any
//! other project or key answers exactly like a missing one (404), so ids cannot be probed.
//! What a member may do is its role's [`Permission`]s (`larachat_core::team`, the one matrix);
//! a member lacking one gets 403.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use larachat_core::control::ControlEvent;
use larachat_core::error::ErrorBody;
use larachat_core::http::{ApiJson, ApiPath, ApiQuery};
use larachat_core::model::{
    AdminUser, ApiKeyRecord, KeyKind, PlanId, Project, ProjectStatus, Scope,
};
use larachat_core::subject::Subject;
use larachat_core::team::{Permission, ProjectRole};
use larachat_core::{AdminUserId, ApiError, ApiKeyId, ProjectId, validate};
use larachat_service::input::Name;
use larachat_service::projects::{
    IssuedKey, KeyScopes, NewApiKey, NewProject, ProjectAccess, ProjectChange, ProjectSettings,
};
use larachat_store::StoreError;

use crate::auth::AdminAuth;
use crate::{ControlPlane, password, telemetry};

/// Largest serialized `settings` object of a project, in bytes.
#[doc(inline)]
pub use larachat_service::projects::MAX_SETTINGS_BYTES;
/// How long a control event may wait for the bus before the request goes on without it.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

/// `POST /api/admin/login`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(example = "admin@example.com")]
    pub email: String,
    #[schema(format = Password)]
    pub password: String,
}

/// A successful login.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: String,
    pub expires_at: DateTime<Utc>,
    pub user: AdminView,
}

/// An admin as shown to clients (never the password hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AdminView {
    pub id: AdminUserId,
    pub email: String,
    pub created_at: DateTime<Utc>,
    /// A platform admin may do everything on every project and change plans.
    pub platform_admin: bool,
}

/// A project as the calling admin sees it: the project, the caller's role in it and what it
/// may do there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProjectView {
    #[serde(flatten)]
    pub project: Project,
    /// `null` for a platform admin who is not a member.
    pub role: Option<ProjectRole>,
    /// What the caller may do on this project.
    pub permissions: Vec<Permission>,
}

impl From<ProjectAccess> for ProjectView {
    fn from(a: ProjectAccess) -> Self {
        Self {
            permissions: a.permissions(),
            role: a.role,
            project: a.project,
        }
    }
}

/// `POST /api/admin/projects`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    pub name: String,
    /// Defaults to the server's default plan (`DEFAULT_PROJECT_PLAN`, `free` unless
    /// configured). Only a platform admin may choose another.
    #[serde(default)]
    pub plan: Option<PlanId>,
    /// A JSON object (theme, widget config, …); defaults to `{}`.
    #[serde(default)]
    pub settings: Option<serde_json::Value>,
}

/// `PATCH /api/admin/projects/{id}`: absent (or `null`) fields are left as they are.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProjectRequest {
    #[serde(default)]
    pub name: Option<String>,
    /// Only a platform admin may change a project's plan.
    #[serde(default)]
    pub plan: Option<PlanId>,
    #[serde(default)]
    pub status: Option<ProjectStatus>,
    /// Replaces the whole settings object.
    #[serde(default)]
    pub settings: Option<serde_json::Value>,
}

/// Query of `GET /api/admin/projects`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListProjectsQuery {
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<u32>,
}

/// A page of projects, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProjectList {
    pub data: Vec<ProjectView>,
    pub has_more: bool,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<ProjectId>,
}

/// `POST /api/admin/projects/{id}/api-keys`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    pub name: String,
    /// Defaults to `secret`.
    #[serde(default)]
    pub kind: Option<KeyKind>,
    /// Secret keys: non-empty, defaults to `["read","write"]`. Publishable keys: none.
    #[serde(default)]
    pub scopes: Option<Vec<Scope>>,
    /// RFC 3339; must be in the future. Absent: the key never expires.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// An API key as shown to admins. Deliberately has no hash field: the secret never leaves the
/// server after creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyView {
    pub id: ApiKeyId,
    pub project_id: ProjectId,
    pub name: String,
    pub kind: KeyKind,
    /// Visible start of the key, e.g. `sk_live_0A1b2C`.
    pub prefix: String,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A newly created key: `key` is the full plaintext, shown this once and never again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    pub key: String,
    pub api_key: ApiKeyView,
}

/// Keys of a project, newest first, revoked ones included.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyList {
    pub data: Vec<ApiKeyView>,
}

// ---------------------------------------------------------------------------------------------
// Conversions
// ---------------------------------------------------------------------------------------------

impl AdminView {
    pub fn of(cp: &ControlPlane, u: &AdminUser) -> Self {
        Self {
            id: u.id,
            email: u.email.clone(),
            created_at: u.created_at,
            platform_admin: cp.config().is_platform_admin(u),
        }
    }
}

impl From<&ApiKeyRecord> for ApiKeyView {
    fn from(k: &ApiKeyRecord) -> Self {
        Self {
            id: k.id,
            project_id: k.project_id,
            name: k.name.clone(),
            kind: k.kind,
            prefix: k.prefix.clone(),
            scopes: k.scopes.iter().copied().collect(),
            created_at: k.created_at,
            expires_at: k.expires_at,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

/// Log in with email and password; returns a bearer token.
#[utoipa::path(
    post,
    path = "/api/admin/login",
    tag = "admin",
    request_body = LoginRequest,
    security(()),
    responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "Wrong email or password (one answer for both)", body = ErrorBody),
    )
)]
pub async fn login(
    State(cp): State<ControlPlane>,
    client_ip: Option<axum::Extension<larachat_limits::ClientIp>>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<ApiJson<LoginResponse>, ApiError> {
    // Before any argon2 run: a refused attempt costs nothing, and an attacker can neither
    // guess fast nor make the server hash fast.
    let limits = &cp.config().limits;
    if let Some(axum::Extension(ip)) = client_ip {
        limits.check(
            larachat_limits::Kind::LoginIp,
            &larachat_limits::client_ip::limit_key(ip.0),
            None,
        )?;
    }
    limits.check(
        larachat_limits::Kind::LoginAccount,
        password::normalize_email(&body.email).as_str(),
        None,
    )?;
    let Some(admin) = password::check_login(&cp, &body.email, body.password).await? else {
        telemetry::login(false);
        tracing::info!("admin login failed");
        return Err(ApiError::unauthorized("invalid email or password"));
    };
    let issued = cp.issue_admin_token(&admin)?;
    telemetry::login(true);
    tracing::info!(admin_id = %admin.id, "admin logged in");
    Ok(ApiJson(LoginResponse {
        token: issued.token,
        token_type: "Bearer".to_owned(),
        expires_at: issued.expires_at,
        user: AdminView::of(&cp, &admin),
    }))
}

/// The admin the token belongs to.
#[utoipa::path(
    get,
    path = "/api/admin/me",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The calling admin", body = AdminView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
    )
)]
pub async fn me(State(cp): State<ControlPlane>, AdminAuth(admin): AdminAuth) -> ApiJson<AdminView> {
    ApiJson(AdminView::of(&cp, &admin))
}

/// Create a project; the calling admin becomes its owner (its first `owner` member).
#[utoipa::path(
    post,
    path = "/api/admin/projects",
    tag = "admin",
    security(("bearer" = [])),
    request_body = CreateProjectRequest,
    responses(
        (status = 201, description = "Created", body = Project),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "forbidden: a plan other than the default chosen by an admin who is not a platform admin; quota_exceeded: the owner has as many projects as the plan allows", body = ErrorBody),
        (status = 422, description = "A field breaks a rule", body = ErrorBody),
    )
)]
pub async fn create_project(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiJson(body): ApiJson<CreateProjectRequest>,
) -> Result<(StatusCode, ApiJson<Project>), ApiError> {
    let default_plan = &cp.config().default_plan;
    if body.plan.as_ref().is_some_and(|p| p != default_plan)
        && !cp.config().is_platform_admin(&admin)
    {
        return Err(ApiError::forbidden(
            "only a platform admin may choose a project's plan",
        ));
    }
    let input = NewProject {
        name: Name::parse(body.name, "name")?,
        plan: body.plan.unwrap_or_else(|| default_plan.clone()),
        settings: body
            .settings
            .map_or_else(|| Ok(ProjectSettings::empty()), ProjectSettings::parse)?,
    };
    let project = cp.service().create_project(admin.id, input).await?;
    tracing::info!(admin_id = %admin.id, project_id = %project.id, "project created");
    Ok((StatusCode::CREATED, ApiJson(project)))
}

/// The projects the calling admin is a member of (every project for a platform admin), newest
/// first, each with the caller's role and permissions.
#[utoipa::path(
    get,
    path = "/api/admin/projects",
    tag = "admin",
    security(("bearer" = [])),
    params(ListProjectsQuery),
    responses(
        (status = 200, description = "A page of projects", body = ProjectList),
        (status = 400, description = "Bad cursor or query", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 422, description = "limit out of range", body = ErrorBody),
    )
)]
pub async fn list_projects(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiQuery(query): ApiQuery<ListProjectsQuery>,
) -> Result<ApiJson<ProjectList>, ApiError> {
    let limit = validate::page_limit(query.limit)?;
    let cursor = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.parse::<ProjectId>()
                .map_err(|_| ApiError::invalid("cursor is not a valid project id"))?,
        ),
    };
    let caller = cp.caller(&admin);
    let (data, has_more) = if caller.platform_admin {
        let page = cp
            .store()
            .list_projects(None, cursor, limit)
            .await
            .map_err(store_error)?;
        let mut data = Vec::with_capacity(page.items.len());
        for project in page.items {
            let role = cp
                .store()
                .member(project.id, admin.id)
                .await
                .map_err(store_error)?
                .map(|m| m.role);
            data.push(ProjectView::from(ProjectAccess {
                project,
                role,
                platform_admin: true,
            }));
        }
        (data, page.has_more)
    } else {
        let page = cp
            .store()
            .member_projects(admin.id, cursor, limit)
            .await
            .map_err(store_error)?;
        let data = page
            .items
            .into_iter()
            .map(|(project, role)| {
                ProjectView::from(ProjectAccess {
                    project,
                    role: Some(role),
                    platform_admin: false,
                })
            })
            .collect();
        (data, page.has_more)
    };
    let next_cursor = if has_more {
        data.last().map(|p: &ProjectView| p.project.id)
    } else {
        None
    };
    Ok(ApiJson(ProjectList {
        has_more,
        next_cursor,
        data,
    }))
}

/// A project the calling admin is a member of, with its role and permissions (any member).
#[utoipa::path(
    get,
    path = "/api/admin/projects/{id}",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Project id")),
    responses(
        (status = 200, description = "The project", body = ProjectView),
        (status = 400, description = "Not a valid id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such project for this admin", body = ErrorBody),
    )
)]
pub async fn get_project(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath(id): ApiPath<ProjectId>,
) -> Result<ApiJson<ProjectView>, ApiError> {
    let access = authorize(&cp, &admin, id, Permission::ReadProject).await?;
    Ok(ApiJson(ProjectView::from(access)))
}

/// Change a project's name, plan, status or settings (`update_project`; the plan: platform
/// admins only).
#[utoipa::path(
    patch,
    path = "/api/admin/projects/{id}",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Project id")),
    request_body = UpdateProjectRequest,
    responses(
        (status = 200, description = "The updated project", body = Project),
        (status = 400, description = "Malformed body or id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "A plan change by an admin who is not a platform admin, or a role without update_project", body = ErrorBody),
        (status = 404, description = "No such project for this admin", body = ErrorBody),
        (status = 422, description = "A field breaks a rule", body = ErrorBody),
    )
)]
pub async fn update_project(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath(id): ApiPath<ProjectId>,
    ApiJson(body): ApiJson<UpdateProjectRequest>,
) -> Result<ApiJson<Project>, ApiError> {
    let change = ProjectChange {
        name: body.name.map(|n| Name::parse(n, "name")).transpose()?,
        plan: body.plan,
        status: body.status,
        settings: body.settings.map(ProjectSettings::parse).transpose()?,
    };
    let (updated, changed) = cp
        .service()
        .update_project(cp.caller(&admin), id, change)
        .await?;
    if !changed {
        return Ok(ApiJson(updated));
    }
    tracing::info!(admin_id = %admin.id, project_id = %id, "project updated");
    publish(&cp, ControlEvent::ProjectChanged { project_id: id }).await;
    Ok(ApiJson(updated))
}

/// Delete a project and everything in it (users, conversations, messages, keys, members);
/// owners only.
#[utoipa::path(
    delete,
    path = "/api/admin/projects/{id}",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Project id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Not a valid id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "The caller's role lacks delete_project", body = ErrorBody),
        (status = 404, description = "No such project for this admin", body = ErrorBody),
    )
)]
pub async fn delete_project(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath(id): ApiPath<ProjectId>,
) -> Result<StatusCode, ApiError> {
    cp.service().delete_project(cp.caller(&admin), id).await?;
    tracing::info!(admin_id = %admin.id, project_id = %id, "project deleted");
    publish(&cp, ControlEvent::ProjectChanged { project_id: id }).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Issue an API key for a project. The response holds the key's plaintext, shown only once.
#[utoipa::path(
    post,
    path = "/api/admin/projects/{id}/api-keys",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Project id")),
    request_body = CreateApiKeyRequest,
    responses(
        (status = 201, description = "Created; `key` is shown only this once", body = CreatedApiKey),
        (status = 400, description = "Malformed body or id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "The caller's role lacks manage_keys", body = ErrorBody),
        (status = 404, description = "No such project for this admin", body = ErrorBody),
        (status = 422, description = "A field breaks a rule", body = ErrorBody),
    )
)]
pub async fn create_api_key(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath(project_id): ApiPath<ProjectId>,
    ApiJson(body): ApiJson<CreateApiKeyRequest>,
) -> Result<(StatusCode, ApiJson<CreatedApiKey>), ApiError> {
    let kind = body.kind.unwrap_or(KeyKind::Secret);
    let input = NewApiKey {
        name: Name::parse(body.name, "name")?,
        kind,
        scopes: KeyScopes::parse(kind, body.scopes)?,
        expires_at: NewApiKey::expiry(body.expires_at)?,
    };
    let IssuedKey { plaintext, record } = cp
        .service()
        .create_api_key(
            cp.caller(&admin),
            project_id,
            input,
            &cp.config().key_pepper,
        )
        .await?;
    telemetry::api_key_created(kind);
    tracing::info!(admin_id = %admin.id, project_id = %project_id, key_id = %record.id, "api key created");
    Ok((
        StatusCode::CREATED,
        ApiJson(CreatedApiKey {
            key: plaintext,
            api_key: ApiKeyView::from(&record),
        }),
    ))
}

/// Keys of a project (never their secrets).
#[utoipa::path(
    get,
    path = "/api/admin/projects/{id}/api-keys",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Project id")),
    responses(
        (status = 200, description = "The project's keys", body = ApiKeyList),
        (status = 400, description = "Not a valid id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "The caller's role lacks manage_keys", body = ErrorBody),
        (status = 404, description = "No such project for this admin", body = ErrorBody),
    )
)]
pub async fn list_api_keys(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath(project_id): ApiPath<ProjectId>,
) -> Result<ApiJson<ApiKeyList>, ApiError> {
    authorize(&cp, &admin, project_id, Permission::ManageKeys).await?;
    let keys = cp
        .store()
        .list_api_keys(project_id)
        .await
        .map_err(store_error)?;
    Ok(ApiJson(ApiKeyList {
        data: keys.iter().map(ApiKeyView::from).collect(),
    }))
}

/// Revoke a key. Idempotent: revoking again keeps the first revocation time. Gateways are told
/// at once through a control event.
#[utoipa::path(
    delete,
    path = "/api/admin/api-keys/{id}",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "API key id")),
    responses(
        (status = 200, description = "The revoked key", body = ApiKeyView),
        (status = 400, description = "Not a valid id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "The caller's role lacks manage_keys", body = ErrorBody),
        (status = 404, description = "No such key for this admin", body = ErrorBody),
    )
)]
pub async fn revoke_api_key(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath(key_id): ApiPath<ApiKeyId>,
) -> Result<ApiJson<ApiKeyView>, ApiError> {
    let revoked = cp
        .service()
        .revoke_api_key(cp.caller(&admin), key_id)
        .await?;
    telemetry::api_key_revoked();
    tracing::info!(admin_id = %admin.id, project_id = %revoked.project_id, key_id = %key_id, "api key revoked");
    // Published on every call, not only the first: a repeated revoke re-sends a notice that
    // may have been lost (the bus is at-most-once).
    publish(
        &cp,
        ControlEvent::KeyRevoked {
            key_id,
            project_id: revoked.project_id,
        },
    )
    .await;
    Ok(ApiJson(ApiKeyView::from(&revoked)))
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The project and `admin`'s role in it if `admin` may do `permission` there: 404 for a
/// missing project or one `admin` is not a member of, 403 for a member whose role does not
/// allow it (platform admins may do everything).
pub(crate) async fn authorize(
    cp: &ControlPlane,
    admin: &AdminUser,
    id: ProjectId,
    permission: Permission,
) -> Result<ProjectAccess, ApiError> {
    cp.service()
        .authorize(cp.caller(admin), id, permission)
        .await
}

/// Announces a change to the gateways. A failure does not fail the request: the change is
/// already durable, and gateways re-read it when their cache entry expires.
pub(crate) async fn publish(cp: &ControlPlane, event: ControlEvent) {
    cp.notify_local(&event);
    let payload = Bytes::from(event.to_json());
    let result = tokio::time::timeout(
        PUBLISH_TIMEOUT,
        cp.bus().publish(&Subject::control(), payload),
    )
    .await;
    match result {
        Ok(Ok(())) => telemetry::control_event(true),
        Ok(Err(e)) => {
            telemetry::control_event(false);
            tracing::warn!(error = %e, ?event, "control event not published; gateways rely on cache expiry");
        }
        Err(_) => {
            telemetry::control_event(false);
            tracing::warn!(
                ?event,
                "control event timed out; gateways rely on cache expiry"
            );
        }
    }
}

pub(crate) fn store_error(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store operation failed in the admin api");
    e.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use larachat_core::keys;
    use larachat_core::model::now;

    #[test]
    fn key_view_has_no_secret() {
        let gen_key = keys::generate(KeyKind::Secret, b"pepper");
        let record = ApiKeyRecord {
            id: gen_key.id,
            project_id: ProjectId::new_v7(),
            name: "k".into(),
            kind: KeyKind::Secret,
            prefix: gen_key.prefix,
            scopes: [Scope::Read].into(),
            secret_hash: gen_key.secret_hash,
            last_used_at: None,
            expires_at: None,
            revoked_at: None,
            created_at: now(),
        };
        let v = serde_json::to_value(ApiKeyView::from(&record)).unwrap();
        let fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert!(
            !fields
                .iter()
                .any(|f| f.contains("hash") || f.contains("secret")),
            "{fields:?}"
        );
        assert!(!v.to_string().contains(&gen_key.plaintext[8..]));
    }
}
