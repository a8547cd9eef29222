//! `/api/v1/webhooks` through a full in-process `serve` and its delivery worker, and through
//! the distributed mode (a real gateway process queues, a real control-plane process delivers,
//! over Cassandra and NATS), with a real receiver that verifies signatures with the
//! `standardwebhooks` PyPI package (`webhooks/tests/receiver.py`; `LARACHAT_WEBHOOKS_PYTHON`
//! from scripts/test.sh; the cluster test also needs `LARACHAT_TEST_NATS_URL` and
//! `LARACHAT_TEST_CASSANDRA`).

mod common;
mod harness;

use std::process::Stdio;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use common::{Server, assert_error};

struct PyReceiver {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    port: u16,
}

impl PyReceiver {
    async fn start(secret: &str) -> Self {
        Self::start_with(secret, &[]).await
    }

    /// `extra`: `["bodies"]` makes the receiver print each verified body after its id.
    async fn start_with(secret: &str, extra: &[&str]) -> Self {
        let python = std::env::var("LARACHAT_WEBHOOKS_PYTHON").expect(
            "LARACHAT_WEBHOOKS_PYTHON is not set: a python with `standardwebhooks` \
             (scripts/test.sh creates ~/.cache/larachat/webhooks-venv)",
        );
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/webhooks/tests/receiver.py");
        let mut child = Command::new(python)
            .args([script, "0", secret])
            .args(extra)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the python receiver");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next_line().await.unwrap().expect("receiver started");
        let port = first["listening ".len()..].parse().expect("port");
        Self { child, lines, port }
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .expect("a delivery within 30 s")
            .unwrap()
            .expect("receiver alive")
    }
}

async fn webhooks_server() -> Server {
    Server::start_with(|c| {
        // The receiver is on loopback, over http.
        c.webhooks.allow_insecure_targets = true;
    })
    .await
}

/// Starts a receiver that knows `secret` (shown only when the endpoint was registered) and
/// points the endpoint `id` at it.
async fn point_at_new_receiver(
    server: &Server,
    key: &str,
    id: &str,
    secret: &str,
    extra: &[&str],
) -> PyReceiver {
    let py = PyReceiver::start_with(secret, extra).await;
    let url = format!("http://127.0.0.1:{}/hook", py.port);
    let (s, body) = server
        .call(
            Method::PATCH,
            &format!("/api/v1/webhooks/{id}"),
            key,
            Some(json!({"url": url})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    py
}

#[track_caller]
fn expect(got: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert_error(&got.1, code);
}

#[tokio::test]
async fn register_test_event_rotation_deliveries_and_redelivery() {
    let server = webhooks_server().await;
    let t = server.tenant("hooks").await;

    // Registration refuses bad input with catalog errors.
    for (body, code) in [
        (json!({"url": "https://10.0.0.1/hook"}), "validation_failed"),
        (
            json!({"url": "https://169.254.169.254/latest"}),
            "validation_failed",
        ),
        (json!({"url": "ftp://example.com/"}), "validation_failed"),
        (json!({"url": "not a url"}), "validation_failed"),
        (
            json!({"url": "https://example.com/", "events": ["message.exploded"]}),
            "validation_failed",
        ),
        (
            json!({"url": "https://example.com/", "events": []}),
            "validation_failed",
        ),
        (
            json!({"url": "https://example.com/", "colour": "red"}),
            "invalid_payload",
        ),
    ] {
        let got = server.post("/api/v1/webhooks", &t.key, body.clone()).await;
        let status = if code == "invalid_payload" {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        expect(&got, status, code);
    }

    // Register; the secret is shown once.
    let placeholder = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut py = PyReceiver::start(placeholder).await;
    let url = format!("http://127.0.0.1:{}/hook", py.port);
    let (s, created) = server
        .post(
            "/api/v1/webhooks",
            &t.key,
            json!({"url": url, "description": "backend", "events": ["message.sent", "conversation.closed"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["webhook"]["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(
        created["webhook"]["events"],
        json!(["message.sent", "conversation.closed"])
    );
    let (s, got) = server.get(&format!("/api/v1/webhooks/{id}"), &t.key).await;
    assert_eq!(s, StatusCode::OK);
    assert!(got.get("secret").is_none(), "never shown again");
    let (_, list) = server.get("/api/v1/webhooks", &t.key).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);

    // The receiver knows the real secret now.
    py.child.kill().await.unwrap();
    let mut py = point_at_new_receiver(&server, &t.key, &id, &secret, &[]).await;

    // A test event, delivered by serve's worker and verified by the package.
    let (s, queued) = server
        .post(&format!("/api/v1/webhooks/{id}/test"), &t.key, json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{queued}");
    let event_id = queued["event_id"].as_str().unwrap().to_owned();
    assert_eq!(py.line().await, format!("ok {event_id}"));

    // Rotation: the receiver still on the old secret keeps verifying during the overlap.
    let (s, rotated) = server
        .post(
            &format!("/api/v1/webhooks/{id}/rotate-secret"),
            &t.key,
            json!({"overlap_secs": 3600}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{rotated}");
    assert_ne!(rotated["secret"], secret);
    assert!(rotated["previous_secret_expires_at"].is_string());
    let (_, q2) = server
        .post(&format!("/api/v1/webhooks/{id}/test"), &t.key, json!({}))
        .await;
    let second = q2["event_id"].as_str().unwrap().to_owned();
    assert_eq!(py.line().await, format!("ok {second}"));

    // The deliveries log: both succeeded, with the attempt's response code.
    let deliveries = loop {
        let (s, page) = server
            .get(
                &format!("/api/v1/webhooks/{id}/deliveries?status=succeeded"),
                &t.key,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{page}");
        // The receiver answers before the worker records the attempt.
        if page["data"].as_array().unwrap().len() == 2 {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(deliveries["data"][0]["event_id"], event_id.as_str());
    assert_eq!(deliveries["data"][0]["event"], "webhook.test");
    assert_eq!(deliveries["data"][0]["last_response_code"], 204);
    let (s, detail) = server
        .get(
            &format!("/api/v1/webhooks/{id}/deliveries/{event_id}"),
            &t.key,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(detail["payload"]["id"], event_id.as_str());
    assert_eq!(detail["attempts"][0]["response_code"], 204);
    let (s, page) = server
        .get(
            &format!("/api/v1/webhooks/{id}/deliveries?status=bogus"),
            &t.key,
        )
        .await;
    expect(
        &(s, page),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );

    // Redeliver one: the same webhook-id again.
    let (s, _) = server
        .post(
            &format!("/api/v1/webhooks/{id}/deliveries/{event_id}/redeliver"),
            &t.key,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(py.line().await, format!("ok {event_id}"));
    // Redeliver a range (every state): both events again.
    let (s, r) = server
        .post(
            &format!("/api/v1/webhooks/{id}/redeliver"),
            &t.key,
            json!({"since": "2020-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z", "status": "all"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    assert_eq!(r["count"], 2);
    let mut again = vec![py.line().await, py.line().await];
    again.sort();
    let mut want = vec![format!("ok {event_id}"), format!("ok {second}")];
    want.sort();
    assert_eq!(again, want);

    // Delete.
    let (s, _) = server
        .call(
            Method::DELETE,
            &format!("/api/v1/webhooks/{id}"),
            &t.key,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let got = server.get(&format!("/api/v1/webhooks/{id}"), &t.key).await;
    expect(&got, StatusCode::NOT_FOUND, "not_found");
    server.stop().await;
}

/// The whole path of a domain event in single-node mode: a change commits its event to the
/// SQLite outbox, the `webhooks` consumer of `serve` turns it into a delivery for the matching
/// endpoint, and the worker delivers it signed (verified by the `standardwebhooks` package),
/// with the event's stable id as `webhook-id` and the seed's payload shape.
#[tokio::test]
async fn domain_events_reach_matching_endpoints() {
    let server = webhooks_server().await;
    let t = server.tenant("events").await;
    // Nothing matching happens before the endpoint points at the receiver.
    let (s, created) = server
        .post(
            "/api/v1/webhooks",
            &t.key,
            json!({"url": "https://hooks.example.com/",
                   "events": ["message.sent", "conversation.closed"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["webhook"]["id"].as_str().unwrap();
    let mut py = point_at_new_receiver(&server, &t.key, id, &secret, &["bodies"]).await;

    // user.created and conversation.created happen too; the filter keeps them away.
    let (ada, token) = server.user(&t.key, "ada").await;
    let conversation = server.conversation(&t.key, &[ada.as_str()]).await;
    let sent = server.send(&token, &conversation, "hello hooks").await;
    let (s, _) = server
        .call(
            Method::PATCH,
            &format!("/api/v1/conversations/{conversation}"),
            &t.key,
            Some(json!({"status": "closed", "assignee": "ana@acme"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    let mut got = Vec::new();
    for _ in 0..2 {
        let line = py.line().await;
        let rest = line.strip_prefix("ok ").unwrap_or_else(|| panic!("{line}"));
        let (webhook_id, body) = rest.split_once(' ').expect("id and body");
        let body: Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(body["id"], webhook_id, "webhook-id is the event id");
        assert_eq!(body["project_id"], t.project_id.as_str());
        got.push(body);
    }
    got.sort_by_key(|b| b["event"].as_str().unwrap().to_owned());
    assert_eq!(got[0]["event"], "conversation.closed", "{got:?}");
    assert_eq!(got[0]["data"]["conversation_id"], conversation.as_str());
    assert_eq!(got[0]["data"]["status"], "closed");
    assert_eq!(
        got[0]["data"]["assignee"], "ana@acme",
        "the payload names the assignee"
    );
    assert_eq!(got[1]["event"], "message.sent", "{got:?}");
    assert_eq!(got[1]["data"]["message_id"], sent["id"]);
    assert_eq!(got[1]["data"]["text"], "hello hooks");
    assert_eq!(got[1]["data"]["sender"]["id"], sent["sender"]["id"]);

    // The consumer handles the log in order, and conversation.closed came last: the events
    // before it (user.created, conversation.created) were fanned out already, and did not
    // match the filter — the endpoint has exactly these two deliveries.
    let (s, deliveries) = server
        .get(
            &format!("/api/v1/webhooks/{id}/deliveries?status=all"),
            &t.key,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{deliveries}");
    let mut events: Vec<&str> = deliveries["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event"].as_str().unwrap())
        .collect();
    events.sort_unstable();
    assert_eq!(
        events,
        ["conversation.closed", "message.sent"],
        "{deliveries}"
    );
    server.stop().await;
}

#[tokio::test]
async fn tenancy_and_credentials() {
    let server = webhooks_server().await;
    let a = server.tenant("a").await;
    let b = server.tenant("b").await;
    let (s, created) = server
        .post(
            "/api/v1/webhooks",
            &a.key,
            json!({"url": "https://hooks.example.com/a"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["webhook"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created["webhook"]["events"],
        Value::Null,
        "all events by default"
    );

    // Another project's key: 404 exactly like a missing id, on every route.
    let missing = uuid::Uuid::now_v7().to_string();
    for wid in [&id, &missing] {
        for (method, path, body) in [
            (Method::GET, format!("/api/v1/webhooks/{wid}"), None),
            (
                Method::PATCH,
                format!("/api/v1/webhooks/{wid}"),
                Some(json!({"enabled": false})),
            ),
            (Method::DELETE, format!("/api/v1/webhooks/{wid}"), None),
            (
                Method::POST,
                format!("/api/v1/webhooks/{wid}/test"),
                Some(json!({})),
            ),
            (
                Method::POST,
                format!("/api/v1/webhooks/{wid}/rotate-secret"),
                Some(json!({})),
            ),
            (
                Method::GET,
                format!("/api/v1/webhooks/{wid}/deliveries"),
                None,
            ),
            (
                Method::GET,
                format!("/api/v1/webhooks/{wid}/deliveries/{missing}"),
                None,
            ),
        ] {
            let got = server.call(method.clone(), &path, &b.key, body).await;
            expect(&got, StatusCode::NOT_FOUND, "not_found");
        }
    }
    let (_, list) = server.get("/api/v1/webhooks", &b.key).await;
    assert_eq!(list["data"], json!([]));

    // Secret keys only: an end-user token is refused; a read-only key reads, cannot write.
    let (_, user_token) = server.user(&a.key, "u-1").await;
    let got = server.get("/api/v1/webhooks", &user_token).await;
    expect(&got, StatusCode::FORBIDDEN, "forbidden");
    let ro = server.key(&a.project_id, &["read"], None).await;
    assert_eq!(server.get("/api/v1/webhooks", &ro).await.0, StatusCode::OK);
    let got = server
        .post(
            "/api/v1/webhooks",
            &ro,
            json!({"url": "https://hooks.example.com/b"}),
        )
        .await;
    expect(&got, StatusCode::FORBIDDEN, "forbidden");

    // Disable and re-enable.
    let (s, v) = server
        .call(
            Method::PATCH,
            &format!("/api/v1/webhooks/{id}"),
            &a.key,
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["disabled_reason"], "api");
    let (_, v) = server
        .call(
            Method::PATCH,
            &format!("/api/v1/webhooks/{id}"),
            &a.key,
            Some(json!({"enabled": true, "events": null})),
        )
        .await;
    assert_eq!(
        (v["enabled"].clone(), v["disabled_reason"].clone()),
        (json!(true), Value::Null)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_a_gateway_queues_and_the_control_plane_delivers() {
    let insecure = (
        "LARACHAT_WEBHOOKS__ALLOW_INSECURE_TARGETS".to_owned(),
        "true".to_owned(),
    );
    let cluster = harness::Cluster::start_with_all(
        &harness::Backends::shared(),
        vec![insecure],
        vec![vec![]],
    )
    .await;
    let t = cluster.tenant("hooks").await;

    let (s, created) = cluster
        .client(
            0,
            Method::POST,
            "/api/v1/webhooks",
            &t.key,
            Some(json!({"url": "https://hooks.example.com/"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["webhook"]["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let mut py = PyReceiver::start(&secret).await;
    let url = format!("http://127.0.0.1:{}/hook", py.port);
    let (s, _) = cluster
        .client(
            0,
            Method::PATCH,
            &format!("/api/v1/webhooks/{id}"),
            &t.key,
            Some(json!({"url": url})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, queued) = cluster
        .client(
            0,
            Method::POST,
            &format!("/api/v1/webhooks/{id}/test"),
            &t.key,
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{queued}");
    let event_id = queued["event_id"].as_str().unwrap().to_owned();
    assert_eq!(
        py.line().await,
        format!("ok {event_id}"),
        "delivered by the control plane"
    );
    let detail = loop {
        let (s, d) = cluster
            .client(
                0,
                Method::GET,
                &format!("/api/v1/webhooks/{id}/deliveries/{event_id}"),
                &t.key,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{d}");
        if d["delivery"]["status"] == "succeeded" {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(detail["attempts"][0]["response_code"], 204);
    // Another project's key: 404 on the cluster too.
    let other = cluster.tenant("other").await;
    let (s, _) = cluster
        .client(
            0,
            Method::GET,
            &format!("/api/v1/webhooks/{id}"),
            &other.key,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
