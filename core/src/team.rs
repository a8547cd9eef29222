//! Project teams: members with a [`ProjectRole`], the one permission matrix
//! ([`ProjectRole::allows`]), and invitations with their one-time token.
//!
//! Every project route of the Admin API asks [`ProjectRole::allows`] (platform admins may do
//! everything); nothing else decides what a role may do.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::id::{AdminUserId, InviteId, ProjectId};

/// Lifetime of an invitation.
pub const INVITE_TTL: chrono::Duration = chrono::Duration::days(7);

/// What a member may do in a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ProjectRole {
    /// Everything on the project: delete it, manage every member including owners.
    Owner,
    /// Settings, keys, webhooks, widget, analytics, usage, and members other than owners.
    Admin,
    /// Reads the project and its analytics, answers conversations (agent token).
    Agent,
}

/// One thing a project route does. See [`ProjectRole::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// See the project (and its member list).
    ReadProject,
    /// Change name, status or settings (the plan is a platform admin's).
    UpdateProject,
    DeleteProject,
    /// Create, list and revoke API keys.
    ManageKeys,
    ManageWebhooks,
    /// Widget appearance, allowed origins, identity verification and its secret.
    ManageWidget,
    ReadAnalytics,
    ReadUsage,
    /// Invite, change and remove members whose role is not `owner`.
    ManageMembers,
    /// Invite, promote to, demote from and remove `owner`s.
    ManageOwners,
    /// Get an agent token to answer conversations.
    AgentToken,
}

impl Permission {
    /// Every permission, in declaration order.
    pub const ALL: [Self; 11] = [
        Self::ReadProject,
        Self::UpdateProject,
        Self::DeleteProject,
        Self::ManageKeys,
        Self::ManageWebhooks,
        Self::ManageWidget,
        Self::ReadAnalytics,
        Self::ReadUsage,
        Self::ManageMembers,
        Self::ManageOwners,
        Self::AgentToken,
    ];
}

impl ProjectRole {
    pub const ALL: [Self; 3] = [Self::Owner, Self::Admin, Self::Agent];

    /// The permission matrix: the only place that says what a role may do.
    pub const fn allows(self, permission: Permission) -> bool {
        use Permission as P;
        match self {
            Self::Owner => true,
            Self::Admin => !matches!(permission, P::DeleteProject | P::ManageOwners),
            Self::Agent => matches!(
                permission,
                P::ReadProject | P::ReadAnalytics | P::AgentToken
            ),
        }
    }

    /// The permissions of the role, in [`Permission::ALL`] order.
    pub fn permissions(self) -> Vec<Permission> {
        Permission::ALL
            .into_iter()
            .filter(|p| self.allows(*p))
            .collect()
    }

    /// The permission needed to give or take away this role: owners are an owner's business.
    pub const fn managed_by(self) -> Permission {
        match self {
            Self::Owner => Permission::ManageOwners,
            Self::Admin | Self::Agent => Permission::ManageMembers,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Agent => "agent",
        }
    }
}

impl fmt::Display for ProjectRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Not one of `owner`, `admin`, `agent`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown project role")]
pub struct UnknownRole;

impl FromStr for ProjectRole {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or(UnknownRole)
    }
}

/// An admin's membership of a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Member {
    pub project_id: ProjectId,
    pub admin_id: AdminUserId,
    /// The admin's email (lower case).
    pub email: String,
    /// The name shown for this member in this project (the agent name of its messages).
    pub name: String,
    pub role: ProjectRole,
    pub created_at: DateTime<Utc>,
}

/// An invitation to join a project with a role. Only the SHA-256 of its token is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    pub id: InviteId,
    pub project_id: ProjectId,
    /// Lower case.
    pub email: String,
    pub role: ProjectRole,
    pub invited_by: AdminUserId,
    pub token_hash: [u8; 32],
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// When it was used; an invite is used at most once.
    pub accepted_at: Option<DateTime<Utc>>,
}

impl Invite {
    /// Not used and not expired at `at`.
    pub fn is_pending_at(&self, at: DateTime<Utc>) -> bool {
        self.accepted_at.is_none() && at < self.expires_at
    }
}

/// The bytes of an invite token after its project and invite ids.
const SECRET_BYTES: usize = 32;
const TOKEN_BYTES: usize = 16 + 16 + SECRET_BYTES;

/// A fresh invite token: the plaintext for the link (shown once) and the hash to store.
#[derive(Debug, Clone)]
pub struct GeneratedInviteToken {
    pub plaintext: String,
    pub hash: [u8; 32],
}

/// Makes the token of invite `invite` of `project`: URL-safe base64 (no padding, 86
/// characters) of the project id, the invite id and 32 random bytes. The ids let the store
/// find the invite in its project's partition; only the SHA-256 of the random part is kept.
pub fn generate_invite_token(project: ProjectId, invite: InviteId) -> GeneratedInviteToken {
    let mut secret = [0u8; SECRET_BYTES];
    rand::Rng::fill(&mut rand::thread_rng(), &mut secret[..]);
    let mut raw = Vec::with_capacity(TOKEN_BYTES);
    raw.extend_from_slice(project.as_uuid().as_bytes());
    raw.extend_from_slice(invite.as_uuid().as_bytes());
    raw.extend_from_slice(&secret);
    GeneratedInviteToken {
        plaintext: URL_SAFE_NO_PAD.encode(&raw),
        hash: Sha256::digest(secret).into(),
    }
}

/// A presented invite token, split (no store touched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedInviteToken {
    pub project: ProjectId,
    pub invite: InviteId,
    hash: [u8; 32],
}

impl ParsedInviteToken {
    /// `None` for anything that is not the shape [`generate_invite_token`] makes.
    pub fn parse(token: &str) -> Option<Self> {
        if token.len() != 86 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        if raw.len() != TOKEN_BYTES {
            return None;
        }
        let id = |b: &[u8]| uuid::Uuid::from_slice(b).ok();
        Some(Self {
            project: ProjectId::from_uuid(id(&raw[..16])?),
            invite: InviteId::from_uuid(id(&raw[16..32])?),
            hash: Sha256::digest(&raw[32..]).into(),
        })
    }

    /// The SHA-256 of the token's secret part, as stored.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// Whether this token is the one whose hash is `stored` (constant time).
    pub fn matches(&self, stored: &[u8; 32]) -> bool {
        self.hash.ct_eq(stored).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix() {
        use Permission as P;
        for p in Permission::ALL {
            assert!(ProjectRole::Owner.allows(p), "{p:?}");
        }
        let admin = ProjectRole::Admin.permissions();
        assert!(!admin.contains(&P::DeleteProject));
        assert!(!admin.contains(&P::ManageOwners));
        assert_eq!(admin.len(), Permission::ALL.len() - 2);
        assert_eq!(
            ProjectRole::Agent.permissions(),
            vec![P::ReadProject, P::ReadAnalytics, P::AgentToken]
        );
        assert_eq!(ProjectRole::Owner.managed_by(), P::ManageOwners);
        assert_eq!(ProjectRole::Agent.managed_by(), P::ManageMembers);
    }

    #[test]
    fn roles_round_trip() {
        for r in ProjectRole::ALL {
            assert_eq!(r.as_str().parse::<ProjectRole>(), Ok(r));
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        assert!("Owner".parse::<ProjectRole>().is_err());
        assert_eq!(
            serde_json::to_string(&Permission::ManageOwners).unwrap(),
            "\"manage_owners\""
        );
    }

    #[test]
    fn invite_tokens_parse_and_match_only_their_hash() {
        let (p, i) = (ProjectId::new_v7(), InviteId::new_v7());
        let t = generate_invite_token(p, i);
        assert_eq!(t.plaintext.len(), 86);
        let parsed = ParsedInviteToken::parse(&t.plaintext).unwrap();
        assert_eq!((parsed.project, parsed.invite), (p, i));
        assert!(parsed.matches(&t.hash));
        let other = generate_invite_token(p, i);
        assert!(!parsed.matches(&other.hash));
        assert!(ParsedInviteToken::parse("").is_none());
        assert!(ParsedInviteToken::parse(&t.plaintext[1..]).is_none());
        assert!(ParsedInviteToken::parse(&"*".repeat(86)).is_none());
    }
}
