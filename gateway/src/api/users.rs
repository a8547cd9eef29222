//! `/api/v1/users`: create or identify end users, and get an end-user token.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use larachat_core::http::{ApiJson, ApiPath};
use larachat_core::id::EndUserId;
use larachat_core::model::{EndUser, EndUserPatch};
use larachat_core::{ApiError, validate};
use larachat_store::NewEndUser;

use crate::Gateway;
use crate::auth::Caller;

/// Create an end user, or identify an existing one by `user_identifier`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// The tenant's own id for the user. Omit for an anonymous visitor.
    pub user_identifier: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub avatar: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

/// Change an end user's profile. `null` clears a field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub avatar: Option<Option<String>>,
    pub metadata: Option<serde_json::Value>,
}

/// An end user with a fresh token for realtime connections and end-user API calls.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserWithToken {
    pub user: EndUser,
    pub token: String,
    pub token_expires_at: DateTime<Utc>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
pub(crate) fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn check_profile(
    name: Option<&str>,
    email: Option<&str>,
    avatar: Option<&str>,
    metadata: Option<&serde_json::Value>,
) -> Result<(), ApiError> {
    if let Some(n) = name {
        validate::name(n, "name")?;
    }
    if let Some(e) = email {
        validate::email(e)?;
    }
    if let Some(a) = avatar {
        validate::url(a, "avatar")?;
    }
    if let Some(m) = metadata {
        validate::metadata(m)?;
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/users", tag = "client", request_body = CreateUser,
    responses((status = 201, body = UserWithToken, description = "created"),
              (status = 200, body = UserWithToken, description = "identified an existing user"),
              (status = 401, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_user(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<impl IntoResponse, ApiError> {
    who.require_key_write()?;
    if let Some(id) = &body.user_identifier {
        validate::identifier(id, "user_identifier")?;
    }
    check_profile(
        body.name.as_deref(),
        body.email.as_deref(),
        body.avatar.as_deref(),
        body.metadata.as_ref(),
    )?;
    let (user, created) = gw
        .store()
        .upsert_end_user(
            who.project,
            &NewEndUser {
                user_identifier: body.user_identifier,
                name: body.name,
                email: body.email,
                avatar: body.avatar,
                metadata: body
                    .metadata
                    .unwrap_or_else(larachat_core::model::empty_object),
            },
        )
        .await?;
    let (token, token_expires_at) = gw.auth().issue_user_token(who.project, user.id)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        ApiJson(UserWithToken {
            user,
            token,
            token_expires_at,
        }),
    ))
}

/// End users may only see and change themselves.
fn check_self(who: &crate::auth::Principal, id: EndUserId) -> Result<(), ApiError> {
    match who.end_user() {
        Some(me) if me != id => Err(ApiError::not_found("end user")),
        _ => Ok(()),
    }
}

#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "client",
    params(("id" = uuid::Uuid, Path, description = "end user id")),
    responses((status = 200, body = EndUser), (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_user(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<EndUserId>,
) -> Result<ApiJson<EndUser>, ApiError> {
    who.require_read()?;
    check_self(&who, id)?;
    gw.store()
        .end_user(who.project, id)
        .await?
        .map(ApiJson)
        .ok_or_else(|| ApiError::not_found("end user"))
}

#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "client", request_body = UpdateUser,
    params(("id" = uuid::Uuid, Path, description = "end user id")),
    responses((status = 200, body = EndUser), (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_user(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<EndUserId>,
    ApiJson(body): ApiJson<UpdateUser>,
) -> Result<ApiJson<EndUser>, ApiError> {
    // Name, e-mail, avatar and metadata belong to the tenant: an end user cannot rewrite
    // what agents see about them.
    if who.end_user().is_some() {
        return Err(ApiError::forbidden(
            "end users cannot change their profile; the tenant's backend does (secret key)",
        ));
    }
    who.require_key_write()?;
    check_profile(
        body.name.as_ref().and_then(|n| n.as_deref()),
        body.email.as_ref().and_then(|n| n.as_deref()),
        body.avatar.as_ref().and_then(|n| n.as_deref()),
        body.metadata.as_ref(),
    )?;
    let patch = EndUserPatch {
        name: body.name,
        email: body.email,
        avatar: body.avatar,
        metadata: body.metadata,
        last_seen_at: None,
    };
    gw.store()
        .update_end_user(who.project, id, &patch)
        .await?
        .map(ApiJson)
        .ok_or_else(|| ApiError::not_found("end user"))
}

#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "client",
    params(("id" = uuid::Uuid, Path, description = "end user id")),
    responses((status = 204, description = "deleted"), (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_user(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<EndUserId>,
) -> Result<StatusCode, ApiError> {
    who.require_key_write()?;
    if gw.store().delete_end_user(who.project, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("end user"))
    }
}
