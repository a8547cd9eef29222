//! Which rate-limit buckets (`larachat-limits`) each thing a client does takes. The buckets,
//! their rules and the refusal (`429` / `rate_limited` with a retry hint) are the limits
//! crate's; this module only says who is counted where:
//!
//! | what | buckets |
//! |---|---|
//! | any API request, socket upgrade | `ip` (middleware, before authentication) |
//! | a Client API or Widget API request | the caller's own (`api_key` per key, or per agent of an agent token; `end_user` per end user) and `project` |
//! | a socket `send` | the same as a request, plus `messages` for an end user |
//! | a message over HTTP (Client API, widget) | `messages` when the sender is an end user |
//! | `POST /widget/v1/init` | `widget_init_ip` and `widget_init_project` |
//!
//! Per-project overrides come from the project's `settings.limits` (cached with the project).

use std::net::IpAddr;

use larachat_core::ApiError;
use larachat_core::error::RateLimitInfo;
use larachat_core::id::ProjectId;
use larachat_core::model::{Actor, ActorKind};
use larachat_limits::Kind;
use larachat_limits::client_ip::limit_key;
use larachat_limits::http::tighter;

use crate::Gateway;
use crate::auth::{Principal, PrincipalKind};

impl Gateway {
    /// One request of `who`: its own bucket and its project's. Returns the tighter state, for
    /// the `RateLimit-*` headers.
    pub async fn limit_request(&self, who: &Principal) -> Result<Option<RateLimitInfo>, ApiError> {
        let limits = self.limits();
        if !limits.enabled() {
            return Ok(None);
        }
        let overrides = self.auth().project_limits(who.project).await?;
        let o = Some(overrides.as_ref());
        let own = match &who.kind {
            PrincipalKind::Key { key_id, .. } => limits.check(Kind::ApiKey, key_id, o)?,
            PrincipalKind::Agent { issuer, actor, .. } => {
                limits.check(Kind::ApiKey, &(issuer, actor.id.as_str()), o)?
            }
            PrincipalKind::EndUser { user_id } => {
                limits.check(Kind::EndUser, &(who.project, user_id), o)?
            }
        };
        let project = limits.check(Kind::Project, &who.project, o)?;
        Ok(tighter(own, project))
    }

    /// One message of `sender`, sent by `who` over `transport` (`http`, `widget`, `ws`).
    /// HTTP requests already took the request buckets in the middleware; socket frames take
    /// them here. End users' messages also take their sender bucket on every transport.
    pub async fn limit_send(
        &self,
        who: &Principal,
        sender: &Actor,
        transport: &str,
    ) -> Result<(), ApiError> {
        let limits = self.limits();
        if !limits.enabled() {
            return Ok(());
        }
        if transport == "ws" {
            self.limit_request(who).await?;
        }
        if sender.kind == ActorKind::EndUser {
            let overrides = self.auth().project_limits(who.project).await?;
            limits.check(
                Kind::Messages,
                &(who.project, sender.id.as_str()),
                Some(&overrides),
            )?;
        }
        Ok(())
    }

    /// A widget session start from `ip` (when known) for `project`.
    pub async fn limit_widget_init(
        &self,
        ip: Option<IpAddr>,
        project: ProjectId,
    ) -> Result<(), ApiError> {
        let limits = self.limits();
        if !limits.enabled() {
            return Ok(());
        }
        if let Some(ip) = ip {
            limits.check(Kind::WidgetInitIp, &limit_key(ip), None)?;
        }
        let overrides = self.auth().project_limits(project).await?;
        limits.check(Kind::WidgetInitProject, &project, Some(&overrides))?;
        Ok(())
    }
}
