//! Operations endpoints on every process: `/live`, `/ready`, `/metrics`, `/openapi.json`, and
//! the HTTP metrics middleware.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
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

/// The process-wide Prometheus recorder (the `metrics` facade has one global recorder).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours renders nothing,
            // which is visible on /metrics rather than fatal.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
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

pub fn router(ops: Ops) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_route))
        .route("/openapi.json", get(openapi))
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
        ops.metrics.render(),
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
    metrics::counter!("larachat_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("larachat_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}
