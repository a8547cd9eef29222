//! The admin dashboard (`/dashboard`, docs/dashboard.md): a Vue 3 + Tailwind single-page app
//! whose built, content-hashed files (`dashboard/dist/`, committed and checked by
//! `scripts/dashboard-check.sh`) are embedded in the binary by `build.rs`, so a machine without
//! Node serves it. Mounted wherever the Admin API is (`serve`, `control-plane`): the page talks
//! to the Admin API on its own origin, and its inbox to the Client API and realtime socket on
//! its own origin too, or, when `dashboard.gateway_url` is set (distributed mode, where the
//! gateways have another origin), on that origin: `/dashboard/config.json` tells the page, and
//! the CSP's `connect-src` allows exactly that origin (http(s) and ws(s)) besides its own.
//!
//! `index.html` is revalidated on every load (`no-cache`); `assets/*` carry a content hash in
//! their name and are cached for a year (`immutable`). Every answer carries a strict Content
//! Security Policy: scripts and styles from this origin only (no inline script or style
//! element), connections (`fetch`, the `ws(s)://` socket) to this origin and the configured
//! gateway origin only, no framing.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use larachat_core::origin::Origin;

mod files {
    include!(concat!(env!("OUT_DIR"), "/dashboard_files.rs"));
}

/// The page's Content Security Policy with `connect-src 'self'`. `'self'` covers the same
/// origin's `ws:`/`wss:` socket (CSP Level 3).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// The policy when the inbox talks to `gateway` (another origin): `connect-src` gains exactly
/// that origin and its WebSocket form (`https://h` → `wss://h`, `http://h` → `ws://h`).
pub fn csp_for(gateway: Option<&Origin>) -> String {
    match gateway {
        None => CSP.to_owned(),
        Some(g) => {
            let http = g.as_str();
            let ws = match http.strip_prefix("https://") {
                Some(rest) => format!("wss://{rest}"),
                None => format!("ws://{}", http.trim_start_matches("http://")),
            };
            CSP.replace(
                "connect-src 'self';",
                &format!("connect-src 'self' {http} {ws};"),
            )
        }
    }
}

/// What every answer of the dashboard needs: its policy and what the page is told.
struct Settings {
    csp: String,
    config_json: String,
}

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The dashboard's routes. `gateway`: the public origin of the Client API and realtime
/// socket when it is not the dashboard's own (`dashboard.gateway_url`).
pub fn router(gateway: Option<Origin>) -> Router {
    let settings = Arc::new(Settings {
        csp: csp_for(gateway.as_ref()),
        config_json: serde_json::json!({ "gateway_url": gateway.as_ref().map(Origin::as_str) })
            .to_string(),
    });
    Router::new()
        .route(
            "/dashboard",
            get(|| async { Redirect::permanent("/dashboard/") }),
        )
        .route("/dashboard/", get(index))
        .route("/dashboard/index.html", get(index))
        .route("/dashboard/config.json", get(config))
        .route("/dashboard/assets/{file}", get(asset))
        .with_state(settings)
}

fn file(path: &str) -> Option<&'static [u8]> {
    files::FILES
        .binary_search_by(|(p, _)| (*p).cmp(path))
        .ok()
        .map(|i| files::FILES[i].1)
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

async fn respond(settings: &Settings, path: &str, cache: &'static str) -> Response {
    let Some(body) = file(path) else {
        return larachat_core::http::not_found_fallback()
            .await
            .into_response();
    };
    with_headers(settings, content_type(path), cache, body)
}

fn with_headers(
    settings: &Settings,
    content_type: &'static str,
    cache: &'static str,
    body: impl IntoResponse,
) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        [(header::CONTENT_SECURITY_POLICY, settings.csp.clone())],
        body,
    )
        .into_response()
}

async fn index(State(settings): State<Arc<Settings>>) -> Response {
    respond(&settings, "index.html", "no-cache").await
}

/// What the page needs to know of this deployment: `{"gateway_url": null | "<origin>"}`.
async fn config(State(settings): State<Arc<Settings>>) -> Response {
    with_headers(
        &settings,
        "application/json",
        "no-cache",
        settings.config_json.clone(),
    )
}

async fn asset(State(settings): State<Arc<Settings>>, Path(name): Path<String>) -> Response {
    respond(&settings, &format!("assets/{name}"), IMMUTABLE).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_is_embedded_and_sorted() {
        let index = std::str::from_utf8(file("index.html").expect("index.html")).unwrap();
        assert!(files::FILES.windows(2).all(|w| w[0].0 < w[1].0));
        // Every asset the page names is embedded.
        for part in index.split("/dashboard/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(file(name).is_some(), "{name} is not embedded");
        }
        assert!(!index.contains("<script>"), "no inline script");
    }

    #[test]
    fn the_policy_allows_nothing_inline() {
        assert!(!CSP.contains("unsafe"));
        assert!(axum::http::HeaderValue::from_str(CSP).is_ok());
    }

    #[test]
    fn a_gateway_origin_is_added_to_connect_src_only() {
        assert_eq!(csp_for(None), CSP);
        let g = Origin::parse("https://API.chat.example.com:443").unwrap();
        let csp = csp_for(Some(&g));
        assert!(
            csp.contains(
                "connect-src 'self' https://api.chat.example.com wss://api.chat.example.com;"
            ),
            "{csp}"
        );
        assert_eq!(csp.matches("api.chat.example.com").count(), 2, "{csp}");
        let g = Origin::parse("http://127.0.0.1:8081").unwrap();
        assert!(
            csp_for(Some(&g))
                .contains("connect-src 'self' http://127.0.0.1:8081 ws://127.0.0.1:8081;")
        );
    }
}
