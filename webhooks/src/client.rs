//! The delivery client: one signed POST to one endpoint, SSRF-safe.
//!
//! Built on `reqwest` with a custom [`reqwest::dns::Resolve`] rather than `hyper-util` with a
//! hand-written connector. The resolver is the only place reqwest gets addresses from for a
//! domain, and it hands reqwest exactly the addresses it checked, so the connection is made to
//! a checked address and a second DNS answer (rebinding) never reaches the connector; reqwest
//! keeps what we would otherwise rewrite (TLS with SNI and certificate checks on the *name*,
//! pooling, timeouts, HTTP/1.1 framing). IP-literal hosts bypass a resolver, so they are
//! checked here before the request is sent. Proxies from the environment are turned off (a
//! proxy would resolve the name itself) and redirects are never followed (a 3xx is a failed
//! attempt), so nothing but the checked address is ever contacted.
//!
//! The whole attempt (connect, TLS, request, response head and the capped body) has one
//! timeout; the response body is read up to a cap and kept as text for the deliveries log.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};

use crate::retry::parse_retry_after;
use crate::signing::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, Secret, signature_header};
use crate::ssrf::{TargetError, TargetPolicy, TargetUrl, check_ip};

/// Name resolution, injectable so tests can make a name resolve to any address.
#[async_trait::async_trait]
pub trait Lookup: Send + Sync + 'static {
    async fn lookup(&self, host: &str) -> std::io::Result<Vec<IpAddr>>;
}

/// The system resolver (`getaddrinfo` through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

#[async_trait::async_trait]
impl Lookup for SystemLookup {
    async fn lookup(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        Ok(tokio::net::lookup_host((host, 0))
            .await?
            .map(|a| a.ip())
            .collect())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Resolves a name and refuses it unless EVERY address passes [`check_ip`].
struct CheckedResolver {
    lookup: Arc<dyn Lookup>,
    policy: TargetPolicy,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let lookup = self.lookup.clone();
        let policy = self.policy;
        Box::pin(async move {
            let ips = lookup.lookup(name.as_str()).await?;
            if ips.is_empty() {
                return Err(Box::new(TargetError::Unresolved) as BoxError);
            }
            for ip in &ips {
                check_ip(*ip, policy).map_err(|e| Box::new(e) as BoxError)?;
            }
            let addrs: Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The client's settings.
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    pub policy: TargetPolicy,
    /// Total time of one attempt.
    pub timeout: Duration,
    /// Bytes of the response body kept.
    pub body_cap: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            policy: TargetPolicy::default(),
            timeout: Duration::from_secs(10),
            body_cap: 64 * 1024,
        }
    }
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptOutcome {
    /// The response status, if a response came.
    pub status: Option<u16>,
    /// The response body, up to the cap (lossy UTF-8).
    pub body: String,
    /// Time from the start of the attempt to the end of the (capped) body.
    pub duration: Duration,
    /// `Retry-After` of the response, as a delay.
    pub retry_after: Option<Duration>,
    /// Why no response came (or the body could not be read): `refused_target: …`,
    /// `timeout`, `connect: …`, `request: …`.
    pub error: Option<String>,
    /// Whether the target was refused by the SSRF rules (no connection was made).
    pub refused: bool,
}

/// One message to deliver.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// `webhook-id`: the event's stable id.
    pub id: &'a str,
    /// `webhook-timestamp` of this attempt.
    pub timestamp: DateTime<Utc>,
    pub body: &'a [u8],
}

/// The delivery client (cheap to clone; one connection pool).
#[derive(Clone)]
pub struct DeliveryClient {
    http: reqwest::Client,
    settings: ClientSettings,
}

impl DeliveryClient {
    pub fn new(settings: ClientSettings) -> Result<Self, reqwest::Error> {
        Self::with_lookup(settings, Arc::new(SystemLookup))
    }

    pub fn with_lookup(
        settings: ClientSettings,
        lookup: Arc<dyn Lookup>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(CheckedResolver {
                lookup,
                policy: settings.policy,
            }))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .pool_max_idle_per_host(4)
            .build()?;
        Ok(Self { http, settings })
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// POSTs `msg` to `url`, signed with every secret of `secrets`.
    pub async fn deliver(
        &self,
        url: &TargetUrl,
        secrets: &[Secret],
        msg: Outgoing<'_>,
    ) -> AttemptOutcome {
        let started = Instant::now();
        let refused = |e: TargetError| AttemptOutcome {
            status: None,
            body: String::new(),
            duration: started.elapsed(),
            retry_after: None,
            error: Some(format!("refused_target: {e}")),
            refused: true,
        };
        // The scheme may have become unacceptable (the flag turned off since registration).
        if let Err(e) = TargetUrl::parse(url.as_str(), self.settings.policy) {
            return refused(e);
        }
        if let Some(ip) = url.ip_literal()
            && let Err(e) = check_ip(ip, self.settings.policy)
        {
            return refused(e);
        }
        let ts = msg.timestamp.timestamp();
        let signature = signature_header(secrets, msg.id, ts, msg.body);
        let request = self
            .http
            .post(url.as_url().clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, HeaderValue::from_static("larachat-webhooks/1"))
            .header(HEADER_ID, msg.id)
            .header(HEADER_TIMESTAMP, ts.to_string())
            .header(HEADER_SIGNATURE, signature)
            .body(msg.body.to_vec());
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                if let Some(t) = find_target_error(&e) {
                    return refused(t);
                }
                return AttemptOutcome {
                    status: None,
                    body: String::new(),
                    duration: started.elapsed(),
                    retry_after: None,
                    error: Some(describe(&e)),
                    refused: false,
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, larachat_core::model::now()));
        let (body, error) = read_capped(response, self.settings.body_cap).await;
        AttemptOutcome {
            status: Some(status),
            body,
            duration: started.elapsed(),
            retry_after,
            error,
            refused: false,
        }
    }
}

/// Reads at most `cap` bytes of the body, then drops the rest (and the connection with it).
async fn read_capped(mut response: reqwest::Response, cap: usize) -> (String, Option<String>) {
    let mut buf = Vec::new();
    let mut error = None;
    while buf.len() < cap {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(cap - buf.len());
                buf.extend_from_slice(&chunk[..take]);
            }
            Ok(None) => break,
            Err(e) => {
                error = Some(describe(&e));
                break;
            }
        }
    }
    (String::from_utf8_lossy(&buf).into_owned(), error)
}

fn find_target_error(e: &reqwest::Error) -> Option<TargetError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<TargetError>() {
            return Some(t.clone());
        }
        source = s.source();
    }
    None
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        let mut msg = String::from("connect");
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            msg = format!("connect: {s}");
            source = s.source();
        }
        msg
    } else {
        format!("request: {e}")
    }
}
