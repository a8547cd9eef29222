//! Every write path of the server — Client API, realtime socket — goes through the service
//! layer and leaves exactly its domain events in the event log, in order, with the values the
//! client saw. Read from the database the stopped server left.

mod common;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use larachat_core::event::{ConsumerName, ConsumerOptions, EventData, EventKind, EventLog};
use larachat_store::{SqliteConfig, SqliteStore};

use common::Server;

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
            break;
        }
        for d in batch {
            if d.event.project_id.to_string() == tenant.project_id {
                events.push(d.event.clone());
            }
            d.ack().await.unwrap();
        }
    }
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
