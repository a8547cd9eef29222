//! HTTP glue shared by the gateway and the control plane (feature `axum`).
//!
//! Errors are converted at the edge: handlers return [`ApiError`], which renders as
//! `{"error":{"code","message","retryable"}}` with the catalog's status (and, for
//! `rate_limited`, `Retry-After` and `RateLimit-*` headers). The extractors below replace
//! axum's defaults so that malformed JSON, wrong types, bad ids and oversize bodies all come
//! back in that same shape.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode, RateLimitInfo};

/// `RateLimit-Limit`: requests the bucket holds when full.
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`: requests left now.
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`: seconds until the bucket is full again.
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(self.to_body())).into_response();
        if let Some(info) = &self.rate_limit {
            let h = resp.headers_mut();
            set_rate_limit_headers(h, info);
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(info.retry_after_secs()),
            );
        } else if let Some(secs) = self.code.retry_after_secs() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Writes the IETF `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` headers
/// (draft-ietf-httpapi-ratelimit-headers, delta-seconds form).
pub fn set_rate_limit_headers(h: &mut HeaderMap, info: &RateLimitInfo) {
    h.insert(RATELIMIT_LIMIT, HeaderValue::from(info.limit));
    h.insert(RATELIMIT_REMAINING, HeaderValue::from(info.remaining));
    h.insert(RATELIMIT_RESET, HeaderValue::from(info.reset_secs()));
}

/// `Json<T>` for request bodies that are JSON objects, with catalog rejections.
///
/// Stricter than axum's `Json`: the body must be an object (`[…]`, strings and numbers are
/// refused even where serde's derives would accept a sequence for a struct), trailing
/// characters are refused, and a wrong field is named by its path (`sender.type: unknown
/// variant …`), through `serde_path_to_error`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "expected Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(bytes_rejection)?;
        parse_object(&bytes).map(Self)
    }
}

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Parses a request body that must be one JSON object.
pub fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => return Err(ApiError::invalid("the body is empty; send a JSON object")),
        Some(_) => return Err(ApiError::invalid("the body must be a JSON object")),
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let detail = strip_position(&inner.to_string());
        match inner.classify() {
            serde_json::error::Category::Data if path != "." => {
                ApiError::invalid(format!("invalid body: {path}: {detail}"))
            }
            serde_json::error::Category::Data => {
                ApiError::invalid(format!("invalid body: {detail}"))
            }
            _ => ApiError::invalid(format!("malformed JSON: {detail}")),
        }
    })?;
    de.end()
        .map_err(|_| ApiError::invalid("malformed JSON: trailing characters after the object"))?;
    Ok(value)
}

/// serde_json appends " at line 1 column 17"; the path says more and the position is noise.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// `application/json` or `application/<something>+json`, parameters ignored.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn bytes_rejection(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(ErrorCode::PayloadTooLarge, "request body is too large")
    } else {
        ApiError::invalid("could not read request body")
    }
}

/// `Path<T>` whose rejections are catalog errors (`invalid_payload`, naming the bad segment).
#[derive(Debug, Clone, Copy)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => Err(ApiError::invalid(
                format!("invalid path parameter: {}", e.body_text()),
            )),
            Err(other) => Err(ApiError::invalid(other.body_text())),
        }
    }
}

/// `Query<T>` whose rejections are catalog errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(ApiError::invalid(
                format!("invalid query string: {}", e.body_text()),
            )),
            Err(other) => Err(ApiError::invalid(other.body_text())),
        }
    }
}

/// Fallback handler: unknown routes get a catalog 404.
pub async fn not_found_fallback() -> ApiError {
    ApiError::not_found("route")
}

/// Handler for 405s produced by the router.
pub fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this path",
    )
}

/// For `#[serde(default, deserialize_with = "double_option")]` on an `Option<Option<T>>`
/// field of a PATCH body: distinguishes an absent field (`None`: leave it) from an explicit
/// `null` (`Some(None)`: clear it).
pub fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_say_when_to_retry_and_refusals_do_not() {
        for e in [
            ApiError::unavailable(),
            ApiError::new(ErrorCode::ShuttingDown, "bye"),
        ] {
            let r = e.into_response();
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        }
        let r = ApiError::unauthorized("revoked").into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Patch {
        name: Option<String>,
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        count: u32,
    }

    #[test]
    fn only_objects_are_bodies() {
        let ok: Patch = parse_object(br#" {"name":"x"} "#).unwrap();
        assert_eq!(ok.name.as_deref(), Some("x"));
        // serde's derive would accept this array for the struct; the edge does not.
        for bad in [
            &br#"["renamed",null]"#[..],
            b"\"x\"",
            b"42",
            b"null",
            b"",
            b"  ",
        ] {
            let e = parse_object::<Patch>(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidPayload, "{bad:?}");
        }
        let e = parse_object::<Patch>(br#"{"name":"x"} {}"#).unwrap_err();
        assert!(e.message.contains("trailing"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_object::<Patch>(br#"{"inner":{"count":"three"}}"#).unwrap_err();
        assert!(e.message.contains("inner.count"), "{e}");
        assert!(!e.message.contains("line 1"), "{e}");
        let e = parse_object::<Patch>(br#"{"nmae":"x"}"#).unwrap_err();
        assert!(e.message.contains("nmae"), "{e}");
        let e = parse_object::<Patch>(br#"{"name":"#).unwrap_err();
        assert!(e.message.starts_with("malformed JSON"), "{e}");
    }

    #[test]
    fn rate_limited_errors_carry_their_headers() {
        let e = ApiError::rate_limited(
            "slow down",
            RateLimitInfo {
                limit: 10,
                remaining: 0,
                reset: std::time::Duration::from_millis(2500),
                retry_after: std::time::Duration::from_millis(200),
            },
        );
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = resp.headers();
        assert_eq!(h[header::RETRY_AFTER], "1");
        assert_eq!(h[RATELIMIT_LIMIT], "10");
        assert_eq!(h[RATELIMIT_REMAINING], "0");
        assert_eq!(h[RATELIMIT_RESET], "3");
    }
}
