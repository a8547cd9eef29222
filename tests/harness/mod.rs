//! The multi-process test harness of `tests/cluster.rs` and `tests/faults.rs`: real
//! `larachat` processes (a control plane, gateways), a nats-server and a Cassandra node of a
//! test's own, a small realtime client, and the Jepsen-style workload (numbered writers that
//! retry with the same `client_msg_id` on another gateway, readers that follow protocol §7,
//! and a check of everything they saw against the store).
//!
//! The binary under test is `target/…/larachat` of this build; `LARACHAT_TEST_BIN` points the
//! harness at another one (e.g. a build of an older commit, to measure what a fix changed).
#![allow(dead_code)]

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

use crate::common;

pub const JWT_SECRET: &str = "cluster-test-jwt-secret-0123456789abcdef";
pub const KEY_PEPPER: &str = "cluster-test-key-pepper-0123456789abcdef";
pub const ADMIN_PASSWORD: &str = "cluster-test-password";
pub const HOW_TO_START: &str = "start the services with `eval \"$(deploy/nats.sh start)\"` and \
     `eval \"$(deploy/cassandra.sh start)\"`, or run scripts/test.sh";

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!("{name} is not set: {HOW_TO_START}"),
    }
}

/// The `larachat` binary the processes run (see the module docs).
pub fn larachat_bin() -> PathBuf {
    std::env::var_os("LARACHAT_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_larachat")))
}

/// Whether the binary under test has rate limits (`[limits]`, which the harness turns off).
fn has_limits() -> bool {
    static KNOWN: OnceLock<bool> = OnceLock::new();
    *KNOWN.get_or_init(|| {
        Command::new(larachat_bin())
            .arg("check-config")
            .env("LARACHAT_LIMITS__ENABLED", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The services and keyspace a test cluster's processes share.
#[derive(Clone, Debug)]
pub struct Backends {
    pub nats_url: String,
    pub cassandra: String,
    pub keyspace: String,
}

impl Backends {
    /// The test run's nats-server and Cassandra (`LARACHAT_TEST_NATS_URL`,
    /// `LARACHAT_TEST_CASSANDRA`) and the run's keyspace, migrated once.
    pub fn shared() -> Backends {
        Self::shared_with_nats(&required_env("LARACHAT_TEST_NATS_URL"))
    }

    /// [`Backends::shared`] with a nats-server of the test's own.
    pub fn shared_with_nats(nats_url: &str) -> Backends {
        static KS: OnceLock<String> = OnceLock::new();
        let cassandra = required_env("LARACHAT_TEST_CASSANDRA");
        let keyspace = KS
            .get_or_init(|| {
                let b = Backends {
                    nats_url: required_env("LARACHAT_TEST_NATS_URL"),
                    cassandra: cassandra.clone(),
                    keyspace: format!("lc_cluster_{}", uuid::Uuid::new_v4().simple()),
                };
                b.migrate();
                b.keyspace
            })
            .clone();
        Backends {
            nats_url: nats_url.to_owned(),
            cassandra,
            keyspace,
        }
    }

    /// A fresh keyspace on `cassandra`, migrated now.
    pub fn fresh(nats_url: &str, cassandra: &str, prefix: &str) -> Backends {
        let b = Backends {
            nats_url: nats_url.to_owned(),
            cassandra: cassandra.to_owned(),
            keyspace: format!("{prefix}_{}", uuid::Uuid::new_v4().simple()),
        };
        b.migrate();
        b
    }

    /// Runs `larachat migrate` on the keyspace.
    pub fn migrate(&self) {
        let started = Instant::now();
        let out = Command::new(larachat_bin())
            .arg("migrate")
            .envs(self.env())
            .output()
            .expect("run larachat migrate");
        assert!(
            out.status.success(),
            "larachat migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "migrated keyspace {} in {:?}",
            self.keyspace,
            started.elapsed()
        );
    }

    /// The configuration every process of a test cluster shares.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("LARACHAT_BUS__BACKEND", "nats"),
            ("LARACHAT_BUS__NATS__URL", self.nats_url.as_str()),
            ("LARACHAT_STORAGE__BACKEND", "scylla"),
            (
                "LARACHAT_STORAGE__SCYLLA__CONTACT_POINTS",
                self.cassandra.as_str(),
            ),
            ("LARACHAT_STORAGE__SCYLLA__KEYSPACE", self.keyspace.as_str()),
            ("LARACHAT_SECURITY__JWT_SECRET", JWT_SECRET),
            ("LARACHAT_SECURITY__KEY_PEPPER", KEY_PEPPER),
            ("LARACHAT_LOG", "warn,async_nats=error,scylla=error"),
            ("LARACHAT_SERVER__SHUTDOWN_GRACE_SECS", "2"),
        ]
        .into_iter()
        // The writers send as fast as the cluster acknowledges (hundreds of messages a second
        // per end user): far above the per-sender message limit, which tests/limits.rs tests.
        // (A build from before `[limits]` refuses the key.)
        .chain(has_limits().then_some(("LARACHAT_LIMITS__ENABLED", "false")))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

/// `(key, value)` pairs as owned environment variables.
pub fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free loopback port")
        .port()
}

/// One `larachat` process, killed when dropped.
pub struct Proc {
    pub role: &'static str,
    pub port: u16,
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    _stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    pub fn start(role: &'static str, env: Vec<(String, String)>) -> Proc {
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
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.role);
        let mut child = Command::new(larachat_bin())
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

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/realtime/v1", self.port)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. `SIGSTOP`, `SIGCONT`) to the running process.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = self.pid().expect("process is running");
        signal_pid(pid, signal);
    }

    /// `kill -9`: no goodbye to anyone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self._stdout = None;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process does not die of SIGKILL until it is continued on some kernels'
        // accounting; continue it first.
        if let Some(pid) = self.pid() {
            let _ = rustix::process::Pid::from_raw(pid as i32)
                .map(|p| rustix::process::kill_process(p, rustix::process::Signal::CONT));
        }
        self.kill();
    }
}

/// Sends a signal to a process (a direct `kill(2)`: fast enough to stop a process within a
/// millisecond of an event).
pub fn signal_pid(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a positive pid");
    rustix::process::kill_process(pid, signal).expect("kill(2)");
}

/// A nats-server of the test's own (JetStream on), killed when dropped.
pub struct OwnNats {
    port: u16,
    /// HTTP monitoring port (`/connz`).
    monitor: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnNats {
    pub fn start() -> OwnNats {
        let mut n = OwnNats {
            port: free_port(),
            monitor: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        n.restart();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
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
    pub async fn subscriptions(&self, subject: &str) -> usize {
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

    pub fn kill(&mut self) {
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

/// A Cassandra node of the test's own, started by `deploy/cassandra.sh` in a temporary run
/// directory (so it can be killed, stopped and restarted without touching the shared node),
/// stopped and deleted when dropped. `LARACHAT_CASSANDRA_COMMITLOG_SYNC` in the test's
/// environment chooses its commit-log mode (default: batch, as shipped).
pub struct OwnCassandra {
    dir: tempfile::TempDir,
    /// `host:port` of its native transport (the same after a restart).
    pub contact_point: String,
}

impl OwnCassandra {
    pub fn start() -> OwnCassandra {
        let dir = tempfile::tempdir().expect("tempdir");
        let started = Instant::now();
        let contact_point = Self::script(dir.path(), "start");
        eprintln!(
            "own Cassandra at {contact_point} started in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        OwnCassandra { dir, contact_point }
    }

    /// Runs `deploy/cassandra.sh <command>` in `run_dir`; returns the contact point it prints.
    fn script(run_dir: &std::path::Path, command: &str) -> String {
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/cassandra.sh"))
            .arg(command)
            .env("LARACHAT_RUN_DIR", run_dir)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("run deploy/cassandra.sh");
        assert!(out.status.success(), "deploy/cassandra.sh {command} failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("LARACHAT_TEST_CASSANDRA="))
            .map(str::to_owned)
            .unwrap_or_default()
    }

    /// The JVM's process id.
    pub fn pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.path().join("cassandra/cassandra.pid"))
            .expect("cassandra.pid")
            .trim()
            .parse()
            .expect("a pid")
    }

    /// Starts the node again on its data and ports (after [`OwnCassandra::kill`]); returns how
    /// long it took.
    pub fn restart(&self) -> Duration {
        let started = Instant::now();
        let cp = Self::script(self.dir.path(), "restart");
        assert_eq!(cp, self.contact_point, "restarted on the same port");
        started.elapsed()
    }

    /// `kill -9` of the JVM, and waits until it is gone.
    pub fn kill(&self) {
        let pid = self.pid();
        signal_pid(pid, rustix::process::Signal::KILL);
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while proc_dir.exists()
            && std::fs::read_to_string(proc_dir.join("stat")).is_ok_and(|s| !s.contains(") Z "))
        {
            assert!(Instant::now() < deadline, "Cassandra survived SIGKILL");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        signal_pid(self.pid(), signal);
    }
}

impl Drop for OwnCassandra {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("cassandra/cassandra.pid")) {
            if let Ok(pid) = pid.trim().parse::<u32>() {
                let _ = rustix::process::Pid::from_raw(pid as i32)
                    .map(|p| rustix::process::kill_process(p, rustix::process::Signal::CONT));
            }
        }
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/cassandra.sh"))
            .arg("stop")
            .env("LARACHAT_RUN_DIR", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A control plane and `n` gateways, and an admin session on the control plane.
pub struct Cluster {
    pub control: Proc,
    pub gateways: Vec<Proc>,
    pub http: reqwest::Client,
    pub admin_token: String,
}

/// A project with a read/write secret key.
pub struct Tenant {
    pub project_id: String,
    pub key: String,
    pub key_id: String,
}

impl Cluster {
    pub async fn start(gateways: usize) -> Cluster {
        Self::start_with(&Backends::shared(), vec![Vec::new(); gateways]).await
    }

    pub async fn start_on(nats_url: &str, gateways: usize) -> Cluster {
        Self::start_with(
            &Backends::shared_with_nats(nats_url),
            vec![Vec::new(); gateways],
        )
        .await
    }

    /// A control plane and one gateway per entry of `gateway_env`, each with these extra
    /// variables (a shorter cache TTL, a shifted clock…).
    pub async fn start_with(
        backends: &Backends,
        gateway_env: Vec<Vec<(String, String)>>,
    ) -> Cluster {
        Self::start_with_all(backends, Vec::new(), gateway_env).await
    }

    /// [`Cluster::start_with`] with `common_env` for every process, the control plane too
    /// (e.g. webhook targets on loopback, which the control plane delivers to).
    pub async fn start_with_all(
        backends: &Backends,
        common_env: Vec<(String, String)>,
        gateway_env: Vec<Vec<(String, String)>>,
    ) -> Cluster {
        let mut env = backends.env();
        env.extend(common_env);
        let email = format!("admin-{}@example.com", uuid::Uuid::new_v4().simple());
        let mut control_env = env.clone();
        control_env.push(("LARACHAT_ADMIN_EMAIL".into(), email.clone()));
        control_env.push(("LARACHAT_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()));
        // Tests create many projects per admin and send beyond Free's monthly limits; the
        // quota tests choose their plans themselves.
        control_env.push(("LARACHAT_DEFAULT_PROJECT_PLAN".into(), "enterprise".into()));
        let control = Proc::start("control-plane", control_env);
        let gateways = gateway_env
            .into_iter()
            .map(|extra| {
                let mut e = env.clone();
                e.extend(extra);
                Proc::start("gateway", e)
            })
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

    pub fn gw(&self, i: usize) -> String {
        self.gateways[i].base()
    }

    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.control.base());
        common::call(&self.http, method, &url, Some(&self.admin_token), body).await
    }

    pub async fn tenant(&self, name: &str) -> Tenant {
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
    pub async fn key(&self, project_id: &str, body: Value) -> (String, String) {
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
    pub async fn client(
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
    pub async fn user(&self, i: usize, key: &str, identifier: &str) -> (String, String) {
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

    pub async fn conversation(&self, i: usize, key: &str, members: &[&str]) -> String {
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
    pub async fn stored(&self, i: usize, key: &str, conversation: &str) -> Vec<Value> {
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

/// Why a realtime connection could not be opened.
#[derive(Debug)]
pub struct ConnectError {
    /// The server refused the credential for good (`error` with `retryable: false`, close
    /// 4000–4099): protocol §7 says stop.
    pub fatal: bool,
    pub message: String,
}

pub async fn connect(url: &str, token: &str, actor: Option<Value>) -> Result<Socket, ConnectError> {
    let transient = |message: String| ConnectError {
        fatal: false,
        message,
    };
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .map_err(|_| transient("connect timed out".to_owned()))?
    .map_err(|e| transient(e.to_string()))?;
    let mut auth = json!({"type": "auth", "id": 0, "token": token});
    if let Some(a) = actor {
        auth["actor"] = a;
    }
    send(&mut ws, auth).await.map_err(transient)?;
    match next_frame(&mut ws, Duration::from_secs(5)).await {
        Frame::Data(f) if f["type"] == "auth_ok" => Ok(ws),
        Frame::Data(f) if f["type"] == "error" => Err(ConnectError {
            fatal: f["retryable"] == json!(false),
            message: format!("auth refused: {f}"),
        }),
        other => Err(transient(format!("auth failed: {other:?}"))),
    }
}

pub async fn send(ws: &mut Socket, frame: Value) -> Result<(), String> {
    ws.send(WsMessage::Text(frame.to_string().into()))
        .await
        .map_err(|e| e.to_string())
}

#[derive(Debug)]
pub enum Frame {
    Data(Value),
    Closed(Option<u16>),
    Timeout,
}

pub async fn next_frame(ws: &mut Socket, wait: Duration) -> Frame {
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
pub async fn expect_type(ws: &mut Socket, ty: &str) -> (Value, Vec<Value>) {
    let mut others = Vec::new();
    loop {
        match next_frame(ws, Duration::from_secs(10)).await {
            Frame::Data(f) if f["type"] == ty => return (f, others),
            Frame::Data(f) => others.push(f),
            other => panic!("waiting for {ty}: {other:?}"),
        }
    }
}

pub async fn subscribe(ws: &mut Socket, conversation: &str, after: Option<&str>) -> Vec<Value> {
    let mut f = json!({"type": "subscribe", "id": 1, "conversation_id": conversation});
    if let Some(a) = after {
        f["after"] = json!(a);
    }
    send(ws, f).await.expect("send subscribe");
    let (_, before) = expect_type(ws, "subscribed").await;
    before
}

/// The first version of the protocol's resume cursor (docs/protocol.md §5.1): a UUIDv7 whose
/// timestamp is 5 s older than the highest id received, with zero random bits.
pub fn resume_window(id: &str) -> String {
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

/// The contiguous resume cursor of protocol §7: the newest message below which every `seq`
/// was received.
#[derive(Debug, Default)]
pub struct ContiguousCursor {
    /// (seq, id) of the cursor; none before the first complete replay.
    at: Option<(u64, String)>,
    /// Messages held above the cursor: seq → id.
    ahead: BTreeMap<u64, String>,
    /// Since when the cursor has been behind a held message.
    stuck_since: Option<Instant>,
}

impl ContiguousCursor {
    /// A cursor before the conversation's first message (a reader that replays from the
    /// start).
    pub fn from_start() -> Self {
        Self {
            at: Some((0, uuid::Uuid::nil().to_string())),
            ..Self::default()
        }
    }

    /// The `after` to resume with.
    pub fn after(&self) -> Option<&str> {
        self.at.as_ref().map(|(_, id)| id.as_str())
    }

    /// A message was received (live, replayed or acknowledged).
    pub fn on_message(&mut self, seq: u64, id: &str) {
        if self.at.as_ref().is_some_and(|(at, _)| seq <= *at) {
            return;
        }
        self.ahead.insert(seq, id.to_owned());
        self.advance();
    }

    /// A replay ended (`subscribed` for a subscribe with `after`): it is complete, so the
    /// cursor moves to the newest message held.
    pub fn replay_complete(&mut self) {
        if let Some((seq, id)) = self.ahead.pop_last() {
            if self.at.as_ref().is_none_or(|(at, _)| seq > *at) {
                self.at = Some((seq, id));
            }
            self.ahead.clear();
        }
        self.stuck_since = None;
    }

    fn advance(&mut self) {
        while let Some((at, _)) = &self.at {
            match self.ahead.remove(&(at + 1)) {
                Some(id) => self.at = Some((at + 1, id)),
                None => break,
            }
        }
    }

    /// Whether the cursor has been behind a held message for `for_at_least` (a lost live
    /// event: resubscribe from the cursor).
    pub fn stuck(&mut self, now: Instant, for_at_least: Duration) -> bool {
        if self.at.is_none() || self.ahead.is_empty() {
            self.stuck_since = None;
            return false;
        }
        let since = *self.stuck_since.get_or_insert(now);
        now.duration_since(since) >= for_at_least
    }
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

// --- Jepsen-style checks ------------------------------------------------------------------

/// What the writers of one run saw.
#[derive(Default)]
pub struct History {
    /// client_msg_id → message id, for every acknowledged send.
    pub acked: HashMap<String, String>,
    /// Sends retried after a lost connection or an unavailable answer.
    pub retries: u64,
    /// Acks with `duplicate: true` (a retry of something already stored).
    pub duplicate_acks: u64,
    /// Retryable error answers, by code.
    pub errors: BTreeMap<String, u64>,
    /// When each acknowledgement arrived: (time, client_msg_id, message id).
    pub ack_times: Vec<(Instant, String, String)>,
}

/// How a reader computes `after` when it resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Protocol §7: the contiguous cursor (and a resubscribe when a gap lasts 2 s).
    Contiguous,
    /// The first version of the protocol: 5 s before the highest id received (§5.1).
    Window,
}

/// How one reader behaves.
#[derive(Debug, Clone, Copy)]
pub struct ReaderSpec {
    pub resume: Resume,
    /// Disconnect and resume this often even without a failure.
    pub reconnect_every: Option<Duration>,
}

impl Default for ReaderSpec {
    fn default() -> Self {
        Self {
            resume: Resume::Contiguous,
            reconnect_every: None,
        }
    }
}

/// A reader's view: message id → client_msg_id (inserted by id, de-duplicated).
#[derive(Default)]
pub struct ReaderView {
    pub messages: BTreeMap<String, String>,
    pub cursor: ContiguousCursor,
    /// Frames for a message already held (replays, live + replay races).
    pub redelivered: u64,
    pub reconnects: u64,
    /// Subscribes sent again on an open connection because a gap lasted.
    pub resubscribes: u64,
    pub close_codes: Vec<Option<u16>>,
    /// Why connecting (or authenticating) failed, each time it did.
    pub connect_errors: Vec<String>,
}

/// Writes numbered messages `w<writer>-<n>` (text = client_msg_id) one at a time, until
/// `stop`; on a lost connection, no answer within 5 s or a retryable error it moves to the next
/// gateway and sends the same `client_msg_id` again. Between messages, a writer that had to
/// leave its first gateway tries to go back to it every 2 s (so writers stay spread over the
/// gateways across restarts). Returns how many it attempted.
pub async fn writer(
    urls: Vec<String>,
    token: String,
    conversation: String,
    writer: usize,
    history: Arc<Mutex<History>>,
    stop: tokio::sync::watch::Receiver<bool>,
    mut paused: tokio::sync::watch::Receiver<bool>,
) -> usize {
    let home = writer % urls.len();
    let mut at = home;
    let mut ws: Option<Socket> = None;
    let mut n = 0usize;
    let mut away_since: Option<Instant> = None;
    while !*stop.borrow() {
        // Between messages only: a paused writer leaves the conversation idle.
        if *paused.borrow() {
            let _ = paused.wait_for(|p| !*p).await;
            continue;
        }
        if at != home {
            let since = *away_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(2) {
                match connect(&urls[home], &token, None).await {
                    Ok(s) => {
                        ws = Some(s);
                        at = home;
                        away_since = None;
                    }
                    Err(_) => away_since = Some(Instant::now()),
                }
            }
        }
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
                    h.ack_times.push((Instant::now(), cmid.clone(), id));
                    break;
                }
                Some(f) if f["retryable"] == json!(true) => {
                    {
                        let mut h = history.lock().unwrap();
                        h.retries += 1;
                        *h.errors
                            .entry(f["code"].as_str().unwrap_or("?").to_owned())
                            .or_default() += 1;
                    }
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
/// any disconnect (and every `reconnect_every`), reconnect to the next gateway and resume as
/// `spec.resume` says; with the contiguous cursor, subscribe again when a gap lasts 2 s.
pub async fn reader(
    urls: Vec<String>,
    token: String,
    conversation: String,
    start_at: usize,
    spec: ReaderSpec,
    view: Arc<Mutex<ReaderView>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut at = start_at % urls.len();
    let mut first = true;
    let mut request = 1u64;
    while !*stop.borrow() {
        let mut ws = match connect(&urls[at], &token, None).await {
            Ok(ws) => ws,
            Err(e) => {
                let fatal = e.fatal;
                view.lock().unwrap().connect_errors.push(e.message);
                if fatal {
                    // Protocol §7: a refused credential is not retried.
                    return;
                }
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
        // it was registered is missed; later ones resume from the cursor.
        let after = {
            let v = view.lock().unwrap();
            match spec.resume {
                Resume::Contiguous => v.cursor.after().map(str::to_owned),
                Resume::Window => v.messages.keys().next_back().map(|id| resume_window(id)),
            }
            .unwrap_or_else(|| uuid::Uuid::nil().to_string())
        };
        request += 1;
        let mut resuming = request;
        let f = json!({"type": "subscribe", "id": request, "conversation_id": conversation,
            "after": after});
        if send(&mut ws, f).await.is_err() {
            continue;
        }
        let connected = Instant::now();
        let mut stop_rx = stop.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            let frame = tokio::select! {
                _ = stop_rx.changed() => return,
                f = next_frame(&mut ws, Duration::from_secs(30)) => f,
                _ = tick.tick() => {
                    if spec.reconnect_every.is_some_and(|every| connected.elapsed() >= every) {
                        let _ = ws.close(None).await;
                        break;
                    }
                    let stuck = spec.resume == Resume::Contiguous
                        && view.lock().unwrap().cursor.stuck(Instant::now(), Duration::from_secs(2));
                    if stuck {
                        let after = view.lock().unwrap().cursor.after().map(str::to_owned);
                        request += 1;
                        resuming = request;
                        view.lock().unwrap().resubscribes += 1;
                        let f = json!({"type": "subscribe", "id": request,
                            "conversation_id": conversation, "after": after});
                        if send(&mut ws, f).await.is_err() {
                            break;
                        }
                    }
                    continue;
                }
            };
            match frame {
                Frame::Data(f) if f["type"] == "message" => {
                    let m = &f["message"];
                    let id = m["id"].as_str().unwrap().to_owned();
                    let cmid = m["client_msg_id"].as_str().unwrap_or_default().to_owned();
                    let mut v = view.lock().unwrap();
                    if let Some(seq) = m["seq"].as_u64() {
                        v.cursor.on_message(seq, &id);
                    }
                    if v.messages.insert(id, cmid).is_some() {
                        v.redelivered += 1;
                    }
                }
                Frame::Data(f) if f["type"] == "subscribed" => {
                    if f["id"] == json!(resuming) {
                        view.lock().unwrap().cursor.replay_complete();
                    }
                }
                Frame::Data(f) if f["type"] == "error" => {
                    // e.g. subscribe refused while the bus or the store is away: try again.
                    assert_eq!(f["retryable"], json!(true), "{f}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
                Frame::Data(_) => {}
                Frame::Closed(code) => {
                    view.lock().unwrap().close_codes.push(code);
                    if code.is_some_and(|c| (4000..4100).contains(&c)) {
                        // Protocol §7: 4000–4099 means do not reconnect.
                        return;
                    }
                    break;
                }
                Frame::Timeout => break,
            }
        }
        at = (at + 1) % urls.len();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The counts of one checked run: one row of the fault table.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub attempted: usize,
    pub acknowledged: usize,
    pub stored: usize,
    /// Acknowledged but not stored (or stored under another id).
    pub lost: usize,
    /// Extra stored copies of a client_msg_id.
    pub duplicated: usize,
    /// Stored rows whose content is not what was sent for their client_msg_id.
    pub overwritten: usize,
    /// Acknowledged messages missing from each reader.
    pub reader_missing: Vec<usize>,
    /// Whether the stored seqs are exactly 1..=n in id order.
    pub seq_gapless: bool,
    /// Writers whose messages are stored out of their sending order.
    pub out_of_order: usize,
}

impl Summary {
    /// The header of the fault table.
    pub const HEADER: &'static str = "| fault | attempted | acknowledged | stored | lost | duplicated | overwritten | acknowledged missing per reader |";

    /// The row of the closing note's fault table.
    pub fn row(&self, fault: &str) -> String {
        format!(
            "| {fault} | {} | {} | {} | {} | {} | {} | {:?} |",
            self.attempted,
            self.acknowledged,
            self.stored,
            self.lost,
            self.duplicated,
            self.overwritten,
            self.reader_missing
        )
    }

    /// Asserts what the protocol promises.
    pub fn assert_correct(&self, name: &str) {
        assert_eq!(self.lost, 0, "{name}: acknowledged but not stored");
        assert_eq!(self.duplicated, 0, "{name}: a client_msg_id stored twice");
        assert_eq!(
            self.overwritten, 0,
            "{name}: stored content differs from what was sent"
        );
        assert!(
            self.stored <= self.attempted,
            "{name}: more stored than attempted"
        );
        assert!(
            self.reader_missing.iter().all(|m| *m == 0),
            "{name}: readers miss acknowledged messages: {:?}",
            self.reader_missing
        );
        assert!(self.seq_gapless, "{name}: seq is not 1..=n in id order");
        assert_eq!(
            self.out_of_order, 0,
            "{name}: a writer's messages out of order"
        );
    }
}

/// What one run did: where, what the writers saw, what the readers hold.
pub struct Observed<'a> {
    pub key: &'a str,
    pub conversation: &'a str,
    pub history: &'a Mutex<History>,
    pub views: &'a [Arc<Mutex<ReaderView>>],
    pub attempted: usize,
}

/// Reads everything back from the store (through gateway `gw`) and compares it with what the
/// writers were acknowledged and what every reader holds (after waiting up to 30 s for the
/// readers to catch up). Prints the counts; returns them (call [`Summary::assert_correct`]).
pub async fn summarize(name: &str, c: &Cluster, gw: usize, run: &Observed<'_>) -> Summary {
    let Observed {
        key,
        conversation,
        history,
        views,
        attempted,
    } = *run;
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
    let stored = c.stored(gw, key, conversation).await;
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
    let stored_by_id: HashMap<&str, &Value> = stored
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m))
        .collect();
    let lost = acked
        .iter()
        .filter(|(cmid, id)| {
            stored_by_id
                .get(id.as_str())
                .is_none_or(|m| m["client_msg_id"] != json!(cmid))
        })
        .count();
    let overwritten = stored
        .iter()
        .filter(|m| m["text"] != m["client_msg_id"])
        .count();
    let seqs: Vec<u64> = stored
        .iter()
        .map(|m| m["seq"].as_u64().unwrap_or(0))
        .collect();
    let distinct: HashSet<&String> = stored_ids.iter().collect();
    let mut out_of_order = 0;
    let mut last: HashMap<&str, usize> = HashMap::new();
    for m in &stored {
        let cmid = m["client_msg_id"].as_str().unwrap_or_default();
        let Some((w, n)) = cmid.split_once('-') else {
            continue;
        };
        let n: usize = n.parse().unwrap_or(0);
        if let Some(prev) = last.insert(w, n) {
            if n <= prev {
                out_of_order += 1;
            }
        }
    }
    let h = history.lock().unwrap();
    let summary = Summary {
        attempted,
        acknowledged: acked.len(),
        stored: stored.len(),
        lost,
        duplicated: per_cmid.values().map(|n| n - 1).sum(),
        overwritten,
        reader_missing: views
            .iter()
            .map(|v| {
                let v = v.lock().unwrap();
                acked_ids
                    .iter()
                    .filter(|id| !v.messages.contains_key(**id))
                    .count()
            })
            .collect(),
        seq_gapless: distinct.len() == stored_ids.len()
            && seqs == (1..=stored.len() as u64).collect::<Vec<_>>(),
        out_of_order,
    };
    println!(
        "{name}: {attempted} numbered messages attempted, {} acknowledged ({} as duplicates of a retried send), {} retries {:?}; \
         store: {} messages, {} lost acknowledged, {} duplicated, {} overwritten, seq gapless: {}, {} out of sender order",
        summary.acknowledged,
        h.duplicate_acks,
        h.retries,
        h.errors,
        summary.stored,
        summary.lost,
        summary.duplicated,
        summary.overwritten,
        summary.seq_gapless,
        summary.out_of_order,
    );
    for (i, v) in views.iter().enumerate() {
        let v = v.lock().unwrap();
        println!(
            "{name}: reader {i}: {} messages held, {} acknowledged missing, {} redelivered frames dropped by id, {} reconnects, {} resubscribes after a gap, close codes {:?}",
            v.messages.len(),
            summary.reader_missing[i],
            v.redelivered,
            v.reconnects,
            v.resubscribes,
            v.close_codes
        );
    }
    summary
}

/// [`summarize`], then every reader must hold exactly the store's sequence, with the content
/// stored, and the run must be correct ([`Summary::assert_correct`]).
pub async fn check_history(name: &str, c: &Cluster, run: &Observed<'_>) -> Summary {
    let summary = summarize(name, c, 1 % c.gateways.len(), run).await;
    let (key, conversation, views) = (run.key, run.conversation, run.views);
    println!("{}", Summary::HEADER);
    println!("{}", summary.row(name));
    summary.assert_correct(name);
    let stored = c.stored(0, key, conversation).await;
    let expected: Vec<&str> = stored.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let cmids: HashMap<&str, &str> = stored
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap(),
                m["client_msg_id"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    for (i, v) in views.iter().enumerate() {
        let v = v.lock().unwrap();
        let seen: Vec<&str> = v.messages.keys().map(String::as_str).collect();
        assert_eq!(
            seen, expected,
            "{name}: reader {i} disagrees with the store"
        );
        for (id, cmid) in &v.messages {
            assert_eq!(
                cmids.get(id.as_str()).copied(),
                Some(cmid.as_str()),
                "{name}: reader {i} content"
            );
        }
    }
    summary
}

/// Numbered writers and protocol-following readers in one conversation of a fresh project:
/// the traffic of the Jepsen-style tests.
pub struct Workload {
    pub key: String,
    pub conversation: String,
    pub urls: Vec<String>,
    /// End-user tokens not used yet, for readers.
    spare_tokens: Vec<String>,
    pub history: Arc<Mutex<History>>,
    pub views: Vec<Arc<Mutex<ReaderView>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    writers: Vec<tokio::task::JoinHandle<usize>>,
    stop_writers: tokio::sync::watch::Sender<bool>,
    pause_writers: tokio::sync::watch::Sender<bool>,
    stop_readers: tokio::sync::watch::Sender<bool>,
    extra_attempted: std::sync::atomic::AtomicUsize,
}

impl Workload {
    /// Creates a project and a conversation of `writers + readers + later` end users, starts
    /// `readers` readers (reader i first on gateway i), then, once they are subscribed,
    /// `writers` writers (writer i first on gateway i). `later` tokens are kept for
    /// [`Workload::add_reader`].
    pub async fn start(
        c: &Cluster,
        name: &str,
        writers: usize,
        readers: usize,
        later: usize,
    ) -> Self {
        Self::start_with(
            c,
            name,
            writers,
            &vec![ReaderSpec::default(); readers],
            later,
        )
        .await
    }

    /// [`Workload::start`] with one reader per spec.
    pub async fn start_with(
        c: &Cluster,
        name: &str,
        writers: usize,
        readers: &[ReaderSpec],
        later: usize,
    ) -> Self {
        let t = c.tenant(name).await;
        let mut members = Vec::new();
        let mut tokens = Vec::new();
        for i in 0..writers + readers.len() + later {
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
            pause_writers: tokio::sync::watch::channel(false).0,
            stop_readers: tokio::sync::watch::channel(false).0,
            extra_attempted: Default::default(),
        };
        for (i, spec) in readers.iter().enumerate() {
            run.add_reader_with(i, *spec);
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
                run.pause_writers.subscribe(),
            )));
        }
        run
    }

    /// Starts another reader, first on gateway `start_at`; it replays the conversation from
    /// its start.
    pub fn add_reader(&mut self, start_at: usize) {
        self.add_reader_with(start_at, ReaderSpec::default());
    }

    pub fn add_reader_with(&mut self, start_at: usize, spec: ReaderSpec) {
        let token = self.spare_tokens.remove(0);
        self.add_reader_token(start_at, spec, token);
    }

    /// A reader with this token (e.g. a secret key: an agent).
    pub fn add_reader_token(&mut self, start_at: usize, spec: ReaderSpec, token: String) {
        let view = Arc::new(Mutex::new(ReaderView {
            cursor: ContiguousCursor::from_start(),
            ..ReaderView::default()
        }));
        self.readers.push(tokio::spawn(reader(
            self.urls.clone(),
            token,
            self.conversation.clone(),
            start_at,
            spec,
            view.clone(),
            self.stop_readers.subscribe(),
        )));
        self.views.push(view);
    }

    /// Pauses the writers after their current message (the conversation goes idle), or lets
    /// them go on.
    pub fn pause_writers(&self, paused: bool) {
        self.pause_writers.send_replace(paused);
    }

    /// Sends acknowledged so far.
    pub fn acked(&self) -> usize {
        self.history.lock().unwrap().acked.len()
    }

    /// Counts `n` messages sent into the conversation outside the writers (they are then
    /// expected in the store and in every reader too).
    pub fn add_attempted(&self, n: usize) {
        self.extra_attempted
            .fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops the writers and returns how many messages were attempted (theirs and
    /// [`Workload::add_attempted`]).
    pub async fn stop_writers(&mut self) -> usize {
        self.stop_writers.send_replace(true);
        self.pause_writers.send_replace(false);
        let mut attempted = self
            .extra_attempted
            .load(std::sync::atomic::Ordering::SeqCst);
        for w in self.writers.drain(..) {
            attempted += w.await.unwrap();
        }
        attempted
    }

    /// Stops the writers, checks the run ([`check_history`]), stops the readers and returns the
    /// counts and the readers' views.
    pub async fn finish(
        mut self,
        name: &str,
        c: &Cluster,
    ) -> (Summary, Vec<Arc<Mutex<ReaderView>>>) {
        let attempted = self.stop_writers().await;
        let summary = check_history(
            name,
            c,
            &Observed {
                key: &self.key,
                conversation: &self.conversation,
                history: &self.history,
                views: &self.views,
                attempted,
            },
        )
        .await;
        self.stop_readers.send_replace(true);
        for r in self.readers.drain(..) {
            r.await.unwrap();
        }
        (summary, self.views.clone())
    }
}
