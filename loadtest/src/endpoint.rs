//! The server under load, whichever it is: how to get an identity (a Lara agent or end user, a
//! Centrifugo JWT), a room (a Lara conversation, a Centrifugo channel) and a subscribed
//! connection. Scenarios are written once against this.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::api::{Api, Target};
use crate::proto::{Encoding, Proto};
use crate::ws::{Conn, Dial};

/// The server under load.
// A run holds a handful of these: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Endpoint {
    Lara {
        target: Target,
        api: Api,
        /// Secret key (read + write) of the load test's project.
        key: String,
        encoding: Encoding,
    },
    Centrifugo {
        addr: SocketAddr,
        /// HMAC secret for connection JWTs (`client.token.hmac_secret_key`).
        secret: String,
    },
}

/// Someone who connects: a token, the agent name for Lara secret-key connections, and the
/// id under which a Lara conversation lists them as a member (end users only).
#[derive(Debug, Clone)]
pub struct Member {
    pub token: String,
    pub actor: Option<String>,
    pub member_id: Option<String>,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

/// An HS256 connection JWT for Centrifugo, valid for a day.
pub fn centrifugo_token(secret: &str, sub: &str) -> Result<String> {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
        + 86_400;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims { sub, exp },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("signing a Centrifugo token")
}

impl Endpoint {
    pub fn proto(&self) -> Proto {
        match self {
            Endpoint::Lara { encoding, .. } => Proto::Lara {
                encoding: *encoding,
            },
            Endpoint::Centrifugo { .. } => Proto::Centrifugo,
        }
    }

    /// The same Lara project and key on another server of its cluster (`target`); a
    /// Centrifugo endpoint is returned as it is.
    pub fn with_target(&self, target: Target) -> Endpoint {
        match self {
            Endpoint::Lara {
                api, key, encoding, ..
            } => Endpoint::Lara {
                api: api.clone(),
                key: key.clone(),
                encoding: *encoding,
                target,
            },
            other => other.clone(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            Endpoint::Lara { target, .. } => target.addr,
            Endpoint::Centrifugo { addr, .. } => *addr,
        }
    }

    pub fn dial(&self, source: Option<IpAddr>) -> Dial {
        Dial {
            addr: self.addr(),
            proto: self.proto(),
            source,
        }
    }

    /// An agent-like identity without any server call: Lara connects with the secret key as
    /// agent `name`; Centrifugo with a JWT for user `name`.
    pub fn agent(&self, name: &str) -> Result<Member> {
        Ok(match self {
            Endpoint::Lara { key, .. } => Member {
                token: key.clone(),
                actor: Some(name.to_owned()),
                member_id: None,
            },
            Endpoint::Centrifugo { secret, .. } => Member {
                token: centrifugo_token(secret, name)?,
                actor: None,
                member_id: None,
            },
        })
    }

    /// An end user: Lara creates one (`POST /api/v1/users`) and connects with its JWT;
    /// Centrifugo gets a JWT for user `name`.
    pub async fn user(&self, name: &str) -> Result<Member> {
        match self {
            Endpoint::Lara { api, key, .. } => {
                let (id, token) = api.create_user(key, name).await?;
                Ok(Member {
                    token,
                    actor: None,
                    member_id: Some(id),
                })
            }
            Endpoint::Centrifugo { .. } => self.agent(name),
        }
    }

    /// A room for `members`: a Lara conversation (created, with the end users among
    /// `members`); a Centrifugo channel `chat:<name>` in the namespace the tool configures.
    pub async fn room(&self, name: &str, members: &[&Member]) -> Result<String> {
        match self {
            Endpoint::Lara { api, key, .. } => {
                let ids: Vec<String> = members.iter().filter_map(|m| m.member_id.clone()).collect();
                api.create_conversation(key, &ids).await
            }
            Endpoint::Centrifugo { .. } => Ok(format!("chat:{name}")),
        }
    }

    /// Opens a connection as `m`, subscribed to `rooms`.
    pub async fn open(
        &self,
        m: &Member,
        rooms: &[String],
        source: Option<IpAddr>,
        limit: Duration,
    ) -> Result<Conn> {
        Conn::open(
            &self.dial(source),
            &m.token,
            m.actor.as_deref(),
            rooms,
            limit,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centrifugo_tokens_are_hs256_jwts_for_the_user() {
        let t = centrifugo_token("0123456789abcdef0123456789abcdef", "lt-7").unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.required_spec_claims = ["exp", "sub"].into_iter().map(String::from).collect();
        let d = jsonwebtoken::decode::<serde_json::Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            &v,
        )
        .unwrap();
        assert_eq!(d.claims["sub"], "lt-7");
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(
                &t,
                &jsonwebtoken::DecodingKey::from_secret(b"another secret, another signature"),
                &v,
            )
            .is_err()
        );
    }
}
