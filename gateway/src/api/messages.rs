//! `/api/v1/conversations/{id}/messages|read|typing`.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use larachat_core::ApiError;
use larachat_core::http::{ApiJson, ApiPath, ApiQuery};
use larachat_core::id::{ConversationId, MessageId};
use larachat_core::model::{Message, ReadState};
use larachat_core::protocol::{ActorInput, TypingState};
use larachat_core::validate;

use super::{MessageList, ReadList};
use crate::Gateway;
use crate::auth::Caller;
use crate::service::{SendInput, history_range, sent_status};

/// Send a message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    pub text: String,
    /// Idempotency key: a retry with the same value returns the original message.
    pub client_msg_id: Option<String>,
    pub metadata: Option<serde_json::Value>,
    /// Secret keys only: speak as an agent, a bot, or a member end user. Default: an agent
    /// named after the key.
    #[schema(value_type = Option<Object>)]
    pub sender: Option<ActorInput>,
}

/// The stored message.
#[derive(Debug, Serialize, ToSchema)]
pub struct Sent {
    pub message: Message,
    /// True when `client_msg_id` had been used before and `message` is the original.
    pub duplicate: bool,
}

/// Mark the conversation read up to a message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    pub message_id: MessageId,
    /// Secret keys only: who read (default: the key's agent).
    #[schema(value_type = Option<Object>)]
    pub reader: Option<ActorInput>,
}

/// A typing indicator.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Typing {
    #[schema(value_type = String)]
    pub state: TypingState,
    /// Secret keys only: who is typing.
    #[schema(value_type = Option<Object>)]
    pub actor: Option<ActorInput>,
}

/// History paging: at most one of `before` / `after`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// Messages older than this id.
    pub before: Option<MessageId>,
    /// Messages newer than this id.
    pub after: Option<MessageId>,
    /// 1–200, default 50.
    pub limit: Option<u32>,
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/messages", tag = "client", request_body = SendMessage,
    params(("id" = uuid::Uuid, Path, description = "conversation id")),
    responses((status = 201, body = Sent), (status = 200, body = Sent, description = "duplicate client_msg_id"),
              (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn send_message(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<ConversationId>,
    ApiJson(body): ApiJson<SendMessage>,
) -> Result<(StatusCode, ApiJson<Sent>), ApiError> {
    who.require_write()?;
    let sender = gw.resolve_actor(&who, body.sender.as_ref()).await?;
    let appended = gw
        .send_message(
            &who,
            id,
            sender,
            SendInput {
                text: body.text,
                client_msg_id: body.client_msg_id,
                metadata: body.metadata,
                transport: "http",
            },
        )
        .await?;
    Ok((
        sent_status(&appended),
        ApiJson(Sent {
            message: appended.message,
            duplicate: !appended.created,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/conversations/{id}/messages", tag = "client", params(("id" = uuid::Uuid, Path, description = "conversation id"), HistoryParams),
    responses((status = 200, body = MessageList), (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_messages(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<ConversationId>,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> Result<ApiJson<MessageList>, ApiError> {
    who.require_read()?;
    let limit = validate::page_limit(params.limit)?;
    let range = history_range(params.before, params.after)?;
    gw.conversation_for(&who, id).await?;
    let page = gw
        .store()
        .list_messages(who.project, id, range, limit)
        .await?;
    Ok(ApiJson(MessageList {
        data: page.items,
        has_more: page.has_more,
    }))
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/read", tag = "client", request_body = MarkRead,
    params(("id" = uuid::Uuid, Path, description = "conversation id")),
    responses((status = 200, body = ReadState), (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn mark_read(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<ConversationId>,
    ApiJson(body): ApiJson<MarkRead>,
) -> Result<ApiJson<ReadState>, ApiError> {
    who.require_write()?;
    let reader = gw.resolve_actor(&who, body.reader.as_ref()).await?;
    gw.mark_read(&who, id, reader, body.message_id)
        .await
        .map(ApiJson)
}

#[utoipa::path(get, path = "/api/v1/conversations/{id}/read", tag = "client",
    params(("id" = uuid::Uuid, Path, description = "conversation id")),
    responses((status = 200, body = ReadList), (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_reads(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<ConversationId>,
) -> Result<ApiJson<ReadList>, ApiError> {
    who.require_read()?;
    gw.conversation_for(&who, id).await?;
    let data = gw.store().read_states(who.project, id).await?;
    Ok(ApiJson(ReadList { data }))
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/typing", tag = "client", request_body = Typing,
    params(("id" = uuid::Uuid, Path, description = "conversation id")),
    responses((status = 202, description = "published"), (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn typing(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<ConversationId>,
    ApiJson(body): ApiJson<Typing>,
) -> Result<StatusCode, ApiError> {
    who.require_write()?;
    let actor = gw.resolve_actor(&who, body.actor.as_ref()).await?;
    gw.typing(&who, id, actor, body.state).await?;
    Ok(StatusCode::ACCEPTED)
}
