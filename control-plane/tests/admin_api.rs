//! The Admin API against a real server on 127.0.0.1:0, backed by a SqliteStore in a temporary
//! directory and a LocalBus.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use serde_json::{Value, json};

use larachat_broker::{Bus, LocalBus};
use larachat_control_plane::{
    BootstrapOutcome, ControlPlane, ControlPlaneConfig, bootstrap_admin, router,
};
use larachat_core::control::ControlEvent;
use larachat_core::keys;
use larachat_core::plan::PlanId;
use larachat_core::subject::Subject;
use larachat_core::{AdminUserId, ApiKeyId, ErrorCode, ProjectId};
use larachat_store::{SqliteConfig, SqliteStore, Store};

const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";
const PEPPER: &[u8] = b"test-pepper";
const ADMIN: (&str, &str) = ("admin@example.com", "correct horse battery");
const OTHER: (&str, &str) = ("other@example.com", "another good password");

struct Server {
    base: String,
    http: reqwest::Client,
    store: Arc<SqliteStore>,
    bus: Arc<LocalBus>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(SqliteStore::open(SqliteConfig::new(dir.path().join("db.sqlite"))).unwrap());
        let bus = Arc::new(LocalBus::new());
        for (email, password) in [ADMIN, OTHER] {
            let outcome = bootstrap_admin(store.as_ref(), email, password)
                .await
                .unwrap();
            assert!(matches!(outcome, BootstrapOutcome::Created(_)));
        }
        let cp = ControlPlane::new(
            store.clone(),
            bus.clone(),
            ControlPlaneConfig {
                // ADMIN is a platform admin (it may choose plans); OTHER owns projects only.
                platform_admins: vec![ADMIN.0.to_owned()],
                default_plan: PlanId::parse("enterprise").unwrap(),
                ..ControlPlaneConfig::new(SECRET, PEPPER)
            },
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(cp)).await });
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            store,
            bus,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn login(&self, (email, password): (&str, &str)) -> reqwest::Response {
        self.http
            .post(self.url("/api/admin/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap()
    }

    async fn token(&self, who: (&str, &str)) -> String {
        let r = self.login(who).await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method, self.url(path))
            .header(AUTHORIZATION, format!("Bearer {token}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    async fn create_project(&self, token: &str, name: &str) -> Value {
        let r = self
            .send(
                reqwest::Method::POST,
                "/api/admin/projects",
                token,
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json().await.unwrap()
    }

    async fn create_key(&self, token: &str, project: &str, body: Value) -> reqwest::Response {
        self.send(
            reqwest::Method::POST,
            &format!("/api/admin/projects/{project}/api-keys"),
            token,
            Some(body),
        )
        .await
    }
}

/// Asserts status, catalog code and the `{"error":{"code","message","retryable"}}` shape.
async fn assert_error(r: reqwest::Response, status: StatusCode, code: ErrorCode) -> Value {
    assert_eq!(r.status(), status, "unexpected status");
    let body: Value = r.json().await.expect("error bodies are JSON");
    let obj = body.as_object().expect("object");
    assert_eq!(obj.len(), 1, "only `error` at the top: {body}");
    let err = body["error"].as_object().expect("error object");
    assert_eq!(err.len(), 3, "{body}");
    assert_eq!(err["code"], code.as_str(), "{body}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(err["retryable"], code.retryable(), "{body}");
    body
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn sign(alg: Algorithm, key: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).unwrap()
}

async fn admin_id(store: &SqliteStore, email: &str) -> AdminUserId {
    store.admin_user_by_email(email).await.unwrap().unwrap().id
}

async fn next_control_event(sub: &mut larachat_broker::BusSubscription) -> ControlEvent {
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a control event within 5 s")
        .expect("subscription open");
    ControlEvent::from_json(&msg.payload).expect("a valid control event")
}

// ---------------------------------------------------------------------------------------------
// Login and tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bootstrap_login_and_me() {
    let s = Server::start().await;
    let r = s.login(("  Admin@Example.COM ", ADMIN.1)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["user"]["email"], ADMIN.0);
    assert!(body["user"].get("password_hash").is_none());
    let expires: chrono::DateTime<chrono::Utc> =
        body["expires_at"].as_str().unwrap().parse().unwrap();
    let ttl = expires - chrono::Utc::now();
    assert!(
        ttl > chrono::Duration::hours(11) && ttl <= chrono::Duration::hours(12),
        "{ttl}"
    );

    let token = body["token"].as_str().unwrap();
    let me = s
        .send(reqwest::Method::GET, "/api/admin/me", token, None)
        .await;
    assert_eq!(me.status(), StatusCode::OK);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["id"], body["user"]["id"]);
    assert_eq!(me["email"], ADMIN.0);
    assert_eq!(me["platform_admin"], true);
    let other = s.token(OTHER).await;
    let me: Value = s
        .send(reqwest::Method::GET, "/api/admin/me", &other, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["platform_admin"], false);
}

#[tokio::test]
async fn bootstrap_never_overwrites_and_checks_the_password_rule() {
    let s = Server::start().await;
    let again = bootstrap_admin(s.store.as_ref(), ADMIN.0, "a different password")
        .await
        .unwrap();
    assert_eq!(
        again,
        BootstrapOutcome::AlreadyExists(admin_id(&s.store, ADMIN.0).await)
    );
    assert_eq!(s.login(ADMIN).await.status(), StatusCode::OK);
    assert_eq!(
        s.login((ADMIN.0, "a different password")).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let short = bootstrap_admin(s.store.as_ref(), "new@example.com", "123456789")
        .await
        .unwrap_err();
    assert_eq!(short.code, ErrorCode::ValidationFailed);
    let bad_email = bootstrap_admin(s.store.as_ref(), "not-an-email", "long enough password")
        .await
        .unwrap_err();
    assert_eq!(bad_email.code, ErrorCode::ValidationFailed);
    assert!(
        s.store
            .admin_user_by_email("new@example.com")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn wrong_password_and_unknown_email_look_the_same() {
    let s = Server::start().await;
    let wrong_password = s.login((ADMIN.0, "not the password")).await;
    assert!(wrong_password.headers().get(WWW_AUTHENTICATE).is_none());
    let a = assert_error(
        wrong_password,
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
    )
    .await;
    let b = assert_error(
        s.login(("nobody@example.com", ADMIN.1)).await,
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
    )
    .await;
    assert_eq!(a, b);
}

#[tokio::test]
async fn forged_or_stale_tokens_are_refused() {
    let s = Server::start().await;
    let id = admin_id(&s.store, ADMIN.0).await.to_string();
    let now = now_secs();
    let claims = |aud: &str, iat: i64, exp: i64| json!({"sub": id, "aud": aud, "iss": "larachat", "iat": iat, "exp": exp});
    let good = claims("larachat:admin", now, now + 600);
    // Sanity: a token we build the same way with the right key is accepted.
    let valid = sign(Algorithm::HS256, SECRET, &good);
    let r = s
        .send(reqwest::Method::GET, "/api/admin/me", &valid, None)
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    let alg_none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(good.to_string().as_bytes())
    );
    let mut no_iat = good.clone();
    no_iat.as_object_mut().unwrap().remove("iat");
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("someone-else");
    let mut unknown_admin = good.clone();
    unknown_admin["sub"] = json!(AdminUserId::new_v7().to_string());

    let forged = [
        ("alg none", alg_none),
        (
            "wrong key",
            sign(Algorithm::HS256, b"another-secret-another-secret-!!", &good),
        ),
        ("HS512 with our key", sign(Algorithm::HS512, SECRET, &good)),
        (
            "expired",
            sign(
                Algorithm::HS256,
                SECRET,
                &claims("larachat:admin", now - 3600, now - 60),
            ),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::HS256,
                SECRET,
                &claims("larachat:project", now, now + 600),
            ),
        ),
        (
            "issued in the future",
            sign(
                Algorithm::HS256,
                SECRET,
                &claims("larachat:admin", now + 600, now + 1200),
            ),
        ),
        ("no iat", sign(Algorithm::HS256, SECRET, &no_iat)),
        ("wrong issuer", sign(Algorithm::HS256, SECRET, &wrong_iss)),
        (
            "unknown admin",
            sign(Algorithm::HS256, SECRET, &unknown_admin),
        ),
        ("garbage", "not.a.jwt".to_owned()),
        ("empty", String::new()),
    ];
    for (what, token) in forged {
        let r = s
            .send(reqwest::Method::GET, "/api/admin/me", &token, None)
            .await;
        let challenge = r
            .headers()
            .get(WWW_AUTHENTICATE)
            .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"))
            .to_str()
            .unwrap()
            .to_owned();
        assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
        assert_error(r, StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized).await;
    }

    let missing = s
        .http
        .get(s.url("/api/admin/projects"))
        .send()
        .await
        .unwrap();
    assert!(missing.headers().contains_key(WWW_AUTHENTICATE));
    assert_error(missing, StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized).await;
    let basic = s
        .http
        .get(s.url("/api/admin/me"))
        .header(AUTHORIZATION, format!("Basic {valid}"))
        .send()
        .await
        .unwrap();
    assert_error(basic, StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized).await;
}

// ---------------------------------------------------------------------------------------------
// Projects
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn project_crud_and_paging() {
    let s = Server::start().await;
    let token = s.token(ADMIN).await;
    let mut control = s.bus.subscribe(&Subject::control()).await.unwrap();

    let r = s
        .send(
            reqwest::Method::POST,
            "/api/admin/projects",
            &token,
            Some(json!({"name": "Acme", "plan": "pro", "settings": {"theme": "dark"}})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let acme: Value = r.json().await.unwrap();
    assert_eq!(acme["plan"], "pro");
    assert_eq!(acme["status"], "active");
    assert_eq!(acme["settings"], json!({"theme": "dark"}));
    assert_eq!(
        acme["owner_id"].as_str().unwrap(),
        admin_id(&s.store, ADMIN.0).await.to_string()
    );
    let id = acme["id"].as_str().unwrap().to_owned();
    let path = format!("/api/admin/projects/{id}");

    let mut got: Value = s
        .send(reqwest::Method::GET, &path, &token, None)
        .await
        .json()
        .await
        .unwrap();
    // The project, with the caller's role (its creator is its owner) and permissions.
    assert_eq!(got["role"], "owner");
    assert!(
        got["permissions"]
            .as_array()
            .unwrap()
            .contains(&json!("delete_project"))
    );
    let view = got.as_object_mut().unwrap();
    view.remove("role");
    view.remove("permissions");
    assert_eq!(got, acme);

    let r = s
        .send(
            reqwest::Method::PATCH,
            &path,
            &token,
            Some(json!({"name": "Acme Inc", "status": "suspended"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let patched: Value = r.json().await.unwrap();
    assert_eq!(patched["name"], "Acme Inc");
    assert_eq!(patched["status"], "suspended");
    assert_eq!(patched["plan"], "pro", "fields not in the patch stay");
    let project_id: ProjectId = id.parse().unwrap();
    assert_eq!(
        next_control_event(&mut control).await,
        ControlEvent::ProjectChanged { project_id }
    );

    let bad = s
        .send(
            reqwest::Method::PATCH,
            &path,
            &token,
            Some(json!({"name": "  "})),
        )
        .await;
    assert_error(
        bad,
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::ValidationFailed,
    )
    .await;
    let bad = s
        .send(
            reqwest::Method::PATCH,
            &path,
            &token,
            Some(json!({"settings": [1, 2]})),
        )
        .await;
    assert_error(
        bad,
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::ValidationFailed,
    )
    .await;
    let bad = s
        .send(
            reqwest::Method::PATCH,
            &path,
            &token,
            Some(json!({"plan": "Plat.inum"})),
        )
        .await;
    assert_error(bad, StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload).await;
    // Plans are data: a well-formed id that names no plan breaks a rule.
    let bad = s
        .send(
            reqwest::Method::PATCH,
            &path,
            &token,
            Some(json!({"plan": "platinum"})),
        )
        .await;
    assert_error(
        bad,
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::ValidationFailed,
    )
    .await;

    // Paging: 4 more projects, newest first, pages of 2.
    let mut created = vec![id.clone()];
    for i in 0..4 {
        let p = s.create_project(&token, &format!("p{i}")).await;
        created.push(p["id"].as_str().unwrap().to_owned());
    }
    created.reverse();
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let r = s
            .send(
                reqwest::Method::GET,
                &format!("/api/admin/projects?limit=2&cursor={cursor}"),
                &token,
                None,
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let page: Value = r.json().await.unwrap();
        pages += 1;
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned()),
        );
        if page["has_more"] == json!(true) {
            cursor = page["next_cursor"].as_str().unwrap().to_owned();
        } else {
            assert!(page["next_cursor"].is_null());
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created);

    let r = s
        .send(
            reqwest::Method::GET,
            "/api/admin/projects?limit=0",
            &token,
            None,
        )
        .await;
    assert_error(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::ValidationFailed,
    )
    .await;
    let r = s
        .send(
            reqwest::Method::GET,
            "/api/admin/projects?cursor=a.b",
            &token,
            None,
        )
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload).await;

    // Delete: 204, event, then gone.
    let r = s.send(reqwest::Method::DELETE, &path, &token, None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        next_control_event(&mut control).await,
        ControlEvent::ProjectChanged { project_id }
    );
    let r = s.send(reqwest::Method::GET, &path, &token, None).await;
    assert_error(r, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    let r = s.send(reqwest::Method::DELETE, &path, &token, None).await;
    assert_error(r, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
}

#[tokio::test]
async fn another_admins_project_is_not_found() {
    let s = Server::start().await;
    let owner = s.token(ADMIN).await;
    let intruder = s.token(OTHER).await;
    let project = s.create_project(&owner, "Mine").await;
    let id = project["id"].as_str().unwrap();
    let key: Value = s
        .create_key(&owner, id, json!({"name": "backend"}))
        .await
        .json()
        .await
        .unwrap();
    let key_id = key["api_key"]["id"].as_str().unwrap();

    let missing = ProjectId::new_v7().to_string();
    let mut answers = Vec::new();
    for pid in [id, missing.as_str()] {
        let path = format!("/api/admin/projects/{pid}");
        let keys = format!("{path}/api-keys");
        let requests = [
            (reqwest::Method::GET, path.clone(), None),
            (
                reqwest::Method::PATCH,
                path.clone(),
                Some(json!({"name": "Theirs"})),
            ),
            (reqwest::Method::DELETE, path.clone(), None),
            (reqwest::Method::GET, keys.clone(), None),
            (
                reqwest::Method::POST,
                keys.clone(),
                Some(json!({"name": "stolen"})),
            ),
        ];
        let mut bodies = Vec::new();
        for (method, p, body) in requests {
            let r = s.send(method, &p, &intruder, body).await;
            bodies.push(assert_error(r, StatusCode::NOT_FOUND, ErrorCode::NotFound).await);
        }
        answers.push(bodies);
    }
    assert_eq!(
        answers[0], answers[1],
        "foreign and missing projects answer alike"
    );

    let r = s
        .send(
            reqwest::Method::DELETE,
            &format!("/api/admin/api-keys/{key_id}"),
            &intruder,
            None,
        )
        .await;
    let foreign_key = assert_error(r, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    let r = s
        .send(
            reqwest::Method::DELETE,
            &format!("/api/admin/api-keys/{}", ApiKeyId::new_v7()),
            &intruder,
            None,
        )
        .await;
    assert_eq!(
        foreign_key,
        assert_error(r, StatusCode::NOT_FOUND, ErrorCode::NotFound).await
    );

    // Nothing changed for the owner.
    let listed: Value = s
        .send(reqwest::Method::GET, "/api/admin/projects", &intruder, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"], json!([]));
    let got: Value = s
        .send(
            reqwest::Method::GET,
            &format!("/api/admin/projects/{id}"),
            &owner,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["name"], "Mine");
    let stored = s
        .store
        .api_key(key_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(stored.revoked_at.is_none());
    assert_eq!(
        s.store
            .list_api_keys(id.parse().unwrap())
            .await
            .unwrap()
            .len(),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn created_keys_verify_and_are_never_shown_again() {
    let s = Server::start().await;
    let token = s.token(ADMIN).await;
    let project = s.create_project(&token, "Keys").await;
    let pid = project["id"].as_str().unwrap();

    let r = s.create_key(&token, pid, json!({"name": "backend"})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
    let created: Value = r.json().await.unwrap();
    let plaintext = created["key"].as_str().unwrap();
    let view = &created["api_key"];
    assert_eq!(view["kind"], "secret");
    assert_eq!(view["scopes"], json!(["read", "write"]));
    assert_eq!(view["project_id"], pid);
    assert!(view["revoked_at"].is_null() && view["expires_at"].is_null());
    assert!(plaintext.starts_with(view["prefix"].as_str().unwrap()));
    let fields: Vec<&String> = view.as_object().unwrap().keys().collect();
    assert!(!fields.iter().any(|f| f.contains("hash")), "{fields:?}");

    let parsed = keys::parse(plaintext).expect("the key parses");
    assert_eq!(parsed.id.to_string(), view["id"].as_str().unwrap());
    let stored = s.store.api_key(parsed.id).await.unwrap().unwrap();
    assert!(parsed.verify(PEPPER, &stored.secret_hash));
    assert!(!parsed.verify(b"another pepper", &stored.secret_hash));

    let r = s
        .create_key(
            &token,
            pid,
            json!({"name": "widget", "kind": "publishable", "expires_at": "2999-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let widget: Value = r.json().await.unwrap();
    assert!(widget["key"].as_str().unwrap().starts_with("pk_live_"));
    assert_eq!(widget["api_key"]["scopes"], json!([]));
    assert_eq!(widget["api_key"]["expires_at"], "2999-01-01T00:00:00Z");

    let r = s
        .send(
            reqwest::Method::GET,
            &format!("/api/admin/projects/{pid}/api-keys"),
            &token,
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(!text.contains(plaintext));
    assert!(
        !text.contains(&plaintext[8 + 22..8 + 22 + 32]),
        "the secret part never shows"
    );
    assert!(!text.contains("hash"));
    let list: Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            widget["api_key"]["id"].as_str().unwrap(),
            view["id"].as_str().unwrap()
        ],
        "newest first"
    );
}

#[tokio::test]
async fn key_rules_are_enforced() {
    let s = Server::start().await;
    let token = s.token(ADMIN).await;
    let pid = s.create_project(&token, "Rules").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cases = [
        (
            json!({"name": "k", "scopes": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ValidationFailed,
        ),
        (
            json!({"name": "k", "kind": "publishable", "scopes": ["read"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ValidationFailed,
        ),
        (
            json!({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ValidationFailed,
        ),
        (
            json!({"name": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ValidationFailed,
        ),
        (
            json!({"name": "k", "expires_at": "tomorrow"}),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPayload,
        ),
        (
            json!({"name": "k", "scopes": ["root"]}),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPayload,
        ),
        (
            json!({"name": "k", "kind": "master"}),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPayload,
        ),
        (
            json!({"name": "k", "secret_hash": "00"}),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPayload,
        ),
    ];
    for (body, status, code) in cases {
        assert_error(s.create_key(&token, &pid, body).await, status, code).await;
    }
    assert!(
        s.store
            .list_api_keys(pid.parse().unwrap())
            .await
            .unwrap()
            .is_empty()
    );

    let r = s
        .create_key(
            &token,
            &pid,
            json!({"name": "admin key", "scopes": ["admin", "read", "admin"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["api_key"]["scopes"], json!(["read", "admin"]));
}

#[tokio::test]
async fn revoking_publishes_a_control_event_and_is_idempotent() {
    let s = Server::start().await;
    let token = s.token(ADMIN).await;
    let pid = s.create_project(&token, "Revoke").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let created: Value = s
        .create_key(&token, &pid, json!({"name": "backend"}))
        .await
        .json()
        .await
        .unwrap();
    let key_id: ApiKeyId = created["api_key"]["id"].as_str().unwrap().parse().unwrap();
    let mut control = s.bus.subscribe(&Subject::control()).await.unwrap();

    let path = format!("/api/admin/api-keys/{key_id}");
    let r = s.send(reqwest::Method::DELETE, &path, &token, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let first: Value = r.json().await.unwrap();
    assert!(first["revoked_at"].is_string());
    let expected = ControlEvent::KeyRevoked {
        key_id,
        project_id: pid.parse().unwrap(),
    };
    assert_eq!(next_control_event(&mut control).await, expected);
    let stored = s.store.api_key(key_id).await.unwrap().unwrap();
    assert!(!stored.is_usable_at(larachat_core::model::now()));

    let r = s.send(reqwest::Method::DELETE, &path, &token, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let second: Value = r.json().await.unwrap();
    assert_eq!(
        second["revoked_at"], first["revoked_at"],
        "the first revocation time stays"
    );
    assert_eq!(next_control_event(&mut control).await, expected);

    let list: Value = s
        .send(
            reqwest::Method::GET,
            &format!("/api/admin/projects/{pid}/api-keys"),
            &token,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["revoked_at"], first["revoked_at"]);
}

// ---------------------------------------------------------------------------------------------
// Malformed requests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_requests_get_catalog_errors() {
    let s = Server::start().await;
    let token = s.token(ADMIN).await;
    let raw = |path: &str, content_type: Option<&str>, body: Vec<u8>| {
        let mut req = s
            .http
            .post(s.url(path))
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(body);
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        req.send()
    };
    let json_ct = Some("application/json");
    for path in ["/api/admin/login", "/api/admin/projects"] {
        let r = raw(path, json_ct, b"{\"name\": ".to_vec()).await.unwrap();
        assert_error(r, StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload).await;
        let r = raw(
            path,
            json_ct,
            br#"{"name": 5, "email": 5, "password": 5}"#.to_vec(),
        )
        .await
        .unwrap();
        assert_error(r, StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload).await;
        let r = raw(path, None, br#"{"name": "x"}"#.to_vec()).await.unwrap();
        assert_error(
            r,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
        )
        .await;
        let mut big = br#"{"name": ""#.to_vec();
        big.extend(std::iter::repeat_n(b'x', 70 * 1024));
        big.extend(br#""}"#);
        let r = raw(path, json_ct, big).await.unwrap();
        assert_error(r, StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge).await;
    }
    let r = raw(
        "/api/admin/login",
        json_ct,
        br#"{"email":"a@b.co","password":"x","remember":true}"#.to_vec(),
    )
    .await
    .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload).await;
    let r = raw(
        "/api/admin/projects",
        json_ct,
        br#"{"name":"x","owner_id":"someone"}"#.to_vec(),
    )
    .await
    .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload).await;
    assert!(
        s.store
            .list_projects(None, None, 10)
            .await
            .unwrap()
            .items
            .is_empty(),
        "no rejected request created anything"
    );

    for bad_id in [
        "not-a-uuid",
        "a.b",
        "*",
        ">",
        "0193e2c4-1111-7aaa-8bbb-cccccccccc.>",
        "0193e2c411117aaa8bbbcccccccccccc",
    ] {
        for (method, path) in [
            (
                reqwest::Method::GET,
                format!("/api/admin/projects/{bad_id}"),
            ),
            (
                reqwest::Method::GET,
                format!("/api/admin/projects/{bad_id}/api-keys"),
            ),
            (
                reqwest::Method::DELETE,
                format!("/api/admin/api-keys/{bad_id}"),
            ),
        ] {
            let r = s.send(method, &path, &token, None).await;
            assert_error(r, StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload).await;
        }
    }

    let r = s
        .send(reqwest::Method::PUT, "/api/admin/projects", &token, None)
        .await;
    assert_error(
        r,
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Plans and usage
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn plans_are_listed_to_admins_and_changed_by_platform_admins_only() {
    let s = Server::start().await;
    let platform = s.token(ADMIN).await;
    let owner = s.token(OTHER).await;

    let r = s
        .send(reqwest::Method::GET, "/api/admin/plans", &owner, None)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let list: Value = r.json().await.unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["enterprise", "free", "pro", "starter"]);
    let r = s
        .send(reqwest::Method::GET, "/api/admin/plans/free", &owner, None)
        .await;
    let free: Value = r.json().await.unwrap();
    assert_eq!(
        free["limits"],
        json!({"monthly_active_users": 100, "messages_per_month": 1000, "projects_per_owner": 1})
    );
    let r = s
        .send(reqwest::Method::GET, "/api/admin/plans/nope", &owner, None)
        .await;
    assert_error(r, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    let r = s
        .send(reqwest::Method::GET, "/api/admin/plans/No.Pe", &owner, None)
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // A project owner may neither edit plans nor give its project another plan.
    let change = json!({"limits": {"monthly_active_users": null, "messages_per_month": null,
                        "projects_per_owner": null}});
    let r = s
        .send(
            reqwest::Method::PATCH,
            "/api/admin/plans/free",
            &owner,
            Some(change.clone()),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
    let r = s
        .send(
            reqwest::Method::POST,
            "/api/admin/projects",
            &owner,
            Some(json!({"name": "Mine", "plan": "pro"})),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
    let mine = s.create_project(&owner, "Mine").await;
    assert_eq!(mine["plan"], "enterprise", "the configured default plan");
    let r = s
        .send(
            reqwest::Method::PATCH,
            &format!("/api/admin/projects/{}", mine["id"].as_str().unwrap()),
            &owner,
            Some(json!({"plan": "pro"})),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;

    // A platform admin changes a plan; gateways are told.
    let mut control = s.bus.subscribe(&Subject::control()).await.unwrap();
    let r = s
        .send(
            reqwest::Method::PATCH,
            "/api/admin/plans/starter",
            &platform,
            Some(
                json!({"name": "Starter 2027", "features": ["custom_branding"],
                        "limits": {"monthly_active_users": 5, "messages_per_month": null,
                                   "projects_per_owner": 2}}),
            ),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let starter: Value = r.json().await.unwrap();
    assert_eq!(starter["name"], "Starter 2027");
    assert_eq!(starter["features"], json!(["custom_branding"]));
    assert_eq!(starter["limits"]["messages_per_month"], Value::Null);
    assert_eq!(
        next_control_event(&mut control).await,
        ControlEvent::PlanChanged {
            plan_id: PlanId::parse("starter").unwrap()
        }
    );
    let stored = s
        .store
        .plan(&PlanId::parse("starter").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.limits.monthly_active_users, Some(5));
    // A limit left out of `limits` is left as it is; only the named one changes.
    let r = s
        .send(
            reqwest::Method::PATCH,
            "/api/admin/plans/starter",
            &platform,
            Some(json!({"limits": {"messages_per_month": 20000}})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let starter: Value = r.json().await.unwrap();
    assert_eq!(
        starter["limits"],
        json!({"monthly_active_users": 5, "messages_per_month": 20000, "projects_per_owner": 2})
    );
    assert_eq!(
        next_control_event(&mut control).await,
        ControlEvent::PlanChanged {
            plan_id: PlanId::parse("starter").unwrap()
        }
    );
    let r = s
        .send(
            reqwest::Method::PATCH,
            "/api/admin/plans/starter",
            &platform,
            Some(json!({"features": ["Not A Feature"]})),
        )
        .await;
    assert_error(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::ValidationFailed,
    )
    .await;
    let r = s
        .send(
            reqwest::Method::POST,
            "/api/admin/projects",
            &platform,
            Some(json!({"name": "Ghost", "plan": "no-such-plan"})),
        )
        .await;
    assert_error(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::ValidationFailed,
    )
    .await;
}

#[tokio::test]
async fn usage_is_shown_to_the_owner_with_limits_and_reset() {
    let s = Server::start().await;
    let platform = s.token(ADMIN).await;
    let intruder = s.token(OTHER).await;
    let r = s
        .send(
            reqwest::Method::POST,
            "/api/admin/projects",
            &platform,
            Some(json!({"name": "Metered", "plan": "free"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let project: Value = r.json().await.unwrap();
    let id: ProjectId = project["id"].as_str().unwrap().parse().unwrap();
    // Usage made through the store (the write path counts it), read through the API.
    s.store
        .upsert_end_user(
            id,
            &larachat_store::NewEndUser {
                user_identifier: None,
                name: None,
                email: None,
                avatar: None,
                metadata: json!({}),
            },
        )
        .await
        .unwrap();

    let path = format!("/api/admin/projects/{id}/usage");
    let r = s.send(reqwest::Method::GET, &path, &platform, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let usage: Value = r.json().await.unwrap();
    let period = larachat_core::plan::Period::of(chrono::Utc::now());
    assert_eq!(usage["period"], period.to_string());
    assert_eq!(usage["plan"], "free");
    assert_eq!(
        usage["monthly_active_users"],
        json!({"used": 1, "limit": 100})
    );
    assert_eq!(usage["messages"], json!({"used": 0, "limit": 1000}));
    assert_eq!(usage["conversations"], json!({"used": 0, "limit": null}));
    assert_eq!(usage["storage_bytes"], json!({"used": 0, "limit": null}));
    let resets: chrono::DateTime<chrono::Utc> =
        usage["resets_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(resets, period.resets_at());

    let r = s
        .send(
            reqwest::Method::GET,
            &format!("{path}?period=2001-02"),
            &platform,
            None,
        )
        .await;
    let old: Value = r.json().await.unwrap();
    assert_eq!(old["messages"]["used"], 0);
    assert_eq!(old["monthly_active_users"]["used"], 0);
    assert_eq!(old["resets_at"], "2001-03-01T00:00:00Z");
    let r = s
        .send(
            reqwest::Method::GET,
            &format!("{path}?period=2001-13"),
            &platform,
            None,
        )
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload).await;

    let r = s
        .send(
            reqwest::Method::GET,
            &format!("{path}/history"),
            &platform,
            None,
        )
        .await;
    let history: Value = r.json().await.unwrap();
    assert_eq!(history["data"].as_array().unwrap().len(), 1);
    assert_eq!(history["data"][0]["period"], period.to_string());

    // Another admin's project answers like a missing one.
    for p in [path.clone(), format!("{path}/history")] {
        let r = s.send(reqwest::Method::GET, &p, &intruder, None).await;
        assert_error(r, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    }
}

#[tokio::test]
async fn analytics_are_shown_to_the_owner_and_platform_admins_only() {
    use larachat_core::model::{Actor, ActorKind, Conversation, ConversationStatus, NewMessage};

    let s = Server::start().await;
    let platform = s.token(ADMIN).await;
    let owner = s.token(OTHER).await;
    let project = s.create_project(&owner, "Watched").await;
    let id: ProjectId = project["id"].as_str().unwrap().parse().unwrap();
    let platforms_own = s.create_project(&platform, "Platform's").await;

    // Traffic through the store (its write path keeps the rollups), read through the API.
    let (user, _) = s
        .store
        .upsert_end_user(
            id,
            &larachat_store::NewEndUser {
                user_identifier: Some("ada".into()),
                name: None,
                email: None,
                avatar: None,
                metadata: json!({}),
            },
        )
        .await
        .unwrap();
    let t = larachat_core::model::now();
    let conversation = Conversation {
        id: larachat_core::ConversationId::new_v7(),
        project_id: id,
        subject: None,
        status: ConversationStatus::Open,
        members: vec![user.id],
        metadata: json!({}),
        created_at: t,
        updated_at: t,
        last_message_id: None,
        assignee: None,
    };
    s.store.create_conversation(&conversation).await.unwrap();
    let mut sent = Vec::new();
    for (kind, sender) in [
        (ActorKind::EndUser, user.id.to_string()),
        (ActorKind::Agent, "agent-1".to_owned()),
        (ActorKind::EndUser, user.id.to_string()),
    ] {
        let m = s
            .store
            .append_message(&NewMessage {
                project_id: id,
                conversation_id: conversation.id,
                sender: Actor {
                    kind,
                    id: sender,
                    name: None,
                },
                text: "hi".into(),
                metadata: json!({}),
                client_msg_id: None,
            })
            .await
            .unwrap();
        sent.push(m.message);
    }

    let path = format!("/api/admin/projects/{id}/analytics");
    let r = s
        .http
        .get(s.url(&format!("{path}?granularity=hour")))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized).await;

    for token in [&owner, &platform] {
        let r = s
            .send(
                reqwest::Method::GET,
                &format!("{path}?granularity=hour"),
                token,
                None,
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let a: Value = r.json().await.unwrap();
        assert_eq!(a["project_id"], id.to_string());
        assert_eq!(a["granularity"], "hour");
        let buckets = a["messages"].as_array().unwrap();
        assert!(
            buckets.len() >= 7 * 24,
            "7 days by the hour: {}",
            buckets.len()
        );
        let total: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum();
        let users: u64 = buckets
            .iter()
            .map(|b| b["end_user"].as_u64().unwrap())
            .sum();
        let agents: u64 = buckets.iter().map(|b| b["agent"].as_u64().unwrap()).sum();
        assert_eq!((total, users, agents), (3, 2, 1), "{a}");
        let created: u64 = a["conversations"]["created"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum();
        assert_eq!(created, 1);
        assert_eq!(a["conversations"]["open"], 1);
        assert_eq!(a["conversations"]["closed"], 0);
        assert_eq!(a["active_conversations"], 1);
        let first_response = (sent[1].created_at - sent[0].created_at).num_milliseconds();
        assert_eq!(a["first_response"]["count"], 1);
        assert_eq!(
            a["first_response"]["median_seconds"].as_f64().unwrap(),
            first_response as f64 / 1000.0
        );
        assert_eq!(
            a["resolution"],
            json!({"count": 0, "median_seconds": null, "p90_seconds": null})
        );
        // No presence in this process: unknown, not zero.
        assert_eq!(a["online_users"], Value::Null);
        assert_eq!(a["usage"]["messages"]["used"], 3);
        assert_eq!(a["usage"]["monthly_active_users"]["used"], 1);
    }

    // The default range: the last 7 days by the day.
    let r = s.send(reqwest::Method::GET, &path, &owner, None).await;
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["granularity"], "day");
    assert_eq!(a["messages"].as_array().unwrap().len(), 8);

    // Another owner's project answers like a missing one; a platform admin's own project
    // is not the owner's either.
    let foreign = format!(
        "/api/admin/projects/{}/analytics",
        platforms_own["id"].as_str().unwrap()
    );
    let r = s.send(reqwest::Method::GET, &foreign, &owner, None).await;
    assert_error(r, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    let missing = format!("/api/admin/projects/{}/analytics", ProjectId::new_v7());
    let r = s
        .send(reqwest::Method::GET, &missing, &platform, None)
        .await;
    assert_error(r, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;

    for bad in [
        "?from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z",
        "?from=last-week",
        "?granularity=minute",
        "?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&granularity=hour",
    ] {
        let r = s
            .send(reqwest::Method::GET, &format!("{path}{bad}"), &owner, None)
            .await;
        assert_error(
            r,
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ValidationFailed,
        )
        .await;
    }
}
