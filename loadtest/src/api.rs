//! The HTTP side: Admin API (project and key) and Client API (end users, conversations).
//! In distributed mode these are different processes (control plane and gateways), so each
//! [`Api`] talks to one [`Target`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::{Client, Method, Url};
use serde_json::{Value, json};

/// A loopback server's base URL, checked once.
#[derive(Debug, Clone)]
pub struct Target {
    pub base: Url,
    pub addr: SocketAddr,
}

impl Target {
    /// Accepts only `http://` URLs on a loopback address: this tool never loads anything else.
    pub fn parse(url: &str) -> Result<Self> {
        Self::parse_flag("--url", url)
    }

    /// [`Target::parse`] for the value of command-line flag `flag` (named in errors).
    pub fn parse_flag(flag: &str, url: &str) -> Result<Self> {
        let base = Url::parse(url).with_context(|| format!("invalid {flag} {url:?}"))?;
        if base.scheme() != "http" {
            bail!("{flag} must be http://<loopback>:<port> (got {url})");
        }
        let host = base
            .host_str()
            .ok_or_else(|| anyhow!("{flag} has no host"))?;
        let ip: IpAddr = match host.trim_start_matches('[').trim_end_matches(']') {
            "localhost" => IpAddr::from([127, 0, 0, 1]),
            h => h
                .parse()
                .with_context(|| format!("{flag} host must be a loopback IP address (got {h})"))?,
        };
        if !ip.is_loopback() {
            bail!("refusing to load {ip} ({flag}): only loopback addresses are allowed");
        }
        let port = base
            .port_or_known_default()
            .ok_or_else(|| anyhow!("{flag} has no port"))?;
        Ok(Self {
            addr: SocketAddr::new(ip, port),
            base,
        })
    }

    /// `ws://host:port/realtime/v1`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/realtime/v1", self.addr)
    }
}

/// A small JSON client with a timeout on every request.
#[derive(Clone)]
pub struct Api {
    http: Client,
    target: Target,
}

/// A project with a secret key, ready for load.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub project_id: String,
    pub key: String,
}

impl Api {
    pub fn new(target: Target, timeout: Duration) -> Result<Self> {
        let http = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // The server is local: never go through a proxy from the environment.
            .no_proxy()
            .build()?;
        Ok(Self { http, target })
    }

    async fn call(&self, method: Method, path: &str, bearer: &str, body: Value) -> Result<Value> {
        let url = self.target.base.join(path)?;
        let resp = self
            .http
            .request(method.clone(), url)
            .bearer_auth(bearer)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{method} {path}: HTTP {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: invalid JSON"))
    }

    /// Logs in as a platform admin, creates a project and a read/write secret key.
    pub async fn setup(&self, email: &str, password: &str, name: &str) -> Result<Tenant> {
        let login = self
            .http
            .post(self.target.base.join("/api/admin/login")?)
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .context("admin login")?;
        let status = login.status();
        let login: Value = if status.is_success() {
            login.json().await?
        } else {
            bail!(
                "admin login: HTTP {status}: {}",
                login.text().await.unwrap_or_default()
            );
        };
        let admin = str_field(&login, "token")?;
        let project = self
            .call(
                Method::POST,
                "/api/admin/projects",
                &admin,
                // Load goes far beyond the Free plan's monthly quotas; the admin the servers
                // bootstrap is a platform admin, who may choose the plan.
                json!({ "name": name, "plan": "enterprise" }),
            )
            .await?;
        let project_id = str_field(&project, "id")?;
        let key = self
            .call(
                Method::POST,
                &format!("/api/admin/projects/{project_id}/api-keys"),
                &admin,
                json!({ "name": "loadtest", "scopes": ["read", "write"] }),
            )
            .await?;
        Ok(Tenant {
            project_id,
            key: str_field(&key, "key")?,
        })
    }

    /// Creates an end user; returns its id and realtime token (JWT).
    pub async fn create_user(&self, key: &str, identifier: &str) -> Result<(String, String)> {
        let v = self
            .call(
                Method::POST,
                "/api/v1/users",
                key,
                json!({ "user_identifier": identifier, "name": identifier }),
            )
            .await?;
        let id = v
            .pointer("/user/id")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("POST /api/v1/users: no user.id in {v}"))?
            .to_owned();
        Ok((id, str_field(&v, "token")?))
    }

    /// Creates a conversation with these end users as members.
    pub async fn create_conversation(&self, key: &str, members: &[String]) -> Result<String> {
        let v = self
            .call(
                Method::POST,
                "/api/v1/conversations",
                key,
                json!({ "subject": "loadtest", "members": members }),
            )
            .await?;
        str_field(&v, "id")
    }
}

fn str_field(v: &Value, field: &str) -> Result<String> {
    v.get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("response has no string field {field:?}: {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_http_targets() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(t.ws_url(), "ws://127.0.0.1:8080/realtime/v1");
        assert!(Target::parse("http://localhost:9000/").is_ok());
        assert!(Target::parse("http://[::1]:9000").is_ok());
        assert!(Target::parse("http://10.0.0.1:8080").is_err());
        assert!(Target::parse("http://example.com:8080").is_err());
        assert!(Target::parse("https://127.0.0.1:8080").is_err());
        let e = Target::parse_flag("--receiver-url", "http://10.0.0.2:1").unwrap_err();
        assert!(e.to_string().contains("--receiver-url"), "{e}");
    }
}
