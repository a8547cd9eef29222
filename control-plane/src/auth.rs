//! Admin tokens and the [`AdminAuth`] extractor.
//!
//! Tokens are HS256 JWTs with `iss = "larachat"`, `aud = "larachat:admin"`, `sub` = the admin's
//! id, and `iat`/`exp` (both required). Verification pins the algorithm (no `alg: none`, no
//! algorithm confusion), checks audience, issuer and expiry with at most
//! [`LEEWAY_SECS`] of clock skew, refuses tokens issued in the future, and finally requires the
//! admin to still exist in the store. Every failure answers 401 `unauthorized` with a
//! `WWW-Authenticate: Bearer` challenge.

use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use larachat_core::model::AdminUser;
use larachat_core::{AdminUserId, ApiError, ErrorCode};

use crate::ControlPlane;
use crate::telemetry;

/// `aud` of admin tokens. Distinct from end-user tokens (whose audience is a project), so one
/// can never be replayed as the other.
pub const ADMIN_AUDIENCE: &str = "larachat:admin";
/// `iss` of every token Lara Chat signs.
pub const ISSUER: &str = "larachat";
/// Clock skew tolerated on `exp` and `iat`.
pub const LEEWAY_SECS: u64 = 5;
/// Longer `Authorization` values are refused without parsing.
const MAX_TOKEN_BYTES: usize = 4096;

const CHALLENGE: &str = "Bearer realm=\"larachat:admin\"";
const CHALLENGE_INVALID: &str = "Bearer realm=\"larachat:admin\", error=\"invalid_token\"";

/// A freshly issued admin token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// The authenticated admin of a request. Extracting it checks the bearer token and loads the
/// admin from the store.
#[derive(Debug, Clone)]
pub struct AdminAuth(pub AdminUser);

/// Why admin authentication failed, as data (the client sees only the catalog error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `Authorization: Bearer …` header, or an empty token.
    #[error("missing bearer token")]
    Missing,
    /// Not a JWT we signed for admins: bad shape, signature, algorithm, audience, issuer,
    /// missing claims, `iat` in the future, or a `sub` that is not an admin id.
    #[error("invalid token")]
    Invalid,
    /// Signed by us, but past its `exp`.
    #[error("token expired")]
    Expired,
}

/// The rejection of [`AdminAuth`]: a catalog error, with a `WWW-Authenticate` challenge when it
/// is a 401.
#[derive(Debug, Clone)]
pub struct AuthRejection {
    pub error: ApiError,
    invalid_token: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    aud: String,
    iss: String,
    iat: i64,
    exp: i64,
}

/// Keys and validation rules for admin tokens, derived once from the configured secret.
pub(crate) struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenKeys {
    pub(crate) fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[ADMIN_AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        validation.validate_exp = true;
        validation.leeway = LEEWAY_SECS;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub(crate) fn issue(
        &self,
        admin: AdminUserId,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<IssuedToken, ApiError> {
        let ttl = chrono::Duration::from_std(ttl).map_err(|_| ApiError::internal())?;
        // Whole seconds: JWT times are NumericDate seconds, and the reported expiry must match.
        let iat = now.timestamp();
        let expires_at = DateTime::from_timestamp(iat, 0).ok_or_else(ApiError::internal)? + ttl;
        let claims = Claims {
            sub: admin.to_string(),
            aud: ADMIN_AUDIENCE.to_owned(),
            iss: ISSUER.to_owned(),
            iat,
            exp: expires_at.timestamp(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| {
            tracing::error!(error = %e, "could not sign an admin token");
            ApiError::internal()
        })?;
        Ok(IssuedToken { token, expires_at })
    }

    /// Checks a token and returns the admin id it names. Does not touch the store.
    pub(crate) fn verify(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<AdminUserId, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Invalid);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        let leeway = i64::try_from(LEEWAY_SECS).unwrap_or(0);
        if data.claims.iat > now.timestamp() + leeway || data.claims.iat > data.claims.exp {
            return Err(TokenError::Invalid);
        }
        data.claims.sub.parse().map_err(|_| TokenError::Invalid)
    }
}

impl AuthRejection {
    fn token(e: TokenError) -> Self {
        let reason = match e {
            TokenError::Missing => "missing",
            TokenError::Invalid => "invalid",
            TokenError::Expired => "expired",
        };
        telemetry::auth_rejected(reason);
        Self {
            error: ApiError::unauthorized(e.to_string()),
            invalid_token: e != TokenError::Missing,
        }
    }
}

impl<S> FromRequestParts<S> for AdminAuth
where
    ControlPlane: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let cp = ControlPlane::from_ref(state);
        let token = bearer_token(parts).map_err(AuthRejection::token)?;
        let id = cp
            .tokens()
            .verify(token, larachat_core::model::now())
            .map_err(AuthRejection::token)?;
        match cp.store().admin_user(id).await {
            Ok(Some(admin)) => Ok(AdminAuth(admin)),
            Ok(None) => {
                // A valid signature for an admin that was removed: the token is dead.
                telemetry::auth_rejected("unknown_admin");
                Err(AuthRejection {
                    error: ApiError::unauthorized(TokenError::Invalid.to_string()),
                    invalid_token: true,
                })
            }
            Err(e) => {
                tracing::error!(error = %e, "store failed while authenticating an admin");
                Err(AuthRejection {
                    error: e.into(),
                    invalid_token: false,
                })
            }
        }
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        let challenge =
            (self.error.code == ErrorCode::Unauthorized).then_some(if self.invalid_token {
                CHALLENGE_INVALID
            } else {
                CHALLENGE
            });
        let mut response = self.error.into_response();
        if let Some(c) = challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        response
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(parts: &Parts) -> Result<&str, TokenError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Err(TokenError::Missing);
    };
    let value = value.to_str().map_err(|_| TokenError::Invalid)?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::Invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Invalid);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn issued_tokens_verify_and_name_the_admin() {
        let keys = TokenKeys::new(SECRET);
        let admin = AdminUserId::new_v7();
        let now = larachat_core::model::now();
        let t = keys
            .issue(admin, now, std::time::Duration::from_secs(60))
            .unwrap();
        assert_eq!(keys.verify(&t.token, now), Ok(admin));
        assert_eq!(t.expires_at.timestamp(), now.timestamp() + 60);
    }

    #[test]
    fn tokens_from_the_future_are_refused() {
        let keys = TokenKeys::new(SECRET);
        let now = larachat_core::model::now();
        let later = now + chrono::Duration::seconds(60);
        let t = keys
            .issue(
                AdminUserId::new_v7(),
                later,
                std::time::Duration::from_secs(600),
            )
            .unwrap();
        assert_eq!(keys.verify(&t.token, now), Err(TokenError::Invalid));
    }

    #[test]
    fn another_secret_does_not_verify() {
        let now = larachat_core::model::now();
        let t = TokenKeys::new(SECRET)
            .issue(
                AdminUserId::new_v7(),
                now,
                std::time::Duration::from_secs(60),
            )
            .unwrap();
        let other = TokenKeys::new(b"another secret of at least 32 bytes!!");
        assert_eq!(other.verify(&t.token, now), Err(TokenError::Invalid));
        assert_eq!(other.verify("", now), Err(TokenError::Missing));
    }
}
