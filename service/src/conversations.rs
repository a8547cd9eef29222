//! Conversations: start, change (subject, status, metadata, members, assignee), close.

use larachat_core::ApiError;
use larachat_core::id::{ConversationId, EndUserId, ProjectId};
use larachat_core::model::{self, Conversation, ConversationPatch, ConversationStatus};
use larachat_core::protocol::ServerFrame;
use larachat_core::subject::Subject;
use larachat_store::{ConversationQuery, CreationKey};

use crate::input::{AgentId, Change, MemberList, Metadata, Name};
use crate::{Principal, Service};

/// A conversation to start, parsed.
#[derive(Debug, Clone, Default)]
pub struct NewConversation {
    pub subject: Option<Name>,
    /// End users taking part; an end user's own conversation has exactly them.
    pub members: MemberList,
    pub metadata: Metadata,
    /// The caller's idempotency key (validated: `validate::idempotency_key`): the same key
    /// from the same caller returns the conversation it created instead of a new one.
    pub idempotency_key: Option<String>,
}

/// A change to a conversation, parsed.
#[derive(Debug, Clone, Default)]
pub struct ConversationChange {
    pub subject: Change<Name>,
    pub status: Option<ConversationStatus>,
    pub metadata: Option<Metadata>,
    /// Assign to an agent, unassign, or leave as it is.
    pub assignee: Change<AgentId>,
    pub add_members: MemberList,
}

impl Service {
    /// Starts a conversation (`conversation.created`). With an end-user principal, the caller
    /// is its only member. With an idempotency key already used by this caller in the
    /// project, returns the conversation it created, and `false` (nothing created, counted or
    /// announced); otherwise `true`.
    pub async fn create_conversation(
        &self,
        who: &Principal,
        input: NewConversation,
    ) -> Result<(Conversation, bool), ApiError> {
        who.require_write()?;
        let members = match who.end_user() {
            Some(me) => {
                if input.members.as_slice().iter().any(|m| *m != me) {
                    return Err(ApiError::forbidden(
                        "end users can only start conversations for themselves",
                    ));
                }
                MemberList::one(me)
            }
            None => input.members,
        };
        let now = model::now();
        let conv = Conversation {
            id: ConversationId::new_v7(),
            project_id: who.project,
            subject: input.subject.map(Name::into_inner),
            status: ConversationStatus::Open,
            members: members.into_vec(),
            metadata: input.metadata.into_value(),
            created_at: now,
            updated_at: now,
            last_message_id: None,
            assignee: None,
        };
        let (conv, created) = match input.idempotency_key {
            Some(key) => {
                let key = CreationKey {
                    caller: who.caller_name(),
                    key,
                };
                self.store().create_conversation_keyed(&conv, &key).await?
            }
            None => {
                self.store().create_conversation(&conv).await?;
                (conv, true)
            }
        };
        if created {
            self.publish_to(
                &feed_subjects(&conv),
                &ServerFrame::ConversationCreated {
                    conversation: conv.clone(),
                },
            )
            .await;
        }
        Ok((conv, created))
    }

    /// Changes a conversation (tenant side only: a secret key or an agent token, never an end
    /// user — this is also what restricts assignment to agents): `conversation.updated`, or
    /// `conversation.closed` when it closes; the new state, assignee included, is published
    /// to its subscribers, the project's inbox and its members' feeds.
    pub async fn update_conversation(
        &self,
        who: &Principal,
        id: ConversationId,
        change: ConversationChange,
    ) -> Result<Conversation, ApiError> {
        who.require_tenant_write()?;
        let patch = ConversationPatch {
            subject: change.subject.map(|s| s.map(Name::into_inner)),
            status: change.status,
            metadata: change.metadata.map(Metadata::into_value),
            assignee: change.assignee.map(|a| a.map(AgentId::into_inner)),
            add_members: change.add_members.into_vec(),
        };
        self.apply_conversation_patch(who.project, id, &patch).await
    }

    /// Carries an anonymous visitor's open conversations over to the user it identified as
    /// (Intercom's "lead becomes user"): `identified` becomes a member of each (the visitor
    /// stays one), so the identified user's widget shows the conversation and its history.
    /// The caller (widget init) has proved that both are the same browser session: the
    /// visitor token of `visitor` and the identity of `identified` (verified as the project
    /// requires). Nothing happens unless `visitor` is an anonymous end user of `project`
    /// other than `identified`. Returns the conversations carried over (at most 20, newest
    /// first), each announced like any member change.
    pub async fn carry_over_visitor(
        &self,
        project: ProjectId,
        visitor: EndUserId,
        identified: EndUserId,
    ) -> Result<Vec<Conversation>, ApiError> {
        if visitor == identified {
            return Ok(Vec::new());
        }
        match self.store().end_user(project, visitor).await? {
            Some(v) if v.is_anonymous => {}
            _ => return Ok(Vec::new()),
        }
        let open = self
            .store()
            .list_conversations(
                project,
                &ConversationQuery {
                    status: Some(ConversationStatus::Open),
                    member: Some(visitor),
                    assignee: None,
                    cursor: None,
                    limit: 20,
                },
            )
            .await?;
        let patch = ConversationPatch {
            add_members: vec![identified],
            ..ConversationPatch::default()
        };
        let mut carried = Vec::with_capacity(open.items.len());
        for c in open.items {
            if c.members.contains(&identified) {
                continue;
            }
            carried.push(self.apply_conversation_patch(project, c.id, &patch).await?);
        }
        Ok(carried)
    }

    /// Stores `patch` and publishes the new state to the conversation's subscribers, the
    /// project's inbox and its members' feeds.
    async fn apply_conversation_patch(
        &self,
        project: ProjectId,
        id: ConversationId,
        patch: &ConversationPatch,
    ) -> Result<Conversation, ApiError> {
        let conv = self
            .store()
            .update_conversation(project, id, patch)
            .await?
            .ok_or_else(|| ApiError::not_found("conversation"))?;
        self.publish(
            &Subject::conversation(project, id),
            &ServerFrame::Conversation {
                conversation: conv.clone(),
            },
        )
        .await;
        self.publish_to(
            &feed_subjects(&conv),
            &ServerFrame::ConversationUpdated {
                conversation: conv.clone(),
            },
        )
        .await;
        Ok(conv)
    }

    /// Closes a conversation (`conversation.closed`).
    pub async fn close_conversation(
        &self,
        who: &Principal,
        id: ConversationId,
    ) -> Result<Conversation, ApiError> {
        self.update_conversation(
            who,
            id,
            ConversationChange {
                status: Some(ConversationStatus::Closed),
                ..ConversationChange::default()
            },
        )
        .await
    }
}

/// The feeds a change of `conv` goes to: the project's inbox and each member's own feed.
fn feed_subjects(conv: &Conversation) -> Vec<Subject> {
    std::iter::once(Subject::inbox(conv.project_id))
        .chain(
            conv.members
                .iter()
                .map(|m| Subject::user(conv.project_id, *m)),
        )
        .collect()
}
