//! Every write path of the server — Client API, realtime socket — goes through the service
//! layer and leaves exactly its domain events in the event log, in order, with the values the
//! client saw. Read from the database the stopped server left.

mod common;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use larachat_core::event::{
    ConsumerName, ConsumerOptions, DomainEvent, EventData, EventKind, EventLog,
};
use larachat_store::{SqliteConfig, SqliteStore};

use common::Server;

/// The events of one project in the database of a stopped server, in log order.
async fn project_events(dir: &tempfile::TempDir, project: &str) -> Vec<DomainEvent> {
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("larachat.db"))).unwrap();
    let mut consumer = store
        .consumer(
            &ConsumerName::new("events-test").unwrap(),
            ConsumerOptions::default(),
        )
        .await
        .unwrap();
    let mut events = Vec::new();
    loop {
        let batch = consumer.fetch(100, Duration::ZERO).await.unwrap();
        if batch.is_empty() {
            return events;
        }
        for d in batch {
            if d.event.project_id.to_string() == project {
                events.push(d.event.clone());
            }
            d.ack().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_and_socket_change_is_in_the_event_log() {
    let server = Server::start().await;
    let tenant = server.tenant("events").await;
    let key = tenant.key.as_str();
    let (user, user_token) = server.user(key, "ada").await;
    // Identified again, same profile: no event.
    server.user(key, "ada").await;
    let conv = server.conversation(key, &[&user]).await;
    let http_msg = server.send(key, &conv, "over http").await;
    let mut ws = server.ws_auth(&user_token).await;
    let ack = ws.send_message(7, &conv, "c-7", "over the socket").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    // A retry of the same client_msg_id: no second event.
    let again = ws.send_message(8, &conv, "c-7", "over the socket").await;
    assert_eq!(again["message"]["id"], ack["message"]["id"]);
    let ws_msg_id = ack["message"]["id"].as_str().unwrap().to_owned();
    let (s, _) = server
        .post(
            &format!("/api/v1/conversations/{conv}/read"),
            key,
            json!({"message_id": ws_msg_id}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // Refused input changes nothing and logs nothing.
    let (s, _) = server
        .post(
            &format!("/api/v1/conversations/{conv}/messages"),
            key,
            json!({"text": "   "}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = server
        .call(
            Method::PATCH,
            &format!("/api/v1/conversations/{conv}"),
            key,
            Some(json!({"subject": "renamed"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = server
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{user}"),
            key,
            Some(json!({"email": "ada@example.com"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = server
        .call(
            Method::DELETE,
            &format!("/api/v1/conversations/{conv}"),
            key,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    drop(ws);
    let dir = server.stop_keep_data().await;
    let events = project_events(&dir, &tenant.project_id).await;
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind()).collect();
    println!("events of the project: {kinds:?}");
    assert_eq!(
        kinds,
        [
            EventKind::UserCreated,
            EventKind::ConversationCreated,
            EventKind::MessageSent,
            EventKind::MessageSent,
            EventKind::MessageRead,
            EventKind::ConversationUpdated,
            EventKind::UserUpdated,
            EventKind::ConversationClosed,
        ]
    );
    match (&events[2].data, &events[3].data) {
        (EventData::MessageSent(a), EventData::MessageSent(b)) => {
            assert_eq!(a.message_id.to_string(), http_msg["id"].as_str().unwrap());
            assert_eq!(a.text, "over http");
            assert_eq!(b.message_id.to_string(), ws_msg_id);
            assert_eq!(b.client_msg_id.as_deref(), Some("c-7"));
            assert_eq!(b.sender.id, user);
            assert_eq!((a.seq, b.seq), (1, 2));
        }
        other => panic!("{other:?}"),
    }
}

/// The Widget API's changes go through the same path: a visitor is created, their first
/// message starts the conversation, a read moves the marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_changes_are_in_the_event_log() {
    const SITE: &str = "https://shop.example";
    let server = Server::start().await;
    let tenant = server.tenant("widget-events").await;
    let (s, k) = server
        .post(
            &format!("/api/admin/projects/{}/api-keys", tenant.project_id),
            &server.admin_token,
            json!({"name": "widget", "kind": "publishable"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    let pk = k["key"].as_str().unwrap().to_owned();
    let (s, w) = server
        .call(
            Method::PUT,
            &format!("/api/admin/projects/{}/widget", tenant.project_id),
            &server.admin_token,
            Some(json!({"allowed_origins": [SITE]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{w}");
    let widget = |method: Method, path: &str, token: Option<&str>, body: serde_json::Value| {
        let mut req = server
            .http
            .request(method, server.url(&format!("{path}?key={pk}")))
            .header("origin", SITE)
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let init: serde_json::Value = widget(Method::POST, "/widget/v1/init", None, json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = init["session"]["token"]
        .as_str()
        .expect("session")
        .to_owned();
    let visitor = init["user"]["id"].as_str().unwrap().to_owned();
    let r = widget(
        Method::POST,
        "/widget/v1/messages",
        Some(&token),
        json!({"text": "hello from the widget", "client_msg_id": "w-1"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let sent: serde_json::Value = r.json().await.unwrap();
    let message_id = sent["message"]["id"].as_str().unwrap().to_owned();
    let r = widget(
        Method::POST,
        "/widget/v1/events",
        Some(&token),
        json!({"type": "read", "message_id": message_id}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let dir = server.stop_keep_data().await;
    let events = project_events(&dir, &tenant.project_id).await;
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind()).collect();
    println!("widget events: {kinds:?}");
    assert_eq!(
        kinds,
        [
            EventKind::UserCreated,
            EventKind::ConversationCreated,
            EventKind::MessageSent,
            EventKind::MessageRead,
        ]
    );
    match (&events[0].data, &events[1].data, &events[2].data) {
        (
            EventData::UserCreated(u),
            EventData::ConversationCreated(c),
            EventData::MessageSent(m),
        ) => {
            assert!(u.is_anonymous);
            assert_eq!(u.user_id.to_string(), visitor);
            assert_eq!(c.metadata["source"], "widget");
            assert_eq!(c.members, vec![u.user_id]);
            assert_eq!(m.message_id.to_string(), message_id);
            assert_eq!(m.conversation_id, c.conversation_id);
        }
        other => panic!("{other:?}"),
    }
}
