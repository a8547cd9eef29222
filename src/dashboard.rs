//! The admin dashboard (`/dashboard`, docs/dashboard.md): a Vue 3 + Tailwind single-page app
//! whose built, content-hashed files (`dashboard/dist/`, committed and checked by
//! `scripts/dashboard-check.sh`) are embedded in the binary by `build.rs`, so a machine without
//! Node serves it. Mounted wherever the Admin API is (`serve`, `control-plane`): the page talks
//! to the Admin API, and its inbox to the Client API and realtime socket, all on its own origin.
//!
//! `index.html` is revalidated on every load (`no-cache`); `assets/*` carry a content hash in
//! their name and are cached for a year (`immutable`). Every answer carries a strict Content
//! Security Policy: scripts and styles from this origin only (no inline script or style
//! element), connections (`fetch`, the `ws(s)://` socket) to this origin only, no framing.

use axum::Router;
use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

mod files {
    include!(concat!(env!("OUT_DIR"), "/dashboard_files.rs"));
}

/// The page's Content Security Policy. `'self'` in `connect-src` covers the same origin's
/// `ws:`/`wss:` socket (CSP Level 3).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The dashboard's routes.
pub fn router() -> Router {
    Router::new()
        .route(
            "/dashboard",
            get(|| async { Redirect::permanent("/dashboard/") }),
        )
        .route("/dashboard/", get(index))
        .route("/dashboard/index.html", get(index))
        .route("/dashboard/assets/{file}", get(asset))
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

async fn respond(path: &str, cache: &'static str) -> Response {
    let Some(body) = file(path) else {
        return larachat_core::http::not_found_fallback()
            .await
            .into_response();
    };
    (
        [
            (header::CONTENT_TYPE, content_type(path)),
            (header::CACHE_CONTROL, cache),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    respond("index.html", "no-cache").await
}

async fn asset(Path(name): Path<String>) -> Response {
    respond(&format!("assets/{name}"), IMMUTABLE).await
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
}
