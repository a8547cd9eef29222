//! Who is calling, after authentication: the project (from the credential only) and the kind
//! of credential with its scopes. Built by the gateway's authentication; every service
//! operation takes one and checks what it allows.

use std::collections::BTreeSet;

use larachat_core::ApiError;
use larachat_core::id::{AdminUserId, ApiKeyId, EndUserId, ProjectId};
use larachat_core::model::{Actor, ActorKind, Scope};

pub use crate::tokens::AgentIssuer;

/// Who is calling, after authentication.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub project: ProjectId,
    pub kind: PrincipalKind,
    /// For widget sessions: the page origin the token was issued to. Requests and sockets
    /// using the token must come from that origin, and it must still be allowed.
    pub origin: Option<String>,
    /// End users: their display name, read once while authenticating (messages carry it).
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PrincipalKind {
    /// A tenant backend or agent using a secret key.
    Key {
        key_id: ApiKeyId,
        scopes: BTreeSet<Scope>,
    },
    /// An agent with a short-lived agent token issued by a secret key or to a project member.
    Agent {
        issuer: AgentIssuer,
        scopes: BTreeSet<Scope>,
        /// Who the token speaks as (an `agent` actor; fixed by the token).
        actor: Actor,
    },
    /// An end user with a token.
    EndUser { user_id: EndUserId },
}

impl Principal {
    /// A stable name of who is calling within the project, scoping their idempotency keys:
    /// `key:<api key id>`, `agent:<agent id>` (an agent token speaks as one agent, whoever
    /// issued it), `user:<end user id>`.
    pub fn caller_name(&self) -> String {
        match &self.kind {
            PrincipalKind::Key { key_id, .. } => format!("key:{key_id}"),
            PrincipalKind::Agent { actor, .. } => format!("agent:{}", actor.id),
            PrincipalKind::EndUser { user_id } => format!("user:{user_id}"),
        }
    }

    /// Requires `read` (implied by `write` and `admin`). End users may read their own data.
    pub fn require_read(&self) -> Result<(), ApiError> {
        match &self.kind {
            PrincipalKind::EndUser { .. } => Ok(()),
            PrincipalKind::Key { scopes, .. } | PrincipalKind::Agent { scopes, .. } => {
                if scopes
                    .iter()
                    .any(|s| matches!(s, Scope::Read | Scope::Write | Scope::Admin))
                {
                    Ok(())
                } else {
                    Err(ApiError::forbidden("this key lacks the read scope"))
                }
            }
        }
    }

    /// Requires `write` (implied by `admin`) for keys. End users may write where the handler
    /// allows them to (their own conversations).
    pub fn require_write(&self) -> Result<(), ApiError> {
        match &self.kind {
            PrincipalKind::EndUser { .. } => Ok(()),
            PrincipalKind::Key { scopes, .. } | PrincipalKind::Agent { scopes, .. } => {
                if scopes.contains(&Scope::Write) || scopes.contains(&Scope::Admin) {
                    Ok(())
                } else {
                    Err(ApiError::forbidden("this key lacks the write scope"))
                }
            }
        }
    }

    /// Requires a secret key (tenant backend), with `write`.
    pub fn require_key_write(&self) -> Result<(), ApiError> {
        match &self.kind {
            PrincipalKind::EndUser { .. } => Err(ApiError::forbidden(
                "this operation needs a secret key, not an end-user token",
            )),
            PrincipalKind::Agent { .. } => Err(ApiError::forbidden(
                "this operation needs a secret key, not an agent token",
            )),
            PrincipalKind::Key { .. } => self.require_write(),
        }
    }

    /// Requires the tenant's side (a secret key or an agent token) with `write`: end users
    /// may not do this.
    pub fn require_tenant_write(&self) -> Result<(), ApiError> {
        match &self.kind {
            PrincipalKind::EndUser { .. } => Err(ApiError::forbidden(
                "this operation needs a secret key or an agent token, not an end-user token",
            )),
            PrincipalKind::Key { .. } | PrincipalKind::Agent { .. } => self.require_write(),
        }
    }

    pub fn end_user(&self) -> Option<EndUserId> {
        match self.kind {
            PrincipalKind::EndUser { user_id } => Some(user_id),
            PrincipalKind::Key { .. } | PrincipalKind::Agent { .. } => None,
        }
    }

    /// The secret key behind the credential: the key itself, or the key that issued an agent
    /// token (revoking it ends both). `None` for a member's agent token.
    pub fn key_id(&self) -> Option<ApiKeyId> {
        match self.kind {
            PrincipalKind::Key { key_id, .. }
            | PrincipalKind::Agent {
                issuer: AgentIssuer::Key(key_id),
                ..
            } => Some(key_id),
            PrincipalKind::Agent { .. } | PrincipalKind::EndUser { .. } => None,
        }
    }

    /// The project member a member's agent token was issued to; `None` for every other
    /// credential.
    pub fn member_id(&self) -> Option<AdminUserId> {
        match self.kind {
            PrincipalKind::Agent {
                issuer: AgentIssuer::Member(admin),
                ..
            } => Some(admin),
            _ => None,
        }
    }

    /// The default actor: an end user is itself, an agent token its agent, a key an agent
    /// named after the key.
    pub fn default_actor(&self) -> Actor {
        match &self.kind {
            PrincipalKind::EndUser { user_id } => Actor::end_user(*user_id, None),
            PrincipalKind::Agent { actor, .. } => actor.clone(),
            PrincipalKind::Key { key_id, .. } => Actor {
                kind: ActorKind::Agent,
                id: format!("key_{key_id}"),
                name: None,
            },
        }
    }
}
