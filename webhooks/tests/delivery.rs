//! Deliveries end to end against real HTTP receivers on loopback: the schedule on a fake
//! clock, `Retry-After`, `410 Gone`, dead letters and redelivery, rotation overlap, the SSRF
//! matrix (refused before any connection), redirects, the body cap and the timeout.
//! The receivers here are in-process axum servers that check signatures with our
//! `signing::verify`; `tests/receiver.rs` checks them with the `standardwebhooks` package.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use larachat_core::event::{DomainEvent, EventKind};
use larachat_core::id::{ConversationId, MessageId, ProjectId};
use larachat_core::model::{Actor, ActorKind, Message};
use larachat_webhooks::model::{DeliveryStatus, Endpoint, EndpointId, EventFilter};
use larachat_webhooks::signing::{self, Secret};
use larachat_webhooks::store::SqliteWebhookStore;
use larachat_webhooks::{
    ClientSettings, Clock, DeliveryClient, Dispatcher, Lookup, ManualClock, Outgoing, RetryPolicy,
    TargetPolicy, TargetUrl, WebhookStore,
};

/// One request as the receiver saw it.
#[derive(Debug)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Bytes,
}

/// A scripted answer: status, extra headers, body.
type Answer = (u16, Vec<(&'static str, String)>, String);
type Script = Arc<Mutex<VecDeque<Answer>>>;

/// A receiver answering from a script (then 204), reporting every request.
struct Receiver {
    addr: SocketAddr,
    script: Script,
    rx: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    async fn start() -> Self {
        let script: Script = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let s = script.clone();
        let app = Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let s = s.clone();
            let tx = tx.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let _ = tx.send(Received {
                    id: h("webhook-id"),
                    timestamp: h("webhook-timestamp"),
                    signature: h("webhook-signature"),
                    body,
                });
                let (status, extra, text) =
                    s.lock()
                        .pop_front()
                        .unwrap_or((204, Vec::new(), String::new()));
                let mut out = HeaderMap::new();
                for (k, v) in extra {
                    out.insert(k, v.parse().unwrap());
                }
                (StatusCode::from_u16(status).unwrap(), out, text).into_response()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, script, rx }
    }

    fn then(&self, status: u16) {
        self.script
            .lock()
            .push_back((status, Vec::new(), String::new()));
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(30), self.rx.recv())
            .await
            .expect("a delivery within 30 s")
            .unwrap()
    }

    fn nothing_more(&mut self) {
        assert!(self.rx.try_recv().is_err(), "no further request");
    }
}

fn t0() -> DateTime<Utc> {
    larachat_core::model::now()
}

fn message(project: ProjectId) -> DomainEvent {
    DomainEvent::message_sent(&Message {
        id: MessageId::following(None),
        seq: 1,
        project_id: project,
        conversation_id: ConversationId::new_v7(),
        sender: Actor {
            kind: ActorKind::EndUser,
            id: "u-1".into(),
            name: Some("John Doe".into()),
        },
        text: "Hello world".into(),
        metadata: serde_json::json!({}),
        client_msg_id: None,
        created_at: larachat_core::model::now(),
    })
}

fn endpoint(project: ProjectId, url: String, filter: EventFilter) -> Endpoint {
    let now = larachat_core::model::now();
    Endpoint {
        id: EndpointId::new_v7(),
        project_id: project,
        url,
        description: String::new(),
        filter,
        enabled: true,
        disabled_reason: None,
        secret: Secret::generate(),
        previous_secret: None,
        created_at: now,
        updated_at: now,
    }
}

const DEV: TargetPolicy = TargetPolicy {
    allow_insecure: true,
};

struct Rig {
    store: Arc<dyn WebhookStore>,
    clock: ManualClock,
    dispatcher: Dispatcher,
}

fn rig(retry: RetryPolicy) -> Rig {
    let store: Arc<dyn WebhookStore> = Arc::new(SqliteWebhookStore::in_memory().unwrap());
    let clock = ManualClock::starting_at(t0());
    let client = DeliveryClient::new(ClientSettings {
        policy: DEV,
        ..ClientSettings::default()
    })
    .unwrap();
    let dispatcher = Dispatcher::new(
        store.clone(),
        client,
        Arc::new(clock.clone()),
        retry,
        Duration::from_secs(10),
    );
    Rig {
        store,
        clock,
        dispatcher,
    }
}

/// Checks a request's signature with `secret` at the fake clock's time.
fn assert_signed(r: &Received, secret: &Secret, clock: &ManualClock) {
    let now = clock.now().timestamp();
    signing::verify(secret, &r.id, &r.timestamp, &r.signature, &r.body, now, 300)
        .expect("signature verifies");
}

#[tokio::test]
async fn retries_follow_the_schedule_on_a_fake_clock_then_dead_letter_and_redeliver() {
    let retry = RetryPolicy {
        attempts: 4,
        ..RetryPolicy::default()
    };
    let Rig {
        store,
        clock,
        dispatcher,
    } = rig(retry);
    let mut rx = Receiver::start().await;
    let project = ProjectId::new_v7();
    let ep = endpoint(
        project,
        rx.url(),
        EventFilter::Only(vec![EventKind::MessageSent]),
    );
    store.create_endpoint(&ep).await.unwrap();
    let start = clock.now();

    let event = message(project);
    assert_eq!(dispatcher.fan_out(&event).await.unwrap(), 1);
    assert_eq!(
        dispatcher.fan_out(&event).await.unwrap(),
        0,
        "a redelivered event adds nothing"
    );

    for _ in 0..4 {
        rx.then(503);
    }
    let mut due = Vec::new();
    for attempt in 1..=4u32 {
        assert_eq!(dispatcher.drain().await.unwrap(), 1, "attempt {attempt}");
        let r = rx.next().await;
        assert_eq!(r.id, event.id.to_string());
        assert_eq!(r.body, event.to_json());
        assert_signed(&r, &ep.secret, &clock);
        let d = store
            .get_delivery(project, ep.id, event.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.attempts, attempt);
        if attempt == 4 {
            assert_eq!(
                d.status,
                DeliveryStatus::Failed,
                "attempts spent: dead letter"
            );
            assert_eq!(d.next_attempt_at, None);
            break;
        }
        let next = d.next_attempt_at.unwrap();
        // Nothing is attempted before its time.
        clock.set(next - chrono::Duration::milliseconds(1));
        assert_eq!(dispatcher.drain().await.unwrap(), 0);
        clock.set(next);
        due.push(next - start);
    }
    rx.nothing_more();
    // 4 attempts over 3 days: retries at 3/7, 9/7 and 3 days (+ up to one gap of jitter).
    let day = chrono::Duration::days(1);
    assert!(due[0] >= day * 3 / 7 && due[0] <= day * 6 / 7, "{due:?}");
    assert!(due[2] >= day * 3, "last retry after 3 days: {due:?}");
    let attempts = store.list_attempts(project, ep.id, event.id).await.unwrap();
    assert_eq!(attempts.len(), 4);
    assert!(
        attempts
            .iter()
            .all(|a| a.response_code == Some(503) && !a.succeeded)
    );
    assert_eq!(attempts[0].next_attempt_at, Some(start + due[0]));

    // A dead letter is redeliverable: a new series, attempt numbers continue.
    assert!(dispatcher.redeliver(project, &ep, event.id).await.unwrap());
    assert_eq!(dispatcher.drain().await.unwrap(), 1);
    let r = rx.next().await;
    assert_eq!(
        r.id,
        event.id.to_string(),
        "the same webhook-id on redelivery"
    );
    let d = store
        .get_delivery(project, ep.id, event.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((d.status, d.attempts), (DeliveryStatus::Succeeded, 5));
}

#[tokio::test]
async fn retry_after_is_honoured_and_capped() {
    let Rig {
        store,
        clock,
        dispatcher,
    } = rig(RetryPolicy::default());
    let mut rx = Receiver::start().await;
    let project = ProjectId::new_v7();
    let ep = endpoint(project, rx.url(), EventFilter::All);
    store.create_endpoint(&ep).await.unwrap();
    let event = message(project);
    dispatcher.fan_out(&event).await.unwrap();
    rx.script
        .lock()
        .push_back((429, vec![("retry-after", "600".into())], String::new()));
    rx.script
        .lock()
        .push_back((503, vec![("retry-after", "99999999".into())], String::new()));
    let now = clock.now();
    dispatcher.drain().await.unwrap();
    rx.next().await;
    let d = store
        .get_delivery(project, ep.id, event.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        d.next_attempt_at,
        Some(now + chrono::Duration::seconds(600))
    );
    clock.set(d.next_attempt_at.unwrap());
    dispatcher.drain().await.unwrap();
    rx.next().await;
    let d = store
        .get_delivery(project, ep.id, event.id)
        .await
        .unwrap()
        .unwrap();
    let wait = d.next_attempt_at.unwrap() - clock.now();
    assert_eq!(
        wait,
        chrono::Duration::hours(1),
        "capped at max_retry_after"
    );
}

#[tokio::test]
async fn gone_disables_the_endpoint() {
    let Rig {
        store,
        clock: _clock,
        dispatcher,
    } = rig(RetryPolicy::default());
    let mut rx = Receiver::start().await;
    let project = ProjectId::new_v7();
    let ep = endpoint(project, rx.url(), EventFilter::All);
    store.create_endpoint(&ep).await.unwrap();
    let event = message(project);
    dispatcher.fan_out(&event).await.unwrap();
    rx.then(410);
    dispatcher.drain().await.unwrap();
    rx.next().await;
    let e = store.get_endpoint(project, ep.id).await.unwrap().unwrap();
    assert!(!e.enabled);
    assert_eq!(e.disabled_reason.as_deref(), Some("gone"));
    let d = store
        .get_delivery(project, ep.id, event.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.status, DeliveryStatus::Failed);
    assert_eq!(
        dispatcher.fan_out(&message(project)).await.unwrap(),
        0,
        "disabled: no new deliveries"
    );
    dispatcher.drain().await.unwrap();
    rx.nothing_more();
}

#[tokio::test]
async fn filters_select_endpoints_and_rotation_signs_with_both_secrets() {
    let Rig {
        store,
        clock,
        dispatcher,
    } = rig(RetryPolicy::default());
    let mut rx = Receiver::start().await;
    let project = ProjectId::new_v7();
    let mut ep = endpoint(
        project,
        rx.url(),
        EventFilter::Only(vec![EventKind::MessageSent]),
    );
    let old = ep.secret.clone();
    ep.secret = Secret::generate();
    ep.previous_secret = Some((old.clone(), clock.now() + chrono::Duration::hours(24)));
    store.create_endpoint(&ep).await.unwrap();
    let closed = endpoint(
        project,
        rx.url(),
        EventFilter::Only(vec![EventKind::ConversationClosed]),
    );
    store.create_endpoint(&closed).await.unwrap();
    let other_project = endpoint(ProjectId::new_v7(), rx.url(), EventFilter::All);
    store.create_endpoint(&other_project).await.unwrap();

    let event = message(project);
    assert_eq!(
        dispatcher.fan_out(&event).await.unwrap(),
        1,
        "one endpoint matches"
    );
    dispatcher.drain().await.unwrap();
    let r = rx.next().await;
    assert_eq!(r.signature.split(' ').count(), 2);
    assert_signed(&r, &old, &clock);
    assert_signed(&r, &ep.secret, &clock);

    // After the overlap only the new secret signs.
    clock.advance(chrono::Duration::hours(25));
    dispatcher.send_test(&ep).await.unwrap();
    dispatcher.drain().await.unwrap();
    let r = rx.next().await;
    assert_eq!(r.signature.split(' ').count(), 1);
    assert_signed(&r, &ep.secret, &clock);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["event"], "webhook.test");
    rx.nothing_more();
}

/// Resolves names from a table (as a hostile DNS server would answer).
struct Table(HashMap<&'static str, Vec<IpAddr>>);

#[async_trait::async_trait]
impl Lookup for Table {
    async fn lookup(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        Ok(self.0.get(host).cloned().unwrap_or_default())
    }
}

#[tokio::test]
async fn the_ssrf_matrix_is_refused_before_any_connection() {
    // A listener that must never see a connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let table = Table(HashMap::from([
        ("loopback.test", vec![ip("127.0.0.1")]),
        ("mixed.test", vec![ip("93.184.216.34"), ip("127.0.0.1")]),
        ("private.test", vec![ip("10.0.0.7")]),
        ("metadata.test", vec![ip("169.254.169.254")]),
        ("metadata6.test", vec![ip("fd00:ec2::254")]),
        ("mapped.test", vec![ip("::ffff:127.0.0.1")]),
        ("cgnat.test", vec![ip("100.64.1.1")]),
        ("linklocal6.test", vec![ip("fe80::1")]),
        ("multicast.test", vec![ip("224.0.0.251")]),
        ("unspecified.test", vec![ip("0.0.0.0")]),
        ("sixtofour.test", vec![ip("2002:7f00:1::1")]),
        ("nothing.test", vec![]),
    ]));
    let strict = DeliveryClient::with_lookup(ClientSettings::default(), Arc::new(table)).unwrap();
    let loose = TargetPolicy {
        allow_insecure: true,
    };
    let secret = Secret::generate();
    let msg = Outgoing {
        id: "evt_1",
        timestamp: larachat_core::model::now(),
        body: b"{}",
    };
    let mut urls: Vec<String> = [
        "loopback.test",
        "mixed.test",
        "private.test",
        "metadata.test",
        "metadata6.test",
        "mapped.test",
        "cgnat.test",
        "linklocal6.test",
        "multicast.test",
        "unspecified.test",
        "sixtofour.test",
        "nothing.test",
        "127.0.0.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
    ]
    .iter()
    .map(|h| format!("https://{h}:{port}/hook"))
    .collect();
    urls.push(format!("http://127.0.0.1:{port}/hook")); // plain http and loopback
    for url in &urls {
        // Registered under the insecure policy (or IP literals would stop here already):
        // the client's own policy is what must refuse.
        let target =
            TargetUrl::parse(url, loose).unwrap_or_else(|_| TargetUrl::from_stored(url).unwrap());
        let out = strict
            .deliver(&target, std::slice::from_ref(&secret), msg)
            .await;
        assert!(out.refused, "{url}: {out:?}");
        assert_eq!(out.status, None);
        assert!(
            out.error
                .as_deref()
                .unwrap_or("")
                .starts_with("refused_target"),
            "{url}: {out:?}"
        );
        match listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("{url}: a connection was made: {other:?}"),
        }
    }
    println!("ssrf matrix: {} targets refused, 0 connections", urls.len());
}

#[tokio::test]
async fn redirects_are_not_followed_bodies_are_capped_and_attempts_time_out() {
    let mut target = Receiver::start().await;
    let mut rx = Receiver::start().await;
    let client = DeliveryClient::new(ClientSettings {
        policy: DEV,
        timeout: Duration::from_secs(2),
        body_cap: 1024,
    })
    .unwrap();
    let secret = Secret::generate();
    let msg = Outgoing {
        id: "evt_2",
        timestamp: larachat_core::model::now(),
        body: b"{}",
    };
    rx.script
        .lock()
        .push_back((302, vec![("location", target.url())], String::new()));
    let url = TargetUrl::parse(&rx.url(), DEV).unwrap();
    let out = client
        .deliver(&url, std::slice::from_ref(&secret), msg)
        .await;
    assert_eq!(out.status, Some(302));
    rx.next().await;
    target.nothing_more();

    rx.script
        .lock()
        .push_back((200, Vec::new(), "x".repeat(1 << 20)));
    let out = client
        .deliver(&url, std::slice::from_ref(&secret), msg)
        .await;
    assert_eq!(out.status, Some(200));
    assert_eq!(out.body.len(), 1024, "body kept up to the cap");
    rx.next().await;

    // A receiver that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url =
        TargetUrl::parse(&format!("http://{}/", silent.local_addr().unwrap()), DEV).unwrap();
    let hold = tokio::spawn(async move {
        let (_s, _) = silent.accept().await.unwrap();
        std::future::pending::<()>().await;
    });
    let out = client
        .deliver(&silent_url, std::slice::from_ref(&secret), msg)
        .await;
    assert_eq!(out.status, None);
    assert_eq!(out.error.as_deref(), Some("timeout"), "{out:?}");
    assert!(out.duration < Duration::from_secs(10));
    hold.abort();
}

/// Deliveries per second to one endpoint (an in-process receiver answering 204 on loopback),
/// printed, not asserted: `cargo test -p larachat-webhooks --test delivery -- --ignored
/// --nocapture deliveries_per_second`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run on demand"]
async fn deliveries_per_second_to_one_endpoint() {
    const EVENTS: usize = 2000;
    let Rig {
        store,
        clock: _clock,
        dispatcher,
    } = rig(RetryPolicy::default());
    let mut rx = Receiver::start().await;
    let project = ProjectId::new_v7();
    let ep = endpoint(project, rx.url(), EventFilter::All);
    store.create_endpoint(&ep).await.unwrap();
    for _ in 0..EVENTS {
        dispatcher.fan_out(&message(project)).await.unwrap();
    }
    let started = std::time::Instant::now();
    assert_eq!(dispatcher.drain().await.unwrap(), EVENTS);
    let took = started.elapsed();
    for _ in 0..EVENTS {
        rx.next().await;
    }
    println!(
        "{EVENTS} deliveries to one endpoint in {:.2} s: {:.0} deliveries/s (SQLite in memory, 32 at once)",
        took.as_secs_f64(),
        EVENTS as f64 / took.as_secs_f64()
    );
}
