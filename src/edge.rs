//! The HTTP layers every response passes through, on every listener: request ids, tracing
//! spans, metrics, `Connection: close` and `Retry-After` where clients need them, compression,
//! the request timeout, and (for the application routes, not `/live` and `/ready`) the
//! in-flight limit. Connection-level limits are in [`crate::server`].
//!
//! Outermost first: panic → catalog 500; `x-request-id` (a sane client value is kept, anything
//! else replaced by a fresh UUID) and echoed on the response; the request's span (method,
//! path, request id); HTTP metrics; [`hygiene`]; compression (gzip, brotli; never for a
//! `101 Switching Protocols`); [`request_timeout`].

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::error_handling::HandleErrorLayer;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, Predicate};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use larachat_core::{ApiError, ErrorCode};

use crate::telemetry;

/// The request id header (set on every request, echoed on every response).
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest client-supplied request id kept.
const MAX_REQUEST_ID: usize = 128;

/// Settings of the HTTP layers.
#[derive(Debug, Clone)]
pub struct Edge {
    /// Body reading plus handler, per request.
    pub request_timeout: Duration,
    /// Application requests in progress at once; more are answered 503 at once.
    pub max_in_flight: usize,
    /// The largest body any route accepts: a `Content-Length` above it is answered 413 before
    /// anything is read (routes enforce their own, smaller limits while reading).
    pub max_body_bytes: usize,
}

/// Wraps the application routes (everything but `/live`, `/ready`, `/metrics`) in the
/// in-flight limit: a request that finds `max_in_flight` others in progress is answered
/// `503 unavailable` with `Retry-After: 1` at once (tower's load-shed over a global
/// concurrency limit), instead of queueing.
pub fn limit_in_flight(router: Router, max_in_flight: usize) -> Router {
    let slots = Arc::new(Semaphore::new(max_in_flight));
    router.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                metrics::counter!(telemetry::HTTP_REQUESTS_SHED_TOTAL).increment(1);
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the server is busy; try again in a moment",
                )
            }))
            .layer(LoadShedLayer::new())
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(slots)),
    )
}

/// Wraps a listener's whole router in the layers every response passes through.
pub fn layers(router: Router, edge: &Edge) -> Router {
    let timeout = edge.request_timeout;
    let max_body = edge.max_body_bytes;
    router
        .layer(axum::middleware::from_fn(move |req, next| {
            request_timeout(timeout, req, next)
        }))
        .layer(CompressionLayer::new().compress_when(DefaultPredicate::new().and(not_upgrade)))
        .layer(axum::middleware::from_fn(move |req, next| {
            hygiene(max_body, req, next)
        }))
        .layer(axum::middleware::from_fn(crate::ops::http_metrics))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req
                .headers()
                .get(&X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            // The path only: query strings can carry keys.
            tracing::info_span!("http", method = %req.method(), path = req.uri().path(), request_id = id)
        }))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(X_REQUEST_ID.clone(), MakeRequestUuid))
        .layer(axum::middleware::map_request(keep_sane_request_id))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal().into_response()
        }))
}

/// A client's `x-request-id` is kept only if it is 1–128 characters of `[A-Za-z0-9._:-]`;
/// anything else (spaces, control characters, huge values) is dropped so that a fresh id
/// replaces it and logs stay clean.
async fn keep_sane_request_id(mut req: Request) -> Request {
    let insane = req
        .headers()
        .get(&X_REQUEST_ID)
        .is_some_and(|v| !sane_request_id(v.as_bytes()));
    if insane {
        req.headers_mut().remove(&X_REQUEST_ID);
    }
    req
}

fn sane_request_id(v: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Compress anything `DefaultPredicate` would, except the WebSocket handshake.
fn not_upgrade(
    status: StatusCode,
    _: axum::http::Version,
    _: &HeaderMap,
    _: &axum::http::Extensions,
) -> bool {
    status != StatusCode::SWITCHING_PROTOCOLS
}

/// What clients need to be told about the connection:
/// - `Connection: close` when the response goes out before the request body was read to its
///   end (an early 401, 413, 408…): hyper then closes the connection rather than read an
///   unknown amount of body, and a client that is not told would send its next request into a
///   closing socket;
/// - `Retry-After: 1` on a 503 that has none, so clients back off by the same rule.
///
/// A `Content-Length` over `max_body` is answered 413 at once: waiting for a body that will be
/// refused anyway would hold the connection until the request timeout.
async fn hygiene(max_body: usize, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (parts, body) = req.into_parts();
    let tracked = Tracked::new(body);
    let finished = tracked.finished.clone();
    let mut resp = if declared.is_some_and(|n| n > max_body as u64) {
        ApiError::new(ErrorCode::PayloadTooLarge, "request body is too large").into_response()
    } else {
        next.run(Request::from_parts(parts, Body::new(tracked)))
            .await
    };
    let status = resp.status();
    let headers = resp.headers_mut();
    if status != StatusCode::SWITCHING_PROTOCOLS && !finished.load(Ordering::Acquire) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE && !headers.contains_key(header::RETRY_AFTER) {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// Body reading and the handler must finish within `timeout`, else `408 request_timeout`
/// (and, the body being unread, `Connection: close`). A WebSocket handshake answers at once;
/// the socket that follows is not a request and is not timed here.
async fn request_timeout(timeout: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            metrics::counter!(telemetry::HTTP_REQUEST_TIMEOUTS_TOTAL).increment(1);
            ApiError::new(
                ErrorCode::RequestTimeout,
                "the request was not received and answered in time",
            )
            .into_response()
        }
    }
}

/// A request body that records whether it was read to its end.
struct Tracked {
    inner: Body,
    finished: Arc<AtomicBool>,
}

impl Tracked {
    fn new(inner: Body) -> Self {
        let finished = Arc::new(AtomicBool::new(inner.is_end_stream()));
        Self { inner, finished }
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finished.store(true, Ordering::Release),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => {
                self.finished.store(true, Ordering::Release)
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        assert!(sane_request_id(b"abc-123"));
        assert!(sane_request_id(
            b"4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7"
        ));
        assert!(!sane_request_id(b""));
        assert!(!sane_request_id(b"has space"));
        assert!(!sane_request_id(b"new\nline"));
        assert!(!sane_request_id(&[b'a'; MAX_REQUEST_ID + 1]));
    }
}
