//! `/api/v1/agent-tokens`: short-lived agent tokens for browsers (an agent inbox, the demo),
//! so that a secret key never has to be in a page.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use larachat_core::http::ApiJson;
use larachat_core::model::{Actor, ActorKind, Scope};
use larachat_core::{ApiError, validate};

use crate::Gateway;
use crate::auth::{Caller, PrincipalKind};

/// Issue an agent token on behalf of the calling secret key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgentToken {
    /// The agent the token speaks as.
    pub agent: AgentRef,
    /// `read` and/or `write`, at most the key's own; default: the key's.
    pub scopes: Option<Vec<Scope>>,
    /// Lifetime in seconds, at most (and by default) `security.agent_token_ttl_secs`.
    pub ttl_secs: Option<u64>,
}

/// An agent of the tenant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentRef {
    /// The tenant's id for the agent (1–128 characters `[A-Za-z0-9_.@:+-]`).
    pub id: String,
    /// Display name.
    pub name: Option<String>,
}

/// A new agent token.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentTokenView {
    /// Send as `Authorization: Bearer <token>`, or in the socket's `auth` frame.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// Who the token speaks as.
    pub agent: Actor,
    pub scopes: Vec<Scope>,
}

#[utoipa::path(post, path = "/api/v1/agent-tokens", tag = "client", request_body = CreateAgentToken,
    responses((status = 201, body = AgentTokenView, description = "issued")),
    security(("bearer" = [])))]
pub async fn create_agent_token(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiJson(body): ApiJson<CreateAgentToken>,
) -> Result<(StatusCode, ApiJson<AgentTokenView>), ApiError> {
    let PrincipalKind::Key { key_id, scopes } = &who.kind else {
        return Err(ApiError::forbidden(
            "agent tokens are issued to a secret key, not to a token",
        ));
    };
    validate::identifier(&body.agent.id, "agent.id")?;
    if let Some(n) = &body.agent.name {
        validate::name(n, "agent.name")?;
    }
    let key_may = |s: &Scope| scopes.contains(s) || scopes.contains(&Scope::Admin);
    let granted: BTreeSet<Scope> = match body.scopes {
        None => [Scope::Read, Scope::Write]
            .into_iter()
            .filter(key_may)
            .collect(),
        Some(asked) => {
            if asked.contains(&Scope::Admin) {
                return Err(ApiError::validation(
                    "agent tokens take read and write only",
                ));
            }
            if let Some(s) = asked.iter().find(|s| !key_may(s)) {
                return Err(ApiError::forbidden(format!(
                    "this key lacks the {} scope",
                    s.as_str()
                )));
            }
            asked.into_iter().collect()
        }
    };
    if granted.is_empty() {
        return Err(ApiError::validation("an agent token needs read or write"));
    }
    let ttl = match body.ttl_secs {
        Some(0) => return Err(ApiError::validation("ttl_secs must be at least 1")),
        Some(s) => Some(Duration::from_secs(s)),
        None => None,
    };
    let actor = Actor {
        kind: ActorKind::Agent,
        id: body.agent.id,
        name: body.agent.name,
    };
    let issued = gw
        .auth()
        .issue_agent_token(who.project, *key_id, actor, granted, ttl)?;
    Ok((
        StatusCode::CREATED,
        ApiJson(AgentTokenView {
            token: issued.token,
            expires_at: issued.expires_at,
            agent: issued.actor,
            scopes: issued.scopes.into_iter().collect(),
        }),
    ))
}
