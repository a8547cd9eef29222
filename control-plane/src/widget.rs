//! Widget settings of a project (Admin API): allowed origins, identity verification, look.
//!
//! Kept under `settings.widget` of the project (see [`WidgetSettings`]); changes are announced
//! with `ProjectChanged` like any project change, so gateways reload them at once.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use larachat_core::control::ControlEvent;
use larachat_core::http::{ApiJson, ApiPath};
use larachat_core::keys;
use larachat_core::model::{AdminUser, IdentityVerification, Project, WidgetSettings, WidgetTheme};
use larachat_core::origin::Origin;
use larachat_core::{ApiError, ProjectId, validate};

use crate::ControlPlane;
use crate::api::{authorize, publish};
use crate::auth::AdminAuth;
use larachat_core::team::Permission;

/// Most origins in a project's allow-list.
pub const MAX_ORIGINS: usize = 50;

/// Replace a project's widget settings.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WidgetSettingsRequest {
    /// Origins (`https://example.com`, `http://localhost:3000`) the widget may run on. Each
    /// is normalised as browsers send it (lower-case host, IDN in punycode, default port
    /// dropped, a trailing `/` removed): `https://ACME.com:443/` is stored as
    /// `https://acme.com`. Paths, wildcards, `null` and other schemes are refused.
    pub allowed_origins: Vec<String>,
    /// `off`, `report` or `enforce`; absent: unchanged (`enforce` for a new project).
    #[serde(default)]
    pub identity_verification: Option<IdentityVerification>,
    pub title: Option<String>,
    pub greeting: Option<String>,
    /// `light`, `dark` or `auto` (follows the visitor's `prefers-color-scheme`).
    pub theme: Option<WidgetTheme>,
    /// `bottom-right` or `bottom-left`.
    pub position: Option<String>,
    /// `#rrggbb`.
    pub accent_color: Option<String>,
}

/// A project's widget settings, with the identity secret tenants sign `user_hash` with.
#[derive(Debug, Serialize, ToSchema)]
pub struct WidgetSettingsView {
    pub allowed_origins: Vec<String>,
    pub identity_verification: IdentityVerification,
    pub title: Option<String>,
    pub greeting: Option<String>,
    pub theme: Option<WidgetTheme>,
    pub position: Option<String>,
    pub accent_color: Option<String>,
    /// `user_hash = hex(HMAC-SHA256(identity_secret, identifier))`. Keep it on your server.
    pub identity_secret: String,
}

fn view(cp: &ControlPlane, project: &Project) -> WidgetSettingsView {
    let w = WidgetSettings::of(project);
    WidgetSettingsView {
        identity_secret: keys::identity_secret(
            &cp.config().key_pepper,
            project.id,
            w.identity_secret_generation,
        ),
        allowed_origins: w.allowed_origins.into_iter().map(String::from).collect(),
        identity_verification: w.identity_verification,
        title: w.title,
        greeting: w.greeting,
        theme: w.theme,
        position: w.position,
        accent_color: w.accent_color,
    }
}

/// Checks the request; returns its allowed origins parsed and normalised, without repeats
/// (the first occurrence's place kept). The one place allowed origins are read.
fn check(body: &WidgetSettingsRequest) -> Result<Vec<Origin>, ApiError> {
    if body.allowed_origins.len() > MAX_ORIGINS {
        return Err(ApiError::validation(format!(
            "at most {MAX_ORIGINS} allowed origins"
        )));
    }
    let mut origins: Vec<Origin> = Vec::with_capacity(body.allowed_origins.len());
    for o in &body.allowed_origins {
        let o = Origin::parse(o)?;
        if !origins.contains(&o) {
            origins.push(o);
        }
    }
    if let Some(t) = &body.title {
        validate::name(t, "title")?;
    }
    if let Some(g) = &body.greeting {
        if g.chars().count() > 500 || g.chars().any(char::is_control) {
            return Err(ApiError::validation(
                "greeting must be at most 500 characters, without control characters",
            ));
        }
    }
    if body
        .position
        .as_deref()
        .is_some_and(|p| !matches!(p, "bottom-right" | "bottom-left"))
    {
        return Err(ApiError::validation(
            "position must be bottom-right or bottom-left",
        ));
    }
    if let Some(c) = &body.accent_color {
        let ok =
            c.len() == 7 && c.starts_with('#') && c[1..].chars().all(|ch| ch.is_ascii_hexdigit());
        if !ok {
            return Err(ApiError::validation("accent_color must look like #4f46e5"));
        }
    }
    Ok(origins)
}

/// Writes `widget` into the project's settings (through the service) and announces the
/// change.
async fn save(
    cp: &ControlPlane,
    admin: &AdminUser,
    project: &Project,
    widget: WidgetSettings,
) -> Result<Project, ApiError> {
    let updated = cp
        .service()
        .save_widget_settings(cp.caller(admin), project.id, &widget)
        .await?;
    publish(
        cp,
        ControlEvent::ProjectChanged {
            project_id: project.id,
        },
    )
    .await;
    Ok(updated)
}

/// Get a project's widget settings.
#[utoipa::path(get, path = "/api/admin/projects/{id}/widget", tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "project id")),
    responses((status = 200, body = WidgetSettingsView),
              (status = 403, description = "The caller's role lacks manage_widget", body = larachat_core::error::ErrorBody),
              (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_widget(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath(id): ApiPath<ProjectId>,
) -> Result<ApiJson<WidgetSettingsView>, ApiError> {
    let project = authorize(&cp, &admin, id, Permission::ManageWidget)
        .await?
        .project;
    Ok(ApiJson(view(&cp, &project)))
}

/// Replace a project's widget settings.
#[utoipa::path(put, path = "/api/admin/projects/{id}/widget", tag = "admin",
    request_body = WidgetSettingsRequest,
    params(("id" = uuid::Uuid, Path, description = "project id")),
    responses((status = 200, body = WidgetSettingsView),
              (status = 403, description = "The caller's role lacks manage_widget", body = larachat_core::error::ErrorBody),
              (status = 404, body = larachat_core::error::ErrorBody),
              (status = 422, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_widget(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath(id): ApiPath<ProjectId>,
    ApiJson(body): ApiJson<WidgetSettingsRequest>,
) -> Result<ApiJson<WidgetSettingsView>, ApiError> {
    let origins = check(&body)?;
    let project = authorize(&cp, &admin, id, Permission::ManageWidget)
        .await?
        .project;
    let current = WidgetSettings::of(&project);
    let widget = WidgetSettings {
        allowed_origins: origins,
        identity_verification: body
            .identity_verification
            .unwrap_or(current.identity_verification),
        title: body.title,
        greeting: body.greeting,
        theme: body.theme,
        position: body.position,
        accent_color: body.accent_color,
        identity_secret_generation: current.identity_secret_generation,
    };
    let updated = save(&cp, &admin, &project, widget).await?;
    tracing::info!(admin_id = %admin.id, project_id = %id, "widget settings updated");
    Ok(ApiJson(view(&cp, &updated)))
}

/// Rotate the identity-verification secret: `user_hash`es signed with the old one stop working.
#[utoipa::path(post, path = "/api/admin/projects/{id}/widget/identity-secret", tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "project id")),
    responses((status = 200, body = WidgetSettingsView),
              (status = 403, description = "The caller's role lacks manage_widget", body = larachat_core::error::ErrorBody),
              (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn rotate_identity_secret(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath(id): ApiPath<ProjectId>,
) -> Result<ApiJson<WidgetSettingsView>, ApiError> {
    let project = authorize(&cp, &admin, id, Permission::ManageWidget)
        .await?
        .project;
    let mut widget = WidgetSettings::of(&project);
    widget.identity_secret_generation = widget.identity_secret_generation.wrapping_add(1);
    let updated = save(&cp, &admin, &project, widget).await?;
    tracing::info!(admin_id = %admin.id, project_id = %id, "identity secret rotated");
    Ok(ApiJson(view(&cp, &updated)))
}
