//! `GET /api/v1/presence`: end users online now (tenant side only).

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use larachat_core::ApiError;
use larachat_core::http::ApiJson;
use larachat_core::protocol::OnlineUser;

use crate::Gateway;
use crate::auth::Caller;

/// End users online now, oldest first, at most 1000 (server-configured).
#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceList {
    pub data: Vec<OnlineUser>,
    /// More users are online than listed.
    pub truncated: bool,
}

/// Who is online now: end users with at least one realtime connection on any gateway (or
/// whose last one closed less than the presence debounce ago). See docs/protocol.md §3.5.
#[utoipa::path(get, path = "/api/v1/presence", tag = "client",
    responses((status = 200, body = PresenceList),
              (status = 403, description = "end-user tokens cannot list presence", body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_presence(
    State(gw): State<Gateway>,
    Caller(who): Caller,
) -> Result<ApiJson<PresenceList>, ApiError> {
    if who.end_user().is_some() {
        return Err(ApiError::forbidden(
            "presence needs a secret key or an agent token",
        ));
    }
    who.require_read()?;
    let (data, truncated) = gw.presence().online(who.project).await.map_err(|e| {
        tracing::warn!(error = %e, "presence query failed");
        ApiError::unavailable()
    })?;
    Ok(ApiJson(PresenceList { data, truncated }))
}
