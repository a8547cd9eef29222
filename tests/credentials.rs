//! Credentials do only what they are for: widget sessions only on the Widget API and the
//! socket (from their origin), end users cannot rewrite tenant-owned profile fields (in
//! tests/client_api.rs), new projects enforce identity verification, agent tokens act as one
//! agent with their scopes for as long as their key lives, and request bodies are JSON objects.

mod common;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use common::{Server, assert_error};

const SITE: &str = "https://shop.example.com";

async fn publishable_key(server: &Server, project: &str) -> String {
    let (s, k) = server
        .post(
            &format!("/api/admin/projects/{project}/api-keys"),
            &server.admin_token,
            json!({"name": "widget", "kind": "publishable"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    k["key"].as_str().unwrap().to_owned()
}

async fn init(server: &Server, pk: &str, body: Value) -> (StatusCode, Value) {
    let r = server
        .http
        .post(server.url(&format!("/widget/v1/init?key={pk}")))
        .header("origin", SITE)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn widget_sessions_are_refused_on_the_client_api() {
    let server = Server::start().await;
    let t = server.tenant("shop").await;
    let pk = publishable_key(&server, &t.project_id).await;
    let (s, _) = server
        .call(
            Method::PUT,
            &format!("/api/admin/projects/{}/widget", t.project_id),
            &server.admin_token,
            Some(json!({"allowed_origins": [SITE]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, session) = init(&server, &pk, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{session}");
    let token = session["session"]["token"].as_str().unwrap().to_owned();
    let me = session["user"]["id"].as_str().unwrap().to_owned();
    // It works where it belongs.
    let r = server
        .http
        .post(server.url(&format!("/widget/v1/messages?key={pk}")))
        .header("origin", SITE)
        .bearer_auth(&token)
        .json(&json!({"text": "hi", "client_msg_id": "w-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let conv = r.json::<Value>().await.unwrap()["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Nowhere on /api/v1, with or without the page's Origin.
    let probes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/api/v1/conversations".into(), None),
        (
            Method::POST,
            "/api/v1/conversations".into(),
            Some(json!({})),
        ),
        (Method::GET, format!("/api/v1/conversations/{conv}"), None),
        (
            Method::GET,
            format!("/api/v1/conversations/{conv}/messages"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/conversations/{conv}/messages"),
            Some(json!({"text": "via the client api"})),
        ),
        (Method::GET, format!("/api/v1/users/{me}"), None),
        (
            Method::PATCH,
            format!("/api/v1/users/{me}"),
            Some(json!({"name": "Admin"})),
        ),
    ];
    for origin in [None, Some(SITE)] {
        for (method, path, body) in &probes {
            let mut req = server
                .http
                .request(method.clone(), server.url(path))
                .bearer_auth(&token);
            if let Some(o) = origin {
                req = req.header("origin", o);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let r = req.send().await.unwrap();
            assert_eq!(
                r.status(),
                StatusCode::FORBIDDEN,
                "{method} {path} {origin:?}"
            );
            let b: Value = r.json().await.unwrap();
            assert_error(&b, "forbidden");
            assert!(
                b["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("/widget/v1"),
                "a clear message: {b}"
            );
        }
    }
    let (_, hist) = server
        .get(&format!("/api/v1/conversations/{conv}/messages"), &t.key)
        .await;
    assert_eq!(
        hist["data"].as_array().unwrap().len(),
        1,
        "nothing sent through /api/v1"
    );
    server.stop().await;
}

#[tokio::test]
async fn new_projects_enforce_identity_verification() {
    let server = Server::start().await;
    let t = server.tenant("new").await;
    let (_, w) = server
        .get(
            &format!("/api/admin/projects/{}/widget", t.project_id),
            &server.admin_token,
        )
        .await;
    assert_eq!(w["identity_verification"], "enforce", "{w}");
    // Configuring the widget without naming the mode keeps it.
    let (s, w) = server
        .call(
            Method::PUT,
            &format!("/api/admin/projects/{}/widget", t.project_id),
            &server.admin_token,
            Some(json!({"allowed_origins": [SITE], "title": "Support"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{w}");
    assert_eq!(w["identity_verification"], "enforce");
    let pk = publishable_key(&server, &t.project_id).await;
    // Anyone with the public key claiming to be alice: refused. Anonymous visitors: welcome.
    let (s, b) = init(&server, &pk, json!({"user": {"identifier": "alice"}})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    let (s, b) = init(&server, &pk, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // `report` stays available as a migration aid, and is kept once chosen.
    for mode in ["report", "off"] {
        let (s, w) = server
            .call(
                Method::PUT,
                &format!("/api/admin/projects/{}/widget", t.project_id),
                &server.admin_token,
                Some(json!({"allowed_origins": [SITE], "identity_verification": mode})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{w}");
        let (s, w) = server
            .call(
                Method::PUT,
                &format!("/api/admin/projects/{}/widget", t.project_id),
                &server.admin_token,
                Some(json!({"allowed_origins": [SITE]})),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(w["identity_verification"], mode);
    }
    server.stop().await;
}

async fn agent_token(server: &Server, key: &str, body: Value) -> (StatusCode, Value) {
    server.post("/api/v1/agent-tokens", key, body).await
}

#[tokio::test]
async fn agent_tokens_act_as_one_agent_with_their_scopes_while_their_key_lives() {
    let server = Server::start().await;
    let t = server.tenant("inbox").await;
    let (uid, user_token) = server.user(&t.key, "visitor").await;
    let conv = server.conversation(&t.key, &[&uid]).await;
    let issuer = server
        .key_with_id(&t.project_id, &["read", "write"], None)
        .await;
    let (s, tok) = agent_token(
        &server,
        &issuer.key,
        json!({"agent": {"id": "ana", "name": "Ana"}, "ttl_secs": 600}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{tok}");
    assert_eq!(tok["scopes"], json!(["read", "write"]));
    assert_eq!(
        tok["agent"],
        json!({"type": "agent", "id": "ana", "name": "Ana"})
    );
    let token = tok["token"].as_str().unwrap().to_owned();
    assert!(!token.starts_with("sk_live_"));
    // Client API: reads, sends as Ana (only as Ana), closes conversations; no tenant admin.
    assert_eq!(
        server.get("/api/v1/conversations", &token).await.0,
        StatusCode::OK
    );
    let m = server.send(&token, &conv, "Hello from Ana").await;
    assert_eq!(
        m["sender"],
        json!({"type": "agent", "id": "ana", "name": "Ana"})
    );
    let (s, b) = server
        .post(
            &format!("/api/v1/conversations/{conv}/messages"),
            &token,
            json!({"text": "as someone else", "sender": {"type": "agent", "id": "boss"}}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/users".to_owned(),
            Some(json!({"user_identifier": "x"})),
        ),
        (Method::DELETE, format!("/api/v1/users/{uid}"), None),
        (
            Method::POST,
            "/api/v1/agent-tokens".to_owned(),
            Some(json!({"agent": {"id": "eve"}})),
        ),
    ] {
        let (s, b) = server.call(method.clone(), &path, &token, body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path}: {b}");
    }
    let (s, _) = server
        .call(
            Method::DELETE,
            &format!("/api/v1/conversations/{conv}"),
            &token,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "agents close conversations");
    // The socket: an agent of the project, as Ana.
    let mut ws = server.ws().await;
    ws.send(json!({"type": "auth", "id": 1, "token": token}))
        .await;
    let ok = ws.recv().await;
    assert_eq!(ok["type"], "auth_ok", "{ok}");
    assert_eq!(ok["session"]["actor"]["id"], "ana");
    // End users and read-only keys cannot mint tokens; scopes never exceed the key's.
    let (s, _) = agent_token(&server, &user_token, json!({"agent": {"id": "x"}})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let reader = server.key(&t.project_id, &["read"], None).await;
    let (s, _) = agent_token(
        &server,
        &reader,
        json!({"agent": {"id": "x"}, "scopes": ["write"]}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, ro) = agent_token(&server, &reader, json!({"agent": {"id": "viewer"}})).await;
    assert_eq!(s, StatusCode::CREATED, "{ro}");
    assert_eq!(ro["scopes"], json!(["read"]));
    let ro = ro["token"].as_str().unwrap();
    let (s, _) = server
        .post(
            &format!("/api/v1/conversations/{conv}/messages"),
            ro,
            json!({"text": "read-only"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for bad in [
        json!({"agent": {"id": "has space"}}),
        json!({"agent": {"id": "a"}, "scopes": ["admin"]}),
        json!({"agent": {"id": "a"}, "ttl_secs": 0}),
    ] {
        let (s, b) = agent_token(&server, &issuer.key, bad.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {b}");
    }
    // Revoking the issuing key ends the token, on HTTP and on the open socket.
    server.revoke_key(&issuer.id).await;
    let (s, b) = server.get("/api/v1/conversations", &token).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    assert!(matches!(
        ws.closed(common::WAIT).await,
        common::Closed::Code(4001, _)
    ));
    server.stop().await;
}

#[tokio::test]
async fn bodies_must_be_json_objects_and_errors_name_the_field() {
    let server = Server::start().await;
    let t = server.tenant("original").await;
    let path = format!("/api/admin/projects/{}", t.project_id);
    // serde's derives would read this array as {name, plan, status}.
    let (s, b) = server
        .call(
            Method::PATCH,
            &path,
            &server.admin_token,
            Some(json!(["renamed", null, "suspended"])),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_error(&b, "invalid_payload");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("JSON object"),
        "{b}"
    );
    let (_, p) = server.get(&path, &server.admin_token).await;
    assert_eq!(p["name"], "original");
    assert_eq!(p["status"], "active");
    for (body, field) in [
        (json!({"name": 5}), "name"),
        (json!({"status": "paused"}), "status"),
        (json!({"nmae": "x"}), "nmae"),
    ] {
        let (s, b) = server
            .call(Method::PATCH, &path, &server.admin_token, Some(body))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(field),
            "{field}: {b}"
        );
    }
    // The Client API too.
    for body in [json!(["hello"]), json!("hello"), json!(42)] {
        let (s, b) = server
            .post("/api/v1/conversations", &t.key, body.clone())
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {b}");
    }
    let (s, b) = server
        .post(
            "/api/v1/conversations",
            &t.key,
            json!({"members": ["not-an-id"]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("members[0]"),
        "{b}"
    );
    server.stop().await;
}
