//! Deliveries checked by an independent implementation: `tests/receiver.py` verifies every
//! request with the `standardwebhooks` package from PyPI. Needs `LARACHAT_WEBHOOKS_PYTHON`, a
//! Python with that package (scripts/test.sh sets it up); without it the tests fail.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio_util::sync::CancellationToken;

use larachat_core::event::DomainEvent;
use larachat_core::id::{ConversationId, MessageId, ProjectId};
use larachat_core::model::{Actor, ActorKind, Message};
use larachat_webhooks::model::{DeliveryQuery, DeliveryStatus, Endpoint, EndpointId, EventFilter};
use larachat_webhooks::signing::Secret;
use larachat_webhooks::store::SqliteWebhookStore;
use larachat_webhooks::worker::run_deliveries;
use larachat_webhooks::{
    ClientSettings, DeliveryClient, Dispatcher, Outgoing, RetryPolicy, SystemClock, TargetPolicy,
    TargetUrl, WebhookStore,
};

const DEV: TargetPolicy = TargetPolicy {
    allow_insecure: true,
};

struct PyReceiver {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    port: u16,
}

impl PyReceiver {
    async fn start(port: u16, secret: &Secret) -> Self {
        let python = std::env::var("LARACHAT_WEBHOOKS_PYTHON").expect(
            "LARACHAT_WEBHOOKS_PYTHON is not set: a python with `standardwebhooks` \
             (scripts/test.sh creates ~/.cache/larachat/webhooks-venv)",
        );
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/receiver.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .arg(secret.expose())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the python receiver");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next_line().await.unwrap().expect("receiver started");
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected receiver output {first:?}"));
        Self { child, lines, port }
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("receiver output within 60 s")
            .unwrap()
            .expect("receiver alive")
    }
}

fn event(project: ProjectId) -> DomainEvent {
    DomainEvent::message_sent(&Message {
        id: MessageId::following(None),
        seq: 1,
        project_id: project,
        conversation_id: ConversationId::new_v7(),
        sender: Actor {
            kind: ActorKind::Agent,
            id: "ada".into(),
            name: Some("Ada".into()),
        },
        text: "Hello — ünïcødé ✓".into(),
        metadata: serde_json::json!({"k": [1, 2]}),
        client_msg_id: Some("c-1".into()),
        created_at: larachat_core::model::now(),
    })
}

#[tokio::test]
async fn signatures_verify_with_the_standardwebhooks_package() {
    let (old, new, stranger) = (Secret::generate(), Secret::generate(), Secret::generate());
    let mut py = PyReceiver::start(0, &old).await;
    let client = DeliveryClient::new(ClientSettings {
        policy: DEV,
        ..ClientSettings::default()
    })
    .unwrap();
    let url = TargetUrl::parse(&format!("http://127.0.0.1:{}/hook", py.port), DEV).unwrap();
    let e = event(ProjectId::new_v7());
    let body = e.to_json();
    let id = e.id.to_string();
    let msg = Outgoing {
        id: &id,
        timestamp: larachat_core::model::now(),
        body: &body,
    };
    // During a rotation overlap both secrets sign: a receiver still on the old one accepts.
    let out = client.deliver(&url, &[new.clone(), old.clone()], msg).await;
    assert_eq!(out.status, Some(204), "{out:?}");
    assert_eq!(py.line().await, format!("ok {id}"));
    let out = client.deliver(&url, std::slice::from_ref(&old), msg).await;
    assert_eq!(out.status, Some(204));
    assert_eq!(py.line().await, format!("ok {id}"));
    // Signed with a secret the receiver does not know: refused by the package.
    let out = client.deliver(&url, &[new, stranger], msg).await;
    assert_eq!(out.status, Some(400));
    assert!(py.line().await.starts_with("bad "));
    py.child.kill().await.unwrap();
}

#[tokio::test]
async fn receiver_down_then_up_every_event_arrives_once_across_two_workers() {
    const EVENTS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("webhooks.sqlite3");
    // Two workers on one database file, as two processes would be.
    let stores: Vec<Arc<dyn WebhookStore>> = (0..2)
        .map(|_| Arc::new(SqliteWebhookStore::open(&path, 30).unwrap()) as Arc<dyn WebhookStore>)
        .collect();
    // A compressed schedule (30 s horizon) on the real clock: retries every few ms at first,
    // then about 1, 2, 4, 8 s apart.
    let retry = RetryPolicy {
        attempts: 20,
        horizon: Duration::from_secs(30),
        max_retry_after: Duration::from_secs(5),
    };
    let dispatchers: Vec<Dispatcher> = stores
        .iter()
        .map(|s| {
            let client = DeliveryClient::new(ClientSettings {
                policy: DEV,
                timeout: Duration::from_secs(5),
                ..ClientSettings::default()
            })
            .unwrap();
            Dispatcher::new(
                s.clone(),
                client,
                Arc::new(SystemClock),
                retry,
                Duration::from_secs(5),
            )
        })
        .collect();

    // The receiver's port, free for now: the receiver is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let project = ProjectId::new_v7();
    let now = larachat_core::model::now();
    let ep = Endpoint {
        id: EndpointId::new_v7(),
        project_id: project,
        url: format!("http://127.0.0.1:{port}/hook"),
        description: "python".into(),
        filter: EventFilter::All,
        enabled: true,
        disabled_reason: None,
        secret: Secret::generate(),
        previous_secret: None,
        created_at: now,
        updated_at: now,
    };
    stores[0].create_endpoint(&ep).await.unwrap();
    let shutdown = CancellationToken::new();
    let workers: Vec<_> = dispatchers
        .iter()
        .map(|d| {
            tokio::spawn(run_deliveries(
                d.clone(),
                Duration::from_millis(50),
                shutdown.clone(),
            ))
        })
        .collect();
    let mut ids = HashSet::new();
    for i in 0..EVENTS {
        // Both workers fan out (as two consumers handed the same event would): once each.
        let e = event(project);
        dispatchers[i % 2].fan_out(&e).await.unwrap();
        dispatchers[(i + 1) % 2].fan_out(&e).await.unwrap();
        ids.insert(e.id.to_string());
    }

    // Wait until every delivery has failed at least twice against the closed port.
    let all = DeliveryQuery {
        limit: 1000,
        ..DeliveryQuery::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ds = stores[0]
            .list_deliveries(project, ep.id, &all)
            .await
            .unwrap();
        if ds.len() == EVENTS && ds.iter().all(|d| d.attempts >= 2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "attempts while the receiver is down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failed_while_down: u32 = stores[0]
        .list_deliveries(project, ep.id, &all)
        .await
        .unwrap()
        .iter()
        .map(|d| d.attempts)
        .sum();

    let mut py = PyReceiver::start(port, &ep.secret).await;
    let mut seen = HashSet::new();
    let mut received = 0;
    while seen.len() < EVENTS {
        let line = py.line().await;
        let id = line
            .strip_prefix("ok ")
            .unwrap_or_else(|| panic!("receiver: {line}"));
        assert!(ids.contains(id), "an id that was sent: {id}");
        received += 1;
        seen.insert(id.to_owned());
    }
    // Let the workers settle: every delivery is marked succeeded.
    loop {
        let ds = stores[1]
            .list_deliveries(project, ep.id, &all)
            .await
            .unwrap();
        if ds.iter().all(|d| d.status == DeliveryStatus::Succeeded) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    for w in workers {
        w.await.unwrap();
    }
    // Anything the receiver got after the last new id (a duplicate) is still in its pipe.
    py.child.kill().await.unwrap();
    while let Ok(Some(line)) = py.lines.next_line().await {
        if line.starts_with("ok ") {
            received += 1;
        }
    }
    println!(
        "receiver down then up: {EVENTS} events, {failed_while_down} failed attempts while down, \
         {received} received, {} distinct webhook-ids",
        seen.len()
    );
    assert_eq!(seen, ids, "every event delivered");
    assert_eq!(
        received, EVENTS,
        "each webhook-id once: no attempt after a success"
    );
}
