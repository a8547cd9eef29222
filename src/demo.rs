//! The demo: a sample shop page with the widget (`/demo`) and a minimal agent view
//! (`/demo/agent`, this machine only), on a "Demo" project that the single-node server creates
//! on first start, so that a newcomer sees a visitor and an agent talk within a minute.
//!
//! No secret key ever reaches a page. The agent view fetches a short-lived agent token for
//! the demo project (`POST /demo/agent/token`, renewed before it expires), issued on behalf of
//! the demo's secret key, which stays in `<data_dir>/demo.toml`. The agent view and its token
//! answer only when the TCP peer is loopback, the `Host` is a loopback name, no proxy header
//! (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) is present and, for the token, the page's
//! `Origin` is a loopback origin: behind a reverse proxy on the same machine, visitors get
//! 403. The demo runs only when `demo.enabled` is `true`, or `"auto"` (the default) and the
//! server listens on a loopback address.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

use larachat_core::id::{AdminUserId, ProjectId};
use larachat_core::keys;
use larachat_core::model::{Actor, ActorKind, KeyKind, PlanId, Scope, WidgetSettings};
use larachat_core::origin::Origin;
use larachat_gateway::Gateway;
use larachat_service::Service;
use larachat_service::input::Name;
use larachat_service::projects::{AdminCaller, KeyScopes, NewApiKey, NewProject, ProjectSettings};

const INDEX_HTML: &str = include_str!("../widget/demo/index.html");
const AGENT_HTML: &str = include_str!("../widget/demo/agent.html");
const AGENT_JS: &str = include_str!("../widget/demo/agent.js");

/// The demo project's credentials, kept in `<data_dir>/demo.toml` across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Demo {
    pub project_id: ProjectId,
    pub publishable_key: String,
    pub secret_key: String,
}

/// Finds or creates the demo project and its keys, and allows the server's own origins.
pub async fn ensure(
    service: &Service,
    pepper: &[u8],
    data_dir: &Path,
    addr: SocketAddr,
) -> anyhow::Result<Demo> {
    let path = data_dir.join("demo.toml");
    let saved: Option<Demo> = fs::read_to_string(&path)
        .ok()
        .and_then(|t| toml::from_str(&t).ok());
    let store = service.store();
    let demo = match saved {
        Some(d) if store.project(d.project_id).await?.is_some() => d,
        _ => create(service, pepper, &path).await?,
    };
    // Allow the origins a browser on this machine uses for this server.
    let port = addr.port();
    let mut urls = vec![
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ];
    if !addr.ip().is_loopback() && !addr.ip().is_unspecified() {
        urls.push(format!("http://{addr}"));
    }
    let origins = urls
        .iter()
        .map(|u| Origin::parse(u).map_err(|e| anyhow::anyhow!("demo origin {u}: {}", e.message)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(project) = store.project(demo.project_id).await? {
        let mut widget = WidgetSettings::of(&project);
        if widget.allowed_origins != origins {
            widget.allowed_origins = origins;
            service
                .save_widget_settings(AdminCaller::internal(DEMO_OWNER), demo.project_id, &widget)
                .await?;
        }
    }
    Ok(demo)
}

/// The demo project is owned by no admin: it is not listed in the Admin API.
const DEMO_OWNER: AdminUserId = AdminUserId::from_uuid(uuid::Uuid::nil());

async fn create(service: &Service, pepper: &[u8], path: &Path) -> anyhow::Result<Demo> {
    let project = service
        .create_project(
            DEMO_OWNER,
            NewProject {
                name: Name::parse("Demo".into(), "name")?,
                // Unlimited: the demo is local and must not stop after 100 visitors.
                plan: PlanId::parse("enterprise")?,
                settings: ProjectSettings::parse(json!({"widget": {
                    "identity_verification": "enforce",
                    "title": "Acme Support",
                    "greeting": "Hi! 👋 Ask us anything about your order.",
                    "accent_color": "#4f46e5",
                }}))?,
            },
        )
        .await?;
    let issue = |kind: KeyKind, name: &'static str, scopes: Option<Vec<Scope>>| async move {
        let input = NewApiKey {
            name: Name::parse(name.into(), "name")?,
            kind,
            scopes: KeyScopes::parse(kind, scopes)?,
            expires_at: None,
        };
        let issued = service
            .create_api_key(AdminCaller::internal(DEMO_OWNER), project.id, input, pepper)
            .await?;
        anyhow::Ok(issued.plaintext)
    };
    let pk = issue(KeyKind::Publishable, "demo widget", None).await?;
    let sk = issue(
        KeyKind::Secret,
        "demo agent view",
        Some(vec![Scope::Read, Scope::Write]),
    )
    .await?;
    let demo = Demo {
        project_id: project.id,
        publishable_key: pk,
        secret_key: sk,
    };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    let text = toml::to_string(&demo)?;
    opts.open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(project_id = %demo.project_id, "created the demo project");
    Ok(demo)
}

/// The demo's routes and what they need.
#[derive(Clone)]
struct DemoState {
    demo: Arc<Demo>,
    gateway: Gateway,
}

/// `/`, `/demo`, `/demo/agent`, `/demo/agent.js`, `POST /demo/agent/token`.
pub fn router(demo: Demo, gateway: Gateway) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/demo") }))
        .route("/demo", get(index))
        .route("/demo/agent", get(agent))
        .route("/demo/agent.js", get(agent_js))
        .route("/demo/agent/token", post(agent_token))
        .with_state(DemoState {
            demo: Arc::new(demo),
            gateway,
        })
}

async fn index(State(s): State<DemoState>) -> Html<String> {
    let config = json!({
        "apiKey": s.demo.publishable_key,
        "settings": {"position": "bottom-right", "theme": "light"},
    });
    Html(INDEX_HTML.replace("{{LARACHAT_DEMO_WIDGET_CONFIG}}", &config.to_string()))
}

/// The agent inbox page. It holds no credential: it asks `/demo/agent/token` for one.
async fn agent(
    State(s): State<DemoState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = this_machine(peer, &headers) {
        return refused;
    }
    let config = json!({"projectId": s.demo.project_id, "tokenUrl": "/demo/agent/token"});
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(AGENT_HTML.replace("{{LARACHAT_DEMO_AGENT_CONFIG}}", &config.to_string())),
    )
        .into_response()
}

/// A short-lived agent token for the demo project, as "Demo Agent".
async fn agent_token(
    State(s): State<DemoState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = this_machine(peer, &headers) {
        return refused;
    }
    // Browsers send Origin on every POST; a page of another site cannot mint tokens here.
    let origin_ok = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .and_then(|o| {
            o.strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
        })
        .is_some_and(loopback_host);
    if !origin_ok {
        return refuse("the demo agent token is only given to the demo page on this machine");
    }
    let Ok(parsed) = keys::parse(&s.demo.secret_key) else {
        return larachat_core::ApiError::internal().into_response();
    };
    let actor = Actor {
        kind: ActorKind::Agent,
        id: "demo-agent".into(),
        name: Some("Demo Agent".into()),
    };
    match s.gateway.auth().issue_agent_token(
        s.demo.project_id,
        parsed.id,
        actor,
        [Scope::Read, Scope::Write].into(),
        None,
    ) {
        Ok(t) => (
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(json!({"token": t.token, "expires_at": t.expires_at})),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Whether a request surely comes from this machine, not through a proxy: loopback peer,
/// loopback `Host`, no forwarding header.
#[allow(clippy::result_large_err)]
fn this_machine(peer: SocketAddr, headers: &HeaderMap) -> Result<(), Response> {
    let host_ok = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(loopback_host);
    let proxied = [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-real-ip",
    ]
    .iter()
    .any(|h| headers.contains_key(*h));
    if peer.ip().is_loopback() && host_ok && !proxied {
        Ok(())
    } else {
        Err(refuse(
            "the demo agent view is only served to this machine (http://127.0.0.1:PORT/demo/agent)",
        ))
    }
}

fn refuse(why: &'static str) -> Response {
    (StatusCode::FORBIDDEN, why).into_response()
}

/// `localhost`, `127.0.0.1`, `[::1]`, with or without a port.
fn loopback_host(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => authority,
        }
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn agent_js() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/javascript; charset=utf-8",
        )],
        AGENT_JS,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for ok in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "[::1]:8080",
            "127.9.9.9",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "chat.example.com",
            "10.0.0.1:8080",
            "localhost.evil.com",
            "[2001:db8::1]",
            "",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }
}
