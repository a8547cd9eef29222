//! Project teams on the Admin API: members and their roles, invitations, and agent tokens for
//! members (see `docs/team.md`).
//!
//! Who may do what is [`ProjectRole::allows`] (core, the one matrix), asked through
//! [`crate::api::authorize`]: changing, inviting or removing an `owner` needs
//! [`Permission::ManageOwners`] (owners only), any other role [`Permission::ManageMembers`].
//! A member may always leave a project. A project keeps at least one owner (409 otherwise,
//! enforced atomically by the store).
//!
//! Invitations: a one-time link `<public url>/dashboard/#/invite/<token>`, the token being the
//! project id, the invite id and 32 random bytes (URL-safe base64), stored only as the
//! SHA-256 of the random part, valid 7 days, shown once. Accepting creates the admin (or
//! checks the password of the existing admin with that email) and the membership; a token
//! that is unknown, used, deleted or expired always answers the same 404.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use larachat_core::control::ControlEvent;
use larachat_core::error::ErrorBody;
use larachat_core::http::{ApiJson, ApiPath};
use larachat_core::model::{self, Actor, ActorKind, AdminUser, Scope};
use larachat_core::team::{
    self, INVITE_TTL, Invite, Member, ParsedInviteToken, Permission, ProjectRole,
};
use larachat_core::{AdminUserId, ApiError, InviteId, ProjectId, validate};
use larachat_service::input::Name;
use larachat_service::tokens::{self, AgentIssuer, MEMBER_AGENT_PREFIX};
use larachat_store::StoreError;

use crate::api::{AdminView, authorize, publish, store_error};
use crate::auth::AdminAuth;
use crate::{ControlPlane, password, telemetry};

/// The one answer for a token that does not open an invitation.
fn invite_gone() -> ApiError {
    ApiError::not_found("invite (unknown, used or expired)")
}

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

/// The members of a project, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberList {
    pub data: Vec<Member>,
}

/// `PATCH /api/admin/projects/{id}/members/{admin_id}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMemberRequest {
    pub role: ProjectRole,
}

/// `POST /api/admin/projects/{id}/invites`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInviteRequest {
    #[schema(example = "ann@example.com")]
    pub email: String,
    pub role: ProjectRole,
}

/// An invitation as shown to admins (never its token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InviteView {
    pub id: InviteId,
    pub project_id: ProjectId,
    pub email: String,
    pub role: ProjectRole,
    /// The admin who invited.
    pub invited_by: AdminUserId,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A new invitation: `token` and `url` are shown this once and never again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedInvite {
    /// The one-time token (URL-safe).
    pub token: String,
    /// `<public url>/dashboard/#/invite/<token>`: give it to the invitee.
    pub url: String,
    pub invite: InviteView,
}

/// Pending invitations (not used, not expired), newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InviteList {
    pub data: Vec<InviteView>,
}

/// `POST /api/admin/invites/accept`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInviteRequest {
    pub token: String,
    /// The name shown for the new member in this project.
    pub name: String,
    /// A new admin's password (the admin password rule), or, when an admin with the invite's
    /// email exists, that admin's password.
    #[schema(format = Password)]
    pub password: String,
}

/// An accepted invitation: logged in, like `POST /api/admin/login`, with the new membership.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AcceptedInvite {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    /// Always `Bearer`.
    pub token_type: String,
    pub expires_at: DateTime<Utc>,
    pub user: AdminView,
    pub member: Member,
}

/// `POST /api/admin/projects/{id}/agent-token`; the body may be empty.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberAgentTokenRequest {
    /// Lifetime in seconds, at most (and by default) `security.agent_token_ttl_secs`.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// An agent token for the calling member, used like those of `POST /api/v1/agent-tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberAgentToken {
    /// Send as `Authorization: Bearer <token>` on the Client API, or in the socket's `auth`
    /// frame.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// Who the token speaks as: agent `member:<admin id>`, named as the member.
    pub agent: Actor,
    pub scopes: Vec<Scope>,
}

impl From<&Invite> for InviteView {
    fn from(i: &Invite) -> Self {
        Self {
            id: i.id,
            project_id: i.project_id,
            email: i.email.clone(),
            role: i.role,
            invited_by: i.invited_by,
            created_at: i.created_at,
            expires_at: i.expires_at,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Members
// ---------------------------------------------------------------------------------------------

/// The members of a project (any member).
#[utoipa::path(
    get,
    path = "/api/admin/projects/{id}/members",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Project id")),
    responses(
        (status = 200, description = "The project's members, oldest first", body = MemberList),
        (status = 400, description = "Not a valid id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such project for this admin", body = ErrorBody),
    )
)]
pub async fn list_members(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath(id): ApiPath<ProjectId>,
) -> Result<ApiJson<MemberList>, ApiError> {
    authorize(&cp, &admin, id, Permission::ReadProject).await?;
    let data = cp.store().list_members(id).await.map_err(store_error)?;
    Ok(ApiJson(MemberList { data }))
}

/// The member `target` of a project the caller may see; 404 `member` otherwise.
async fn target_member(
    cp: &ControlPlane,
    project: ProjectId,
    target: AdminUserId,
) -> Result<Member, ApiError> {
    cp.store()
        .member(project, target)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("member"))
}

/// Change a member's role (`manage_members`; `manage_owners` when the old or the new role is
/// `owner`). The last owner cannot be demoted (409).
#[utoipa::path(
    patch,
    path = "/api/admin/projects/{id}/members/{admin_id}",
    tag = "admin",
    security(("bearer" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "Project id"),
        ("admin_id" = uuid::Uuid, Path, description = "The member's admin id"),
    ),
    request_body = UpdateMemberRequest,
    responses(
        (status = 200, description = "The member with its new role", body = Member),
        (status = 400, description = "Malformed body or id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "The caller's role may not change this member", body = ErrorBody),
        (status = 404, description = "No such project for this admin, or no such member", body = ErrorBody),
        (status = 409, description = "The project's last owner cannot be demoted", body = ErrorBody),
    )
)]
pub async fn update_member(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath((id, target)): ApiPath<(ProjectId, AdminUserId)>,
    ApiJson(body): ApiJson<UpdateMemberRequest>,
) -> Result<ApiJson<Member>, ApiError> {
    let access = authorize(&cp, &admin, id, Permission::ReadProject).await?;
    let current = target_member(&cp, id, target).await?;
    access.require(current.role.managed_by())?;
    access.require(body.role.managed_by())?;
    let updated = cp
        .store()
        .set_member_role(id, target, body.role)
        .await
        .map_err(member_error)?
        .ok_or_else(|| ApiError::not_found("member"))?;
    tracing::info!(admin_id = %admin.id, project_id = %id, member = %target, role = %body.role, "member role changed");
    publish(
        &cp,
        ControlEvent::MemberChanged {
            project_id: id,
            admin_id: target,
        },
    )
    .await;
    Ok(ApiJson(updated))
}

/// Remove a member (`manage_members`; `manage_owners` for an owner), or leave the project (any
/// member, for itself). The last owner cannot be removed (409). Agent tokens issued to the
/// member stop working at once.
#[utoipa::path(
    delete,
    path = "/api/admin/projects/{id}/members/{admin_id}",
    tag = "admin",
    security(("bearer" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "Project id"),
        ("admin_id" = uuid::Uuid, Path, description = "The member's admin id"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Not a valid id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "The caller's role may not remove this member", body = ErrorBody),
        (status = 404, description = "No such project for this admin, or no such member", body = ErrorBody),
        (status = 409, description = "The project's last owner cannot be removed", body = ErrorBody),
    )
)]
pub async fn remove_member(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath((id, target)): ApiPath<(ProjectId, AdminUserId)>,
) -> Result<StatusCode, ApiError> {
    let access = authorize(&cp, &admin, id, Permission::ReadProject).await?;
    let current = target_member(&cp, id, target).await?;
    if target != admin.id {
        access.require(current.role.managed_by())?;
    }
    if !cp
        .store()
        .remove_member(id, target)
        .await
        .map_err(member_error)?
    {
        return Err(ApiError::not_found("member"));
    }
    tracing::info!(admin_id = %admin.id, project_id = %id, member = %target, "member removed");
    publish(
        &cp,
        ControlEvent::MemberChanged {
            project_id: id,
            admin_id: target,
        },
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// A store refusal of a member change: the last-owner rule is a 409 with its message.
fn member_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(m) => ApiError::conflict(m),
        other => store_error(other),
    }
}

// ---------------------------------------------------------------------------------------------
// Invitations
// ---------------------------------------------------------------------------------------------

/// Where the dashboard is reached: the configured public URL, else the request's own origin.
fn public_base(cp: &ControlPlane, headers: &HeaderMap) -> String {
    if let Some(url) = &cp.config().public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        })
        .unwrap_or("localhost");
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    format!("{}://{host}", if https { "https" } else { "http" })
}

/// Invite someone by email to join the project with a role (`manage_members`;
/// `manage_owners` for `owner`). The answer holds the one-time link, shown only this once.
#[utoipa::path(
    post,
    path = "/api/admin/projects/{id}/invites",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Project id")),
    request_body = CreateInviteRequest,
    responses(
        (status = 201, description = "Created; `token` and `url` are shown only this once", body = CreatedInvite),
        (status = 400, description = "Malformed body or id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "The caller's role may not invite with this role", body = ErrorBody),
        (status = 404, description = "No such project for this admin", body = ErrorBody),
        (status = 409, description = "That email is already a member", body = ErrorBody),
        (status = 422, description = "Not an email address", body = ErrorBody),
    )
)]
pub async fn create_invite(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath(id): ApiPath<ProjectId>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateInviteRequest>,
) -> Result<(StatusCode, ApiJson<CreatedInvite>), ApiError> {
    let access = authorize(&cp, &admin, id, Permission::ManageMembers).await?;
    access.require(body.role.managed_by())?;
    let email = password::normalize_email(&body.email);
    validate::email(&email)?;
    if let Some(existing) = cp
        .store()
        .admin_user_by_email(&email)
        .await
        .map_err(store_error)?
    {
        if cp
            .store()
            .member(id, existing.id)
            .await
            .map_err(store_error)?
            .is_some()
        {
            return Err(ApiError::conflict("this email is already a member"));
        }
    }
    let invite_id = InviteId::new_v7();
    let token = team::generate_invite_token(id, invite_id);
    let t = model::now();
    let invite = Invite {
        id: invite_id,
        project_id: id,
        email,
        role: body.role,
        invited_by: admin.id,
        token_hash: token.hash,
        created_at: t,
        expires_at: t + INVITE_TTL,
        accepted_at: None,
    };
    cp.store()
        .create_invite(&invite)
        .await
        .map_err(store_error)?;
    tracing::info!(admin_id = %admin.id, project_id = %id, invite_id = %invite_id, role = %body.role, "invite created");
    let url = format!(
        "{}/dashboard/#/invite/{}",
        public_base(&cp, &headers),
        token.plaintext
    );
    Ok((
        StatusCode::CREATED,
        ApiJson(CreatedInvite {
            token: token.plaintext,
            url,
            invite: InviteView::from(&invite),
        }),
    ))
}

/// The project's pending invitations (`manage_members`), newest first, never their tokens.
#[utoipa::path(
    get,
    path = "/api/admin/projects/{id}/invites",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Project id")),
    responses(
        (status = 200, description = "Pending invitations", body = InviteList),
        (status = 400, description = "Not a valid id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "The caller's role lacks manage_members", body = ErrorBody),
        (status = 404, description = "No such project for this admin", body = ErrorBody),
    )
)]
pub async fn list_invites(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath(id): ApiPath<ProjectId>,
) -> Result<ApiJson<InviteList>, ApiError> {
    authorize(&cp, &admin, id, Permission::ManageMembers).await?;
    let now = model::now();
    let data = cp
        .store()
        .list_invites(id)
        .await
        .map_err(store_error)?
        .iter()
        .filter(|i| i.is_pending_at(now))
        .map(InviteView::from)
        .collect();
    Ok(ApiJson(InviteList { data }))
}

/// Withdraw an invitation (`manage_members`; `manage_owners` for an owner invitation): its
/// link stops working.
#[utoipa::path(
    delete,
    path = "/api/admin/projects/{id}/invites/{invite_id}",
    tag = "admin",
    security(("bearer" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "Project id"),
        ("invite_id" = uuid::Uuid, Path, description = "Invitation id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Not a valid id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "The caller's role may not withdraw this invitation", body = ErrorBody),
        (status = 404, description = "No such project for this admin, or no such invitation", body = ErrorBody),
    )
)]
pub async fn delete_invite(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath((id, invite_id)): ApiPath<(ProjectId, InviteId)>,
) -> Result<StatusCode, ApiError> {
    let access = authorize(&cp, &admin, id, Permission::ManageMembers).await?;
    let invite = cp
        .store()
        .invite(id, invite_id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("invite"))?;
    access.require(invite.role.managed_by())?;
    if !cp
        .store()
        .delete_invite(id, invite_id)
        .await
        .map_err(store_error)?
    {
        return Err(ApiError::not_found("invite"));
    }
    tracing::info!(admin_id = %admin.id, project_id = %id, %invite_id, "invite deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Accept an invitation (no authentication: the token is the credential). Creates the admin
/// with the invite's email and `password` — or, if that admin exists, checks `password` is
/// theirs — adds the membership and logs in. Single use, also under concurrent accepts.
#[utoipa::path(
    post,
    path = "/api/admin/invites/accept",
    tag = "admin",
    request_body = AcceptInviteRequest,
    security(()),
    responses(
        (status = 200, description = "Joined and logged in", body = AcceptedInvite),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "An admin with this email exists and the password is not theirs", body = ErrorBody),
        (status = 404, description = "The token is unknown, already used, withdrawn or expired (one answer for all)", body = ErrorBody),
        (status = 409, description = "Already a member of the project", body = ErrorBody),
        (status = 422, description = "Bad name, or a new password that breaks the password rule", body = ErrorBody),
        (status = 429, description = "Too many attempts", body = ErrorBody),
    )
)]
pub async fn accept_invite(
    State(cp): State<ControlPlane>,
    client_ip: Option<axum::Extension<larachat_limits::ClientIp>>,
    ApiJson(body): ApiJson<AcceptInviteRequest>,
) -> Result<ApiJson<AcceptedInvite>, ApiError> {
    // Limited like login, before any lookup or argon2 run.
    let limits = &cp.config().limits;
    if let Some(axum::Extension(ip)) = client_ip {
        limits.check(
            larachat_limits::Kind::LoginIp,
            &larachat_limits::client_ip::limit_key(ip.0),
            None,
        )?;
    }
    let parsed = ParsedInviteToken::parse(&body.token).ok_or_else(invite_gone)?;
    let name = Name::parse(body.name, "name")?;
    let now = model::now();
    let invite = cp
        .store()
        .invite(parsed.project, parsed.invite)
        .await
        .map_err(store_error)?
        .filter(|i| parsed.matches(&i.token_hash) && i.is_pending_at(now))
        .ok_or_else(invite_gone)?;
    limits.check(
        larachat_limits::Kind::LoginAccount,
        invite.email.as_str(),
        None,
    )?;

    let existing = cp
        .store()
        .admin_user_by_email(&invite.email)
        .await
        .map_err(store_error)?;
    let new_admin = match existing {
        Some(existing) => {
            if cp
                .store()
                .member(invite.project_id, existing.id)
                .await
                .map_err(store_error)?
                .is_some()
            {
                return Err(ApiError::conflict("already a member of this project"));
            }
            // The invitee proves it is that admin.
            if password::check_login(&cp, &invite.email, body.password)
                .await?
                .is_none()
            {
                telemetry::login(false);
                return Err(ApiError::unauthorized(
                    "an admin with this email exists: use its password",
                ));
            }
            None
        }
        None => {
            password::check_password_rule(&body.password)?;
            let password_hash = password::hash_new_password(&cp, body.password).await?;
            Some(AdminUser {
                id: AdminUserId::new_v7(),
                email: invite.email.clone(),
                password_hash,
                created_at: now,
            })
        }
    };

    // The commit point: of concurrent accepts, one claims the invitation.
    let invite = cp
        .store()
        .claim_invite(invite.project_id, invite.id, &parsed.hash(), model::now())
        .await
        .map_err(store_error)?
        .ok_or_else(invite_gone)?;
    let admin = match new_admin {
        Some(admin) => {
            cp.store()
                .create_admin_user(&admin)
                .await
                .map_err(|e| match e {
                    StoreError::Conflict(_) => ApiError::conflict(
                        "an admin with this email was created meanwhile; ask for a new invite",
                    ),
                    other => store_error(other),
                })?;
            tracing::info!(admin_id = %admin.id, "admin user created from an invite");
            admin
        }
        None => cp
            .store()
            .admin_user_by_email(&invite.email)
            .await
            .map_err(store_error)?
            .ok_or_else(invite_gone)?,
    };
    let member = Member {
        project_id: invite.project_id,
        admin_id: admin.id,
        email: invite.email.clone(),
        name: name.into_inner(),
        role: invite.role,
        created_at: model::now(),
    };
    cp.store().add_member(&member).await.map_err(member_error)?;
    let issued = cp.issue_admin_token(&admin)?;
    telemetry::login(true);
    tracing::info!(admin_id = %admin.id, project_id = %invite.project_id, invite_id = %invite.id, role = %invite.role, "invite accepted");
    Ok(ApiJson(AcceptedInvite {
        token: issued.token,
        token_type: "Bearer".to_owned(),
        expires_at: issued.expires_at,
        user: AdminView::of(&cp, &admin),
        member,
    }))
}

// ---------------------------------------------------------------------------------------------
// Agent tokens for members
// ---------------------------------------------------------------------------------------------

/// An agent token for the calling member (any role: `agent_token`), so a dashboard inbox
/// answers conversations without a secret key. It speaks as agent `member:<admin id>` with
/// the member's name, with `read` and `write`, and stops working as soon as the membership
/// ends. Platform admins must be members of the project to get one.
#[utoipa::path(
    post,
    path = "/api/admin/projects/{id}/agent-token",
    operation_id = "create_member_agent_token",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Project id")),
    request_body(content = MemberAgentTokenRequest, description = "Optional: the body may be empty"),
    responses(
        (status = 201, description = "Issued", body = MemberAgentToken),
        (status = 400, description = "Malformed body or id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not a member of the project (a platform admin)", body = ErrorBody),
        (status = 404, description = "No such project for this admin", body = ErrorBody),
        (status = 422, description = "ttl_secs is 0", body = ErrorBody),
    )
)]
pub async fn create_agent_token(
    State(cp): State<ControlPlane>,
    AdminAuth(admin): AdminAuth,
    ApiPath(id): ApiPath<ProjectId>,
    body: Bytes,
) -> Result<(StatusCode, ApiJson<MemberAgentToken>), ApiError> {
    let request: MemberAgentTokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        MemberAgentTokenRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?
    };
    authorize(&cp, &admin, id, Permission::AgentToken).await?;
    let member = cp
        .store()
        .member(id, admin.id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| {
            ApiError::forbidden("agent tokens are for members: add yourself to the project first")
        })?;
    let max = cp.config().agent_token_ttl;
    let ttl = match request.ttl_secs {
        Some(0) => return Err(ApiError::validation("ttl_secs must be at least 1")),
        Some(s) => std::time::Duration::from_secs(s).min(max),
        None => max,
    };
    let actor = Actor {
        kind: ActorKind::Agent,
        id: format!("{MEMBER_AGENT_PREFIX}{}", admin.id),
        name: Some(member.name),
    };
    let issued = tokens::sign_agent_token(
        cp.agent_token_key(),
        id,
        AgentIssuer::Member(admin.id),
        actor,
        [Scope::Read, Scope::Write].into(),
        ttl,
        model::now(),
    )?;
    tracing::info!(admin_id = %admin.id, project_id = %id, "member agent token issued");
    Ok((
        StatusCode::CREATED,
        ApiJson(MemberAgentToken {
            token: issued.token,
            expires_at: issued.expires_at,
            agent: issued.actor,
            scopes: issued.scopes.into_iter().collect(),
        }),
    ))
}
