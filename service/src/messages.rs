//! Messages: send, mark read, typing — and the access checks every conversation operation
//! shares.

use larachat_core::ApiError;
use larachat_core::id::{ConversationId, EndUserId, MessageId};
use larachat_core::model::{self, Actor, ActorKind, Conversation, NewMessage, ReadState};
use larachat_core::protocol::{ActorInput, ServerFrame, TypingState};
use larachat_core::subject::Subject;
use larachat_store::{Appended, MessageRange};

use crate::input::{ClientMsgId, Identifier, MessageText, Metadata, Name};
use crate::{Principal, PrincipalKind, Service};

/// A message to send, parsed.
#[derive(Debug, Clone)]
pub struct SendMessage {
    pub text: MessageText,
    pub client_msg_id: Option<ClientMsgId>,
    pub metadata: Metadata,
}

impl SendMessage {
    /// Parses the raw fields every transport carries.
    pub fn parse(
        text: String,
        client_msg_id: Option<String>,
        metadata: Option<serde_json::Value>,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            text: MessageText::try_from(text)?,
            client_msg_id: client_msg_id.map(ClientMsgId::try_from).transpose()?,
            metadata: Metadata::parse_opt(metadata)?,
        })
    }
}

impl Service {
    /// The conversation, if the caller may see it: it must belong to the caller's project and,
    /// for end users, count them as a member. Otherwise 404, identical to a missing one.
    pub async fn conversation_for(
        &self,
        who: &Principal,
        id: ConversationId,
    ) -> Result<Conversation, ApiError> {
        let conv = self
            .store()
            .conversation(who.project, id)
            .await?
            .ok_or_else(|| ApiError::not_found("conversation"))?;
        if let Some(user) = who.end_user() {
            if !conv.members.contains(&user) {
                return Err(ApiError::not_found("conversation"));
            }
        }
        Ok(conv)
    }

    /// Resolves who a caller acts as. End users are always themselves; keys act as an agent
    /// named after the key unless they name an agent, a bot, or a member end user.
    pub async fn resolve_actor(
        &self,
        who: &Principal,
        requested: Option<&ActorInput>,
    ) -> Result<Actor, ApiError> {
        match (&who.kind, requested) {
            (PrincipalKind::EndUser { user_id }, None) => {
                Ok(Actor::end_user(*user_id, who.name.clone()))
            }
            (PrincipalKind::EndUser { .. }, Some(_)) => Err(ApiError::forbidden(
                "end users cannot choose who they speak as",
            )),
            (PrincipalKind::Agent { actor, .. }, None) => Ok(actor.clone()),
            // An agent token is one agent: it may name itself, never someone else.
            (PrincipalKind::Agent { actor, .. }, Some(input)) => {
                if input.kind == actor.kind && input.id == actor.id {
                    Ok(actor.clone())
                } else {
                    Err(ApiError::forbidden(
                        "an agent token speaks only as its own agent",
                    ))
                }
            }
            (PrincipalKind::Key { .. }, None) => Ok(who.default_actor()),
            (PrincipalKind::Key { .. }, Some(input)) => {
                let name = input
                    .name
                    .clone()
                    .map(|n| Name::parse(n, "sender.name"))
                    .transpose()?
                    .map(Name::into_inner);
                match input.kind {
                    ActorKind::Agent | ActorKind::Bot => {
                        let id = Identifier::parse(input.id.clone(), "sender.id")?;
                        Ok(Actor {
                            kind: input.kind,
                            id: id.into_inner(),
                            name,
                        })
                    }
                    ActorKind::EndUser => {
                        let id: EndUserId = input.id.parse().map_err(|_| {
                            ApiError::validation("sender.id must be an end user id")
                        })?;
                        let user = self
                            .store()
                            .end_user(who.project, id)
                            .await?
                            .ok_or_else(|| ApiError::not_found("end user"))?;
                        Ok(Actor::end_user(id, name.or(user.name)))
                    }
                    ActorKind::System => Err(ApiError::forbidden("sender.type system is reserved")),
                }
            }
        }
    }

    /// Sends a message: stored durably (idempotent on `client_msg_id`, its `message.sent`
    /// event in the same transaction), then published. Returns once durable.
    pub async fn send_message(
        &self,
        who: &Principal,
        conversation: ConversationId,
        sender: Actor,
        input: SendMessage,
    ) -> Result<Appended, ApiError> {
        who.require_write()?;
        let conv = self.conversation_for(who, conversation).await?;
        if sender.kind == ActorKind::EndUser {
            let member = sender
                .id
                .parse::<EndUserId>()
                .is_ok_and(|id| conv.members.contains(&id));
            if !member {
                return Err(ApiError::forbidden(
                    "the end user is not a member of this conversation",
                ));
            }
        }
        let sender_key = (sender.kind, sender.id.clone());
        let appended = self
            .store()
            .append_message(&NewMessage {
                project_id: who.project,
                conversation_id: conversation,
                sender,
                text: input.text.into_inner(),
                metadata: input.metadata.into_value(),
                client_msg_id: input.client_msg_id.map(ClientMsgId::into_inner),
            })
            .await?;
        if !appended.created
            && (appended.message.sender.kind, &appended.message.sender.id)
                != (sender_key.0, &sender_key.1)
        {
            // Another participant already used this idempotency key here. Answering with
            // their message would silently drop this one.
            return Err(ApiError::conflict(
                "client_msg_id is already used by another sender in this conversation",
            ));
        }
        // A retry is published again: the first attempt may have been stored by a gateway that
        // died (or lost the bus) before publishing, and then live readers would only see the
        // message at their next resume. Subscribers de-duplicate by id (protocol §5).
        self.publish(
            &Subject::conversation(who.project, conversation),
            &ServerFrame::Message {
                conversation_id: conversation,
                message: appended.message.clone(),
            },
        )
        .await;
        self.publish(
            &Subject::inbox(who.project),
            &ServerFrame::preview(&appended.message),
        )
        .await;
        let (service, seq) = (self.clone(), appended.message.seq);
        self.beside(async move { service.publish_unread_after_send(&conv, seq).await })
            .await;
        Ok(appended)
    }

    /// Moves the reader's marker forward (`message.read` when it moved) and tells the
    /// conversation.
    pub async fn mark_read(
        &self,
        who: &Principal,
        conversation: ConversationId,
        reader: Actor,
        message_id: MessageId,
    ) -> Result<ReadState, ApiError> {
        who.require_write()?;
        let conv = self.conversation_for(who, conversation).await?;
        let read = self
            .store()
            .message(who.project, conversation, message_id)
            .await?
            .ok_or_else(|| ApiError::not_found("message"))?;
        let state = self
            .store()
            .mark_read(who.project, conversation, &reader, message_id, model::now())
            .await?;
        self.publish(
            &Subject::conversation(who.project, conversation),
            &ServerFrame::Read {
                conversation_id: conversation,
                reader: state.reader.clone(),
                message_id: state.last_read_message_id,
                at: state.updated_at,
            },
        )
        .await;
        if let Some(user) = end_user_of(&state.reader) {
            let (service, state) = (self.clone(), state.clone());
            self.beside(async move {
                service
                    .publish_unread_after_read(&conv, user, &state, &read)
                    .await
            })
            .await;
        }
        Ok(state)
    }

    /// Unread counts after a new message with `head_seq`: one `unread` event on the feed of
    /// each end-user member, `head_seq` minus the `seq` of their read marker. Costs one read
    /// of the conversation's markers and one message lookup per member marker; no scan.
    /// Best effort like every live event: a store error skips the events (logged).
    async fn publish_unread_after_send(&self, conv: &Conversation, head_seq: u64) {
        if conv.members.is_empty() {
            return;
        }
        let markers = match self.store().read_states(conv.project_id, conv.id).await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "unread: read markers unavailable");
                return;
            }
        };
        for member in &conv.members {
            let marker = markers
                .iter()
                .find(|r| end_user_of(&r.reader) == Some(*member))
                .map(|r| r.last_read_message_id);
            let read_seq = match marker {
                None => 0,
                Some(id) => match self.store().message(conv.project_id, conv.id, id).await {
                    Ok(Some(m)) => m.seq,
                    Ok(None) => 0,
                    Err(e) => {
                        tracing::debug!(error = %e, "unread: marker lookup failed");
                        continue;
                    }
                },
            };
            self.publish(
                &Subject::user(conv.project_id, *member),
                &unread(conv.id, head_seq, read_seq),
            )
            .await;
        }
    }

    /// The reader's unread count after they read (on any device): to their own feed.
    async fn publish_unread_after_read(
        &self,
        conv: &Conversation,
        user: EndUserId,
        state: &ReadState,
        requested: &model::Message,
    ) {
        if !conv.members.contains(&user) {
            return;
        }
        // The marker only moves forward: it is the requested message or a newer one.
        let read_seq = if state.last_read_message_id == requested.id {
            requested.seq
        } else {
            match self
                .store()
                .message(conv.project_id, conv.id, state.last_read_message_id)
                .await
            {
                Ok(Some(m)) => m.seq,
                _ => return,
            }
        };
        // The head: the newest message (the conversation as read just before may be behind
        // a message sent since; the newest page of one message is exact).
        let head_seq = match self
            .store()
            .list_messages(conv.project_id, conv.id, MessageRange::Latest, 1)
            .await
        {
            Ok(page) => page.items.last().map_or(read_seq, |m| m.seq),
            Err(_) => return,
        };
        self.publish(
            &Subject::user(conv.project_id, user),
            &unread(conv.id, head_seq.max(read_seq), read_seq),
        )
        .await;
    }

    /// Publishes a typing indicator (ephemeral: never stored, no domain event).
    pub async fn typing(
        &self,
        who: &Principal,
        conversation: ConversationId,
        actor: Actor,
        state: TypingState,
    ) -> Result<(), ApiError> {
        who.require_write()?;
        self.conversation_for(who, conversation).await?;
        self.publish(
            &Subject::conversation(who.project, conversation),
            &ServerFrame::Typing {
                conversation_id: conversation,
                actor,
                state,
            },
        )
        .await;
        Ok(())
    }
}

/// The end user an actor is, if it is one.
fn end_user_of(actor: &Actor) -> Option<EndUserId> {
    match actor.kind {
        ActorKind::EndUser => actor.id.parse().ok(),
        _ => None,
    }
}

fn unread(conversation_id: ConversationId, head_seq: u64, read_seq: u64) -> ServerFrame {
    ServerFrame::Unread {
        conversation_id,
        head_seq,
        read_seq,
        unread: head_seq.saturating_sub(read_seq),
    }
}
