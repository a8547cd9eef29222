//! The Widget API against a real server: publishable keys, origin allow-lists and CORS,
//! visitor sessions, identity verification, messages and events, origin-bound sockets.

mod common;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use common::{Closed, Server, Tenant, WAIT};

const SITE: &str = "https://shop.example.com";
const OTHER_SITE: &str = "https://blog.example.com";

struct Widget {
    tenant: Tenant,
    pk: String,
    secret: String,
}

/// A tenant with a publishable key whose widget is allowed on SITE and OTHER_SITE.
async fn widget(server: &Server, verification: &str) -> Widget {
    let tenant = server.tenant("shop").await;
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
            reqwest::Method::PUT,
            &format!("/api/admin/projects/{}/widget", tenant.project_id),
            &server.admin_token,
            Some(
                json!({"allowed_origins": [SITE, OTHER_SITE], "identity_verification": verification,
                "title": "Shop support"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{w}");
    let secret = w["identity_secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64);
    Widget { tenant, pk, secret }
}

/// A widget request from `origin`.
async fn wcall(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    pk: &str,
    origin: Option<&str>,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut req = server
        .http
        .request(method, server.url(&format!("{path}{sep}key={pk}")));
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

async fn init(server: &Server, pk: &str, origin: &str, body: Value) -> (StatusCode, Value) {
    let r = wcall(
        server,
        reqwest::Method::POST,
        "/widget/v1/init",
        pk,
        Some(origin),
        None,
        Some(body),
    )
    .await;
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

fn hmac_hex(key: &str, msg: &str) -> String {
    // HMAC-SHA256 via the server's own helper would hide a bug in it; compute independently.
    use std::fmt::Write;
    let mac = hmac_sha256(key.as_bytes(), msg.as_bytes());
    mac.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A tiny HMAC-SHA256 on top of jsonwebtoken's HS256 signature (base64url of the MAC).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let sig = jsonwebtoken::crypto::sign(
        msg,
        &jsonwebtoken::EncodingKey::from_secret(key),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    b64url_decode(&sig)
}

fn b64url_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'-' => 62,
            _ => 63,
        }
    };
    let bytes: Vec<u32> = s.bytes().filter(|&c| c != b'=').map(val).collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, v)| acc | (v << (18 - 6 * i)));
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

#[tokio::test]
async fn cors_answers_only_listed_origins_exactly() {
    let server = Server::start().await;
    let w = widget(&server, "off").await;
    // Preflight from an allowed origin.
    let r = wcall(
        &server,
        reqwest::Method::OPTIONS,
        "/widget/v1/init",
        &w.pk,
        Some(SITE),
        None,
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["access-control-allow-origin"], SITE);
    assert!(r.headers().get_all("vary").iter().any(|v| v == "Origin"));
    assert!(
        r.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    // Foreign, look-alike, null and missing origins: refused. A refused preflight has no
    // CORS header (the browser never sends the JSON request); a refused simple request
    // (the widget's diagnostic probe) is readable by its origin, and says only why.
    for origin in [
        Some("https://evil.example.com"),
        Some("https://shop.example.com.evil.com"),
        Some("https://shop.example.com:8443"),
        Some("http://shop.example.com"),
        Some("null"),
        None,
    ] {
        for method in [reqwest::Method::OPTIONS, reqwest::Method::POST] {
            let r = wcall(
                &server,
                method.clone(),
                "/widget/v1/init",
                &w.pk,
                origin,
                None,
                Some(json!({})),
            )
            .await;
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin:?} {method}");
            let acao = r.headers().get("access-control-allow-origin").cloned();
            if method == reqwest::Method::OPTIONS || matches!(origin, None | Some("null")) {
                assert!(acao.is_none(), "{origin:?} {method}");
            } else {
                assert_eq!(acao.unwrap(), origin.unwrap(), "{method}");
                let b: Value = r.json().await.unwrap();
                let msg = b["error"]["message"].as_str().unwrap();
                assert!(msg.contains("is not in the allowed origins"), "{msg}");
                assert!(
                    !msg.contains(OTHER_SITE),
                    "the allow-list is not shown: {msg}"
                );
            }
        }
    }
    // Compared normalised: what a browser could send for an allowed origin is allowed.
    for origin in ["https://SHOP.example.com", "https://shop.example.com:443"] {
        let r = wcall(
            &server,
            reqwest::Method::OPTIONS,
            "/widget/v1/init",
            &w.pk,
            Some(origin),
            None,
            None,
        )
        .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{origin}");
        assert_eq!(r.headers()["access-control-allow-origin"], origin);
    }
    // A same-origin GET (browsers omit Origin there) is recognised by Sec-Fetch-Site + Host;
    // without Sec-Fetch-Site it stays refused.
    let (_, session) = init(&server, &w.pk, SITE, json!({})).await;
    let token = session["session"]["token"].as_str().unwrap().to_owned();
    let same_origin = |fetch_site: Option<&str>| {
        let mut req = server
            .http
            .get(server.url(&format!("/widget/v1/messages?key={}", w.pk)))
            .header("host", "shop.example.com")
            .header("x-forwarded-proto", "https")
            .bearer_auth(&token);
        if let Some(f) = fetch_site {
            req = req.header("sec-fetch-site", f);
        }
        req.send()
    };
    assert_eq!(
        same_origin(Some("same-origin")).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        same_origin(Some("cross-site")).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        same_origin(None).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    // Wrong keys.
    let r = wcall(
        &server,
        reqwest::Method::POST,
        "/widget/v1/init",
        &w.tenant.key,
        Some(SITE),
        None,
        Some(json!({})),
    )
    .await;
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "a secret key is not a widget key"
    );
    let r = server
        .http
        .post(server.url("/widget/v1/init"))
        .header("origin", SITE)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "missing key");
    // The real request from an allowed origin carries the CORS headers too.
    let r = wcall(
        &server,
        reqwest::Method::POST,
        "/widget/v1/init",
        &w.pk,
        Some(SITE),
        None,
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["access-control-allow-origin"], SITE);
    server.stop().await;
}

#[tokio::test]
async fn anonymous_visitors_come_back_as_themselves() {
    let server = Server::start().await;
    let w = widget(&server, "enforce").await; // anonymous visitors need no proof
    let (s, first) = init(&server, &w.pk, SITE, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert_eq!(first["user"]["is_anonymous"], true);
    assert_eq!(first["settings"]["title"], "Shop support");
    assert_eq!(first["realtime_url"], "/realtime/v1");
    assert!(first["conversation"].is_null());
    let visitor = first["visitor_token"].as_str().unwrap();
    let token = first["session"]["token"].as_str().unwrap();

    // The visitor writes; the conversation is created and the agent sees it.
    let r = wcall(
        &server,
        reqwest::Method::POST,
        "/widget/v1/messages",
        &w.pk,
        Some(SITE),
        Some(token),
        Some(json!({"text": "Where is my parcel?", "client_msg_id": "w-1"})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let sent: Value = r.json().await.unwrap();
    let conv = sent["conversation"]["id"].as_str().unwrap().to_owned();
    assert_eq!(sent["message"]["sender"]["type"], "end_user");
    let r = wcall(
        &server,
        reqwest::Method::POST,
        "/widget/v1/messages",
        &w.pk,
        Some(SITE),
        Some(token),
        Some(json!({"text": "Where is my parcel?", "client_msg_id": "w-1"})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK, "a retry is a duplicate");
    let agent_reply = server.send(&w.tenant.key, &conv, "On its way!").await;

    // Reload: same visitor, same conversation, full history.
    let (s, again) = init(&server, &w.pk, SITE, json!({"visitor_token": visitor})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["user"]["id"], first["user"]["id"]);
    assert_eq!(again["conversation"]["id"], json!(conv));
    let token2 = again["session"]["token"].as_str().unwrap();
    let r = wcall(
        &server,
        reqwest::Method::GET,
        "/widget/v1/messages?limit=10",
        &w.pk,
        Some(SITE),
        Some(token2),
        None,
    )
    .await;
    let hist: Value = r.json().await.unwrap();
    let texts: Vec<&str> = hist["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["Where is my parcel?", "On its way!"]);

    // Events: read the agent's reply, typing.
    let r = wcall(
        &server,
        reqwest::Method::POST,
        "/widget/v1/events",
        &w.pk,
        Some(SITE),
        Some(token2),
        Some(json!({"type": "read", "message_id": agent_reply["id"]})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = wcall(
        &server,
        reqwest::Method::POST,
        "/widget/v1/events",
        &w.pk,
        Some(SITE),
        Some(token2),
        Some(json!({"type": "typing", "state": "start"})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let (_, reads) = server
        .get(&format!("/api/v1/conversations/{conv}/read"), &w.tenant.key)
        .await;
    assert_eq!(reads["data"][0]["last_read_message_id"], agent_reply["id"]);

    // A forged or foreign visitor token gives a new visitor, never someone else.
    let other = widget(&server, "off").await;
    let (_, foreign) = init(&server, &other.pk, SITE, json!({"visitor_token": visitor})).await;
    assert_ne!(foreign["user"]["id"], first["user"]["id"]);
    let (_, forged) = init(
        &server,
        &w.pk,
        SITE,
        json!({"visitor_token": format!("{visitor}x")}),
    )
    .await;
    assert_ne!(forged["user"]["id"], first["user"]["id"]);
    // The visitor token is not a session token.
    let r = wcall(
        &server,
        reqwest::Method::GET,
        "/widget/v1/messages",
        &w.pk,
        Some(SITE),
        Some(visitor),
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test]
async fn sessions_are_bound_to_their_origin_over_http_and_socket() {
    let server = Server::start().await;
    let w = widget(&server, "off").await;
    let (_, s) = init(&server, &w.pk, SITE, json!({})).await;
    let token = s["session"]["token"].as_str().unwrap().to_owned();
    // Another allowed origin cannot use it.
    let r = wcall(
        &server,
        reqwest::Method::GET,
        "/widget/v1/messages",
        &w.pk,
        Some(OTHER_SITE),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Another project's key cannot either.
    let other = widget(&server, "off").await;
    let r = wcall(
        &server,
        reqwest::Method::GET,
        "/widget/v1/messages",
        &other.pk,
        Some(SITE),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // The socket: the handshake Origin must be the session's.
    async fn socket(server: &Server, origin: Option<&str>, token: &str) -> common::Ws {
        let mut req = server.ws_url.clone().into_client_request().unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        let (stream, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut ws = common::Ws { stream };
        ws.send(json!({"type": "auth", "token": token})).await;
        ws
    }
    let mut ok = socket(&server, Some(SITE), &token).await;
    assert_eq!(ok.recv().await["type"], "auth_ok");
    for origin in [Some(OTHER_SITE), Some("https://evil.example.com"), None] {
        let mut ws = socket(&server, origin, &token).await;
        let f = ws.recv().await;
        assert_eq!(f["code"], "forbidden", "{origin:?}: {f}");
        assert!(matches!(ws.closed(WAIT).await, Closed::Code(4003, _)));
    }
    // Removing the origin from the allow-list ends its sessions on the next use.
    let (s, _) = server
        .call(
            reqwest::Method::PUT,
            &format!("/api/admin/projects/{}/widget", w.tenant.project_id),
            &server.admin_token,
            Some(json!({"allowed_origins": [OTHER_SITE]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut ws = socket(&server, Some(SITE), &token).await;
    assert_eq!(ws.recv().await["code"], "forbidden");
    server.stop().await;
}

#[tokio::test]
async fn identity_verification_enforce_report_and_rotation() {
    let server = Server::start().await;
    let w = widget(&server, "enforce").await;
    let user = |hash: Option<String>| {
        let mut u =
            json!({"identifier": "user-123", "name": "John Doe", "email": "john@example.com"});
        if let Some(h) = hash {
            u["user_hash"] = json!(h);
        }
        json!({"user": u})
    };
    let good = hmac_hex(&w.secret, "user-123");
    for (what, body) in [
        ("missing", user(None)),
        ("wrong", user(Some(hmac_hex("not the secret", "user-123")))),
        (
            "other identifier",
            user(Some(hmac_hex(&w.secret, "user-124"))),
        ),
    ] {
        let (s, b) = init(&server, &w.pk, SITE, body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{what}: {b}");
        assert_eq!(b["error"]["code"], "forbidden");
    }
    let (s, b) = init(&server, &w.pk, SITE, user(Some(good.clone()))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["user"]["user_identifier"], "user-123");
    assert_eq!(b["user"]["name"], "John Doe");
    assert!(b.get("visitor_token").is_none());

    // A tenant-signed JWT works as a proof too.
    let now = chrono::Utc::now().timestamp();
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "user-123", "exp": now + 300}),
        &jsonwebtoken::EncodingKey::from_secret(w.secret.as_bytes()),
    )
    .unwrap();
    let (s, b2) = init(
        &server,
        &w.pk,
        SITE,
        json!({"user": {"identifier": "user-123", "user_jwt": jwt}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b2}");
    assert_eq!(b2["user"]["id"], b["user"]["id"]);

    // Rotation invalidates the old proof.
    let (s, rotated) = server
        .post(
            &format!(
                "/api/admin/projects/{}/widget/identity-secret",
                w.tenant.project_id
            ),
            &server.admin_token,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_ne!(rotated["identity_secret"], json!(w.secret));
    let (s, _) = init(&server, &w.pk, SITE, user(Some(good.clone()))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Report-only mode accepts a wrong proof (and only logs it).
    let r = widget(&server, "report").await;
    let (s, b) = init(&server, &r.pk, SITE, user(Some("00".repeat(32)))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    server.stop().await;
}

/// `POST /widget/v1/messages` as `token`; the stored answer.
async fn widget_send(server: &Server, w: &Widget, token: &str, text: &str, cmid: &str) -> Value {
    let r = wcall(
        server,
        reqwest::Method::POST,
        "/widget/v1/messages",
        &w.pk,
        Some(SITE),
        Some(token),
        Some(json!({"text": text, "client_msg_id": cmid})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

#[tokio::test]
async fn identifying_carries_the_visitors_conversation_over() {
    let server = Server::start().await;
    let w = widget(&server, "enforce").await;
    let (_, first) = init(&server, &w.pk, SITE, json!({})).await;
    let visitor_token = first["visitor_token"].as_str().unwrap().to_owned();
    let visitor_id = first["user"]["id"].clone();
    let token = first["session"]["token"].as_str().unwrap().to_owned();
    let sent = widget_send(&server, &w, &token, "Before logging in", "c-1").await;
    let conv = sent["conversation"]["id"].as_str().unwrap().to_owned();
    server.send(&w.tenant.key, &conv, "Hello visitor").await;

    // Not this browser's visitor (a forged token): nothing is carried over.
    let user =
        |id: &str| json!({"identifier": id, "user_hash": hmac_hex(&w.secret, id), "name": "Jane"});
    let (s, other) = init(
        &server,
        &w.pk,
        SITE,
        json!({"user": user("user-other"), "visitor_token": format!("{visitor_token}x")}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{other}");
    assert!(other["conversation"].is_null(), "{other}");

    // The same browser identifies: the identified user has the conversation and its history.
    let (s, me) = init(
        &server,
        &w.pk,
        SITE,
        json!({"user": user("user-jane"), "visitor_token": visitor_token}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_ne!(me["user"]["id"], visitor_id);
    assert_eq!(me["conversation"]["id"], json!(conv), "{me}");
    assert!(
        me.get("visitor_token").is_none(),
        "identified sessions get none"
    );
    let jane_token = me["session"]["token"].as_str().unwrap().to_owned();
    let r = wcall(
        &server,
        reqwest::Method::GET,
        "/widget/v1/messages",
        &w.pk,
        Some(SITE),
        Some(&jane_token),
        None,
    )
    .await;
    let hist: Value = r.json().await.unwrap();
    let texts: Vec<&str> = hist["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["Before logging in", "Hello visitor"]);
    // Jane writes on in the same conversation, which now has both as members.
    let sent = widget_send(&server, &w, &jane_token, "Now logged in", "c-2").await;
    assert_eq!(sent["conversation"]["id"], json!(conv));
    let (_, c) = server
        .get(&format!("/api/v1/conversations/{conv}"), &w.tenant.key)
        .await;
    let members = c["members"].as_array().unwrap();
    assert!(
        members.contains(&visitor_id) && members.contains(&me["user"]["id"]),
        "{c}"
    );
    // Again (a reload with the same token): nothing doubles.
    let (s, again) = init(
        &server,
        &w.pk,
        SITE,
        json!({"user": user("user-jane"), "visitor_token": visitor_token}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{again}");
    let (_, c2) = server
        .get(&format!("/api/v1/conversations/{conv}"), &w.tenant.key)
        .await;
    assert_eq!(c2["members"], c["members"]);

    // Jane's other conversations: listed for the widget's switcher (newest first), and each
    // one's history readable by id; not someone else's.
    let jane_id = me["user"]["id"].as_str().unwrap().to_owned();
    let (s, other_conv) = server
        .post(
            "/api/v1/conversations",
            &w.tenant.key,
            json!({"subject": "Order 1234", "members": [jane_id]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{other_conv}");
    let other_id = other_conv["id"].as_str().unwrap().to_owned();
    server.send(&w.tenant.key, &other_id, "Shipped").await;
    let wget = |path: String, token: String| {
        let (server, pk) = (&server, w.pk.clone());
        async move {
            let r = wcall(
                server,
                reqwest::Method::GET,
                &path,
                &pk,
                Some(SITE),
                Some(&token),
                None,
            )
            .await;
            (r.status(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, list) = wget("/widget/v1/conversations".into(), jane_token.clone()).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [other_id.as_str(), conv.as_str()]);
    let (s, hist) = wget(
        format!("/widget/v1/messages?conversation_id={other_id}"),
        jane_token.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{hist}");
    assert_eq!(hist["conversation"]["id"], json!(other_id));
    assert_eq!(hist["data"][0]["text"], "Shipped");

    // Report mode lets an unproven identity in, but it takes nothing over.
    let (_, v2) = init(&server, &w.pk, SITE, json!({})).await;
    let v2_token = v2["session"]["token"].as_str().unwrap().to_owned();
    let sent = widget_send(&server, &w, &v2_token, "Second visitor", "c-3").await;
    let conv2 = sent["conversation"]["id"].as_str().unwrap().to_owned();
    let (s, b) = server
        .call(
            reqwest::Method::PUT,
            &format!("/api/admin/projects/{}/widget", w.tenant.project_id),
            &server.admin_token,
            Some(json!({"allowed_origins": [SITE, OTHER_SITE], "identity_verification": "report"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, unproven) = init(
        &server,
        &w.pk,
        SITE,
        json!({"user": {"identifier": "user-mallory", "user_hash": "00"},
               "visitor_token": v2["visitor_token"]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{unproven}");
    assert!(unproven["conversation"].is_null(), "{unproven}");
    let (_, c3) = server
        .get(&format!("/api/v1/conversations/{conv2}"), &w.tenant.key)
        .await;
    assert_eq!(c3["members"], json!([v2["user"]["id"]]));
    // Another visitor neither lists nor reads Jane's conversations.
    let (s, list) = wget("/widget/v1/conversations".into(), v2_token.clone()).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["data"][0]["id"], json!(conv2));
    let (s, b) = wget(
        format!("/widget/v1/messages?conversation_id={other_id}"),
        v2_token.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    server.stop().await;
}

#[tokio::test]
async fn widget_settings_are_validated() {
    let server = Server::start().await;
    let t = server.tenant("shop").await;
    for bad in [
        json!({"allowed_origins": ["shop.example.com"]}),
        json!({"allowed_origins": ["https://shop.example.com/path"]}),
        json!({"allowed_origins": ["https://*.example.com"]}),
        json!({"allowed_origins": ["null"]}),
        json!({"allowed_origins": [], "theme": "purple"}),
        json!({"allowed_origins": [], "accent_color": "red"}),
        json!({"allowed_origins": [], "identity_verification": "sometimes"}),
    ] {
        let (s, b) = server
            .call(
                reqwest::Method::PUT,
                &format!("/api/admin/projects/{}/widget", t.project_id),
                &server.admin_token,
                Some(bad.clone()),
            )
            .await;
        assert!(
            s == StatusCode::UNPROCESSABLE_ENTITY || s == StatusCode::BAD_REQUEST,
            "{bad}: {s} {b}"
        );
    }
    // Repeated origins are stored once, in the order given.
    let (s, w) = server
        .call(
            reqwest::Method::PUT,
            &format!("/api/admin/projects/{}/widget", t.project_id),
            &server.admin_token,
            Some(json!({"allowed_origins": [SITE, OTHER_SITE, SITE]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{w}");
    assert_eq!(w["allowed_origins"], json!([SITE, OTHER_SITE]));
    server.stop().await;
}

#[tokio::test]
async fn the_widget_files_and_the_demo_are_served() {
    let server = Server::start().await;
    for path in ["/widget/loader.js", "/widget/widget.js"] {
        let r = server.http.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/javascript")
        );
        assert!(!r.text().await.unwrap().is_empty());
    }
    let page = server
        .http
        .get(server.url("/demo"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("pk_live_"),
        "the demo page embeds the demo's publishable key"
    );
    assert!(page.contains("/widget/loader.js"));
    assert!(!page.contains("{{"), "every placeholder is filled");
    // The agent view and its token: tests/demo.rs.
    server.stop().await;
}
