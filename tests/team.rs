//! Team members through the whole server (`larachat::run_server`, single node): an invited
//! agent logs in with its own password, gets an agent token from the Admin API, answers a
//! visitor's conversation on the Client API and the socket — and is refused as soon as its
//! membership is removed; its sockets close at the role change or removal, not at a heartbeat.

mod common;

use reqwest::{Method, StatusCode};
use serde_json::json;

use common::{Server, assert_error};

#[tokio::test]
async fn an_invited_agent_answers_until_removed() {
    // A heartbeat (credential re-check) far beyond the waits below: only the control notice
    // can close the sockets in time.
    let server = Server::start_with(|c| c.realtime.heartbeat_secs = 3600).await;
    let t = server.tenant("team").await;
    let (uid, _user_token) = server.user(&t.key, "visitor").await;
    let conv = server.conversation(&t.key, &[&uid]).await;

    // The owner (the bootstrap admin) invites an agent, who joins with its own password.
    let (s, inv) = server
        .post(
            &format!("/api/admin/projects/{}/invites", t.project_id),
            &server.admin_token,
            json!({"email": "ana@example.com", "role": "agent"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{inv}");
    assert!(
        inv["url"]
            .as_str()
            .unwrap()
            .contains("/dashboard/#/invite/")
    );
    let r = server
        .http
        .post(server.url("/api/admin/invites/accept"))
        .json(&json!({"token": inv["token"], "name": "Ana", "password": "ana's own password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let accepted: serde_json::Value = r.json().await.unwrap();
    let ana_id = accepted["user"]["id"].as_str().unwrap().to_owned();
    let (s, login) = common::call(
        &server.http,
        Method::POST,
        &server.url("/api/admin/login"),
        None,
        Some(json!({"email": "ana@example.com", "password": "ana's own password"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{login}");
    let ana = login["token"].as_str().unwrap().to_owned();

    // An agent: no keys, but an agent token.
    let (s, _) = server
        .get(
            &format!("/api/admin/projects/{}/api-keys", t.project_id),
            &ana,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, tok) = server
        .post(
            &format!("/api/admin/projects/{}/agent-token", t.project_id),
            &ana,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{tok}");
    let token = tok["token"].as_str().unwrap().to_owned();
    let me = json!({"type": "agent", "id": format!("member:{ana_id}"), "name": "Ana"});

    // It answers the visitor, over HTTP and on the socket, as Ana.
    let m = server.send(&token, &conv, "Hello, Ana here").await;
    assert_eq!(m["sender"], me);
    let mut ws = server.ws().await;
    ws.send(json!({"type": "auth", "id": 1, "token": token}))
        .await;
    let ok = ws.recv().await;
    assert_eq!(ok["type"], "auth_ok", "{ok}");
    assert_eq!(ok["session"]["actor"], me);
    // Not another project's conversations.
    let other = server.tenant("elsewhere").await;
    let (ouid, _) = server.user(&other.key, "v2").await;
    let other_conv = server.conversation(&other.key, &[&ouid]).await;
    let (s, _) = server
        .post(
            &format!("/api/v1/conversations/{other_conv}/messages"),
            &token,
            json!({"text": "wrong project"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Its role lowered (admin, then agent again): its socket closes at once; a fresh
    // connection works, the member is still in the project.
    let role = |r: &'static str| {
        let (server, path) = (
            &server,
            format!("/api/admin/projects/{}/members/{ana_id}", t.project_id),
        );
        async move {
            let (s, b) = server
                .call(
                    Method::PATCH,
                    &path,
                    &server.admin_token,
                    Some(json!({ "role": r })),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{b}");
        }
    };
    role("admin").await;
    let mut ws = server.ws_auth(&token).await;
    role("agent").await;
    match ws.closed(common::WAIT).await {
        common::Closed::Code(4001, reason) => assert_eq!(reason, "credentials revoked"),
        other => panic!("closed without 4001: {other:?}"),
    }
    let mut ws = server.ws_auth(&token).await;

    // Removed: the token is refused at once on HTTP, and the socket closes at once.
    let (s, b) = server
        .call(
            Method::DELETE,
            &format!("/api/admin/projects/{}/members/{ana_id}", t.project_id),
            &server.admin_token,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let (s, b) = server
        .post(
            &format!("/api/v1/conversations/{conv}/messages"),
            &token,
            json!({"text": "still here?"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    assert_error(&b, "unauthorized");
    assert!(matches!(
        ws.closed(common::WAIT).await,
        common::Closed::Code(4001, _)
    ));
    let (s, _) = server
        .post(
            &format!("/api/admin/projects/{}/agent-token", t.project_id),
            &ana,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no longer a member");
    server.stop().await;
}
