//! `/api/v1/webhooks`: a project's webhook endpoints, their deliveries, redelivery, secret
//! rotation and test events. Secret keys only (an endpoint's secret is a credential of the
//! tenant's backend). The work is in `larachat-webhooks`; this file translates HTTP.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use larachat_core::event::EventKind;
use larachat_core::http::{ApiJson, ApiPath, ApiQuery};
use larachat_core::id::EventId;
use larachat_core::{ApiError, validate};
use larachat_webhooks::model::{
    Attempt, Delivery, DeliveryQuery, DeliveryStatus, Endpoint, EndpointId, EventFilter,
};
use larachat_webhooks::{Dispatcher, Secret, TargetUrl};

use crate::Gateway;
use crate::auth::{Caller, Principal, PrincipalKind};

/// Register an endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// `https://` URL (plain `http` and loopback only with `webhooks.allow_insecure_targets`).
    pub url: String,
    /// Up to 256 characters.
    pub description: Option<String>,
    /// Event names to receive (`message.sent`, …); omitted or `null`: all events.
    pub events: Option<Vec<String>>,
    /// Default `true`.
    pub enabled: Option<bool>,
}

/// Change an endpoint. Absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    pub url: Option<String>,
    pub description: Option<String>,
    /// Event names; `null` means all events.
    #[serde(default, deserialize_with = "super::users::double_option")]
    #[schema(value_type = Option<Vec<String>>)]
    pub events: Option<Option<Vec<String>>>,
    /// Re-enabling an endpoint disabled by a `410 Gone` clears its reason.
    pub enabled: Option<bool>,
}

/// An endpoint as the API shows it (never its secrets, except once at creation and rotation).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub description: String,
    /// The event names it receives; `null`: all.
    pub events: Option<Vec<String>>,
    pub enabled: bool,
    /// `gone` (the receiver answered 410) or `api` (disabled by a request).
    pub disabled_reason: Option<String>,
    /// Until when the previous secret still signs (after a rotation).
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A new endpoint, with its signing secret (shown this once).
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    pub webhook: WebhookView,
    /// `whsec_…`: verify `webhook-signature` with it (Standard Webhooks).
    pub secret: String,
}

/// The endpoints of the project.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub data: Vec<WebhookView>,
}

/// Rotate the signing secret.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// Seconds the previous secret keeps signing (0–7 days); default
    /// `webhooks.rotation_overlap_hours`.
    pub overlap_secs: Option<u64>,
}

/// The new secret (shown this once) and the end of the overlap.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedSecret {
    pub secret: String,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

/// A queued event.
#[derive(Debug, Serialize, ToSchema)]
pub struct Queued {
    /// `webhook-id` of the delivery.
    pub event_id: String,
}

/// One event's delivery to the endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub event_id: String,
    /// `message.sent`, …, or `webhook.test`.
    pub event: String,
    /// `pending`, `succeeded` or `failed` (a dead letter: every attempt failed, or the
    /// endpoint answered 410; redeliverable).
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_response_code: Option<u16>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A page of deliveries, oldest event first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub data: Vec<DeliveryView>,
    /// Pass as `after` for the next page.
    pub next_cursor: Option<String>,
}

/// One attempt of a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub succeeded: bool,
    pub response_code: Option<u16>,
    /// The response body, truncated to `webhooks.response_body_cap` bytes.
    pub response_body: String,
    pub duration_ms: u32,
    /// Why there was no response: `timeout`, `connect: …`, `refused_target: …`, …
    pub error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// A delivery with its payload and attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryDetail {
    pub delivery: DeliveryView,
    /// The exact body sent.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub attempts: Vec<AttemptView>,
}

/// Filters and paging of the deliveries log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveryParams {
    /// `pending`, `succeeded` or `failed`.
    pub status: Option<String>,
    /// `next_cursor` of the previous page (an event id).
    #[param(value_type = Option<uuid::Uuid>)]
    pub after: Option<EventId>,
    /// Events that occurred at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Events that occurred before this time.
    pub until: Option<DateTime<Utc>>,
    /// 1–200, default 50.
    pub limit: Option<u32>,
}

/// Redeliver the events of a time range.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeliverRange {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// Only deliveries in this state (default `failed`); `all` for every one.
    pub status: Option<String>,
}

/// How many deliveries were queued again.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redelivered {
    pub count: usize,
}

/// Redelivering a range stops after this many deliveries (call again with a later `since`).
const MAX_RANGE_REDELIVERY: usize = 10_000;

fn view(e: &Endpoint) -> WebhookView {
    WebhookView {
        id: e.id.to_string(),
        url: e.url.clone(),
        description: e.description.clone(),
        events: match &e.filter {
            EventFilter::All => None,
            EventFilter::Only(kinds) => Some(kinds.iter().map(|k| k.name().to_owned()).collect()),
        },
        enabled: e.enabled,
        disabled_reason: e.disabled_reason.clone(),
        previous_secret_expires_at: e.previous_secret.as_ref().map(|(_, t)| *t),
        created_at: e.created_at,
        updated_at: e.updated_at,
    }
}

fn delivery_view(d: &Delivery) -> DeliveryView {
    DeliveryView {
        event_id: d.event_id.to_string(),
        event: d.event.clone(),
        status: d.status.as_str().to_owned(),
        attempts: d.attempts,
        next_attempt_at: d.next_attempt_at,
        last_response_code: d.last_response_code,
        created_at: d.created_at,
        updated_at: d.updated_at,
    }
}

fn attempt_view(a: Attempt) -> AttemptView {
    AttemptView {
        attempt: a.attempt,
        at: a.at,
        succeeded: a.succeeded,
        response_code: a.response_code,
        response_body: a.response_body,
        duration_ms: a.duration_ms,
        error: a.error,
        next_attempt_at: a.next_attempt_at,
    }
}

/// Secret keys only; `write` for changes, `read` for reads.
fn require_key(who: &Principal, write: bool) -> Result<(), ApiError> {
    if !matches!(who.kind, PrincipalKind::Key { .. }) {
        return Err(ApiError::forbidden(
            "webhooks are managed with a secret key",
        ));
    }
    if write {
        who.require_key_write()
    } else {
        who.require_read()
    }
}

fn dispatcher(gw: &Gateway) -> Result<&Dispatcher, ApiError> {
    gw.webhooks().ok_or_else(ApiError::unavailable)
}

fn parse_url(gw: &Gateway, url: &str) -> Result<String, ApiError> {
    let policy = dispatcher(gw)?.target_policy();
    TargetUrl::parse(url, policy)
        .map(|u| u.as_str().to_owned())
        .map_err(|e| ApiError::validation(format!("url: {e}")))
}

fn parse_filter(events: Option<Vec<String>>) -> Result<EventFilter, ApiError> {
    let Some(names) = events else {
        return Ok(EventFilter::All);
    };
    if names.is_empty() || names.len() > EventKind::ALL.len() {
        return Err(ApiError::validation(
            "events: one to seven event names, or null for all",
        ));
    }
    let mut kinds = Vec::new();
    for n in &names {
        let k: EventKind = n.parse().map_err(|_| {
            ApiError::validation(format!(
                "events: unknown event {n:?} (one of {})",
                EventKind::ALL.map(|k| k.name()).join(", ")
            ))
        })?;
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    Ok(EventFilter::Only(kinds))
}

fn parse_description(d: Option<String>) -> Result<String, ApiError> {
    let d = d.unwrap_or_default();
    if d.chars().count() > 256 {
        return Err(ApiError::validation("description: at most 256 characters"));
    }
    Ok(d)
}

fn parse_status(s: Option<&str>) -> Result<Option<DeliveryStatus>, ApiError> {
    match s {
        None | Some("all") => Ok(None),
        Some(s) => DeliveryStatus::parse(s)
            .map(Some)
            .ok_or_else(|| ApiError::validation("status: one of pending, succeeded, failed")),
    }
}

async fn endpoint_for(gw: &Gateway, who: &Principal, id: EndpointId) -> Result<Endpoint, ApiError> {
    dispatcher(gw)?
        .store()
        .get_endpoint(who.project, id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))
}

#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    responses((status = 201, body = CreatedWebhook, description = "registered; the secret is shown this once"),
              (status = 409, body = larachat_core::error::ErrorBody, description = "the project has 20 endpoints")),
    security(("bearer" = [])))]
pub async fn create_webhook(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiJson(body): ApiJson<CreateWebhook>,
) -> Result<(StatusCode, ApiJson<CreatedWebhook>), ApiError> {
    require_key(&who, true)?;
    let url = parse_url(&gw, &body.url)?;
    let filter = parse_filter(body.events)?;
    let description = parse_description(body.description)?;
    let now = larachat_core::model::now();
    let secret = Secret::generate();
    let enabled = body.enabled.unwrap_or(true);
    let e = Endpoint {
        id: EndpointId::new_v7(),
        project_id: who.project,
        url,
        description,
        filter,
        enabled,
        disabled_reason: (!enabled).then(|| "api".to_owned()),
        secret: secret.clone(),
        previous_secret: None,
        created_at: now,
        updated_at: now,
    };
    dispatcher(&gw)?.store().create_endpoint(&e).await?;
    Ok((
        StatusCode::CREATED,
        ApiJson(CreatedWebhook {
            webhook: view(&e),
            secret: secret.expose(),
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = WebhookList)),
    security(("bearer" = [])))]
pub async fn list_webhooks(
    State(gw): State<Gateway>,
    Caller(who): Caller,
) -> Result<ApiJson<WebhookList>, ApiError> {
    require_key(&who, false)?;
    let all = dispatcher(&gw)?.store().list_endpoints(who.project).await?;
    Ok(ApiJson(WebhookList {
        data: all.iter().map(view).collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = uuid::Uuid, Path, description = "webhook id")),
    responses((status = 200, body = WebhookView), (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_webhook(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<EndpointId>,
) -> Result<ApiJson<WebhookView>, ApiError> {
    require_key(&who, false)?;
    Ok(ApiJson(view(&endpoint_for(&gw, &who, id).await?)))
}

#[utoipa::path(patch, path = "/api/v1/webhooks/{id}", tag = "webhooks", request_body = UpdateWebhook,
    params(("id" = uuid::Uuid, Path, description = "webhook id")),
    responses((status = 200, body = WebhookView), (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_webhook(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<EndpointId>,
    ApiJson(body): ApiJson<UpdateWebhook>,
) -> Result<ApiJson<WebhookView>, ApiError> {
    require_key(&who, true)?;
    let mut e = endpoint_for(&gw, &who, id).await?;
    if let Some(url) = body.url {
        e.url = parse_url(&gw, &url)?;
    }
    if let Some(d) = body.description {
        e.description = parse_description(Some(d))?;
    }
    if let Some(events) = body.events {
        e.filter = parse_filter(events)?;
    }
    if let Some(on) = body.enabled {
        e.enabled = on;
        e.disabled_reason = (!on).then(|| "api".to_owned());
    }
    e.updated_at = larachat_core::model::now();
    if !dispatcher(&gw)?.store().update_endpoint(&e).await? {
        return Err(ApiError::not_found("webhook"));
    }
    Ok(ApiJson(view(&e)))
}

#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = uuid::Uuid, Path, description = "webhook id")),
    responses((status = 204, description = "deleted"), (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_webhook(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<EndpointId>,
) -> Result<StatusCode, ApiError> {
    require_key(&who, true)?;
    if dispatcher(&gw)?
        .store()
        .delete_endpoint(who.project, id)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("webhook"))
    }
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/rotate-secret", tag = "webhooks", request_body = RotateSecret,
    params(("id" = uuid::Uuid, Path, description = "webhook id")),
    responses((status = 200, body = RotatedSecret), (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn rotate_secret(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<EndpointId>,
    ApiJson(body): ApiJson<RotateSecret>,
) -> Result<ApiJson<RotatedSecret>, ApiError> {
    require_key(&who, true)?;
    let d = dispatcher(&gw)?;
    let overlap = match body.overlap_secs {
        None => d.rotation_overlap(),
        Some(s) if s <= 7 * 86_400 => chrono::Duration::seconds(s as i64),
        Some(_) => return Err(ApiError::validation("overlap_secs: at most 7 days")),
    };
    let mut e = endpoint_for(&gw, &who, id).await?;
    let now = larachat_core::model::now();
    let fresh = Secret::generate();
    let old = std::mem::replace(&mut e.secret, fresh.clone());
    e.previous_secret = (overlap > chrono::Duration::zero()).then(|| (old, now + overlap));
    e.updated_at = now;
    if !d.store().update_endpoint(&e).await? {
        return Err(ApiError::not_found("webhook"));
    }
    Ok(ApiJson(RotatedSecret {
        secret: fresh.expose(),
        previous_secret_expires_at: e.previous_secret.map(|(_, t)| t),
    }))
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/test", tag = "webhooks",
    params(("id" = uuid::Uuid, Path, description = "webhook id")),
    responses((status = 202, body = Queued, description = "a `webhook.test` event is queued"),
              (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn send_test(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<EndpointId>,
) -> Result<(StatusCode, ApiJson<Queued>), ApiError> {
    require_key(&who, true)?;
    let e = endpoint_for(&gw, &who, id).await?;
    let event_id = dispatcher(&gw)?.send_test(&e).await?;
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(Queued {
            event_id: event_id.to_string(),
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = uuid::Uuid, Path, description = "webhook id"), DeliveryParams),
    responses((status = 200, body = DeliveryList), (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_deliveries(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<EndpointId>,
    ApiQuery(params): ApiQuery<DeliveryParams>,
) -> Result<ApiJson<DeliveryList>, ApiError> {
    require_key(&who, false)?;
    let e = endpoint_for(&gw, &who, id).await?;
    let limit = validate::page_limit(params.limit)? as usize;
    let query = DeliveryQuery {
        status: parse_status(params.status.as_deref())?,
        after: params.after,
        since: params.since,
        until: params.until,
        limit,
    };
    let data = dispatcher(&gw)?
        .store()
        .list_deliveries(who.project, e.id, &query)
        .await?;
    let next_cursor = (data.len() == limit)
        .then(|| data.last().map(|d| d.event_id.to_string()))
        .flatten();
    Ok(ApiJson(DeliveryList {
        data: data.iter().map(delivery_view).collect(),
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries/{event_id}", tag = "webhooks",
    params(("id" = uuid::Uuid, Path, description = "webhook id"),
           ("event_id" = uuid::Uuid, Path, description = "event id (webhook-id)")),
    responses((status = 200, body = DeliveryDetail), (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_delivery(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath((id, event)): ApiPath<(EndpointId, EventId)>,
) -> Result<ApiJson<DeliveryDetail>, ApiError> {
    require_key(&who, false)?;
    let store = dispatcher(&gw)?.store();
    let d = store
        .get_delivery(who.project, id, event)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    let attempts = store.list_attempts(who.project, id, event).await?;
    Ok(ApiJson(DeliveryDetail {
        delivery: delivery_view(&d),
        payload: serde_json::from_str(&d.payload).unwrap_or(serde_json::Value::Null),
        attempts: attempts.into_iter().map(attempt_view).collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/deliveries/{event_id}/redeliver", tag = "webhooks",
    params(("id" = uuid::Uuid, Path, description = "webhook id"),
           ("event_id" = uuid::Uuid, Path, description = "event id (webhook-id)")),
    responses((status = 202, body = Queued, description = "a new series of attempts is queued"),
              (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn redeliver_one(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath((id, event)): ApiPath<(EndpointId, EventId)>,
) -> Result<(StatusCode, ApiJson<Queued>), ApiError> {
    require_key(&who, true)?;
    let e = endpoint_for(&gw, &who, id).await?;
    if !dispatcher(&gw)?.redeliver(who.project, &e, event).await? {
        return Err(ApiError::not_found("delivery"));
    }
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(Queued {
            event_id: event.to_string(),
        }),
    ))
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/redeliver", tag = "webhooks", request_body = RedeliverRange,
    params(("id" = uuid::Uuid, Path, description = "webhook id")),
    responses((status = 202, body = Redelivered, description = "queued again (at most 10000 per call)"),
              (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn redeliver_range(
    State(gw): State<Gateway>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<EndpointId>,
    ApiJson(body): ApiJson<RedeliverRange>,
) -> Result<(StatusCode, ApiJson<Redelivered>), ApiError> {
    require_key(&who, true)?;
    if body.until <= body.since {
        return Err(ApiError::validation("until must be after since"));
    }
    let status = match body.status.as_deref() {
        None => Some(DeliveryStatus::Failed),
        s => parse_status(s)?,
    };
    let e = endpoint_for(&gw, &who, id).await?;
    let d = dispatcher(&gw)?;
    let mut query = DeliveryQuery {
        status,
        after: None,
        since: Some(body.since),
        until: Some(body.until),
        limit: 1000,
    };
    let mut count = 0;
    while count < MAX_RANGE_REDELIVERY {
        let page = d.store().list_deliveries(who.project, e.id, &query).await?;
        for del in &page {
            if d.redeliver(who.project, &e, del.event_id).await? {
                count += 1;
            }
        }
        match page.last() {
            Some(last) if page.len() == 1000 => query.after = Some(last.event_id),
            _ => break,
        }
    }
    Ok((StatusCode::ACCEPTED, ApiJson(Redelivered { count })))
}
