//! Rate limits at the edge, against a real server on loopback: per API key and per client IP
//! with `429`, `Retry-After` and `RateLimit-*`; login per IP and per account; widget session
//! starts per IP and per project; messages per sender over the widget and the socket, with a
//! retry hint; per-project overrides. Budgets are made small so each test sends a few dozen
//! requests, and refill slowly (per hour) so that a slow machine never sees a refill in the
//! middle of a count; the counts until the first refusal are printed (`--nocapture`).

mod common;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use common::{ADMIN_EMAIL, Server, assert_error};
use larachat_limits::config::Per;
use larachat_limits::{LimitsConfig, Rule};

const SITE: &str = "https://shop.example.com";

/// Limits where every bucket is roomy, then the test shrinks the one it tests.
fn roomy() -> LimitsConfig {
    let big = Rule::new(100_000, Per::Minute, 10_000);
    LimitsConfig {
        ip: big,
        api_key: big,
        end_user: big,
        project: big,
        login_ip: big,
        login_account: big,
        widget_init_ip: big,
        widget_init_project: big,
        messages: big,
        trusted_proxies: vec!["127.0.0.1".to_owned().try_into().unwrap()],
        // No per-plan rules unless a test sets them: the rule a test shrinks applies.
        plans: Default::default(),
        ..LimitsConfig::default()
    }
}

async fn start(tweak: impl FnOnce(&mut LimitsConfig)) -> Server {
    let mut limits = roomy();
    tweak(&mut limits);
    Server::start_with(move |c| c.limits = limits).await
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Sends until the first 429 (at most `max`); returns how many passed and the refusal.
async fn until_429(
    max: usize,
    mut send: impl AsyncFnMut() -> reqwest::Response,
) -> (usize, reqwest::Response) {
    for passed in 0..max {
        let r = send().await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            return (passed, r);
        }
        assert!(r.status().is_success(), "request {passed}: {}", r.status());
    }
    panic!("no 429 within {max} requests");
}

async fn assert_429(r: reqwest::Response, limit: u32) -> Value {
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    assert_eq!(header(&r, "ratelimit-limit").unwrap(), limit.to_string());
    assert_eq!(header(&r, "ratelimit-remaining").unwrap(), "0");
    let reset: u64 = header(&r, "ratelimit-reset").unwrap().parse().unwrap();
    assert!(reset >= retry, "reset {reset} < retry-after {retry}");
    let body: Value = r.json().await.unwrap();
    assert_error(&body, "rate_limited");
    assert_eq!(body["error"]["retryable"], true);
    body
}

#[tokio::test]
async fn api_keys_get_429_with_rate_limit_headers_after_their_budget() {
    let server = start(|l| l.api_key = Rule::new(1, Per::Hour, 5)).await;
    let t = server.tenant("limited").await;
    let get = |key: String| {
        server
            .http
            .get(server.url("/api/v1/conversations"))
            .bearer_auth(key)
            .send()
    };
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let r = get(t.key.clone()).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "ratelimit-limit").as_deref(), Some("5"));
        assert!(header(&r, "ratelimit-reset").is_some());
        remaining.push(header(&r, "ratelimit-remaining").unwrap());
    }
    assert_eq!(remaining, ["4", "3", "2", "1", "0"]);
    let refused = get(t.key.clone()).await.unwrap();
    let body = assert_429(refused, 5).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API key"),
        "{body}"
    );
    // Writes too; and another key of the same project has its own budget.
    let (s, _) = server
        .post(
            "/api/v1/conversations",
            &t.key,
            json!({"subject": "refused"}),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    let other = server.key(&t.project_id, &["read"], None).await;
    let (passed, _) = until_429(20, async || get(other.clone()).await.unwrap()).await;
    println!("requests until 429 per API key: {passed} (burst 5)");
    assert_eq!(passed, 5);
    server.stop().await;
}

#[tokio::test]
async fn the_per_ip_limit_comes_before_authentication_and_trusts_only_proxies() {
    let server = start(|l| l.ip = Rule::new(1, Per::Hour, 10)).await;
    // Admin login and tenant setup went through 127.0.0.1 without X-Forwarded-For; the
    // clients below come through the trusted proxy (127.0.0.1) as other addresses.
    let t = server.tenant("ip").await;
    let from = |ip: &'static str, token: &'static str| {
        server
            .http
            .get(server.url("/api/v1/conversations"))
            .header("x-forwarded-for", ip)
            .bearer_auth(token)
            .send()
    };
    // Bad credentials count: the address is refused before any key lookup.
    let mut passed = 0;
    let refused = loop {
        let r = from("203.0.113.7", "sk_live_not-a-key").await.unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            break r;
        }
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        passed += 1;
        assert!(passed <= 30, "never throttled");
    };
    println!("requests until 429 per IP: {passed} (burst 10)");
    assert_eq!(passed, 10);
    assert_429(refused, 10).await;
    // The same address with a valid key: still refused. Another address: served.
    let r = server
        .http
        .get(server.url("/api/v1/conversations"))
        .header("x-forwarded-for", "203.0.113.7")
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = server
        .http
        .get(server.url("/api/v1/conversations"))
        .header("x-forwarded-for", "203.0.113.8")
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Operations endpoints are never limited.
    for _ in 0..20 {
        let r = server
            .http
            .get(server.url("/live"))
            .header("x-forwarded-for", "203.0.113.7")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    server.stop().await;

    // Without trusted proxies, X-Forwarded-For is the client's word and is ignored: the
    // peer (127.0.0.1) is limited whatever it claims.
    let server = Server::start_with(|c| {
        c.limits = roomy();
        c.limits.trusted_proxies.clear();
        c.limits.ip = Rule::new(1, Per::Hour, 10);
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        let r = server
            .http
            .get(server.url("/api/admin/me"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .bearer_auth(&server.admin_token)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    // One request (the harness's login) was already taken from 127.0.0.1's budget.
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        9,
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&429));
    server.stop().await;
}

#[tokio::test]
async fn logins_are_throttled_per_ip_and_per_account_with_retry_after() {
    let server = start(|l| {
        l.login_account = Rule::new(30, Per::Hour, 4);
        l.login_ip = Rule::new(1, Per::Hour, 6);
    })
    .await;
    let login = |ip: String, email: String| {
        server
            .http
            .post(server.url("/api/admin/login"))
            .header("x-forwarded-for", ip)
            .json(&json!({"email": email, "password": "wrong password!"}))
            .send()
    };
    // One account, attempts from many addresses: the account's budget holds. The harness
    // already logged in once as this admin.
    let mut statuses = Vec::new();
    for i in 0..6 {
        let r = login(format!("198.51.100.{i}"), ADMIN_EMAIL.to_uppercase())
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            let body = assert_429(r, 4).await;
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("account")
            );
            let retry_after_secs = 120; // 30/h: one attempt every 2 minutes
            println!(
                "wrong passwords until 429 per account: {} (burst 4, one used by the harness login; then one per {retry_after_secs} s)",
                statuses.len() - 1
            );
            break;
        }
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 429],
        "the case of the e-mail does not matter"
    );
    // Even the right password waits now: the throttle comes before the check.
    let r = server
        .http
        .post(server.url("/api/admin/login"))
        .header("x-forwarded-for", "198.51.100.99")
        .json(&json!({"email": ADMIN_EMAIL, "password": common::ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);

    // One address, many accounts: the address's budget holds.
    let mut n = 0;
    let refused = loop {
        let r = login("203.0.113.50".into(), format!("user{n}@example.com"))
            .await
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            break r;
        }
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        n += 1;
        assert!(n <= 10, "never throttled");
    };
    println!("login attempts until 429 per IP: {n} (burst 6)");
    assert_eq!(n, 6);
    let body = assert_429(refused, 6).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("address")
    );
    server.stop().await;
}

/// A project whose widget runs on SITE; returns (project id, publishable key).
async fn widget_project(server: &Server, name: &str) -> (String, String) {
    let t = server.tenant(name).await;
    let (s, k) = server
        .post(
            &format!("/api/admin/projects/{}/api-keys", t.project_id),
            &server.admin_token,
            json!({"name": "widget", "kind": "publishable"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = server
        .call(
            Method::PUT,
            &format!("/api/admin/projects/{}/widget", t.project_id),
            &server.admin_token,
            Some(json!({"allowed_origins": [SITE]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    (t.project_id, k["key"].as_str().unwrap().to_owned())
}

async fn widget_init(server: &Server, pk: &str, ip: &str) -> reqwest::Response {
    server
        .http
        .post(server.url(&format!("/widget/v1/init?key={pk}")))
        .header("origin", SITE)
        .header("x-forwarded-for", ip)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn widget_inits_are_throttled_per_ip_and_per_project() {
    let server = start(|l| {
        l.widget_init_ip = Rule::new(1, Per::Hour, 3);
        l.widget_init_project = Rule::new(1, Per::Hour, 5);
    })
    .await;
    let (_, pk) = widget_project(&server, "shop").await;
    let mut n = 0;
    let refused = loop {
        let r = widget_init(&server, &pk, "203.0.113.1").await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            break r;
        }
        assert_eq!(r.status(), StatusCode::OK);
        n += 1;
        assert!(n <= 10);
    };
    println!("widget inits until 429 per IP: {n} (burst 3)");
    assert_eq!(n, 3);
    assert_eq!(
        header(&refused, "access-control-allow-origin").as_deref(),
        Some(SITE),
        "the page can read the refusal"
    );
    assert_429(refused, 3).await;
    // Other addresses: the project's budget (5) is shared.
    let mut statuses = Vec::new();
    for ip in ["203.0.113.2", "203.0.113.3", "203.0.113.4"] {
        statuses.push(widget_init(&server, &pk, ip).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429], "3 + 2 = the project's 5");
    // Another project is not affected.
    let (_, other) = widget_project(&server, "other").await;
    assert_eq!(
        widget_init(&server, &other, "203.0.113.9").await.status(),
        StatusCode::OK
    );
    server.stop().await;
}

#[tokio::test]
async fn messages_are_throttled_per_sender_on_the_widget_and_the_socket() {
    let server = start(|l| l.messages = Rule::new(60, Per::Hour, 3)).await;
    let (_, pk) = widget_project(&server, "chatty").await;
    let r = widget_init(&server, &pk, "203.0.113.1").await;
    let session: Value = r.json().await.unwrap();
    let token = session["session"]["token"].as_str().unwrap().to_owned();
    let send = |i: usize| {
        server
            .http
            .post(server.url(&format!("/widget/v1/messages?key={pk}")))
            .header("origin", SITE)
            .bearer_auth(&token)
            .json(&json!({"text": format!("hello {i}"), "client_msg_id": format!("w-{i}")}))
            .send()
    };
    let mut n = 0;
    let refused = loop {
        let r = send(n).await.unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            break r;
        }
        assert_eq!(r.status(), StatusCode::CREATED);
        n += 1;
        assert!(n <= 10);
    };
    println!("widget messages until 429 per sender: {n} (burst 3)");
    assert_eq!(n, 3);
    let body = assert_429(refused, 3).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages")
    );

    // The socket: an end user's sends beyond the budget get `rate_limited` with a retry hint,
    // and the connection stays open.
    let t = server.tenant("socket").await;
    let (uid, user_token) = server.user(&t.key, "talker").await;
    let conv = server.conversation(&t.key, &[&uid]).await;
    let mut ws = server.ws_auth(&user_token).await;
    let mut acks = 0;
    let mut error = Value::Null;
    for i in 1..=6u64 {
        let reply = ws.send_message(i, &conv, &format!("s-{i}"), "hi").await;
        if reply["type"] == "ack" {
            acks += 1;
        } else {
            error = reply;
            break;
        }
    }
    println!("socket messages until rate_limited per sender: {acks} (burst 3)");
    assert_eq!(acks, 3);
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["code"], "rate_limited");
    assert_eq!(error["retryable"], true);
    let hint = error["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(
        (1..=60_000).contains(&hint),
        "60/h: at most a minute, got {hint}"
    );
    ws.send(json!({"type": "ping", "id": 77})).await;
    assert_eq!(ws.recv_until_id(77).await.last().unwrap()["type"], "pong");
    // Another sender in the same conversation is not slowed down.
    let (_, hist) = server
        .get(&format!("/api/v1/conversations/{conv}/messages"), &t.key)
        .await;
    assert_eq!(
        hist["data"].as_array().unwrap().len(),
        3,
        "only accepted messages stored"
    );
    let agent = server.send(&t.key, &conv, "agents are not end users").await;
    assert_eq!(agent["sender"]["type"], "agent");
    server.stop().await;
}

#[tokio::test]
async fn projects_can_override_their_limits() {
    let server = start(|l| l.project = Rule::new(60, Per::Minute, 1000)).await;
    let t = server.tenant("plan").await;
    // A malformed section is refused by the Admin API, naming it.
    let (s, b) = server
        .call(
            Method::PATCH,
            &format!("/api/admin/projects/{}", t.project_id),
            &server.admin_token,
            Some(json!({"settings": {"limits": {"project": {"rate": "fast", "burst": 3}}}})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("settings.limits")
    );
    let (s, b) = server
        .call(
            Method::PATCH,
            &format!("/api/admin/projects/{}", t.project_id),
            &server.admin_token,
            Some(json!({"settings": {"limits": {"project": {"rate": "1/h", "burst": 3}}}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (passed, refused) = until_429(10, async || {
        server
            .http
            .get(server.url("/api/v1/conversations"))
            .bearer_auth(&t.key)
            .send()
            .await
            .unwrap()
    })
    .await;
    assert_eq!(passed, 3, "the project's own rule");
    let body = assert_429(refused, 3).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("project")
    );
    // Other projects keep the configured rule.
    let other = server.tenant("default plan").await;
    for _ in 0..5 {
        assert_eq!(
            server.get("/api/v1/conversations", &other.key).await.0,
            StatusCode::OK
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn plans_set_the_rules_of_their_projects_and_a_plan_change_applies() {
    let server = start(|l| {
        l.plans.insert(
            "starter".into(),
            larachat_limits::ProjectLimits {
                api_key: Some(Rule::new(1, Per::Hour, 4)),
                ..Default::default()
            },
        );
    })
    .await;
    let get = |key: String| {
        let server = &server;
        async move {
            server
                .http
                .get(server.url("/api/v1/conversations"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
        }
    };
    // Projects start on enterprise here (tests/common): no rule of its own, the configured one.
    let t = server.tenant("moves to starter").await;
    let r = get(t.key.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "ratelimit-limit").as_deref(), Some("10000"));
    let (s, b) = server
        .call(
            Method::PATCH,
            &format!("/api/admin/projects/{}", t.project_id),
            &server.admin_token,
            Some(json!({"plan": "starter"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // The plan change reaches the gateway's cache (project_changed): the plan's rule now.
    let key = server.key(&t.project_id, &["read"], None).await;
    let (passed, refused) = until_429(10, async || get(key.clone()).await).await;
    println!("requests until 429 on the starter plan's api_key rule: {passed} (burst 4)");
    assert_eq!(passed, 4, "the plan's api_key rule");
    let body = assert_429(refused, 4).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API key")
    );
    // The project's own settings come before its plan's.
    let (s, b) = server
        .call(
            Method::PATCH,
            &format!("/api/admin/projects/{}", t.project_id),
            &server.admin_token,
            Some(json!({"settings": {"limits": {"api_key": {"rate": "1/h", "burst": 7}}}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let own = server.key(&t.project_id, &["read"], None).await;
    let (passed, _) = until_429(20, async || get(own.clone()).await).await;
    assert_eq!(passed, 7, "the project's own rule over its plan's");
    server.stop().await;
}
