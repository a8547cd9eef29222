//! Project teams on the Admin API (a real server on 127.0.0.1:0, SqliteStore, LocalBus): the
//! permission matrix route by route, invitations (single use, expiry, concurrent accepts,
//! existing admins), the last-owner rule, and members' agent tokens.

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use larachat_broker::LocalBus;
use larachat_control_plane::{ControlPlane, ControlPlaneConfig, bootstrap_admin, router};
use larachat_core::model;
use larachat_core::plan::PlanId;
use larachat_core::team::{self, Invite, ProjectRole};
use larachat_core::{InviteId, ProjectId};
use larachat_store::{SqliteConfig, SqliteStore, Store};

const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";
const PEPPER: &[u8] = b"test-pepper";
const PLATFORM: (&str, &str) = ("root@example.com", "platform password");
const OWNER: (&str, &str) = ("owner@example.com", "owner password!");
const OUTSIDER: (&str, &str) = ("outsider@example.com", "outsider password");

struct Server {
    base: String,
    http: reqwest::Client,
    store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(SqliteStore::open(SqliteConfig::new(dir.path().join("db.sqlite"))).unwrap());
        for (email, password) in [PLATFORM, OWNER, OUTSIDER] {
            bootstrap_admin(store.as_ref(), email, password)
                .await
                .unwrap();
        }
        let cp = ControlPlane::new(
            store.clone(),
            Arc::new(LocalBus::new()),
            ControlPlaneConfig {
                platform_admins: vec![PLATFORM.0.to_owned()],
                default_plan: PlanId::parse("enterprise").unwrap(),
                public_url: Some("https://chat.example.com/".into()),
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
            _dir: dir,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn token(&self, (email, password): (&str, &str)) -> String {
        let (s, b) = self
            .call(
                Method::POST,
                "/api/admin/login",
                None,
                Some(json!({"email": email, "password": password})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b["token"].as_str().unwrap().to_owned()
    }

    async fn invite(
        &self,
        token: &str,
        project: &str,
        email: &str,
        role: &str,
    ) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/api/admin/projects/{project}/invites"),
            Some(token),
            Some(json!({"email": email, "role": role})),
        )
        .await
    }

    async fn accept(&self, token: &str, name: &str, password: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/api/admin/invites/accept",
            None,
            Some(json!({"token": token, "name": name, "password": password})),
        )
        .await
    }

    /// Invites `email` with `role` and accepts as a new admin; returns (admin token, admin id).
    async fn join(
        &self,
        inviter: &str,
        project: &str,
        email: &str,
        role: &str,
    ) -> (String, String) {
        let (s, inv) = self.invite(inviter, project, email, role).await;
        assert_eq!(s, StatusCode::CREATED, "{inv}");
        let (s, acc) = self
            .accept(
                inv["token"].as_str().unwrap(),
                email,
                "a long enough password",
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{acc}");
        assert_eq!(acc["member"]["role"], role);
        (
            acc["token"].as_str().unwrap().to_owned(),
            acc["user"]["id"].as_str().unwrap().to_owned(),
        )
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

/// Every role against representative routes: what the matrix allows answers 2xx, the rest
/// 403; a non-member gets 404 everywhere (as for a missing project).
#[tokio::test]
async fn the_permission_matrix_on_every_kind_of_route() {
    let s = Server::start().await;
    let platform = s.token(PLATFORM).await;
    let owner = s.token(OWNER).await;
    let outsider = s.token(OUTSIDER).await;
    let (st, p) = s
        .call(
            Method::POST,
            "/api/admin/projects",
            Some(&owner),
            Some(json!({"name": "Acme"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{p}");
    let pid = p["id"].as_str().unwrap().to_owned();
    let (admin, _) = s.join(&owner, &pid, "adm@example.com", "admin").await;
    let (agent, agent_id) = s.join(&owner, &pid, "agent@example.com", "agent").await;

    // (route, method, body, [owner, admin, agent] expected statuses)
    let proj = format!("/api/admin/projects/{pid}");
    let ok = StatusCode::OK;
    let created = StatusCode::CREATED;
    let no = StatusCode::FORBIDDEN;
    let cases: Vec<(Method, String, Option<Value>, [StatusCode; 3])> = vec![
        (Method::GET, proj.clone(), None, [ok, ok, ok]),
        (Method::GET, format!("{proj}/members"), None, [ok, ok, ok]),
        (Method::GET, format!("{proj}/analytics"), None, [ok, ok, ok]),
        (
            Method::POST,
            format!("{proj}/agent-token"),
            None,
            [created, created, created],
        ),
        (
            Method::PATCH,
            proj.clone(),
            Some(json!({"name": "Acme 2"})),
            [ok, ok, no],
        ),
        (Method::GET, format!("{proj}/api-keys"), None, [ok, ok, no]),
        (
            Method::POST,
            format!("{proj}/api-keys"),
            Some(json!({"name": "k"})),
            [created, created, no],
        ),
        (Method::GET, format!("{proj}/widget"), None, [ok, ok, no]),
        (
            Method::PUT,
            format!("{proj}/widget"),
            Some(json!({"allowed_origins": []})),
            [ok, ok, no],
        ),
        (
            Method::POST,
            format!("{proj}/widget/identity-secret"),
            None,
            [ok, ok, no],
        ),
        (Method::GET, format!("{proj}/usage"), None, [ok, ok, no]),
        (
            Method::GET,
            format!("{proj}/usage/history"),
            None,
            [ok, ok, no],
        ),
        (Method::GET, format!("{proj}/invites"), None, [ok, ok, no]),
        (
            Method::POST,
            format!("{proj}/invites"),
            Some(json!({"email": "x@example.com", "role": "agent"})),
            [created, created, no],
        ),
        (
            Method::POST,
            format!("{proj}/invites"),
            Some(json!({"email": "y@example.com", "role": "owner"})),
            [created, no, no],
        ),
        // A plan change stays a platform admin's.
        (
            Method::PATCH,
            proj.clone(),
            Some(json!({"plan": "pro"})),
            [no, no, no],
        ),
    ];
    for (method, path, body, expected) in &cases {
        for (who, token, want) in [
            ("owner", &owner, expected[0]),
            ("admin", &admin, expected[1]),
            ("agent", &agent, expected[2]),
        ] {
            let (st, b) = s
                .call(method.clone(), path, Some(token), body.clone())
                .await;
            assert_eq!(st, want, "{who} {method} {path}: {b}");
            if st == StatusCode::FORBIDDEN {
                assert_eq!(code(&b), "forbidden");
            }
        }
        // A non-member: 404 whatever the route, like a missing project.
        let (st, b) = s
            .call(method.clone(), path, Some(&outsider), body.clone())
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND, "outsider {method} {path}: {b}");
        assert_eq!(code(&b), "not_found");
        let missing = path.replace(&pid, &ProjectId::new_v7().to_string());
        let (st2, b2) = s
            .call(method.clone(), &missing, Some(&owner), body.clone())
            .await;
        assert_eq!(
            (st2, &b2),
            (st, &b),
            "a foreign and a missing project answer alike"
        );
    }
    // The platform admin may do everything, also what owners may not.
    let (st, b) = s
        .call(
            Method::PATCH,
            &proj,
            Some(&platform),
            Some(json!({"plan": "pro"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["plan"], "pro");

    // Members: an admin manages agents but not owners.
    let owner_id = s
        .store
        .admin_user_by_email(OWNER.0)
        .await
        .unwrap()
        .unwrap()
        .id
        .to_string();
    let (st, _) = s
        .call(
            Method::PATCH,
            &format!("{proj}/members/{owner_id}"),
            Some(&admin),
            Some(json!({"role": "agent"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .call(
            Method::PATCH,
            &format!("{proj}/members/{agent_id}"),
            Some(&admin),
            Some(json!({"role": "owner"})),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "promoting to owner is an owner's"
    );
    let (st, _) = s
        .call(
            Method::PATCH,
            &format!("{proj}/members/{agent_id}"),
            Some(&agent),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "agents change no roles, not even their own"
    );
    let (st, m) = s
        .call(
            Method::PATCH,
            &format!("{proj}/members/{agent_id}"),
            Some(&admin),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{m}");
    assert_eq!(m["role"], "admin");
    let (st, m) = s
        .call(
            Method::PATCH,
            &format!("{proj}/members/{agent_id}"),
            Some(&admin),
            Some(json!({"role": "agent"})),
        )
        .await;
    assert_eq!((st, m["role"].clone()), (StatusCode::OK, json!("agent")));

    // "My projects": each sees the project with its role and permissions; the outsider none;
    // the platform admin every project.
    for (token, role) in [(&owner, "owner"), (&admin, "admin"), (&agent, "agent")] {
        let (st, list) = s
            .call(Method::GET, "/api/admin/projects", Some(token), None)
            .await;
        assert_eq!(st, StatusCode::OK);
        let data = list["data"].as_array().unwrap();
        assert_eq!(data.len(), 1, "{list}");
        assert_eq!(data[0]["id"], pid.as_str());
        assert_eq!(data[0]["role"], role);
        let perms = data[0]["permissions"].as_array().unwrap();
        assert_eq!(perms.contains(&json!("delete_project")), role == "owner");
        assert_eq!(perms.contains(&json!("manage_keys")), role != "agent");
        assert!(perms.contains(&json!("agent_token")));
    }
    let (_, list) = s
        .call(Method::GET, "/api/admin/projects", Some(&outsider), None)
        .await;
    assert_eq!(list["data"], json!([]));
    let (st, mine) = s
        .call(
            Method::POST,
            "/api/admin/projects",
            Some(&outsider),
            Some(json!({"name": "Other"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{mine}");
    let (_, list) = s
        .call(Method::GET, "/api/admin/projects", Some(&platform), None)
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
    // A platform admin who is not a member gets no agent token (the gateway checks members).
    let (st, b) = s
        .call(
            Method::POST,
            &format!("{proj}/agent-token"),
            Some(&platform),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{b}");

    // Deleting: admins and agents may not, the owner may.
    for token in [&admin, &agent] {
        let (st, _) = s.call(Method::DELETE, &proj, Some(token), None).await;
        assert_eq!(st, StatusCode::FORBIDDEN);
    }
    let (st, _) = s.call(Method::DELETE, &proj, Some(&owner), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = s.call(Method::GET, &proj, Some(&agent), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

/// The invitation flow: a one-time link, listed without its token, used once (also by two
/// concurrent accepts), refused once withdrawn or expired, and joining as an existing admin
/// needs that admin's password.
#[tokio::test]
async fn invitations_are_single_use_and_expire() {
    let s = Server::start().await;
    let owner = s.token(OWNER).await;
    let (_, p) = s
        .call(
            Method::POST,
            "/api/admin/projects",
            Some(&owner),
            Some(json!({"name": "Acme"})),
        )
        .await;
    let pid = p["id"].as_str().unwrap().to_owned();

    let (st, inv) = s.invite(&owner, &pid, "  Ann@Example.com ", "agent").await;
    assert_eq!(st, StatusCode::CREATED, "{inv}");
    let token = inv["token"].as_str().unwrap().to_owned();
    assert_eq!(
        inv["url"],
        format!("https://chat.example.com/dashboard/#/invite/{token}")
    );
    assert_eq!(inv["invite"]["email"], "ann@example.com");
    assert_eq!(inv["invite"]["role"], "agent");
    let expires =
        chrono::DateTime::parse_from_rfc3339(inv["invite"]["expires_at"].as_str().unwrap())
            .unwrap();
    let created =
        chrono::DateTime::parse_from_rfc3339(inv["invite"]["created_at"].as_str().unwrap())
            .unwrap();
    assert_eq!(expires - created, chrono::Duration::days(7));
    let (st, list) = s
        .call(
            Method::GET,
            &format!("/api/admin/projects/{pid}/invites"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(
        !list.to_string().contains(&token),
        "the token is shown once"
    );
    // Only its SHA-256 is stored.
    let stored = s.store.list_invites(pid.parse().unwrap()).await.unwrap();
    let parsed = team::ParsedInviteToken::parse(&token).unwrap();
    assert!(parsed.matches(&stored[0].token_hash));

    // A weak password is refused and leaves the invitation usable.
    let (st, b) = s.accept(&token, "Ann", "short").await;
    assert_eq!(
        (st, code(&b)),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed")
    );
    let (st, acc) = s.accept(&token, "Ann", "ann's long password").await;
    assert_eq!(st, StatusCode::OK, "{acc}");
    assert_eq!(acc["token_type"], "Bearer");
    assert_eq!(acc["member"]["name"], "Ann");
    assert_eq!(acc["member"]["project_id"], pid.as_str());
    let ann = acc["token"].as_str().unwrap().to_owned();
    let (st, me) = s.call(Method::GET, "/api/admin/me", Some(&ann), None).await;
    assert_eq!(
        (st, me["email"].clone()),
        (StatusCode::OK, json!("ann@example.com"))
    );
    assert_eq!(me["platform_admin"], false);
    // Ann logs in with her own password from now on.
    s.token(("ann@example.com", "ann's long password")).await;
    // Used: the same answer as an unknown token.
    let (st, used) = s.accept(&token, "Ann", "ann's long password").await;
    assert_eq!((st, code(&used)), (StatusCode::NOT_FOUND, "not_found"));
    let unknown = team::generate_invite_token(pid.parse().unwrap(), InviteId::new_v7()).plaintext;
    let (st2, other) = s.accept(&unknown, "Ann", "ann's long password").await;
    assert_eq!((st2, &other), (st, &used));
    let (st, garbage) = s.accept("not-a-token", "Ann", "ann's long password").await;
    assert_eq!((st, &garbage), (StatusCode::NOT_FOUND, &used));
    let (st, list) = s
        .call(
            Method::GET,
            &format!("/api/admin/projects/{pid}/invites"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(
        (st, list["data"].clone()),
        (StatusCode::OK, json!([])),
        "no longer pending"
    );
    // Inviting a member again is a conflict.
    let (st, _) = s.invite(&owner, &pid, "ann@example.com", "admin").await;
    assert_eq!(st, StatusCode::CONFLICT);

    // Withdrawn: refused.
    let (_, inv) = s.invite(&owner, &pid, "bob@example.com", "agent").await;
    let inv_id = inv["invite"]["id"].as_str().unwrap();
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("/api/admin/projects/{pid}/invites/{inv_id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, b) = s
        .accept(inv["token"].as_str().unwrap(), "Bob", "bob's long password")
        .await;
    assert_eq!((st, &b), (StatusCode::NOT_FOUND, &used));

    // Expired (stored with an expiry in the past): refused, and not listed.
    let project: ProjectId = pid.parse().unwrap();
    let id = InviteId::new_v7();
    let t = team::generate_invite_token(project, id);
    let past = model::now() - chrono::Duration::seconds(1);
    s.store
        .create_invite(&Invite {
            id,
            project_id: project,
            email: "late@example.com".into(),
            role: ProjectRole::Agent,
            invited_by: s
                .store
                .admin_user_by_email(OWNER.0)
                .await
                .unwrap()
                .unwrap()
                .id,
            token_hash: t.hash,
            created_at: past - chrono::Duration::days(7),
            expires_at: past,
            accepted_at: None,
        })
        .await
        .unwrap();
    let (st, b) = s.accept(&t.plaintext, "Late", "late's long password").await;
    assert_eq!((st, &b), (StatusCode::NOT_FOUND, &used));
    let (_, list) = s
        .call(
            Method::GET,
            &format!("/api/admin/projects/{pid}/invites"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(list["data"], json!([]));
    assert!(
        s.store
            .admin_user_by_email("late@example.com")
            .await
            .unwrap()
            .is_none()
    );

    // An existing admin joins with its own password only.
    let (_, inv) = s.invite(&owner, &pid, OUTSIDER.0, "admin").await;
    let tok = inv["token"].as_str().unwrap();
    let (st, b) = s.accept(tok, "Out", "not the password at all").await;
    assert_eq!((st, code(&b)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (st, acc) = s.accept(tok, "Out", OUTSIDER.1).await;
    assert_eq!(st, StatusCode::OK, "{acc}");
    assert_eq!(acc["member"]["role"], "admin");
    let outsider_id = s
        .store
        .admin_user_by_email(OUTSIDER.0)
        .await
        .unwrap()
        .unwrap()
        .id;
    assert_eq!(acc["user"]["id"], outsider_id.to_string());
    s.token(OUTSIDER).await; // its password is unchanged

    // Two concurrent accepts of one token: exactly one joins.
    let (_, inv) = s.invite(&owner, &pid, "cy@example.com", "agent").await;
    let tok = inv["token"].as_str().unwrap().to_owned();
    let (a, b) = tokio::join!(
        s.accept(&tok, "Cy", "cy's long password"),
        s.accept(&tok, "Cy", "cy's long password")
    );
    let statuses = [a.0, b.0];
    println!("concurrent accepts answered {statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{a:?} {b:?}"
    );
    assert!(statuses.contains(&StatusCode::NOT_FOUND) || statuses.contains(&StatusCode::CONFLICT));
    let members = s.store.list_members(project).await.unwrap();
    assert_eq!(
        members
            .iter()
            .filter(|m| m.email == "cy@example.com")
            .count(),
        1
    );
}

/// The last owner can be neither demoted nor removed; with a second owner it can; any member
/// may leave; a removed member's access ends.
#[tokio::test]
async fn a_project_keeps_an_owner() {
    let s = Server::start().await;
    let owner = s.token(OWNER).await;
    let owner_id = s
        .store
        .admin_user_by_email(OWNER.0)
        .await
        .unwrap()
        .unwrap()
        .id
        .to_string();
    let (_, p) = s
        .call(
            Method::POST,
            "/api/admin/projects",
            Some(&owner),
            Some(json!({"name": "Acme"})),
        )
        .await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let members = format!("/api/admin/projects/{pid}/members");
    let (st, list) = s.call(Method::GET, &members, Some(&owner), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["data"][0]["admin_id"], owner_id.as_str());
    assert_eq!(list["data"][0]["role"], "owner");

    let (st, b) = s
        .call(
            Method::PATCH,
            &format!("{members}/{owner_id}"),
            Some(&owner),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!((st, code(&b)), (StatusCode::CONFLICT, "conflict"), "{b}");
    let (st, b) = s
        .call(
            Method::DELETE,
            &format!("{members}/{owner_id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!((st, code(&b)), (StatusCode::CONFLICT, "conflict"));

    let (second, second_id) = s.join(&owner, &pid, "co@example.com", "owner").await;
    let (agent, agent_id) = s.join(&second, &pid, "ag@example.com", "agent").await;
    let (st, m) = s
        .call(
            Method::PATCH,
            &format!("{members}/{owner_id}"),
            Some(&owner),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!((st, m["role"].clone()), (StatusCode::OK, json!("admin")));
    // Now the second owner is the last one.
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("{members}/{second_id}"),
            Some(&second),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    // An admin may not remove an owner; an agent may leave.
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("{members}/{second_id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("{members}/{agent_id}"),
            Some(&agent),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = s
        .call(
            Method::GET,
            &format!("/api/admin/projects/{pid}"),
            Some(&agent),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "a former member sees nothing");
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("{members}/{agent_id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

/// A member's agent token names the member and its project, and is signed like the gateway's.
#[tokio::test]
async fn members_get_agent_tokens_that_name_them() {
    let s = Server::start().await;
    let owner = s.token(OWNER).await;
    let (_, p) = s
        .call(
            Method::POST,
            "/api/admin/projects",
            Some(&owner),
            Some(json!({"name": "Acme"})),
        )
        .await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let (agent, agent_id) = s.join(&owner, &pid, "ag@example.com", "agent").await;
    let path = format!("/api/admin/projects/{pid}/agent-token");
    let (st, t) = s
        .call(
            Method::POST,
            &path,
            Some(&agent),
            Some(json!({"ttl_secs": 60})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    assert_eq!(
        t["agent"],
        json!({"type": "agent", "id": format!("member:{agent_id}"), "name": "ag@example.com"})
    );
    assert_eq!(t["scopes"], json!(["read", "write"]));
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&[format!("larachat:agent:{pid}")]);
    let claims = jsonwebtoken::decode::<Value>(
        t["token"].as_str().unwrap(),
        &jsonwebtoken::DecodingKey::from_secret(SECRET),
        &validation,
    )
    .expect("signed with the shared secret")
    .claims;
    assert_eq!(claims["by"], format!("member:{agent_id}"));
    assert_eq!(claims["sub"], format!("member:{agent_id}"));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        60
    );
    // The configured lifetime is the most; 0 is refused.
    let (_, long) = s
        .call(
            Method::POST,
            &path,
            Some(&agent),
            Some(json!({"ttl_secs": 99999})),
        )
        .await;
    let exp = chrono::DateTime::parse_from_rfc3339(long["expires_at"].as_str().unwrap()).unwrap();
    assert!(
        exp <= chrono::Utc::now() + chrono::Duration::minutes(15) + chrono::Duration::seconds(1)
    );
    let (st, _) = s
        .call(
            Method::POST,
            &path,
            Some(&agent),
            Some(json!({"ttl_secs": 0})),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
}
