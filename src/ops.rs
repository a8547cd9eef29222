//! Operations endpoints on every process: `/live`, `/ready`, `/metrics`, `/openapi.json`, and
//! the HTTP metrics middleware. With `server.admin_listen` set, `/metrics` moves to the admin
//! listener ([`admin_router`]) and `/live`, `/ready` are served on both.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use larachat_broker::Bus;
use larachat_store::Store;

/// State of the operations routes.
#[derive(Clone)]
pub struct Ops {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub metrics: PrometheusHandle,
    pub openapi: Arc<String>,
}

/// The OpenAPI document of every HTTP endpoint of this process.
pub fn openapi_json() -> String {
    #[derive(OpenApi)]
    #[openapi(
        info(
            title = "Lara Chat",
            description = "Client API, Admin API and operations endpoints. Realtime v1 is specified in docs/protocol.md."
        ),
        paths(live, ready, metrics_route, openapi)
    )]
    struct OpsDoc;

    let mut doc = OpsDoc::openapi();
    doc.merge(larachat_gateway::ApiDoc::openapi());
    doc.merge(larachat_control_plane::AdminApiDoc::openapi());
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "Client API: a secret key sk_live_… or an end-user token. Admin API: an admin token from /api/admin/login.",
                ))
                .build(),
        ),
    );
    doc.to_pretty_json().unwrap_or_else(|_| "{}".into())
}

/// The operations routes of the public listener: `/metrics` only when there is no admin
/// listener.
pub fn router(ops: Ops, with_metrics: bool) -> Router {
    let router = Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/openapi.json", get(openapi));
    let router = if with_metrics {
        router.route("/metrics", get(metrics_route))
    } else {
        router
    };
    router.with_state(ops)
}

/// The admin listener's routes: `/metrics`, `/ready`, `/live`.
pub fn admin_router(ops: Ops) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_route))
        .with_state(ops)
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/live", tag = "operations", responses((status = 200, description = "alive")))]
async fn live() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Readiness: the store and the bus answer.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "ready"), (status = 503, description = "a dependency is down")))]
async fn ready(State(ops): State<Ops>) -> Response {
    let store = ops.store.ping().await.is_ok();
    let bus = ops.bus.ping().await.is_ok();
    let status = if store && bus {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (
        status,
        axum::Json(json!({"status": word(store && bus), "store": word(store), "bus": word(bus)})),
    )
        .into_response()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
async fn metrics_route(State(ops): State<Ops>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::render(&ops.metrics),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 JSON")))]
async fn openapi(State(ops): State<Ops>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        ops.openapi.as_str().to_owned(),
    )
        .into_response()
}

/// Counts requests and their latency by route pattern (bounded), method and status.
pub async fn http_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(crate::telemetry::HTTP_REQUESTS_TOTAL, "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!(crate::telemetry::HTTP_REQUEST_DURATION, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}
