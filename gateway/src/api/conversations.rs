//! `/api/v1/conversations`: start, list, get, change and close conversations.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use larachat_core::http::{ApiJson, ApiPath, ApiQuery};
use larachat_core::id::{ConversationId, EndUserId};
use larachat_core::model::{Conversation, ConversationStatus};
use larachat_core::search::SearchQuery;
use larachat_core::{ApiError, validate};
use larachat_service::conversations::{ConversationChange, NewConversation};
use larachat_service::input::{
    AgentId, MemberList, Metadata, Name, parse_assignee_filter, parse_change, parse_opt,
};
use larachat_store::ConversationQuery;

use super::ConversationList;
use super::users::double_option;
use crate::Gateway;
use crate::auth::Caller;

/// Start a conversation. With an end-user token, the caller is its only member.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    pub subject: Option<String>,
    /// End users taking part (secret keys only).
    #[serde(default)]
    pub members: Vec<EndUserId>,
    pub metadata: Option<serde_json::Value>,
    /// The caller's idempotency key, 1–64 chars of `[A-Za-z0-9_:-]`: a creation sent again
    /// with the same key (by the same key, agent or end user, in the same project, within
    /// 7 days at least) returns the conversation the first one created, with status 200,
    /// instead of creating another. Send one whenever a lost answer may be retried.
    #[schema(example = "checkout-4711")]
    pub idempotency_key: Option<String>,
}

/// Change a conversation (secret keys and agent tokens only). An absent field is left as it
/// is; `null` clears the subject or unassigns.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateConversation {
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub subject: Option<Option<String>>,
    pub status: Option<ConversationStatus>,
    pub metadata: Option<serde_json::Value>,
    /// The agent identifier (the `id` an agent sends messages as) to assign the conversation
    /// to, or `null` to unassign. 1–128 characters of `[A-Za-z0-9_.@:+-]`; `none` is reserved
    /// (the listing filter for unassigned conversations).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, example = "ana@acme.com")]
    pub assignee: Option<Option<String>>,
    /// End users to add as members.
    #[serde(default)]
    pub add_members: Vec<EndUserId>,
}

/// Filters and paging for listing conversations.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// `open` or `closed`.
    pub status: Option<ConversationStatus>,
    /// Only conversations with this end user (secret keys only; end users see their own).
    pub user_id: Option<EndUserId>,
    /// Only conversations assigned to this agent identifier; `none` for unassigned ones.
    /// Combines with `status` and `user_id`.
    pub assignee: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<ConversationId>,
    /// 1–200, default 50.
    pub limit: Option<u32>,
    /// Search: only conversations where every word is found in the subject, a member's name,
    /// email or external id, or a message (words are split at punctuation and compared
    /// lower-cased; the last word also matches the start of subject and profile words, so
    /// `zo` finds "Zoë"). 1–8 words, at most 200 characters; combines with the other filters
    /// and paging. Conversations stored before search existed are not indexed.
    #[param(example = "refund zoë")]
    pub q: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/conversations", tag = "client", request_body = CreateConversation,
    responses((status = 201, body = Conversation),
              (status = 200, body = Conversation, description = "`idempotency_key` used before by this caller: the conversation it created"),
              (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_conversation(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiJson(body): ApiJson<CreateConversation>,
) -> Result<(StatusCode, ApiJson<Conversation>), ApiError> {
    who.require_write()?;
    let input = NewConversation {
        subject: parse_opt(body.subject, |s| Name::parse(s, "subject"))?,
        members: MemberList::parse(body.members)?,
        metadata: Metadata::parse_opt(body.metadata)?,
        idempotency_key: match body.idempotency_key {
            Some(k) => {
                validate::idempotency_key(&k)?;
                Some(k)
            }
            None => None,
        },
    };
    let (conv, created) = gw.service().create_conversation(&who, input).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, ApiJson(conv)))
}

#[utoipa::path(get, path = "/api/v1/conversations", tag = "client", params(ListParams),
    responses((status = 200, body = ConversationList)),
    security(("bearer" = [])))]
pub async fn list_conversations(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<ApiJson<ConversationList>, ApiError> {
    who.require_read()?;
    let member = match (who.end_user(), params.user_id) {
        (Some(me), None) => Some(me),
        (Some(me), Some(asked)) if asked == me => Some(me),
        (Some(_), Some(_)) => return Err(ApiError::forbidden("end users only list their own")),
        (None, asked) => asked,
    };
    let limit = validate::page_limit(params.limit)?;
    let assignee = parse_opt(params.assignee, parse_assignee_filter)?;
    let search = params.q.as_deref().map(SearchQuery::parse).transpose()?;
    let query = ConversationQuery {
        status: params.status,
        member,
        assignee,
        cursor: params.cursor,
        limit,
    };
    let page = match &search {
        Some(search) => {
            gw.store()
                .search_conversations(who.project, search, &query)
                .await?
        }
        None => gw.store().list_conversations(who.project, &query).await?,
    };
    let next_cursor = if page.has_more {
        page.items.last().map(|c| c.id.to_string())
    } else {
        None
    };
    Ok(ApiJson(ConversationList {
        data: page.items,
        has_more: page.has_more,
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/api/v1/conversations/{id}", tag = "client",
    params(("id" = uuid::Uuid, Path, description = "conversation id")),
    responses((status = 200, body = Conversation), (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_conversation(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<ConversationId>,
) -> Result<ApiJson<Conversation>, ApiError> {
    who.require_read()?;
    gw.conversation_for(&who, id).await.map(ApiJson)
}

#[utoipa::path(patch, path = "/api/v1/conversations/{id}", tag = "client", request_body = UpdateConversation,
    params(("id" = uuid::Uuid, Path, description = "conversation id")),
    responses((status = 200, body = Conversation), (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_conversation(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<ConversationId>,
    ApiJson(body): ApiJson<UpdateConversation>,
) -> Result<ApiJson<Conversation>, ApiError> {
    who.require_tenant_write()?;
    let change = ConversationChange {
        subject: parse_change(body.subject, |s| Name::parse(s, "subject"))?,
        status: body.status,
        metadata: body.metadata.map(Metadata::parse).transpose()?,
        assignee: parse_change(body.assignee, |a| AgentId::parse(a, "assignee"))?,
        add_members: MemberList::parse(body.add_members)?,
    };
    gw.service()
        .update_conversation(&who, id, change)
        .await
        .map(ApiJson)
}

#[utoipa::path(delete, path = "/api/v1/conversations/{id}", tag = "client",
    params(("id" = uuid::Uuid, Path, description = "conversation id")),
    responses((status = 200, body = Conversation, description = "the closed conversation"),
              (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn close_conversation(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<ConversationId>,
) -> Result<ApiJson<Conversation>, ApiError> {
    gw.service().close_conversation(&who, id).await.map(ApiJson)
}
