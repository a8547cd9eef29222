//! Durability through the real binary: every message acknowledged before a `SIGKILL` is there
//! after a restart, with exactly one `message.sent` event in the outbox; and `serve` killed
//! while it delivers webhooks to a real receiver (signatures verified by the `standardwebhooks`
//! PyPI package, `webhooks/tests/receiver.py`, `LARACHAT_WEBHOOKS_PYTHON`) delivers every
//! stored message's event after its restart.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use larachat_core::event::{ConsumerName, ConsumerOptions, EventData, EventLog};
use larachat_store::{SqliteConfig, SqliteStore};

use common::{ADMIN_EMAIL, ADMIN_PASSWORD};

/// A `larachat serve` child that is killed when dropped, so a failing test never leaves a
/// server behind (one holding the test's stderr would keep a CI pipe open).
struct Server(Child);

impl std::ops::Deref for Server {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `larachat serve` on a free port over `data_dir`; returns the child and base URL.
fn spawn_server(data_dir: &std::path::Path) -> (Server, String) {
    spawn_server_with(data_dir, &[])
}

/// [`spawn_server`] with extra environment (configuration) variables.
fn spawn_server_with(data_dir: &std::path::Path, env: &[(&str, &str)]) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_larachat"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .envs(env.iter().copied())
        .env("LARACHAT_ADMIN_EMAIL", ADMIN_EMAIL)
        .env("LARACHAT_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("LARACHAT_LOG", "warn")
        // The kill tests send thousands of messages: beyond the Free plan's monthly quota.
        .env("LARACHAT_DEFAULT_PROJECT_PLAN", "enterprise")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn larachat");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let base = line
        .trim()
        .strip_prefix("larachat listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    (Server(child), base)
}

async fn json_post(http: &reqwest::Client, url: String, token: &str, body: Value) -> Value {
    let r = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

/// The platform admin's token.
async fn admin_token(http: &reqwest::Client, base: &str) -> String {
    json_post(
        http,
        format!("{base}/api/admin/login"),
        "",
        json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Logs in as the platform admin, creates a project and returns a secret key of it.
async fn secret_key(http: &reqwest::Client, base: &str, project: &str) -> String {
    let admin = admin_token(http, base).await;
    let project = json_post(
        http,
        format!("{base}/api/admin/projects"),
        &admin,
        json!({ "name": project }),
    )
    .await;
    let pid = project["id"].as_str().unwrap();
    json_post(
        http,
        format!("{base}/api/admin/projects/{pid}/api-keys"),
        &admin,
        json!({"name":"k"}),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A conversation with one end user as its member; returns its id.
async fn conversation_with_a_member(http: &reqwest::Client, base: &str, key: &str) -> String {
    let user = json_post(
        http,
        format!("{base}/api/v1/users"),
        key,
        json!({"user_identifier":"u"}),
    )
    .await;
    let uid = user["user"]["id"].as_str().unwrap().to_owned();
    json_post(
        http,
        format!("{base}/api/v1/conversations"),
        key,
        json!({"members":[uid]}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Opens a socket with `key` and pipelines sends (`client_msg_id` `k<i>`, text `<label> <i>`)
/// into `conv` until the socket breaks; returns the writer task and the socket's frames.
async fn pipelined_sends(
    base: &str,
    key: &str,
    conv: &str,
    label: &'static str,
) -> (
    tokio::task::JoinHandle<()>,
    futures::stream::SplitStream<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    >,
) {
    let ws_url = format!("{}/realtime/v1", base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    ws.send(WsMessage::Text(
        json!({"type":"auth","token":key}).to_string().into(),
    ))
    .await
    .unwrap();
    let (mut sink, stream) = ws.split();
    let conv = conv.to_owned();
    let writer = tokio::spawn(async move {
        for i in 0..100_000u64 {
            let f = json!({"type":"send","id":i,"conversation_id":conv,
                "client_msg_id":format!("k{i}"),"text":format!("{label} {i}")});
            if sink
                .send(WsMessage::Text(f.to_string().into()))
                .await
                .is_err()
            {
                break;
            }
            if i % 16 == 15 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    (writer, stream)
}

/// The ids of every message stored in `conv`, paged through the Client API.
async fn stored_message_ids(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    conv: &str,
) -> std::collections::HashSet<String> {
    let mut stored = std::collections::HashSet::new();
    let mut after = "00000000-0000-0000-0000-000000000000".to_owned();
    loop {
        let page: Value = http
            .get(format!(
                "{base}/api/v1/conversations/{conv}/messages?limit=200&after={after}"
            ))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = page["data"].as_array().expect("data");
        for m in items {
            stored.insert(m["id"].as_str().unwrap().to_owned());
        }
        match items.last() {
            Some(last) if page["has_more"] == true => {
                after = last["id"].as_str().unwrap().to_owned()
            }
            _ => break,
        }
    }
    stored
}

#[tokio::test]
async fn acknowledged_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = spawn_server(dir.path());
    let http = reqwest::Client::new();
    let key = secret_key(&http, &base, "d").await;
    let conv = conversation_with_a_member(&http, &base, &key).await;

    // Pipeline sends over a socket and kill the server while acks are still arriving.
    let (writer, mut stream) = pipelined_sends(&base, &key, &conv, "durable").await;
    let mut acked = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, stream.next()).await {
        if let WsMessage::Text(t) = msg {
            let f: Value = serde_json::from_str(&t).unwrap();
            if f["type"] == "ack" {
                acked.push(f["message"]["id"].as_str().unwrap().to_owned());
                if acked.len() == 300 {
                    child.kill().expect("SIGKILL"); // std's kill() sends SIGKILL on Unix
                }
            }
        }
    }
    writer.abort();
    let _ = child.wait();
    assert!(
        acked.len() >= 300,
        "only {} acks before the kill",
        acked.len()
    );

    // Restart on the same data directory; every acked message must be there.
    let (mut child, base) = spawn_server(dir.path());
    let stored = stored_message_ids(&http, &base, &key, &conv).await;
    let missing: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    println!(
        "acked before SIGKILL: {}, stored after restart: {}, acked but missing: {}",
        acked.len(),
        stored.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged messages lost: {missing:?}"
    );
    let _ = child.kill();
    let _ = child.wait();

    // The event log, read from the same file once the server is gone: every stored message
    // has exactly one `message.sent` event (none lost, none doubled, none for a message that
    // was not stored), with the message's own values.
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("larachat.db"))).unwrap();
    let mut consumer = store
        .consumer(
            &ConsumerName::new("durability-test").unwrap(),
            ConsumerOptions::default(),
        )
        .await
        .unwrap();
    let mut sent: HashMap<String, usize> = HashMap::new();
    let mut events = 0usize;
    loop {
        let batch = consumer.fetch(1000, Duration::ZERO).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for d in batch {
            events += 1;
            if let EventData::MessageSent(m) = &d.event.data {
                assert_eq!(m.conversation_id.to_string(), conv);
                *sent.entry(m.message_id.to_string()).or_default() += 1;
            }
            d.ack().await.unwrap();
        }
    }
    let doubled = sent.values().filter(|n| **n > 1).count();
    let without_event = stored.iter().filter(|id| !sent.contains_key(*id)).count();
    let without_message = sent.keys().filter(|id| !stored.contains(*id)).count();
    println!(
        "event log after SIGKILL: {events} events, {} message.sent for {} stored messages \
         ({} acked); stored without event: {without_event}, event without message: \
         {without_message}, doubled: {doubled}",
        sent.values().sum::<usize>(),
        stored.len(),
        acked.len()
    );
    assert_eq!(without_event, 0, "a stored message has no event");
    assert_eq!(
        without_message, 0,
        "an event for a message that was not stored"
    );
    assert_eq!(doubled, 0, "a message has two events");
}

/// What the receiver has verified so far: per `webhook-id`, the message id of its body and how
/// many times it came.
#[derive(Default)]
struct Received {
    by_id: HashMap<String, (String, usize)>,
    lines: usize,
    bad: Vec<String>,
}

/// `serve` is SIGKILLed while it delivers `message.sent` webhooks to a real receiver under a
/// send load, and restarted on the same data directory: every stored message's event is
/// delivered (each acknowledged message is stored, see above), each `webhook-id` at least
/// once, and after de-duplication by `webhook-id` exactly once per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_deliveries_survive_sigkill() {
    use tokio::io::AsyncBufReadExt;

    // Loopback http receiver; a 1 s attempt timeout keeps the lease of a delivery that was
    // in flight at the kill short (3 × timeout + 30 s), so the test waits ~35 s, not ~60 s.
    // An attempt can still time out on a loaded machine; a 60 s retry horizon brings its
    // retries within seconds instead of the default schedule's 16 s, 47 s, 110 s, 237 s
    // (which once left 11 deliveries for after the test's 240 s wait).
    // Rate limits off: the load must outrun the deliveries.
    let env = [
        ("LARACHAT_WEBHOOKS__ALLOW_INSECURE_TARGETS", "true"),
        ("LARACHAT_WEBHOOKS__TIMEOUT_SECS", "1"),
        ("LARACHAT_WEBHOOKS__RETRY_HORIZON_SECS", "60"),
        ("LARACHAT_LIMITS__ENABLED", "false"),
        ("LARACHAT_REALTIME__MAX_FRAMES_PER_SEC", "1000000"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = spawn_server_with(dir.path(), &env);
    let http = reqwest::Client::new();
    let key = secret_key(&http, &base, "w").await;

    // Register the endpoint (the secret is shown once), then start the receiver with it and
    // point the endpoint at it.
    let created = json_post(
        &http,
        format!("{base}/api/v1/webhooks"),
        &key,
        json!({"url": "http://127.0.0.1:9/hook", "events": ["message.sent"]}),
    )
    .await;
    let hook = created["webhook"]["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let python = std::env::var("LARACHAT_WEBHOOKS_PYTHON").expect(
        "LARACHAT_WEBHOOKS_PYTHON is not set: a python with `standardwebhooks` \
         (scripts/test.sh creates ~/.cache/larachat/webhooks-venv)",
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/webhooks/tests/receiver.py");
    let mut receiver = tokio::process::Command::new(python)
        .args([script, "0", &secret, "bodies"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the python receiver");
    let mut lines = tokio::io::BufReader::new(receiver.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().expect("receiver started");
    let port: u16 = first["listening ".len()..].parse().expect("port");
    let r = http
        .patch(format!("{base}/api/v1/webhooks/{hook}"))
        .bearer_auth(&key)
        .json(&json!({"url": format!("http://127.0.0.1:{port}/hook")}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let received = Arc::new(Mutex::new(Received::default()));
    let arrived = Arc::new(Notify::new());
    let reader = {
        let (received, arrived) = (received.clone(), arrived.clone());
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut r = received.lock().unwrap();
                r.lines += 1;
                match line.strip_prefix("ok ").and_then(|l| l.split_once(' ')) {
                    Some((id, body)) => {
                        let body: Value = serde_json::from_str(body).expect("a JSON body");
                        let message = body["data"]["message_id"].as_str().unwrap().to_owned();
                        let entry = r.by_id.entry(id.to_owned()).or_insert((message.clone(), 0));
                        assert_eq!(entry.0, message, "one webhook-id, two messages");
                        entry.1 += 1;
                    }
                    None => r.bad.push(line),
                }
                drop(r);
                arrived.notify_waiters();
            }
        })
    };

    let conv = conversation_with_a_member(&http, &base, &key).await;

    // Send over a socket; once the receiver is receiving, kill the server mid-delivery while
    // acks are still arriving.
    let (writer, mut stream) = pipelined_sends(&base, &key, &conv, "hooked").await;
    let mut acked = 0usize;
    let mut at_kill = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, stream.next()).await {
        if let WsMessage::Text(t) = msg {
            let f: Value = serde_json::from_str(&t).unwrap();
            if f["type"] == "ack" {
                acked += 1;
                let got = received.lock().unwrap().by_id.len();
                if at_kill.is_none() && acked >= 2000 && got >= 200 {
                    child.kill().expect("SIGKILL"); // std's kill() sends SIGKILL on Unix
                    at_kill = Some((acked, got));
                }
            }
        }
    }
    writer.abort();
    let Some((acked_at_kill, received_at_kill)) = at_kill else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("never killed: {acked} acks");
    };
    let _ = child.wait();

    // Restart on the same data directory; list what was stored.
    let (mut child, base) = spawn_server_with(dir.path(), &env);
    let stored = stored_message_ids(&http, &base, &key, &conv).await;
    assert!(
        stored.len() >= acked,
        "stored {} < acked {acked}",
        stored.len()
    );

    // Wait (on the receiver's lines) until every stored message's event has arrived.
    let restarted = std::time::Instant::now();
    let missing = |r: &Received| {
        let delivered: std::collections::HashSet<&String> =
            r.by_id.values().map(|(m, _)| m).collect();
        stored.iter().filter(|m| !delivered.contains(m)).count()
    };
    // Generous: a delivery in flight at the kill waits out its lease (~33 s here) first.
    let waited = tokio::time::timeout(Duration::from_secs(240), async {
        loop {
            let notified = arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if missing(&received.lock().unwrap()) == 0 {
                return;
            }
            notified.await;
        }
    })
    .await;
    let missing_now = missing(&received.lock().unwrap());
    // What the deliveries log says about the missing ones (read without holding the lock
    // the receiver's reader needs).
    let why = if missing_now > 0 {
        delivery_log(&http, &base, &key, &hook).await
    } else {
        String::new()
    };
    let r = received.lock().unwrap();
    let unique = r.by_id.len();
    let duplicates = r.lines - r.bad.len() - unique;
    let messages: std::collections::HashSet<&String> = r.by_id.values().map(|(m, _)| m).collect();
    let unknown = messages.iter().filter(|m| !stored.contains(**m)).count();
    println!(
        "webhooks across SIGKILL: sent (acked) {acked} ({acked_at_kill} at the kill, \
         {received_at_kill} delivered by then), stored {}, received {} deliveries, unique \
         webhook-ids {unique}, duplicates {duplicates}, missing {missing_now}, bad signatures \
         {}; all delivered {:.1} s after the restart",
        stored.len(),
        r.lines,
        r.bad.len(),
        restarted.elapsed().as_secs_f64()
    );
    assert!(
        r.bad.is_empty(),
        "deliveries that failed verification: {:?}",
        r.bad
    );
    assert!(
        waited.is_ok(),
        "{missing_now} stored messages never delivered; {why}"
    );
    assert_eq!(missing_now, 0);
    assert_eq!(unknown, 0, "a delivery for a message that was not stored");
    assert_eq!(unique, stored.len(), "one webhook-id per stored message");
    drop(r);
    reader.abort();
    let _ = child.kill();
    let _ = child.wait();
}

/// What the deliveries log says, for a failure message: rows by status and by attempts made,
/// and the first rows not delivered with their attempts. Tells an event the consumer never
/// turned into a delivery (fewer rows than stored messages) from one waiting for a retry.
async fn delivery_log(http: &reqwest::Client, base: &str, key: &str, hook: &str) -> String {
    let mut by_status = std::collections::BTreeMap::<String, usize>::new();
    let mut by_attempts = std::collections::BTreeMap::<u64, usize>::new();
    let mut undelivered = Vec::new();
    let mut after = String::new();
    loop {
        let page = get_json(
            http,
            format!("{base}/api/v1/webhooks/{hook}/deliveries?limit=100{after}"),
            key,
        )
        .await;
        for d in page["data"].as_array().expect("data") {
            *by_status.entry(d["status"].to_string()).or_default() += 1;
            *by_attempts
                .entry(d["attempts"].as_u64().unwrap())
                .or_default() += 1;
            if d["status"] != "succeeded" && undelivered.len() < 20 {
                let id = d["event_id"].as_str().unwrap();
                let url = format!("{base}/api/v1/webhooks/{hook}/deliveries/{id}");
                let detail = get_json(http, url, key).await;
                undelivered.push(json!({"delivery": d, "attempts": detail["attempts"]}));
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => after = format!("&after={c}"),
            None => break,
        }
    }
    format!(
        "deliveries by status {by_status:?}, by attempts made {by_attempts:?}; \
         not delivered: {undelivered:#?}"
    )
}

/// A POST that may meet a dead server: `None` when it was not answered.
async fn try_post(
    http: &reqwest::Client,
    url: String,
    token: &str,
    body: &Value,
) -> Option<(reqwest::StatusCode, Value)> {
    let r = http
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .ok()?;
    let status = r.status();
    let text = r.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// POSTs `body` to the current server (`base`, which changes when the server restarts) until
/// it is answered with success; a request the killed server did not answer is sent again as
/// it was (same `client_msg_id`, same `user_identifier`) to the restarted one.
async fn post_until_answered(
    http: &reqwest::Client,
    base: &tokio::sync::watch::Receiver<String>,
    path: &str,
    token: &str,
    body: Value,
) -> Value {
    for _ in 0..1000 {
        let url = format!("{}{path}", *base.borrow());
        match try_post(http, url, token, &body).await {
            Some((s, v)) if s.is_success() => return v,
            Some((s, v)) => assert_eq!(v["error"]["retryable"], true, "{path}: {s} {v}"),
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{path}: no answer");
}

/// `GET` of a JSON page.
async fn get_json(http: &reqwest::Client, url: String, token: &str) -> Value {
    let r = http.get(url).bearer_auth(token).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

/// Usage equals what the store holds after `serve` is SIGKILLed mid-load and restarted on its
/// data: senders identify end users, create conversations and send messages; the server is
/// killed while they do and restarted; each sender sends its unanswered request again,
/// unchanged. Then the usage API's counts equal the store's, counted through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_equals_the_store_after_sigkill() {
    const SENDERS: usize = 4;
    const ROUNDS: usize = 3;
    const MESSAGES: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = spawn_server(dir.path());
    let http = reqwest::Client::new();
    let admin = admin_token(&http, &base).await;
    let project = json_post(
        &http,
        format!("{base}/api/admin/projects"),
        &admin,
        json!({"name": "usage", "plan": "pro"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = json_post(
        &http,
        format!("{base}/api/admin/projects/{project}/api-keys"),
        &admin,
        json!({"name": "k"}),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_owned();

    let (base_tx, base_rx) = tokio::sync::watch::channel(base.clone());
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let total = SENDERS * ROUNDS * MESSAGES;
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let (http, base, key, acked) = (http.clone(), base_rx.clone(), key.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut users = Vec::new();
            let mut messages = Vec::new();
            for r in 0..ROUNDS {
                let u = post_until_answered(
                    &http,
                    &base,
                    "/api/v1/users",
                    &key,
                    json!({"user_identifier": format!("u-{s}-{r}")}),
                )
                .await;
                let user = u["user"]["id"].as_str().unwrap().to_owned();
                let token = u["token"].as_str().unwrap().to_owned();
                let conv = post_until_answered(
                    &http,
                    &base,
                    "/api/v1/conversations",
                    &key,
                    json!({"members": [user]}),
                )
                .await["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                for i in 0..MESSAGES {
                    let cmid = format!("{s}-{r}-{i}");
                    let m = post_until_answered(
                        &http,
                        &base,
                        &format!("/api/v1/conversations/{conv}/messages"),
                        &token,
                        json!({"text": format!("message {cmid} ü"), "client_msg_id": cmid}),
                    )
                    .await;
                    messages.push(m["message"]["id"].as_str().unwrap().to_owned());
                    acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                users.push(user);
            }
            (users, messages)
        }));
    }
    while acked.load(std::sync::atomic::Ordering::Relaxed) < total / 3 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().expect("SIGKILL");
    let at_kill = acked.load(std::sync::atomic::Ordering::Relaxed);
    let _ = child.wait();
    let (_child, base) = spawn_server(dir.path());
    base_tx.send(base.clone()).expect("senders listen");
    let mut users = std::collections::HashSet::new();
    let mut acked_ids = std::collections::HashSet::new();
    for t in tasks {
        let (u, m) = t.await.expect("sender");
        users.extend(u);
        acked_ids.extend(m);
    }

    // The store, counted through the API.
    let mut conversations = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = get_json(
            &http,
            format!("{base}/api/v1/conversations?limit=200{cursor}"),
            &key,
        )
        .await;
        conversations.extend(page["data"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let mut stored = std::collections::HashSet::new();
    let mut bytes = 0u64;
    for c in &conversations {
        for m in c["members"].as_array().into_iter().flatten() {
            users.insert(m.as_str().unwrap().to_owned());
        }
        let conv = c["id"].as_str().unwrap();
        let mut after = "00000000-0000-0000-0000-000000000000".to_owned();
        loop {
            let page = get_json(
                &http,
                format!("{base}/api/v1/conversations/{conv}/messages?limit=200&after={after}"),
                &key,
            )
            .await;
            let items = page["data"].as_array().cloned().unwrap_or_default();
            for m in &items {
                if m["sender"]["kind"] == "end_user" {
                    users.insert(m["sender"]["id"].as_str().unwrap().to_owned());
                }
                bytes += common::metered_bytes(m);
                stored.insert(m["id"].as_str().unwrap().to_owned());
            }
            match items.last() {
                Some(last) if page["has_more"] == true => {
                    after = last["id"].as_str().unwrap().to_owned()
                }
                _ => break,
            }
        }
    }
    let lost = acked_ids.difference(&stored).count();
    assert_eq!(lost, 0, "every acknowledged message is stored");
    let truth = json!({
        "messages": stored.len(),
        "conversations": conversations.len(),
        "monthly_active_users": users.len(),
        "storage_bytes": bytes,
    });
    let u = get_json(
        &http,
        format!("{base}/api/admin/projects/{project}/usage"),
        &admin,
    )
    .await;
    let usage = json!({
        "messages": u["messages"]["used"],
        "conversations": u["conversations"]["used"],
        "monthly_active_users": u["monthly_active_users"]["used"],
        "storage_bytes": u["storage_bytes"]["used"],
    });
    println!("killed at {at_kill} of {total} acks; store {truth}; usage {usage}");
    assert_eq!(usage, truth, "usage equals the store after SIGKILL");
}
