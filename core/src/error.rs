//! The client-facing error catalog.
//!
//! One table maps every failure a client can see to a stable string code, an HTTP status, a
//! WebSocket close code and whether retrying can help. HTTP handlers, the realtime socket and
//! (later) QUIC all convert through it, so the same failure looks the same on every transport.
//!
//! Close codes: `4000–4099` mean "do not reconnect without changing something" (credentials,
//! the request), `4100–4199` mean "reconnect with back-off".

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A stable error code. The string form (`as_str`) is part of the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body or frame is not valid JSON / MessagePack, or has the wrong shape.
    InvalidPayload,
    /// The payload parsed but a field breaks a rule (length, format, range).
    ValidationFailed,
    /// No valid credential was presented (missing, malformed, forged, revoked, expired).
    Unauthorized,
    /// The credential is valid but may not do this (scope, membership).
    Forbidden,
    /// The resource does not exist in the caller's project (also for other projects' ids).
    NotFound,
    /// The resource already exists (unique email, identifier).
    Conflict,
    /// The body or frame is larger than allowed.
    PayloadTooLarge,
    /// Too many requests for the caller's budget.
    RateLimited,
    /// The realtime socket did not authenticate within the deadline.
    AuthTimeout,
    /// A realtime frame arrived that the protocol does not allow at this point.
    ProtocolViolation,
    /// The connection could not drain its outbound queue fast enough.
    SlowConsumer,
    /// The server is shutting down; connect again (elsewhere).
    ShuttingDown,
    /// The project is suspended or cancelled.
    ProjectSuspended,
    /// A dependency (store, bus) is unavailable; try again.
    Unavailable,
    /// An unexpected server error. Details are logged, never shown.
    Internal,
    /// The HTTP method is not allowed on this path.
    MethodNotAllowed,
    /// The request's content type is not supported.
    UnsupportedMediaType,
    /// The request (its body, or the work it asked for) was not complete within the server's
    /// request timeout.
    RequestTimeout,
    /// The change would go past a limit of the project's plan (monthly active end users,
    /// messages per month, projects per owner). The message names the limit and when it
    /// resets. Not retryable: the same request fails until the reset or a plan upgrade.
    QuotaExceeded,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 19] = [
        Self::InvalidPayload,
        Self::ValidationFailed,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::Conflict,
        Self::PayloadTooLarge,
        Self::RateLimited,
        Self::AuthTimeout,
        Self::ProtocolViolation,
        Self::SlowConsumer,
        Self::ShuttingDown,
        Self::ProjectSuspended,
        Self::Unavailable,
        Self::Internal,
        Self::MethodNotAllowed,
        Self::UnsupportedMediaType,
        Self::RequestTimeout,
        Self::QuotaExceeded,
    ];

    /// The stable string code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidPayload => "invalid_payload",
            Self::ValidationFailed => "validation_failed",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RateLimited => "rate_limited",
            Self::AuthTimeout => "auth_timeout",
            Self::ProtocolViolation => "protocol_violation",
            Self::SlowConsumer => "slow_consumer",
            Self::ShuttingDown => "shutting_down",
            Self::ProjectSuspended => "project_suspended",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RequestTimeout => "request_timeout",
            Self::QuotaExceeded => "quota_exceeded",
        }
    }

    /// The HTTP status for this code.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::InvalidPayload => 400,
            Self::ValidationFailed => 422,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::RateLimited => 429,
            Self::AuthTimeout => 408,
            Self::ProtocolViolation => 400,
            Self::SlowConsumer => 503,
            Self::ShuttingDown => 503,
            Self::ProjectSuspended => 403,
            Self::Unavailable => 503,
            Self::Internal => 500,
            Self::MethodNotAllowed => 405,
            Self::UnsupportedMediaType => 415,
            Self::RequestTimeout => 408,
            // 403, not 429: a monthly quota does not clear by backing off for seconds, and
            // clients (and proxies) retry 429s automatically; Stripe and GitHub likewise keep
            // 429 for short-window rate limits.
            Self::QuotaExceeded => 403,
        }
    }

    /// The WebSocket close code used when this error ends a realtime connection.
    pub const fn close_code(self) -> u16 {
        match self {
            Self::InvalidPayload => 4000,
            Self::ValidationFailed => 4000,
            Self::ProtocolViolation => 4002,
            Self::Unauthorized => 4001,
            Self::Forbidden => 4003,
            Self::NotFound => 4004,
            Self::AuthTimeout => 4008,
            Self::PayloadTooLarge => 4009,
            Self::Conflict => 4000,
            Self::MethodNotAllowed => 4000,
            Self::UnsupportedMediaType => 4000,
            Self::ProjectSuspended => 4030,
            Self::SlowConsumer => 4100,
            Self::ShuttingDown => 4101,
            Self::Unavailable => 4102,
            Self::Internal => 4103,
            Self::RateLimited => 4129,
            Self::RequestTimeout => 4108,
            Self::QuotaExceeded => 4031,
        }
    }

    /// Whether the same request may succeed if retried later, unchanged.
    pub const fn retryable(self) -> bool {
        matches!(
            self,
            Self::RateLimited
                | Self::RequestTimeout
                | Self::SlowConsumer
                | Self::ShuttingDown
                | Self::Unavailable
                | Self::Internal
        )
    }

    /// Seconds an HTTP client should wait before retrying (`Retry-After`), for the codes that
    /// mean "the server cannot serve this right now": a dependency outage or a shutdown. `None`
    /// for the others (a rate limit says its own wait).
    pub const fn retry_after_secs(self) -> Option<u32> {
        match self {
            Self::Unavailable | Self::ShuttingDown => Some(1),
            _ => None,
        }
    }

    /// Whether a client should reconnect after a close with this code.
    pub const fn close_means_reconnect(close_code: u16) -> bool {
        close_code >= 4100 && close_code <= 4199 || close_code == 1001 || close_code == 1006
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as a client sees it: a catalog code and a human-readable message that never
/// contains internals (no SQL, no stack, no other tenant's data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
    /// For `rate_limited`: the bucket that refused and when to retry. HTTP renders it as
    /// `Retry-After` and `RateLimit-*` headers, the realtime socket as `retry_after_ms`.
    pub rate_limit: Option<Box<RateLimitInfo>>,
}

/// The state of the rate-limit bucket that decided a request (IETF `RateLimit-*` fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// Requests the bucket holds when full (`RateLimit-Limit`).
    pub limit: u32,
    /// Requests left right now (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Time until the bucket is full again (`RateLimit-Reset`, in seconds rounded up).
    pub reset: Duration,
    /// Time until the next request can pass (`Retry-After`); zero when this one passed.
    pub retry_after: Duration,
}

impl RateLimitInfo {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after).max(1)
    }

    /// `RateLimit-Reset` in whole seconds, rounded up.
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset)
    }

    /// The retry hint of the realtime `error` frame, in milliseconds (at least 1).
    pub fn retry_after_ms(&self) -> u64 {
        u64::try_from(self.retry_after.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
            rate_limit: None,
        }
    }

    /// `rate_limited`, with the state of the bucket that refused.
    pub fn rate_limited(message: impl Into<Cow<'static, str>>, info: RateLimitInfo) -> Self {
        Self {
            code: ErrorCode::RateLimited,
            message: message.into(),
            rate_limit: Some(Box::new(info)),
        }
    }
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidPayload, message)
    }
    pub fn validation(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::ValidationFailed, message)
    }
    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    /// The one "not found" answer, identical for missing and foreign resources.
    pub fn not_found(what: &'static str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }
    pub fn conflict(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error")
    }
    pub fn unavailable() -> Self {
        Self::new(ErrorCode::Unavailable, "service temporarily unavailable")
    }

    /// The JSON body used on HTTP: `{"error":{"code","message","retryable"}}`.
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.to_string(),
                retryable: self.code.retryable(),
            },
        }
    }
}

/// The HTTP error envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inner part of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
    }

    #[test]
    fn close_codes_follow_the_reconnect_ranges() {
        for code in ErrorCode::ALL {
            let close = code.close_code();
            assert!((4000..4200).contains(&close), "{code} -> {close}");
            assert_eq!(
                ErrorCode::close_means_reconnect(close),
                code.retryable(),
                "{code}: reconnect range must agree with retryable"
            );
        }
    }

    #[test]
    fn http_statuses_are_errors() {
        for code in ErrorCode::ALL {
            assert!((400..600).contains(&code.http_status()));
        }
    }
}
