//! The edge half of the operations shared by the Client API, the Widget API and the realtime
//! socket: transport metrics and the send rate limit, then the one write path
//! ([`larachat_service::Service`]: authorise → typed values → store, with the domain event in
//! the same transaction → publish on `lc.v1.<project>.conv.<conversation>`).

use larachat_core::ApiError;
use larachat_core::id::{ConversationId, MessageId};
use larachat_core::model::{Actor, Conversation, ReadState};
use larachat_core::protocol::{ActorInput, TypingState};
use larachat_service::messages::SendMessage;
use larachat_store::{Appended, MessageRange};

use crate::Gateway;
use crate::auth::Principal;

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
    /// See [`larachat_service::Service::conversation_for`].
    pub async fn conversation_for(
        &self,
        who: &Principal,
        id: ConversationId,
    ) -> Result<Conversation, ApiError> {
        self.service().conversation_for(who, id).await
    }

    /// See [`larachat_service::Service::resolve_actor`].
    pub async fn resolve_actor(
        &self,
        who: &Principal,
        requested: Option<&ActorInput>,
    ) -> Result<Actor, ApiError> {
        self.service().resolve_actor(who, requested).await
    }

    /// Sends a message from any transport: counted per transport, rate-limited, parsed into
    /// typed values, then [`larachat_service::Service::send_message`]. Returns once durable.
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
        let message = SendMessage::parse(input.text, input.client_msg_id, input.metadata)?;
        let appended = self
            .service()
            .send_message(who, conversation, sender, message)
            .await?;
        if appended.created {
            metrics::counter!("larachat_gateway_messages_stored_total").increment(1);
        }
        Ok(appended)
    }

    /// See [`larachat_service::Service::mark_read`].
    pub async fn mark_read(
        &self,
        who: &Principal,
        conversation: ConversationId,
        reader: Actor,
        message_id: MessageId,
    ) -> Result<ReadState, ApiError> {
        self.service()
            .mark_read(who, conversation, reader, message_id)
            .await
    }

    /// See [`larachat_service::Service::typing`].
    pub async fn typing(
        &self,
        who: &Principal,
        conversation: ConversationId,
        actor: Actor,
        state: TypingState,
    ) -> Result<(), ApiError> {
        self.service().typing(who, conversation, actor, state).await
    }
}
