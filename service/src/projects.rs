//! The control plane's changes: projects (with their widget settings) and API keys, and who
//! may make them: [`Service::authorize`] checks the caller's membership of the project and its
//! role against one [`Permission`] ([`ProjectRole::allows`], the one matrix). A project the
//! caller is not a member of answers 404 like a missing one; platform admins may do
//! everything.
//!
//! These changes have no domain events yet (none of the seed's kinds is about them). The
//! control plane announces them to gateways itself (`ControlEvent` on the control subject),
//! after the service call, because the announcement also reaches its own in-process listeners.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use larachat_core::ApiError;
use larachat_core::id::{AdminUserId, ApiKeyId, ProjectId};
use larachat_core::keys;
use larachat_core::model::{
    self, ApiKeyRecord, KeyKind, PlanId, Project, ProjectPatch, ProjectStatus, Scope,
    WidgetSettings,
};
use larachat_core::team::{Permission, ProjectRole};

use crate::Service;
use crate::input::Name;

/// Largest serialized `settings` object of a project.
pub const MAX_SETTINGS_BYTES: usize = 32 * 1024;

/// A project's `settings`: a JSON object of at most [`MAX_SETTINGS_BYTES`] whose `limits`
/// section (read by every gateway) is well formed.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectSettings(serde_json::Value);

impl ProjectSettings {
    pub fn parse(settings: serde_json::Value) -> Result<Self, ApiError> {
        if !settings.is_object() {
            return Err(ApiError::validation("settings must be a JSON object"));
        }
        // Refuse a malformed `settings.limits` here rather than have every gateway ignore it.
        larachat_limits::ProjectLimits::from_settings(&settings).map_err(ApiError::validation)?;
        let len = serde_json::to_vec(&settings).map_or(usize::MAX, |v| v.len());
        if len > MAX_SETTINGS_BYTES {
            return Err(ApiError::validation(format!(
                "settings must be at most {MAX_SETTINGS_BYTES} bytes"
            )));
        }
        Ok(Self(settings))
    }

    /// `{}`.
    pub fn empty() -> Self {
        Self(model::empty_object())
    }

    pub fn into_value(self) -> serde_json::Value {
        self.0
    }
}

/// A project to create, parsed.
#[derive(Debug, Clone)]
pub struct NewProject {
    pub name: Name,
    pub plan: PlanId,
    pub settings: ProjectSettings,
}

/// A change to a project, parsed. All `None`: nothing changes.
#[derive(Debug, Clone, Default)]
pub struct ProjectChange {
    pub name: Option<Name>,
    pub plan: Option<PlanId>,
    pub status: Option<ProjectStatus>,
    pub settings: Option<ProjectSettings>,
}

/// The scopes of a new key, checked against its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyScopes(BTreeSet<Scope>);

impl KeyScopes {
    /// Secret keys: `read` + `write` by default, never empty. Publishable keys: none.
    pub fn parse(kind: KeyKind, requested: Option<Vec<Scope>>) -> Result<Self, ApiError> {
        match (kind, requested) {
            (KeyKind::Secret, None) => Ok(Self([Scope::Read, Scope::Write].into())),
            (KeyKind::Secret, Some(s)) if s.is_empty() => Err(ApiError::validation(
                "scopes must not be empty for a secret key",
            )),
            (KeyKind::Secret, Some(s)) => Ok(Self(s.into_iter().collect())),
            (KeyKind::Publishable, None) => Ok(Self(BTreeSet::new())),
            (KeyKind::Publishable, Some(s)) if s.is_empty() => Ok(Self(BTreeSet::new())),
            (KeyKind::Publishable, Some(_)) => {
                Err(ApiError::validation("publishable keys have no scopes"))
            }
        }
    }

    pub fn as_set(&self) -> &BTreeSet<Scope> {
        &self.0
    }
}

/// An API key to issue, parsed.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub name: Name,
    pub kind: KeyKind,
    pub scopes: KeyScopes,
    /// In the future, at millisecond precision (see [`NewApiKey::expiry`]).
    pub expires_at: Option<DateTime<Utc>>,
}

impl NewApiKey {
    /// An expiry in the future, kept to the millisecond like every stored time (so the answer
    /// matches what is stored).
    pub fn expiry(at: Option<DateTime<Utc>>) -> Result<Option<DateTime<Utc>>, ApiError> {
        match at {
            Some(at) if at <= model::now() => {
                Err(ApiError::validation("expires_at must be in the future"))
            }
            Some(at) => Ok(Some(
                DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at),
            )),
            None => Ok(None),
        }
    }
}

/// A freshly issued key: the plaintext is shown once and never stored.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub plaintext: String,
    pub record: ApiKeyRecord,
}

/// Who calls on the Admin API: an admin, and whether it is a platform admin (configured, may
/// do everything on every project).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminCaller {
    pub id: AdminUserId,
    pub platform_admin: bool,
}

impl AdminCaller {
    /// The process itself (the demo project's setup): everything, like a platform admin.
    pub const fn internal(id: AdminUserId) -> Self {
        Self {
            id,
            platform_admin: true,
        }
    }
}

/// A project as one admin may see it: its role there (`None` for a platform admin who is not
/// a member) decides what it may do, through [`ProjectRole::allows`] only.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectAccess {
    pub project: Project,
    pub role: Option<ProjectRole>,
    pub platform_admin: bool,
}

impl ProjectAccess {
    pub fn allows(&self, permission: Permission) -> bool {
        self.platform_admin || self.role.is_some_and(|r| r.allows(permission))
    }

    /// Everything the caller may do on the project, in [`Permission::ALL`] order.
    pub fn permissions(&self) -> Vec<Permission> {
        Permission::ALL
            .into_iter()
            .filter(|p| self.allows(*p))
            .collect()
    }

    /// `forbidden` unless the caller may do `permission`.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.allows(permission) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "your role in this project ({}) does not allow this",
                self.role.map_or("none", ProjectRole::as_str)
            )))
        }
    }
}

impl Service {
    /// The project and the caller's role in it. 404 for a missing project and for a project
    /// the caller is not a member of (no existence oracle), unless it is a platform admin.
    pub async fn project_access(
        &self,
        caller: AdminCaller,
        id: ProjectId,
    ) -> Result<ProjectAccess, ApiError> {
        let not_found = || ApiError::not_found("project");
        let member = self.store().member(id, caller.id).await?;
        if member.is_none() && !caller.platform_admin {
            return Err(not_found());
        }
        let project = self.store().project(id).await?.ok_or_else(not_found)?;
        Ok(ProjectAccess {
            project,
            role: member.map(|m| m.role),
            platform_admin: caller.platform_admin,
        })
    }

    /// [`Service::project_access`], then `forbidden` unless the caller may do `permission`.
    pub async fn authorize(
        &self,
        caller: AdminCaller,
        id: ProjectId,
        permission: Permission,
    ) -> Result<ProjectAccess, ApiError> {
        let access = self.project_access(caller, id).await?;
        access.require(permission)?;
        Ok(access)
    }

    /// Creates a project owned by `owner` (its first `owner` member, added by the store).
    pub async fn create_project(
        &self,
        owner: AdminUserId,
        input: NewProject,
    ) -> Result<Project, ApiError> {
        self.known_plan(&input.plan).await?;
        let t = model::now();
        let project = Project {
            id: ProjectId::new_v7(),
            name: input.name.into_inner(),
            owner_id: owner,
            plan: input.plan,
            status: ProjectStatus::Active,
            settings: input.settings.into_value(),
            created_at: t,
            updated_at: t,
        };
        self.store().create_project(&project).await?;
        Ok(project)
    }

    /// Changes a project. Returns it and whether anything was written (an empty change
    /// returns the project as it is).
    pub async fn update_project(
        &self,
        caller: AdminCaller,
        id: ProjectId,
        change: ProjectChange,
    ) -> Result<(Project, bool), ApiError> {
        let current = self
            .authorize(caller, id, Permission::UpdateProject)
            .await?
            .project;
        if change.plan.as_ref().is_some_and(|p| *p != current.plan) && !caller.platform_admin {
            return Err(ApiError::forbidden(
                "only a platform admin may change a project's plan",
            ));
        }
        if let Some(plan) = &change.plan {
            self.known_plan(plan).await?;
        }
        let patch = ProjectPatch {
            name: change.name.map(Name::into_inner),
            plan: change.plan,
            status: change.status,
            settings: change.settings.map(ProjectSettings::into_value),
        };
        if patch == ProjectPatch::default() {
            return Ok((current, false));
        }
        let updated = self
            .store()
            .update_project(id, &patch)
            .await?
            .ok_or_else(|| ApiError::not_found("project"))?;
        Ok((updated, true))
    }

    /// Writes a project's widget settings (under `settings.widget`, the rest of the settings
    /// kept).
    pub async fn save_widget_settings(
        &self,
        caller: AdminCaller,
        id: ProjectId,
        widget: &WidgetSettings,
    ) -> Result<Project, ApiError> {
        let project = self
            .authorize(caller, id, Permission::ManageWidget)
            .await?
            .project;
        self.store()
            .update_project(id, &widget.patch_for(&project))
            .await?
            .ok_or_else(|| ApiError::not_found("project"))
    }

    /// Deletes a project and everything in it.
    pub async fn delete_project(&self, caller: AdminCaller, id: ProjectId) -> Result<(), ApiError> {
        self.authorize(caller, id, Permission::DeleteProject)
            .await?;
        if self.store().delete_project(id).await? {
            Ok(())
        } else {
            Err(ApiError::not_found("project"))
        }
    }

    /// Issues a key for a project (`manage_keys`); `pepper` hashes its secret.
    pub async fn create_api_key(
        &self,
        caller: AdminCaller,
        project: ProjectId,
        input: NewApiKey,
        pepper: &[u8],
    ) -> Result<IssuedKey, ApiError> {
        self.authorize(caller, project, Permission::ManageKeys)
            .await?;
        let generated = keys::generate(input.kind, pepper);
        let record = ApiKeyRecord {
            id: generated.id,
            project_id: project,
            name: input.name.into_inner(),
            kind: input.kind,
            prefix: generated.prefix,
            scopes: input.scopes.0,
            secret_hash: generated.secret_hash,
            last_used_at: None,
            expires_at: input.expires_at,
            revoked_at: None,
            created_at: model::now(),
        };
        self.store().create_api_key(&record).await?;
        Ok(IssuedKey {
            plaintext: generated.plaintext,
            record,
        })
    }

    /// Revokes a key (`manage_keys` on its project; idempotent: keeps the first revocation time).
    pub async fn revoke_api_key(
        &self,
        caller: AdminCaller,
        key_id: ApiKeyId,
    ) -> Result<ApiKeyRecord, ApiError> {
        let not_found = || ApiError::not_found("api key");
        let key = self.store().api_key(key_id).await?.ok_or_else(not_found)?;
        self.authorize(caller, key.project_id, Permission::ManageKeys)
            .await
            .map_err(|e| {
                if e.code == larachat_core::ErrorCode::NotFound {
                    not_found()
                } else {
                    e
                }
            })?;
        self.store()
            .revoke_api_key(key_id, model::now())
            .await?
            .ok_or_else(not_found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_rules() {
        let set = |kind, req| KeyScopes::parse(kind, req).map(|s| s.as_set().clone());
        assert_eq!(
            set(KeyKind::Secret, None).unwrap(),
            [Scope::Read, Scope::Write].into()
        );
        assert!(set(KeyKind::Secret, Some(vec![])).is_err());
        assert_eq!(
            set(KeyKind::Secret, Some(vec![Scope::Admin, Scope::Admin])).unwrap(),
            [Scope::Admin].into()
        );
        assert!(set(KeyKind::Publishable, None).unwrap().is_empty());
        assert!(set(KeyKind::Publishable, Some(vec![Scope::Read])).is_err());
    }

    #[test]
    fn settings_rules() {
        assert!(ProjectSettings::parse(serde_json::json!({"a": 1})).is_ok());
        assert!(ProjectSettings::parse(serde_json::json!([1])).is_err());
        let big = serde_json::json!({"a": "x".repeat(MAX_SETTINGS_BYTES)});
        assert!(ProjectSettings::parse(big).is_err());
        assert!(NewApiKey::expiry(Some(model::now() - chrono::Duration::seconds(1))).is_err());
    }
}
