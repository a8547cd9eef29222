//! Operations shared by the Client API and the realtime socket.
//!
//! Both transports call these so that a message sent over HTTP and one sent over a socket go
//! through the same checks and the same path: authorise → validate → `store.append` (durable)
//! → publish on `lc.v1.<project>.conv.<conversation>`.

use larachat_core::id::{ConversationId, EndUserId, MessageId};
use larachat_core::model::{self, Actor, ActorKind, Conversation, NewMessage, ReadState};
use larachat_core::protocol::{ActorInput, Encoding, ServerFrame, TypingState, encode};
use larachat_core::subject::Subject;
use larachat_core::{ApiError, validate};
use larachat_store::{Appended, MessageRange};

use crate::Gateway;
use crate::auth::{Principal, PrincipalKind};

/// A message to send, as parsed from any transport.
#[derive(Debug, Clone)]
pub struct SendInput {
    pub text: String,
    pub client_msg_id: Option<String>,
    pub metadata: Option<serde_json::Value>,
    /// `http`, `ws` or `widget`: a bounded metrics label.
    pub transport: &'static str,
}

/// The store range of a history request: at most one of `before` / `after`.
pub fn history_range(
    before: Option<MessageId>,
    after: Option<MessageId>,
) -> Result<MessageRange, ApiError> {
    match (before, after) {
        (None, None) => Ok(MessageRange::Latest),
        (Some(b), None) => Ok(MessageRange::Before(b)),
        (None, Some(a)) => Ok(MessageRange::After(a)),
        (Some(_), Some(_)) => Err(ApiError::validation("use either before or after, not both")),
    }
}

/// `201 Created` for a new message, `200 OK` for an idempotent repeat.
pub fn sent_status(appended: &Appended) -> axum::http::StatusCode {
    if appended.created {
        axum::http::StatusCode::CREATED
    } else {
        axum::http::StatusCode::OK
    }
}

impl Gateway {
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
                if let Some(name) = &input.name {
                    validate::name(name, "sender.name")?;
                }
                match input.kind {
                    ActorKind::Agent | ActorKind::Bot => {
                        validate::identifier(&input.id, "sender.id")?;
                        Ok(Actor {
                            kind: input.kind,
                            id: input.id.clone(),
                            name: input.name.clone(),
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
                        Ok(Actor::end_user(id, input.name.clone().or(user.name)))
                    }
                    ActorKind::System => Err(ApiError::forbidden("sender.type system is reserved")),
                }
            }
        }
    }

    /// Sends a message: validated, stored durably (idempotent on `client_msg_id`), then
    /// published. Returns once durable.
    pub async fn send_message(
        &self,
        who: &Principal,
        conversation: ConversationId,
        sender: Actor,
        input: SendInput,
    ) -> Result<Appended, ApiError> {
        metrics::counter!("larachat_gateway_messages_received_total", "transport" => input.transport)
            .increment(1);
        who.require_write()?;
        self.limit_send(who, &sender, input.transport).await?;
        validate::message_text(&input.text)?;
        if let Some(id) = &input.client_msg_id {
            validate::client_msg_id(id)?;
        }
        let metadata = match input.metadata {
            Some(m) => {
                validate::metadata(&m)?;
                m
            }
            None => model::empty_object(),
        };
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
                text: input.text,
                metadata,
                client_msg_id: input.client_msg_id,
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
        if appended.created {
            metrics::counter!("larachat_gateway_messages_stored_total").increment(1);
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
        Ok(appended)
    }

    /// Moves the reader's marker forward and tells the conversation.
    pub async fn mark_read(
        &self,
        who: &Principal,
        conversation: ConversationId,
        reader: Actor,
        message_id: MessageId,
    ) -> Result<ReadState, ApiError> {
        who.require_write()?;
        self.conversation_for(who, conversation).await?;
        self.store()
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
        Ok(state)
    }

    /// Publishes a typing indicator (ephemeral: never stored).
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

    /// Publishes a frame. The message is already durable when this is called, so a bus
    /// failure is logged, not returned: subscribers catch up by resume.
    pub async fn publish(&self, subject: &Subject, frame: &ServerFrame) {
        if let Err(e) = self
            .bus()
            .publish(subject, encode(frame, Encoding::Json))
            .await
        {
            metrics::counter!("larachat_gateway_publish_failures_total").increment(1);
            // While the bus is away every send fails to publish: not one line per message.
            if let Some(total) = self.inner.publish_failures.add(1) {
                tracing::warn!(error = %e, failures_total = total, "publish failed; subscribers will catch up by resume");
            }
        }
    }
}
