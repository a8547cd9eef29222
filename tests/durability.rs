//! Durability through the real binary: every message acknowledged before a `SIGKILL` is there
//! after a restart, with exactly one `message.sent` event in the outbox.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use larachat_core::event::{ConsumerName, ConsumerOptions, EventData, EventLog};
use larachat_store::{SqliteConfig, SqliteStore};

use common::{ADMIN_EMAIL, ADMIN_PASSWORD};

/// Starts `larachat serve` on a free port over `data_dir`; returns the child and base URL.
fn spawn_server(data_dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_larachat"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("LARACHAT_ADMIN_EMAIL", ADMIN_EMAIL)
        .env("LARACHAT_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("LARACHAT_LOG", "warn")
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
    (child, base)
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

#[tokio::test]
async fn acknowledged_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = spawn_server(dir.path());
    let http = reqwest::Client::new();
    let login = json_post(
        &http,
        format!("{base}/api/admin/login"),
        "",
        json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}),
    )
    .await;
    let admin = login["token"].as_str().unwrap().to_owned();
    let project = json_post(
        &http,
        format!("{base}/api/admin/projects"),
        &admin,
        json!({"name":"d"}),
    )
    .await;
    let pid = project["id"].as_str().unwrap();
    let key = json_post(
        &http,
        format!("{base}/api/admin/projects/{pid}/api-keys"),
        &admin,
        json!({"name":"k"}),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let user = json_post(
        &http,
        format!("{base}/api/v1/users"),
        &key,
        json!({"user_identifier":"u"}),
    )
    .await;
    let uid = user["user"]["id"].as_str().unwrap().to_owned();
    let conv = json_post(
        &http,
        format!("{base}/api/v1/conversations"),
        &key,
        json!({"members":[uid]}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Pipeline sends over a socket and kill the server while acks are still arriving.
    let ws_url = format!("{}/realtime/v1", base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    ws.send(WsMessage::Text(
        json!({"type":"auth","token":key}).to_string().into(),
    ))
    .await
    .unwrap();
    let (mut sink, mut stream) = ws.split();
    let conv2 = conv.clone();
    let writer = tokio::spawn(async move {
        for i in 0..100_000u64 {
            let f = json!({"type":"send","id":i,"conversation_id":conv2,
                "client_msg_id":format!("k{i}"),"text":format!("durable {i}")});
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
    let mut stored = std::collections::HashSet::new();
    let mut after = "00000000-0000-0000-0000-000000000000".to_owned();
    loop {
        let page: Value = http
            .get(format!(
                "{base}/api/v1/conversations/{conv}/messages?limit=200&after={after}"
            ))
            .bearer_auth(&key)
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
