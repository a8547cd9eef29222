//! The Client API, `/api/v1/*`: JSON over HTTP for tenant backends (secret keys) and end users
//! (tokens). Handlers parse with the catalog extractors, authorise through [`Caller`], and
//! delegate writes to [`crate::service`].

mod agents;
mod conversations;
mod messages;
mod presence;
mod users;
mod webhooks;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use utoipa::ToSchema;

use larachat_core::model::{Conversation, EndUser, Message, ReadState};

use larachat_core::ApiError;
use larachat_core::openapi::StandardErrors;
use larachat_limits::http::{Applied, add_headers, tighter};

use crate::Gateway;
#[allow(unused_imports)]
pub(crate) use crate::auth::Caller;
use crate::auth::{AuthRejection, Principal};

/// OpenAPI description of the Client API.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        users::create_user, users::get_user, users::update_user, users::delete_user,
        agents::create_agent_token,
        conversations::create_conversation, conversations::list_conversations,
        conversations::get_conversation, conversations::update_conversation,
        conversations::close_conversation,
        messages::send_message, messages::list_messages, messages::mark_read,
        messages::list_reads, messages::typing, presence::get_presence,
        crate::realtime::upgrade,
        crate::widget::init, crate::widget::list_messages, crate::widget::send_message,
        crate::widget::event, crate::widget::list_conversations,
        webhooks::create_webhook, webhooks::list_webhooks, webhooks::get_webhook,
        webhooks::update_webhook, webhooks::delete_webhook, webhooks::rotate_secret,
        webhooks::send_test, webhooks::list_deliveries, webhooks::get_delivery,
        webhooks::redeliver_one, webhooks::redeliver_range,
    ),
    components(schemas(
        users::CreateUser, users::UpdateUser, users::UserWithToken,
        agents::CreateAgentToken, agents::AgentRef, agents::AgentTokenView,
        conversations::CreateConversation, conversations::UpdateConversation, ConversationList,
        messages::SendMessage, messages::Sent, messages::MarkRead, messages::Typing, MessageList,
        ReadList, EndUser, Conversation, Message, ReadState, presence::PresenceList,
        larachat_core::protocol::OnlineUser,
        crate::widget::InitRequest, crate::widget::InitUser, crate::widget::InitResponse,
        crate::widget::Session, crate::widget::PublicSettings, crate::widget::WidgetMessages,
        crate::widget::WidgetSend, crate::widget::WidgetSent, crate::widget::WidgetEvent,
        crate::widget::WidgetConversations,
        webhooks::CreateWebhook, webhooks::UpdateWebhook, webhooks::WebhookView,
        webhooks::CreatedWebhook, webhooks::WebhookList, webhooks::RotateSecret,
        webhooks::RotatedSecret, webhooks::Queued, webhooks::DeliveryView, webhooks::DeliveryList,
        webhooks::AttemptView, webhooks::DeliveryDetail, webhooks::RedeliverRange,
        webhooks::Redelivered,
        larachat_core::error::ErrorBody,
    )),
    modifiers(&StandardErrors),
    tags((name = "client", description = "Client API for tenant backends and end users"),
         (name = "realtime", description = "Realtime v1 WebSocket (see docs/protocol.md)"),
         (name = "widget", description = "Widget API for the embeddable widget (see docs/widget.md)"),
         (name = "webhooks", description = "Webhook endpoints and deliveries (see docs/webhooks.md)")),
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
    let router: Router<Gateway> = Router::new()
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
        .route("/api/v1/agent-tokens", post(agents::create_agent_token))
        .route("/api/v1/presence", get(presence::get_presence))
        .route(
            "/api/v1/webhooks",
            post(webhooks::create_webhook).get(webhooks::list_webhooks),
        )
        .route(
            "/api/v1/webhooks/{id}",
            get(webhooks::get_webhook)
                .patch(webhooks::update_webhook)
                .delete(webhooks::delete_webhook),
        )
        .route(
            "/api/v1/webhooks/{id}/rotate-secret",
            post(webhooks::rotate_secret),
        )
        .route("/api/v1/webhooks/{id}/test", post(webhooks::send_test))
        .route(
            "/api/v1/webhooks/{id}/redeliver",
            post(webhooks::redeliver_range),
        )
        .route(
            "/api/v1/webhooks/{id}/deliveries",
            get(webhooks::list_deliveries),
        )
        .route(
            "/api/v1/webhooks/{id}/deliveries/{event_id}",
            get(webhooks::get_delivery),
        )
        .route(
            "/api/v1/webhooks/{id}/deliveries/{event_id}/redeliver",
            post(webhooks::redeliver_one),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            client_auth,
        ))
        .method_not_allowed_fallback(|| async { larachat_core::http::method_not_allowed() })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            gw.limits().clone(),
            larachat_limits::http::ip_limit,
        ));
    // Outermost: a preflight is answered before routing, limits and authentication.
    let router = match dashboard_cors(&gw.config().dashboard_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.with_state(gw)
}

/// CORS for the configured dashboard origins (docs/dashboard.md, "Distributed mode"): only
/// those origins, the Client API's methods, the bearer token and JSON; no credentials mode
/// (no cookies are used). `None` when no origin is configured: same-origin only.
fn dashboard_cors(
    origins: &[larachat_core::origin::Origin],
) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.as_str()).ok())
        .collect();
    if list.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(list))
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([
                header::RETRY_AFTER,
                HeaderName::from_static("ratelimit-limit"),
                HeaderName::from_static("ratelimit-remaining"),
                HeaderName::from_static("ratelimit-reset"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Authenticates every Client API request once, refuses widget sessions (they belong to
/// `/widget/v1/*` and the socket), takes the request from the caller's and the project's
/// rate-limit buckets, and reports the tightest bucket in `RateLimit-*` headers.
async fn client_auth(State(gw): State<Gateway>, mut req: Request, next: Next) -> Response {
    let who = match crate::auth::bearer(req.headers()) {
        Ok(token) => gw.auth().authenticate(token).await,
        Err(e) => Err(e),
    };
    let who: Principal = match who {
        Ok(p) => p,
        Err(e) => return AuthRejection(e).into_response(),
    };
    if who.origin.is_some() {
        return ApiError::forbidden(
            "a widget session only works on /widget/v1/* and the realtime socket; the Client \
             API takes a secret key, an agent token or an end-user token from POST /api/v1/users",
        )
        .into_response();
    }
    let ip = req.extensions().get::<Applied>().map(|a| a.0);
    let own = match gw.limit_request(&who).await {
        Ok(info) => info,
        Err(e) => return e.into_response(),
    };
    gw.meter().request(who.project);
    req.extensions_mut().insert(who);
    let mut resp = next.run(req).await;
    add_headers(&mut resp, tighter(ip, own));
    resp
}
