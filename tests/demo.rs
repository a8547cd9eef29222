//! The demo never puts a secret key in a page: the agent view gets a short-lived agent token
//! for the demo project, only on this machine (loopback peer and Host, no proxy headers, a
//! loopback Origin for the token); and the demo is off on a non-loopback listen address
//! unless enabled.

mod common;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tower::ServiceExt;

use common::Server;
use larachat::config::DemoEnabled;

async fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = server.http.get(server.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

async fn token(server: &Server, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = server.http.post(server.url("/demo/agent/token"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn no_secret_key_in_any_demo_page_and_the_agent_gets_a_token_on_this_machine_only() {
    let server = Server::start_with(|c| c.demo.enabled = DemoEnabled::On).await;
    for path in [
        "/demo",
        "/demo/agent",
        "/demo/agent.js",
        "/widget/widget.js",
    ] {
        let r = get(&server, path, &[]).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let text = r.text().await.unwrap();
        assert!(!text.contains("sk_live_"), "{path} holds a secret key");
    }
    let origin = server.base.clone();
    let r = token(&server, &[("origin", &origin)]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let t: Value = r.json().await.unwrap();
    let agent_token = t["token"].as_str().unwrap().to_owned();
    assert!(!agent_token.contains("sk_live_"));
    let expires: chrono::DateTime<chrono::Utc> = t["expires_at"].as_str().unwrap().parse().unwrap();
    let ttl = expires - chrono::Utc::now();
    assert!(
        ttl <= chrono::Duration::minutes(15) && ttl > chrono::Duration::minutes(10),
        "{ttl}"
    );
    // The token works as the demo agent on the demo project, Client API and socket.
    let (s, b) = server.get("/api/v1/conversations", &agent_token).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let mut ws = server.ws().await;
    ws.send(json!({"type": "auth", "id": 1, "token": agent_token}))
        .await;
    let ok = ws.recv().await;
    assert_eq!(ok["type"], "auth_ok", "{ok}");
    assert_eq!(ok["session"]["actor"]["id"], "demo-agent");

    // Through a reverse proxy, or for another Host: no page, no token.
    for headers in [
        &[("host", "chat.example.com")][..],
        &[("x-forwarded-for", "203.0.113.5")][..],
        &[("forwarded", "for=203.0.113.5")][..],
        &[("x-real-ip", "203.0.113.5")][..],
    ] {
        let r = get(&server, "/demo/agent", headers).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "page {headers:?}");
        let mut with_origin = headers.to_vec();
        with_origin.push(("origin", &origin));
        let r = token(&server, &with_origin).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "token {headers:?}");
    }
    // A page of another site (or no Origin at all) cannot mint one.
    for o in [
        None,
        Some("https://evil.example"),
        Some("http://127.0.0.1.evil.example"),
    ] {
        let headers: Vec<(&str, &str)> = o.map(|o| ("origin", o)).into_iter().collect();
        assert_eq!(
            token(&server, &headers).await.status(),
            StatusCode::FORBIDDEN,
            "{o:?}"
        );
    }
    server.stop().await;
}

/// Builds a `serve` process as if it listened on `listen` (not bound) and asks for `/demo`.
async fn demo_status(listen: &str, enabled: DemoEnabled) -> StatusCode {
    let dir = tempfile::tempdir().unwrap();
    let mut config = larachat::Config::default();
    config.storage.data_dir = dir.path().to_path_buf();
    config.storage.sqlite_synchronous = "normal".into();
    config.demo.enabled = enabled;
    let app = larachat::App::build(config, listen.parse().unwrap())
        .await
        .unwrap();
    let req = axum::http::Request::get("/demo")
        .body(axum::body::Body::empty())
        .unwrap();
    let status = app.router.clone().oneshot(req).await.unwrap().status();
    if let Some(gw) = &app.gateway {
        gw.shutdown(std::time::Duration::from_secs(1)).await;
    }
    status
}

#[tokio::test]
async fn the_demo_is_off_on_a_public_address_unless_enabled() {
    assert_eq!(
        demo_status("127.0.0.1:8080", DemoEnabled::Auto).await,
        StatusCode::OK
    );
    assert_eq!(
        demo_status("0.0.0.0:8080", DemoEnabled::Auto).await,
        StatusCode::NOT_FOUND,
        "auto: off on every interface"
    );
    assert_eq!(
        demo_status("192.0.2.10:8080", DemoEnabled::Auto).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        demo_status("0.0.0.0:8080", DemoEnabled::On).await,
        StatusCode::OK
    );
    assert_eq!(
        demo_status("127.0.0.1:8080", DemoEnabled::Off).await,
        StatusCode::NOT_FOUND
    );
}
