//! The Widget API `/widget/v1/*` and the widget's static files (`/widget/loader.js`,
//! `/widget/widget.<hash>.js`, see [`Assets`]). `docs/widget.md` is the specification.
//!
//! Every Widget API request names its project with the publishable key in the query
//! (`?key=pk_live_…`), so that even a CORS preflight can be answered per project, and must
//! come from an `Origin` in the project's allow-list (compared normalised, see
//! `larachat_core::origin`). [`widget_cors`] enforces that before any handler runs and adds
//! the CORS headers (with `Vary: Origin`) to every answer. Sessions are end-user tokens bound
//! to that origin.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, extract::DefaultBodyLimit};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use larachat_core::http::{ApiJson, ApiQuery};
use larachat_core::id::{ConversationId, MessageId};
use larachat_core::keys;
use larachat_core::model::{
    Conversation, ConversationStatus, EndUser, IdentityVerification, Message, Project,
    WidgetSettings, WidgetTheme,
};
use larachat_core::origin::Origin;
use larachat_core::protocol::TypingState;
use larachat_core::{ApiError, ErrorCode, validate};
use larachat_service::conversations::NewConversation;
use larachat_service::input::{Email, Identifier, MemberList, Metadata, Name, Url, parse_opt};
use larachat_service::users::UserInput;
use larachat_store::ConversationQuery;

use crate::Gateway;
use crate::auth::Principal;
use crate::service::{SendInput, history_range, sent_status};

/// `loader.js`: tiny, async, defines the `LaraChat` stub and loads the widget.
const LOADER_JS: &str = include_str!("../../widget/src/loader.js");
/// The widget itself (Shadow DOM UI, Widget API and realtime client).
const WIDGET_JS: &str = include_str!("../../widget/src/widget.js");
/// The widget's path as written in `loader.js`; served loaders name the hashed file instead.
const WIDGET_PATH: &str = "/widget/widget.js";

/// The widget's files as served. The widget lives at a content-hashed URL
/// (`/widget/widget.<16 hex of SHA-256>.js`, cached for a year as immutable); the loader, the
/// one URL tenants paste, is cached for 5 minutes and names the current hash, so a new version
/// reaches browsers within 5 minutes of a deployment. Every file has a strong ETag and answers
/// `304` to a matching `If-None-Match`; compression is the edge's job (gzip or brotli).
pub struct Assets {
    /// `/widget/widget.<hash>.js`.
    pub widget_path: String,
    loader: String,
    loader_etag: HeaderValue,
    widget_etag: HeaderValue,
}

impl Assets {
    /// The assets of this build (computed once: one SHA-256 of each file).
    pub fn get() -> &'static Assets {
        static ASSETS: std::sync::OnceLock<Assets> = std::sync::OnceLock::new();
        ASSETS.get_or_init(|| Assets::new(LOADER_JS, WIDGET_JS))
    }

    fn new(loader: &str, widget: &str) -> Assets {
        let widget_hash = short_hash(widget);
        let widget_path = format!("/widget/widget.{widget_hash}.js");
        let loader = loader.replace(&format!("'{WIDGET_PATH}'"), &format!("'{widget_path}'"));
        let etag = |hash: &str| {
            HeaderValue::from_str(&format!("\"{hash}\""))
                .unwrap_or(HeaderValue::from_static("\"0\""))
        };
        Assets {
            loader_etag: etag(&short_hash(&loader)),
            widget_etag: etag(&widget_hash),
            widget_path,
            loader,
        }
    }
}

/// The first 16 hex digits of the SHA-256 of `text`.
fn short_hash(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The project and origin of a Widget API request, checked by [`widget_cors`].
#[derive(Clone)]
pub struct WidgetRequest {
    pub project: Arc<Project>,
    pub settings: Arc<WidgetSettings>,
    pub origin: String,
}

/// Routes of the Widget API and the widget's files.
pub fn router(gw: Gateway) -> Router {
    let limit = gw.config().max_body_bytes;
    let api = Router::new()
        .route("/widget/v1/init", post(init))
        .route("/widget/v1/messages", get(list_messages).post(send_message))
        .route("/widget/v1/events", post(event))
        .route("/widget/v1/conversations", get(list_conversations))
        .method_not_allowed_fallback(|| async { larachat_core::http::method_not_allowed() })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            widget_cors,
        ))
        .layer(axum::middleware::from_fn_with_state(
            gw.limits().clone(),
            larachat_limits::http::ip_limit,
        ))
        .with_state(gw);
    Router::new()
        .route("/widget/loader.js", get(loader_js))
        .route(WIDGET_PATH, get(widget_js_unhashed))
        .route("/widget/{file}", get(widget_js_hashed))
        .merge(api)
}

/// Short cache: the loader names the current widget hash.
const SHORT_CACHE: &str = "public, max-age=300";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

async fn loader_js(headers: HeaderMap) -> Response {
    let a = Assets::get();
    script(&headers, a.loader.clone(), &a.loader_etag, SHORT_CACHE)
}

/// The widget at its plain URL (pages that include it directly, loaders cached before the
/// hashed URL existed): short cache.
async fn widget_js_unhashed(headers: HeaderMap) -> Response {
    let a = Assets::get();
    script(&headers, WIDGET_JS, &a.widget_etag, SHORT_CACHE)
}

/// `/widget/widget.<hash>.js`. The current hash gets the immutable file; another hash (a
/// loader from a gateway of another version, during a rolling deployment) is redirected to the
/// current one rather than given different content under an immutable URL.
async fn widget_js_hashed(
    axum::extract::Path(file): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let a = Assets::get();
    if a.widget_path.strip_prefix("/widget/") == Some(file.as_str()) {
        return script(&headers, WIDGET_JS, &a.widget_etag, IMMUTABLE);
    }
    let hashed_widget = file
        .strip_prefix("widget.")
        .and_then(|f| f.strip_suffix(".js"))
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !hashed_widget {
        return larachat_core::http::not_found_fallback()
            .await
            .into_response();
    }
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, a.widget_path.as_str()),
            (header::CACHE_CONTROL, "no-store"),
        ],
    )
        .into_response()
}

/// A script with its cache policy and strong ETag; `304 Not Modified` when `If-None-Match`
/// names the ETag.
fn script(
    request: &HeaderMap,
    body: impl Into<axum::body::Body>,
    etag: &HeaderValue,
    cache: &'static str,
) -> Response {
    let headers = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if etag_matches(request, etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (
        headers,
        [(
            header::CONTENT_TYPE,
            "application/javascript; charset=utf-8",
        )],
        body.into(),
    )
        .into_response()
}

/// `If-None-Match` (a list, `*`, weak or strong tags; compared weakly as RFC 9110 says for
/// this header) names `etag`.
fn etag_matches(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours)
}

#[derive(Deserialize)]
struct KeyParam {
    key: Option<String>,
}

/// Resolves the project from `?key=`, checks `Origin` against its allow-list, answers
/// preflights, and adds CORS headers to every answer.
///
/// A refused preflight carries no CORS headers, so a browser never sends a foreign page's
/// JSON request. A refused simple request (the widget's diagnostic `text/plain` POST after a
/// failed init) carries `Access-Control-Allow-Origin` for its origin, so that the widget can
/// read the reason and tell the tenant in the console; the answer holds nothing but the
/// error.
pub async fn widget_cors(State(gw): State<Gateway>, mut req: Request, next: Next) -> Response {
    let origin = request_origin(req.headers());
    let preflight = req.method() == Method::OPTIONS;
    let refuse = |e: ApiError, origin: Option<&str>| {
        let mut resp = e.into_response();
        let readable = origin
            .filter(|o| !preflight && Origin::parse(o).is_ok())
            .and_then(|o| HeaderValue::from_str(o).ok());
        add_cors(resp.headers_mut(), readable);
        resp
    };
    let key = axum::extract::Query::<KeyParam>::try_from_uri(req.uri())
        .ok()
        .and_then(|q| q.0.key);
    let Some(key) = key else {
        return refuse(
            ApiError::unauthorized("the publishable key is missing (?key=pk_live_…)"),
            origin.as_deref(),
        );
    };
    let project = match gw.auth().publishable_project(&key).await {
        Ok(p) => p,
        Err(e) => return refuse(e, origin.as_deref()),
    };
    let settings = WidgetSettings::of(&project);
    let origin = match origin {
        Some(o) if settings.allows_origin(&o) => o,
        other => {
            metrics::counter!("larachat_widget_origin_refused_total").increment(1);
            let shown = other.as_deref().unwrap_or("(none)");
            let e = ApiError::forbidden(format!(
                "origin {shown} is not in the allowed origins of this project's widget \
                 (add it in the project's widget settings: Admin API PUT \
                 /api/admin/projects/{{id}}/widget, allowed_origins)"
            ));
            return refuse(e, other.as_deref());
        }
    };
    let allow_origin = HeaderValue::from_str(&origin).ok();
    if req.method() == Method::OPTIONS {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        add_cors(h, allow_origin);
        return resp;
    }
    req.extensions_mut().insert(WidgetRequest {
        project,
        settings: Arc::new(settings),
        origin,
    });
    let mut resp = next.run(req).await;
    add_cors(resp.headers_mut(), allow_origin);
    resp
}

/// The page origin of a request: its `Origin` header, or — for the same-origin GETs on which
/// browsers omit `Origin` — the origin the browser says it is on (`Sec-Fetch-Site:
/// same-origin`, which pages cannot set), rebuilt from `Host` (and `X-Forwarded-Proto` behind
/// a TLS-terminating proxy).
fn request_origin(headers: &HeaderMap) -> Option<String> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(o) = text("origin") {
        return Some(o.to_owned());
    }
    if text("sec-fetch-site") != Some("same-origin") {
        return None;
    }
    let host = text("host")?;
    let scheme = match text("x-forwarded-proto") {
        Some("https") => "https",
        _ => "http",
    };
    Some(format!("{scheme}://{host}"))
}

fn add_cors(h: &mut HeaderMap, origin: Option<HeaderValue>) {
    if let Some(o) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
    }
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

// ---------------------------------------------------------------------------------------------
// init
// ---------------------------------------------------------------------------------------------

/// Start or resume a widget session.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    /// From a previous init: come back as the same anonymous visitor. With `user`, the
    /// visitor's open conversations are carried over to the identified user (who joins them).
    pub visitor_token: Option<String>,
    /// An identified user (identity verification as configured for the project).
    pub user: Option<InitUser>,
}

/// The user a page identifies.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitUser {
    pub identifier: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub avatar: Option<String>,
    /// `hex(HMAC-SHA256(identity_secret, identifier))`.
    pub user_hash: Option<String>,
    /// Or a JWT signed (HS256) with the identity secret, `sub` = identifier, with `exp`.
    pub user_jwt: Option<String>,
}

/// A widget session.
#[derive(Debug, Serialize, ToSchema)]
pub struct InitResponse {
    pub session: Session,
    /// Anonymous visitors only: keep it (localStorage) to come back as the same visitor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visitor_token: Option<String>,
    /// With `user` and a valid `visitor_token`: the visitor (end user id) whose open
    /// conversations the identified user now shares, so that the widget shows that
    /// visitor's messages as the user's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carried_over_from: Option<larachat_core::id::EndUserId>,
    pub user: EndUser,
    /// The visitor's latest open conversation, else its latest closed one (shown closed).
    pub conversation: Option<Conversation>,
    pub settings: PublicSettings,
    /// What the server accepts, so that the widget can say so before sending.
    pub limits: WidgetLimits,
    pub realtime_url: &'static str,
}

/// Limits of the Widget API a page should know.
#[derive(Debug, Serialize, ToSchema)]
pub struct WidgetLimits {
    /// Longest message text, in UTF-8 bytes (a longer one is refused with
    /// `validation_failed`).
    pub max_message_bytes: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Look of the widget as configured by the project.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublicSettings {
    pub title: Option<String>,
    pub greeting: Option<String>,
    /// `light`, `dark` or `auto`.
    pub theme: Option<WidgetTheme>,
    pub position: Option<String>,
    pub accent_color: Option<String>,
}

#[derive(Deserialize)]
struct TenantUserClaims {
    sub: String,
}

#[utoipa::path(post, path = "/widget/v1/init", tag = "widget", operation_id = "widget_init", request_body = InitRequest,
    params(("key" = String, Query, description = "publishable key pk_live_…")),
    responses((status = 200, body = InitResponse),
              (status = 401, body = larachat_core::error::ErrorBody, description = "invalid key"),
              (status = 403, body = larachat_core::error::ErrorBody, description = "origin not allowed, or identity verification failed")))]
pub async fn init(
    State(gw): State<Gateway>,
    Extension(ctx): Extension<WidgetRequest>,
    client_ip: Option<Extension<larachat_limits::ClientIp>>,
    ApiJson(body): ApiJson<InitRequest>,
) -> Result<ApiJson<InitResponse>, ApiError> {
    let project = ctx.project.id;
    // Every init may create an end user: limited per address and per project.
    gw.limit_widget_init(client_ip.map(|Extension(ip)| ip.0), project)
        .await?;
    gw.meter().request(project);
    let mut carried_over_from = None;
    let (user, anonymous) = match body.user {
        Some(u) => {
            let (user, trusted) = identify(&gw, &ctx, u).await?;
            // The same browser chatted anonymously before: its visitor token proves it. Its
            // open conversations go with it (the identified user joins them), unless the
            // identity was unproven (report mode), which must not reach other conversations.
            let visitor = body
                .visitor_token
                .as_deref()
                .and_then(|t| gw.auth().verify_visitor_token(project, t));
            if let (Some(visitor), true) = (visitor, trusted) {
                let carried = gw
                    .service()
                    .carry_over_visitor(project, visitor, user.id)
                    .await?;
                if !carried.is_empty() {
                    metrics::counter!("larachat_widget_conversations_carried_over_total")
                        .increment(u64::try_from(carried.len()).unwrap_or(u64::MAX));
                }
                if visitor != user.id {
                    carried_over_from = Some(visitor);
                }
            }
            (user, false)
        }
        None => {
            let returning = match body.visitor_token.as_deref() {
                Some(t) => match gw.auth().verify_visitor_token(project, t) {
                    Some(id) => gw.store().end_user(project, id).await?,
                    None => None,
                },
                None => None,
            };
            let user = match returning {
                Some(u) => u,
                None => {
                    let (u, _) = gw
                        .service()
                        .widget_user(project, UserInput::default())
                        .await?;
                    metrics::counter!("larachat_widget_visitors_created_total").increment(1);
                    u
                }
            };
            (user, true)
        }
    };
    let (token, expires_at) =
        gw.auth()
            .issue_session_token(project, user.id, Some(ctx.origin.as_str()))?;
    let visitor_token = if anonymous {
        Some(gw.auth().issue_visitor_token(project, user.id)?)
    } else {
        None
    };
    let conversation = shown_conversation(&gw, &principal_for(&ctx, &user)).await?;
    let s = &ctx.settings;
    Ok(ApiJson(InitResponse {
        session: Session { token, expires_at },
        visitor_token,
        carried_over_from,
        user,
        conversation,
        settings: PublicSettings {
            title: s.title.clone(),
            greeting: s.greeting.clone(),
            theme: s.theme,
            position: s.position.clone(),
            accent_color: s.accent_color.clone(),
        },
        limits: WidgetLimits {
            max_message_bytes: validate::MAX_MESSAGE_TEXT_BYTES,
        },
        realtime_url: "/realtime/v1",
    }))
}

/// Creates or updates the identified user, after identity verification. Also says whether
/// the identity is trusted: proven, or the project trusts pages (`off`); `report` lets an
/// unproven one in, untrusted.
async fn identify(
    gw: &Gateway,
    ctx: &WidgetRequest,
    u: InitUser,
) -> Result<(EndUser, bool), ApiError> {
    let input = UserInput {
        identifier: Some(Identifier::parse(u.identifier.clone(), "user.identifier")?),
        name: parse_opt(u.name, |v| Name::parse(v, "user.name"))?,
        email: parse_opt(u.email, |v| Email::parse(v, "email"))?,
        avatar: parse_opt(u.avatar, |v| Url::parse(v, "user.avatar"))?,
        metadata: Metadata::empty(),
    };
    let mode = ctx.settings.identity_verification;
    let mut trusted = true;
    if mode != IdentityVerification::Off {
        let secret = keys::identity_secret(
            gw.auth().pepper(),
            ctx.project.id,
            ctx.settings.identity_secret_generation,
        );
        let verified = match (&u.user_hash, &u.user_jwt) {
            (Some(hash), _) => keys::constant_time_eq(
                &hash.to_ascii_lowercase(),
                &keys::hmac_hex(secret.as_bytes(), u.identifier.as_bytes()),
            ),
            (None, Some(jwt)) => {
                let mut v = Validation::new(Algorithm::HS256);
                v.set_required_spec_claims(&["exp", "sub"]);
                v.validate_aud = false;
                v.leeway = 5;
                jsonwebtoken::decode::<TenantUserClaims>(
                    jwt,
                    &DecodingKey::from_secret(secret.as_bytes()),
                    &v,
                )
                .is_ok_and(|d| d.claims.sub == u.identifier)
            }
            (None, None) => false,
        };
        if !verified {
            metrics::counter!("larachat_widget_identity_failures_total").increment(1);
            if mode == IdentityVerification::Enforce {
                let why = match (&u.user_hash, &u.user_jwt) {
                    (None, None) => "user.user_hash (or user.user_jwt) is missing",
                    (Some(_), _) => {
                        "user.user_hash is not hex(HMAC-SHA256(identity secret, user.identifier))"
                    }
                    (None, Some(_)) => {
                        "user.user_jwt is not an unexpired HS256 JWT of the identity secret with sub = user.identifier"
                    }
                };
                return Err(ApiError::forbidden(format!(
                    "identity verification failed: {why} (the project enforces identity verification)"
                )));
            }
            tracing::warn!(project_id = %ctx.project.id, "widget identity verification failed (report-only)");
            trusted = false;
        }
    }
    let (user, _) = gw.service().widget_user(ctx.project.id, input).await?;
    Ok((user, trusted))
}

fn principal_for(ctx: &WidgetRequest, user: &EndUser) -> Principal {
    Principal {
        project: ctx.project.id,
        kind: crate::auth::PrincipalKind::EndUser { user_id: user.id },
        origin: Some(ctx.origin.clone()),
        name: user.name.clone(),
    }
}

/// The visitor's latest open conversation: where its messages, typing and reads go.
async fn current_conversation(
    gw: &Gateway,
    who: &Principal,
) -> Result<Option<Conversation>, ApiError> {
    latest_conversation(gw, who, Some(ConversationStatus::Open)).await
}

/// The conversation the widget shows: the latest open one, else the latest closed one (so
/// that the visitor sees it was closed, with its history, and starts a new one on purpose).
async fn shown_conversation(
    gw: &Gateway,
    who: &Principal,
) -> Result<Option<Conversation>, ApiError> {
    match current_conversation(gw, who).await? {
        Some(c) => Ok(Some(c)),
        None => latest_conversation(gw, who, None).await,
    }
}

/// The visitor's newest conversation (of `status`, when given).
async fn latest_conversation(
    gw: &Gateway,
    who: &Principal,
    status: Option<ConversationStatus>,
) -> Result<Option<Conversation>, ApiError> {
    let page = gw
        .store()
        .list_conversations(
            who.project,
            &ConversationQuery {
                status,
                member: who.end_user(),
                assignee: None,
                cursor: None,
                limit: 1,
            },
        )
        .await?;
    Ok(page.items.into_iter().next())
}

// ---------------------------------------------------------------------------------------------
// Session-authenticated endpoints
// ---------------------------------------------------------------------------------------------

/// The widget session of a request: an end-user token of the key's project, issued to the
/// request's origin.
async fn session(
    gw: &Gateway,
    ctx: &WidgetRequest,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or_else(|| ApiError::unauthorized("missing widget session token"))?;
    let who = gw.auth().authenticate(token).await?;
    if who.project != ctx.project.id
        || who.end_user().is_none()
        || who.origin.as_deref() != Some(ctx.origin.as_str())
    {
        return Err(ApiError::unauthorized("invalid widget session"));
    }
    gw.limit_request(&who).await?;
    gw.meter().request(who.project);
    Ok(who)
}

/// History paging.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// The publishable key.
    pub key: String,
    pub before: Option<MessageId>,
    pub after: Option<MessageId>,
    /// 1–200, default 50.
    pub limit: Option<u32>,
    /// Another of the visitor's conversations (from `GET /widget/v1/conversations`) instead of
    /// the current one; `404` unless the visitor is a member.
    pub conversation_id: Option<ConversationId>,
}

/// Paging of the visitor's conversations.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConversationsParams {
    /// The publishable key.
    pub key: String,
    /// 1–50, default 20.
    pub limit: Option<u32>,
}

/// The visitor's conversations, newest first (those carried over by `identify` included).
#[derive(Debug, Serialize, ToSchema)]
pub struct WidgetConversations {
    pub data: Vec<Conversation>,
    pub has_more: bool,
}

/// Messages of the visitor's current conversation.
#[derive(Debug, Serialize, ToSchema)]
pub struct WidgetMessages {
    pub conversation: Option<Conversation>,
    pub data: Vec<Message>,
    pub has_more: bool,
}

#[utoipa::path(get, path = "/widget/v1/conversations", tag = "widget", operation_id = "widget_list_conversations", params(ConversationsParams),
    responses((status = 200, body = WidgetConversations), (status = 401, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_conversations(
    State(gw): State<Gateway>,
    Extension(ctx): Extension<WidgetRequest>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<ConversationsParams>,
) -> Result<ApiJson<WidgetConversations>, ApiError> {
    let who = session(&gw, &ctx, &headers).await?;
    let limit = match params.limit {
        None => 20,
        Some(l @ 1..=50) => l,
        Some(_) => return Err(ApiError::validation("limit must be between 1 and 50")),
    };
    let page = gw
        .store()
        .list_conversations(
            who.project,
            &ConversationQuery {
                status: None,
                member: who.end_user(),
                assignee: None,
                cursor: None,
                limit,
            },
        )
        .await?;
    Ok(ApiJson(WidgetConversations {
        data: page.items,
        has_more: page.has_more,
    }))
}

#[utoipa::path(get, path = "/widget/v1/messages", tag = "widget", operation_id = "widget_list_messages", params(HistoryParams),
    responses((status = 200, body = WidgetMessages), (status = 401, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_messages(
    State(gw): State<Gateway>,
    Extension(ctx): Extension<WidgetRequest>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> Result<ApiJson<WidgetMessages>, ApiError> {
    let who = session(&gw, &ctx, &headers).await?;
    let limit = validate::page_limit(params.limit)?;
    let range = history_range(params.before, params.after)?;
    let chosen = match params.conversation_id {
        Some(id) => Some(gw.conversation_for(&who, id).await?),
        None => shown_conversation(&gw, &who).await?,
    };
    let Some(conversation) = chosen else {
        return Ok(ApiJson(WidgetMessages {
            conversation: None,
            data: Vec::new(),
            has_more: false,
        }));
    };
    let page = gw
        .store()
        .list_messages(who.project, conversation.id, range, limit)
        .await?;
    Ok(ApiJson(WidgetMessages {
        conversation: Some(conversation),
        data: page.items,
        has_more: page.has_more,
    }))
}

/// Send a message from the widget.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WidgetSend {
    pub text: String,
    pub client_msg_id: String,
    pub metadata: Option<serde_json::Value>,
}

/// The stored message and the conversation it is in.
#[derive(Debug, Serialize, ToSchema)]
pub struct WidgetSent {
    pub message: Message,
    pub duplicate: bool,
    pub conversation: Conversation,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KeyOnly {
    /// The publishable key.
    pub key: String,
}

#[utoipa::path(post, path = "/widget/v1/messages", tag = "widget", operation_id = "widget_send_message", request_body = WidgetSend, params(KeyOnly),
    responses((status = 201, body = WidgetSent), (status = 200, body = WidgetSent, description = "duplicate client_msg_id"),
              (status = 401, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn send_message(
    State(gw): State<Gateway>,
    Extension(ctx): Extension<WidgetRequest>,
    headers: HeaderMap,
    ApiQuery(_key): ApiQuery<KeyOnly>,
    ApiJson(body): ApiJson<WidgetSend>,
) -> Result<(StatusCode, ApiJson<WidgetSent>), ApiError> {
    let who = session(&gw, &ctx, &headers).await?;
    // Validate before creating a conversation for nothing.
    validate::message_text(&body.text)?;
    validate::client_msg_id(&body.client_msg_id)?;
    let conversation = match current_conversation(&gw, &who).await? {
        Some(c) => c,
        None => {
            let input = NewConversation {
                subject: None,
                members: MemberList::default(),
                metadata: Metadata::parse(
                    serde_json::json!({"source": "widget", "origin": ctx.origin}),
                )?,
                // The first message's own key: a first send retried (its answer lost)
                // starts one conversation, not one per attempt.
                idempotency_key: Some(format!("widget-first:{}", body.client_msg_id)),
            };
            gw.service().create_conversation(&who, input).await?.0
        }
    };
    let sender = gw.resolve_actor(&who, None).await?;
    let appended = gw
        .send_message(
            &who,
            conversation.id,
            sender,
            SendInput {
                text: body.text,
                client_msg_id: Some(body.client_msg_id),
                metadata: body.metadata,
                transport: "widget",
            },
        )
        .await?;
    Ok((
        sent_status(&appended),
        ApiJson(WidgetSent {
            message: appended.message,
            duplicate: !appended.created,
            conversation,
        }),
    ))
}

/// A typing or read event from the widget.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WidgetEvent {
    Typing {
        #[schema(value_type = String)]
        state: TypingState,
    },
    Read {
        message_id: MessageId,
    },
}

#[utoipa::path(post, path = "/widget/v1/events", tag = "widget", operation_id = "widget_event", request_body = WidgetEvent, params(KeyOnly),
    responses((status = 202, description = "typing published"), (status = 200, description = "read state"),
              (status = 404, body = larachat_core::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn event(
    State(gw): State<Gateway>,
    Extension(ctx): Extension<WidgetRequest>,
    headers: HeaderMap,
    ApiQuery(_key): ApiQuery<KeyOnly>,
    ApiJson(body): ApiJson<WidgetEvent>,
) -> Result<Response, ApiError> {
    let who = session(&gw, &ctx, &headers).await?;
    let conversation = current_conversation(&gw, &who)
        .await?
        .ok_or_else(|| ApiError::not_found("conversation"))?;
    let actor = gw.resolve_actor(&who, None).await?;
    match body {
        WidgetEvent::Typing { state } => {
            gw.typing(&who, conversation.id, actor, state).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        WidgetEvent::Read { message_id } => {
            let state = gw
                .mark_read(&who, conversation.id, actor, message_id)
                .await?;
            Ok(ApiJson(state).into_response())
        }
    }
}

/// Whether a realtime connection from `origin` may use a session bound to `bound`: the same
/// origin, still allowed by the project.
pub(crate) async fn socket_origin_ok(
    gw: &Gateway,
    who: &Principal,
    origin: Option<&str>,
) -> Result<(), ApiError> {
    let Some(bound) = who.origin.as_deref() else {
        return Ok(());
    };
    let project = gw.auth().require_active_project(who.project).await?;
    if origin == Some(bound) && WidgetSettings::of(&project).allows_origin(bound) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "this origin may not use the widget session",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_loader_names_the_hashed_widget() {
        let a = Assets::get();
        assert!(
            LOADER_JS.contains(&format!("'{WIDGET_PATH}'")),
            "the marker is in the source"
        );
        assert!(
            a.loader.contains(&format!("'{}'", a.widget_path)),
            "{}",
            a.loader
        );
        assert!(!a.loader.contains(&format!("'{WIDGET_PATH}'")));
        let hash = a
            .widget_path
            .trim_start_matches("/widget/widget.")
            .trim_end_matches(".js");
        assert_eq!(hash.len(), 16);
        assert_eq!(a.widget_etag.to_str().unwrap(), format!("\"{hash}\""));
        let other = Assets::new(LOADER_JS, "another widget");
        assert_ne!(
            other.widget_path, a.widget_path,
            "the hash follows the content"
        );
        assert_ne!(other.loader_etag, a.loader_etag);
    }

    #[test]
    fn if_none_match_lists_and_weak_tags_match() {
        let etag = HeaderValue::from_static("\"abc\"");
        let req = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(etag_matches(&req("\"abc\""), &etag));
        assert!(etag_matches(&req("\"x\", W/\"abc\""), &etag));
        assert!(etag_matches(&req("*"), &etag));
        assert!(!etag_matches(&req("\"abd\""), &etag));
        assert!(!etag_matches(&HeaderMap::new(), &etag));
    }
}
