//! Test harness: a real `larachat serve` stack on 127.0.0.1:0 (in-process), an HTTP client,
//! and a small realtime client.
#![allow(dead_code)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use larachat::Config;

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "change-me-please";
/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

/// A running server and an admin session.
pub struct Server {
    pub base: String,
    /// `http://ADDR` of the admin listener, when `server.admin_listen` is set.
    pub admin_base: Option<String>,
    pub ws_url: String,
    pub http: reqwest::Client,
    pub admin_token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// A project with a read+write secret key.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub project_id: String,
    pub key: String,
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(|_| {}).await
    }

    /// Starts with a configuration tweak.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".into();
        config.storage.data_dir = dir.path().to_path_buf();
        config.storage.sqlite_synchronous = "normal".into();
        config.admin.email = ADMIN_EMAIL.into();
        config.admin.password = ADMIN_PASSWORD.into();
        config.server.shutdown_grace_secs = 2;
        // Tests create many projects per admin and send beyond Free's monthly limits; the
        // quota tests set the plan they test.
        config.plans.default = larachat_core::plan::PlanId::parse("enterprise").expect("plan id");
        tweak(&mut config);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let handle = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.await;
            };
            if let Err(e) = larachat::run_server(config, shutdown, move |bound| {
                let _ = addr_tx.send(bound);
            })
            .await
            {
                panic!("server failed: {e:#}");
            }
        });
        let bound = tokio::time::timeout(Duration::from_secs(30), addr_rx)
            .await
            .expect("server did not start in time")
            .expect("server exited before binding");
        let addr = bound.public;
        let base = format!("http://{addr}");
        let http = reqwest::Client::new();
        let login: Value = http
            .post(format!("{base}/api/admin/login"))
            .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("login json");
        let admin_token = login["token"].as_str().expect("admin token").to_owned();
        Server {
            ws_url: format!("ws://{addr}/realtime/v1"),
            admin_base: bound.admin.map(|a| format!("http://{a}")),
            base,
            http,
            admin_token,
            stop: Some(stop_tx),
            handle: Some(handle),
            _dir: dir,
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
    }

    /// Stops the server gracefully and hands over its data directory (deleted when the
    /// returned value is dropped), e.g. to open the database the server left.
    pub async fn stop_keep_data(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
        let empty = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self._dir, empty)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Any request; returns status and JSON body (`Value::Null` when empty or not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        call(&self.http, method, &self.url(path), Some(token), body).await
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// Creates a project and a secret key with `scopes`.
    pub async fn tenant_with_scopes(&self, name: &str, scopes: &[&str]) -> Tenant {
        let (s, p) = self
            .post(
                "/api/admin/projects",
                &self.admin_token,
                json!({"name": name}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
        let project_id = p["id"].as_str().expect("project id").to_owned();
        let key = self.key(&project_id, scopes, None).await;
        Tenant { project_id, key }
    }

    pub async fn tenant(&self, name: &str) -> Tenant {
        self.tenant_with_scopes(name, &["read", "write"]).await
    }

    /// Creates another secret key for a project; returns the plaintext.
    pub async fn key(&self, project_id: &str, scopes: &[&str], expires_at: Option<&str>) -> String {
        let mut body = json!({"name": "test key", "scopes": scopes});
        if let Some(e) = expires_at {
            body["expires_at"] = json!(e);
        }
        let (s, k) = self
            .post(
                &format!("/api/admin/projects/{project_id}/api-keys"),
                &self.admin_token,
                body,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{k}");
        k["key"].as_str().expect("key").to_owned()
    }

    /// Creates an end user; returns (id, token).
    pub async fn user(&self, key: &str, identifier: &str) -> (String, String) {
        let (s, u) = self
            .post(
                "/api/v1/users",
                key,
                json!({"user_identifier": identifier, "name": identifier}),
            )
            .await;
        assert!(s == StatusCode::CREATED || s == StatusCode::OK, "{s} {u}");
        (
            u["user"]["id"].as_str().expect("user id").to_owned(),
            u["token"].as_str().expect("token").to_owned(),
        )
    }

    /// Creates a conversation with `members`; returns its id.
    pub async fn conversation(&self, key: &str, members: &[&str]) -> String {
        let (s, c) = self
            .post(
                "/api/v1/conversations",
                key,
                json!({"subject": "test", "members": members}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{c}");
        c["id"].as_str().expect("conversation id").to_owned()
    }

    /// Sends a message over HTTP; returns the stored message.
    pub async fn send(&self, token: &str, conversation: &str, text: &str) -> Value {
        let (s, m) = self
            .post(
                &format!("/api/v1/conversations/{conversation}/messages"),
                token,
                json!({"text": text}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{m}");
        m["message"].clone()
    }

    /// Opens a realtime connection (not yet authenticated).
    pub async fn ws(&self) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(&self.ws_url)
            .await
            .expect("websocket connect");
        Ws { stream }
    }

    /// Opens and authenticates a realtime connection.
    pub async fn ws_auth(&self, token: &str) -> Ws {
        let mut ws = self.ws().await;
        ws.send(json!({"type": "auth", "id": 0, "token": token}))
            .await;
        let ok = ws.recv().await;
        assert_eq!(ok["type"], "auth_ok", "{ok}");
        ws
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// What the server did with a connection.
#[derive(Debug, PartialEq)]
pub enum Closed {
    Code(u16, String),
    NoFrame,
}

/// A realtime test client speaking JSON.
pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn send(&mut self, frame: Value) {
        self.stream
            .send(WsMessage::Text(frame.to_string().into()))
            .await
            .expect("ws send");
    }

    pub async fn send_raw(&mut self, msg: WsMessage) {
        self.stream.send(msg).await.expect("ws send");
    }

    /// The next data frame, within [`WAIT`]. Panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        match self.try_recv(WAIT).await {
            Some(v) => v,
            None => panic!("no frame within {WAIT:?}"),
        }
    }

    /// The next data frame within `wait`, or `None`.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??;
            match next {
                Ok(WsMessage::Text(t)) => {
                    return Some(serde_json::from_str(&t).expect("server sent invalid JSON"));
                }
                Ok(WsMessage::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Receives until a frame with `type == ty` arrives (others are returned too, in order).
    pub async fn recv_until(&mut self, ty: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let f = self.recv().await;
            let done = f["type"] == ty;
            seen.push(f);
            if done {
                return seen;
            }
        }
    }

    /// Waits for the server to close the connection; returns the close code.
    pub async fn closed(&mut self, wait: Duration) -> Closed {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => panic!("connection not closed within {wait:?}"),
                Ok(None) | Ok(Some(Err(_))) => return Closed::NoFrame,
                Ok(Some(Ok(WsMessage::Close(Some(CloseFrame { code, reason }))))) => {
                    return Closed::Code(code.into(), reason.to_string());
                }
                Ok(Some(Ok(WsMessage::Close(None)))) => return Closed::NoFrame,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Subscribes and returns every frame up to and including `subscribed`.
    pub async fn subscribe(&mut self, conversation: &str, after: Option<&str>) -> Vec<Value> {
        let mut f = json!({"type": "subscribe", "id": 1, "conversation_id": conversation});
        if let Some(a) = after {
            f["after"] = json!(a);
        }
        self.send(f).await;
        self.recv_until("subscribed").await
    }

    /// Sends a message and waits for its ack; returns the ack.
    pub async fn send_message(
        &mut self,
        id: u64,
        conversation: &str,
        cmid: &str,
        text: &str,
    ) -> Value {
        self.send(
            json!({"type": "send", "id": id, "conversation_id": conversation,
            "client_msg_id": cmid, "text": text}),
        )
        .await;
        let frames = self.recv_until_id(id).await;
        frames.last().cloned().expect("a reply")
    }

    /// Receives until a reply carrying `id` (ack, ok, error…) arrives.
    pub async fn recv_until_id(&mut self, id: u64) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let f = self.recv().await;
            let done = f["id"] == json!(id) && f["type"] != "message";
            seen.push(f);
            if done {
                return seen;
            }
        }
    }

    /// Collects `message` events' texts until `n` arrive (other frames are skipped).
    pub async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let f = self.recv().await;
            if f["type"] == "message" {
                out.push(f["message"].clone());
            }
        }
        out
    }
}

/// Any request to `url`; returns status and JSON body (`Value::Null` when empty or not JSON).
pub async fn call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http.request(method, url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Asserts the catalog error shape and code.
pub fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(body["error"]["message"].is_string(), "body: {body}");
    assert!(body["error"]["retryable"].is_boolean(), "body: {body}");
}

// ---------------------------------------------------------------------------------------------
// API key helpers (added for tests/client_api.rs)
// ---------------------------------------------------------------------------------------------

/// A key as returned by `POST /api/admin/projects/{id}/api-keys`.
#[derive(Clone, Debug)]
pub struct CreatedKey {
    /// `api_key.id`, used to revoke it.
    pub id: String,
    /// The plaintext key (`sk_live_…` / `pk_live_…`).
    pub key: String,
}

impl Server {
    /// Creates a key from a raw request body (`name` is filled in when absent); returns its
    /// id and plaintext.
    pub async fn create_key(&self, project_id: &str, mut body: Value) -> CreatedKey {
        if body.get("name").is_none() {
            body["name"] = json!("test key");
        }
        let (s, k) = self
            .post(
                &format!("/api/admin/projects/{project_id}/api-keys"),
                &self.admin_token,
                body,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{k}");
        CreatedKey {
            id: k["api_key"]["id"].as_str().expect("api_key.id").to_owned(),
            key: k["key"].as_str().expect("key").to_owned(),
        }
    }

    /// Creates a secret key with `scopes` (and an optional RFC 3339 expiry); returns its id
    /// and plaintext.
    pub async fn key_with_id(
        &self,
        project_id: &str,
        scopes: &[&str],
        expires_at: Option<&str>,
    ) -> CreatedKey {
        let mut body = json!({"scopes": scopes});
        if let Some(e) = expires_at {
            body["expires_at"] = json!(e);
        }
        self.create_key(project_id, body).await
    }

    /// Revokes a key through the admin API (`DELETE /api/admin/api-keys/{id}`).
    pub async fn revoke_key(&self, key_id: &str) {
        let (s, b) = self
            .call(
                Method::DELETE,
                &format!("/api/admin/api-keys/{key_id}"),
                &self.admin_token,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert!(b["revoked_at"].is_string(), "{b}");
    }
}

/// The storage a message meters (docs/usage.md), from the message as the API returns it: the
/// UTF-8 bytes of its text plus its serialized metadata (`{}` when it has none).
pub fn metered_bytes(m: &Value) -> u64 {
    let metadata = if m["metadata"].is_null() {
        json!({})
    } else {
        m["metadata"].clone()
    };
    (m["text"].as_str().unwrap_or_default().len() + metadata.to_string().len()) as u64
}
