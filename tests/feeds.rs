//! Live feeds and presence on a single node (`serve`: SQLite + the in-process bus): an end
//! user's own feed (conversations created and changed, unread counts), the agents' inbox feed
//! (new conversations, message previews, changes and assignments, presence), who may watch
//! what, and presence with its debounce (protocol §3.4, §3.5). Across two gateways over NATS:
//! tests/cluster.rs.

mod common;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use common::*;

/// Receives until a frame of type `ty` arrives, skipping others.
async fn next_of(ws: &mut Ws, ty: &str) -> Value {
    loop {
        let f = ws.recv().await;
        if f["type"] == ty {
            return f;
        }
    }
}

async fn watch(ws: &mut Ws, feed: &str) -> Value {
    ws.send(json!({"type": "watch", "id": 7, "feed": feed}))
        .await;
    ws.recv_until_id(7).await.pop().expect("reply")
}

async fn fast_presence() -> Server {
    Server::start_with(|c| {
        c.realtime.presence_debounce_ms = 400;
        c.realtime.presence_heartbeat_ms = 100;
        c.realtime.presence_ttl_ms = 1000;
    })
    .await
}

#[tokio::test]
async fn user_feed_brings_new_and_changed_conversations_and_exact_unread_counts() {
    let s = Server::start().await;
    let t = s.tenant("feed").await;
    let (alice, alice_token) = s.user(&t.key, "alice").await;
    let mut phone = s.ws_auth(&alice_token).await;
    assert_eq!(watch(&mut phone, "user").await["type"], "watching");

    // Started by the tenant: no subscription needed to hear about it.
    let conv = s.conversation(&t.key, &[&alice]).await;
    let f = next_of(&mut phone, "conversation_created").await;
    assert_eq!(f["conversation"]["id"], json!(conv), "{f}");

    // Two agent messages: unread 1, then 2 (head seq minus read seq).
    let m1 = s.send(&t.key, &conv, "first").await;
    let f = next_of(&mut phone, "unread").await;
    assert_eq!(
        (
            f["conversation_id"].clone(),
            f["head_seq"].clone(),
            f["read_seq"].clone(),
            f["unread"].clone()
        ),
        (json!(conv), json!(1), json!(0), json!(1)),
        "{f}"
    );
    s.send(&t.key, &conv, "second").await;
    let f = next_of(&mut phone, "unread").await;
    assert_eq!(
        (f["head_seq"].clone(), f["unread"].clone()),
        (json!(2), json!(1 + 1)),
        "{f}"
    );

    // Read on another device: the phone hears its new count.
    let mut laptop = s.ws_auth(&alice_token).await;
    laptop
        .send(json!({"type": "read", "id": 3, "conversation_id": conv, "message_id": m1["id"]}))
        .await;
    assert_eq!(laptop.recv_until_id(3).await.pop().unwrap()["type"], "ok");
    let f = next_of(&mut phone, "unread").await;
    assert_eq!(
        (
            f["head_seq"].clone(),
            f["read_seq"].clone(),
            f["unread"].clone()
        ),
        (json!(2), json!(1), json!(1)),
        "{f}"
    );

    // Started by alice herself on the laptop: the phone hears of it.
    let (st, mine) = s
        .post(
            "/api/v1/conversations",
            &alice_token,
            json!({"subject": "mine"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{mine}");
    let f = next_of(&mut phone, "conversation_created").await;
    assert_eq!(f["conversation"]["id"], mine["id"], "{f}");

    // Closed by the tenant: conversation_updated with the new status.
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("/api/v1/conversations/{conv}"),
            &t.key,
            None,
        )
        .await;
    assert!(st.is_success());
    let f = next_of(&mut phone, "conversation_updated").await;
    assert_eq!(f["conversation"]["status"], "closed", "{f}");

    // Someone else's conversation never reaches alice's feed: the next feed event is hers.
    let (bob, _) = s.user(&t.key, "bob").await;
    s.conversation(&t.key, &[&bob]).await;
    let third = s.conversation(&t.key, &[&alice]).await;
    let f = next_of(&mut phone, "conversation_created").await;
    assert_eq!(f["conversation"]["id"], json!(third), "{f}");
}

#[tokio::test]
async fn inbox_feed_previews_messages_and_changes_and_only_agents_of_the_project_watch_it() {
    let s = Server::start().await;
    let t = s.tenant("inbox").await;
    let other = s.tenant("other").await;
    let (alice, alice_token) = s.user(&t.key, "alice").await;

    let mut agent = s.ws_auth(&t.key).await;
    assert_eq!(watch(&mut agent, "inbox").await["type"], "watching");
    let mut foreign = s.ws_auth(&other.key).await;
    assert_eq!(watch(&mut foreign, "inbox").await["type"], "watching");

    // Authorization: an end user cannot watch the inbox nor ask who is online; an agent has
    // no user feed.
    let mut user_ws = s.ws_auth(&alice_token).await;
    let e = watch(&mut user_ws, "inbox").await;
    assert_eq!(
        (e["type"].clone(), e["code"].clone()),
        (json!("error"), json!("forbidden")),
        "{e}"
    );
    user_ws
        .send(json!({"type": "who_is_online", "id": 8}))
        .await;
    let e = user_ws.recv_until_id(8).await.pop().unwrap();
    assert_eq!(e["code"], "forbidden", "{e}");
    let e = watch(&mut agent, "user").await;
    assert_eq!(e["code"], "forbidden", "{e}");
    user_ws
        .send(json!({"type": "watch", "id": 9, "feed": "bogus"}))
        .await;
    let e = user_ws.recv().await;
    assert_eq!(e["code"], "invalid_payload", "{e}");

    // A widget-style start by the end user, then a long message: created + preview.
    let (st, conv) = s
        .post(
            "/api/v1/conversations",
            &alice_token,
            json!({"subject": "help"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let f = next_of(&mut agent, "conversation_created").await;
    assert_eq!(f["conversation"]["id"], conv["id"], "{f}");
    let conv = conv["id"].as_str().unwrap().to_owned();
    let long = "é".repeat(300);
    let m = s.send(&alice_token, &conv, &long).await;
    let f = next_of(&mut agent, "message_preview").await;
    assert_eq!(f["conversation_id"], json!(conv));
    assert_eq!(f["message_id"], m["id"]);
    assert_eq!(f["seq"], json!(1));
    assert_eq!(f["sender"]["id"], json!(alice));
    assert_eq!(f["truncated"], json!(true));
    assert_eq!(f["text"].as_str().unwrap().chars().count(), 140);
    // Status change.
    let (st, _) = s
        .call(
            Method::PATCH,
            &format!("/api/v1/conversations/{conv}"),
            &t.key,
            Some(json!({"status": "closed"})),
        )
        .await;
    assert!(st.is_success());
    let f = next_of(&mut agent, "conversation_updated").await;
    assert_eq!(f["conversation"]["status"], "closed", "{f}");

    // The other project's inbox heard none of it: its first event is its own conversation.
    let (carol, _) = s.user(&other.key, "carol").await;
    let own = s.conversation(&other.key, &[&carol]).await;
    let f = next_of(&mut foreign, "conversation_created").await;
    assert_eq!(f["conversation"]["id"], json!(own), "{f}");
}

#[tokio::test]
async fn inbox_and_member_feeds_see_assignment_changes_live() {
    let s = Server::start().await;
    let t = s.tenant("assign").await;
    let (alice, alice_token) = s.user(&t.key, "alice").await;
    let conv = s.conversation(&t.key, &[&alice]).await;
    let mut inbox = s.ws_auth(&t.key).await;
    assert_eq!(watch(&mut inbox, "inbox").await["type"], "watching");
    let mut phone = s.ws_auth(&alice_token).await;
    assert_eq!(watch(&mut phone, "user").await["type"], "watching");

    // An agent (with its own token, as an inbox page holds) assigns the conversation to itself.
    let (st, issued) = s
        .post(
            "/api/v1/agent-tokens",
            &t.key,
            json!({"agent": {"id": "ana@acme", "name": "Ana"}}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{issued}");
    let ana = issued["token"].as_str().unwrap().to_owned();
    let patch = |body: Value| {
        let (s, conv, ana) = (&s, conv.clone(), ana.clone());
        async move {
            s.call(
                Method::PATCH,
                &format!("/api/v1/conversations/{conv}"),
                &ana,
                Some(body),
            )
            .await
        }
    };
    let (st, body) = patch(json!({"assignee": "ana@acme"})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    for ws in [&mut inbox, &mut phone] {
        let f = next_of(ws, "conversation_updated").await;
        assert_eq!(f["conversation"]["id"], json!(conv), "{f}");
        assert_eq!(f["conversation"]["assignee"], "ana@acme", "{f}");
    }

    // Unassigned: the frame says so (null), it does not just leave the field out.
    let (st, body) = patch(json!({"assignee": null})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let f = next_of(&mut inbox, "conversation_updated").await;
    assert_eq!(f["conversation"]["id"], json!(conv), "{f}");
    assert_eq!(f["conversation"]["assignee"], Value::Null, "{f}");
    assert!(
        f["conversation"]
            .as_object()
            .unwrap()
            .contains_key("assignee"),
        "{f}"
    );
}

#[tokio::test]
async fn presence_goes_online_survives_a_quick_reconnect_and_goes_offline_after_the_debounce() {
    let s = fast_presence().await;
    let t = s.tenant("presence").await;
    let other = s.tenant("presence-other").await;
    let (alice, alice_token) = s.user(&t.key, "alice").await;
    let mut agent = s.ws_auth(&t.key).await;
    watch(&mut agent, "inbox").await;

    let first = s.ws_auth(&alice_token).await;
    let f = next_of(&mut agent, "presence").await;
    assert_eq!(
        (f["user_id"].clone(), f["status"].clone()),
        (json!(alice), json!("online")),
        "{f}"
    );

    // Who is online: over the socket and over HTTP; end users and other projects see nothing.
    agent.send(json!({"type": "who_is_online", "id": 9})).await;
    let o = agent.recv_until_id(9).await.pop().unwrap();
    assert_eq!(o["type"], "online", "{o}");
    assert_eq!(o["users"][0]["user_id"], json!(alice), "{o}");
    assert_eq!(o["truncated"], json!(false));
    let (st, list) = s.get("/api/v1/presence", &t.key).await;
    assert_eq!(st, StatusCode::OK, "{list}");
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["user_id"] == json!(alice)),
        "{list}"
    );
    let (st, e) = s.get("/api/v1/presence", &alice_token).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{e}");
    let (st, list) = s.get("/api/v1/presence", &other.key).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["data"], json!([]), "{list}");

    // A quick reconnect (closed, reopened well within the debounce) makes no flap; a second
    // device then closes too. After the last one closes: offline, and nothing before it.
    drop(first);
    let second = s.ws_auth(&alice_token).await;
    let third = s.ws_auth(&alice_token).await;
    // Longer than the debounce plus a beat: a flap would have been announced by now.
    tokio::time::sleep(Duration::from_millis(900)).await;
    drop(second);
    drop(third);
    let f = next_of(&mut agent, "presence").await;
    assert_eq!(
        (f["user_id"].clone(), f["status"].clone()),
        (json!(alice), json!("offline")),
        "{f}"
    );
    let (_, list) = s.get("/api/v1/presence", &t.key).await;
    assert_eq!(list["data"], json!([]), "{list}");
}
