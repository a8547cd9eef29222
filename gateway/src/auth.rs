//! Authentication and authorisation of tenant credentials.
//!
//! Two credentials reach the gateway:
//! - **secret keys** (`sk_live_…`): parsed and checksummed without I/O, then looked up by the
//!   key id embedded in them (cached), verified in constant time, checked for revocation and
//!   expiry on every use, and scoped by `read` / `write` / `admin`;
//! - **end-user JWTs** (HS256, `sub` = end user, `aud` = `larachat:project:<id>`, `exp`),
//!   issued by `POST /api/v1/users`, or by widget init with an `origin` claim (a widget
//!   session, refused on the Client API);
//! - **agent tokens** (HS256, `aud` = `larachat:agent:<project>`, `sub` = the agent's id,
//!   `name`, `scp` = scopes, `by` = who issued it, `exp` short), issued by
//!   `POST /api/v1/agent-tokens` to a secret key's holder for a browser (an inbox, the demo),
//!   `by = key:<key id>`, or by the control plane to a project member (the dashboard's inbox,
//!   `by = member:<admin id>`): an agent of the project with those scopes, speaking as that
//!   agent only, refused as soon as the issuing key is revoked or expires, or the membership
//!   ends. Signed by [`larachat_service::tokens`], shared with the control plane.
//!
//! All resolve to a [`Principal`]: the project (from the credential only, never from the
//! request) and the actor. The project must be active.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use moka::sync::Cache;

use std::collections::BTreeSet;

use larachat_core::id::{AdminUserId, ApiKeyId, EndUserId, ProjectId};
use larachat_core::keys::{self, KeyFormatError};
use larachat_core::model::{
    self, Actor, ActorKind, ApiKeyRecord, KeyKind, Project, ProjectStatus, Scope,
};
use larachat_core::team::Member;
use larachat_core::{ApiError, ErrorCode};
use larachat_store::Store;

use crate::{Gateway, GatewayConfig};

use larachat_service::tokens::ISSUER;
const AUD_PREFIX: &str = "larachat:project:";

use larachat_service::tokens::MEMBER_AGENT_PREFIX;
pub use larachat_service::{Principal, PrincipalKind};

pub use larachat_service::tokens::AgentToken;
use larachat_service::tokens::{AGENT_AUD_PREFIX, AgentIssuer, TokenClaims as UserClaims};

/// Audience of visitor tokens: they only bring an anonymous visitor back at widget init.
const VISITOR_AUD_PREFIX: &str = "larachat:visitor:";
/// Lifetime of a visitor token.
const VISITOR_TOKEN_TTL: chrono::Duration = chrono::Duration::days(180);

/// The answer of a key re-check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// The store says the key works.
    Usable,
    /// The store says revoked, expired or unknown: refuse it.
    Refused,
    /// The store could not be asked (outage): no verdict either way.
    Unknown,
}

/// Verifies credentials, with caches for keys and projects.
///
/// A credential is refused (401, close 4001) only on a definite answer: a malformed or forged
/// token, or the store saying revoked, expired or unknown. When the store cannot be reached the
/// answer is `unavailable` (HTTP 503 with `Retry-After`, close 4102): retrying helps, a new
/// credential would not.
pub struct Authenticator {
    store: Arc<dyn Store>,
    pepper: Vec<u8>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    token_ttl: Duration,
    agent_token_ttl: Duration,
    keys: Cache<ApiKeyId, Arc<ApiKeyRecord>>,
    /// Memberships behind members' agent tokens (only existing ones are cached, like keys).
    members: Cache<(ProjectId, AdminUserId), Arc<Member>>,
    projects: Cache<ProjectId, Arc<Project>>,
    /// Per-project rate-limit rules (`settings.limits` over the plan's), once per cached
    /// project.
    project_limits: Cache<ProjectId, Arc<larachat_limits::ProjectLimits>>,
    /// The process's rate limits, for the rules of each plan (`limits.plans`).
    limits: Arc<larachat_limits::Limits>,
    /// Keys whose `last_used_at` was recorded recently: at most one store write per key per
    /// minute, off the request path.
    touched: Cache<ApiKeyId, ()>,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>, config: &GatewayConfig) -> Self {
        Self {
            store,
            pepper: config.key_pepper.clone(),
            encoding: EncodingKey::from_secret(&config.jwt_secret),
            decoding: DecodingKey::from_secret(&config.jwt_secret),
            token_ttl: config.user_token_ttl,
            agent_token_ttl: config.agent_token_ttl,
            limits: config.limits.clone(),
            project_limits: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(config.cache_ttl)
                .build(),
            keys: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(config.cache_ttl)
                .build(),
            members: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(config.cache_ttl)
                .build(),
            projects: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(config.cache_ttl)
                .build(),
            touched: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        }
    }

    /// Authenticates a bearer token: a secret key or an end-user JWT.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, ApiError> {
        if keys::looks_like_key(token) {
            self.authenticate_key(token).await
        } else {
            self.authenticate_user_token(token).await
        }
    }

    async fn authenticate_key(&self, token: &str) -> Result<Principal, ApiError> {
        let parsed = keys::parse(token).map_err(|e| match e {
            KeyFormatError::Prefix | KeyFormatError::Shape | KeyFormatError::Checksum => {
                ApiError::unauthorized("invalid API key")
            }
        })?;
        if parsed.kind != KeyKind::Secret {
            return Err(ApiError::unauthorized(
                "publishable keys only initialise the widget; use a secret key",
            ));
        }
        let record = self
            .key(parsed.id)
            .await?
            .ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
        if !parsed.verify(&self.pepper, &record.secret_hash) {
            return Err(ApiError::unauthorized("invalid API key"));
        }
        if record.revoked_at.is_some() {
            return Err(ApiError::unauthorized("API key has been revoked"));
        }
        if !record.is_usable_at(model::now()) {
            return Err(ApiError::unauthorized("API key has expired"));
        }
        self.require_active_project(record.project_id).await?;
        self.record_use(record.id);
        Ok(Principal {
            project: record.project_id,
            kind: PrincipalKind::Key {
                key_id: record.id,
                scopes: record.scopes.clone(),
            },
            origin: None,
            name: None,
        })
    }

    async fn authenticate_user_token(&self, token: &str) -> Result<Principal, ApiError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        validation.leeway = 5;
        // The audience names the project, which we only learn from the token: check its form
        // ourselves below instead of against a fixed list.
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<UserClaims>(token, &self.decoding, &validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::unauthorized("token has expired")
                }
                _ => ApiError::unauthorized("invalid token"),
            },
        )?;
        if let Some(project) = data.claims.aud.strip_prefix(AGENT_AUD_PREFIX) {
            let project = project
                .parse()
                .map_err(|_| ApiError::unauthorized("invalid token"))?;
            return self.authenticate_agent(project, data.claims).await;
        }
        let project: ProjectId = data
            .claims
            .aud
            .strip_prefix(AUD_PREFIX)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| ApiError::unauthorized("invalid token"))?;
        let user_id: EndUserId = data
            .claims
            .sub
            .parse()
            .map_err(|_| ApiError::unauthorized("invalid token"))?;
        self.require_active_project(project).await?;
        // A deleted user's tokens stop working at once.
        let user = self
            .store
            .end_user(project, user_id)
            .await?
            .ok_or_else(|| ApiError::unauthorized("invalid token"))?;
        Ok(Principal {
            project,
            kind: PrincipalKind::EndUser { user_id },
            origin: data.claims.origin,
            name: user.name,
        })
    }

    /// An agent token's principal, if the credential behind it (its issuing key, or the
    /// membership it was issued to) still works for its project.
    async fn authenticate_agent(
        &self,
        project: ProjectId,
        claims: UserClaims,
    ) -> Result<Principal, ApiError> {
        let invalid = || ApiError::unauthorized("invalid token");
        let issuer = claims
            .by
            .as_deref()
            .and_then(AgentIssuer::parse)
            .ok_or_else(invalid)?;
        let allowed: BTreeSet<Scope> = match issuer {
            AgentIssuer::Key(key_id) => {
                let record = self.key(key_id).await?.ok_or_else(invalid)?;
                if record.project_id != project || record.kind != KeyKind::Secret {
                    return Err(invalid());
                }
                if record.revoked_at.is_some() || !record.is_usable_at(model::now()) {
                    return Err(ApiError::unauthorized(
                        "the key that issued this agent token is no longer valid",
                    ));
                }
                if record.scopes.contains(&Scope::Admin) {
                    [Scope::Read, Scope::Write].into()
                } else {
                    record.scopes.clone()
                }
            }
            AgentIssuer::Member(admin) => {
                // A member's token speaks as that member only.
                if claims.sub != format!("{MEMBER_AGENT_PREFIX}{admin}") {
                    return Err(invalid());
                }
                if self.member(project, admin).await?.is_none() {
                    return Err(ApiError::unauthorized(
                        "the membership this agent token was issued to has ended",
                    ));
                }
                // Every role answers conversations (owner, admin, agent: read and write).
                [Scope::Read, Scope::Write].into()
            }
        };
        larachat_core::validate::identifier(&claims.sub, "sub").map_err(|_| invalid())?;
        self.require_active_project(project).await?;
        // Never more than the issuer may do now.
        let scopes = claims
            .scp
            .unwrap_or_default()
            .into_iter()
            .filter(|s| allowed.contains(s))
            .filter(|s| matches!(s, Scope::Read | Scope::Write))
            .collect();
        Ok(Principal {
            project,
            kind: PrincipalKind::Agent {
                issuer,
                scopes,
                actor: Actor {
                    kind: ActorKind::Agent,
                    id: claims.sub,
                    name: claims.name.clone(),
                },
            },
            origin: None,
            name: claims.name,
        })
    }

    /// Issues an agent token for `actor` (an agent of the key's project) on behalf of the
    /// secret key `key_id`, with `scopes` (checked by the caller against the key's) and a
    /// lifetime of at most the configured one.
    pub fn issue_agent_token(
        &self,
        project: ProjectId,
        key_id: ApiKeyId,
        actor: Actor,
        scopes: BTreeSet<Scope>,
        ttl: Option<Duration>,
    ) -> Result<AgentToken, ApiError> {
        let ttl = ttl.map_or(self.agent_token_ttl, |t| t.min(self.agent_token_ttl));
        larachat_service::tokens::sign_agent_token(
            &self.encoding,
            project,
            AgentIssuer::Key(key_id),
            actor,
            scopes,
            ttl,
            model::now(),
        )
    }

    /// Longest lifetime of an agent token.
    pub fn agent_token_ttl(&self) -> Duration {
        self.agent_token_ttl
    }

    /// The rate-limit rules of a project: its own (`settings.limits`), then its plan's
    /// (`limits.plans`), cached like the project.
    pub async fn project_limits(
        &self,
        id: ProjectId,
    ) -> Result<Arc<larachat_limits::ProjectLimits>, ApiError> {
        if let Some(l) = self.project_limits.get(&id) {
            return Ok(l);
        }
        let project = self.require_active_project(id).await?;
        let own = larachat_limits::ProjectLimits::of(&project.settings);
        let limits = Arc::new(own.or(self.limits.config().plan(project.plan.as_str())));
        self.project_limits.insert(id, limits.clone());
        Ok(limits)
    }

    /// Issues an end-user token. Returns the token and its expiry.
    pub fn issue_user_token(
        &self,
        project: ProjectId,
        user: EndUserId,
    ) -> Result<(String, DateTime<Utc>), ApiError> {
        self.issue_session_token(project, user, None)
    }

    /// Issues an end-user token, bound to a page origin for widget sessions.
    pub fn issue_session_token(
        &self,
        project: ProjectId,
        user: EndUserId,
        origin: Option<&str>,
    ) -> Result<(String, DateTime<Utc>), ApiError> {
        let ttl = chrono::Duration::from_std(self.token_ttl).unwrap_or(chrono::Duration::hours(24));
        self.sign(user, format!("{AUD_PREFIX}{project}"), ttl, origin)
    }

    /// Issues a long-lived visitor token: it only lets an anonymous visitor come back as the
    /// same end user at widget init.
    pub fn issue_visitor_token(
        &self,
        project: ProjectId,
        user: EndUserId,
    ) -> Result<String, ApiError> {
        self.sign(
            user,
            format!("{VISITOR_AUD_PREFIX}{project}"),
            VISITOR_TOKEN_TTL,
            None,
        )
        .map(|(t, _)| t)
    }

    /// The end user a visitor token names, if it is valid for `project`.
    pub fn verify_visitor_token(&self, project: ProjectId, token: &str) -> Option<EndUserId> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[format!("{VISITOR_AUD_PREFIX}{project}")]);
        validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        let data = jsonwebtoken::decode::<UserClaims>(token, &self.decoding, &validation).ok()?;
        data.claims.sub.parse().ok()
    }

    fn sign(
        &self,
        user: EndUserId,
        aud: String,
        ttl: chrono::Duration,
        origin: Option<&str>,
    ) -> Result<(String, DateTime<Utc>), ApiError> {
        let now = model::now();
        let exp = now + ttl;
        let claims = UserClaims {
            sub: user.to_string(),
            aud,
            iss: ISSUER.to_owned(),
            exp: exp.timestamp(),
            iat: now.timestamp(),
            origin: origin.map(str::to_owned),
            name: None,
            scp: None,
            by: None,
        };
        let token = larachat_service::tokens::sign(&self.encoding, &claims)?;
        Ok((token, exp))
    }

    /// The active project of a publishable key (`pk_live_…`), for widget requests.
    pub async fn publishable_project(&self, key: &str) -> Result<Arc<Project>, ApiError> {
        let invalid = || ApiError::unauthorized("invalid publishable key");
        let parsed = keys::parse(key).map_err(|_| invalid())?;
        if parsed.kind != KeyKind::Publishable {
            return Err(ApiError::unauthorized(
                "the widget takes a publishable key (pk_live_…), never a secret key",
            ));
        }
        let record = self.key(parsed.id).await?.ok_or_else(invalid)?;
        if !parsed.verify(&self.pepper, &record.secret_hash) || !record.is_usable_at(model::now()) {
            return Err(invalid());
        }
        self.require_active_project(record.project_id).await
    }

    /// The server pepper (identity secrets are derived from it).
    pub fn pepper(&self) -> &[u8] {
        &self.pepper
    }

    /// Records the key's `last_used_at`, coalesced to once a minute, without delaying the
    /// request.
    fn record_use(&self, id: ApiKeyId) {
        if self.touched.contains_key(&id) {
            return;
        }
        self.touched.insert(id, ());
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.touch_api_key(id, model::now()).await {
                tracing::debug!(error = %e, "could not record key use");
            }
        });
    }

    /// Re-checks that a key is still usable (revocation, expiry), for long-lived connections.
    /// Only a definite answer refuses it: a store that cannot be reached says nothing about the
    /// key, so the connection goes on (it was authenticated; revocations still arrive as
    /// control notices, and the next check that reaches the store decides).
    pub async fn key_status(&self, key_id: ApiKeyId) -> KeyStatus {
        match self.key(key_id).await {
            Ok(Some(k)) if k.is_usable_at(model::now()) => KeyStatus::Usable,
            Ok(_) => KeyStatus::Refused,
            Err(e) => {
                tracing::debug!(error = %e.message, "key re-check could not reach the store");
                KeyStatus::Unknown
            }
        }
    }

    /// Re-checks the credential behind a principal, for long-lived connections: its key (a
    /// secret key, or the key that issued an agent token) or the membership a member's agent
    /// token was issued to. `None` when nothing needs re-checking (end users). Same rule as
    /// [`Authenticator::key_status`]: only a definite answer refuses.
    pub async fn credential_status(&self, who: &Principal) -> Option<KeyStatus> {
        if let Some(key) = who.key_id() {
            return Some(self.key_status(key).await);
        }
        let PrincipalKind::Agent {
            issuer: AgentIssuer::Member(admin),
            ..
        } = who.kind
        else {
            return None;
        };
        Some(match self.member(who.project, admin).await {
            Ok(Some(_)) => KeyStatus::Usable,
            Ok(None) => KeyStatus::Refused,
            Err(e) => {
                tracing::debug!(error = %e.message, "member re-check could not reach the store");
                KeyStatus::Unknown
            }
        })
    }

    async fn member(
        &self,
        project: ProjectId,
        admin: AdminUserId,
    ) -> Result<Option<Arc<Member>>, ApiError> {
        if let Some(m) = self.members.get(&(project, admin)) {
            return Ok(Some(m));
        }
        match self.store.member(project, admin).await? {
            Some(m) => {
                let m = Arc::new(m);
                self.members.insert((project, admin), m.clone());
                Ok(Some(m))
            }
            None => Ok(None),
        }
    }

    /// Forgets a cached membership (control notice: it changed or ended).
    pub fn invalidate_member(&self, project: ProjectId, admin: AdminUserId) {
        self.members.invalidate(&(project, admin));
    }

    async fn key(&self, id: ApiKeyId) -> Result<Option<Arc<ApiKeyRecord>>, ApiError> {
        if let Some(k) = self.keys.get(&id) {
            return Ok(Some(k));
        }
        match self.store.api_key(id).await? {
            Some(k) => {
                let k = Arc::new(k);
                self.keys.insert(id, k.clone());
                Ok(Some(k))
            }
            None => Ok(None),
        }
    }

    /// The project, if it exists and is active; otherwise `project_suspended` / 401.
    pub async fn require_active_project(&self, id: ProjectId) -> Result<Arc<Project>, ApiError> {
        let project = match self.projects.get(&id) {
            Some(p) => p,
            None => {
                let p = self
                    .store
                    .project(id)
                    .await?
                    .ok_or_else(|| ApiError::unauthorized("invalid credentials"))?;
                let p = Arc::new(p);
                self.projects.insert(id, p.clone());
                p
            }
        };
        match project.status {
            ProjectStatus::Active => Ok(project),
            ProjectStatus::Suspended | ProjectStatus::Cancelled => Err(ApiError::new(
                ErrorCode::ProjectSuspended,
                "this project is not active",
            )),
        }
    }

    /// Forgets a cached key (control notice).
    pub fn invalidate_key(&self, id: ApiKeyId) {
        self.keys.invalidate(&id);
    }

    /// Forgets a cached project (control notice).
    pub fn invalidate_project(&self, id: ProjectId) {
        self.projects.invalidate(&id);
        self.project_limits.invalidate(&id);
    }

    /// Forgets every cached key, membership and project (control notices may have been
    /// missed).
    pub fn invalidate_all(&self) {
        self.keys.invalidate_all();
        self.members.invalidate_all();
        self.projects.invalidate_all();
        self.project_limits.invalidate_all();
    }
}

/// Extractor: the authenticated caller of a Client API request (`Authorization: Bearer …`).
pub struct Caller(pub Principal);

impl FromRequestParts<Gateway> for Caller {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, gw: &Gateway) -> Result<Self, Self::Rejection> {
        // Authenticated (and rate-limited) once by the Client API's middleware.
        if let Some(who) = parts.extensions.get::<Principal>() {
            return Ok(Caller(who.clone()));
        }
        let token = bearer(&parts.headers).map_err(AuthRejection)?;
        gw.auth()
            .authenticate(token)
            .await
            .map(Caller)
            .map_err(AuthRejection)
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, RFC 9110 §11.1).
pub fn bearer(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization header"))?;
    header
        .to_str()
        .ok()
        .and_then(|h| {
            let (scheme, rest) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest)
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("Authorization must be 'Bearer <key or token>'"))
}

/// A 401 carries `WWW-Authenticate: Bearer`.
pub struct AuthRejection(pub ApiError);

impl axum::response::IntoResponse for AuthRejection {
    fn into_response(self) -> axum::response::Response {
        let mut resp = self.0.clone().into_response();
        if self.0.code == ErrorCode::Unauthorized {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
