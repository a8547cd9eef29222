//! The demo: a sample shop page with the widget (`/demo`) and a minimal agent view
//! (`/demo/agent`, loopback clients only), on a "Demo" project that the single-node server
//! creates on first start, so that a newcomer sees a visitor and an agent talk within a
//! minute. Disable with `demo.enabled = false` in production.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::json;

use larachat_core::id::{AdminUserId, ProjectId};
use larachat_core::keys;
use larachat_core::model::{
    self, ApiKeyRecord, KeyKind, Plan, Project, ProjectStatus, Scope, WidgetSettings,
};
use larachat_store::Store;

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
    store: &Arc<dyn Store>,
    pepper: &[u8],
    data_dir: &Path,
    addr: SocketAddr,
) -> anyhow::Result<Demo> {
    let path = data_dir.join("demo.toml");
    let saved: Option<Demo> = fs::read_to_string(&path)
        .ok()
        .and_then(|t| toml::from_str(&t).ok());
    let demo = match saved {
        Some(d) if store.project(d.project_id).await?.is_some() => d,
        _ => create(store, pepper, &path).await?,
    };
    // Allow the origins a browser on this machine uses for this server.
    let port = addr.port();
    let mut origins = vec![
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ];
    if !addr.ip().is_loopback() && !addr.ip().is_unspecified() {
        origins.push(format!("http://{addr}"));
    }
    if let Some(project) = store.project(demo.project_id).await? {
        let mut widget = WidgetSettings::of(&project);
        if widget.allowed_origins != origins {
            widget.allowed_origins = origins;
            store
                .update_project(demo.project_id, &widget.patch_for(&project))
                .await?;
        }
    }
    Ok(demo)
}

async fn create(store: &Arc<dyn Store>, pepper: &[u8], path: &Path) -> anyhow::Result<Demo> {
    let now = model::now();
    let project = Project {
        id: ProjectId::new_v7(),
        name: "Demo".into(),
        // Owned by no admin: it is not listed in the Admin API.
        owner_id: AdminUserId::from_uuid(uuid::Uuid::nil()),
        plan: Plan::Free,
        status: ProjectStatus::Active,
        settings: json!({"widget": {
            "title": "Acme Support",
            "greeting": "Hi! 👋 Ask us anything about your order.",
            "accent_color": "#4f46e5",
        }}),
        created_at: now,
        updated_at: now,
    };
    store.create_project(&project).await?;
    let make = |kind: KeyKind, name: &str, scopes: &[Scope]| {
        let k = keys::generate(kind, pepper);
        let record = ApiKeyRecord {
            id: k.id,
            project_id: project.id,
            name: name.into(),
            kind,
            prefix: k.prefix.clone(),
            scopes: scopes.iter().copied().collect(),
            secret_hash: k.secret_hash,
            last_used_at: None,
            expires_at: None,
            revoked_at: None,
            created_at: now,
        };
        (record, k.plaintext)
    };
    let (pk_record, pk) = make(KeyKind::Publishable, "demo widget", &[]);
    let (sk_record, sk) = make(
        KeyKind::Secret,
        "demo agent view",
        &[Scope::Read, Scope::Write],
    );
    store.create_api_key(&pk_record).await?;
    store.create_api_key(&sk_record).await?;
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

/// `/`, `/demo`, `/demo/agent`, `/demo/agent.js`.
pub fn router(demo: Demo) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/demo") }))
        .route("/demo", get(index))
        .route("/demo/agent", get(agent))
        .route("/demo/agent.js", get(agent_js))
        .with_state(Arc::new(demo))
}

async fn index(State(demo): State<Arc<Demo>>) -> Html<String> {
    let config = json!({
        "apiKey": demo.publishable_key,
        "settings": {"position": "bottom-right", "theme": "light"},
    });
    Html(INDEX_HTML.replace("{{LARACHAT_DEMO_WIDGET_CONFIG}}", &config.to_string()))
}

/// The agent view holds a secret key, so it is only served to this machine.
async fn agent(
    State(demo): State<Arc<Demo>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if !peer.ip().is_loopback() {
        return (
            StatusCode::FORBIDDEN,
            "the demo agent view is only served to this machine",
        )
            .into_response();
    }
    let config = json!({"secretKey": demo.secret_key, "projectId": demo.project_id});
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(AGENT_HTML.replace("{{LARACHAT_DEMO_AGENT_CONFIG}}", &config.to_string())),
    )
        .into_response()
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
