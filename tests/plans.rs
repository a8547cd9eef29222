//! Plans and quotas through the real server: the message limit is exact at its edge over HTTP
//! and over the socket, the MAU and project limits refuse with `quota_exceeded`, retries count
//! nothing, and a plan change is picked up by the running gateway.

mod common;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use larachat_store::{SqliteConfig, SqliteStore, Store};

use common::Server;

/// Lowers the Free plan (the default of new projects here) to small limits.
async fn small_free(server: &Server, mau: u64, messages: u64) {
    let (s, plan) = server
        .call(
            Method::PATCH,
            "/api/admin/plans/free",
            &server.admin_token,
            Some(
                json!({"limits": {"monthly_active_users": mau, "messages_per_month": messages,
                                   "projects_per_owner": 1}}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{plan}");
}

async fn free_server() -> Server {
    Server::start_with(|c| {
        c.plans.default = larachat_core::plan::PlanId::free();
    })
    .await
}

fn assert_quota(status: StatusCode, body: &Value, what: &str) {
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    assert_eq!(body["error"]["retryable"], false, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(what), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_after_the_limit_is_refused_and_the_last_one_passes() {
    const LIMIT: u64 = 20;
    let server = free_server().await;
    small_free(&server, 100, LIMIT).await;
    let tenant = server.tenant("metered").await;
    let (user, token) = server.user(&tenant.key, "ada").await;
    let conv = server.conversation(&tenant.key, &[&user]).await;
    let path = format!("/api/v1/conversations/{conv}/messages");

    for i in 0..LIMIT {
        let (s, m) = server
            .post(
                &path,
                &tenant.key,
                json!({"text": format!("m{i}"), "client_msg_id": format!("c{i}")}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "message {} of {LIMIT}: {m}", i + 1);
    }
    let (s, refused) = server
        .post(&path, &tenant.key, json!({"text": "one too many"}))
        .await;
    assert_quota(s, &refused, &format!("allows {LIMIT} messages per month"));
    let reset = larachat_core::plan::Period::of(chrono::Utc::now()).resets_at();
    let reset = reset.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&reset),
        "{refused}"
    );

    // A retry of a stored message is answered with it, and counts nothing.
    let (s, retry) = server
        .post(
            &path,
            &tenant.key,
            json!({"text": "m3 again", "client_msg_id": "c3"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{retry}");
    assert_eq!(retry["duplicate"], true);

    // The socket refuses with an error frame and keeps the connection.
    let mut ws = server.ws_auth(&token).await;
    ws.send(json!({"type": "send", "id": 7, "conversation_id": conv,
                   "client_msg_id": "ws-1", "text": "over the socket"}))
        .await;
    let err = ws.recv().await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "quota_exceeded", "{err}");

    // Usage equals what is stored.
    let (s, page) = server.get(&format!("{path}?limit=100"), &tenant.key).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let stored = page["data"].as_array().unwrap().len() as u64;
    assert_eq!(stored, LIMIT);
    let (s, usage) = server
        .get(
            &format!("/api/admin/projects/{}/usage", tenant.project_id),
            &server.admin_token,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{usage}");
    assert_eq!(usage["messages"], json!({"used": stored, "limit": LIMIT}));
    assert_eq!(usage["conversations"]["used"], 1);
    assert_eq!(usage["monthly_active_users"]["used"], 1);
    // Storage: the UTF-8 bytes of each stored message's text and serialized metadata.
    let bytes: usize = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().len() + m["metadata"].to_string().len())
        .sum();
    assert_eq!(
        usage["storage_bytes"],
        json!({"used": bytes, "limit": null})
    );

    // Raising the limit takes effect on the running gateway at once.
    small_free(&server, 100, LIMIT + 1).await;
    ws.send(json!({"type": "send", "id": 8, "conversation_id": conv,
                   "client_msg_id": "ws-2", "text": "after the raise"}))
        .await;
    let frames = ws.recv_until("ack").await;
    let ack = frames.last().unwrap();
    assert_eq!(ack["id"], 8, "{frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_users_and_projects_are_limited() {
    const MAU: u64 = 3;
    let server = free_server().await;
    small_free(&server, MAU, 1000).await;
    let tenant = server.tenant("small").await;
    for i in 0..MAU {
        server.user(&tenant.key, &format!("user-{i}")).await;
    }
    // Identifying a counted user again is fine; a new one is not.
    server.user(&tenant.key, "user-0").await;
    let (s, refused) = server
        .post(
            "/api/v1/users",
            &tenant.key,
            json!({"user_identifier": "one-too-many"}),
        )
        .await;
    assert_quota(
        s,
        &refused,
        &format!("allows {MAU} monthly active end users"),
    );

    // Free allows one project per owner.
    let (s, second) = server
        .post(
            "/api/admin/projects",
            &server.admin_token,
            json!({"name": "second"}),
        )
        .await;
    assert_quota(s, &second, "allows 1 projects per owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monthly_usage_export_is_json_and_csv_paged_by_project() {
    let server = Server::start().await;
    let busy = server.tenant("=SUM(A1), Acme \"Inc\"").await;
    let idle = server.tenant("idle").await;
    let (ada, token) = server.user(&busy.key, "ada").await;
    let (bob, _) = server.user(&busy.key, "bob").await;
    // Ada sends with her own token, so she must be a member.
    let conversation = server
        .conversation(&busy.key, &[ada.as_str(), bob.as_str()])
        .await;
    for i in 0..3 {
        server.send(&token, &conversation, &format!("m{i}")).await;
    }
    let period = chrono::Utc::now().format("%Y-%m").to_string();

    let (s, all) = server
        .get(
            &format!("/api/admin/usage/export?period={period}&limit=100"),
            &server.admin_token,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{all}");
    assert_eq!(all["period"], period.as_str());
    assert_eq!(all["has_more"], false);
    let row = |id: &str| {
        all["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["project_id"] == id)
            .unwrap_or_else(|| panic!("{id} in {all}"))
            .clone()
    };
    let b = row(&busy.project_id);
    assert_eq!(b["messages"], 3, "{b}");
    assert_eq!(b["conversations"], 1, "{b}");
    // "m0", "m1", "m2" with metadata `{}`: 3 × (2 + 2) bytes.
    assert_eq!(b["storage_bytes"], 12, "{b}");
    assert_eq!(b["monthly_active_users"], 2, "{b}");
    assert_eq!(b["plan"], "enterprise");
    assert_eq!(b["messages_limit"], Value::Null, "enterprise is unlimited");
    let i = row(&idle.project_id);
    assert_eq!(i["messages"], 0, "{i}");

    // CSV, one project per page: the header, one line, and the next page's cursor.
    let page = |cursor: Option<String>| {
        let server = &server;
        let period = period.clone();
        async move {
            let mut url = format!("/api/admin/usage/export?period={period}&format=csv&limit=1");
            if let Some(c) = cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let r = server
                .http
                .get(server.url(&url))
                .bearer_auth(&server.admin_token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
            let next = r
                .headers()
                .get("x-next-cursor")
                .map(|v| v.to_str().unwrap().to_owned());
            (r.text().await.unwrap(), next)
        }
    };
    let mut cursor = None;
    let mut lines = Vec::new();
    loop {
        let (body, next) = page(cursor).await;
        let mut rows = body.lines();
        assert_eq!(
            rows.next(),
            Some(
                "period,project_id,project_name,owner_id,plan,monthly_active_users,\
                 monthly_active_users_limit,messages,messages_limit,conversations,storage_bytes,\
                 api_requests,peak_connections,period_end"
            )
        );
        lines.extend(rows.map(str::to_owned));
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(
        lines.len(),
        all["data"].as_array().unwrap().len(),
        "{lines:?}"
    );
    let busy_line = lines
        .iter()
        .find(|l| l.contains(&busy.project_id))
        .expect("the busy project's line");
    // A tenant's name is quoted (comma, quotes) and cannot run as a spreadsheet formula.
    assert!(
        busy_line.contains(",\"'=SUM(A1), Acme \"\"Inc\"\"\","),
        "{busy_line}"
    );
    assert!(busy_line.contains(",enterprise,2,,3,,1,12,"), "{busy_line}");

    for bad in ["format=xml", "period=2026-13", "limit=0", "limit=101"] {
        let (s, body) = server
            .get(
                &format!("/api/admin/usage/export?{bad}"),
                &server.admin_token,
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
    let (s, _) = server
        .get("/api/admin/usage/export?cursor=nope", &server.admin_token)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = server.get("/api/admin/usage/export", "not-a-token").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

/// Analytics through the real server: the platform admin reads a project's figures, and
/// `online_users` comes from the gateway's presence in the same process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_count_messages_and_online_users() {
    let server = Server::start().await;
    let tenant = server.tenant("watched").await;
    let (user, token) = server.user(&tenant.key, "ada").await;
    let conv = server.conversation(&tenant.key, &[&user]).await;
    server.send(&token, &conv, "hello?").await;
    let (s, _) = server
        .post(
            &format!("/api/v1/conversations/{conv}/messages"),
            &tenant.key,
            json!({"text": "hi, how can I help?", "sender": {"type": "agent", "id": "agent-1"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let _online = server.ws_auth(&token).await;

    let path = format!(
        "/api/admin/projects/{}/analytics?granularity=hour",
        tenant.project_id
    );
    let (s, a) = server.get(&path, &server.admin_token).await;
    assert_eq!(s, StatusCode::OK, "{a}");
    let total: u64 = a["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 2, "{a}");
    assert_eq!(a["active_conversations"], 1, "{a}");
    assert_eq!(a["conversations"]["open"], 1, "{a}");
    assert_eq!(a["first_response"]["count"], 1, "{a}");
    assert_eq!(
        a["online_users"],
        json!({"count": 1, "truncated": false}),
        "{a}"
    );
    assert_eq!(a["usage"]["messages"]["used"], 2, "{a}");

    let (s, e) = server
        .get(&format!("{path}&from=soon"), &server.admin_token)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
}

/// API requests and peak realtime connections are metered per project by the gateway and
/// written when it shuts down (as well as every few seconds): exact on one node. A request
/// that passed authentication counts whatever its answer; one that did not, does not; socket
/// frames are not requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_and_peak_connections_are_metered() {
    let server = Server::start().await;
    let tenant = server.tenant("busy").await;
    let quiet = server.tenant("quiet").await;
    let (user, token) = server.user(&tenant.key, "ada").await; // 1
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(server.ws_auth(&token).await);
    }
    let conv = server.conversation(&tenant.key, &[&user]).await; // 2
    for i in 0..5 {
        server.send(&token, &conv, &format!("m{i}")).await; // 3..=7
    }
    // Over the socket: a message, not a request.
    let ack = sockets[0]
        .send_message(1, &conv, "ws-1", "over the socket")
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let (s, _) = server
        .get(
            &format!("/api/v1/conversations/{conv}/messages"),
            &tenant.key,
        )
        .await; // 8
    assert_eq!(s, StatusCode::OK);
    let missing = uuid::Uuid::now_v7();
    let (s, _) = server
        .get(&format!("/api/v1/conversations/{missing}"), &tenant.key)
        .await; // 9: answered 404, still a request
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = server
        .get(&format!("/api/v1/conversations/{conv}"), "sk_live_forged")
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "not a request of any project");
    drop(sockets);

    let project = |id: &str| larachat_core::id::ProjectId::from_uuid(id.parse().unwrap());
    let (busy, quiet) = (project(&tenant.project_id), project(&quiet.project_id));
    let dir = server.stop_keep_data().await;
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("larachat.db"))).unwrap();
    let month = larachat_core::plan::Period::of(chrono::Utc::now());
    let used = store.usage(busy, month).await.unwrap();
    assert_eq!(
        (used.api_requests, used.peak_connections),
        (9, 3),
        "{used:?}"
    );
    assert_eq!(used.messages, 6);
    let none = store.usage(quiet, month).await.unwrap();
    assert_eq!((none.api_requests, none.peak_connections), (0, 0));
}
