//! The tokens Lara Chat signs for the Client API (HS256 with `security.jwt_secret`): their
//! claims, and agent tokens, signed here once for both issuers — the gateway (for a secret
//! key's holder, `POST /api/v1/agent-tokens`) and the control plane (for a project member,
//! `POST /api/admin/projects/{id}/agent-token`). The gateway verifies them all.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use larachat_core::ApiError;
use larachat_core::id::{AdminUserId, ApiKeyId, ProjectId};
use larachat_core::model::{Actor, Scope};

/// `iss` of every token Lara Chat signs.
pub const ISSUER: &str = "larachat";
/// Audience prefix of agent tokens: `larachat:agent:<project id>`.
pub const AGENT_AUD_PREFIX: &str = "larachat:agent:";
/// `by` prefix of agent tokens issued by a secret key.
const BY_KEY_PREFIX: &str = "key:";
/// `by` prefix of agent tokens issued to a project member.
const BY_MEMBER_PREFIX: &str = "member:";
/// Agent id (`sub`) prefix of a member's agent tokens: `member:<admin id>`.
pub const MEMBER_AGENT_PREFIX: &str = "member:";

/// Claims of the tokens the gateway verifies (end-user, visitor and agent tokens; `aud` tells
/// them apart).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenClaims {
    pub sub: String,
    pub aud: String,
    pub iss: String,
    pub exp: i64,
    pub iat: i64,
    /// Widget sessions only: the origin the session belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Agent tokens: the agent's display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Agent tokens: scopes (a subset of the issuer's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scp: Option<Vec<Scope>>,
    /// Agent tokens: who issued it ([`AgentIssuer`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// Who an agent token was issued to or by; it stays valid only while that credential does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentIssuer {
    /// A secret key (`by = key:<key id>`): refused once the key is revoked or expires.
    Key(ApiKeyId),
    /// A member of the project (`by = member:<admin id>`): refused once the membership ends.
    Member(AdminUserId),
}

impl AgentIssuer {
    /// The `by` claim's value, or `None`.
    pub fn parse(by: &str) -> Option<Self> {
        if let Some(k) = by.strip_prefix(BY_KEY_PREFIX) {
            return k.parse().ok().map(Self::Key);
        }
        by.strip_prefix(BY_MEMBER_PREFIX)
            .and_then(|m| m.parse().ok())
            .map(Self::Member)
    }
}

impl fmt::Display for AgentIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(k) => write!(f, "{BY_KEY_PREFIX}{k}"),
            Self::Member(m) => write!(f, "{BY_MEMBER_PREFIX}{m}"),
        }
    }
}

/// A freshly issued agent token.
#[derive(Debug, Clone)]
pub struct AgentToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub actor: Actor,
    pub scopes: BTreeSet<Scope>,
}

/// Signs `claims` (HS256).
pub fn sign(key: &EncodingKey, claims: &TokenClaims) -> Result<String, ApiError> {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key).map_err(|e| {
        tracing::error!(error = %e, "could not sign a token");
        ApiError::internal()
    })
}

/// Signs an agent token of `project` for `actor` (an agent), issued by `issuer`, with `scopes`
/// (checked by the caller), valid `ttl` from `now` (whole seconds).
pub fn sign_agent_token(
    key: &EncodingKey,
    project: ProjectId,
    issuer: AgentIssuer,
    actor: Actor,
    scopes: BTreeSet<Scope>,
    ttl: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<AgentToken, ApiError> {
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::minutes(15));
    let iat = now.timestamp();
    let exp = iat + ttl.num_seconds();
    let claims = TokenClaims {
        sub: actor.id.clone(),
        aud: format!("{AGENT_AUD_PREFIX}{project}"),
        iss: ISSUER.to_owned(),
        exp,
        iat,
        origin: None,
        name: actor.name.clone(),
        scp: Some(scopes.iter().copied().collect()),
        by: Some(issuer.to_string()),
    };
    let token = sign(key, &claims)?;
    Ok(AgentToken {
        token,
        expires_at: DateTime::from_timestamp(exp, 0).unwrap_or(now + ttl),
        actor,
        scopes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_round_trip() {
        for i in [
            AgentIssuer::Key(ApiKeyId::new_v7()),
            AgentIssuer::Member(AdminUserId::new_v7()),
        ] {
            assert_eq!(AgentIssuer::parse(&i.to_string()), Some(i));
        }
        assert_eq!(AgentIssuer::parse("key:nope"), None);
        assert_eq!(AgentIssuer::parse("someone"), None);
    }
}
