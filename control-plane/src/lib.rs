//! # larachat-control-plane
//!
//! The control plane of Lara Chat: the Admin REST API (`/api/admin/*`) through which admins
//! log in, manage their projects and teams and issue or revoke API keys. It writes to the store
//! (the system of record) and announces changes that gateways must obey (a revoked key, a
//! changed or deleted project) as [`ControlEvent`](larachat_core::control::ControlEvent)s on
//! [`Subject::control`](larachat_core::subject::Subject::control).
//!
//! Depends on `core`, `service` (every change: projects, widget settings, keys), `store`
//! (reads, admin accounts) and `broker` only. It must never depend on the gateway: the two
//! meet through the store and through bus subjects, so either can be deployed alone.
//!
//! Modules:
//! - [`analytics`]: a project's analytics (messages over time, conversations, response and
//!   resolution times, who is online, usage against the plan).
//! - [`api`]: request and response types of the Admin API and its handlers (tenancy: an admin
//!   only ever sees the projects it is a member of, each within its role's permissions;
//!   anything else answers 404 like a missing resource; platform admins see everything).
//! - [`auth`]: admin tokens (HS256 JWT, `aud = "larachat:admin"`) and the [`AdminAuth`]
//!   extractor that guards every route but login.
//! - [`password`]: argon2id password hashing, login verification without user enumeration
//!   through a bounded pool of argon2 slots, and [`bootstrap_admin`] for the first admin.
//! - [`plans`]: plans (listed by every admin, edited by platform admins, announced to the
//!   gateways) and a project's usage against its plan.
//! - [`team`]: project members and their roles, invitations (one-time links), and agent
//!   tokens for members (the dashboard's inbox).
//! - [`widget`]: widget settings of a project (allowed origins, identity verification, look)
//!   and its identity secret.
//! - [`openapi`]: [`AdminApiDoc`], the OpenAPI description the binary merges into
//!   `/openapi.json`.
//! - `telemetry` (private): the metric names (`larachat_admin_*`) and their HELP text, defined
//!   once ([`describe_metrics`]).
//!
//! The entry points are [`ControlPlane::new`] (state) and [`router`] (the axum routes, with
//! their 64 KiB body limit, catalog errors for 405s, and the per-client-address rate limit of
//! `larachat-limits`; login is also limited per address and per account, before any argon2
//! run).

pub mod analytics;
pub mod api;
pub mod auth;
pub mod openapi;
pub mod password;
pub mod plans;
pub mod team;
mod telemetry;
pub mod widget;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderValue;
use axum::http::header::CACHE_CONTROL;
use axum::response::Response;
use axum::routing::{delete, get, patch, post};
use larachat_broker::Bus;
use larachat_core::ApiError;
use larachat_service::projects::AdminCaller;
use larachat_store::Store;

pub use api::{
    AdminView, ApiKeyList, ApiKeyView, CreateApiKeyRequest, CreateProjectRequest, CreatedApiKey,
    ListProjectsQuery, LoginRequest, LoginResponse, ProjectList, ProjectView, UpdateProjectRequest,
};
pub use auth::{ADMIN_AUDIENCE, AdminAuth, AuthRejection, ISSUER, IssuedToken};
pub use openapi::AdminApiDoc;
pub use password::{BootstrapOutcome, MIN_PASSWORD_CHARS, bootstrap_admin};
pub use telemetry::describe as describe_metrics;

/// Largest request body the Admin API accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Default lifetime of an admin token.
pub const DEFAULT_ADMIN_TOKEN_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// Default lifetime of the agent tokens issued to members.
pub const DEFAULT_AGENT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// Longest admin token lifetime accepted by [`ControlPlane::new`].
pub const MAX_ADMIN_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Shortest HS256 key accepted for admin tokens (RFC 7518 §3.2: at least the hash size).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Configuration of the control plane. `Debug` never prints the secrets.
#[derive(Clone)]
pub struct ControlPlaneConfig {
    /// HS256 key that signs and verifies admin tokens.
    pub jwt_secret: Vec<u8>,
    /// Server-wide pepper for API key hashes ([`larachat_core::keys::generate`]); the gateway
    /// must use the same one to verify keys.
    pub key_pepper: Vec<u8>,
    /// Lifetime of an admin token issued at login.
    pub admin_token_ttl: Duration,
    /// The process's rate limits: the per-IP limit of every Admin API request, and login
    /// attempts per IP and per account (shared with the gateway in a single-node process).
    pub limits: Arc<larachat_limits::Limits>,
    /// Plan of a project created without one (`DEFAULT_PROJECT_PLAN`).
    pub default_plan: larachat_core::plan::PlanId,
    /// Emails (compared ignoring case) of the platform admins: only they edit plans and set a
    /// project's plan to anything but the default, and they may do everything on every
    /// project. Every other admin acts through its project memberships (roles).
    pub platform_admins: Vec<String>,
    /// Longest (and default) lifetime of the agent tokens issued to members
    /// (`security.agent_token_ttl_secs`, as the gateway's).
    pub agent_token_ttl: Duration,
    /// The address the dashboard is reached at (`https://chat.example.com`), for invite links;
    /// `None`: taken from the request's `Host` (and `X-Forwarded-Proto`).
    pub public_url: Option<String>,
}

/// Why a [`ControlPlaneConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The admin token key is shorter than [`MIN_JWT_SECRET_BYTES`].
    #[error("the admin JWT secret must be at least {MIN_JWT_SECRET_BYTES} bytes")]
    JwtSecretTooShort,
    /// The token lifetime is zero or longer than [`MAX_ADMIN_TOKEN_TTL`].
    #[error("the admin token lifetime must be between 1 second and 30 days")]
    TokenTtlOutOfRange,
}

/// Shared state of the Admin API: store, bus, configuration and derived keys. Cheap to clone.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    /// The one write path: every project and key change goes through it.
    service: larachat_service::Service,
    bus: Arc<dyn Bus>,
    config: ControlPlaneConfig,
    tokens: auth::TokenKeys,
    agent_token_key: jsonwebtoken::EncodingKey,
    /// Bounds concurrent argon2 runs and the logins waiting for one: each run takes ~19 MiB
    /// and a core for tens of milliseconds, so an unbounded burst of logins would exhaust
    /// memory through the blocking pool.
    password_pool: password::Pool,
    /// In-process observers of control events, told before the bus (see
    /// [`ControlPlane::add_local_listener`]).
    listeners: std::sync::RwLock<Vec<LocalListener>>,
    /// Who is online, for analytics (see [`ControlPlane::set_presence`]).
    presence: std::sync::OnceLock<OnlineUsers>,
}

/// Counts the end users online in a project now, from presence (a gateway's, or one the
/// binary starts for the control plane): `(count, truncated)`, where `truncated` means at
/// least `count` (presence lists a bounded number of users). See [`ControlPlane::set_presence`].
pub type OnlineUsers = Arc<
    dyn Fn(
            larachat_core::ProjectId,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(u64, bool), String>> + Send>,
        > + Send
        + Sync,
>;

/// A callback told of every control event synchronously, before the request that caused it
/// answers. See [`ControlPlane::add_local_listener`].
pub type LocalListener = Arc<dyn Fn(&larachat_core::control::ControlEvent) + Send + Sync>;

impl ControlPlaneConfig {
    /// A configuration with the default token lifetime.
    pub fn new(jwt_secret: impl Into<Vec<u8>>, key_pepper: impl Into<Vec<u8>>) -> Self {
        Self {
            jwt_secret: jwt_secret.into(),
            key_pepper: key_pepper.into(),
            admin_token_ttl: DEFAULT_ADMIN_TOKEN_TTL,
            limits: Arc::new(larachat_limits::Limits::default()),
            default_plan: larachat_core::plan::PlanId::free(),
            platform_admins: Vec::new(),
            agent_token_ttl: DEFAULT_AGENT_TOKEN_TTL,
            public_url: None,
        }
    }

    /// Whether `admin` is a platform admin.
    pub fn is_platform_admin(&self, admin: &larachat_core::model::AdminUser) -> bool {
        self.platform_admins
            .iter()
            .any(|e| e.eq_ignore_ascii_case(&admin.email))
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.jwt_secret.len() < MIN_JWT_SECRET_BYTES {
            return Err(ConfigError::JwtSecretTooShort);
        }
        if self.admin_token_ttl < Duration::from_secs(1)
            || self.admin_token_ttl > MAX_ADMIN_TOKEN_TTL
        {
            return Err(ConfigError::TokenTtlOutOfRange);
        }
        Ok(())
    }
}

impl ControlPlane {
    /// Builds the state, checking the configuration. Also prepares, once per process, the
    /// dummy password hash that logins with an unknown email are verified against (one argon2
    /// run, tens of milliseconds).
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        config: ControlPlaneConfig,
    ) -> Result<Self, ConfigError> {
        config.check()?;
        password::prepare_dummy_hash();
        Ok(Self {
            inner: Arc::new(Inner {
                tokens: auth::TokenKeys::new(&config.jwt_secret),
                agent_token_key: jsonwebtoken::EncodingKey::from_secret(&config.jwt_secret),
                service: larachat_service::Service::new(store.clone(), bus.clone()),
                store,
                bus,
                config,
                password_pool: password::Pool::for_this_machine(),
                listeners: std::sync::RwLock::new(Vec::new()),
                presence: std::sync::OnceLock::new(),
            }),
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Registers an in-process observer of control events. A single-node process registers
    /// its gateway here so that a revoked key or suspended project is refused by the very next
    /// request; gateways in other processes learn through the bus, within the bus latency
    /// (their cache TTL is the backstop).
    pub fn add_local_listener(&self, listener: LocalListener) {
        if let Ok(mut l) = self.inner.listeners.write() {
            l.push(listener);
        }
    }

    /// Gives the control plane a view of presence, for `online_users` in analytics. Without
    /// one, analytics answer `online_users: null` rather than a guess. Set once; later calls
    /// are ignored.
    pub fn set_presence(&self, online: OnlineUsers) {
        let _ = self.inner.presence.set(online);
    }

    /// Who is online in `project`, if presence is reachable from here.
    pub(crate) fn presence(&self) -> Option<&OnlineUsers> {
        self.inner.presence.get()
    }

    /// Tells the local listeners about `event`.
    pub(crate) fn notify_local(&self, event: &larachat_core::control::ControlEvent) {
        let listeners = match self.inner.listeners.read() {
            Ok(l) => l.clone(),
            Err(_) => return,
        };
        for l in listeners {
            l(event);
        }
    }

    /// The service layer (`larachat-service`): every change goes through it.
    pub fn service(&self) -> &larachat_service::Service {
        &self.inner.service
    }

    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.inner.bus
    }

    pub fn config(&self) -> &ControlPlaneConfig {
        &self.inner.config
    }

    /// Issues an admin token for `admin`, valid for the configured lifetime. Login uses it;
    /// the binary may too (e.g. to print a token for scripts).
    pub fn issue_admin_token(
        &self,
        admin: &larachat_core::model::AdminUser,
    ) -> Result<IssuedToken, ApiError> {
        self.inner.tokens.issue(
            admin.id,
            larachat_core::model::now(),
            self.inner.config.admin_token_ttl,
        )
    }

    /// `admin` as the caller of a project route (is it a platform admin?).
    pub fn caller(&self, admin: &larachat_core::model::AdminUser) -> AdminCaller {
        AdminCaller {
            id: admin.id,
            platform_admin: self.inner.config.is_platform_admin(admin),
        }
    }

    /// The key that signs agent tokens for members (the gateways verify them with the same
    /// `security.jwt_secret`).
    pub(crate) fn agent_token_key(&self) -> &jsonwebtoken::EncodingKey {
        &self.inner.agent_token_key
    }

    pub(crate) fn tokens(&self) -> &auth::TokenKeys {
        &self.inner.tokens
    }

    pub(crate) fn password_pool(&self) -> &password::Pool {
        &self.inner.password_pool
    }
}

impl fmt::Debug for ControlPlaneConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlaneConfig")
            .field("jwt_secret", &"<redacted>")
            .field("key_pepper", &"<redacted>")
            .field("admin_token_ttl", &self.admin_token_ttl)
            .field("limits", &self.limits)
            .field("default_plan", &self.default_plan)
            .field("platform_admins", &self.platform_admins)
            .field("agent_token_ttl", &self.agent_token_ttl)
            .field("public_url", &self.public_url)
            .finish()
    }
}

impl fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlane")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The Admin API routes, with their state applied. No fallback is set, so the binary can merge
/// this router with the gateway's and set one catalog 404 for both.
pub fn router(cp: ControlPlane) -> Router {
    Router::new()
        .route("/api/admin/login", post(api::login))
        .route("/api/admin/me", get(api::me))
        .route(
            "/api/admin/projects",
            post(api::create_project).get(api::list_projects),
        )
        .route(
            "/api/admin/projects/{id}",
            get(api::get_project)
                .patch(api::update_project)
                .delete(api::delete_project),
        )
        .route(
            "/api/admin/projects/{id}/api-keys",
            post(api::create_api_key).get(api::list_api_keys),
        )
        .route("/api/admin/api-keys/{id}", delete(api::revoke_api_key))
        .route("/api/admin/plans", get(plans::list_plans))
        .route(
            "/api/admin/plans/{id}",
            get(plans::get_plan).patch(plans::update_plan),
        )
        .route("/api/admin/projects/{id}/usage", get(plans::get_usage))
        .route("/api/admin/usage/export", get(plans::usage_export))
        .route(
            "/api/admin/projects/{id}/usage/history",
            get(plans::usage_history),
        )
        .route(
            "/api/admin/projects/{id}/analytics",
            get(analytics::get_analytics),
        )
        .route(
            "/api/admin/projects/{id}/widget",
            get(widget::get_widget).put(widget::put_widget),
        )
        .route(
            "/api/admin/projects/{id}/widget/identity-secret",
            post(widget::rotate_identity_secret),
        )
        .route("/api/admin/projects/{id}/members", get(team::list_members))
        .route(
            "/api/admin/projects/{id}/members/{admin_id}",
            patch(team::update_member).delete(team::remove_member),
        )
        .route(
            "/api/admin/projects/{id}/invites",
            post(team::create_invite).get(team::list_invites),
        )
        .route(
            "/api/admin/projects/{id}/invites/{invite_id}",
            delete(team::delete_invite),
        )
        .route("/api/admin/invites/accept", post(team::accept_invite))
        .route(
            "/api/admin/projects/{id}/agent-token",
            post(team::create_agent_token),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(no_store))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            cp.config().limits.clone(),
            larachat_limits::http::ip_limit,
        ))
        .with_state(cp)
}

async fn method_not_allowed() -> ApiError {
    larachat_core::http::method_not_allowed()
}

/// Admin responses carry tokens, key plaintexts and private data: no cache may keep them.
async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
