//! axum glue: the per-IP limit as a middleware, and the `RateLimit-*` headers of successful
//! responses.
//!
//! [`ip_limit`] runs first on every API route: it resolves the client address once (kept as
//! [`ClientIp`] in the request's extensions), takes one request from that address's bucket,
//! and remembers the bucket's state as [`Applied`]. Inner layers that check more buckets (the
//! Client API's per-key, per-user and per-project limits) keep the tightest state in
//! [`Applied`] and write the headers themselves; otherwise this layer writes the address's.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use larachat_core::error::RateLimitInfo;
use larachat_core::http::{RATELIMIT_LIMIT, set_rate_limit_headers};

use crate::client_ip::{ClientIp, limit_key};
use crate::limiter::{Kind, Limits};

/// The state of the tightest bucket a request passed so far (request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied(pub RateLimitInfo);

/// The tighter of two bucket states: fewer requests left (then: longer until full).
pub fn tighter(a: Option<RateLimitInfo>, b: Option<RateLimitInfo>) -> Option<RateLimitInfo> {
    match (a, b) {
        (Some(a), Some(b)) => {
            if (b.remaining, std::cmp::Reverse(b.reset)) < (a.remaining, std::cmp::Reverse(a.reset))
            {
                Some(b)
            } else {
                Some(a)
            }
        }
        (a, None) => a,
        (None, b) => b,
    }
}

/// Writes `RateLimit-*` for `info` unless an inner layer already did.
pub fn add_headers(resp: &mut Response, info: Option<RateLimitInfo>) {
    if let Some(info) = info {
        if !resp.headers().contains_key(RATELIMIT_LIMIT) {
            set_rate_limit_headers(resp.headers_mut(), &info);
        }
    }
}

/// Middleware: one request from the client address's bucket (`limits.ip`). Requests without
/// a known peer (served without `ConnectInfo`, e.g. in unit tests) are not limited by address.
pub async fn ip_limit(State(limits): State<Arc<Limits>>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let Some(peer) = peer else {
        return next.run(req).await;
    };
    let ip = limits.client_ip(peer, req.headers());
    req.extensions_mut().insert(ClientIp(ip));
    let applied = match limits.check(Kind::Ip, &limit_key(ip), None) {
        Ok(info) => info,
        Err(e) => return e.into_response(),
    };
    if let Some(info) = applied {
        req.extensions_mut().insert(Applied(info));
    }
    let mut resp = next.run(req).await;
    add_headers(&mut resp, applied);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LimitsConfig, Per, Rule};
    use axum::Router;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt;

    fn app(limits: Arc<Limits>) -> Router {
        Router::new()
            .route("/x", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(limits, ip_limit))
    }

    fn req(peer: &str, xff: Option<&str>) -> Request {
        let mut r = Request::builder().uri("/x");
        if let Some(x) = xff {
            r = r.header("x-forwarded-for", x);
        }
        let mut r = r.body(Body::empty()).unwrap();
        r.extensions_mut()
            .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        r
    }

    #[tokio::test]
    async fn per_address_with_headers_and_429() {
        let (limits, _clock) = Limits::with_manual_clock(LimitsConfig {
            ip: Rule::new(1, Per::Minute, 3),
            trusted_proxies: vec!["127.0.0.1".to_owned().try_into().unwrap()],
            ..LimitsConfig::default()
        });
        let app = app(Arc::new(limits));
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let r = app
                .clone()
                .oneshot(req("192.0.2.1:5000", None))
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["ratelimit-limit"], "3");
            remaining.push(
                r.headers()["ratelimit-remaining"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        assert_eq!(remaining, ["2", "1", "0"]);
        let r = app
            .clone()
            .oneshot(req("192.0.2.1:5001", None))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "60");
        assert_eq!(r.headers()["ratelimit-remaining"], "0");
        // A client cannot escape by forging X-Forwarded-For…
        let r = app
            .clone()
            .oneshot(req("192.0.2.1:5002", Some("203.0.113.1")))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        // …but behind the trusted proxy, each client has its own bucket.
        for client in ["203.0.113.1", "203.0.113.2"] {
            let r = app
                .clone()
                .oneshot(req("127.0.0.1:6000", Some(client)))
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{client}");
        }
    }
}
