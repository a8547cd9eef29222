//! The Client API, `/api/v1/*`: JSON over HTTP for tenant backends (secret keys) and end users
//! (tokens). Handlers parse with the catalog extractors, authorise through [`Caller`], and
//! delegate writes to [`crate::service`].

mod conversations;
mod messages;
mod users;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use serde::Serialize;
use utoipa::ToSchema;

use larachat_core::model::{Conversation, EndUser, Message, ReadState};

use crate::Gateway;
#[allow(unused_imports)]
pub(crate) use crate::auth::Caller;

/// OpenAPI description of the Client API.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        users::create_user, users::get_user, users::update_user, users::delete_user,
        conversations::create_conversation, conversations::list_conversations,
        conversations::get_conversation, conversations::update_conversation,
        conversations::close_conversation,
        messages::send_message, messages::list_messages, messages::mark_read,
        messages::list_reads, messages::typing,
        crate::realtime::upgrade,
        crate::widget::init, crate::widget::list_messages, crate::widget::send_message,
        crate::widget::event,
    ),
    components(schemas(
        users::CreateUser, users::UpdateUser, users::UserWithToken,
        conversations::CreateConversation, conversations::UpdateConversation, ConversationList,
        messages::SendMessage, messages::Sent, messages::MarkRead, messages::Typing, MessageList,
        ReadList, EndUser, Conversation, Message, ReadState,
        crate::widget::InitRequest, crate::widget::InitUser, crate::widget::InitResponse,
        crate::widget::Session, crate::widget::PublicSettings, crate::widget::WidgetMessages,
        crate::widget::WidgetSend, crate::widget::WidgetSent, crate::widget::WidgetEvent,
        larachat_core::error::ErrorBody,
    )),
    tags((name = "client", description = "Client API for tenant backends and end users"),
         (name = "realtime", description = "Realtime v1 WebSocket (see docs/protocol.md)"),
         (name = "widget", description = "Widget API for the embeddable widget (see docs/widget.md)")),
)]
pub struct ApiDoc;

/// A page of conversations, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationList {
    pub data: Vec<Conversation>,
    pub has_more: bool,
    /// Pass as `cursor` to get the next page.
    pub next_cursor: Option<String>,
}

/// A page of messages in ascending id order.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageList {
    pub data: Vec<Message>,
    /// Whether more messages exist in the direction of the query (older for `before` and the
    /// default, newer for `after`).
    pub has_more: bool,
}

/// Read markers of a conversation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadList {
    pub data: Vec<ReadState>,
}

/// Routes of the Client API.
pub fn router(gw: Gateway) -> Router {
    let limit = gw.config().max_body_bytes;
    Router::new()
        .route("/api/v1/users", post(users::create_user))
        .route(
            "/api/v1/users/{id}",
            get(users::get_user)
                .patch(users::update_user)
                .delete(users::delete_user),
        )
        .route(
            "/api/v1/conversations",
            post(conversations::create_conversation).get(conversations::list_conversations),
        )
        .route(
            "/api/v1/conversations/{id}",
            get(conversations::get_conversation)
                .patch(conversations::update_conversation)
                .delete(conversations::close_conversation),
        )
        .route(
            "/api/v1/conversations/{id}/messages",
            post(messages::send_message).get(messages::list_messages),
        )
        .route(
            "/api/v1/conversations/{id}/read",
            post(messages::mark_read).get(messages::list_reads),
        )
        .route("/api/v1/conversations/{id}/typing", post(messages::typing))
        .method_not_allowed_fallback(|| async { larachat_core::http::method_not_allowed() })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(gw)
}
