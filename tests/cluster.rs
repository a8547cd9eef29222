//! Distributed mode, end to end: real `larachat control-plane` and `larachat gateway`
//! processes over a real nats-server and a real Cassandra 5.0 node.
//!
//! Needs `LARACHAT_TEST_NATS_URL` and `LARACHAT_TEST_CASSANDRA` (printed by
//! `deploy/nats.sh start` and `deploy/cassandra.sh start`; `scripts/test.sh` exports both).
//! Without them every test fails, never passes silently. The NATS-restart test runs a
//! nats-server of its own (`LARACHAT_NATS_SERVER_BIN`). One keyspace per test run, migrated
//! once by `larachat migrate`; every test uses its own processes, admin and projects.
//!
//! The failover and NATS-restart tests check like Jepsen does: writers send unique, numbered
//! messages and record what was acknowledged; readers follow the protocol (insert by id,
//! de-duplicate, resume with the 5 s window after every reconnect); afterwards everything is
//! read back from the store and from every reader. The counts are printed
//! (`cargo test --test cluster -- --nocapture`).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const JWT_SECRET: &str = "cluster-test-jwt-secret-0123456789abcdef";
const KEY_PEPPER: &str = "cluster-test-key-pepper-0123456789abcdef";
const ADMIN_PASSWORD: &str = "cluster-test-password";
const HOW_TO_START: &str = "start the services with `eval \"$(deploy/nats.sh start)\"` and \
     `eval \"$(deploy/cassandra.sh start)\"`, or run scripts/test.sh";

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!("{name} is not set: {HOW_TO_START}"),
    }
}

/// The keyspace of this test run, migrated once with `larachat migrate`.
fn keyspace() -> &'static str {
    static KS: OnceLock<String> = OnceLock::new();
    KS.get_or_init(|| {
        let ks = format!("lc_cluster_{}", uuid::Uuid::new_v4().simple());
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_larachat"))
            .arg("migrate")
            .envs(base_env(&required_env("LARACHAT_TEST_NATS_URL"), &ks))
            .output()
            .expect("run larachat migrate");
        assert!(
            out.status.success(),
            "larachat migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("migrated keyspace {ks} in {:?}", started.elapsed());
        ks
    })
}

/// The configuration every process of a test cluster shares.
fn base_env(nats_url: &str, keyspace: &str) -> Vec<(String, String)> {
    [
        ("LARACHAT_BUS__BACKEND", "nats"),
        ("LARACHAT_BUS__NATS__URL", nats_url),
        ("LARACHAT_STORAGE__BACKEND", "scylla"),
        (
            "LARACHAT_STORAGE__SCYLLA__CONTACT_POINTS",
            &required_env("LARACHAT_TEST_CASSANDRA"),
        ),
        ("LARACHAT_STORAGE__SCYLLA__KEYSPACE", keyspace),
        ("LARACHAT_SECURITY__JWT_SECRET", JWT_SECRET),
        ("LARACHAT_SECURITY__KEY_PEPPER", KEY_PEPPER),
        ("LARACHAT_LOG", "warn,async_nats=error,scylla=error"),
        ("LARACHAT_SERVER__SHUTDOWN_GRACE_SECS", "2"),
        // The writers send as fast as the cluster acknowledges (hundreds of messages a second
        // per end user): far above the per-sender message limit, which tests/limits.rs tests.
        ("LARACHAT_LIMITS__ENABLED", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free loopback port")
        .port()
}

/// One `larachat` process, killed when dropped.
struct Proc {
    role: &'static str,
    port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
    _stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    fn start(role: &'static str, env: Vec<(String, String)>) -> Proc {
        let mut p = Proc {
            role,
            port: free_port(),
            env,
            child: None,
            _stdout: None,
        };
        p.restart();
        p
    }

    /// Starts the process (again) on its port and waits for its "listening" line, printed once
    /// the store and the bus are connected.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.role);
        let mut child = Command::new(env!("CARGO_BIN_EXE_larachat"))
            .args([self.role, "--listen", &format!("127.0.0.1:{}", self.port)])
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn larachat");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the listening line");
        assert!(
            line.contains("listening on http://"),
            "{} did not start: {line:?}",
            self.role
        );
        self.child = Some(child);
        self._stdout = Some(stdout);
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/realtime/v1", self.port)
    }

    /// `kill -9`: no goodbye to anyone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self._stdout = None;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A nats-server of the test's own (JetStream on), killed when dropped.
struct OwnNats {
    port: u16,
    /// HTTP monitoring port (`/connz`).
    monitor: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnNats {
    fn start() -> OwnNats {
        let mut n = OwnNats {
            port: free_port(),
            monitor: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        n.restart();
        n
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let bin = std::env::var_os("LARACHAT_NATS_SERVER_BIN")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(".cache/larachat/bin/nats-server"))
            })
            .filter(|p| p.is_file())
            .unwrap_or_else(|| panic!("no nats-server binary: {HOW_TO_START}"));
        let child = Command::new(bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-m",
                &self.monitor.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [self.port, self.monitor] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "nats-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// How many subscriptions to `subject` the server holds, over all connections.
    async fn subscriptions(&self, subject: &str) -> usize {
        let url = format!("http://127.0.0.1:{}/connz?subs=1", self.monitor);
        let connz: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| {
                c["subscriptions_list"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|s| s == subject)
            .count()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A control plane and `n` gateways, and an admin session on the control plane.
struct Cluster {
    control: Proc,
    gateways: Vec<Proc>,
    http: reqwest::Client,
    admin_token: String,
}

/// A project with a read/write secret key.
struct Tenant {
    project_id: String,
    key: String,
    key_id: String,
}

impl Cluster {
    async fn start(gateways: usize) -> Cluster {
        Self::start_on(&required_env("LARACHAT_TEST_NATS_URL"), gateways).await
    }

    async fn start_on(nats_url: &str, gateways: usize) -> Cluster {
        let env = base_env(nats_url, keyspace());
        let email = format!("admin-{}@example.com", uuid::Uuid::new_v4().simple());
        let mut control_env = env.clone();
        control_env.push(("LARACHAT_ADMIN_EMAIL".into(), email.clone()));
        control_env.push(("LARACHAT_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()));
        let control = Proc::start("control-plane", control_env);
        let gateways = (0..gateways)
            .map(|_| Proc::start("gateway", env.clone()))
            .collect();
        let http = reqwest::Client::new();
        let (s, login) = common::call(
            &http,
            Method::POST,
            &format!("{}/api/admin/login", control.base()),
            None,
            Some(json!({"email": email, "password": ADMIN_PASSWORD})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{login}");
        Cluster {
            control,
            gateways,
            http,
            admin_token: login["token"].as_str().expect("token").to_owned(),
        }
    }

    fn gw(&self, i: usize) -> String {
        self.gateways[i].base()
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.control.base());
        common::call(&self.http, method, &url, Some(&self.admin_token), body).await
    }

    async fn tenant(&self, name: &str) -> Tenant {
        let (s, p) = self
            .admin(
                Method::POST,
                "/api/admin/projects",
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
        let project_id = p["id"].as_str().unwrap().to_owned();
        let (key_id, key) = self.key(&project_id, json!({"name": "k"})).await;
        Tenant {
            project_id,
            key,
            key_id,
        }
    }

    /// Creates a secret key; returns (id, plaintext).
    async fn key(&self, project_id: &str, body: Value) -> (String, String) {
        let (s, k) = self
            .admin(
                Method::POST,
                &format!("/api/admin/projects/{project_id}/api-keys"),
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{k}");
        (
            k["api_key"]["id"].as_str().unwrap().to_owned(),
            k["key"].as_str().unwrap().to_owned(),
        )
    }

    /// Calls gateway `i`.
    async fn client(
        &self,
        i: usize,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.gw(i));
        common::call(&self.http, method, &url, Some(token), body).await
    }

    /// Identifies an end user through gateway `i`; returns (id, token).
    async fn user(&self, i: usize, key: &str, identifier: &str) -> (String, String) {
        let (s, u) = self
            .client(
                i,
                Method::POST,
                "/api/v1/users",
                key,
                Some(json!({"user_identifier": identifier, "name": identifier})),
            )
            .await;
        assert!(s.is_success(), "{s} {u}");
        (
            u["user"]["id"].as_str().unwrap().to_owned(),
            u["token"].as_str().unwrap().to_owned(),
        )
    }

    async fn conversation(&self, i: usize, key: &str, members: &[&str]) -> String {
        let (s, c) = self
            .client(
                i,
                Method::POST,
                "/api/v1/conversations",
                key,
                Some(json!({"subject": "cluster", "members": members})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{c}");
        c["id"].as_str().unwrap().to_owned()
    }

    /// Every stored message of a conversation, oldest first, read through gateway `i`.
    async fn stored(&self, i: usize, key: &str, conversation: &str) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        let mut after = uuid::Uuid::nil().to_string();
        loop {
            let path =
                format!("/api/v1/conversations/{conversation}/messages?limit=200&after={after}");
            let (s, page) = self.client(i, Method::GET, &path, key, None).await;
            assert_eq!(s, StatusCode::OK, "{page}");
            let items = page["data"].as_array().cloned().unwrap_or_default();
            let Some(last) = items.last() else { break };
            after = last["id"].as_str().unwrap().to_owned();
            out.extend(items);
            if page["has_more"] != json!(true) {
                break;
            }
        }
        out
    }
}

// --- a realtime client ---------------------------------------------------------------------

async fn connect(url: &str, token: &str, actor: Option<Value>) -> Result<Socket, String> {
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let mut auth = json!({"type": "auth", "id": 0, "token": token});
    if let Some(a) = actor {
        auth["actor"] = a;
    }
    send(&mut ws, auth).await?;
    match next_frame(&mut ws, Duration::from_secs(5)).await {
        Frame::Data(f) if f["type"] == "auth_ok" => Ok(ws),
        other => Err(format!("auth failed: {other:?}")),
    }
}

async fn send(ws: &mut Socket, frame: Value) -> Result<(), String> {
    ws.send(WsMessage::Text(frame.to_string().into()))
        .await
        .map_err(|e| e.to_string())
}

#[derive(Debug)]
enum Frame {
    Data(Value),
    Closed(Option<u16>),
    Timeout,
}

async fn next_frame(ws: &mut Socket, wait: Duration) -> Frame {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Frame::Timeout,
            Ok(None) | Ok(Some(Err(_))) => return Frame::Closed(None),
            Ok(Some(Ok(WsMessage::Text(t)))) => {
                return Frame::Data(serde_json::from_str(&t).expect("server sent invalid JSON"));
            }
            Ok(Some(Ok(WsMessage::Close(Some(CloseFrame { code, .. }))))) => {
                return Frame::Closed(Some(code.into()));
            }
            Ok(Some(Ok(WsMessage::Close(None)))) => return Frame::Closed(None),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Waits for a frame of type `ty`, returning the others seen before it.
async fn expect_type(ws: &mut Socket, ty: &str) -> (Value, Vec<Value>) {
    let mut others = Vec::new();
    loop {
        match next_frame(ws, Duration::from_secs(10)).await {
            Frame::Data(f) if f["type"] == ty => return (f, others),
            Frame::Data(f) => others.push(f),
            other => panic!("waiting for {ty}: {other:?}"),
        }
    }
}

async fn subscribe(ws: &mut Socket, conversation: &str, after: Option<&str>) -> Vec<Value> {
    let mut f = json!({"type": "subscribe", "id": 1, "conversation_id": conversation});
    if let Some(a) = after {
        f["after"] = json!(a);
    }
    send(ws, f).await.expect("send subscribe");
    let (_, before) = expect_type(ws, "subscribed").await;
    before
}

/// The protocol's resume window (docs/protocol.md §5): a UUIDv7 whose timestamp is 5 s older
/// than `id`'s, with zero random bits.
fn resume_window(id: &str) -> String {
    let u = uuid::Uuid::parse_str(id).expect("message id");
    let b = u.as_bytes();
    let ms = b[..6]
        .iter()
        .fold(0u64, |acc, x| (acc << 8) | u64::from(*x));
    let ms = ms.saturating_sub(5_000);
    let mut out = [0u8; 16];
    out[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    out[6] = 0x70;
    out[8] = 0x80;
    uuid::Uuid::from_bytes(out).to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

// --- tests ---------------------------------------------------------------------------------

/// A client on gateway A and a client on gateway B in one conversation exchange messages,
/// read markers and typing; also measures send → receive across gateways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_gateways_exchange_messages_reads_and_typing() {
    let c = Cluster::start(2).await;
    let t = c.tenant("cross").await;
    let (alice, alice_token) = c.user(0, &t.key, "alice").await;
    let (bob, bob_token) = c.user(1, &t.key, "bob").await;
    let conv = c.conversation(0, &t.key, &[&alice, &bob]).await;

    let mut a = connect(&c.gateways[0].ws_url(), &alice_token, None)
        .await
        .unwrap();
    let mut b = connect(&c.gateways[1].ws_url(), &bob_token, None)
        .await
        .unwrap();
    subscribe(&mut a, &conv, None).await;
    subscribe(&mut b, &conv, None).await;

    // A → B
    send(
        &mut a,
        json!({"type": "send", "id": 10, "conversation_id": conv, "client_msg_id": "a-1", "text": "hello from A"}),
    )
    .await
    .unwrap();
    let (m, _) = expect_type(&mut b, "message").await;
    assert_eq!(m["message"]["text"], "hello from A");
    assert_eq!(m["message"]["sender"]["id"], json!(alice));
    // B → A
    send(
        &mut b,
        json!({"type": "send", "id": 11, "conversation_id": conv, "client_msg_id": "b-1", "text": "hi from B"}),
    )
    .await
    .unwrap();
    let (m, _) = loop {
        let (m, o) = expect_type(&mut a, "message").await;
        if m["message"]["text"] == "hi from B" {
            break (m, o);
        }
    };
    let last_id = m["message"]["id"].as_str().unwrap().to_owned();
    // Read marker from A reaches B.
    send(
        &mut a,
        json!({"type": "read", "id": 12, "conversation_id": conv, "message_id": last_id}),
    )
    .await
    .unwrap();
    let (r, _) = expect_type(&mut b, "read").await;
    assert_eq!(r["message_id"], json!(last_id), "{r}");
    assert_eq!(r["reader"]["id"], json!(alice), "{r}");
    // Typing from B reaches A, and a stop follows.
    send(
        &mut b,
        json!({"type": "typing", "conversation_id": conv, "state": "start"}),
    )
    .await
    .unwrap();
    let (ty, _) = expect_type(&mut a, "typing").await;
    assert_eq!(ty["state"], "start", "{ty}");
    assert_eq!(ty["actor"]["id"], json!(bob), "{ty}");
    send(
        &mut b,
        json!({"type": "typing", "conversation_id": conv, "state": "stop"}),
    )
    .await
    .unwrap();
    let (ty, _) = expect_type(&mut a, "typing").await;
    assert_eq!(ty["state"], "stop", "{ty}");

    // Latency across gateways: one message in flight, A sends, B receives.
    let mut samples = Vec::new();
    for i in 0..200 {
        let text = format!("lat-{i}");
        let start = Instant::now();
        send(
            &mut a,
            json!({"type": "send", "id": 100 + i, "conversation_id": conv, "client_msg_id": text, "text": text}),
        )
        .await
        .unwrap();
        loop {
            let (m, _) = expect_type(&mut b, "message").await;
            if m["message"]["text"] == json!(text) {
                break;
            }
        }
        samples.push(start.elapsed());
    }
    samples.sort();
    println!(
        "cross-gateway send→receive ({} messages, debug build, everything on this machine): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
    let stored = c.stored(1, &t.key, &conv).await;
    assert_eq!(stored.len(), 202, "every message stored once");
}

/// Project A's clients, on both gateways, never receive project B's events, and B cannot
/// reach A's conversation through either gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_stay_isolated_across_gateways() {
    let c = Cluster::start(2).await;
    let ta = c.tenant("tenant-a").await;
    let tb = c.tenant("tenant-b").await;
    let (a1, a1_token) = c.user(0, &ta.key, "same-identifier").await;
    let (a2, a2_token) = c.user(1, &ta.key, "a2").await;
    let (b1, b1_token) = c.user(1, &tb.key, "same-identifier").await;
    assert_ne!(a1, b1, "identifiers are per project");
    let conv_a = c.conversation(0, &ta.key, &[&a1, &a2]).await;
    let conv_b = c.conversation(1, &tb.key, &[&b1]).await;

    let mut wa1 = connect(&c.gateways[0].ws_url(), &a1_token, None)
        .await
        .unwrap();
    let mut wa2 = connect(&c.gateways[1].ws_url(), &a2_token, None)
        .await
        .unwrap();
    subscribe(&mut wa1, &conv_a, None).await;
    subscribe(&mut wa2, &conv_a, None).await;

    for gw in 0..2 {
        // B's end user and B's key cannot subscribe to, send to or read A's conversation.
        let mut wb = connect(&c.gateways[gw].ws_url(), &b1_token, None)
            .await
            .unwrap();
        send(
            &mut wb,
            json!({"type": "subscribe", "id": 1, "conversation_id": conv_a}),
        )
        .await
        .unwrap();
        let (e, _) = expect_type(&mut wb, "error").await;
        assert_eq!(e["code"], "not_found", "{e}");
        send(
            &mut wb,
            json!({"type": "send", "id": 2, "conversation_id": conv_a, "client_msg_id": "x", "text": "intrusion"}),
        )
        .await
        .unwrap();
        let (e, _) = expect_type(&mut wb, "error").await;
        assert_eq!(e["code"], "not_found", "{e}");
        let (s_known, body_known) = c
            .client(
                gw,
                Method::GET,
                &format!("/api/v1/conversations/{conv_a}/messages"),
                &tb.key,
                None,
            )
            .await;
        let (s_random, body_random) = c
            .client(
                gw,
                Method::GET,
                &format!("/api/v1/conversations/{}/messages", uuid::Uuid::now_v7()),
                &tb.key,
                None,
            )
            .await;
        assert_eq!(s_known, StatusCode::NOT_FOUND);
        assert_eq!(
            (s_known, body_known),
            (s_random, body_random),
            "no existence oracle"
        );
        // B's own traffic, on both gateways.
        subscribe(&mut wb, &conv_b, None).await;
        send(
            &mut wb,
            json!({"type": "send", "id": 3, "conversation_id": conv_b, "client_msg_id": format!("b-{gw}"), "text": "secret of B"}),
        )
        .await
        .unwrap();
        expect_type(&mut wb, "ack").await;
        let (s, _) = c
            .client(
                gw,
                Method::POST,
                &format!("/api/v1/conversations/{conv_b}/typing"),
                &b1_token,
                Some(json!({"state": "start"})),
            )
            .await;
        assert!(s.is_success(), "{s}");
    }
    // A marker message from A: everything A's clients received before it is A's.
    let (s, _) = c
        .client(
            0,
            Method::POST,
            &format!("/api/v1/conversations/{conv_a}/messages"),
            &a1_token,
            Some(json!({"text": "end of test"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    for ws in [&mut wa1, &mut wa2] {
        let (m, before) = loop {
            let (m, before) = expect_type(ws, "message").await;
            if m["message"]["text"] == "end of test" {
                break (m, before);
            }
            assert_eq!(m["message"]["conversation_id"], json!(conv_a), "{m}");
        };
        assert_eq!(m["message"]["project_id"], json!(ta.project_id));
        for f in before {
            assert!(
                !f.to_string().contains(&conv_b) && !f.to_string().contains(&tb.project_id),
                "project B leaked into project A: {f}"
            );
        }
    }
    let stored = c.stored(0, &ta.key, &conv_a).await;
    assert_eq!(stored.len(), 1, "the intrusion was not stored: {stored:?}");
}

/// Revocation, suspension and expiry made on the control plane reach every gateway within a
/// second, also when the gateways had the key cached; sockets using it are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_and_suspension_reach_every_gateway_within_a_second() {
    let c = Cluster::start(2).await;
    let t = c.tenant("revoke").await;
    let agent = json!({"type": "agent", "id": "agent-1"});
    let list = "/api/v1/conversations?limit=1";

    // 1. Revocation.
    let mut sockets = Vec::new();
    for gw in 0..2 {
        let (s, _) = c.client(gw, Method::GET, list, &t.key, None).await;
        assert_eq!(s, StatusCode::OK, "warm the key cache of gateway {gw}");
        sockets.push(
            connect(&c.gateways[gw].ws_url(), &t.key, Some(agent.clone()))
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    let (s, b) = c
        .admin(
            Method::DELETE,
            &format!("/api/admin/api-keys/{}", t.key_id),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let answered = started.elapsed();
    let refused = refused_everywhere(&c, list, &t.key, StatusCode::UNAUTHORIZED, started).await;
    let mut closed = Vec::new();
    for ws in &mut sockets {
        match next_frame(ws, Duration::from_secs(2)).await {
            Frame::Closed(Some(4001)) => closed.push(started.elapsed()),
            other => panic!("socket of a revoked key: {other:?}"),
        }
    }
    println!(
        "revocation: admin answered in {:.1} ms; refused by gateway 1/2 after {:.1}/{:.1} ms; sockets closed (4001) after {:.1}/{:.1} ms",
        ms(answered),
        ms(refused[0]),
        ms(refused[1]),
        ms(closed[0]),
        ms(closed[1])
    );
    for d in refused.iter().chain(&closed) {
        assert!(*d < Duration::from_secs(1), "took {d:?}");
    }

    // 2. Suspension of the project.
    let (_, key2) = c.key(&t.project_id, json!({"name": "k2"})).await;
    let mut sockets = Vec::new();
    for gw in 0..2 {
        let (s, _) = c.client(gw, Method::GET, list, &key2, None).await;
        assert_eq!(s, StatusCode::OK);
        sockets.push(
            connect(&c.gateways[gw].ws_url(), &key2, Some(agent.clone()))
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    let (s, b) = c
        .admin(
            Method::PATCH,
            &format!("/api/admin/projects/{}", t.project_id),
            Some(json!({"status": "suspended"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let refused = refused_everywhere(&c, list, &key2, StatusCode::FORBIDDEN, started).await;
    let mut closed = Vec::new();
    for ws in &mut sockets {
        match next_frame(ws, Duration::from_secs(2)).await {
            Frame::Closed(Some(4030)) => closed.push(started.elapsed()),
            other => panic!("socket of a suspended project: {other:?}"),
        }
    }
    println!(
        "suspension: refused by gateway 1/2 after {:.1}/{:.1} ms; sockets closed after {:.1}/{:.1} ms",
        ms(refused[0]),
        ms(refused[1]),
        ms(closed[0]),
        ms(closed[1])
    );
    for d in refused.iter().chain(&closed) {
        assert!(*d < Duration::from_secs(1), "took {d:?}");
    }

    // 3. Expiry: no notice is sent; every gateway checks the expiry it cached.
    let t2 = c.tenant("expiry").await;
    let expires = chrono::Utc::now() + chrono::Duration::seconds(3);
    let (_, key3) = c
        .key(
            &t2.project_id,
            json!({"name": "short", "expires_at": expires.to_rfc3339()}),
        )
        .await;
    for gw in 0..2 {
        let (s, _) = c.client(gw, Method::GET, list, &key3, None).await;
        assert_eq!(s, StatusCode::OK);
    }
    let until = (expires - chrono::Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(until).await;
    let started = Instant::now();
    let refused = refused_everywhere(&c, list, &key3, StatusCode::UNAUTHORIZED, started).await;
    println!(
        "expiry: refused by gateway 1/2 {:.1}/{:.1} ms after expires_at",
        ms(refused[0]),
        ms(refused[1])
    );
    for d in &refused {
        assert!(*d < Duration::from_secs(1), "took {d:?}");
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Polls every gateway until it answers `status`; returns how long after `since` each did.
async fn refused_everywhere(
    c: &Cluster,
    path: &str,
    key: &str,
    status: StatusCode,
    since: Instant,
) -> Vec<Duration> {
    let mut out = Vec::new();
    for gw in 0..c.gateways.len() {
        loop {
            let (s, body) = c.client(gw, Method::GET, path, key, None).await;
            if s == status {
                out.push(since.elapsed());
                break;
            }
            assert_eq!(s, StatusCode::OK, "gateway {gw}: {body}");
            assert!(
                since.elapsed() < Duration::from_secs(5),
                "gateway {gw} still accepts the key after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    out
}

// --- Jepsen-style checks ------------------------------------------------------------------

/// What the writers and readers of one run saw.
#[derive(Default)]
struct History {
    /// client_msg_id → message id, for every acknowledged send.
    acked: HashMap<String, String>,
    /// Sends retried after a lost connection or an unavailable answer.
    retries: u64,
    /// Acks with `duplicate: true` (a retry of something already stored).
    duplicate_acks: u64,
}

/// A reader's view: message id → client_msg_id (inserted by id, de-duplicated).
#[derive(Default)]
struct ReaderView {
    messages: BTreeMap<String, String>,
    /// Frames for a message already held (replays of the resume window, live + replay races).
    redelivered: u64,
    reconnects: u64,
    close_codes: Vec<Option<u16>>,
}

/// Writes numbered messages `w<writer>-<n>` one at a time, until `stop`; on a lost connection
/// or a retryable error it moves to the next gateway and sends the same `client_msg_id` again.
async fn writer(
    urls: Vec<String>,
    token: String,
    conversation: String,
    writer: usize,
    history: Arc<Mutex<History>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> usize {
    let mut at = writer % urls.len();
    let mut ws: Option<Socket> = None;
    let mut n = 0usize;
    while !*stop.borrow() {
        let cmid = format!("w{writer}-{n}");
        loop {
            let socket = match ws.as_mut() {
                Some(s) => s,
                None => match connect(&urls[at], &token, None).await {
                    Ok(s) => ws.insert(s),
                    Err(_) => {
                        at = (at + 1) % urls.len();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let frame = json!({"type": "send", "id": n, "conversation_id": conversation,
                "client_msg_id": cmid, "text": cmid});
            let reply = match send(socket, frame).await {
                Ok(()) => loop {
                    match next_frame(socket, Duration::from_secs(5)).await {
                        Frame::Data(f) if f["id"] == json!(n) => break Some(f),
                        Frame::Data(_) => continue,
                        _ => break None,
                    }
                },
                Err(_) => None,
            };
            match reply {
                Some(f) if f["type"] == "ack" => {
                    let id = f["message"]["id"].as_str().expect("ack id").to_owned();
                    let mut h = history.lock().unwrap();
                    if f["duplicate"] == json!(true) {
                        h.duplicate_acks += 1;
                    }
                    if let Some(prev) = h.acked.insert(cmid.clone(), id.clone()) {
                        assert_eq!(prev, id, "{cmid} acknowledged with two ids");
                    }
                    break;
                }
                Some(f) if f["retryable"] == json!(true) => {
                    history.lock().unwrap().retries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Some(f) => panic!("{cmid}: unexpected reply {f}"),
                None => {
                    // Connection lost or no answer: the outcome is unknown; retry elsewhere
                    // with the same client_msg_id.
                    history.lock().unwrap().retries += 1;
                    ws = None;
                    at = (at + 1) % urls.len();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        n += 1;
    }
    n
}

/// Follows the protocol's reconnect algorithm: subscribe, insert by id, de-duplicate; after
/// any disconnect, reconnect (to the next gateway) and resume from the 5 s window before the
/// highest id held.
async fn reader(
    urls: Vec<String>,
    token: String,
    conversation: String,
    start_at: usize,
    view: Arc<Mutex<ReaderView>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut at = start_at % urls.len();
    let mut first = true;
    while !*stop.borrow() {
        let mut ws = match connect(&urls[at], &token, None).await {
            Ok(ws) => ws,
            Err(_) => {
                at = (at + 1) % urls.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !first {
            view.lock().unwrap().reconnects += 1;
        }
        first = false;
        // The first subscription replays from the conversation's start, so nothing sent before
        // it was registered is missed; later ones resume from the window.
        let after = view
            .lock()
            .unwrap()
            .messages
            .keys()
            .next_back()
            .map_or_else(|| uuid::Uuid::nil().to_string(), |id| resume_window(id));
        let f =
            json!({"type": "subscribe", "id": 1, "conversation_id": conversation, "after": after});
        if send(&mut ws, f).await.is_err() {
            continue;
        }
        let mut stop_rx = stop.clone();
        loop {
            let frame = tokio::select! {
                _ = stop_rx.changed() => return,
                f = next_frame(&mut ws, Duration::from_secs(30)) => f,
            };
            match frame {
                Frame::Data(f) if f["type"] == "message" => {
                    let id = f["message"]["id"].as_str().unwrap().to_owned();
                    let cmid = f["message"]["client_msg_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    let mut v = view.lock().unwrap();
                    if v.messages.insert(id, cmid).is_some() {
                        v.redelivered += 1;
                    }
                }
                Frame::Data(f) if f["type"] == "error" => {
                    // e.g. subscribe refused while the bus is away: try again shortly.
                    assert_eq!(f["retryable"], json!(true), "{f}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
                Frame::Data(_) => {}
                Frame::Closed(code) => {
                    view.lock().unwrap().close_codes.push(code);
                    break;
                }
                Frame::Timeout => break,
            }
        }
        at = (at + 1) % urls.len();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every reader holds every acknowledged message (or 30 s), stops them, and checks
/// the run like Jepsen does. Prints the counts.
async fn check_history(
    name: &str,
    c: &Cluster,
    key: &str,
    conversation: &str,
    history: &Mutex<History>,
    views: &[Arc<Mutex<ReaderView>>],
    attempted: usize,
) {
    let acked: HashMap<String, String> = history.lock().unwrap().acked.clone();
    let acked_ids: HashSet<&String> = acked.values().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let complete = views.iter().all(|v| {
            let v = v.lock().unwrap();
            acked_ids.iter().all(|id| v.messages.contains_key(*id))
        });
        if complete || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = c.stored(1, key, conversation).await;
    let stored_ids: Vec<String> = stored
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    let mut per_cmid: HashMap<&str, usize> = HashMap::new();
    for m in &stored {
        *per_cmid
            .entry(m["client_msg_id"].as_str().unwrap_or_default())
            .or_default() += 1;
    }
    let duplicates: usize = per_cmid.values().map(|n| n - 1).sum();
    let stored_set: HashSet<&String> = stored_ids.iter().collect();
    let stored_cmids: HashMap<&str, &str> = stored
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap(),
                m["client_msg_id"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let lost: Vec<&String> = acked_ids
        .iter()
        .filter(|id| !stored_set.contains(**id))
        .copied()
        .collect();
    let h = history.lock().unwrap();
    println!(
        "{name}: {attempted} numbered messages attempted, {} acknowledged ({} as duplicates of a retried send), {} retries; \
         store: {} messages, {} lost acknowledged, {} duplicated",
        acked.len(),
        h.duplicate_acks,
        h.retries,
        stored.len(),
        lost.len(),
        duplicates
    );
    assert!(
        lost.is_empty(),
        "{name}: acknowledged but not stored: {lost:?}"
    );
    assert_eq!(duplicates, 0, "{name}: a client_msg_id stored twice");
    assert!(
        stored.len() <= attempted,
        "{name}: more stored than attempted"
    );
    for (i, v) in views.iter().enumerate() {
        let v = v.lock().unwrap();
        let seen: Vec<&String> = v.messages.keys().collect();
        let missing: Vec<&&String> = acked_ids
            .iter()
            .filter(|id| !v.messages.contains_key(**id))
            .collect();
        println!(
            "{name}: reader {i}: {} messages held, {} acknowledged missing, {} redelivered frames dropped by id, {} reconnects, close codes {:?}",
            seen.len(),
            missing.len(),
            v.redelivered,
            v.reconnects,
            v.close_codes
        );
        assert!(missing.is_empty(), "{name}: reader {i} misses {missing:?}");
        // Same order for every reader: by id, the stored sequence itself.
        let expected: Vec<&String> = stored_ids.iter().collect();
        assert_eq!(
            seen, expected,
            "{name}: reader {i} disagrees with the store"
        );
        for (id, cmid) in &v.messages {
            assert_eq!(
                stored_cmids.get(id.as_str()).copied(),
                Some(cmid.as_str()),
                "{name}: reader {i} content"
            );
        }
    }
    // Each writer's messages are in its sending order (one in flight per writer).
    let mut last: HashMap<&str, usize> = HashMap::new();
    for m in &stored {
        let cmid = m["client_msg_id"].as_str().unwrap();
        let (w, n) = cmid.split_once('-').unwrap();
        let n: usize = n.parse().unwrap();
        if let Some(prev) = last.insert(w, n) {
            assert!(n > prev, "{name}: {w} out of order: {prev} then {n}");
        }
    }
}

/// Numbered writers and protocol-following readers in one conversation of a fresh project:
/// the traffic of the Jepsen-style tests.
struct Workload {
    key: String,
    conversation: String,
    urls: Vec<String>,
    /// End-user tokens not used yet, for readers.
    spare_tokens: Vec<String>,
    history: Arc<Mutex<History>>,
    views: Vec<Arc<Mutex<ReaderView>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    writers: Vec<tokio::task::JoinHandle<usize>>,
    stop_writers: tokio::sync::watch::Sender<bool>,
    stop_readers: tokio::sync::watch::Sender<bool>,
}

impl Workload {
    /// Creates a project and a conversation of `writers + readers + later` end users, starts
    /// `readers` readers (reader i first on gateway i), then, once they are subscribed,
    /// `writers` writers (writer i first on gateway i). `later` tokens are kept for
    /// [`Workload::add_reader`].
    async fn start(c: &Cluster, name: &str, writers: usize, readers: usize, later: usize) -> Self {
        let t = c.tenant(name).await;
        let mut members = Vec::new();
        let mut tokens = Vec::new();
        for i in 0..writers + readers + later {
            let (id, token) = c.user(0, &t.key, &format!("participant-{i}")).await;
            members.push(id);
            tokens.push(token);
        }
        let member_refs: Vec<&str> = members.iter().map(String::as_str).collect();
        let conversation = c.conversation(0, &t.key, &member_refs).await;
        let mut run = Workload {
            key: t.key,
            conversation,
            urls: c.gateways.iter().map(Proc::ws_url).collect(),
            spare_tokens: tokens.split_off(writers),
            history: Arc::default(),
            views: Vec::new(),
            readers: Vec::new(),
            writers: Vec::new(),
            stop_writers: tokio::sync::watch::channel(false).0,
            stop_readers: tokio::sync::watch::channel(false).0,
        };
        for i in 0..readers {
            run.add_reader(i);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (i, token) in tokens.into_iter().enumerate() {
            run.writers.push(tokio::spawn(writer(
                run.urls.clone(),
                token,
                run.conversation.clone(),
                i,
                run.history.clone(),
                run.stop_writers.subscribe(),
            )));
        }
        run
    }

    /// Starts another reader, first on gateway `start_at`; it replays the conversation from
    /// its start.
    fn add_reader(&mut self, start_at: usize) {
        let view = Arc::new(Mutex::new(ReaderView::default()));
        self.readers.push(tokio::spawn(reader(
            self.urls.clone(),
            self.spare_tokens.remove(0),
            self.conversation.clone(),
            start_at,
            view.clone(),
            self.stop_readers.subscribe(),
        )));
        self.views.push(view);
    }

    /// Sends acknowledged so far.
    fn acked(&self) -> usize {
        self.history.lock().unwrap().acked.len()
    }

    /// Stops the writers, checks the run ([`check_history`]), stops the readers and returns
    /// their views.
    async fn finish(self, name: &str, c: &Cluster) -> Vec<Arc<Mutex<ReaderView>>> {
        self.stop_writers.send_replace(true);
        let mut attempted = 0;
        for w in self.writers {
            attempted += w.await.unwrap();
        }
        check_history(
            name,
            c,
            &self.key,
            &self.conversation,
            &self.history,
            &self.views,
            attempted,
        )
        .await;
        self.stop_readers.send_replace(true);
        for r in self.readers {
            r.await.unwrap();
        }
        self.views
    }
}

/// Writers and readers on two gateways; one gateway is SIGKILLed and restarted. Nothing
/// acknowledged is lost, nothing is stored twice, every reader ends with the store's sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_sigkill_loses_no_acknowledged_message() {
    let mut c = Cluster::start(2).await;
    let mut run = Workload::start(&c, "failover", 2, 2, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_kill = run.acked();
    c.gateways[0].kill();
    println!("failover: gateway 1 SIGKILLed after {before_kill} acks");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_window = run.acked() - before_kill;
    c.gateways[0].restart();
    println!("failover: gateway 1 restarted; {killed_window} acks meanwhile through gateway 2");
    // A third reader joins on the restarted gateway and replays everything.
    run.add_reader(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    run.finish("failover", &c).await;
    assert!(
        killed_window > 0,
        "writers kept going through the surviving gateway"
    );
}

/// NATS is killed and restarted during traffic: sends keep being acknowledged and stored;
/// the gateways tell their clients to resume (4102) and refuse subscriptions until NATS is
/// back; every reader ends with the store's sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_during_traffic_loses_nothing() {
    let mut nats = OwnNats::start();
    let c = Cluster::start_on(&nats.url(), 2).await;
    let run = Workload::start(&c, "nats-restart", 2, 2, 0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = run.acked();
    nats.kill();
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = run.acked() - before;
    nats.restart();
    println!(
        "nats restart: NATS down for {:.1} s; {during} sends acknowledged meanwhile",
        down_at.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let views = run.finish("nats restart", &c).await;
    assert!(during > 0, "sends are acknowledged while NATS is away");
    for (i, v) in views.iter().enumerate() {
        let v = v.lock().unwrap();
        assert!(
            v.close_codes.contains(&Some(4102)),
            "reader {i} was told to resume after the outage: {:?}",
            v.close_codes
        );
    }
}

/// NATS carries one copy of a conversation's events per interested gateway, not one per
/// client: a gateway subscribes on its first local subscriber and unsubscribes after its last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nats_subscription_per_gateway_and_conversation() {
    let nats = OwnNats::start();
    let c = Cluster::start_on(&nats.url(), 2).await;
    let t = c.tenant("interest").await;
    let agent = json!({"type": "agent", "id": "watcher"});
    let conv = {
        let (u, _) = c.user(0, &t.key, "customer").await;
        c.conversation(0, &t.key, &[&u]).await
    };
    let subject = format!("lc.v1.{}.conv.{conv}", t.project_id);
    assert_eq!(nats.subscriptions(&subject).await, 0);
    let mut sockets = Vec::new();
    for i in 0..20 {
        let mut ws = connect(&c.gateways[i % 2].ws_url(), &t.key, Some(agent.clone()))
            .await
            .unwrap();
        subscribe(&mut ws, &conv, None).await;
        sockets.push(ws);
    }
    assert_eq!(
        nats.subscriptions(&subject).await,
        2,
        "20 clients on 2 gateways: one NATS subscription per gateway"
    );
    // The last local subscriber of gateway 1 leaves: only gateway 2 stays interested.
    for ws in sockets.iter_mut().step_by(2) {
        ws.close(None).await.unwrap();
    }
    sockets = sockets.into_iter().skip(1).step_by(2).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while nats.subscriptions(&subject).await != 1 {
        assert!(Instant::now() < deadline, "gateway 1 did not unsubscribe");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still delivered to the clients of gateway 2, through gateway 1's publish.
    let (s, _) = c
        .client(
            0,
            Method::POST,
            &format!("/api/v1/conversations/{conv}/messages"),
            &t.key,
            Some(json!({"text": "still here?", "sender": agent})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    for ws in &mut sockets {
        let (m, _) = expect_type(ws, "message").await;
        assert_eq!(m["message"]["text"], "still here?");
    }
}

/// A split process without the distributed backends, the shared secrets or a migrated
/// keyspace stops at once and says what to set or run.
#[test]
fn split_processes_refuse_a_configuration_that_cannot_work() {
    let run = |role: &str, env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_larachat"))
            .args([role, "--listen", "127.0.0.1:0"])
            .env("LARACHAT_LOG", "error")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run larachat");
        assert!(!out.status.success(), "{role} started with {env:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run("gateway", &[]);
    assert!(err.contains("bus.backend = \"nats\""), "{err}");
    let nats = required_env("LARACHAT_TEST_NATS_URL");
    let cassandra = required_env("LARACHAT_TEST_CASSANDRA");
    let distributed = [
        ("LARACHAT_BUS__BACKEND", "nats"),
        ("LARACHAT_BUS__NATS__URL", nats.as_str()),
        ("LARACHAT_STORAGE__BACKEND", "scylla"),
        (
            "LARACHAT_STORAGE__SCYLLA__CONTACT_POINTS",
            cassandra.as_str(),
        ),
    ];
    let err = run("control-plane", &distributed);
    assert!(err.contains("security.jwt_secret"), "{err}");
    let mut unmigrated = distributed.to_vec();
    unmigrated.extend([
        ("LARACHAT_SECURITY__JWT_SECRET", JWT_SECRET),
        ("LARACHAT_SECURITY__KEY_PEPPER", KEY_PEPPER),
        ("LARACHAT_STORAGE__SCYLLA__KEYSPACE", "lc_never_migrated"),
    ]);
    let err = run("gateway", &unmigrated);
    assert!(err.contains("larachat migrate"), "{err}");
}
