//! `/api/v1/users`: create or identify end users, and get an end-user token.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use larachat_core::ApiError;
use larachat_core::http::{ApiJson, ApiPath};
use larachat_core::id::EndUserId;
use larachat_core::model::EndUser;
use larachat_service::input::{Email, Identifier, Metadata, Name, Url, parse_change, parse_opt};
use larachat_service::users::{UserChange, UserInput};

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

pub(crate) use larachat_core::http::double_option;

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
    let input = UserInput {
        identifier: parse_opt(body.user_identifier, |v| {
            Identifier::parse(v, "user_identifier")
        })?,
        name: parse_opt(body.name, |v| Name::parse(v, "name"))?,
        email: parse_opt(body.email, |v| Email::parse(v, "email"))?,
        avatar: parse_opt(body.avatar, |v| Url::parse(v, "avatar"))?,
        metadata: Metadata::parse_opt(body.metadata)?,
    };
    let (user, created) = gw.service().create_user(&who, input).await?;
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
    // what agents see about them (the service refuses; refused here before parsing too).
    if who.end_user().is_some() {
        return Err(ApiError::forbidden(
            "end users cannot change their profile; the tenant's backend does (secret key)",
        ));
    }
    who.require_key_write()?;
    let change = UserChange {
        name: parse_change(body.name, |v| Name::parse(v, "name"))?,
        email: parse_change(body.email, |v| Email::parse(v, "email"))?,
        avatar: parse_change(body.avatar, |v| Url::parse(v, "avatar"))?,
        metadata: body.metadata.map(Metadata::parse).transpose()?,
    };
    gw.service()
        .update_user(&who, id, change)
        .await
        .map(ApiJson)
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
    gw.service().delete_user(&who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
