//! End users: create or identify (secret key, widget), change, delete.

use larachat_core::ApiError;
use larachat_core::id::{EndUserId, ProjectId};
use larachat_core::model::{EndUser, EndUserPatch};
use larachat_store::NewEndUser;

use crate::input::{Change, Email, Identifier, Metadata, Name, Url};
use crate::{Principal, Service};

/// A user to create, or to identify by `identifier` and update, parsed.
#[derive(Debug, Clone, Default)]
pub struct UserInput {
    pub identifier: Option<Identifier>,
    pub name: Option<Name>,
    pub email: Option<Email>,
    pub avatar: Option<Url>,
    pub metadata: Metadata,
}

/// A change to a user's profile, parsed.
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub name: Change<Name>,
    pub email: Change<Email>,
    pub avatar: Change<Url>,
    pub metadata: Option<Metadata>,
}

impl Service {
    /// Creates an end user, or identifies one by `identifier` and updates the given fields
    /// (`user.created` / `user.updated` when something changed). Secret keys only. Returns the
    /// user and whether it was created.
    pub async fn create_user(
        &self,
        who: &Principal,
        input: UserInput,
    ) -> Result<(EndUser, bool), ApiError> {
        who.require_key_write()?;
        self.upsert_user(who.project, input).await
    }

    /// The widget's identification of a visitor or a signed-in user of the tenant's site: the
    /// caller (the widget edge) has checked the publishable key, the origin and, for an
    /// identified user, the identity verification. An input without identifier creates an
    /// anonymous visitor.
    pub async fn widget_user(
        &self,
        project: ProjectId,
        input: UserInput,
    ) -> Result<(EndUser, bool), ApiError> {
        self.upsert_user(project, input).await
    }

    async fn upsert_user(
        &self,
        project: ProjectId,
        input: UserInput,
    ) -> Result<(EndUser, bool), ApiError> {
        let user = NewEndUser {
            user_identifier: input.identifier.map(Identifier::into_inner),
            name: input.name.map(Name::into_inner),
            email: input.email.map(Email::into_inner),
            avatar: input.avatar.map(Url::into_inner),
            metadata: input.metadata.into_value(),
        };
        Ok(self.store().upsert_end_user(project, &user).await?)
    }

    /// Changes a user's profile (`user.updated`). The profile belongs to the tenant: secret
    /// keys only, end users cannot rewrite what agents see about them.
    pub async fn update_user(
        &self,
        who: &Principal,
        id: EndUserId,
        change: UserChange,
    ) -> Result<EndUser, ApiError> {
        if who.end_user().is_some() {
            return Err(ApiError::forbidden(
                "end users cannot change their profile; the tenant's backend does (secret key)",
            ));
        }
        who.require_key_write()?;
        let patch = EndUserPatch {
            name: change.name.map(|v| v.map(Name::into_inner)),
            email: change.email.map(|v| v.map(Email::into_inner)),
            avatar: change.avatar.map(|v| v.map(Url::into_inner)),
            metadata: change.metadata.map(Metadata::into_value),
            last_seen_at: None,
        };
        self.store()
            .update_end_user(who.project, id, &patch)
            .await?
            .ok_or_else(|| ApiError::not_found("end user"))
    }

    /// Deletes a user (memberships and read markers go; their messages stay). Secret keys
    /// only.
    pub async fn delete_user(&self, who: &Principal, id: EndUserId) -> Result<(), ApiError> {
        who.require_key_write()?;
        if self.store().delete_end_user(who.project, id).await? {
            Ok(())
        } else {
            Err(ApiError::not_found("end user"))
        }
    }
}
